//! Partner security alerts: polled, received by webhook, deduplicated, persisted, resolved.
//!
//! alert-ingest polls Microsoft Graph's partner security alerts and the legacy Partner Center
//! fraudEvents API for each configured partner, receives Partner Center webhooks after
//! verifying their signatures, normalises both shapes into one alert model with a stable
//! fingerprint, and persists each change with its event in one transaction (Postgres is the
//! truth; the outbox relay publishes). People resolve alerts through `AlertService`; the
//! resolution is written back to Microsoft through a queue that retries until Microsoft
//! confirms. It must never lose an alert, never store an unverified webhook, and never hold a
//! refresh token: access tokens come from the token broker.

pub mod engine;
pub mod error;
pub mod model;
pub mod outbox;
pub mod receiver;
pub mod service;
pub mod store;
pub mod tokens;
pub mod workers;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use palisade_auth::Scope;
use palisade_clock::SharedClock;
use palisade_microsoft::{
    graph_alerts::GraphAlertsClient,
    http::{RetryPolicy, Throttle},
    partner_center::PartnerCenterClient,
    webhook::{VerifierConfig, WebhookVerifier},
};
use palisade_storage::{Database, DatabaseSettings};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use engine::{IngestSettings, Ingestor};
pub use error::IngestError;
pub use workers::WorkerSettings;

use crate::{
    store::{AlertStore, SqlStore},
    tokens::{AccessTokens, BrokerTokens},
};

/// The service's short name: config prefix, metrics, logs.
pub const SERVICE: &str = "alert-ingest";
/// Its Postgres schema (SQLite file).
pub const SCHEMA: &str = "alerts";

/// Every table this service owns, in its own schema.
pub const MIGRATIONS: &[palisade_storage::Migration] = store::MIGRATIONS;

/// `[microsoft]`: where Microsoft is, and how hard we may press it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MicrosoftSettings {
    /// `https://graph.microsoft.com` (ms-sim's `graph_url()` in tests).
    pub graph_url: String,
    /// `https://api.partnercenter.microsoft.com`.
    pub partner_center_url: String,
    /// Requests per second across every partner of this replica (Graph throttles per app).
    pub requests_per_second: f64,
    pub burst: u32,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for MicrosoftSettings {
    fn default() -> Self {
        Self {
            graph_url: "https://graph.microsoft.com".into(),
            partner_center_url: "https://api.partnercenter.microsoft.com".into(),
            requests_per_second: 50.0,
            burst: 50,
            max_attempts: 5,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// `[webhook]`: the receiver and its trust.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Where Partner Center's POSTs arrive. `None` serves no receiver.
    pub listen: Option<SocketAddr>,
    /// PEM trust anchors, inline or from files. Without any, every webhook is refused (401).
    pub trust_anchors_pem: Vec<String>,
    pub trust_anchor_files: Vec<PathBuf>,
    pub allowed_certificate_hosts: Vec<String>,
    pub required_issuer_organization: String,
    /// Only for the simulator, which serves its certificate over plain HTTP.
    pub allow_http_certificate_urls: bool,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let verifier = VerifierConfig::default();
        Self {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 8088))),
            trust_anchors_pem: Vec::new(),
            trust_anchor_files: Vec::new(),
            allowed_certificate_hosts: verifier.allowed_certificate_hosts,
            required_issuer_organization: verifier.required_issuer_organization,
            allow_http_certificate_urls: false,
        }
    }
}

/// `[token_broker]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenBrokerSettings {
    pub url: String,
}

impl Default for TokenBrokerSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:50051".into(),
        }
    }
}

/// Everything alert-ingest is configured with. Defaults run locally on SQLite and the
/// in-process queue against the real Microsoft hosts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: palisade_server::ServerSettings,
    pub database: DatabaseSettings,
    pub queue: palisade_queue::QueueSettings,
    pub telemetry: palisade_telemetry::TelemetrySettings,
    pub auth: palisade_auth::AuthSettings,
    pub microsoft: MicrosoftSettings,
    pub webhook: WebhookSettings,
    pub token_broker: TokenBrokerSettings,
    pub ingest: IngestSettings,
    pub workers: WorkerSettings,
    /// The poll interval of a partner configured without one.
    #[serde(with = "humantime_serde")]
    pub default_poll_interval: Option<Duration>,
}

