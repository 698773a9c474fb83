//! End-to-end delivery latency: from publishing an event on Redis Streams to the signed
//! webhook arriving at a receiver on loopback, through the whole notifier (consumer,
//! grouping with zero waits, planning, dispatch) over real Postgres and Redis.
//!
//! Two runs: every endpoint healthy, then 30 % of the partners' endpoints failing (500) or
//! slow (2 s), reporting the healthy endpoints' latency. Prints one JSON document.
//!
//! `cargo bench -p palisade-notifier --bench delivery` (needs the test Postgres and Redis).
//! `NOTIFIER_BENCH_RATE` (events/s, default 1000) and `NOTIFIER_BENCH_SECONDS` (default 10).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::Uri};
use palisade_contracts::{
    events::v1::{Envelope, GdapRelationshipChanged},
    notify::v1::{notification_service_client::NotificationServiceClient, *},
};
use palisade_notifier::{
    EngineSettings, Listeners, Settings,
    channels::{ChannelSettings, SsrfPolicy},
    queue::EventSettings,
};
use palisade_testkit::{TestDatabase, TestRedis};
use prost::Message;
use tonic::Request;

const PARTNERS: usize = 50;

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
    if r.failing.lock().unwrap().contains(&path) {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
    }
    if r.slow.lock().unwrap().contains(&path) {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(items) = v["data"]["items"].as_array()
    {
        let mut at = r.at.lock().unwrap();
        for item in items {
            if let Some(rel) = item["detail"].as_str() {
                at.entry(rel.to_owned()).or_insert(now);
            }
        }
    }
    axum::http::StatusCode::OK
}

fn queue_settings(redis: &TestRedis) -> palisade_queue::QueueSettings {
    palisade_queue::QueueSettings {
        backend: palisade_queue::Backend::Redis,
        redis_url: Some(secrecy::SecretString::from(redis.url().to_owned())),
        key_prefix: redis.prefix().trim_end_matches(':').to_owned(),
        ..Default::default()
    }
}

fn authed<T>(token: &str, body: T) -> Request<T> {
    let mut r = Request::new(body);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn partner(i: usize) -> String {
    format!("bench-partner-{i:03}")
}

async fn scenario(name: &str, rate: u64, seconds: u64, unhealthy_share: f64) -> serde_json::Value {
    let db = TestDatabase::create().await;
    let redis = TestRedis::create().await;
    let receipts = Arc::new(Receipts::default());
    let app = Router::new()
        .fallback(receive)
        .with_state(Arc::clone(&receipts));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = http.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(http, app).await;
    });

    let settings = Settings {
        database: palisade_storage::DatabaseSettings {
            max_connections: 32,
            ..db.settings()
        },
        queue: queue_settings(&redis),
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
        let store = palisade_auth::AuthStore::open(&db.settings())
            .await
            .unwrap();
        let (id, secret, hash) = palisade_auth::generate_secret();
        let credential = palisade_auth::NewCredential {
            display_name: "bench".into(),
            service: true,
            all_partners: true,
            partners: vec![],
            scopes: vec![palisade_auth::Scope::Admin],
            expires_at: None,
        };
        store.insert(&id, &hash, &credential).await.unwrap();
        secret
    };
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_port = grpc.local_addr().unwrap().port();
    let ack = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = palisade_notifier::start(
        settings,
        Listeners {
            grpc,
            admin,
            http: ack,
        },
        palisade_clock::system(),
    )
    .await
    .unwrap();
    let mut client = NotificationServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
        .await
        .unwrap();

    // Every partner: zero group waits, one webhook endpoint, one route to it.
    let unhealthy = (PARTNERS as f64 * unhealthy_share).round() as usize;
    let mut healthy_partners = Vec::new();
    for i in 0..PARTNERS {
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
            ))
            .await
            .unwrap();
        let path = format!("/hook/{i}");
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
            ))
            .await
            .unwrap()
            .into_inner()
            .channel
            .unwrap();
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
            ))
            .await
            .unwrap();
        if i < unhealthy {
            if i % 2 == 0 {
                receipts.failing.lock().unwrap().push(path);
            } else {
                receipts.slow.lock().unwrap().push(path);
            }
        } else {
            healthy_partners.push(i);
        }
    }

    // Publish at the target rate in 10 ms ticks; remember when each event left.
    let producer = palisade_queue::connect(&queue_settings(&redis))
        .await
        .unwrap();
    let published: Arc<Mutex<HashMap<String, (Instant, usize)>>> = Arc::default();
    let total = rate * seconds;
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut n = 0_u64;
    while n < total {
        tick.tick().await;
        let mut batch = Vec::new();
        for _ in 0..per_tick.min(total - n) {
            let i = (n as usize) % PARTNERS;
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
            let published = Arc::clone(&published);
            async move {
                let sent_at = Instant::now();
                producer.publish("partner-center", &envelope).await.unwrap();
                published.lock().unwrap().insert(rel, (sent_at, i));
            }
        });
        futures::future::join_all(sends).await;
    }
    let publish_secs = started.elapsed().as_secs_f64();

    // Wait for the healthy endpoints to have everything (or give up after 60 s).
    let expected: Vec<String> = published
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, (_, i))| healthy_partners.contains(i))
        .map(|(rel, _)| rel.clone())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let done = {
            let at = receipts.at.lock().unwrap();
            expected.iter().all(|rel| at.contains_key(rel))
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = receipts.at.lock().unwrap().clone();
    let p = published.lock().unwrap().clone();
    let mut latencies: Vec<f64> = expected
        .iter()
        .filter_map(|rel| Some(at.get(rel)?.duration_since(p.get(rel)?.0).as_secs_f64() * 1000.0))
        .collect();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    running.stop().await;
    serde_json::json!({
        "scenario": name,
        "target_events_per_second": rate,
        "achieved_publish_rate": (total as f64 / publish_secs).round(),
        "events": total,
        "partners": PARTNERS,
        "unhealthy_partners": unhealthy,
        "healthy_events": expected.len(),
        "healthy_delivered": latencies.len(),
        "p50_ms": (percentile(&latencies, 0.50) * 10.0).round() / 10.0,
        "p99_ms": (percentile(&latencies, 0.99) * 10.0).round() / 10.0,
        "max_ms": (latencies.last().copied().unwrap_or(f64::NAN) * 10.0).round() / 10.0,
    })
}

fn main() {
    let rate: u64 = std::env::var("NOTIFIER_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seconds: u64 = std::env::var("NOTIFIER_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let healthy = scenario("all endpoints healthy", rate, seconds, 0.0).await;
        let degraded = scenario("30% of endpoints failing or slow", rate, seconds, 0.3).await;
        let ratio = degraded["p99_ms"].as_f64().unwrap_or(f64::NAN)
            / healthy["p99_ms"].as_f64().unwrap_or(f64::NAN);
        let report = serde_json::json!({
            "benchmark": "notifier end-to-end delivery latency (publish to webhook receipt)",
            "runs": [healthy, degraded],
            "healthy_p99_ratio_degraded_over_baseline": (ratio * 100.0).round() / 100.0,
        });
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    });
}
