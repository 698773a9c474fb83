//! `palisade-notifier`: `serve` (the default) or `migrate`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    palisade_notifier::main_with(palisade_notifier::Cli::parse()).await
}