impl palisade_config::Validate for Settings {
    fn validate(&self) -> Result<(), palisade_config::ConfigError> {
        use palisade_config::ConfigError;
        self.server.validate()?;
        if self.queue.backend == palisade_queue::Backend::Redis && self.queue.redis_url.is_none() {
            return Err(ConfigError::invalid(
                "queue.redis_url",
                "required with the redis backend",
            ));
        }
        for (key, value) in [
            ("microsoft.graph_url", &self.microsoft.graph_url),
            (
                "microsoft.partner_center_url",
                &self.microsoft.partner_center_url,
            ),
        ] {
            url::Url::parse(value).map_err(|e| ConfigError::invalid(key, e.to_string()))?;
        }
        if self.microsoft.requests_per_second <= 0.0 {
            return Err(ConfigError::invalid(
                "microsoft.requests_per_second",
                "must be positive",
            ));
        }
        if self.ingest.webhook_max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "ingest.webhook_max_body_bytes",
                "at least 1024",
            ));
        }
        if self.workers.poll_lease < Duration::from_millis(300) {
            return Err(ConfigError::invalid("workers.poll_lease", "at least 300ms"));
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

/// The sockets alert-ingest serves on, bound by the caller (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
    /// The webhook receiver; `None` serves none.
    pub webhook: Option<TcpListener>,
}

/// A started alert-ingest. Stop it with [`Running::stop`] (graceful) or [`Running::kill`].
pub struct Running {
    pub core: Arc<Ingestor>,
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
    /// Graceful: stop serving, let workers finish their step, close the pool.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        self.database.close().await;
    }

    /// A crash: every task is aborted where it stands; leases, inbox rows and unacked queue
    /// entries are left for the next start to take over.
    pub async fn kill(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.shutdown.cancel();
        self.database.close().await;
    }
}

fn verifier(
    settings: &WebhookSettings,
    http: reqwest::Client,
) -> anyhow::Result<Option<Arc<WebhookVerifier>>> {
    let mut anchors = settings.trust_anchors_pem.clone();
    for path in &settings.trust_anchor_files {
        anchors.push(std::fs::read_to_string(path).with_context(|| {
            format!(
                "config key webhook.trust_anchor_files: cannot read {}",
                path.display()
            )
        })?);
    }
    if anchors.is_empty() {
        tracing::warn!(
            "no webhook trust anchors configured: every Partner Center webhook will be refused"
        );
        return Ok(None);
    }
    let config = VerifierConfig {
        allowed_certificate_hosts: settings.allowed_certificate_hosts.clone(),
        trust_anchors_pem: anchors,
        required_issuer_organization: settings.required_issuer_organization.clone(),
        allow_http_certificate_urls: settings.allow_http_certificate_urls,
        ..VerifierConfig::default()
    };
    Ok(Some(Arc::new(WebhookVerifier::new(config, http).map_err(
        |e| anyhow::anyhow!("config key webhook.trust_anchors_pem: {e}"),
    )?)))
}

/// `palisade-alert-ingest migrate`.
pub async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let db = Database::connect(&settings.database, SCHEMA).await?;
    let applied = SqlStore::new(db.clone()).migrate().await?;
    palisade_auth::AuthStore::open(&settings.database).await?;
    tracing::info!(applied, "migrations applied");
    db.close().await;
    Ok(())
}

/// Starts alert-ingest with the token broker named in the settings.
pub async fn start(
    settings: Settings,
    listeners: Listeners,
    clock: SharedClock,
) -> anyhow::Result<Running> {
    let tokens = Arc::new(BrokerTokens::connect(
        &settings.token_broker.url,
        settings.auth.service_credential.as_ref(),
    )?);
    start_with(settings, listeners, clock, tokens).await
}

