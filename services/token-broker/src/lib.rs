//! The SAM refresh-token vault and access-token service.
//!
//! The only place where a partner's refresh tokens and app secrets live. It takes MFA-verified
//! consents, stores refresh tokens under envelope encryption, mints cached access tokens for
//! Partner Center, Graph, ARM or a custom scope (for the partner or any customer through GDAP)
//! with at most one identity-provider call per key and refresh window across replicas, keeps
//! tokens alive before the 90-day cliff, classifies failures into states people can act on,
//! and audits every redemption. No RPC ever returns a refresh token or a secret.
//!
//! Layout: [`broker`] is the core, [`service`] the gRPC surface, [`store`] the tables (Postgres
//! or SQLite), [`lock`] the cross-replica refresh lease, [`kek`] the key providers (with
//! [`vault_transit`] the HashiCorp Vault client), [`health`] the AADSTS classification.

pub mod broker;
pub mod error;
pub mod health;
pub mod kek;
pub mod lock;
pub mod race;
pub mod service;
pub mod store;
pub mod vault_transit;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use palisade_clock::SharedClock;
use palisade_microsoft::{
    entra::{AppIdentity, ClientCredential, Cloud, EntraClient, EntraHosts},
    key_vault::KeyVaultClient,
};
use palisade_queue::outbox::OutboxRelay;
use palisade_storage::{Backend, Database, DatabaseSettings};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use broker::{Broker, BrokerSettings, ResourceSpec};
pub use error::BrokerError;
pub use store::{SqlStore, TokenStore};

/// The service's short name: config prefix, metrics, logs.
pub const SERVICE: &str = "token-broker";
/// The service's Postgres schema (SQLite file).
pub const SCHEMA: &str = "tokens";

/// Every table this service owns.
pub const MIGRATIONS: &[palisade_storage::Migration] = store::MIGRATIONS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KekProvider {
    /// Keys from `kek.keys` or `kek.key_file` (with SQLite and neither set, a file next to the
    /// database is created).
    #[default]
    Local,
    AzureKeyVault,
    /// A HashiCorp Vault transit key (`kek.vault_transit`).
    VaultTransit,
}

/// `[kek]`: what wraps the data keys. Never serialised: it may hold key material.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KekSettings {
    pub provider: KekProvider,
    #[serde(skip_serializing)]
    pub keys: Option<SecretString>,
    pub key_file: Option<PathBuf>,
    pub key_vault: KeyVaultSettings,
    pub vault_transit: VaultTransitSettings,
}

impl std::fmt::Debug for KekSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KekSettings")
            .field("provider", &self.provider)
            .field("keys", &self.keys.as_ref().map(|_| "[redacted]"))
            .field("key_file", &self.key_file)
            .field("key_vault", &self.key_vault)
            .field("vault_transit", &self.vault_transit)
            .finish()
    }
}

/// `[kek.key_vault]`: the vault, the key, and the operator app allowed to wrap with it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyVaultSettings {
    /// `https://<vault>.vault.azure.net/`
    pub vault_url: Option<String>,
    pub key_name: String,
    /// The operator app's tenant, client id and secret (client credentials, aud vault).
    pub tenant_id: String,
    pub client_id: String,
    #[serde(skip_serializing)]
    pub client_secret: Option<SecretString>,
    pub china: bool,
}

impl Default for KeyVaultSettings {
    fn default() -> Self {
        Self {
            vault_url: None,
            key_name: "palisade-kek".into(),
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret: None,
            china: false,
        }
    }
}

impl std::fmt::Debug for KeyVaultSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVaultSettings")
            .field("vault_url", &self.vault_url)
            .field("key_name", &self.key_name)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// `[kek.vault_transit]`: a HashiCorp Vault transit key that encrypts the data keys.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultTransitSettings {
    /// Vault's address, e.g. `https://vault.example:8200` (the API is under `/v1/`).
    pub address: Option<String>,
    /// Where the transit engine is mounted.
    pub mount: String,
    pub key_name: String,
    /// A Vault Enterprise namespace (`X-Vault-Namespace`); none for the root namespace.
    pub namespace: Option<String>,
    /// The token itself; or `token_file`, never both.
    #[serde(skip_serializing)]
    pub token: Option<SecretString>,
    /// A file holding the token (a mounted Kubernetes secret, a Vault Agent sink), read again
    /// whenever it changes.
    pub token_file: Option<PathBuf>,
    /// PEM certificates to trust for Vault's TLS certificate (a private CA).
    pub ca_file: Option<PathBuf>,
}

impl Default for VaultTransitSettings {
    fn default() -> Self {
        Self {
            address: None,
            mount: "transit".into(),
            key_name: "palisade-kek".into(),
            namespace: None,
            token: None,
            token_file: None,
            ca_file: None,
        }
    }
}

