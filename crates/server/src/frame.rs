//! The frame a service runs in before it has settings of its own: the platform sections, its
//! schema and migrations, the registry, and `serve`. A service with its own sections composes
//! the same pieces in its own `run`.

use palisade_auth::{AuthSettings, Scope};
use palisade_config::{ConfigError, Validate};
use palisade_storage::{Database, DatabaseSettings, Migration};
use palisade_telemetry::TelemetrySettings;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{Listeners, Platform, ServeOptions, ServerSettings, ServiceSettings, always_ready};

/// The sections every service has: `[server]`, `[database]`, `[queue]`, `[telemetry]`, `[auth]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaseSettings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub queue: palisade_queue::QueueSettings,
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
}

impl Validate for BaseSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()
    }
}

impl ServiceSettings for BaseSettings {
    fn server(&self) -> &ServerSettings {
        &self.server
    }
    fn database(&self) -> &DatabaseSettings {
        &self.database
    }
    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }
    fn auth(&self) -> &AuthSettings {
        &self.auth
    }
}

/// What distinguishes one service's frame from another's.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub service: &'static str,
    /// The service's own Postgres schema (SQLite file).
    pub schema: &'static str,
    pub migrations: &'static [Migration],
    /// Scopes of the service's own credential, for calling the other services.
    pub service_scopes: &'static [Scope],
}

impl Frame {
    /// Applies the service's migrations and the registry's (for the Kubernetes hook).
    pub async fn migrate(self, database: &DatabaseSettings) -> anyhow::Result<()> {
        let db = Database::connect(database, self.schema).await?;
        let applied = db.migrate(self.migrations).await?;
        palisade_auth::AuthStore::open(database).await?;
        tracing::info!(service = self.service, applied, "migrations applied");
        db.close().await;
        Ok(())
    }

    /// Migrates, starts the platform, serves `routes` until `shutdown`, then closes the pool.
    pub async fn run(
        self,
        settings: BaseSettings,
        listeners: Listeners,
        routes: tonic::service::Routes,
        health_names: Vec<&'static str>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let db = Database::connect(&settings.database, self.schema).await?;
        db.migrate(self.migrations).await?;
        let platform = Platform::start(
            self.service,
            &settings.database,
            &settings.auth,
            self.service_scopes.to_vec(),
            shutdown.clone(),
        )
        .await?;
        let result = crate::serve(ServeOptions {
            service_name: self.service,
            health_names,
            settings: settings.server,
            listeners,
            routes,
            authenticator: platform.authenticator,
            metrics: platform.metrics,
            readiness: always_ready(),
            shutdown,
        })
        .await;
        db.close().await;
        result
    }
}
