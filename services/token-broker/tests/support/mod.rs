//! The world every token-broker test runs in: ms-sim over real HTTP, a Postgres database and a
//! Redis prefix of its own, broker instances in-process on 127.0.0.1:0, credentials minted in
//! the real registry, and logs captured for the secret scan.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use base64::Engine;
use palisade_auth::{AuthStore, Authenticator, BearerInterceptor, NewCredential, Scope};
use palisade_clock::OffsetClock;
use palisade_contracts::{
    events::v1::TokenHealthChanged,
    tokens::v1::{self as pb, token_broker_service_client::TokenBrokerServiceClient},
};
use palisade_testkit::{LogCapture, TestDatabase, TestRedis};
use palisade_token_broker::{Options, Running, Settings};
use prost::Message;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

pub type Client = TokenBrokerServiceClient<InterceptedService<Channel, BearerInterceptor>>;

pub fn kek_spec() -> SecretString {
    SecretString::from(format!(
        "v1:{}",
        base64::engine::general_purpose::STANDARD.encode([7_u8; 32])
    ))
}

pub struct World {
    pub sim: ms_sim::MsSim,
    pub db: TestDatabase,
    pub redis: TestRedis,
    pub auth: AuthStore,
    pub authenticator: Arc<Authenticator>,
    pub clock: Arc<OffsetClock>,
    pub logs: LogCapture,
    pub admin: String,
    shutdown: CancellationToken,
}

pub struct Instance {
    pub running: Running,
    pub addr: std::net::SocketAddr,
}

impl World {
    pub async fn new() -> Self {
        let logs = palisade_testkit::capture_logs();
        let sim = ms_sim::start(ms_sim::SimConfig::default()).await.unwrap();
        let db = TestDatabase::create().await;
        let redis = TestRedis::create().await;
        let mut settings = db.settings();
        settings.max_connections = 4;
        let auth = AuthStore::open(&settings).await.unwrap();
        let shutdown = CancellationToken::new();
        let authenticator =
            Authenticator::start(auth.clone(), Duration::from_secs(1), shutdown.clone())
                .await
                .unwrap();
        let admin = palisade_auth::bootstrap_admin(&auth, "test admin")
            .await
            .unwrap();
        Self {
            sim,
            db,
            redis,
            auth,
            authenticator,
            clock: OffsetClock::new(),
            logs,
            admin,
            shutdown,
        }
    }

    pub fn partner(&self, i: usize) -> &ms_sim::scenario::Partner {
        &self.sim.scenario().partners[i]
    }

    pub fn settings(&self) -> Settings {
        let mut database = self.db.settings();
        database.max_connections = 3;
        palisade_token_broker::race::replica_settings(&palisade_token_broker::race::Shared {
            database,
            redis_url: SecretString::from(self.redis.url().to_owned()),
            key_prefix: self.redis.prefix().to_owned(),
            kek: kek_spec(),
            login_url: self.sim.login_url().to_string(),
        })
    }

    pub async fn start(&self, settings: Settings) -> Instance {
        let listeners = palisade_server::Listeners::bind(&settings.server)
            .await
            .unwrap();
        let addr = listeners.grpc.local_addr().unwrap();
        let running = palisade_token_broker::start(
            settings,
            listeners,
            Options {
                clock: self.clock.clone(),
                authenticator: Some(self.authenticator.clone()),
                metrics: palisade_telemetry::Metrics::new(),
            },
        )
        .await
        .unwrap();
        Instance { running, addr }
    }

    pub async fn instance(&self) -> Instance {
        self.start(self.settings()).await
    }

    /// A credential bound to `partners` with `scopes`.
    pub async fn credential(&self, partners: &[&str], scopes: &[Scope]) -> String {
        let (id, secret, hash) = palisade_auth::generate_secret();
        self.auth
            .insert(
                &id,
                &hash,
                &NewCredential {
                    display_name: format!("test {id}"),
                    service: false,
                    all_partners: false,
                    partners: partners.iter().map(|p| (*p).to_owned()).collect(),
                    scopes: scopes.to_vec(),
                    expires_at: None,
                },
            )
            .await
            .unwrap();
        secret
    }

    /// A consumer of the broker's events.
    pub async fn events(&self) -> Box<dyn palisade_queue::Consumer> {
        let queue = palisade_queue::connect(&self.settings().queue)
            .await
            .unwrap();
        queue
            .consumer(
                "tokens",
                &format!("test-{}", uuid::Uuid::new_v4().simple()),
                "c",
            )
            .await
            .unwrap()
    }

