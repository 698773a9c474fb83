//! The token broker's hot path: a cached `GetAccessToken` over gRPC on loopback, through the
//! whole server stack (trace and metrics, load shed, concurrency limit, credential check) and
//! the broker (authorisation, cache lookup, usage count). Its baseline is the bare tonic echo.
//!
//! ms-sim stands in for Entra ID; the consent and the one redemption that fills the cache
//! happen before the measurement. The broker runs on SQLite in a temp directory: a cached
//! token never touches the database.

use std::time::Duration;

use palisade_auth::{AuthStore, BearerInterceptor, bootstrap_admin};
use palisade_contracts::tokens::v1::{
    self as pb, token_broker_service_client::TokenBrokerServiceClient,
};
use palisade_storage::DatabaseSettings;
use secrecy::SecretString;

use crate::loadgen::{self, Sample};

/// A broker with a warm cache and a client for it, measured as often as the caller likes.
pub struct CachedTokens {
    op: Op,
    running: palisade_token_broker::Running,
    sim: ms_sim::MsSim,
    dir: std::path::PathBuf,
    /// Bytes of the access token each call returns (the echo baseline can match it).
    pub token_len: usize,
}

type Op = std::sync::Arc<
    dyn Fn(u64) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send + Sync,
>;

impl CachedTokens {
    /// Max throughput, then latency at half of it: one round.
    pub async fn measure(&self, duration: Duration) -> (Sample, Sample) {
        let op = self.op.clone();
        loadgen::max_then_half(duration, move |i| op(i)).await
    }

    /// The cached call, as a load generator operation.
    pub fn op(
        &self,
    ) -> impl Fn(u64) -> futures::future::BoxFuture<'static, anyhow::Result<()>>
    + Send
    + Sync
    + Clone
    + 'static {
        let op = self.op.clone();
        move |i| op(i)
    }

    pub async fn stop(self) {
        self.running.stop().await;
        self.sim.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn cached_get_access_token() -> anyhow::Result<CachedTokens> {
    let sim = ms_sim::start(ms_sim::SimConfig::default()).await?;
    let partner = sim.scenario().partners[0].clone();
    let dir = std::env::temp_dir().join(format!(
        "palisade-bench-tokens-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let database = DatabaseSettings {
        url: format!("sqlite://{}/palisade.db", dir.display()).into(),
        ..Default::default()
    };
    let store = AuthStore::open(&database).await?;
    let secret = SecretString::from(bootstrap_admin(&store, "bench").await?);
    let mut settings = palisade_token_broker::Settings {
        server: palisade_server::ServerSettings::ephemeral(),
        database,
        workers: Some(false),
        ..Default::default()
    };
    settings.kek.key_file = Some(dir.join("kek"));
    settings.entra.public_login_url = sim.login_url().to_string();
    settings.entra.china_login_url = sim.login_url().to_string();
    let listeners = palisade_server::Listeners::bind(&settings.server).await?;
    let addr = listeners.grpc.local_addr()?;
    let running = palisade_token_broker::start(
        settings,
        listeners,
        palisade_token_broker::Options::default(),
    )
    .await?;
    let channel = crate::loadgen::grpc_channel(addr).await?;
    let mut client = TokenBrokerServiceClient::with_interceptor(
        channel.clone(),
        BearerInterceptor::new(Some(&secret)),
    );
    let app = palisade_cli::dev::provision::ensure_sam_app(&mut client, &partner, "bench").await?;
    palisade_cli::dev::provision::consent_with_mfa(&mut client, &partner, &app.app_id).await?;
    let request = pb::GetAccessTokenRequest {
        partner_tenant_id: partner.tenant_id.clone(),
        target_tenant_id: String::new(),
        resource: pb::Resource::Graph as i32,
        custom_scope: String::new(),
        force_refresh: false,
    };
    // Fill the cache: the one redemption of the run.
    let token_len = client
        .get_access_token(request.clone())
        .await?
        .into_inner()
        .access_token
        .len();
    // One interceptor, as a real client keeps one: formatting the header per call would
    // charge the client's work to the server under test.
    let interceptor = BearerInterceptor::new(Some(&secret));
    let op: Op = std::sync::Arc::new(move |_i: u64| {
        let mut client =
            TokenBrokerServiceClient::with_interceptor(channel.clone(), interceptor.clone());
        let request = request.clone();
        Box::pin(async move {
            let token = client.get_access_token(request).await?.into_inner();
            anyhow::ensure!(token.from_cache, "a cache miss during the measurement");
            Ok(())
        })
    });
    Ok(CachedTokens {
        op,
        running,
        sim,
        dir,
        token_len,
    })
}
