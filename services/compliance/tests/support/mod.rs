//! The world compliance tests run in, with nothing Palisade owns stood in for: ms-sim over real
//! HTTP; the real token broker, notifier and alert-ingest in-process on 127.0.0.1:0; one
//! Postgres database of the test's own (each service in its schema, the credential registry
//! shared) and a Redis prefix; and compliance itself, started as in production, so it reaches
//! the others through `GrpcPeers` with a service credential from the registry.
//!
//! The broker is consented by each scenario partner's admin agent through the real consent
//! flow (authorize at ms-sim's Entra ID, code redeemed by the broker), so every Microsoft token
//! compliance uses is minted and cached by the broker.

#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use base64::Engine as _;
use ms_sim::{MsSim, SimConfig, scenario::Partner};
use palisade_auth::{AuthStore, BearerInterceptor, NewCredential, Scope};
use palisade_compliance::Settings;
use palisade_contracts::{
    alerts::v1::{self as alerts, alert_service_client::AlertServiceClient},
    notify::v1::{self as notify, notification_service_client::NotificationServiceClient},
    tokens::v1::{self as tokens, token_broker_service_client::TokenBrokerServiceClient},
};
use palisade_testkit::{TestDatabase, TestRedis};
use secrecy::SecretString;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

pub type Authed = InterceptedService<Channel, BearerInterceptor>;

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn interceptor(secret: &str) -> BearerInterceptor {
    BearerInterceptor::new(Some(&SecretString::from(secret.to_owned())))
}

fn kek() -> SecretString {
    SecretString::from(format!(
        "v1:{}",
        base64::engine::general_purpose::STANDARD.encode([7_u8; 32])
    ))
}

