//! Test support: a real SMTP server and real HTTP receivers on loopback, and a harness that
//! builds the notifier over a fresh Postgres database with a controllable clock.

#![allow(dead_code)]

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    response::IntoResponse,
};
use palisade_clock::{Clock, ManualClock, SharedClock};
use palisade_contracts::{
    alerts::v1::{Alert, AlertSource, AlertStatus},
    events::v1::{AlertRaised, AlertResolved, Envelope},
    notify::v1::{AdminAgent, PartnerSettings, SecurityContact},
    time::from_millis,
};
use palisade_notifier::{
    EngineSettings, Notifier,
    channels::{ChannelSettings, Senders, SmtpSettings, SmtpTls, SsrfPolicy, sms::SmsSettings},
    store::{NotifyStore, SqlStore},
};
use palisade_storage::Database;
use palisade_testkit::TestDatabase;
use prost::Message;
use secrecy::SecretString;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

// ------------------------------------------------------------------ SMTP

#[derive(Debug, Clone)]
pub struct CapturedMail {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
}

impl CapturedMail {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// A minimal SMTP server (RFC 5321 subset) that accepts everything and keeps the raw DATA.
#[derive(Clone)]
pub struct SmtpServer {
    pub port: u16,
    pub mails: Arc<Mutex<Vec<CapturedMail>>>,
}

impl SmtpServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&mails);
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let _ = serve_smtp(socket, store).await;
                });
            }
        });
        Self { port, mails }
    }

    pub fn mails(&self) -> Vec<CapturedMail> {
        self.mails.lock().unwrap().clone()
    }

    pub fn to(&self, address: &str) -> Vec<CapturedMail> {
        self.mails()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == address))
            .collect()
    }
}

async fn serve_smtp(
    socket: tokio::net::TcpStream,
    store: Arc<Mutex<Vec<CapturedMail>>>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(b"220 test.local ESMTP ready\r\n").await?;
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            write
                .write_all(b"250-test.local\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                .await?;
        } else if upper.starts_with("HELO") {
            write.write_all(b"250 test.local\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim().trim_matches(['<', '>']).to_owned();
            to.clear();
            write.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            to.push(line[8..].trim().trim_matches(['<', '>']).to_owned());
            write.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 end with .\r\n").await?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if reader.read_until(b'\n', &mut l).await? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                // Dot-unstuffing.
                if l.starts_with(b"..") {
                    l.remove(0);
                }
                data.extend_from_slice(&l);
            }
            store.lock().unwrap().push(CapturedMail {
                from: from.clone(),
                to: to.clone(),
                data,
            });
            write.write_all(b"250 OK queued\r\n").await?;
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
            write.write_all(b"250 OK\r\n").await?;
        } else {
            write.write_all(b"502 not implemented\r\n").await?;
        }
    }
}

// ------------------------------------------------------------------ HTTP

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

/// A scripted answer: status, extra headers, delay.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    defaults: Mutex<HashMap<String, Reply>>,
}

