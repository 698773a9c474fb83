//! Fan-out of events to the right people and channels, in their language.
//!
//! The notifier consumes alert, token, compliance and relationship events, decides who must
//! hear about each (routing), folds repeats into groups (Alertmanager's three timers over a
//! persisted notification log), escalates what nobody acknowledges, and delivers by email,
//! Standard Webhooks, Teams, Slack, SMS and PagerDuty with retries, dead letters and a log of
//! every attempt. It must never lose a notification and never spam one.

pub mod auth;
pub mod bench;
pub mod channels;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod events;
pub mod http;
pub mod links;
pub mod metrics;
pub mod queue;
pub mod routing;
pub mod service;
pub mod store;
pub mod templates;
pub mod validate;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use palisade_clock::SharedClock;
use palisade_crypto::{EnvelopeCipher, LocalKek, LocalKekSettings};
use palisade_storage::{Database, DatabaseSettings};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use engine::{EngineSettings, Notifier};
pub use error::NotifierError;

use crate::store::{NotifyStore, SqlStore};

/// Everything the notifier is configured with. Defaults run locally on SQLite and the
/// in-process queue.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    /// The platform queue connection (Redis Streams or in-process).
    pub queue: palisade_queue::QueueSettings,
    /// Which topics the notifier reads, as which consumer group.
    pub events: queue::EventSettings,
    /// Seals channel secrets at rest. Never serialized: it may hold key material.
    #[serde(skip_serializing)]
    pub kek: LocalKekSettings,
    /// The platform gRPC server: listen addresses, limits, TLS, shutdown deadline.
    pub server: palisade_server::ServerSettings,
    /// The platform credential registry: bootstrap and this service's own credential.
    pub auth: palisade_auth::AuthSettings,
    pub telemetry: palisade_telemetry::TelemetrySettings,
    /// The public HTTP endpoint for one-click acknowledgement links.
    pub ack_listen: Option<std::net::SocketAddr>,
    pub channels: channels::ChannelSettings,
    pub engine: EngineSettings,
    /// Run the background workers (consumer, timers, dispatcher). Off for an API-only replica.
    pub workers: Option<bool>,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Option<Duration>,
}

impl palisade_config::Validate for Settings {
    /// Refuses a configuration that would fail later, naming the key.
    fn validate(&self) -> Result<(), palisade_config::ConfigError> {
        use palisade_config::ConfigError;
        self.server.validate()?;
        self.engine.validate().map_err(|e| {
            let (key, reason) = e.split_once(": ").unwrap_or(("engine", e.as_str()));
            ConfigError::invalid(key.trim_start_matches("notifier."), reason)
        })?;
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

/// The service's name in config (`PALISADE_NOTIFIER__…`), logs and metrics.
pub const SERVICE: &str = "notifier";

/// The sockets the notifier serves on, bound by the caller (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    /// The admin port: `/metrics`, `/healthz`, `/readyz`.
    pub admin: TcpListener,
    /// The public HTTP endpoint for acknowledgement links.
    pub http: TcpListener,
}

/// A started notifier. Dropping it does not stop it; call [`Running::stop`] or
/// [`Running::kill`].
pub struct Running {
    pub core: Arc<Notifier>,
    pub shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    database: Database,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

impl Running {
    /// Graceful: stop taking work, let in-flight sends finish, close the pool.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(self.shutdown_timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        self.database.close().await;
    }

    /// A crash: every task is aborted where it stands, with leases and pending queue
    /// entries left behind for the next start to take over.
    pub async fn kill(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.shutdown.cancel();
    }

    /// Waits until every task has ended (after `shutdown` was cancelled).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        self.database.close().await;
    }
}

pub fn build_cipher(settings: &LocalKekSettings) -> anyhow::Result<EnvelopeCipher> {
    let kek = match (&settings.keys, &settings.key_file) {
        (Some(keys), _) => LocalKek::parse(keys).context("notifier.kek.keys")?,
        (None, Some(path)) => LocalKek::load_or_create(path).context("notifier.kek.key_file")?,
        (None, None) => anyhow::bail!(
            "notifier.kek: set keys or key_file; channel secrets are encrypted at rest"
        ),
    };
    Ok(EnvelopeCipher::new(Arc::new(kek)))
}

/// `palisade-notifier migrate`: the notify schema and the credential registry.
pub async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let db = Database::connect(&settings.database, "notify").await?;
    let applied = SqlStore::new(db.clone()).migrate().await?;
    palisade_auth::AuthStore::open(&settings.database).await?;
    tracing::info!(applied, "migrations applied");
    db.close().await;
    Ok(())
}