impl std::fmt::Debug for VaultTransitSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultTransitSettings")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("key_name", &self.key_name)
            .field("namespace", &self.namespace)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl VaultTransitSettings {
    fn validate(&self) -> Result<(), palisade_config::ConfigError> {
        use palisade_config::ConfigError;
        let Some(address) = &self.address else {
            return Err(ConfigError::invalid(
                "kek.vault_transit.address",
                "required with the vault_transit provider",
            ));
        };
        match url::Url::parse(address) {
            Ok(url) if matches!(url.scheme(), "https" | "http") && url.has_host() => {}
            _ => {
                return Err(ConfigError::invalid(
                    "kek.vault_transit.address",
                    "not an http(s) URL",
                ));
            }
        }
        // Vault's own name rules for mounts and keys; anything else would change the path.
        let path_safe = |value: &str, slashes: bool| {
            !value.is_empty()
                && value.split('/').all(|s| s != ".." && s != ".")
                && value.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, '-' | '_' | '.')
                        || (slashes && c == '/')
                })
        };
        if !path_safe(self.mount.trim_matches('/'), true) {
            return Err(ConfigError::invalid(
                "kek.vault_transit.mount",
                "letters, digits, '-', '_', '.' and '/' only",
            ));
        }
        if !path_safe(&self.key_name, false) {
            return Err(ConfigError::invalid(
                "kek.vault_transit.key_name",
                "letters, digits, '-', '_' and '.' only",
            ));
        }
        match (&self.token, &self.token_file) {
            (None, None) => Err(ConfigError::invalid(
                "kek.vault_transit.token",
                "set token or token_file",
            )),
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                "kek.vault_transit.token_file",
                "token and token_file are both set; keep one",
            )),
            _ => Ok(()),
        }
    }
}

/// `[entra]`: the sign-in hosts (real Microsoft unless pointed at ms-sim).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntraSettings {
    pub public_login_url: String,
    pub china_login_url: String,
}

impl Default for EntraSettings {
    fn default() -> Self {
        let hosts = EntraHosts::default();
        Self {
            public_login_url: hosts.public.to_string(),
            china_login_url: hosts.china.to_string(),
        }
    }
}

/// `[lock]`: the cross-replica refresh lease. Without Redis (the embedded default) the lease
/// is in-process, which is right for one replica only.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockSettings {
    /// Defaults to `queue.redis_url` when the queue is on Redis.
    #[serde(skip_serializing)]
    pub redis_url: Option<SecretString>,
    pub key_prefix: String,
}

impl Default for LockSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "palisade:".into(),
        }
    }
}

impl std::fmt::Debug for LockSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockSettings")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "[redacted]"))
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// Everything the token broker is configured with. Defaults run locally on SQLite, the
/// in-process queue and a local key file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: palisade_server::ServerSettings,
    pub database: DatabaseSettings,
    pub queue: palisade_queue::QueueSettings,
    pub telemetry: palisade_telemetry::TelemetrySettings,
    pub auth: palisade_auth::AuthSettings,
    #[serde(skip_serializing)]
    pub kek: KekSettings,
    pub entra: EntraSettings,
    pub lock: LockSettings,
    pub broker: BrokerSettings,
    /// Run the background workers (outbox relay, keep-alive sweeper, usage flush). Off for
    /// an API-only replica.
    pub workers: Option<bool>,
}

