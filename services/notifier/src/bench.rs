//! The delivery-latency workload, shared by `cargo bench --bench delivery` and the workspace
//! harness (`make bench`): events published on the platform queue at a fixed rate, through
//! the whole notifier (consumer, grouping with zero waits, planning, dispatch) over real
//! Postgres and Redis, to signed webhooks arriving at a receiver on loopback.
//!
//! It also runs the floor the notifier is compared with, in the same run: the same events,
//! published the same way, read back by a bare consumer and POSTed to the same receiver. Not
//! used by the service itself; it lives here so both benchmarks drive one workload.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{Router, body::Bytes, extract::State, http::Uri};
use palisade_contracts::{
    events::v1::{Envelope, GdapRelationshipChanged},
    notify::v1::{notification_service_client::NotificationServiceClient, *},
};
use palisade_queue::Queue;
use prost::Message;
use tonic::Request;

use crate::{
    EngineSettings, Listeners, Settings,
    channels::{ChannelSettings, SsrfPolicy},
    queue::EventSettings,
};

/// The topic the workload's events go to (the relationship events' producer topic).
const TOPIC: &str = "partner-center";

/// What to offer and for how long.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Events per second, published in 10 ms ticks.
    pub rate: u64,
    pub duration: Duration,
    /// Partners, each with one webhook endpoint and one immediate route to it.
    pub partners: usize,
    /// The share of partners whose endpoint fails (500, even ones) or is slow (2 s, odd ones).
    pub unhealthy_share: f64,
    /// How long to wait for the healthy endpoints' last notifications.
    pub drain: Duration,
}

impl Workload {
    fn unhealthy(&self) -> usize {
        (self.partners as f64 * self.unhealthy_share).round() as usize
    }
}

/// The healthy endpoints' latencies, publication to receipt.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Sorted, in milliseconds.
    pub latencies_ms: Vec<f64>,
    pub events: u64,
    pub healthy_events: usize,
    pub unhealthy_partners: usize,
    pub achieved_publish_rate: f64,
    /// Successful first attempts, from the planned row to the receiver's answer (p50, p99 in
    /// ms), read from the delivery log: the dispatch stage alone. The rest of the end-to-end
    /// time is consuming, grouping and planning.
    pub planned_to_sent_ms: Option<(f64, f64)>,
}

impl Outcome {
    /// The `q` quantile (0 to 1) in milliseconds; NaN when nothing arrived.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.latencies_ms.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_ms[idx]
    }

    pub fn delivered(&self) -> usize {
        self.latencies_ms.len()
    }

    pub fn to_json(&self, name: &str, w: &Workload) -> serde_json::Value {
        let round = |v: f64| (v * 10.0).round() / 10.0;
        serde_json::json!({
            "scenario": name,
            "target_events_per_second": w.rate,
            "achieved_publish_rate": self.achieved_publish_rate.round(),
            "events": self.events,
            "partners": w.partners,
            "unhealthy_partners": self.unhealthy_partners,
            "healthy_events": self.healthy_events,
            "healthy_delivered": self.delivered(),
            "p50_ms": round(self.quantile_ms(0.50)),
            "p99_ms": round(self.quantile_ms(0.99)),
            "max_ms": round(self.latencies_ms.last().copied().unwrap_or(f64::NAN)),
            "planned_to_sent_p50_p99_ms": self.planned_to_sent_ms,
        })
    }
}

#[derive(Default)]
struct Receipts {
    /// relationship id → when its notification arrived.
    at: Mutex<HashMap<String, Instant>>,
    /// Paths that answer 500 or slowly.
    failing: Mutex<Vec<String>>,
    slow: Mutex<Vec<String>>,
}

async fn receive(State(r): State<Arc<Receipts>>, uri: Uri, body: Bytes) -> axum::http::StatusCode {
    let now = Instant::now();
    let path = uri.path().to_owned();
    if r.failing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&path)
    {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
    }
    let slow = r
        .slow
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&path);
    if slow {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(items) = v["data"]["items"].as_array()
    {
        let mut at = r.at.lock().unwrap_or_else(|e| e.into_inner());
        for item in items {
            if let Some(rel) = item["detail"].as_str() {
                at.entry(rel.to_owned()).or_insert(now);
            }
        }
    }
    axum::http::StatusCode::OK
}

/// A receiver on loopback with the workload's failing and slow paths; returns its port.
async fn receiver(w: &Workload) -> anyhow::Result<(Arc<Receipts>, u16, Vec<usize>)> {
    let receipts = Arc::new(Receipts::default());
    let mut healthy = Vec::new();
    for i in 0..w.partners {
        if i < w.unhealthy() {
            let list = if i % 2 == 0 {
                &receipts.failing
            } else {
                &receipts.slow
            };
            list.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(hook_path(i));
        } else {
            healthy.push(i);
        }
    }
    let app = Router::new()
        .fallback(receive)
        .with_state(Arc::clone(&receipts));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = http.local_addr()?.port();
    tokio::spawn(async move {
        let _ = axum::serve(http, app).await;
    });
    Ok((receipts, port, healthy))
}

