//! `make chaos`: Palisade as real processes under load, with its processes killed.
//!
//! The harness starts its own Postgres cluster and Redis server (AOF on) on free ports, ms-sim
//! and the four services from their built binaries, seeds the simulated partners through the
//! services' gRPC APIs, and runs a webhook receiver standing in for the partner's SOC. Then
//! ms-sim raises alerts (each firing its signed Partner Center webhook at alert-ingest) while a
//! seeded schedule SIGKILLs each service, kills and restarts Redis, and crash-stops and
//! restarts Postgres. After a quiet period it checks the outcomes (see [`verify`]).
//!
//! It must never touch the shared servers other tests use: everything it starts lives in its
//! own work directory, on its own ports, and is stopped at the end.

pub mod infra;
pub mod procs;
pub mod receiver;
pub mod seed;
pub mod verify;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::Engine;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::{infra::free_port, procs::Process};

/// The four services, by binary name.
pub const SERVICES: [&str; 4] = ["token-broker", "alert-ingest", "notifier", "compliance"];

/// One run's shape.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seeds the fault schedule (and ms-sim's world); printed so a failing run can be replayed.
    pub seed: u64,
    pub partners: usize,
    pub customers: usize,
    /// Alerts ms-sim raises, spread evenly over `load_for`.
    pub alerts: usize,
    pub load_for: Duration,
    /// The gap between two faults, drawn uniformly from this range.
    pub fault_gap: (Duration, Duration),
    /// How long the services may take to drain after the load and the faults stop.
    pub drain_timeout: Duration,
    /// Where the service and ms-sim binaries are.
    pub bin_dir: PathBuf,
    /// Keep the work directory (logs, data) instead of deleting it.
    pub keep: bool,
}

impl Options {
    /// `make chaos`: thousands of alerts, a few minutes.
    pub fn full(bin_dir: PathBuf) -> Self {
        Self {
            seed: rand::random::<u32>().into(),
            partners: 3,
            customers: 20,
            alerts: 3000,
            load_for: Duration::from_secs(180),
            fault_gap: (Duration::from_secs(4), Duration::from_secs(12)),
            drain_timeout: Duration::from_secs(240),
            bin_dir,
            keep: false,
        }
    }

    /// What CI runs: a few hundred alerts, every kind of fault at least once.
    pub fn short(bin_dir: PathBuf) -> Self {
        Self {
            seed: rand::random::<u32>().into(),
            partners: 2,
            customers: 10,
            alerts: 240,
            load_for: Duration::from_secs(30),
            fault_gap: (Duration::from_secs(2), Duration::from_secs(4)),
            drain_timeout: Duration::from_secs(90),
            bin_dir,
            keep: false,
        }
    }
}