impl palisade_config::Validate for Settings {
    fn validate(&self) -> Result<(), palisade_config::ConfigError> {
        use palisade_config::ConfigError;
        self.server.validate()?;
        self.broker.validate().map_err(|e| {
            let (key, reason) = e.split_once(": ").unwrap_or(("broker", e.as_str()));
            ConfigError::invalid(key, reason)
        })?;
        for (key, value) in [
            ("entra.public_login_url", &self.entra.public_login_url),
            ("entra.china_login_url", &self.entra.china_login_url),
        ] {
            url::Url::parse(value).map_err(|_| ConfigError::invalid(key, "not a URL"))?;
        }
        if self.queue.backend == palisade_queue::Backend::Redis && self.queue.redis_url.is_none() {
            return Err(ConfigError::invalid(
                "queue.redis_url",
                "required with the redis backend",
            ));
        }
        if self.kek.provider == KekProvider::AzureKeyVault {
            let kv = &self.kek.key_vault;
            if kv.vault_url.is_none() {
                return Err(ConfigError::invalid(
                    "kek.key_vault.vault_url",
                    "required with the azure_key_vault provider",
                ));
            }
            if kv.tenant_id.is_empty() || kv.client_id.is_empty() || kv.client_secret.is_none() {
                return Err(ConfigError::invalid(
                    "kek.key_vault",
                    "tenant_id, client_id and client_secret of the operator app are required",
                ));
            }
        }
        if self.kek.provider == KekProvider::VaultTransit {
            self.kek.vault_transit.validate()?;
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

fn entra_client(settings: &EntraSettings) -> anyhow::Result<EntraClient> {
    let hosts = EntraHosts {
        public: url::Url::parse(&settings.public_login_url).context("entra.public_login_url")?,
        china: url::Url::parse(&settings.china_login_url).context("entra.china_login_url")?,
    };
    Ok(EntraClient::new(hosts)?)
}

/// The Key Vault client, when configured (for the KEK and for secret references).
pub fn key_vault_client(
    settings: &KeyVaultSettings,
    entra: &EntraClient,
) -> anyhow::Result<Option<KeyVaultClient>> {
    let (Some(url), Some(secret)) = (&settings.vault_url, &settings.client_secret) else {
        return Ok(None);
    };
    let vault = url::Url::parse(url).context("kek.key_vault.vault_url")?;
    let app = AppIdentity {
        client_id: settings.client_id.clone(),
        credential: ClientCredential::Secret(SecretString::from(secret.expose_secret().to_owned())),
        cloud: if settings.china {
            Cloud::China
        } else {
            Cloud::Public
        },
    };
    Ok(Some(KeyVaultClient::new(
        vault,
        settings.key_name.clone(),
        entra.clone(),
        app,
        settings.tenant_id.clone(),
    )?))
}

/// The Vault transit client of `[kek.vault_transit]` (validated settings).
pub fn vault_transit_client(
    settings: &VaultTransitSettings,
) -> anyhow::Result<vault_transit::VaultTransitClient> {
    let address = settings
        .address
        .as_deref()
        .context("kek.vault_transit.address is required")?;
    let address = url::Url::parse(address).context("kek.vault_transit.address")?;
    let token = match (&settings.token, &settings.token_file) {
        (Some(token), _) => vault_transit::TokenSource::Static(token.clone()),
        (None, Some(path)) => vault_transit::TokenSource::File(path.clone()),
        (None, None) => anyhow::bail!("kek.vault_transit: set token or token_file"),
    };
    let ca = settings
        .ca_file
        .as_ref()
        .map(|path| {
            std::fs::read(path)
                .with_context(|| format!("kek.vault_transit.ca_file {}", path.display()))
        })
        .transpose()?;
    vault_transit::VaultTransitClient::new(
        &address,
        &settings.mount,
        &settings.key_name,
        settings.namespace.clone(),
        token,
        ca.as_deref(),
    )
    .context("kek.vault_transit")
}

/// Where the embedded default keeps its key: next to the SQLite database.
fn default_key_file(database: &DatabaseSettings) -> Option<PathBuf> {
    let url = database.url.expose_secret();
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = PathBuf::from(path.split('?').next().unwrap_or(path));
    Some(
        path.parent()
            .map(|d| d.join("token-broker-kek"))
            .unwrap_or_else(|| PathBuf::from("token-broker-kek")),
    )
}

fn build_kek(
    settings: &Settings,
    key_vault: Option<KeyVaultClient>,
) -> anyhow::Result<Arc<dyn kek::RotatingKek>> {
    match settings.kek.provider {
        KekProvider::AzureKeyVault => {
            let client = key_vault.context("kek.key_vault: the vault is not configured")?;
            Ok(Arc::new(kek::KeyVaultKek::new(client)))
        }
        KekProvider::VaultTransit => Ok(Arc::new(kek::VaultTransitKek::new(vault_transit_client(
            &settings.kek.vault_transit,
        )?))),
        KekProvider::Local => {
            if let Some(keys) = &settings.kek.keys {
                return Ok(Arc::new(
                    kek::LocalKeyring::from_spec(keys).context("kek.keys")?,
                ));
            }
            let path = settings
                .kek
                .key_file
                .clone()
                .or_else(|| default_key_file(&settings.database))
                .context(
                    "kek: set kek.keys, kek.key_file or the azure_key_vault provider; refresh tokens are encrypted at rest",
                )?;
            Ok(Arc::new(
                kek::LocalKeyring::from_file(path).context("kek.key_file")?,
            ))
        }
    }
}

/// Hooks for tests and embedding: the clock, a shared authenticator (many instances in one
/// process), and the metrics registry.
#[derive(Clone)]
pub struct Options {
    pub clock: SharedClock,
    pub authenticator: Option<Arc<palisade_auth::Authenticator>>,
    pub metrics: palisade_telemetry::Metrics,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: palisade_clock::system(),
            authenticator: None,
            metrics: palisade_telemetry::Metrics::new(),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options").finish_non_exhaustive()
    }
}

/// A started broker. Stop it with [`Running::stop`] (graceful) or [`Running::kill`] (a crash).
pub struct Running {
    pub broker: Arc<Broker>,
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

    /// Every task aborted where it stands; leases are left to expire.
    pub async fn kill(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.shutdown.cancel();
    }
}

/// `palisade-token-broker migrate`: the tokens schema and the credential registry.
pub async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let db = Database::connect(&settings.database, SCHEMA).await?;
    let applied = SqlStore::new(db.clone()).migrate().await?;
    palisade_auth::AuthStore::open(&settings.database).await?;
    tracing::info!(applied, "migrations applied");
    db.close().await;
    Ok(())
}

/// Starts the broker: migrations, the key provider, the gRPC API and, unless disabled, the
/// outbox relay, the keep-alive sweeper, the usage flush and the revocation watch.
pub async fn start(
    settings: Settings,
    listeners: palisade_server::Listeners,
    options: Options,
) -> anyhow::Result<Running> {
    palisade_config::Validate::validate(&settings)?;
    let database = Database::connect(&settings.database, SCHEMA)
        .await
        .context("token-broker database")?;
    let store = SqlStore::new(database.clone());
    store
        .migrate()
        .await
        .context("migrating the tokens schema")?;
    let entra = entra_client(&settings.entra)?;
    let key_vault = key_vault_client(&settings.kek.key_vault, &entra)?;
    let kek = build_kek(&settings, key_vault)?;
    // Secret references to Key Vault use their own client (the KEK's may be local).
    let references = key_vault_client(&settings.kek.key_vault, &entra)?.map(Arc::new);
    let redis_url = settings
        .lock
        .redis_url
        .clone()
        .or_else(|| match settings.queue.backend {
            palisade_queue::Backend::Redis => settings.queue.redis_url.clone(),
            palisade_queue::Backend::InProcess => None,
        });
    let lock: Arc<dyn lock::RefreshLock> = match &redis_url {
        Some(url) => Arc::new(
            lock::RedisLock::connect(url.expose_secret(), &settings.lock.key_prefix)
                .await
                .context("lock.redis_url")?,
        ),
        None => {
            if database.backend() == Backend::Postgres {
                tracing::warn!(
                    "no Redis for the refresh lock: correct for one replica only; with several, set lock.redis_url"
                );
            }
            Arc::new(lock::LocalLock::default())
        }
    };
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let authenticator = match options.authenticator.clone() {
        Some(a) => a,
        None => {
            palisade_server::Platform::start(
                SERVICE,
                &settings.database,
                &settings.auth,
                Vec::new(),
                shutdown.clone(),
            )
            .await?
            .authenticator
        }
    };
    let metrics = broker::BrokerMetrics::register(&options.metrics);
    let store: Arc<dyn TokenStore> = Arc::new(store);
    let core = Arc::new(Broker::new(
        store,
        kek,
        entra,
        references,
        lock,
        options.clock.clone(),
        settings.broker.clone(),
        metrics,
    ));
    let api = service::TokenBrokerApi::new(Arc::clone(&core))
        .into_server()
        .max_decoding_message_size(settings.server.max_message_bytes);
    let serve = palisade_server::serve(palisade_server::ServeOptions {
        service_name: SERVICE,
        health_names: vec!["palisade.tokens.v1.TokenBrokerService"],
        settings: settings.server.clone(),
        listeners,
        routes: tonic::service::Routes::new(api),
        authenticator,
        metrics: options.metrics.clone(),
        readiness: palisade_server::always_ready(),
        shutdown: shutdown.clone(),
    });
    tasks.spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "grpc server failed");
        }
    });
    tasks.spawn(Arc::clone(&core).revocation_watch(shutdown.clone()));
    // The broker consumes no topic: its platform gauge is the outbox it writes.
    tasks.spawn(
        palisade_queue::PlatformSampler::register(&options.metrics, SERVICE)
            .outbox(database.clone())
            .run(settings.queue.sample_interval, shutdown.clone()),
    );
    tasks.spawn(Arc::clone(&core).usage_loop(shutdown.clone()));
    if settings.workers.unwrap_or(true) {
        let queue = palisade_queue::connect(&settings.queue)
            .await
            .context("token-broker queue")?;
        let relay = OutboxRelay::new(database.clone(), queue);
        core.set_relay(relay.clone());
        tasks.spawn(relay.run(Duration::from_secs(1), shutdown.clone()));
        tasks.spawn(Arc::clone(&core).sweep_loop(shutdown.clone()));
    }
    Ok(Running {
        broker: core,
        shutdown,
        tasks,
        database,
    })
}

/// Serves until `shutdown` is cancelled, then drains and closes the pool.
pub async fn run(
    settings: Settings,
    listeners: palisade_server::Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let running = start(settings, listeners, Options::default()).await?;
    tracing::info!("token broker started");
    shutdown.cancelled().await;
    running.stop().await;
    tracing::info!("token broker stopped");
    Ok(())
}
