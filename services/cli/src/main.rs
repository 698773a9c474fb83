//! The `palisade` operator CLI. Everything lives in the library; see `palisade --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    palisade_cli::main(palisade_cli::Cli::parse()).await
}