/// A real HTTP server on 127.0.0.1:0 that records every request and answers by script.
#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(ReceiverState::default());
        let app = Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answers the next requests to `path` with these replies, then the default.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .extend(replies);
    }

    pub fn default_reply(&self, path: &str, reply: Reply) {
        self.state
            .defaults
            .lock()
            .unwrap()
            .insert(path.to_owned(), reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let path = uri.path().to_owned();
    state.received.lock().unwrap().push(Received {
        path: path.clone(),
        headers,
        body,
    });
    let reply = {
        let scripted = state
            .scripts
            .lock()
            .unwrap()
            .get_mut(&path)
            .and_then(|q| q.pop_front());
        scripted
            .or_else(|| state.defaults.lock().unwrap().get(&path).cloned())
            .unwrap_or_else(|| Reply::status(200))
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), "").into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

// ------------------------------------------------------------------ harness

pub const PARTNER: &str = "partner-a";
pub const OTHER_PARTNER: &str = "partner-b";

pub fn kek_keys() -> SecretString {
    use base64::Engine;
    SecretString::from(format!(
        "v1:{}",
        base64::engine::general_purpose::STANDARD.encode([42_u8; 32])
    ))
}

pub fn channel_settings(smtp: &SmtpServer, http: &Receiver, ssrf: SsrfPolicy) -> ChannelSettings {
    ChannelSettings {
        smtp: SmtpSettings {
            host: "127.0.0.1".into(),
            port: smtp.port,
            tls: SmtpTls::None,
            from: "Palisade <notify@palisade.test>".into(),
            timeout: Duration::from_secs(5),
            ..Default::default()
        },
        ssrf,
        sms: SmsSettings {
            twilio_base_url: http.url("/twilio"),
            twilio_account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            twilio_auth_token: Some(SecretString::from("twilio-token")),
            from: "+15005550006".into(),
            messaging_service_sid: String::new(),
        },
        pagerduty_url: http.url("/pagerduty/v2/enqueue"),
        http_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

pub fn engine_settings() -> EngineSettings {
    EngineSettings {
        public_url: "http://127.0.0.1:9/".into(),
        link_signing_key: Some(SecretString::from("test-link-key-test-link-key-0001")),
        retry_schedule: vec![
            Duration::from_secs(5),
            Duration::from_secs(300),
            Duration::from_secs(1800),
        ],
        // Tests write settings straight into the store, behind the cache's back.
        partner_cache_ttl: Duration::ZERO,
        // Rate limits pace sends in real time, which a manual clock never reaches; they have
        // their own unit test.
        limits: palisade_notifier::dispatch::Limits {
            rate_per_endpoint: palisade_notifier::dispatch::PerKind {
                email: 0.0,
                webhook: 0.0,
                teams: 0.0,
                slack: 0.0,
                sms: 0.0,
                pagerduty: 0.0,
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

pub const LOOPBACK: SsrfPolicy = SsrfPolicy {
    allow_loopback: true,
    allow_private: false,
    allow_link_local: false,
};

pub struct Harness {
    pub db: TestDatabase,
    pub clock: Arc<ManualClock>,
    pub core: Arc<Notifier>,
    pub store: Arc<dyn NotifyStore>,
    pub smtp: SmtpServer,
    pub http: Receiver,
    /// The notifier's series, as the admin port's `/metrics` would render them.
    pub metrics: palisade_telemetry::Metrics,
}

/// 2026-11-23T00:00:00Z: a fixed start so digest and escalation times are exact.
pub const T0: i64 = 1_795_392_000_000;

impl Harness {
    pub async fn new() -> Self {
        Self::with(engine_settings(), LOOPBACK).await
    }

    pub async fn with(engine: EngineSettings, ssrf: SsrfPolicy) -> Self {
        let db = TestDatabase::create().await;
        let smtp = SmtpServer::start().await;
        let http = Receiver::start().await;
        let clock = ManualClock::at(T0);
        let metrics = palisade_telemetry::Metrics::new();
        let core = build_core(&db, clock.clone(), &smtp, &http, engine, ssrf, &metrics).await;
        let store = Arc::clone(core.store());
        Self {
            db,
            clock,
            core,
            store,
            smtp,
            http,
            metrics,
        }
    }

    pub fn now(&self) -> i64 {
        self.clock.now_millis()
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    /// Runs timers, then sends everything due, until nothing more is due now.
    pub async fn settle(&self) {
        for _ in 0..20 {
            self.core.run_timers().await.unwrap();
            if self.core.dispatch_once().await.unwrap() == 0 {
                return;
            }
        }
    }

    pub async fn settings(&self, f: impl FnOnce(&mut PartnerSettings)) {
        let mut s = PartnerSettings {
            time_zone: "UTC".into(),
            digest_hour: 8,
            group_wait_seconds: 30,
            group_interval_seconds: 300,
            repeat_interval_seconds: 4 * 3600,
            escalation: Vec::new(),
            default_language: "en".into(),
        };
        f(&mut s);
        self.store
            .set_settings(PARTNER, &s, self.now())
            .await
            .unwrap();
    }

    pub async fn people(&self, security_language: &str) {
        self.store
            .set_security_contact(
                PARTNER,
                &SecurityContact {
                    first_name: "SOC".into(),
                    last_name: "Team".into(),
                    email: "soc@partner-a.test".into(),
                    phone: "+81312345678".into(),
                    is_group: true,
                    language: security_language.into(),
                    ..Default::default()
                },
                self.now(),
            )
            .await
            .unwrap();
        for (id, lang) in [("agent-1", "en"), ("agent-2", "fr")] {
            self.store
                .upsert_admin_agent(
                    PARTNER,
                    &AdminAgent {
                        agent_id: id.into(),
                        display_name: id.into(),
                        email: format!("{id}@partner-a.test"),
                        language: lang.into(),
                        time_zone: "Europe/Paris".into(),
                        phone: String::new(),
                    },
                    self.now(),
                )
                .await
                .unwrap();
        }
    }
}

pub async fn build_core(
    db: &TestDatabase,
    clock: SharedClockArc,
    smtp: &SmtpServer,
    http: &Receiver,
    engine: EngineSettings,
    ssrf: SsrfPolicy,
    metrics: &palisade_telemetry::Metrics,
) -> Arc<Notifier> {
    let database = Database::connect(&db.settings(), "notify").await.unwrap();
    let store = SqlStore::new(database);
    store.migrate().await.unwrap();
    let cipher = palisade_notifier::build_cipher(&palisade_crypto::LocalKekSettings {
        keys: Some(kek_keys()),
        key_file: None,
    })
    .unwrap();
    let senders = Senders::new(channel_settings(smtp, http, ssrf)).unwrap();
    let clock: SharedClock = clock;
    Arc::new(Notifier::new(Arc::new(store), cipher, clock, senders, engine).with_metrics(metrics))
}

pub type SharedClockArc = Arc<ManualClock>;

// ------------------------------------------------------------------ events

pub fn alert(fingerprint: &str, severity: i32, customer: &str) -> Alert {
    Alert {
        alert_id: format!("alert-{fingerprint}"),
        partner_tenant_id: PARTNER.into(),
        fingerprint: fingerprint.into(),
        source: AlertSource::Graph as i32,
        provider_alert_id: format!("prov-{fingerprint}"),
        alert_type: "cryptoMiningActivity".into(),
        display_name: "Crypto mining activity".into(),
        description: "Unusual compute usage in a customer subscription".into(),
        status: AlertStatus::Active as i32,
        severity,
        customer_tenant_id: customer.into(),
        customer_name: format!("Customer {customer}"),
        subscription_id: format!("sub-{customer}"),
        ..Default::default()
    }
}

pub fn envelope(kind: &str, partner: &str, payload: Vec<u8>, at: i64) -> Envelope {
    Envelope {
        version: 1,
        message_id: uuid::Uuid::new_v4().to_string(),
        kind: kind.into(),
        attempt: 1,
        traceparent: String::new(),
        tracestate: String::new(),
        partner_tenant_id: partner.into(),
        occurred_at: Some(from_millis(at)),
        payload,
    }
}

pub fn raised(a: &Alert, at: i64) -> Envelope {
    envelope(
        "alert.raised",
        &a.partner_tenant_id,
        AlertRaised {
            alert: Some(a.clone()),
        }
        .encode_to_vec(),
        at,
    )
}

pub fn resolved(a: &Alert, at: i64) -> Envelope {
    let mut a = a.clone();
    a.status = AlertStatus::Resolved as i32;
    let partner = a.partner_tenant_id.clone();
    envelope(
        "alert.resolved",
        &partner,
        AlertResolved { alert: Some(a) }.encode_to_vec(),
        at,
    )
}

/// Polls `f` until it is true, for up to `secs` seconds of real time.
pub async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}
