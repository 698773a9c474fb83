//! Idle and loaded resident memory of each service as its own process: the four release
//! binaries (found next to this one, in the same target directory) on Postgres and Redis, with
//! ms-sim (in this process) as Microsoft. VmRSS is read once a service is ready and has settled
//! (idle); then a short load is driven at each over its real API, and VmHWM (the peak) is read
//! (loaded).
//!
//! Every child is started with `kill_on_drop`, and all are held by one `Children` value, so an
//! error or a panic on the way out kills them too; the normal path kills and reaps them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use base64::Engine;
use palisade_auth::{AuthStore, BearerInterceptor, NewCredential, Scope, bootstrap_admin};
use palisade_contracts::{
    alerts::v1 as alerts,
    compliance::v1 as compliance,
    notify::v1 as notify,
    tokens::v1::{self as pb, token_broker_service_client::TokenBrokerServiceClient},
};
use secrecy::SecretString;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::report::Row;

pub const SERVICES: [&str; 4] = ["token-broker", "alert-ingest", "notifier", "compliance"];
const IDLE_TARGET_MIB: f64 = 64.0;
const LOADED_TARGET_MIB: f64 = 256.0;

type Authed = InterceptedService<Channel, BearerInterceptor>;

/// The running children; dropping this kills every one still alive.
#[derive(Default)]
struct Children(Vec<(&'static str, tokio::process::Child)>);

impl Children {
    fn pid(&self, service: &str) -> Option<u32> {
        self.0
            .iter()
            .find(|(name, _)| *name == service)
            .and_then(|(_, child)| child.id())
    }

    async fn kill_all(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill().await;
        }
        self.0.clear();
    }
}

struct Service {
    name: &'static str,
    grpc: SocketAddr,
    admin: SocketAddr,
}

/// A loopback port free right now (the child binds it a moment later).
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `palisade-<service>` in the directory of this executable (`target/release` under `make
/// bench`), which the Makefile builds first.
fn binary(service: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("the bench binary has no directory"))?;
    let path = dir.join(format!("palisade-{service}"));
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the services first (cargo build{} -p palisade-{service})",
        path.display(),
        if dir.ends_with("release") {
            " --release"
        } else {
            ""
        }
    );
    Ok(path)
}

async fn mint(store: &AuthStore, name: &str, scopes: Vec<Scope>) -> anyhow::Result<String> {
    let (id, secret, hash) = palisade_auth::generate_secret();
    store
        .insert(
            &id,
            &hash,
            &NewCredential {
                display_name: format!("bench rss: {name}"),
                service: true,
                all_partners: true,
                partners: Vec::new(),
                scopes,
                expires_at: None,
            },
        )
        .await?;
    Ok(secret)
}

async fn connect(addr: SocketAddr, secret: &SecretString) -> anyhow::Result<Authed> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(InterceptedService::new(
        channel,
        BearerInterceptor::new(Some(secret)),
    ))
}

/// Until `/readyz` answers 200, or the child exits, or a minute passes.
async fn wait_ready(
    http: &reqwest::Client,
    service: &Service,
    child: &mut tokio::process::Child,
    log: &Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "{} exited with {status} before it was ready; its log: {}",
                service.name,
                log.display()
            );
        }
        let ready = http
            .get(format!("http://{}/readyz", service.admin))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{} not ready after 60 s; its log: {}",
            service.name,
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn measure(
    database_url: &str,
    redis_url: &str,
    out: &Path,
    load: Option<Duration>,
) -> anyhow::Result<Vec<Row>> {
    // A database of its own, dropped afterwards.
    let scratch = crate::scratch::ScratchDatabase::create(database_url, "rss").await?;
    let url = scratch.url.clone();
    let mut children = Children::default();
    let result = run(&url, redis_url, out, load, &mut children).await;
    children.kill_all().await;
    scratch.drop().await?;
    result
}

