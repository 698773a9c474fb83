//! The 20-replica refresh race: 20 token-broker instances in this process, each with its own
//! pools, caches and Redis lock client, sharing one Postgres database and one Redis prefix as
//! pods would; 200 concurrent callers on one (partner, target, resource) key; the expiry
//! forced by moving the brokers' clock and ms-sim's by an hour. ms-sim's request log counts the
//! refresh-token redemptions of each window (the promise: exactly one).
//!
//! The set-up is the race test's (`palisade_token_broker::race`). The same-run baseline is the
//! same 200 callers right after each window, served from the replicas' caches.

use std::{sync::Arc, time::Duration};

use base64::Engine;
use palisade_auth::{AuthStore, Authenticator, BearerInterceptor, bootstrap_admin};
use palisade_contracts::tokens::v1::{
    self as pb, token_broker_service_client::TokenBrokerServiceClient,
};
use palisade_token_broker::race::{self, Client, Shared};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub const REPLICAS: usize = 20;
pub const CALLERS: usize = 200;

pub struct Outcome {
    /// Redemptions at ms-sim per window (the target is 1 each).
    pub redemptions: Vec<usize>,
    /// Distinct tokens the callers got per window (1 when all share the redemption).
    pub distinct_tokens: Vec<usize>,
    pub failures: usize,
    /// Time to serve all callers, per window, in ms.
    pub refresh_ms: Vec<f64>,
    /// The same callers served from the caches right after, per window, in ms.
    pub cached_ms: Vec<f64>,
}

pub async fn run(database_url: &str, redis_url: &str, windows: usize) -> anyhow::Result<Outcome> {
    // A database of its own, dropped afterwards.
    let scratch = crate::scratch::ScratchDatabase::create(database_url, "race").await?;
    let url = scratch.url.clone();
    let outcome = measure(&url, redis_url, windows).await;
    scratch.drop().await?;
    outcome
}

async fn measure(url: &str, redis_url: &str, windows: usize) -> anyhow::Result<Outcome> {
    let sim = ms_sim::start(ms_sim::SimConfig::default()).await?;
    let partner = sim.scenario().partners[0].clone();
    let mut database = palisade_storage::DatabaseSettings {
        url: SecretString::from(url.to_owned()),
        ..Default::default()
    };
    database.max_connections = 4;
    let auth = AuthStore::open(&database).await?;
    let stop = CancellationToken::new();
    // The credential registry is not what races: one authenticator serves every replica.
    let authenticator =
        Authenticator::start(auth.clone(), Duration::from_secs(1), stop.clone()).await?;
    let secret = SecretString::from(bootstrap_admin(&auth, "bench race").await?);
    let clock = palisade_clock::OffsetClock::new();
    let mut replica_db = database.clone();
    replica_db.max_connections = 2;
    let shared = Shared {
        database: replica_db,
        redis_url: SecretString::from(redis_url.to_owned()),
        key_prefix: format!("bench-race-{}:", uuid::Uuid::new_v4().simple()),
        kek: SecretString::from(format!(
            "v1:{}",
            base64::engine::general_purpose::STANDARD.encode([7_u8; 32])
        )),
        login_url: sim.login_url().to_string(),
    };
    let mut replicas = Vec::new();
    let mut clients: Vec<Client> = Vec::new();
    let result = async {
        for _ in 0..REPLICAS {
            let settings = race::replica_settings(&shared);
            let listeners = palisade_server::Listeners::bind(&settings.server).await?;
            let addr = listeners.grpc.local_addr()?;
            replicas.push(
                palisade_token_broker::start(
                    settings,
                    listeners,
                    palisade_token_broker::Options {
                        clock: clock.clone(),
                        authenticator: Some(Arc::clone(&authenticator)),
                        metrics: palisade_telemetry::Metrics::new(),
                    },
                )
                .await?,
            );
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?;
            clients.push(TokenBrokerServiceClient::with_interceptor(
                channel,
                BearerInterceptor::new(Some(&secret)),
            ));
        }
        let mut admin = clients[0].clone();
        let app = palisade_cli::dev::provision::ensure_sam_app(&mut admin, &partner, "bench race")
            .await?;
        palisade_cli::dev::provision::consent_with_mfa(&mut admin, &partner, &app.app_id).await?;

        let control = sim.control();
        let mut outcome = Outcome {
            redemptions: Vec::new(),
            distinct_tokens: Vec::new(),
            failures: 0,
            refresh_ms: Vec::new(),
            cached_ms: Vec::new(),
        };
        for window in 0..windows {
            if window > 0 {
                // Forced expiry: every replica's cached token and the shared row are stale.
                clock.advance(Duration::from_secs(3600));
                control.advance_clock(Duration::from_secs(3600));
            }
            control.clear_requests();
            let refresh = race::race(
                &clients,
                &partner.tenant_id,
                pb::Resource::PartnerCenter,
                CALLERS,
            )
            .await;
            outcome
                .redemptions
                .push(control.requests(&ms_sim::control_filter_refresh()).len());
            outcome.distinct_tokens.push(refresh.tokens.len());
            outcome.failures += refresh.failures.len();
            outcome.refresh_ms.push(refresh.elapsed.as_secs_f64() * 1e3);
            let cached = race::race(
                &clients,
                &partner.tenant_id,
                pb::Resource::PartnerCenter,
                CALLERS,
            )
            .await;
            outcome.failures += cached.failures.len();
            outcome.cached_ms.push(cached.elapsed.as_secs_f64() * 1e3);
        }
        anyhow::Ok(outcome)
    }
    .await;
    for replica in replicas {
        replica.stop().await;
    }
    stop.cancel();
    sim.shutdown().await;
    result
}