/// The admin agent's browser: open the authorize URL, sign in, return (code, state).
async fn sign_in(authorize_url: &str, upn: &str) -> (String, String) {
    let mut url = url::Url::parse(authorize_url).unwrap();
    url.query_pairs_mut().append_pair("login_hint", upn);
    let response = http().get(url).send().await.unwrap();
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

pub struct Harness {
    pub sim: MsSim,
    pub db: TestDatabase,
    pub redis: TestRedis,
    pub auth: AuthStore,
    /// The bootstrap admin credential (every partner, every scope).
    pub admin: String,
    pub partner: Partner,
    pub broker: palisade_token_broker::Running,
    pub broker_addr: SocketAddr,
    pub notifier: palisade_notifier::Running,
    pub notifier_addr: SocketAddr,
    pub alert_ingest: palisade_alert_ingest::Running,
    pub alert_ingest_addr: SocketAddr,
    pub running: palisade_compliance::Running,
    pub addr: SocketAddr,
}

/// How the Palisade side of the partner starts.
#[derive(Debug, Clone, Copy)]
pub struct Palisade {
    /// The notifier holds a complete security contact and a compliance contact.
    pub contacts: bool,
}

impl Default for Palisade {
    fn default() -> Self {
        Self { contacts: true }
    }
}

/// A credential for one of the services, stored in the shared registry.
pub async fn service_credential(auth: &AuthStore, name: &str, scopes: Vec<Scope>) -> String {
    let (id, secret, hash) = palisade_auth::generate_secret();
    auth.insert(
        &id,
        &hash,
        &NewCredential {
            display_name: format!("service {name}"),
            service: true,
            all_partners: true,
            partners: Default::default(),
            scopes,
            expires_at: None,
        },
    )
    .await
    .unwrap();
    secret
}

async fn start_broker(
    sim: &MsSim,
    db: &TestDatabase,
    admin: &str,
) -> (palisade_token_broker::Running, SocketAddr) {
    let mut database = db.settings();
    database.max_connections = 4;
    let mut settings = palisade_token_broker::Settings {
        server: palisade_server::ServerSettings::ephemeral(),
        database,
        kek: palisade_token_broker::KekSettings {
            keys: Some(kek()),
            ..Default::default()
        },
        ..Default::default()
    };
    settings.entra.public_login_url = sim.login_url().to_string();
    settings.entra.china_login_url = sim.login_url().to_string();
    settings.broker.default_redirect_uri = "https://panel.example/consent".into();
    let listeners = palisade_server::Listeners::bind(&settings.server)
        .await
        .unwrap();
    let addr = listeners.grpc.local_addr().unwrap();
    let broker = palisade_token_broker::start(
        settings,
        listeners,
        palisade_token_broker::Options::default(),
    )
    .await
    .unwrap();
    // Each partner's admin agent (MFA) registers the SAM app and consents once.
    let mut tb =
        TokenBrokerServiceClient::with_interceptor(channel(addr).await, interceptor(admin));
    for partner in &sim.scenario().partners {
        let app = tb
            .register_app(tokens::RegisterAppRequest {
                partner_tenant_id: partner.tenant_id.clone(),
                display_name: "Palisade SAM".into(),
                client_id: partner.app.client_id.clone(),
                cloud: 1,
                scopes: vec![],
                credential: Some(tokens::AppCredential {
                    credential: Some(tokens::app_credential::Credential::ClientSecret(
                        partner.app.client_secret.clone(),
                    )),
                }),
                token_endpoint: tokens::TokenEndpoint::V1 as i32,
                redirect_uri: "https://panel.example/consent".into(),
                credential_expires_at: None,
            })
            .await
            .unwrap()
            .into_inner()
            .app
            .unwrap();
        let begun = tb
            .begin_consent(tokens::BeginConsentRequest {
                partner_tenant_id: partner.tenant_id.clone(),
                app_id: app.app_id.clone(),
                redirect_uri: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let (code, state) = sign_in(&begun.authorize_url, &partner.admin().upn).await;
        tb.complete_consent(tokens::CompleteConsentRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            state,
            code,
        })
        .await
        .unwrap();
    }
    (broker, addr)
}

async fn start_notifier(db: &TestDatabase) -> (palisade_notifier::Running, SocketAddr) {
    let mut database = db.settings();
    database.max_connections = 2;
    let settings = palisade_notifier::Settings {
        server: palisade_server::ServerSettings::ephemeral(),
        database,
        kek: palisade_crypto::LocalKekSettings {
            keys: Some(kek()),
            key_file: None,
        },
        // Compliance reads contacts from its API; deliveries are not what these tests are
        // about, so the consumer, timers and dispatcher stay off.
        workers: Some(false),
        ..Default::default()
    };
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let running = palisade_notifier::start(
        settings,
        palisade_notifier::Listeners {
            grpc,
            admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        },
        palisade_clock::system(),
    )
    .await
    .unwrap();
    (running, addr)
}

async fn start_alert_ingest(
    sim: &MsSim,
    db: &TestDatabase,
    auth: &AuthStore,
    broker: SocketAddr,
) -> (palisade_alert_ingest::Running, SocketAddr) {
    let credential = service_credential(auth, "alert-ingest", vec![Scope::TokensIssue]).await;
    let mut database = db.settings();
    database.max_connections = 3;
    // The in-process queue: alert-ingest's events are not what these tests are about.
    let mut s = palisade_alert_ingest::Settings {
        server: palisade_server::ServerSettings::ephemeral(),
        database,
        ..Default::default()
    };
    s.auth.service_credential = Some(SecretString::from(credential));
    s.microsoft.graph_url = sim.graph_url().to_string();
    s.microsoft.partner_center_url = sim.partner_center_url().to_string();
    s.token_broker.url = format!("http://{broker}");
    s.workers.tick = Duration::from_millis(100);
    s.workers.outbox_interval = Duration::from_millis(100);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let running = palisade_alert_ingest::start(
        s,
        palisade_alert_ingest::Listeners {
            grpc,
            admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            webhook: None,
        },
        palisade_clock::system(),
    )
    .await
    .unwrap();
    (running, addr)
}

/// Compliance's settings: Postgres, the Redis queue, ms-sim, and the peers.
pub fn settings(h: &Harness, credential: &str) -> Settings {
    settings_for(
        &h.db,
        &h.redis,
        &h.sim,
        [h.broker_addr, h.notifier_addr, h.alert_ingest_addr],
        credential,
    )
}

fn settings_for(
    db: &TestDatabase,
    redis: &TestRedis,
    sim: &MsSim,
    [broker, notifier, alert_ingest]: [SocketAddr; 3],
    credential: &str,
) -> Settings {
    let mut database = db.settings();
    database.max_connections = 6;
    let mut s = Settings {
        database,
        ..Settings::default()
    };
    s.queue.backend = palisade_queue::Backend::Redis;
    s.queue.redis_url = Some(SecretString::from(redis.url().to_owned()));
    s.queue.key_prefix = redis.prefix().trim_end_matches(':').to_owned();
    s.auth.service_credential = Some(SecretString::from(credential.to_owned()));
    s.peers.token_broker = format!("http://{broker}");
    s.peers.notifier = format!("http://{notifier}");
    s.peers.alert_ingest = format!("http://{alert_ingest}");
    s.microsoft.graph_url = sim.graph_url().to_string();
    s.microsoft.partner_center_url = sim.partner_center_url().to_string();
    s.microsoft.base_delay = Duration::from_millis(50);
    s.microsoft.max_retry_after = Duration::from_secs(2);
    s.microsoft.partner_center_requests_per_minute = 6000.0;
    s.server = palisade_server::ServerSettings::ephemeral();
    s.events.enabled = false;
    s.evaluation.customer_concurrency = 8;
    s
}

pub async fn start(config: SimConfig, tweak: impl FnOnce(&mut Settings)) -> Harness {
    start_with(config, Palisade::default(), tweak).await
}

pub async fn start_with(
    config: SimConfig,
    palisade: Palisade,
    tweak: impl FnOnce(&mut Settings),
) -> Harness {
    let sim = ms_sim::start(config).await.unwrap();
    let partner = sim.scenario().partners[0].clone();
    let db = TestDatabase::create().await;
    let redis = TestRedis::create().await;
    let auth = AuthStore::open(&db.settings()).await.unwrap();
    let admin = palisade_auth::bootstrap_admin(&auth, "test admin")
        .await
        .unwrap();
    let (broker, broker_addr) = start_broker(&sim, &db, &admin).await;
    let (notifier, notifier_addr) = start_notifier(&db).await;
    let (alert_ingest, alert_ingest_addr) = start_alert_ingest(&sim, &db, &auth, broker_addr).await;

    // Compliance's own credential, with exactly the scopes it declares it needs.
    let credential = service_credential(
        &auth,
        "compliance",
        palisade_compliance::SERVICE_SCOPES.to_vec(),
    )
    .await;
    let mut s = settings_for(
        &db,
        &redis,
        &sim,
        [broker_addr, notifier_addr, alert_ingest_addr],
        &credential,
    );
    tweak(&mut s);
    let listeners = palisade_server::Listeners::bind(&s.server).await.unwrap();
    let addr = listeners.grpc.local_addr().unwrap();
    let running = palisade_compliance::start(s, listeners, palisade_clock::system())
        .await
        .unwrap();
    let h = Harness {
        sim,
        db,
        redis,
        auth,
        admin,
        partner,
        broker,
        broker_addr,
        notifier,
        notifier_addr,
        alert_ingest,
        alert_ingest_addr,
        running,
        addr,
    };
    if palisade.contacts {
        h.record_contacts(&h.partner.tenant_id).await;
    }
    h
}

impl Harness {
    pub async fn channel(&self) -> Channel {
        channel(self.addr).await
    }

    pub fn engine(&self) -> &std::sync::Arc<palisade_compliance::Engine> {
        &self.running.engine
    }

    pub async fn broker_client(&self) -> TokenBrokerServiceClient<Authed> {
        TokenBrokerServiceClient::with_interceptor(
            channel(self.broker_addr).await,
            interceptor(&self.admin),
        )
    }

    pub async fn notifier_client(&self) -> NotificationServiceClient<Authed> {
        NotificationServiceClient::with_interceptor(
            channel(self.notifier_addr).await,
            interceptor(&self.admin),
        )
    }

    pub async fn alerts_client(&self) -> AlertServiceClient<Authed> {
        AlertServiceClient::with_interceptor(
            channel(self.alert_ingest_addr).await,
            interceptor(&self.admin),
        )
    }

    /// A complete security contact and a compliance contact, recorded through the notifier.
    pub async fn record_contacts(&self, partner: &str) {
        let mut n = self.notifier_client().await;
        n.set_security_contact(notify::SetSecurityContactRequest {
            partner_tenant_id: partner.to_owned(),
            contact: Some(notify::SecurityContact {
                first_name: "Mika".into(),
                last_name: "Tanaka".into(),
                email: "security@partner.example".into(),
                phone: "+81312345678".into(),
                language: "en".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
        n.set_compliance_contact(notify::SetComplianceContactRequest {
            partner_tenant_id: partner.to_owned(),
            contact: Some(notify::ComplianceContact {
                name: "Compliance desk".into(),
                email: "compliance@partner.example".into(),
                phone: String::new(),
                language: "en".into(),
            }),
        })
        .await
        .unwrap();
    }

    /// Turns on alert-ingest's Graph poll for the partner and waits until it holds `count`
    /// alerts.
    pub async fn ingest_alerts(&self, partner: &str, count: usize) -> Vec<alerts::Alert> {
        let mut a = self.alerts_client().await;
        a.configure_ingestion(alerts::ConfigureIngestionRequest {
            partner_tenant_id: partner.to_owned(),
            settings: Some(alerts::IngestionSettings {
                graph_enabled: true,
                fraud_events_enabled: false,
                poll_interval_seconds: 1,
                webhook_url: String::new(),
            }),
        })
        .await
        .unwrap();
        for _ in 0..300 {
            let all = self.alerts(partner).await;
            if all.len() >= count {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("alert-ingest never held {count} alerts of {partner}");
    }

    /// Every alert alert-ingest holds for the partner.
    pub async fn alerts(&self, partner: &str) -> Vec<alerts::Alert> {
        let mut a = self.alerts_client().await;
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = a
                .list_alerts(alerts::ListAlertsRequest {
                    partner_tenant_id: partner.to_owned(),
                    page_size: 100,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            out.extend(page.alerts);
            if page.next_page_token.is_empty() {
                return out;
            }
            token = page.next_page_token;
        }
    }

    /// Evaluates the partner to the end, through the engine.
    pub async fn evaluate(&self) -> palisade_contracts::compliance::v1::ComplianceStatus {
        let (tx, _rx) = tokio::sync::watch::channel(palisade_compliance::RunState::Progress(
            Default::default(),
        ));
        self.engine()
            .evaluate(&self.partner.tenant_id, "test", &tx)
            .await
            .unwrap()
    }

    /// Stops every service, compliance first.
    pub async fn stop(self) {
        self.running.stop().await;
        self.alert_ingest.stop().await;
        self.notifier.stop().await;
        self.broker.stop().await;
    }
}

pub fn bearer<T>(credential: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    r
}