/// Starts the notifier: migrations, the gRPC API, the acknowledgement endpoint and, unless
/// disabled, the event consumer, the timer task and the dispatcher.
pub async fn start(
    settings: Settings,
    listeners: Listeners,
    clock: SharedClock,
) -> anyhow::Result<Running> {
    palisade_config::Validate::validate(&settings)?;
    let database = Database::connect(&settings.database, "notify")
        .await
        .context("notifier.database")?;
    let store = SqlStore::new(database.clone());
    store
        .migrate()
        .await
        .context("migrating the notify schema")?;
    let cipher = build_cipher(&settings.kek)?;
    let senders = channels::Senders::new(settings.channels.clone())?;
    let store: Arc<dyn NotifyStore> = Arc::new(store);
    let registry = palisade_telemetry::Metrics::new();
    let core = Arc::new(
        Notifier::new(store, cipher, clock, senders, settings.engine.clone())
            .with_metrics(&registry),
    );
    core.refresh_gauges().await;
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    // Credentials come from the platform registry, verified in the server's auth layer.
    let auth_store = palisade_auth::AuthStore::open(&settings.database)
        .await
        .context("notifier.database (auth registry)")?;
    if let Some(secret) = &settings.auth.bootstrap_admin_secret {
        palisade_auth::ensure_configured_credential(
            &auth_store,
            secret,
            "bootstrap admin",
            vec![palisade_auth::Scope::Admin],
        )
        .await?;
    }
    let authenticator =
        palisade_auth::Authenticator::start(auth_store, Duration::from_secs(1), shutdown.clone())
            .await?;
    let api =
        palisade_contracts::notify::v1::notification_service_server::NotificationServiceServer::new(
            service::NotificationApi::new(Arc::clone(&core)),
        )
        .max_decoding_message_size(settings.server.max_message_bytes);
    let serve = palisade_server::serve(palisade_server::ServeOptions {
        service_name: "notifier",
        health_names: vec!["palisade.notify.v1.NotificationService"],
        settings: settings.server.clone(),
        listeners: palisade_server::Listeners {
            grpc: listeners.grpc,
            admin: listeners.admin,
        },
        routes: tonic::service::Routes::new(api),
        authenticator,
        metrics: registry.clone(),
        readiness: palisade_server::always_ready(),
        shutdown: shutdown.clone(),
    });
    tasks.spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "grpc server failed");
        }
    });

    let http_shutdown = shutdown.clone();
    let router = http::router(Arc::clone(&core));
    tasks.spawn(async move {
        let result = axum::serve(listeners.http, router)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "http server failed");
        }
    });

    if settings.workers.unwrap_or(true) {
        tasks.spawn(Arc::clone(&core).timer_loop(shutdown.clone()));
        tasks.spawn(Arc::clone(&core).dispatch_loop(shutdown.clone()));
        let events = palisade_queue::connect(&settings.queue)
            .await
            .context("notifier.queue")?;
        // The notifier writes no outbox: its platform gauges are the groups it reads.
        let sampler = settings.events.topics.iter().fold(
            palisade_queue::PlatformSampler::register(&registry, "notifier"),
            |sampler, topic| sampler.watch(&events, topic, &settings.events.consumer_group),
        );
        tasks.spawn(sampler.run(settings.queue.sample_interval, shutdown.clone()));
        tasks.spawn(queue::consume(
            events,
            settings.events.clone(),
            Arc::clone(&core),
            shutdown.clone(),
        ));
    }
    Ok(Running {
        core,
        shutdown,
        tasks,
        database,
        shutdown_timeout: settings.shutdown_timeout.unwrap_or(Duration::from_secs(20)),
    })
}

/// Serves until `shutdown` is cancelled, then stops in order: the API stops accepting, the
/// workers release what they hold, the pool closes.
pub async fn run(
    settings: Settings,
    listeners: palisade_server::Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ack = settings
        .ack_listen
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 8089)));
    let http = TcpListener::bind(ack)
        .await
        .with_context(|| format!("config key ack_listen: cannot bind {ack}"))?;
    let listeners = Listeners {
        grpc: listeners.grpc,
        admin: listeners.admin,
        http,
    };
    let running = start(settings, listeners, palisade_clock::system()).await?;
    tracing::info!("notifier started");
    shutdown.cancelled().await;
    running.stop().await;
    tracing::info!("notifier stopped");
    Ok(())
}