async fn run(
    database_url: &str,
    redis_url: &str,
    out: &Path,
    load: Option<Duration>,
    children: &mut Children,
) -> anyhow::Result<Vec<Row>> {
    let binaries = SERVICES
        .iter()
        .map(|s| binary(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let sim = ms_sim::start(ms_sim::SimConfig::default()).await?;
    let partner = sim.scenario().partners[0].clone();
    let database = palisade_storage::DatabaseSettings {
        url: SecretString::from(database_url.to_owned()),
        ..Default::default()
    };
    let store = AuthStore::open(&database).await?;
    let admin = SecretString::from(bootstrap_admin(&store, "bench rss").await?);
    let ingest_credential = mint(&store, "alert-ingest", vec![Scope::TokensIssue]).await?;
    let compliance_credential = mint(
        &store,
        "compliance",
        palisade_compliance::SERVICE_SCOPES.to_vec(),
    )
    .await?;
    let kek = format!(
        "v1:{}",
        base64::engine::general_purpose::STANDARD.encode([9_u8; 32])
    );
    let prefix = format!("bench-rss-{}", uuid::Uuid::new_v4().simple());
    let mut services = Vec::new();
    for service in SERVICES {
        services.push(Service {
            name: service,
            grpc: free_port()?,
            admin: free_port()?,
        });
    }
    let grpc_of = |name: &str| {
        services
            .iter()
            .find(|s| s.name == name)
            .map(|s| format!("http://{}", s.grpc))
            .unwrap_or_default()
    };
    let graph = sim.graph_url().to_string();
    let partner_center = sim.partner_center_url().to_string();
    let http = reqwest::Client::new();
    let result_settle = Duration::from_secs(2);

    let mut idle = Vec::new();
    for (service, binary) in services.iter().zip(&binaries) {
        let env_prefix = format!(
            "PALISADE_{}__",
            service.name.replace('-', "_").to_uppercase()
        );
        let mut env: Vec<(String, String)> = vec![
            ("SERVER__GRPC_LISTEN".into(), service.grpc.to_string()),
            ("SERVER__ADMIN_LISTEN".into(), service.admin.to_string()),
            ("QUEUE__KEY_PREFIX".into(), prefix.clone()),
            // The shared test Redis may not be configured noeviction; this is a measurement.
            ("QUEUE__ALLOW_UNSAFE_EVICTION_POLICY".into(), "true".into()),
        ];
        match service.name {
            "token-broker" => {
                env.push(("KEK__KEYS".into(), kek.clone()));
                env.push((
                    "ENTRA__PUBLIC_LOGIN_URL".into(),
                    sim.login_url().to_string(),
                ));
                env.push(("LOCK__KEY_PREFIX".into(), prefix.clone()));
            }
            "alert-ingest" => {
                env.push(("AUTH__SERVICE_CREDENTIAL".into(), ingest_credential.clone()));
                env.push(("TOKEN_BROKER__URL".into(), grpc_of("token-broker")));
                env.push(("MICROSOFT__GRAPH_URL".into(), graph.clone()));
                env.push((
                    "MICROSOFT__PARTNER_CENTER_URL".into(),
                    partner_center.clone(),
                ));
            }
            "notifier" => {
                env.push(("KEK__KEYS".into(), kek.clone()));
                env.push(("ACK_LISTEN".into(), free_port()?.to_string()));
            }
            _ => {
                env.push((
                    "AUTH__SERVICE_CREDENTIAL".into(),
                    compliance_credential.clone(),
                ));
                env.push(("PEERS__TOKEN_BROKER".into(), grpc_of("token-broker")));
                env.push(("PEERS__NOTIFIER".into(), grpc_of("notifier")));
                env.push(("PEERS__ALERT_INGEST".into(), grpc_of("alert-ingest")));
                env.push(("MICROSOFT__GRAPH_URL".into(), graph.clone()));
                env.push((
                    "MICROSOFT__PARTNER_CENTER_URL".into(),
                    partner_center.clone(),
                ));
            }
        }
        let log = logs.join(format!("{}.log", service.name));
        let mut command = tokio::process::Command::new(binary);
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(
                logs.join(format!("{}.stderr.log", service.name)),
            )?)
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(format!("{env_prefix}{key}"), value);
        }
        let mut child = command.spawn()?;
        wait_ready(&http, service, &mut child, &log).await?;
        children.0.push((service.name, child));
    }
    // Idle: every service up (the others running too, as in a deployment), nothing asked.
    tokio::time::sleep(result_settle).await;
    for service in &services {
        let pid = children
            .pid(service.name)
            .ok_or_else(|| anyhow::anyhow!("{} exited", service.name))?;
        idle.push(crate::rss::current_mib(pid));
    }

    let mut load_notes = Vec::new();
    if let Some(duration) = load {
        load_notes = drive(&services, &admin, &partner, &prefix, redis_url, duration).await?;
    } else {
        load_notes.resize(services.len(), "smoke: no load".to_owned());
    }
    let mut rows = Vec::new();
    for ((service, idle), note) in services.iter().zip(idle).zip(load_notes) {
        let pid = children
            .pid(service.name)
            .ok_or_else(|| anyhow::anyhow!("{} exited under load", service.name))?;
        let peak = crate::rss::peak_mib(pid);
        rows.push(rss_row(
            format!("rss: {} idle", service.name),
            idle,
            IDLE_TARGET_MIB,
            load.is_some(),
            "VmRSS 2 s after all four were ready, on Postgres + Redis".into(),
        ));
        rows.push(rss_row(
            format!("rss: {} loaded", service.name),
            peak,
            LOADED_TARGET_MIB,
            load.is_some(),
            format!("VmHWM after: {note}"),
        ));
    }
    children.kill_all().await;
    sim.shutdown().await;
    Ok(rows)
}

