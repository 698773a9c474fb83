//! Continuous evaluation of the partner security requirements.
//!
//! For each partner, on a schedule or on demand, the engine reads the partner tenant (Graph
//! and Partner Center, with tokens from the token broker), Palisade's own records (the broker's
//! consents and MFA statistics, the notifier's contacts, alert-ingest's response times) and
//! every customer tenant's admin MFA; the rules turn that into checks with evidence and fixes;
//! the score, findings and history are stored, and every check that changes state is announced
//! once through the outbox. It must never let one customer's failure fail a run, never exceed
//! the configured Microsoft budgets, and never tell a caller about a partner it may not see.

pub mod auth;
pub mod engine;
pub mod error;
pub mod events;
pub mod model;
pub mod report;
pub mod rules;
pub mod score;
pub mod service;
pub mod sources;
pub mod store;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use palisade_clock::SharedClock;
use palisade_server::Listeners;
use palisade_storage::{Database, DatabaseSettings};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use engine::{Engine, EvaluationSettings, RunState};
pub use error::ComplianceError;
pub use score::ScoreWeights;
pub use sources::{GrpcPeers, Microsoft, MicrosoftSettings, PeerSettings, Peers};
pub use store::{ComplianceStore, MIGRATIONS, SqlStore};

/// The service's short name: config prefix, metrics, logs.
pub const SERVICE: &str = "compliance";
/// Its Postgres schema (SQLite file).
pub const SCHEMA: &str = "compliance";

/// Everything compliance is configured with. Defaults run locally (SQLite, in-process queue,
/// the peers on `palisade dev`'s ports).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: palisade_server::ServerSettings,
    pub database: DatabaseSettings,
    pub queue: palisade_queue::QueueSettings,
    pub telemetry: palisade_telemetry::TelemetrySettings,
    /// The registry, and this service's own credential for calling the broker, the notifier
    /// and alert-ingest.
    pub auth: palisade_auth::AuthSettings,
    pub peers: PeerSettings,
    pub microsoft: MicrosoftSettings,
    pub evaluation: EvaluationSettings,
    /// Weights of each check in the score (see `score.rs` and the README).
    pub score: ScoreWeights,
    pub events: events::EventSettings,
    /// Run the scheduler and the event consumer. Off for an API-only replica.
    pub workers: Option<bool>,
}

impl palisade_config::Validate for Settings {
    fn validate(&self) -> Result<(), palisade_config::ConfigError> {
        use palisade_config::ConfigError;
        let split = |e: String| {
            let (key, reason) = e.split_once(": ").unwrap_or(("compliance", e.as_str()));
            ConfigError::invalid(key, reason)
        };
        self.server.validate()?;
        self.microsoft.validate().map_err(split)?;
        self.evaluation.validate().map_err(split)?;
        self.score.validate().map_err(split)?;
        if self.queue.backend == palisade_queue::Backend::Redis && self.queue.redis_url.is_none() {
            return Err(ConfigError::invalid(
                "queue.redis_url",
                "required with the redis backend",
            ));
        }
        Ok(())
    }
}

impl palisade_server::ServiceSettings for Settings {
    fn server(&self) -> &palisade_server::ServerSettings {
        &self.server
    }
    fn database(&self) -> &DatabaseSettings {
        &self.database
    }
    fn telemetry(&self) -> &palisade_telemetry::TelemetrySettings {
        &self.telemetry
    }
    fn auth(&self) -> &palisade_auth::AuthSettings {
        &self.auth
    }
}

/// Scopes of the service's own credential, for calling the other services.
pub const SERVICE_SCOPES: &[palisade_auth::Scope] = &[
    palisade_auth::Scope::TokensIssue,
    palisade_auth::Scope::TokensRead,
    palisade_auth::Scope::AlertsRead,
    palisade_auth::Scope::NotifyRead,
];

/// Applies this service's migrations and the registry's (for the Kubernetes hook).
pub async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let db = Database::connect(&settings.database, SCHEMA).await?;
    let applied = db.migrate(MIGRATIONS).await?;
    palisade_auth::AuthStore::open(&settings.database).await?;
    tracing::info!(applied, "migrations applied");
    db.close().await;
    Ok(())
}

