//! The world alert-ingest tests run in: ms-sim over real HTTP, the real token broker
//! in-process (consented for every scenario partner), a Postgres database and a Redis prefix
//! of their own, and alert-ingest itself on 127.0.0.1:0.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use base64::Engine;
use palisade_alert_ingest::{Listeners, Running, Settings};
use palisade_auth::{AuthStore, BearerInterceptor, NewCredential, Scope};
use palisade_contracts::{
    alerts::v1::{self as pb, alert_service_client::AlertServiceClient},
    tokens::v1::{self as tokens, token_broker_service_client::TokenBrokerServiceClient},
};
use palisade_testkit::{TestDatabase, TestRedis};
use secrecy::SecretString;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

pub type Client = AlertServiceClient<InterceptedService<Channel, BearerInterceptor>>;
pub type BrokerClient = TokenBrokerServiceClient<InterceptedService<Channel, BearerInterceptor>>;

pub struct World {
    pub sim: ms_sim::MsSim,
    pub db: TestDatabase,
    pub redis: TestRedis,
    pub auth: AuthStore,
    pub admin: String,
    pub broker: palisade_token_broker::Running,
    pub broker_addr: std::net::SocketAddr,
    pub service_credential: String,
}

pub struct Instance {
    pub running: Running,
    pub grpc: std::net::SocketAddr,
    pub webhook: std::net::SocketAddr,
}

