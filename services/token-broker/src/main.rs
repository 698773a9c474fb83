//! `palisade-token-broker`: `serve` (the default), `migrate` or `bootstrap-admin`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    palisade_server::service_main(
        palisade_token_broker::SERVICE,
        palisade_token_broker::run,
        palisade_token_broker::migrate,
    )
    .await
}
