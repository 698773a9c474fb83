//! Test harness: ms-sim over real HTTP, the service in-process on 127.0.0.1:0 over a fresh
//! Postgres database and a Redis queue prefix, and the peers.
//!
//! Peers: Microsoft tokens are real, redeemed at ms-sim's Entra ID from an admin agent's MFA
//! consent, exactly as the token broker does; the Palisade side (the notifier's contact status,
//! alert-ingest's response times, the broker's consents and MFA statistics) is set by each test
//! through `PalisadeState`, because the token broker and alert-ingest do not serve their APIs
//! yet (they are being built concurrently; see the README).

#![allow(dead_code)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ms_sim::{MsSim, SimConfig, scenario::Partner};
use palisade_compliance::{Peers, Settings, model::*};
use palisade_contracts::tokens::v1::Resource;
use palisade_testkit::{TestDatabase, TestRedis};
use secrecy::SecretString;

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// What the other Palisade services would answer.
#[derive(Debug, Clone)]
pub struct PalisadeState {
    pub contacts: Obs<ContactStatus>,
    pub alerts: Obs<AlertResponse>,
    pub sam: Obs<Vec<SamApp>>,
    pub token_mfa: Obs<TokenMfaStats>,
}

impl Default for PalisadeState {
    /// A partner in order on the Palisade side.
    fn default() -> Self {
        Self {
            contacts: Ok(ContactStatus {
                security_contact_present: true,
                security_contact_complete: true,
                missing_fields: Vec::new(),
                compliance_contact_present: true,
            }),
            alerts: Ok(AlertResponse {
                average_response_seconds: 1800.0,
                resolved_in_window: 4,
                unresolved_older_than_requirement: 0,
                breaching_alert_ids: Vec::new(),
            }),
            sam: Ok(vec![SamApp {
                app_id: "app-1".into(),
                display_name: "Palisade SAM".into(),
                consents: vec![SamConsent {
                    consent_id: "c1".into(),
                    consented_by_upn: "admin".into(),
                    consented_with_mfa: true,
                    healthy: true,
                    state: "healthy".into(),
                    remediation: String::new(),
                }],
            }]),
            token_mfa: Ok(TokenMfaStats {
                minted: 10,
                minted_with_mfa: 10,
            }),
        }
    }
}

/// Tokens from ms-sim's Entra ID (partner admin's refresh token redeemed per tenant).
pub struct SimPeers {
    login: url::Url,
    partner: Partner,
    refresh_token: Mutex<String>,
    cache: Mutex<HashMap<(String, i32), String>>,
    pub state: Mutex<PalisadeState>,
}

impl SimPeers {
    pub async fn new(sim: &MsSim, partner: &Partner) -> Arc<Self> {
        let rt = refresh_token(sim, partner, &partner.admin().upn).await;
        Arc::new(Self {
            login: sim.login_url(),
            partner: partner.clone(),
            refresh_token: Mutex::new(rt),
            cache: Mutex::new(HashMap::new()),
            state: Mutex::new(PalisadeState::default()),
        })
    }

    pub fn set(&self, f: impl FnOnce(&mut PalisadeState)) {
        f(&mut self.state.lock().unwrap());
    }
}

