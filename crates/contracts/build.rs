//! Compiles `proto/` into Rust without a system `protoc`: protox parses the files, and
//! tonic-prost-build generates messages, clients and servers from the descriptor set.
//! The descriptor set is also written out for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "palisade/common/v1/common.proto",
        "palisade/auth/v1/auth.proto",
        "palisade/tokens/v1/tokens.proto",
        "palisade/alerts/v1/alerts.proto",
        "palisade/notify/v1/notify.proto",
        "palisade/compliance/v1/compliance.proto",
        "palisade/events/v1/events.proto",
    ];
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let descriptors = protox::compile(files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("palisade_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