/// What a run did and found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub faults: Vec<String>,
    /// Per process: starts, SIGKILLs by the chaos, and exits nobody asked for.
    pub processes: Vec<(String, u32, u32, Vec<String>)>,
    pub findings: verify::Findings,
    pub violations: Vec<String>,
    pub load_seconds: f64,
    pub drain_seconds: f64,
    pub work_dir: Option<PathBuf>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The human report.
    pub fn render(&self) -> String {
        let f = &self.findings;
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!("palisade-chaos report (seed {})", self.seed));
        line(format!(
            "  load {:.0} s, drained in {:.0} s after it, {} faults:",
            self.load_seconds,
            self.drain_seconds,
            self.faults.len()
        ));
        for fault in &self.faults {
            line(format!("    {fault}"));
        }
        line("  processes (starts / chaos kills / exits nobody asked for):".into());
        for (name, starts, kills, exits) in &self.processes {
            line(format!(
                "    {name:<14} {starts:>3} / {kills:>3} / {:>3}",
                exits.len()
            ));
            // The status, then the end of the log, where the reason is.
            for exit in exits.iter().take(3) {
                let lines: Vec<&str> = exit.lines().collect();
                line(format!("        {}", lines.first().unwrap_or(&"")));
                for l in &lines[lines.len().saturating_sub(3).max(1)..] {
                    line(format!(
                        "        {}",
                        l.chars().take(300).collect::<String>()
                    ));
                }
            }
        }
        line(format!(
            "  alerts: {} raised, {} stored exactly once, {} missing, {} extra rows ({} rows in all)",
            f.alerts_raised,
            f.alerts_stored_once,
            f.alerts_missing.len(),
            f.alerts_extra_rows,
            f.alert_rows
        ));
        line(format!(
            "  Partner Center webhooks to alert-ingest: {} fired, {} accepted, {} needed retries, {} given up (polling covers those)",
            f.pc_webhooks, f.pc_webhooks_delivered, f.pc_webhooks_retried, f.pc_webhooks_given_up
        ));
        line(format!(
            "  notifications: {} of {} stored alerts delivered; {} POSTs, {} webhook-ids, {} repeats (same id), {} id conflicts, {} duplicates under new ids",
            f.alerts_notified,
            f.alerts_stored_once,
            f.webhooks_received,
            f.webhook_ids,
            f.webhook_repeats,
            f.webhook_id_conflicts.len(),
            f.duplicate_bodies_under_new_ids
        ));
        line(format!(
            "  tokens: {} forced refreshes during the chaos ({} failed while a process was down or ms-sim damaged the answer); {} partner refresh grants at ms-sim, {} refused; forced mint after: {}",
            f.forced_refreshes_during_chaos.0 + f.forced_refreshes_during_chaos.1,
            f.forced_refreshes_during_chaos.1,
            f.refresh_grants,
            f.refresh_grants_refused,
            f.token_mints
                .values()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for (error, n) in &f.forced_refresh_errors {
            line(format!("    {n} x {error}"));
        }
        for (consent, state) in &f.consents {
            line(format!("    consent {consent}: {state}"));
        }
        let pending: u64 = f.pending.values().sum();
        let dead: u64 = f.dead_letters.values().sum();
        line(format!(
            "  queues: {} consumer groups, {pending} pending, {dead} dead letters; outbox rows left: {}",
            f.pending.len(),
            f.outbox_rows.values().sum::<i64>()
        ));
        if self.violations.is_empty() {
            line("  PASSED: every promise held".into());
        } else {
            line(format!("  FAILED: {} violations", self.violations.len()));
            for v in &self.violations {
                line(format!("    - {v}"));
            }
        }
        if let Some(dir) = &self.work_dir {
            line(format!("  logs and data kept in {}", dir.display()));
        }
        out
    }
}

/// The directory of the running executable's build profile (`target/debug`), where cargo puts
/// the service binaries next to this one. Test binaries live one level deeper, in `deps/`.
pub fn default_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable without a directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps without a parent")?;
    }
    Ok(dir.to_path_buf())
}