    /// The simulator's request log of refresh redemptions.
    pub fn refresh_redemptions(&self) -> usize {
        self.sim
            .control()
            .requests(&ms_sim::control_filter_refresh())
            .len()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn client(addr: std::net::SocketAddr, secret: &str) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    TokenBrokerServiceClient::with_interceptor(
        channel,
        BearerInterceptor::new(Some(&SecretString::from(secret.to_owned()))),
    )
}

/// Registers the scenario partner's app with its client secret.
pub async fn register_secret_app(
    client: &mut Client,
    partner: &ms_sim::scenario::Partner,
    endpoint: pb::TokenEndpoint,
) -> pb::App {
    client
        .register_app(pb::RegisterAppRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            display_name: "SAM app".into(),
            client_id: partner.app.client_id.clone(),
            cloud: 1,
            scopes: vec![],
            credential: Some(pb::AppCredential {
                credential: Some(pb::app_credential::Credential::ClientSecret(
                    partner.app.client_secret.clone(),
                )),
            }),
            token_endpoint: endpoint as i32,
            redirect_uri: "https://panel.example/consent".into(),
            credential_expires_at: None,
        })
        .await
        .unwrap()
        .into_inner()
        .app
        .unwrap()
}

/// What the admin agent's browser does: open the authorize URL, sign in as `upn`, and come
/// back to the redirect URI with `code` and `state`.
pub async fn sign_in(authorize_url: &str, upn: &str) -> (String, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut url = url::Url::parse(authorize_url).unwrap();
    url.query_pairs_mut().append_pair("login_hint", upn);
    let response = http.get(url).send().await.unwrap();
    assert!(
        response.status().is_redirection(),
        "authorize answered {}",
        response.status()
    );
    let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    let get = |k: &str| {
        location
            .query_pairs()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    (get("code"), get("state"))
}

/// BeginConsent → sign in as `upn` → CompleteConsent.
pub async fn consent(
    client: &mut Client,
    partner: &str,
    app_id: &str,
    upn: &str,
) -> Result<pb::Consent, tonic::Status> {
    let begun = client
        .begin_consent(pb::BeginConsentRequest {
            partner_tenant_id: partner.into(),
            app_id: app_id.into(),
            redirect_uri: String::new(),
        })
        .await?
        .into_inner();
    let (code, state) = sign_in(&begun.authorize_url, upn).await;
    assert_eq!(state, begun.state);
    client
        .complete_consent(pb::CompleteConsentRequest {
            partner_tenant_id: partner.into(),
            state,
            code,
        })
        .await
        .map(|r| r.into_inner().consent.unwrap())
}

pub async fn token(
    client: &mut Client,
    partner: &str,
    target: &str,
    resource: pb::Resource,
) -> Result<pb::GetAccessTokenResponse, tonic::Status> {
    client
        .get_access_token(pb::GetAccessTokenRequest {
            partner_tenant_id: partner.into(),
            target_tenant_id: target.into(),
            resource: resource as i32,
            custom_scope: String::new(),
            force_refresh: false,
        })
        .await
        .map(|r| r.into_inner())
}

pub fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// Waits (bounded) for the next `token.health_changed` event.
pub async fn next_health_event(
    consumer: &mut Box<dyn palisade_queue::Consumer>,
) -> Option<TokenHealthChanged> {
    for _ in 0..20 {
        if let Some(delivery) = consumer.next(Duration::from_millis(500)).await.unwrap() {
            consumer.ack(&delivery).await.unwrap();
            assert_eq!(delivery.envelope.kind, "token.health_changed");
            return Some(TokenHealthChanged::decode(delivery.envelope.payload.as_slice()).unwrap());
        }
    }
    None
}

/// Every byte of every table of the tokens schema, as text (blobs hex-free: raw lossy UTF-8).
pub async fn dump_tokens_schema(db: &TestDatabase) -> String {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'tokens'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut out = String::new();
    for table in tables {
        let rows = sqlx::query(&format!(
            "SELECT convert_from(convert_to(t::text, 'UTF8'), 'UTF8') AS row FROM tokens.{table} t"
        ))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for row in rows {
            out.push_str(&row.get::<String, _>("row"));
            out.push('\n');
        }
    }
    out
}
