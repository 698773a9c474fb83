//! `palisade-alert-ingest`: `serve` (the default), `migrate` or `bootstrap-admin`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    palisade_server::service_main(
        palisade_alert_ingest::SERVICE,
        palisade_alert_ingest::run,
        palisade_alert_ingest::migrate,
    )
    .await
}
