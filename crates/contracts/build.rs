//! Compiles `proto/` into Rust without a system `protoc`: protox parses the files, and
//! tonic-prost-build generates messages, clients and servers from the descriptor set.
//! The descriptor set is also written out for gRPC reflection.

use std::path::PathBuf;

/// Every message with a field that holds a secret: a credential, a refresh or access token, an
/// authorization code, a client secret or private key, a webhook signing secret.
const SECRET_BEARING_MESSAGES: &[&str] = &[
    ".palisade.auth.v1.CreateCredentialResponse",
    ".palisade.tokens.v1.AppCredential",
    ".palisade.tokens.v1.Certificate",
    ".palisade.tokens.v1.CompleteConsentRequest",
    ".palisade.tokens.v1.ImportRefreshTokenRequest",
    ".palisade.tokens.v1.GetAccessTokenResponse",
    ".palisade.notify.v1.CreateChannelRequest",
    ".palisade.notify.v1.CreateChannelResponse",
    ".palisade.notify.v1.RotateChannelSecretRequest",
    ".palisade.notify.v1.RotateChannelSecretResponse",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it was compiled: a build script binary is
    // shared by checkouts of the same workspace at other paths (git worktrees) that share a
    // target directory, and a baked-in path points at whichever checkout compiled it.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
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

    // Type names let tools (the CLI's JSON output, reflection) find each message's descriptor.
    let mut prost_config = prost_build::Config::new();
    prost_config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Messages that carry secrets get hand-written, redacting Debug impls (src/redact.rs).
        .skip_debug(SECRET_BEARING_MESSAGES)
        .compile_fds_with_config(descriptors, prost_config)?;
    Ok(())
}