impl Instance {
    pub fn webhook_url(&self, partner: &str) -> String {
        format!("http://{}/webhooks/partner-center/{partner}", self.webhook)
    }
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn broker_client(addr: std::net::SocketAddr, secret: &str) -> BrokerClient {
    TokenBrokerServiceClient::with_interceptor(
        channel(addr).await,
        BearerInterceptor::new(Some(&SecretString::from(secret.to_owned()))),
    )
}

pub async fn client(addr: std::net::SocketAddr, secret: Option<&str>) -> Client {
    let secret = secret.map(|s| SecretString::from(s.to_owned()));
    AlertServiceClient::with_interceptor(
        channel(addr).await,
        BearerInterceptor::new(secret.as_ref()),
    )
}

/// The admin agent's browser: open the authorize URL, sign in, return (code, state).
async fn sign_in(authorize_url: &str, upn: &str) -> (String, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut url = url::Url::parse(authorize_url).unwrap();
    url.query_pairs_mut().append_pair("login_hint", upn);
    let response = http.get(url).send().await.unwrap();
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

impl World {
    pub async fn new() -> Self {
        let sim = ms_sim::start(ms_sim::SimConfig::default()).await.unwrap();
        let db = TestDatabase::create().await;
        let redis = TestRedis::create().await;
        let auth = AuthStore::open(&db.settings()).await.unwrap();
        let admin = palisade_auth::bootstrap_admin(&auth, "test admin")
            .await
            .unwrap();
        // alert-ingest's own credential: tokens for every partner, nothing else.
        let (id, service_credential, hash) = palisade_auth::generate_secret();
        auth.insert(
            &id,
            &hash,
            &NewCredential {
                display_name: "service alert-ingest".into(),
                service: true,
                all_partners: true,
                partners: Default::default(),
                scopes: vec![Scope::TokensIssue],
                expires_at: None,
            },
        )
        .await
        .unwrap();

        // The real token broker, consented for each scenario partner by its admin agent.
        let mut database = db.settings();
        database.max_connections = 3;
        let mut settings = palisade_token_broker::Settings {
            server: palisade_server::ServerSettings::ephemeral(),
            database,
            kek: palisade_token_broker::KekSettings {
                keys: Some(SecretString::from(format!(
                    "v1:{}",
                    base64::engine::general_purpose::STANDARD.encode([7_u8; 32])
                ))),
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
        let broker_addr = listeners.grpc.local_addr().unwrap();
        let broker = palisade_token_broker::start(
            settings,
            listeners,
            palisade_token_broker::Options::default(),
        )
        .await
        .unwrap();
        let mut tb = broker_client(broker_addr, &admin).await;
        for partner in &sim.scenario().partners {
            let app = tb
                .register_app(tokens::RegisterAppRequest {
                    partner_tenant_id: partner.tenant_id.clone(),
                    display_name: "SAM app".into(),
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
        Self {
            sim,
            db,
            redis,
            auth,
            admin,
            broker,
            broker_addr,
            service_credential,
        }
    }

    pub fn partner(&self, i: usize) -> String {
        self.sim.scenario().partners[i].tenant_id.clone()
    }

    pub fn settings(&self, replica: &str) -> Settings {
        let mut database = self.db.settings();
        database.max_connections = 4;
        let mut s = Settings {
            server: palisade_server::ServerSettings::ephemeral(),
            database,
            queue: palisade_queue::QueueSettings {
                backend: palisade_queue::Backend::Redis,
                redis_url: Some(SecretString::from(self.redis.url().to_owned())),
                key_prefix: format!("{}q", self.redis.prefix()),
                visibility_timeout: Duration::from_secs(2),
                ..Default::default()
            },
            ..Default::default()
        };
        s.auth.service_credential = Some(SecretString::from(self.service_credential.clone()));
        s.microsoft.graph_url = self.sim.graph_url().to_string();
        s.microsoft.partner_center_url = self.sim.partner_center_url().to_string();
        s.webhook.trust_anchors_pem = vec![self.sim.webhook_root_ca_pem()];
        s.webhook.allowed_certificate_hosts =
            vec![self.sim.certificate_url().host_str().unwrap().to_owned()];
        s.webhook.allow_http_certificate_urls = true;
        s.token_broker.url = format!("http://{}", self.broker_addr);
        s.workers.replica = replica.to_owned();
        s.workers.tick = Duration::from_millis(100);
        s.workers.poll_lease = Duration::from_secs(3);
        s.workers.write_back_base_delay = Duration::from_millis(100);
        s.workers.write_back_max_delay = Duration::from_millis(500);
        s.workers.outbox_interval = Duration::from_millis(50);
        s.workers.enrichment_retry = Duration::from_millis(200);
        s
    }

    pub async fn start(&self, settings: Settings) -> Instance {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let webhook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (g, w) = (grpc.local_addr().unwrap(), webhook.local_addr().unwrap());
        let running = palisade_alert_ingest::start(
            settings,
            Listeners {
                grpc,
                admin,
                webhook: Some(webhook),
            },
            palisade_clock::system(),
        )
        .await
        .unwrap();
        Instance {
            running,
            grpc: g,
            webhook: w,
        }
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

    /// A Partner Center token for `partner` from the broker (for calls the test makes itself).
    pub async fn pc_token(&self, partner: &str) -> String {
        let mut tb = broker_client(self.broker_addr, &self.admin).await;
        tb.get_access_token(tokens::GetAccessTokenRequest {
            partner_tenant_id: partner.to_owned(),
            resource: tokens::Resource::PartnerCenter as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token
    }

    /// Registers `url` for the partner's webhooks at (simulated) Partner Center.
    pub async fn register_webhook(&self, partner: &str, url: &str) {
        let token = self.pc_token(partner).await;
        let body = serde_json::json!({
            "WebhookUrl": url,
            "WebhookEvents": ["azure-fraud-event-detected", "granular-admin-relationship-expired",
                              "granular-admin-relationship-terminated", "dap-admin-relationship-terminated-by-microsoft"],
        });
        let endpoint = self
            .sim
            .partner_center_url()
            .join("webhooks/v1/registration")
            .unwrap();
        let http = reqwest::Client::new();
        let mut response = http
            .post(endpoint.clone())
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        if response.status() == reqwest::StatusCode::CONFLICT {
            response = http
                .put(endpoint)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap();
        }
        assert!(
            response.status().is_success(),
            "registration: {}",
            response.status()
        );
    }

    pub async fn configure(
        &self,
        client: &mut Client,
        partner: &str,
        graph: bool,
        fraud: bool,
        interval: u32,
    ) {
        client
            .configure_ingestion(pb::ConfigureIngestionRequest {
                partner_tenant_id: partner.to_owned(),
                settings: Some(pb::IngestionSettings {
                    graph_enabled: graph,
                    fraud_events_enabled: fraud,
                    poll_interval_seconds: interval,
                    webhook_url: String::new(),
                }),
            })
            .await
            .unwrap();
    }

    /// A consumer of a topic with a group of the test's own.
    pub async fn consumer(&self, topic: &str) -> Box<dyn palisade_queue::Consumer> {
        let queue = palisade_queue::connect(&self.settings("probe").queue)
            .await
            .unwrap();
        queue
            .consumer(
                topic,
                &format!("test-{}", uuid::Uuid::new_v4().simple()),
                "c",
            )
            .await
            .unwrap()
    }
}

pub async fn all_alerts(client: &mut Client, partner: &str) -> Vec<pb::Alert> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_alerts(pb::ListAlertsRequest {
                partner_tenant_id: partner.to_owned(),
                page_size: 7,
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

/// Waits (bounded) until `check` holds; the bound is a safety net, not an assertion of speed.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}