/// A started compliance service. Call [`Running::stop`] (graceful) or [`Running::kill`].
pub struct Running {
    pub engine: Arc<Engine>,
    pub shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    database: Database,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

impl Running {
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        self.database.close().await;
    }

    /// A crash: tasks end where they stand; leases run out and the next replica resumes.
    pub async fn kill(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.shutdown.cancel();
    }
}

/// Starts the service with the peers reached over gRPC.
pub async fn start(
    settings: Settings,
    listeners: Listeners,
    clock: SharedClock,
) -> anyhow::Result<Running> {
    let peers = Arc::new(GrpcPeers::new(
        &settings.peers,
        settings.auth.service_credential.as_ref(),
    )?);
    start_with(settings, listeners, clock, peers).await
}

/// Starts the service with the given peers (the gRPC ones, in production).
pub async fn start_with(
    settings: Settings,
    listeners: Listeners,
    clock: SharedClock,
    peers: Arc<dyn Peers>,
) -> anyhow::Result<Running> {
    palisade_config::Validate::validate(&settings)?;
    let database = Database::connect(&settings.database, SCHEMA)
        .await
        .context("compliance.database")?;
    let store = SqlStore::new(database.clone());
    store
        .migrate()
        .await
        .context("migrating the compliance schema")?;
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    let queue = palisade_queue::connect(&settings.queue)
        .await
        .context("compliance.queue")?;
    let relay = palisade_queue::outbox::OutboxRelay::new(database.clone(), Arc::clone(&queue));
    tasks.spawn(
        relay
            .clone()
            .run(Duration::from_millis(500), shutdown.clone()),
    );

    let microsoft = Arc::new(Microsoft::new(&settings.microsoft)?);
    let engine = Arc::new(Engine::new(
        Arc::new(store),
        peers,
        microsoft,
        clock,
        settings.evaluation.clone(),
        settings.score.clone(),
        Some(relay),
    ));

    let platform = palisade_server::Platform::start(
        SERVICE,
        &settings.database,
        &settings.auth,
        SERVICE_SCOPES.to_vec(),
        shutdown.clone(),
    )
    .await?;
    let mut sampler = palisade_queue::PlatformSampler::register(&platform.metrics, SERVICE)
        .outbox(database.clone());
    if settings.workers.unwrap_or(true) && settings.events.enabled {
        for topic in &settings.events.topics {
            sampler = sampler.watch(&queue, topic, &settings.events.consumer_group);
        }
    }
    tasks.spawn(sampler.run(settings.queue.sample_interval, shutdown.clone()));
    let api = palisade_contracts::compliance::v1::compliance_service_server::ComplianceServiceServer::new(
        service::ComplianceApi::new(Arc::clone(&engine)),
    )
    .max_decoding_message_size(settings.server.max_message_bytes)
    .max_encoding_message_size(settings.server.max_message_bytes);
    let serve = palisade_server::serve(palisade_server::ServeOptions {
        service_name: SERVICE,
        health_names: vec!["palisade.compliance.v1.ComplianceService"],
        settings: settings.server.clone(),
        listeners,
        routes: tonic::service::Routes::new(api),
        authenticator: platform.authenticator,
        metrics: platform.metrics,
        readiness: palisade_server::always_ready(),
        shutdown: shutdown.clone(),
    });
    tasks.spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "grpc server failed");
        }
    });

    if settings.workers.unwrap_or(true) {
        tasks.spawn(Arc::clone(&engine).schedule_loop(shutdown.clone()));
        if settings.events.enabled {
            tasks.spawn(events::consume(
                queue,
                settings.events.clone(),
                Arc::clone(&engine),
                shutdown.clone(),
            ));
        }
    }
    Ok(Running {
        engine,
        shutdown,
        tasks,
        database,
    })
}

/// Serves until `shutdown` is cancelled, then stops: the API drains, the scheduler and
/// consumer stop (an evaluation cut short is resumed by the next start), the pool closes.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let running = start(settings, listeners, palisade_clock::system()).await?;
    tracing::info!("compliance started");
    shutdown.cancelled().await;
    running.stop().await;
    tracing::info!("compliance stopped");
    Ok(())
}