fn rss_row(workload: String, mib: Option<f64>, target: f64, judged: bool, note: String) -> Row {
    Row {
        workload,
        throughput_per_s: None,
        p50_ms: None,
        p99_ms: None,
        baseline: "-".into(),
        baseline_value: None,
        ratio: None,
        peak_rss_mib: mib,
        target: format!("<= {target:.0} MiB"),
        met: if judged {
            mib.map(|m| m <= target)
        } else {
            None
        },
        note: format!("separate process ({} build); {note}", build_profile()),
        latency_quantiles_us: Vec::new(),
    }
}

/// `release` or `debug`: the target directory the service binaries came from.
fn build_profile() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()
                .and_then(|dir| dir.file_name())
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Calls `op` from `concurrency` tasks until `duration` passes; returns (ok, failed).
async fn hammer<F, Fut>(duration: Duration, concurrency: usize, op: F) -> (u64, u64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let op = op.clone();
        tasks.spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while Instant::now() < deadline {
                if op().await {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(Ok((o, f))) = tasks.join_next().await {
        ok += o;
        failed += f;
    }
    (ok, failed)
}

/// The load per service, over its real API; one note per service saying what it was.
async fn drive(
    services: &[Service],
    admin: &SecretString,
    partner: &ms_sim::scenario::Partner,
    prefix: &str,
    redis_url: &str,
    duration: Duration,
) -> anyhow::Result<Vec<String>> {
    let addr = |name: &str| {
        services
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.grpc)
            .ok_or_else(|| anyhow::anyhow!("no {name}"))
    };
    let tenant = partner.tenant_id.clone();
    let mut notes = Vec::new();

    // token-broker: a consent against ms-sim, then cached GetAccessToken.
    let mut tokens = TokenBrokerServiceClient::new(connect(addr("token-broker")?, admin).await?);
    let app =
        palisade_cli::dev::provision::ensure_sam_app(&mut tokens, partner, "bench rss").await?;
    palisade_cli::dev::provision::consent_with_mfa(&mut tokens, partner, &app.app_id).await?;
    let (ok, failed) = hammer(duration, 16, {
        let (tokens, tenant) = (tokens.clone(), tenant.clone());
        move || {
            let (mut tokens, tenant) = (tokens.clone(), tenant.clone());
            async move {
                tokens
                    .get_access_token(pb::GetAccessTokenRequest {
                        partner_tenant_id: tenant,
                        resource: pb::Resource::Graph as i32,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
            }
        }
    })
    .await;
    notes.push(format!(
        "{ok} GetAccessToken ({failed} failed) from 16 callers in {:.0} s",
        duration.as_secs_f64()
    ));

    // alert-ingest: ingestion configured (Graph and fraudEvents polled through the broker),
    // then ListAlerts while the polls store what ms-sim holds.
    let mut ingest = alerts::alert_service_client::AlertServiceClient::new(
        connect(addr("alert-ingest")?, admin).await?,
    );
    ingest
        .configure_ingestion(alerts::ConfigureIngestionRequest {
            partner_tenant_id: tenant.clone(),
            settings: Some(alerts::IngestionSettings {
                graph_enabled: true,
                fraud_events_enabled: true,
                poll_interval_seconds: 60,
                webhook_url: String::new(),
            }),
        })
        .await?;
    let (ok, failed) = hammer(duration, 16, {
        let (ingest, tenant) = (ingest.clone(), tenant.clone());
        move || {
            let (mut ingest, tenant) = (ingest.clone(), tenant.clone());
            async move {
                ingest
                    .list_alerts(alerts::ListAlertsRequest {
                        partner_tenant_id: tenant,
                        page_size: 100,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
            }
        }
    })
    .await;
    let stored = ingest
        .list_alerts(alerts::ListAlertsRequest {
            partner_tenant_id: tenant.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().alerts.len())
        .unwrap_or(0);
    notes.push(format!(
        "polling configured ({stored} alerts stored), {ok} ListAlerts ({failed} failed) from 16 callers"
    ));

    // notifier: events published to its topics, as the producers' outbox relays do.
    let queue = palisade_queue::connect(&palisade_queue::QueueSettings {
        backend: palisade_queue::Backend::Redis,
        redis_url: Some(SecretString::from(redis_url.to_owned())),
        key_prefix: prefix.to_owned(),
        allow_unsafe_eviction_policy: true,
        ..Default::default()
    })
    .await?;
    let events = 2_000;
    for n in 0..events {
        let alert = alerts::Alert {
            alert_id: format!("bench-{n}"),
            partner_tenant_id: tenant.clone(),
            fingerprint: format!("bench-{n}"),
            alert_type: "CryptoMining".into(),
            display_name: format!("bench alert {n}"),
            ..Default::default()
        };
        let envelope = palisade_queue::envelope(
            "alert.raised",
            &tenant,
            &palisade_contracts::events::v1::AlertRaised { alert: Some(alert) },
        );
        queue.publish("alerts", &envelope).await?;
    }
    let mut notifier = notify::notification_service_client::NotificationServiceClient::new(
        connect(addr("notifier")?, admin).await?,
    );
    let (ok, failed) = hammer(duration, 16, {
        let tenant = tenant.clone();
        let notifier = notifier.clone();
        move || {
            let (mut notifier, tenant) = (notifier.clone(), tenant.clone());
            async move {
                notifier
                    .list_deliveries(notify::ListDeliveriesRequest {
                        partner_tenant_id: tenant,
                        page_size: 100,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
            }
        }
    })
    .await;
    let _ = notifier
        .get_security_contact_status(notify::GetSecurityContactStatusRequest {
            partner_tenant_id: tenant.clone(),
        })
        .await;
    notes.push(format!(
        "{events} alert.raised events published to its topic, {ok} ListDeliveries ({failed} failed)"
    ));

    // compliance: one evaluation of the partner's customers (Graph, Partner Center and the
    // peers), then status reads.
    let mut co = compliance::compliance_service_client::ComplianceServiceClient::new(
        connect(addr("compliance")?, admin).await?,
    );
    let customers = partner.customer_count;
    let evaluated = match co
        .evaluate_now(compliance::EvaluateNowRequest {
            partner_tenant_id: tenant.clone(),
        })
        .await
    {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            let mut last = None;
            while let Ok(Some(progress)) = stream.message().await {
                last = Some(progress);
            }
            last.and_then(|p| p.status).is_some()
        }
        Err(_) => false,
    };
    let (ok, failed) = hammer(duration, 16, {
        let (co, tenant) = (co.clone(), tenant.clone());
        move || {
            let (mut co, tenant) = (co.clone(), tenant.clone());
            async move {
                co.get_compliance_status(compliance::GetComplianceStatusRequest {
                    partner_tenant_id: tenant,
                })
                .await
                .is_ok()
            }
        }
    })
    .await;
    notes.push(format!(
        "an evaluation of {customers} customers ({}), {ok} GetComplianceStatus ({failed} failed)",
        if evaluated { "completed" } else { "FAILED" }
    ));
    Ok(notes)
}