fn binary(bin_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it first (`cargo build -p {} --bin {name}`, or `make chaos`)",
            path.display(),
            if name == "ms-sim" {
                "ms-sim".to_owned()
            } else {
                name.to_owned()
            }
        );
    }
    Ok(path)
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(&'static str),
    Redis,
    Postgres,
    /// A service killed and started again while Postgres is down: does it wait or exit?
    KillWhilePostgresDown(&'static str),
    /// The same while Redis is down.
    KillWhileRedisDown(&'static str),
}

/// Runs the whole thing and reports; an `Err` means the harness itself could not run.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let work = std::env::temp_dir().join(format!(
        "palisade-chaos-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&work)?;
    // Postgres runs as its own user when we are root; it must reach its directory.
    set_mode(&work, 0o755)?;
    let mut result = run_in(&options, &work).await;
    match &mut result {
        Ok(report) if report.passed() && !options.keep => {
            let _ = std::fs::remove_dir_all(&work);
        }
        Ok(report) => report.work_dir = Some(work),
        Err(_) => eprintln!("palisade-chaos: logs and data kept in {}", work.display()),
    }
    result
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> anyhow::Result<()> {
    Ok(())
}

async fn run_in(options: &Options, work: &Path) -> anyhow::Result<Report> {
    let seed = options.seed;
    eprintln!(
        "palisade-chaos: seed {seed}, {} alerts over {} s, work dir {}",
        options.alerts,
        options.load_for.as_secs(),
        work.display()
    );
    let bins: Vec<PathBuf> = ["ms-sim"]
        .iter()
        .chain(SERVICES.iter())
        .map(|name| {
            let file = if *name == "ms-sim" {
                "ms-sim".to_owned()
            } else {
                format!("palisade-{name}")
            };
            binary(&options.bin_dir, &file)
        })
        .collect::<anyhow::Result<_>>()?;

    // Our own servers.
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let postgres = infra::Postgres::create(work).await?;
    let mut redis = infra::Redis::create(work).await?;
    {
        let admin_db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&postgres.url("postgres"))
            .await?;
        sqlx::query("CREATE DATABASE palisade")
            .execute(&admin_db)
            .await?;
        admin_db.close().await;
    }
    let database_url = postgres.url("palisade");
    let redis_url = redis.url();

    let stop = CancellationToken::new();
    let fleet = procs::Fleet::default();
    let supervisor = fleet.supervise(stop.clone());
    let outcome = drive(
        options,
        work,
        &logs,
        &bins,
        &fleet,
        &postgres,
        &mut redis,
        &database_url,
        &redis_url,
        &stop,
    )
    .await;
    stop.cancel();
    let _ = supervisor.await;
    fleet.stop_all().await;
    let _ = redis.kill().await;
    let _ = postgres.stop_immediate().await;
    let (faults, findings, load_seconds, drain_seconds) = outcome?;
    let processes: Vec<(String, u32, u32, Vec<String>)> = fleet
        .processes
        .lock()
        .await
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.starts,
                p.kills,
                p.unexpected_exits.clone(),
            )
        })
        .collect();
    let mut violations = findings.violations();
    // A service should wait for what it depends on, not exit: Kubernetes would restart it,
    // but a crash loop delays recovery and hides the cause.
    for (name, _, _, exits) in &processes {
        if let Some(first) = exits.first() {
            violations.push(format!(
                "{name} exited by itself {} times (first: {})",
                exits.len(),
                first.lines().next().unwrap_or_default()
            ));
        }
    }
    Ok(Report {
        seed,
        faults,
        processes,
        violations,
        findings,
        load_seconds,
        drain_seconds,
        work_dir: None,
    })
}

type Outcome = (Vec<String>, verify::Findings, f64, f64);

