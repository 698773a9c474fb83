//! Partner security alerts: polled, received by webhook, deduplicated, persisted, resolved.
//!
//! Today this crate is the service's frame on the platform: configuration, its own schema
//! (`alerts`) with the outbox, the credential registry, health, reflection, metrics and a
//! graceful shutdown. Its API is not served yet: issue #5 adds the pollers, the webhook receiver, the alert store and AlertService.

use palisade_auth::{AuthSettings, Scope};
use palisade_config::{ConfigError, Validate};
use palisade_server::{
    Listeners, Platform, ServeOptions, ServerSettings, ServiceSettings, always_ready,
};
use palisade_storage::{Database, DatabaseSettings, Migration};
use palisade_telemetry::TelemetrySettings;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The service's short name: config prefix `PALISADE_ALERT_INGEST__`, metrics, logs.
pub const SERVICE: &str = "alert-ingest";

/// Every table this service owns, in its own schema.
pub const MIGRATIONS: &[Migration] = &[palisade_queue::outbox::MIGRATION];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub queue: palisade_queue::QueueSettings,
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()
    }
}

impl ServiceSettings for Settings {
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

/// Applies this service's migrations (for the Kubernetes hook).
pub async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let db = Database::connect(&settings.database, "alerts").await?;
    let applied = db.migrate(MIGRATIONS).await?;
    palisade_auth::AuthStore::open(&settings.database).await?;
    tracing::info!(applied, "migrations applied");
    db.close().await;
    Ok(())
}

/// Serves until `shutdown` is cancelled, then drains and closes the pool.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = Database::connect(&settings.database, "alerts").await?;
    db.migrate(MIGRATIONS).await?;
    let platform = Platform::start(
        SERVICE,
        &settings.database,
        &settings.auth,
        vec![Scope::TokensIssue],
        shutdown.clone(),
    )
    .await?;
    let result = palisade_server::serve(ServeOptions {
        service_name: SERVICE,
        // Only the overall status: the service's own API is not mounted yet.
        health_names: Vec::new(),
        settings: settings.server,
        listeners,
        routes: tonic::service::RoutesBuilder::default().routes(),
        authenticator: platform.authenticator,
        metrics: platform.metrics,
        readiness: always_ready(),
        shutdown,
    })
    .await;
    db.close().await;
    result
}