pub async fn refresh_token(sim: &MsSim, partner: &Partner, upn: &str) -> String {
    let url = format!(
        "{}common/oauth2/authorize?client_id={}&response_type=code&redirect_uri=https%3A%2F%2Fpanel.example%2Fcb&state=s&login_hint={upn}",
        sim.login_url(),
        partner.app.client_id
    );
    let response = http().get(url).send().await.unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let body: serde_json::Value = http()
        .post(format!(
            "{}{}/oauth2/token",
            sim.login_url(),
            partner.tenant_id
        ))
        .form(&[
            ("client_id", partner.app.client_id.as_str()),
            ("client_secret", partner.app.client_secret.as_str()),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("resource", ms_sim::PARTNER_CENTER),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["refresh_token"].as_str().unwrap().to_owned()
}

#[async_trait::async_trait]
impl Peers for SimPeers {
    async fn access_token(&self, _partner: &str, target: &str, resource: Resource) -> Obs<String> {
        let key = (target.to_ascii_lowercase(), resource as i32);
        if let Some(t) = self.cache.lock().unwrap().get(&key) {
            return Ok(t.clone());
        }
        let resource_url = match resource {
            Resource::PartnerCenter => ms_sim::PARTNER_CENTER,
            _ => ms_sim::GRAPH,
        };
        let rt = self.refresh_token.lock().unwrap().clone();
        let response = http()
            .post(format!("{}{}/oauth2/token", self.login, target))
            .form(&[
                ("client_id", self.partner.app.client_id.as_str()),
                ("client_secret", self.partner.app.client_secret.as_str()),
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt),
                ("resource", resource_url),
            ])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        let Some(token) = body["access_token"].as_str() else {
            return Err(format!(
                "customer access denied: {}",
                body["error_description"].as_str().unwrap_or_default()
            ));
        };
        if let Some(new) = body["refresh_token"].as_str() {
            *self.refresh_token.lock().unwrap() = new.to_owned();
        }
        self.cache.lock().unwrap().insert(key, token.to_owned());
        Ok(token.to_owned())
    }
    async fn token_mfa(&self, _: &str, _: i64, _: i64) -> Obs<TokenMfaStats> {
        self.state.lock().unwrap().token_mfa.clone()
    }
    async fn sam(&self, _: &str) -> Obs<Vec<SamApp>> {
        self.state.lock().unwrap().sam.clone()
    }
    async fn contacts(&self, _: &str) -> Obs<ContactStatus> {
        self.state.lock().unwrap().contacts.clone()
    }
    async fn alert_response(&self, _: &str, _: i64) -> Obs<AlertResponse> {
        self.state.lock().unwrap().alerts.clone()
    }
}

pub struct Harness {
    pub sim: MsSim,
    pub db: TestDatabase,
    pub redis: TestRedis,
    pub peers: Arc<SimPeers>,
    pub running: palisade_compliance::Running,
    pub addr: std::net::SocketAddr,
    pub admin: String,
    pub partner: Partner,
}

pub async fn settings(db: &TestDatabase, redis: &TestRedis, sim: &MsSim) -> Settings {
    let mut s = Settings {
        database: db.settings(),
        ..Settings::default()
    };
    s.queue.backend = palisade_queue::Backend::Redis;
    s.queue.redis_url = Some(SecretString::from(redis.url().to_owned()));
    s.queue.key_prefix = redis.prefix().trim_end_matches(':').to_owned();
    s.microsoft.graph_url = sim.graph_url().to_string();
    s.microsoft.partner_center_url = sim.partner_center_url().to_string();
    s.microsoft.base_delay = Duration::from_millis(50);
    s.microsoft.max_retry_after = Duration::from_secs(2);
    s.microsoft.partner_center_requests_per_minute = 6000.0;
    s.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
    s.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.events.enabled = false;
    s.evaluation.customer_concurrency = 8;
    s
}

pub async fn start(config: SimConfig, tweak: impl FnOnce(&mut Settings)) -> Harness {
    let sim = ms_sim::start(config).await.unwrap();
    let partner = sim.scenario().partners[0].clone();
    let db = TestDatabase::create().await;
    let redis = TestRedis::create().await;
    let mut s = settings(&db, &redis, &sim).await;
    tweak(&mut s);
    let store = palisade_auth::AuthStore::open(&s.database).await.unwrap();
    let admin = palisade_auth::bootstrap_admin(&store, "test admin")
        .await
        .unwrap();
    let listeners = palisade_server::Listeners::bind(&s.server).await.unwrap();
    let addr = listeners.grpc.local_addr().unwrap();
    let peers = SimPeers::new(&sim, &partner).await;
    let running =
        palisade_compliance::start_with(s, listeners, palisade_clock::system(), peers.clone())
            .await
            .unwrap();
    Harness {
        sim,
        db,
        redis,
        peers,
        running,
        addr,
        admin,
        partner,
    }
}

impl Harness {
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub fn engine(&self) -> &Arc<palisade_compliance::Engine> {
        &self.running.engine
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
}

pub fn bearer<T>(credential: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    r
}