#[allow(clippy::too_many_arguments)]
async fn drive(
    options: &Options,
    work: &Path,
    logs: &Path,
    bins: &[PathBuf],
    fleet: &procs::Fleet,
    postgres: &infra::Postgres,
    redis: &mut infra::Redis,
    database_url: &str,
    redis_url: &str,
    stop: &CancellationToken,
) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    // Microsoft, simulated, as its own process.
    let sim_base = infra::free_ports(ms_sim::Ports::COUNT)?[0];
    let control_url = format!("http://127.0.0.1:{sim_base}");
    let scenario_config = ms_sim::ScenarioConfig {
        partners: options.partners,
        customers_per_partner: options.customers,
        alerts_per_partner: 0,
    };
    fleet
        .add(Process::new(
            "ms-sim",
            bins[0].clone(),
            [
                "--seed",
                &options.seed.to_string(),
                "--base-port",
                &sim_base.to_string(),
                "--partners",
                &options.partners.to_string(),
                "--customers",
                &options.customers.to_string(),
                "--alerts",
                "0",
                // The load would otherwise wait on Partner Center's 500 calls/min per partner.
                "--no-throttles",
                "--webhook-retry-ms",
                "500",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            vec![("RUST_LOG".into(), "warn".into())],
            logs,
        ))
        .await?;
    let mut sim_up = false;
    for _ in 0..300 {
        if http
            .get(format!("{control_url}/_sim/scenario"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            sim_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !sim_up {
        bail!("ms-sim did not answer on {control_url}");
    }
    let scenario = ms_sim::Scenario::generate(options.seed, &scenario_config);
    let partners: Vec<String> = scenario
        .partners
        .iter()
        .map(|p| p.tenant_id.clone())
        .collect();
    let root_ca = http
        .get(format!("{control_url}/_sim/webhooks/root-ca.pem"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let root_ca_file = work.join("webhook-root-ca.pem");
    std::fs::write(&root_ca_file, root_ca)?;
    let sim_url = |offset: u16| format!("http://127.0.0.1:{}", sim_base + offset);

    // The receiver of the notifier's webhooks.
    let receiver = receiver::Receiver::default();
    let receiver_addr = receiver.serve(free_port()?, stop.clone()).await?;

    // Credentials and keys, as a deployment's secrets would provide them.
    let admin = SecretString::from(palisade_auth::generate_secret().1);
    let ingest_credential = palisade_auth::generate_secret().1;
    let compliance_credential = palisade_auth::generate_secret().1;
    let kek = format!(
        "v1:{}",
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    );
    let link_key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());

    let grpc_ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<Result<_, _>>()?;
    let grpc = |i: usize| format!("http://127.0.0.1:{}", grpc_ports[i]);
    let ingest_webhook_port = free_port()?;
    let ack_port = free_port()?;
    for (i, name) in SERVICES.iter().enumerate() {
        let prefix = format!("PALISADE_{}__", name.to_ascii_uppercase().replace('-', "_"));
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), database_url.to_owned()),
            ("REDIS_URL".into(), redis_url.to_owned()),
            ("RUST_LOG".into(), "warn,palisade=info".into()),
            (
                format!("{prefix}SERVER__GRPC_LISTEN"),
                format!("127.0.0.1:{}", grpc_ports[i]),
            ),
            (
                format!("{prefix}SERVER__ADMIN_LISTEN"),
                format!("127.0.0.1:{}", free_port()?),
            ),
            // A killed consumer's messages go back to the group after this; production keeps
            // the default (45 s), the run compresses time.
            (format!("{prefix}QUEUE__VISIBILITY_TIMEOUT"), "10s".into()),
        ];
        let mut set = |key: &str, value: String| env.push((format!("{prefix}{key}"), value));
        match *name {
            "token-broker" => {
                set(
                    "AUTH__BOOTSTRAP_ADMIN_SECRET",
                    admin.expose_secret().to_owned(),
                );
                set("KEK__KEYS", kek.clone());
                set("ENTRA__PUBLIC_LOGIN_URL", format!("{}/", sim_url(1)));
            }
            "alert-ingest" => {
                set("AUTH__SERVICE_CREDENTIAL", ingest_credential.clone());
                set("TOKEN_BROKER__URL", grpc(0));
                set("MICROSOFT__GRAPH_URL", sim_url(3));
                set("MICROSOFT__PARTNER_CENTER_URL", sim_url(2));
                set(
                    "WEBHOOK__LISTEN",
                    format!("127.0.0.1:{ingest_webhook_port}"),
                );
                set(
                    "WEBHOOK__TRUST_ANCHOR_FILES",
                    root_ca_file.display().to_string(),
                );
                set("WEBHOOK__ALLOWED_CERTIFICATE_HOSTS", "127.0.0.1".into());
                // ms-sim serves its certificate over plain HTTP; Microsoft's is HTTPS.
                set("WEBHOOK__ALLOW_HTTP_CERTIFICATE_URLS", "true".into());
            }
            "notifier" => {
                set("KEK__KEYS", kek.clone());
                set("ACK_LISTEN", format!("127.0.0.1:{ack_port}"));
                set("ENGINE__PUBLIC_URL", format!("http://127.0.0.1:{ack_port}"));
                set("ENGINE__LINK_SIGNING_KEY", link_key.clone());
                // A killed sender's leased deliveries are taken over after this.
                set("ENGINE__LEASE", "10s".into());
                // The receiver is the harness, on loopback.
                set("CHANNELS__SSRF__ALLOW_LOOPBACK", "true".into());
            }
            "compliance" => {
                set("AUTH__SERVICE_CREDENTIAL", compliance_credential.clone());
                set("PEERS__TOKEN_BROKER", grpc(0));
                set("PEERS__ALERT_INGEST", grpc(1));
                set("PEERS__NOTIFIER", grpc(2));
                set("MICROSOFT__GRAPH_URL", sim_url(3));
                set("MICROSOFT__PARTNER_CENTER_URL", sim_url(2));
            }
            _ => unreachable!("the four services"),
        }
        fleet
            .add(Process::new(
                name,
                bins[i + 1].clone(),
                vec!["serve".into()],
                env,
                logs,
            ))
            .await?;
    }

    // Seed every partner once the services answer (they migrate first).
    let addresses = seed::Addresses {
        token_broker: grpc(0),
        alert_ingest: grpc(1),
        notifier: grpc(2),
        ingest_webhooks: format!("http://127.0.0.1:{ingest_webhook_port}"),
        chaos_receiver: format!("http://{receiver_addr}"),
    };
    let seeding = Instant::now();
    for partner in &scenario.partners {
        loop {
            match seed::partner(partner, &addresses, &admin, 10).await {
                Ok(()) => break,
                Err(e) if seeding.elapsed() < Duration::from_secs(180) => {
                    tracing::debug!(error = %format!("{e:#}"), "seeding waits for the services");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.context("seeding a partner")),
            }
        }
    }
    eprintln!(
        "palisade-chaos: {} partners seeded in {:.1} s; load and faults start",
        partners.len(),
        seeding.elapsed().as_secs_f64()
    );

    // The load: ms-sim raises alerts at an even pace, round-robin over partners, customers
    // and alert types, so no two share a fingerprint.
    let raised = Arc::new(Mutex::new(BTreeSet::new()));
    let load = {
        let raised = Arc::clone(&raised);
        let http = http.clone();
        let control_url = control_url.clone();
        let scenario = scenario.clone();
        let options = options.clone();
        tokio::spawn(async move {
            let gap = options.load_for.div_f64(options.alerts.max(1) as f64);
            let start = tokio::time::Instant::now();
            for i in 0..options.alerts {
                tokio::time::sleep_until(start + gap.mul_f64(i as f64)).await;
                let partner = &scenario.partners[i % scenario.partners.len()];
                let n = i / scenario.partners.len();
                let customer = partner.customer(n % options.customers).map(|c| c.tenant_id);
                let types = ms_sim::ALERT_TYPES;
                let spec = serde_json::json!({
                    "customer_tenant_id": customer,
                    "alert_type": types[(n / options.customers) % types.len()],
                    "severity": if i.is_multiple_of(2) { "medium" } else { "low" },
                });
                let answer = http
                    .post(format!(
                        "{control_url}/_sim/partners/{}/alerts",
                        partner.tenant_id
                    ))
                    .json(&spec)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status);
                match answer {
                    Ok(r) => {
                        if let Ok(body) = r.json::<serde_json::Value>().await
                            && let Some(id) = body["id"].as_str()
                        {
                            raised
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(id.to_owned());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ms-sim refused to raise an alert"),
                }
            }
        })
    };

    // The faults: every kind once in a shuffled order, then random ones, until the load ends.
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut plan: Vec<Fault> = SERVICES
        .iter()
        .map(|s| Fault::Kill(s))
        .chain([
            Fault::Redis,
            Fault::Postgres,
            Fault::KillWhilePostgresDown(SERVICES[rng.gen_range(0..SERVICES.len())]),
            Fault::KillWhileRedisDown(SERVICES[rng.gen_range(0..SERVICES.len())]),
        ])
        .collect();
    plan.shuffle(&mut rng);
    // Microsoft misbehaves too: some token answers arrive cut in half after the refresh token
    // rotated (the client never sees the new one), some Graph and Partner Center calls fail.
    for fault in [
        serde_json::json!({"host": "login", "path_contains": "token", "kind": {"type": "truncate"}, "fraction": 0.1}),
        serde_json::json!({"host": "graph", "path_contains": "securityAlerts", "kind": {"type": "status", "status": 503}, "fraction": 0.05}),
        serde_json::json!({"host": "partner_center", "path_contains": "fraudEvents", "kind": {"type": "reset"}, "fraction": 0.05}),
    ] {
        http.post(format!("{control_url}/_sim/faults"))
            .json(&fault)
            .send()
            .await?
            .error_for_status()?;
    }
    // Token pressure: forced refreshes, as many replicas asking at once would cause, so that
    // the broker's SIGKILLs and Postgres's crashes land in the middle of rotations.
    let refreshes = Arc::new(Mutex::new((0_usize, 0_usize)));
    let refresh_errors = Arc::new(Mutex::new(
        std::collections::BTreeMap::<String, usize>::new(),
    ));
    let token_load = {
        let refreshes = Arc::clone(&refreshes);
        let refresh_errors = Arc::clone(&refresh_errors);
        let partners = partners.clone();
        let endpoint = tonic::transport::Endpoint::from_shared(addresses.token_broker.clone())?
            .timeout(Duration::from_secs(10));
        let admin = admin.clone();
        let stop_load = stop.child_token();
        let load_for = options.load_for;
        tokio::spawn(async move {
            use palisade_contracts::tokens::v1::{
                GetAccessTokenRequest, Resource,
                token_broker_service_client::TokenBrokerServiceClient,
            };
            let mut client = TokenBrokerServiceClient::with_interceptor(
                endpoint.connect_lazy(),
                palisade_auth::BearerInterceptor::new(Some(&admin)),
            );
            let start = Instant::now();
            let mut i = 0_usize;
            while start.elapsed() < load_for && !stop_load.is_cancelled() {
                let answer = client
                    .get_access_token(GetAccessTokenRequest {
                        partner_tenant_id: partners[i % partners.len()].clone(),
                        resource: if i.is_multiple_of(2) {
                            Resource::Graph
                        } else {
                            Resource::PartnerCenter
                        } as i32,
                        force_refresh: true,
                        ..Default::default()
                    })
                    .await;
                {
                    let mut counts = refreshes.lock().unwrap_or_else(|e| e.into_inner());
                    match &answer {
                        Ok(_) => counts.0 += 1,
                        Err(status) => {
                            counts.1 += 1;
                            *refresh_errors
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .entry(format!("{:?}: {}", status.code(), status.message()))
                                .or_default() += 1;
                        }
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let load_started = Instant::now();
    let mut faults = Vec::new();
    let mut next = 0;
    loop {
        let (lo, hi) = options.fault_gap;
        let gap = rng.gen_range(lo..=hi);
        tokio::time::sleep(gap).await;
        if load_started.elapsed() >= options.load_for && next >= plan.len() {
            break;
        }
        let fault = match plan.get(next) {
            Some(f) => *f,
            None => match rng.gen_range(0..10) {
                0 => Fault::Redis,
                1 => Fault::Postgres,
                2 => Fault::KillWhilePostgresDown(SERVICES[rng.gen_range(0..SERVICES.len())]),
                3 => Fault::KillWhileRedisDown(SERVICES[rng.gen_range(0..SERVICES.len())]),
                n => Fault::Kill(SERVICES[(n - 4) % SERVICES.len()]),
            },
        };
        next += 1;
        let at = load_started.elapsed().as_secs_f64();
        let down = Duration::from_millis(rng.gen_range(200..=3000));
        let what = match fault {
            Fault::Kill(name) => {
                let pid = fleet.kill(name, down).await?;
                format!(
                    "SIGKILL {name} (pid {}), back after {} ms",
                    pid.map_or("-".into(), |p| p.to_string()),
                    down.as_millis()
                )
            }
            Fault::Redis => {
                redis.kill().await?;
                tokio::time::sleep(down).await;
                redis.start().await?;
                format!(
                    "SIGKILL redis-server, restarted from its AOF after {} ms",
                    down.as_millis()
                )
            }
            Fault::Postgres => {
                postgres.stop_immediate().await?;
                tokio::time::sleep(down).await;
                postgres.start().await?;
                format!(
                    "pg_ctl -m immediate stop, started again after {} ms",
                    down.as_millis()
                )
            }
            Fault::KillWhilePostgresDown(name) => {
                postgres.stop_immediate().await?;
                let pid = fleet.kill(name, Duration::ZERO).await?;
                // Long enough for the new process to reach its database and find it gone.
                let outage = down + Duration::from_secs(2);
                tokio::time::sleep(outage).await;
                postgres.start().await?;
                format!(
                    "pg_ctl -m immediate stop, SIGKILL {name} (pid {}) and start it at once, Postgres back after {} ms",
                    pid.map_or("-".into(), |p| p.to_string()),
                    outage.as_millis()
                )
            }
            Fault::KillWhileRedisDown(name) => {
                redis.kill().await?;
                let pid = fleet.kill(name, Duration::ZERO).await?;
                let outage = down + Duration::from_secs(2);
                tokio::time::sleep(outage).await;
                redis.start().await?;
                format!(
                    "SIGKILL redis-server, SIGKILL {name} (pid {}) and start it at once, Redis back after {} ms",
                    pid.map_or("-".into(), |p| p.to_string()),
                    outage.as_millis()
                )
            }
        };
        eprintln!("palisade-chaos: {at:>6.1} s  {what}");
        faults.push(format!("{at:>6.1} s  {what}"));
    }
    load.await.context("the load task")?;
    token_load.await.context("the token load task")?;
    http.delete(format!("{control_url}/_sim/faults"))
        .send()
        .await?
        .error_for_status()?;
    let (refreshed, refresh_failed) = *refreshes.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "palisade-chaos: forced refreshes during the chaos: {refreshed} minted, {refresh_failed} failed (a process down, or a damaged answer from ms-sim)"
    );
    let load_seconds = load_started.elapsed().as_secs_f64();
    eprintln!("palisade-chaos: load and faults done after {load_seconds:.0} s; draining");

    // The quiet period: poll the outcomes until everything arrived and nothing is pending,
    // or the drain timeout passes.
    let raised: BTreeSet<String> = raised.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let drain_started = Instant::now();
    let mut findings;
    loop {
        let received = receiver.snapshot();
        let sources = verify::Sources {
            http: &http,
            control_url: &control_url,
            partners: &partners,
            raised: &raised,
            database_url,
            redis_url,
            received: &received,
        };
        findings = verify::observe(&sources).await;
        let done = findings.as_ref().is_ok_and(verify::Findings::drained);
        if done || drain_started.elapsed() >= options.drain_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    let mut findings = findings?;
    findings.forced_refreshes_during_chaos = (refreshed, refresh_failed);
    findings.forced_refresh_errors = refresh_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    verify::tokens(
        &mut findings,
        &http,
        &control_url,
        &addresses.token_broker,
        &admin,
        &partners,
    )
    .await?;
    Ok((faults, findings, load_seconds, drain_seconds))
}
