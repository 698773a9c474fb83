//! The `palisade` operator CLI: every RPC of the four services from a terminal, as human
//! tables or stable JSON, with exit codes that mean something, plus `palisade dev`, the
//! one-process local run.
//!
//! Addresses and the credential come from flags, then environment variables, then the config
//! file (`--config`, `PALISADE_CLI_CONFIG`, or `~/.config/palisade/cli.toml`).

mod commands;
mod connect;
pub mod dev;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use connect::{ClientConfig, Clients};
pub use output::OutputFormat;

/// Exit codes a script can branch on.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNAUTHENTICATED: u8 = 3;
    pub const PERMISSION_DENIED: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const INVALID_ARGUMENT: u8 = 6;
    pub const UNAVAILABLE: u8 = 7;
    pub const CONFLICT: u8 = 8;
}

#[derive(Debug, Parser)]
#[command(
    name = "palisade",
    version,
    about = "Operate Palisade: tokens, alerts, notifications and compliance for Microsoft CSP partners"
)]
pub struct Cli {
    #[command(flatten)]
    pub client: ClientConfig,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Credentials for the gRPC APIs.
    #[command(subcommand)]
    Auth(commands::auth::AuthCommand),
    /// SAM apps, consents, access tokens, token health and encryption keys.
    #[command(subcommand)]
    Tokens(commands::tokens::TokensCommand),
    /// Partner security alerts.
    #[command(subcommand)]
    Alerts(commands::alerts::AlertsCommand),
    /// Contacts, channels, routes, deliveries, acknowledgements and snoozes.
    #[command(subcommand)]
    Notify(commands::notify::NotifyCommand),
    /// Partner security requirements: status, findings, history, customers, reports.
    #[command(subcommand)]
    Compliance(commands::compliance::ComplianceCommand),
    /// Runs Palisade in one process on embedded defaults (SQLite, in-process queue, local key).
    Dev(dev::DevArgs),
    /// Prints shell completions, e.g. `palisade completions bash > /etc/bash_completion.d/palisade`.
    Completions { shell: clap_complete::Shell },
}

/// Runs the CLI and maps the outcome to an exit code.
pub async fn main(cli: Cli) -> ExitCode {
    let output = cli.client.output;
    match run(cli).await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) => {
            let (code, message) = commands::describe_error(&err);
            match output {
                OutputFormat::Json => eprintln!(
                    "{}",
                    serde_json::json!({"error": message, "exit_code": code})
                ),
                OutputFormat::Table => eprintln!("error: {message}"),
            }
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "palisade",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Auth(cmd) => commands::auth::run(cmd, &cli.client.resolve()?).await,
        Command::Tokens(cmd) => commands::tokens::run(cmd, &cli.client.resolve()?).await,
        Command::Alerts(cmd) => commands::alerts::run(cmd, &cli.client.resolve()?).await,
        Command::Notify(cmd) => commands::notify::run(cmd, &cli.client.resolve()?).await,
        Command::Compliance(cmd) => commands::compliance::run(cmd, &cli.client.resolve()?).await,
    }
}
