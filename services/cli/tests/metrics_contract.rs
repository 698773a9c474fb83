//! The metrics contract: every `palisade_*` name the Grafana dashboard, the Prometheus rules and
//! the chart's PrometheusRule read is exported by some service.
//!
//! The four services run in-process on real Postgres and Redis, with ms-sim as Microsoft, and
//! are configured through their APIs exactly as `palisade dev` configures its demo (consent,
//! ingestion, channels), so the lazily created series (per partner, per channel kind, per
//! source) exist. Then each admin `/metrics` is scraped over HTTP. A name the deploy assets
//! read and no scrape carries fails the test, with the names and the file that reads them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use palisade_auth::{AuthStore, NewCredential, Scope};
use palisade_cli::dev::demo;
use palisade_testkit::{TestDatabase, TestRedis};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Series that exist only after an event this test cannot cause: a channel disabled after a 410
/// or continuous failures (the demo's channels write to files). prometheus-client renders no
/// family without series, so no scrape here can show it; the notifier's own service test
/// scrapes this name after a 410. Anything else the assets read must have samples here.
const COVERED_ELSEWHERE: &[&str] = &["palisade_notify_channels_disabled"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The deploy assets that read metrics.
fn assets() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = Vec::new();
    for (dir, keep) in [
        (
            "deploy/grafana",
            &(|n: &str| n.ends_with(".json")) as &dyn Fn(&str) -> bool,
        ),
        ("deploy/prometheus", &|n: &str| {
            n.ends_with(".yaml") || n.ends_with(".yml")
        }),
        ("helm/palisade/templates", &|n: &str| n.contains("rule")),
        // The chart's PrometheusRule includes its rules from here.
        ("helm/palisade/files", &|n: &str| n.contains("rule")),
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_file() && keep(&name) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A histogram is read through its series; the family is the name without the suffix.
fn family(name: &str) -> &str {
    ["_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Every `palisade_[a-z0-9_]+` in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("palisade_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // `palisade_` inside a longer identifier (`xpalisade_…`) is not a metric.
        let preceded = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !preceded && end > "palisade_".len() {
            names.insert(family(&tail[..end]).to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// What one scrape carries: names with samples, and families declared by `# TYPE`.
#[derive(Default, Debug)]
struct Scrape {
    sampled: BTreeSet<String>,
    declared: BTreeSet<String>,
}

fn parse_scrape(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                scrape.declared.insert(name.to_owned());
                if kind == "counter" {
                    scrape.declared.insert(format!("{name}_total"));
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            scrape.sampled.insert(family(&line[..end]).to_owned());
        }
    }
    scrape
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn server_listeners() -> (palisade_server::Listeners, SocketAddr, SocketAddr) {
    let (grpc, admin) = (listener().await, listener().await);
    let (g, a) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
    (palisade_server::Listeners { grpc, admin }, g, a)
}

/// As `palisade dev` mints them: a service credential for calling the peers.
async fn service_credential(store: &AuthStore, name: &str, scopes: Vec<Scope>) -> SecretString {
    let (id, secret, hash) = palisade_auth::generate_secret();
    store
        .insert(
            &id,
            &hash,
            &NewCredential {
                display_name: format!("metrics contract: {name}"),
                service: true,
                all_partners: true,
                partners: Vec::new(),
                scopes,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    SecretString::from(secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_dashboards_and_rules_read_is_exported() {
    // What the deploy assets read, and which file reads it.
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in assets() {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path
            .strip_prefix(repo_root())
            .unwrap_or(&path)
            .display()
            .to_string();
        for name in metric_names(&text) {
            wanted.entry(name).or_default().insert(file.clone());
        }
    }
    assert!(
        wanted.contains_key("palisade_grpc_requests_total"),
        "the assets were not read: {wanted:?}"
    );

    let db = TestDatabase::create().await;
    let redis = TestRedis::create().await;
    let dir = std::env::temp_dir().join(format!(
        "palisade-metrics-contract-{}-{}",
        std::process::id(),
        uuid_like()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let database = db.settings();
    let queue = palisade_queue::QueueSettings {
        backend: palisade_queue::Backend::Redis,
        redis_url: Some(redis.url().to_owned().into()),
        key_prefix: redis.prefix().trim_end_matches(':').to_owned(),
        // Sampled often, so the queue gauges carry this run's numbers quickly.
        sample_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let store = AuthStore::open(&database).await.unwrap();
    let admin = SecretString::from(
        palisade_auth::bootstrap_admin(&store, "metrics contract admin")
            .await
            .unwrap(),
    );
    let sim = ms_sim::start(ms_sim::SimConfig {
        seed: demo::SEED,
        scenario: ms_sim::ScenarioConfig {
            partners: 1,
            customers_per_partner: demo::CUSTOMERS,
            alerts_per_partner: 12,
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let kek_file = dir.join("local-kek");
    let grpc = |addr: SocketAddr| format!("http://{addr}");
    let server = |listeners: &palisade_server::Listeners| palisade_server::ServerSettings {
        grpc_listen: listeners.grpc.local_addr().unwrap(),
        admin_listen: listeners.admin.local_addr().unwrap(),
        shutdown_deadline: Duration::from_secs(2),
        ..Default::default()
    };

    // token-broker, sweeping every second so the health gauge follows the consent.
    let (tb_listeners, tb_grpc, tb_admin) = server_listeners().await;
    let mut broker = palisade_token_broker::Settings {
        server: server(&tb_listeners),
        database: database.clone(),
        queue: queue.clone(),
        ..Default::default()
    };
    broker.kek.key_file = Some(kek_file.clone());
    broker.entra.public_login_url = sim.login_url().to_string();
    broker.broker.sweep_interval = Duration::from_secs(1);
    let broker = palisade_token_broker::start(
        broker,
        tb_listeners,
        palisade_token_broker::Options::default(),
    )
    .await
    .unwrap();

    // alert-ingest, as `palisade dev` configures it, with its gauges recomputed every second.
    let (ai_listeners, ai_grpc, ai_admin) = server_listeners().await;
    let webhook = listener().await;
    let webhook_addr = webhook.local_addr().unwrap();
    let mut ingest = palisade_alert_ingest::Settings {
        server: server(&ai_listeners),
        database: database.clone(),
        queue: queue.clone(),
        ..Default::default()
    };
    ingest.auth.service_credential =
        Some(service_credential(&store, "alert-ingest", vec![Scope::TokensIssue]).await);
    ingest.token_broker.url = grpc(tb_grpc);
    ingest.microsoft.graph_url = sim.graph_url().to_string();
    ingest.microsoft.partner_center_url = sim.partner_center_url().to_string();
    ingest.webhook.trust_anchors_pem = vec![sim.webhook_root_ca_pem()];
    ingest.webhook.allowed_certificate_hosts = vec![
        sim.certificate_url()
            .host_str()
            .unwrap_or("127.0.0.1")
            .to_owned(),
    ];
    ingest.webhook.allow_http_certificate_urls = true;
    ingest.workers.gauge_interval = Duration::from_secs(1);
    let ingest = palisade_alert_ingest::start(
        ingest,
        palisade_alert_ingest::Listeners {
            grpc: ai_listeners.grpc,
            admin: ai_listeners.admin,
            webhook: Some(webhook),
        },
        palisade_clock::system(),
    )
    .await
    .unwrap();

    // The notifier, with messages written to files.
    let (nt_listeners, nt_grpc, nt_admin) = server_listeners().await;
    let links = listener().await;
    let mut notifier = palisade_notifier::Settings {
        server: server(&nt_listeners),
        database: database.clone(),
        queue: queue.clone(),
        ..Default::default()
    };
    notifier.kek.key_file = Some(kek_file);
    notifier.channels.sink = palisade_notifier::channels::SinkMode::File;
    notifier.channels.sink_dir = dir.join("notifications");
    notifier.engine.public_url = format!("http://{}", links.local_addr().unwrap());
    let notifier = palisade_notifier::start(
        notifier,
        palisade_notifier::Listeners {
            grpc: nt_listeners.grpc,
            admin: nt_listeners.admin,
            http: links,
        },
        palisade_clock::system(),
    )
    .await
    .unwrap();

    // compliance, asking its peers over gRPC.
    let (co_listeners, _, co_admin) = server_listeners().await;
    let mut compliance = palisade_compliance::Settings {
        server: server(&co_listeners),
        database: database.clone(),
        queue: queue.clone(),
        ..Default::default()
    };
    compliance.auth.service_credential = Some(
        service_credential(
            &store,
            "compliance",
            palisade_compliance::SERVICE_SCOPES.to_vec(),
        )
        .await,
    );
    compliance.peers.token_broker = grpc(tb_grpc);
    compliance.peers.notifier = grpc(nt_grpc);
    compliance.peers.alert_ingest = grpc(ai_grpc);
    compliance.microsoft.graph_url = sim.graph_url().to_string();
    compliance.microsoft.partner_center_url = sim.partner_center_url().to_string();
    let compliance = palisade_compliance::start(compliance, co_listeners, palisade_clock::system())
        .await
        .unwrap();

    // Traffic: the demo's configuration through the APIs (consent, ingestion, contacts, a
    // webhook channel), then live alerts with their signed webhooks.
    let addresses = demo::Addresses {
        token_broker: grpc(tb_grpc),
        alert_ingest: grpc(ai_grpc),
        notifier: grpc(nt_grpc),
        webhook_receiver: format!("http://{webhook_addr}"),
    };
    let started = Instant::now();
    loop {
        match demo::seed(&sim, &addresses, &admin).await {
            Ok(()) => break,
            Err(e) if started.elapsed() < Duration::from_secs(120) => {
                tracing::debug!(error = %format!("{e:#}"), "waiting for the services");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("seeding the demo partner: {e:#}"),
        }
    }
    let stop_live = CancellationToken::new();
    tokio::spawn(demo::live(
        sim.control(),
        sim.scenario().partners[0].clone(),
        Duration::from_secs(1),
        stop_live.clone(),
    ));

    // Scrape until every wanted name is there (series appear as the traffic flows), or give
    // up and name what is missing.
    let http = reqwest::Client::new();
    let admins = [
        ("token-broker", tb_admin),
        ("alert-ingest", ai_admin),
        ("notifier", nt_admin),
        ("compliance", co_admin),
    ];
    let started = Instant::now();
    let missing = loop {
        let mut scrapes = Vec::new();
        for (service, addr) in admins {
            let response = http
                .get(format!("http://{addr}/metrics"))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{service} /metrics");
            scrapes.push((service, parse_scrape(&response.text().await.unwrap())));
        }
        let missing: Vec<(String, Vec<&str>, &BTreeSet<String>)> = wanted
            .iter()
            .filter(|(name, _)| {
                !scrapes.iter().any(|(_, s)| {
                    s.sampled.contains(*name) || COVERED_ELSEWHERE.contains(&name.as_str())
                })
            })
            .map(|(name, files)| {
                // Declared but never sampled, or not exported at all: say which.
                let declared_by = scrapes
                    .iter()
                    .filter(|(_, s)| s.declared.contains(name))
                    .map(|(service, _)| *service)
                    .collect();
                (name.clone(), declared_by, files)
            })
            .collect();
        if missing.is_empty() || started.elapsed() > Duration::from_secs(120) {
            break missing;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    stop_live.cancel();
    let report: Vec<String> = missing
        .iter()
        .map(|(name, declared_by, files)| {
            format!("{name} (read by {files:?}; declared without samples by {declared_by:?})")
        })
        .collect();

    tokio::join!(
        broker.stop(),
        ingest.stop(),
        notifier.stop(),
        compliance.stop()
    );
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        report.is_empty(),
        "the deploy assets read metrics no service exports:\n{}",
        report.join("\n")
    );
}

/// A unique-enough suffix for the temporary directory (tests run in parallel processes).
fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

#[test]
fn names_are_read_from_text_and_scrapes() {
    let names = metric_names(
        r#"sum(rate(palisade_grpc_requests_total{code!="Ok"}[5m])) / histogram_quantile(0.99, palisade_grpc_request_duration_seconds_bucket) xpalisade_no palisade_"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "palisade_grpc_request_duration_seconds",
            "palisade_grpc_requests_total"
        ]
    );
    let scrape = parse_scrape(
        "# TYPE palisade_notify_deliveries counter\n# TYPE palisade_queue_depth gauge\n\
         palisade_queue_depth{topic=\"alerts\",group=\"notifier\"} 3\n\
         palisade_grpc_request_duration_seconds_bucket{le=\"0.1\"} 1\n# EOF\n",
    );
    assert!(scrape.declared.contains("palisade_notify_deliveries_total"));
    assert!(scrape.sampled.contains("palisade_queue_depth"));
    assert!(
        scrape
            .sampled
            .contains("palisade_grpc_request_duration_seconds")
    );
    assert!(!scrape.sampled.contains("palisade_notify_deliveries_total"));
}
