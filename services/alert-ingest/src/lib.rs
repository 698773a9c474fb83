//! Partner security alerts: polled, received by webhook, deduplicated, persisted, resolved.
//!
//! Today this crate is the service's frame on the platform: configuration, its own schema
//! (`alerts`) with the outbox, the credential registry, health, reflection, metrics and a
//! graceful shutdown. Its API is not served yet: issue #5 adds the pollers, the webhook receiver, the alert store and AlertService.

use palisade_auth::Scope;
use palisade_server::{BaseSettings, Frame, Listeners};
use palisade_storage::Migration;
use tokio_util::sync::CancellationToken;

/// The service's short name: config prefix, metrics, logs.
pub const SERVICE: &str = "alert-ingest";

/// Every table this service owns, in its own schema.
pub const MIGRATIONS: &[Migration] = &[palisade_queue::outbox::MIGRATION];

const FRAME: Frame = Frame {
    service: SERVICE,
    schema: "alerts",
    migrations: MIGRATIONS,
    service_scopes: &[Scope::TokensIssue],
};

pub type Settings = BaseSettings;

/// Applies this service's migrations (for the Kubernetes hook).
pub async fn migrate(settings: Settings) -> anyhow::Result<()> {
    FRAME.migrate(&settings.database).await
}

/// Serves until `shutdown` is cancelled, then drains and closes the pool.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Only the overall health status: the service's own API is not mounted yet.
    let routes = tonic::service::RoutesBuilder::default().routes();
    FRAME
        .run(settings, listeners, routes, Vec::new(), shutdown)
        .await
}