/// Starts alert-ingest with the given token source (the broker, in every real deployment).
pub async fn start_with(
    settings: Settings,
    listeners: Listeners,
    clock: SharedClock,
    tokens: Arc<dyn AccessTokens>,
) -> anyhow::Result<Running> {
    palisade_config::Validate::validate(&settings)?;
    let database = Database::connect(&settings.database, SCHEMA)
        .await
        .context("alert-ingest.database")?;
    let store = SqlStore::new(database.clone());
    store
        .migrate()
        .await
        .context("migrating the alerts schema")?;
    let store: Arc<dyn AlertStore> = Arc::new(store);
    let shutdown = CancellationToken::new();
    let platform = palisade_server::Platform::start(
        SERVICE,
        &settings.database,
        &settings.auth,
        vec![Scope::TokensIssue],
        shutdown.clone(),
    )
    .await?;
    let queue = palisade_queue::connect(&settings.queue)
        .await
        .context("alert-ingest.queue")?;
    let relay = outbox::BatchRelay::new(
        database.clone(),
        Arc::clone(&queue),
        settings.workers.outbox_batch,
    );

    let http = reqwest::Client::builder()
        .timeout(settings.microsoft.request_timeout)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("http client")?;
    let throttle = Arc::new(Throttle::new(
        settings.microsoft.requests_per_second,
        settings.microsoft.burst,
    ));
    let retry = RetryPolicy {
        max_attempts: settings.microsoft.max_attempts.max(1),
        ..RetryPolicy::default()
    };
    let (changes, _) = tokio::sync::broadcast::channel(1024);
    let core = Arc::new(Ingestor {
        store,
        graph: GraphAlertsClient::new(
            http.clone(),
            url::Url::parse(&settings.microsoft.graph_url)?,
            retry.clone(),
            Arc::clone(&throttle),
        ),
        partner_center: PartnerCenterClient::new(
            http.clone(),
            url::Url::parse(&settings.microsoft.partner_center_url)?,
            retry,
            throttle,
        ),
        tokens,
        clock,
        settings: settings.ingest.clone(),
        changes,
        relay: Some(relay.clone()),
        metrics: engine::IngestMetrics::register(&platform.metrics),
    });
    let mut tasks = tokio::task::JoinSet::new();

    let default_poll = settings
        .default_poll_interval
        .unwrap_or(Duration::from_secs(300));
    let api = palisade_contracts::alerts::v1::alert_service_server::AlertServiceServer::new(
        service::AlertApi::new(Arc::clone(&core), default_poll),
    )
    .max_decoding_message_size(settings.server.max_message_bytes);
    let db_for_ready = database.clone();
    let serve = palisade_server::serve(palisade_server::ServeOptions {
        service_name: SERVICE,
        health_names: vec!["palisade.alerts.v1.AlertService"],
        settings: settings.server.clone(),
        listeners: palisade_server::Listeners {
            grpc: listeners.grpc,
            admin: listeners.admin,
        },
        routes: tonic::service::Routes::new(api),
        authenticator: platform.authenticator,
        metrics: platform.metrics.clone(),
        readiness: Arc::new(move || {
            let db = db_for_ready.clone();
            Box::pin(async move { db.ping().await.is_ok() })
        }),
        shutdown: shutdown.clone(),
    });
    tasks.spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "grpc server failed");
        }
    });

    let wake = Arc::new(tokio::sync::Notify::new());
    if let Some(listener) = listeners.webhook {
        let router = receiver::router(
            Arc::clone(&core),
            verifier(&settings.webhook, http)?,
            Arc::clone(&wake),
        );
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "webhook receiver failed");
            }
        });
    }

    tasks.spawn(
        palisade_queue::PlatformSampler::register(&platform.metrics, SERVICE)
            .watch(&queue, store::TOPIC_WRITE_BACK, SERVICE)
            .outbox(database.clone())
            .run(settings.queue.sample_interval, shutdown.clone()),
    );
    // SQLite has one writer: more relays there would only queue on it.
    let relays = match database.backend() {
        palisade_storage::Backend::Postgres => settings.workers.outbox_relays.max(1),
        palisade_storage::Backend::Sqlite => 1,
    };
    for _ in 0..relays {
        tasks.spawn(
            relay
                .clone()
                .run(settings.workers.outbox_interval, shutdown.clone()),
        );
    }
    if settings.workers.enabled {
        let w = settings.workers.clone();
        tasks.spawn(workers::gauge_loop(
            Arc::clone(&core),
            w.gauge_interval,
            shutdown.clone(),
        ));
        tasks.spawn(workers::poll_loop(
            Arc::clone(&core),
            w.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(workers::inbox_loop(
            Arc::clone(&core),
            wake,
            w.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(workers::write_back_loop(
            Arc::clone(&core),
            queue,
            w.clone(),
            shutdown.clone(),
        ));
        if settings.ingest.enrichment {
            tasks.spawn(workers::enrichment_loop(
                Arc::clone(&core),
                w,
                shutdown.clone(),
            ));
        }
    }
    Ok(Running {
        core,
        shutdown,
        tasks,
        database,
    })
}

/// Serves until `shutdown` is cancelled, then stops in order: the API stops accepting, the
/// workers finish their step, the pool closes.
pub async fn run(
    settings: Settings,
    listeners: palisade_server::Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let webhook = match settings.webhook.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("config key webhook.listen: cannot bind {addr}"))?,
        ),
        None => None,
    };
    let listeners = Listeners {
        grpc: listeners.grpc,
        admin: listeners.admin,
        webhook,
    };
    let running = start(settings, listeners, palisade_clock::system()).await?;
    tracing::info!("alert-ingest started");
    shutdown.cancelled().await;
    running.stop().await;
    tracing::info!("alert-ingest stopped");
    Ok(())
}