fn partner(i: usize) -> String {
    format!("bench-partner-{i:03}")
}

fn hook_path(i: usize) -> String {
    format!("/hook/{i}")
}

fn authed<T>(token: &str, body: T) -> anyhow::Result<Request<T>> {
    let mut r = Request::new(body);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(r)
}

type Published = Arc<Mutex<HashMap<String, (Instant, usize)>>>;

/// Publishes at the target rate in 10 ms ticks; remembers when each event left. Returns the
/// achieved rate.
async fn publish_paced(producer: Arc<dyn Queue>, w: &Workload, published: &Published) -> f64 {
    let total = w.rate * w.duration.as_millis() as u64 / 1000;
    let per_tick = (w.rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut n = 0_u64;
    while n < total {
        tick.tick().await;
        let mut batch = Vec::new();
        for _ in 0..per_tick.min(total - n) {
            let i = (n as usize) % w.partners;
            let rel = format!("rel-{n}");
            let event = GdapRelationshipChanged {
                partner_tenant_id: partner(i),
                event_name: "granular-admin-relationship-expired".into(),
                relationship_id: rel.clone(),
                resource_uri: String::new(),
                changed_at: None,
            };
            let envelope = Envelope {
                version: 1,
                message_id: uuid::Uuid::new_v4().to_string(),
                kind: "gdap.relationship_changed".into(),
                attempt: 1,
                partner_tenant_id: partner(i),
                payload: event.encode_to_vec(),
                ..Default::default()
            };
            batch.push((rel, i, envelope));
            n += 1;
        }
        // A tick's events go out together (pipelined on the connection), so the offered rate
        // does not depend on one round trip per event on a busy machine.
        let sends = batch.into_iter().map(|(rel, i, envelope)| {
            let producer = Arc::clone(&producer);
            let published = Arc::clone(published);
            async move {
                let sent_at = Instant::now();
                if let Err(e) = producer.publish(TOPIC, &envelope).await {
                    tracing::warn!(error = %e, "bench publish failed");
                    return;
                }
                published
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(rel, (sent_at, i));
            }
        });
        futures::future::join_all(sends).await;
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Waits for every healthy endpoint's events (or the drain timeout) and measures them.
async fn collect(
    w: &Workload,
    receipts: &Receipts,
    published: &Published,
    healthy: &[usize],
    achieved_publish_rate: f64,
) -> Outcome {
    let expected: Vec<String> = published
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, (_, i))| healthy.contains(i))
        .map(|(rel, _)| rel.clone())
        .collect();
    let deadline = Instant::now() + w.drain;
    while Instant::now() < deadline {
        let done = {
            let at = receipts.at.lock().unwrap_or_else(|e| e.into_inner());
            expected.iter().all(|rel| at.contains_key(rel))
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = receipts
        .at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let p = published.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut latencies_ms: Vec<f64> = expected
        .iter()
        .filter_map(|rel| Some(at.get(rel)?.duration_since(p.get(rel)?.0).as_secs_f64() * 1000.0))
        .collect();
    latencies_ms.sort_by(f64::total_cmp);
    Outcome {
        latencies_ms,
        events: p.len() as u64,
        healthy_events: expected.len(),
        unhealthy_partners: w.unhealthy(),
        achieved_publish_rate,
        planned_to_sent_ms: None,
    }
}

/// The dispatch stage's share, from the delivery log (see [`Outcome::planned_to_sent_ms`]).
async fn planned_to_sent(
    database: &palisade_storage::DatabaseSettings,
) -> anyhow::Result<(f64, f64)> {
    let db = palisade_storage::Database::connect(database, "notify").await?;
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT a.at - d.created_at FROM deliveries d JOIN delivery_attempts a \
         ON a.delivery_id = d.delivery_id AND a.attempt = 1 \
         WHERE a.http_status >= 200 AND a.http_status < 300",
    )
    .fetch_all(db.pool())
    .await?;
    db.close().await;
    let mut ms: Vec<f64> = rows.into_iter().map(|(v,)| v as f64).collect();
    ms.sort_by(f64::total_cmp);
    let q = |q: f64| {
        ms.get(((ms.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok((q(0.5), q(0.99)))
}

/// The notifier end to end: `database` must be an empty Postgres database of its own and
/// `queue` a Redis queue with a key prefix of its own.
pub async fn run_notifier(
    database: palisade_storage::DatabaseSettings,
    queue: palisade_queue::QueueSettings,
    w: &Workload,
) -> anyhow::Result<Outcome> {
    let (receipts, http_port, healthy) = receiver(w).await?;
    let settings = Settings {
        database: palisade_storage::DatabaseSettings {
            max_connections: 32,
            ..database.clone()
        },
        queue: queue.clone(),
        events: EventSettings::default(),
        kek: palisade_crypto::LocalKekSettings {
            keys: Some(secrecy::SecretString::from(format!(
                "v1:{}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7_u8; 32])
            ))),
            key_file: None,
        },
        server: palisade_server::ServerSettings::ephemeral(),
        auth: Default::default(),
        telemetry: Default::default(),
        ack_listen: None,
        channels: ChannelSettings {
            ssrf: SsrfPolicy {
                allow_loopback: true,
                ..Default::default()
            },
            http_timeout: Duration::from_secs(5),
            ..Default::default()
        },
        engine: EngineSettings {
            public_url: "http://127.0.0.1:9".into(),
            link_signing_key: Some(secrecy::SecretString::from(
                "bench-link-key-bench-link-key-00",
            )),
            poll_interval: Duration::from_millis(200),
            max_in_flight: 512,
            ..Default::default()
        },
        workers: Some(true),
        shutdown_timeout: Some(Duration::from_secs(5)),
    };
    let token = {
        let store = palisade_auth::AuthStore::open(&database).await?;
        let (id, secret, hash) = palisade_auth::generate_secret();
        let credential = palisade_auth::NewCredential {
            display_name: "bench".into(),
            service: true,
            all_partners: true,
            partners: vec![],
            scopes: vec![palisade_auth::Scope::Admin],
            expires_at: None,
        };
        store.insert(&id, &hash, &credential).await?;
        secret
    };
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc_port = grpc.local_addr()?.port();
    let ack = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let running = crate::start(
        settings,
        Listeners {
            grpc,
            admin,
            http: ack,
        },
        palisade_clock::system(),
    )
    .await?;
    let mut client =
        NotificationServiceClient::connect(format!("http://127.0.0.1:{grpc_port}")).await?;

    // Every partner: no group wait (what a partner sets for "tell me at once"), one webhook
    // endpoint, one immediate route to it.
    for i in 0..w.partners {
        let p = partner(i);
        client
            .set_partner_settings(authed(
                &token,
                SetPartnerSettingsRequest {
                    partner_tenant_id: p.clone(),
                    settings: Some(PartnerSettings {
                        time_zone: "UTC".into(),
                        digest_hour: 23,
                        group_wait_seconds: 0,
                        group_interval_seconds: 0,
                        repeat_interval_seconds: 86_400,
                        escalation: vec![],
                        default_language: "en".into(),
                    }),
                },
            )?)
            .await?;
        let path = hook_path(i);
        let channel = client
            .create_channel(authed(
                &token,
                CreateChannelRequest {
                    partner_tenant_id: p.clone(),
                    display_name: path.clone(),
                    kind: ChannelKind::Webhook as i32,
                    target: format!("http://127.0.0.1:{http_port}{path}"),
                    ..Default::default()
                },
            )?)
            .await?
            .into_inner()
            .channel
            .context("created channel")?;
        client
            .create_route(authed(
                &token,
                CreateRouteRequest {
                    partner_tenant_id: p.clone(),
                    route: Some(Route {
                        display_name: "bench".into(),
                        channel_ids: vec![channel.channel_id],
                        ..Default::default()
                    }),
                },
            )?)
            .await?;
    }

    let producer = palisade_queue::connect(&queue).await?;
    let published: Published = Arc::default();
    let rate = publish_paced(producer, w, &published).await;
    let mut outcome = collect(w, &receipts, &published, &healthy, rate).await;
    running.stop().await;
    outcome.planned_to_sent_ms = planned_to_sent(&database).await.ok();
    Ok(outcome)
}

/// The floor, in the same run: the same events published the same way, read back by one
/// bare consumer (`next_batch`, no store) and POSTed straight to the same receiver.
pub async fn run_baseline(
    queue: palisade_queue::QueueSettings,
    w: &Workload,
) -> anyhow::Result<Outcome> {
    let (receipts, http_port, healthy) = receiver(w).await?;
    let q = palisade_queue::connect(&queue).await?;
    let mut consumer = q
        .consumer(TOPIC, "bench-baseline", "bench-baseline-0")
        .await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let reader = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut sends = tokio::task::JoinSet::new();
        while !stop.is_cancelled() {
            let batch = match consumer.next_batch(100, Duration::from_millis(100)).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "baseline consumer failed");
                    break;
                }
            };
            for d in &batch {
                let Ok(event) = GdapRelationshipChanged::decode(d.envelope.payload.as_slice())
                else {
                    continue;
                };
                let i: usize = event
                    .partner_tenant_id
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let url = format!("http://127.0.0.1:{http_port}{}", hook_path(i));
                let body =
                    serde_json::json!({"data": {"items": [{"detail": event.relationship_id}]}});
                let http = http.clone();
                sends.spawn(async move {
                    let _ = http.post(url).json(&body).send().await;
                });
            }
            if !batch.is_empty() {
                let _ = consumer.ack_many(&batch).await;
            }
            while sends.try_join_next().is_some() {}
        }
        sends.abort_all();
    });
    let published: Published = Arc::default();
    let rate = publish_paced(q, w, &published).await;
    let outcome = collect(w, &receipts, &published, &healthy, rate).await;
    shutdown.cancel();
    let _ = reader.await;
    Ok(outcome)
}
