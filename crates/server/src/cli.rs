//! The command line every service binary shares: `serve` (the default), `migrate` (for a
//! Kubernetes hook) and `bootstrap-admin`. A service's `main.rs` is a few lines around
//! [`service_main`].

use std::{future::Future, path::PathBuf, process::ExitCode};

use palisade_auth::AuthSettings;
use palisade_config::Validate;
use palisade_storage::DatabaseSettings;
use palisade_telemetry::TelemetrySettings;
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::sync::CancellationToken;

use crate::{Listeners, ServerSettings};

#[derive(Debug, clap::Parser)]
pub struct ServiceCli {
    /// A TOML config file (also `PALISADE_CONFIG`).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Serves until SIGTERM or SIGINT (the default).
    Serve,
    /// Applies the database migrations and exits.
    Migrate,
    /// Loads and validates the configuration, then exits: 0 when it would start.
    CheckConfig,
    /// Mints an admin credential bound to every partner and prints it once.
    BootstrapAdmin {
        #[arg(long, default_value = "bootstrap admin")]
        name: String,
    },
}

/// The sections every service's settings have, so the shared commands can reach them.
pub trait ServiceSettings:
    Default + Serialize + DeserializeOwned + Validate + std::fmt::Debug + Send + 'static
{
    fn server(&self) -> &ServerSettings;
    fn database(&self) -> &DatabaseSettings;
    fn telemetry(&self) -> &TelemetrySettings;
    fn auth(&self) -> &AuthSettings;
}

/// Parses the command line, loads and validates the config, sets up telemetry, and runs.
pub async fn service_main<S, R, RF, M, MF>(service: &'static str, run: R, migrate: M) -> ExitCode
where
    S: ServiceSettings,
    R: FnOnce(S, Listeners, CancellationToken) -> RF,
    RF: Future<Output = anyhow::Result<()>>,
    M: FnOnce(S) -> MF,
    MF: Future<Output = anyhow::Result<()>>,
{
    use clap::Parser;
    let cli = ServiceCli::parse();
    let settings: S = match palisade_config::load(service, cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("palisade-{service}: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match palisade_telemetry::init(service, settings.telemetry()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("palisade-{service}: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(ServiceCommand::Serve) {
        ServiceCommand::Serve => {
            async {
                let listeners = Listeners::bind(settings.server()).await?;
                run(settings, listeners, crate::shutdown_signal()).await
            }
            .await
        }
        ServiceCommand::Migrate => migrate(settings).await,
        ServiceCommand::CheckConfig => {
            eprintln!("palisade-{service}: configuration is valid");
            Ok(())
        }
        ServiceCommand::BootstrapAdmin { name } => {
            async {
                let store = palisade_auth::AuthStore::open(settings.database()).await?;
                let secret = palisade_auth::bootstrap_admin(&store, &name).await?;
                println!("{secret}");
                eprintln!("store it now: it is shown once and only its hash is kept");
                Ok(())
            }
            .await
        }
    };
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-{service}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
