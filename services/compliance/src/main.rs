//! `palisade-compliance`: `serve` (the default), `migrate` or `bootstrap-admin`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    palisade_server::service_main(
        palisade_compliance::SERVICE,
        palisade_compliance::run,
        palisade_compliance::migrate,
    )
    .await
}
