//! `palisade-notifier`: `serve` (the default), `migrate`, `check-config` or `bootstrap-admin`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    palisade_server::service_main(
        palisade_notifier::SERVICE,
        palisade_notifier::run,
        palisade_notifier::migrate,
    )
    .await
}
