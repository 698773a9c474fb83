//! The refresh race, shared by its test (`tests/race.rs`) and `make bench`: replicas that share
//! one Postgres and one Redis (each with its own pools, caches and lock client, as pods would),
//! and many callers at once on one (partner, target, resource) key. The broker promises one
//! identity-provider redemption per key and refresh window however many replicas race.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use palisade_auth::BearerInterceptor;
use palisade_contracts::tokens::v1::{
    self as pb, token_broker_service_client::TokenBrokerServiceClient,
};
use palisade_storage::DatabaseSettings;
use secrecy::SecretString;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{KekSettings, LockSettings, Settings};

pub type Client = TokenBrokerServiceClient<InterceptedService<Channel, BearerInterceptor>>;

/// What the replicas share, and where Entra ID is (ms-sim's login host).
#[derive(Debug, Clone)]
pub struct Shared {
    pub database: DatabaseSettings,
    pub redis_url: SecretString,
    /// Redis keys of this set of replicas start with it (the lock's keys and the queue's).
    pub key_prefix: String,
    /// The key-encryption keys (`v1:<base64>`); every replica must open what another sealed.
    pub kek: SecretString,
    pub login_url: String,
}

/// One replica's settings: loopback on port 0, the shared database and Redis, the refresh
/// lock on Redis, and short lock polls and retries, so a race resolves in milliseconds.
pub fn replica_settings(shared: &Shared) -> Settings {
    let mut settings = Settings {
        server: palisade_server::ServerSettings::ephemeral(),
        database: shared.database.clone(),
        queue: palisade_queue::QueueSettings {
            backend: palisade_queue::Backend::Redis,
            redis_url: Some(shared.redis_url.clone()),
            key_prefix: format!("{}q", shared.key_prefix),
            ..Default::default()
        },
        kek: KekSettings {
            keys: Some(shared.kek.clone()),
            ..Default::default()
        },
        lock: LockSettings {
            redis_url: Some(shared.redis_url.clone()),
            key_prefix: shared.key_prefix.clone(),
        },
        ..Default::default()
    };
    settings.entra.public_login_url = shared.login_url.clone();
    settings.entra.china_login_url = shared.login_url.clone();
    settings.broker.lock_poll = Duration::from_millis(10);
    settings.broker.retry_base_delay = Duration::from_millis(20);
    settings.broker.retry_after_max = Duration::from_secs(2);
    settings.broker.default_redirect_uri = "https://panel.example/consent".into();
    settings
}

/// How one window of the race ended.
#[derive(Debug, Default)]
pub struct RaceOutcome {
    /// Distinct access tokens the callers got (one, when every caller shares the redemption).
    pub tokens: HashSet<String>,
    pub failures: Vec<tonic::Status>,
    /// From the first call to the last answer.
    pub elapsed: Duration,
}

/// `callers` concurrent `GetAccessToken` calls for (`partner`, the partner's own tenant,
/// `resource`), spread round-robin over `clients` (one per replica).
pub async fn race(
    clients: &[Client],
    partner: &str,
    resource: pb::Resource,
    callers: usize,
) -> RaceOutcome {
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let mut client = clients[caller % clients.len()].clone();
        let request = pb::GetAccessTokenRequest {
            partner_tenant_id: partner.to_owned(),
            resource: resource as i32,
            ..Default::default()
        };
        calls.spawn(async move {
            client
                .get_access_token(request)
                .await
                .map(|r| r.into_inner().access_token)
        });
    }
    let mut outcome = RaceOutcome::default();
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok(Ok(token)) => {
                outcome.tokens.insert(token);
            }
            Ok(Err(status)) => outcome.failures.push(status),
            Err(e) => outcome
                .failures
                .push(tonic::Status::internal(e.to_string())),
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}
