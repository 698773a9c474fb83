//! `palisade dev`: Palisade in one process on embedded defaults, for a laptop.
//!
//! SQLite files and a local encryption key under `.palisade/`, the in-process queue, ms-sim as
//! Microsoft, and every service on its own fixed loopback port. With `DATABASE_URL` /
//! `REDIS_URL` set it uses those instead. An admin credential is minted on first start and kept
//! in `.palisade/admin-credential` (mode 0600) so the CLI can use it. The demo world is seeded
//! through the services' own APIs (see `demo`), then runs live.

pub mod demo;
pub mod provision;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use palisade_auth::{AuthStore, NewCredential, Scope, bootstrap_admin};
use palisade_storage::DatabaseSettings;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where the SQLite files, the key and the notification sinks live.
    #[arg(long, default_value = ".palisade")]
    pub data_dir: PathBuf,
    /// Bind address for every port.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// Stop after this many seconds (for tests); runs until Ctrl-C when omitted.
    #[arg(long)]
    pub exit_after: Option<u64>,
    /// ms-sim's control API on this port, and its simulated hosts on the next six.
    #[arg(long, default_value_t = ports::SIM_BASE)]
    pub sim_base_port: u16,
    /// How often ms-sim raises a new alert (and fires its webhook); 0 turns it off.
    #[arg(long, default_value_t = 45)]
    pub alert_every: u64,
}

/// The fixed local ports, so the CLI's defaults find everything.
pub mod ports {
    pub const TOKEN_BROKER: u16 = 50051;
    pub const ALERT_INGEST: u16 = 50052;
    pub const NOTIFIER: u16 = 50053;
    pub const COMPLIANCE: u16 = 50054;
    pub const NOTIFIER_LINKS: u16 = 8081;
    /// alert-ingest's Partner Center webhook receiver.
    pub const WEBHOOKS: u16 = 8088;
    /// ms-sim: control, then Entra ID, Partner Center, Graph, Key Vault, certificates, Vault transit.
    pub const SIM_BASE: u16 = 7000;
    /// Admin HTTP (`/metrics`, `/healthz`, `/readyz`): 9101 token-broker, 9102 alert-ingest,
    /// 9103 notifier, 9104 compliance.
    pub const ADMIN_BASE: u16 = 9100;
}

fn database_settings(data_dir: &std::path::Path) -> DatabaseSettings {
    match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => DatabaseSettings {
            url: SecretString::from(url),
            ..DatabaseSettings::default()
        },
        None => DatabaseSettings {
            url: SecretString::from(format!("sqlite://{}/palisade.db", data_dir.display())),
            ..DatabaseSettings::default()
        },
    }
}

/// The in-process queue (shared by the four services in this process), or Redis Streams when
/// `REDIS_URL` is set.
fn queue_settings() -> palisade_queue::QueueSettings {
    match std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => palisade_queue::QueueSettings {
            backend: palisade_queue::Backend::Redis,
            redis_url: Some(SecretString::from(url)),
            ..Default::default()
        },
        None => palisade_queue::QueueSettings::default(),
    }
}

/// A credential for a service calling its peers, minted fresh on every start (the previous
/// run's stay valid but unused).
async fn service_credential(
    store: &AuthStore,
    name: &str,
    scopes: Vec<Scope>,
) -> anyhow::Result<SecretString> {
    let (id, secret, hash) = palisade_auth::generate_secret();
    store
        .insert(
            &id,
            &hash,
            &NewCredential {
                display_name: format!("palisade dev: {name}"),
                service: true,
                all_partners: true,
                partners: Vec::new(),
                scopes,
                expires_at: None,
            },
        )
        .await?;
    Ok(SecretString::from(secret))
}

/// The admin credential of this data directory, minted on first use.
async fn admin_credential(store: &AuthStore, data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin-credential");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        if let Some((id, _)) = palisade_auth::parse_secret(&existing)
            && store
                .get(&id)
                .await?
                .is_some_and(|r| r.revoked_at.is_none())
        {
            return Ok(existing);
        }
    }
    let secret = bootstrap_admin(store, "palisade dev admin").await?;
    write_private(&path, &secret)?;
    Ok(secret)
}

fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let _ = std::fs::remove_file(path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(contents.as_bytes())?;
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, contents)?;
        Ok(())
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let _telemetry = palisade_telemetry::init(
        "dev",
        &palisade_telemetry::TelemetrySettings {
            log_format: palisade_telemetry::LogFormat::Pretty,
            log_filter: "warn,palisade=info".into(),
            ..Default::default()
        },
    )?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let database = database_settings(&data_dir);
    let queue = queue_settings();
    let shutdown = CancellationToken::new();

    // The platform: the credential registry every service checks callers against.
    let store = AuthStore::open(&database)
        .await
        .context("opening the credential registry")?;
    admin_credential(&store, &data_dir).await?;

    // Microsoft, simulated, on fixed ports.
    let sim = demo::start_sim(args.bind, args.sim_base_port).await?;
    let grpc = |port: u16| format!("http://{}:{port}", args.bind);
    let server = |grpc_port: u16, admin_port: u16| palisade_server::ServerSettings {
        grpc_listen: SocketAddr::new(args.bind, grpc_port),
        admin_listen: SocketAddr::new(args.bind, admin_port),
        shutdown_deadline: Duration::from_secs(5),
        ..Default::default()
    };
    let kek_file = data_dir.join("local-kek");
    let mut tasks = Vec::new();

    // token-broker: Entra ID is ms-sim's login host.
    let mut broker = palisade_token_broker::Settings {
        server: server(ports::TOKEN_BROKER, ports::ADMIN_BASE + 1),
        database: database.clone(),
        queue: queue.clone(),
        ..Default::default()
    };
    broker.kek.key_file = Some(kek_file.clone());
    broker.entra.public_login_url = sim.login_url().to_string();
    let listeners = palisade_server::Listeners::bind(&broker.server)
        .await
        .context("is another `palisade dev` running?")?;
    tasks.push(tokio::spawn(palisade_token_broker::run(
        broker,
        listeners,
        shutdown.clone(),
    )));

    // alert-ingest: polls ms-sim's Graph and Partner Center, receives its signed webhooks.
    let mut ingest = palisade_alert_ingest::Settings {
        server: server(ports::ALERT_INGEST, ports::ADMIN_BASE + 2),
        database: database.clone(),
        queue: queue.clone(),
        ..Default::default()
    };
    ingest.auth.service_credential =
        Some(service_credential(&store, "alert-ingest", vec![Scope::TokensIssue]).await?);
    ingest.token_broker.url = grpc(ports::TOKEN_BROKER);
    ingest.microsoft.graph_url = sim.graph_url().to_string();
    ingest.microsoft.partner_center_url = sim.partner_center_url().to_string();
    ingest.webhook.listen = Some(SocketAddr::new(args.bind, ports::WEBHOOKS));
    ingest.webhook.trust_anchors_pem = vec![sim.webhook_root_ca_pem()];
    ingest.webhook.allowed_certificate_hosts = vec![
        sim.certificate_url()
            .host_str()
            .unwrap_or("127.0.0.1")
            .to_owned(),
    ];
    // ms-sim serves its certificate over plain HTTP on loopback; Microsoft uses HTTPS.
    ingest.webhook.allow_http_certificate_urls = true;
    let listeners = palisade_server::Listeners::bind(&ingest.server)
        .await
        .context("is another `palisade dev` running?")?;
    tasks.push(tokio::spawn(palisade_alert_ingest::run(
        ingest,
        listeners,
        shutdown.clone(),
    )));

    // compliance: reads ms-sim and asks its peers.
    let mut compliance = palisade_compliance::Settings {
        server: server(ports::COMPLIANCE, ports::ADMIN_BASE + 4),
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
        .await?,
    );
    compliance.peers.token_broker = grpc(ports::TOKEN_BROKER);
    compliance.peers.notifier = grpc(ports::NOTIFIER);
    compliance.peers.alert_ingest = grpc(ports::ALERT_INGEST);
    compliance.microsoft.graph_url = sim.graph_url().to_string();
    compliance.microsoft.partner_center_url = sim.partner_center_url().to_string();
    let listeners = palisade_server::Listeners::bind(&compliance.server)
        .await
        .context("is another `palisade dev` running?")?;
    tasks.push(tokio::spawn(palisade_compliance::run(
        compliance,
        listeners,
        shutdown.clone(),
    )));

    // The notifier, with notifications written to files a person can open.
    let sink_dir = data_dir.join("notifications");
    let mut notifier = palisade_notifier::Settings {
        server: server(ports::NOTIFIER, ports::ADMIN_BASE + 3),
        database: database.clone(),
        queue,
        ack_listen: Some(SocketAddr::new(args.bind, ports::NOTIFIER_LINKS)),
        ..Default::default()
    };
    notifier.kek.key_file = Some(kek_file);
    notifier.channels.sink = palisade_notifier::channels::SinkMode::File;
    notifier.channels.sink_dir = sink_dir.clone();
    notifier.engine.public_url = format!("http://{}:{}", args.bind, ports::NOTIFIER_LINKS);
    let listeners = palisade_server::Listeners::bind(&notifier.server)
        .await
        .context("is another `palisade dev` running?")?;
    tasks.push(tokio::spawn(palisade_notifier::run(
        notifier,
        listeners,
        shutdown.clone(),
    )));

    // The demo partner, configured through the services' APIs once they answer.
    let admin = SecretString::from(admin_credential(&store, &data_dir).await?);
    let addresses = demo::Addresses {
        token_broker: grpc(ports::TOKEN_BROKER),
        alert_ingest: grpc(ports::ALERT_INGEST),
        notifier: grpc(ports::NOTIFIER),
        webhook_receiver: format!("http://{}:{}", args.bind, ports::WEBHOOKS),
    };
    let mut attempt = 0;
    loop {
        match demo::seed(&sim, &addresses, &admin).await {
            Ok(()) => break,
            // The services start in the background (migrations first); on a loaded machine
            // that can take a while, so wait up to two minutes before giving up.
            Err(e) if attempt < 480 => {
                tracing::debug!(error = %format!("{e:#}"), "the demo seed waits for the services");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.context("seeding the demo partner")),
        }
    }
    let partner = sim.scenario().partners[0].tenant_id.clone();
    if args.alert_every > 0 {
        tokio::spawn(demo::live(
            sim.control(),
            sim.scenario().partners[0].clone(),
            Duration::from_secs(args.alert_every),
            shutdown.clone(),
        ));
    }
    print_banner(&args, &data_dir, &sink_dir, &partner, &sim);

    wait(&args).await;
    shutdown.cancel();
    for task in tasks {
        task.await.context("service task")??;
    }
    sim.shutdown().await;
    Ok(())
}

/// Until Ctrl-C (or `--exit-after`).
async fn wait(args: &DevArgs) {
    let stop = palisade_server::shutdown_signal();
    match args.exit_after {
        Some(seconds) => {
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
            }
        }
        None => stop.cancelled().await,
    }
    eprintln!("\nshutting down…");
}

fn print_banner(
    args: &DevArgs,
    data_dir: &std::path::Path,
    sink_dir: &std::path::Path,
    partner: &str,
    sim: &ms_sim::MsSim,
) {
    let ip = args.bind;
    println!(
        "\nPalisade is running (data in {data}).\n\n\
         gRPC\n  token-broker  http://{ip}:{tb}   (metrics http://{ip}:9101/metrics)\n\
         \x20 alert-ingest  http://{ip}:{ai}   (metrics http://{ip}:9102/metrics, Partner Center webhooks http://{ip}:{hooks})\n\
         \x20 notifier      http://{ip}:{notifier}   (metrics http://{ip}:9103/metrics, ack links http://{ip}:{links})\n\
         \x20 compliance    http://{ip}:{co}   (metrics http://{ip}:9104/metrics)\n\n\
         Microsoft is ms-sim (control API {control}, see tools/ms-sim/README.md): partner {partner}\n\
         with {customers} customers. It raises a new alert every {every} s and fires its signed webhook.\n\n\
         Notifications land in {sinks}/mail/new (.eml, in English, Japanese and French) and\n\
         {sinks}/http (.json, the webhook channel's log).\n\n\
         The admin credential is in {data}/admin-credential. Try:\n\
         \x20 export PALISADE_CREDENTIAL=$(cat {data}/admin-credential) PALISADE_PARTNER={partner}\n\
         \x20 palisade alerts list --status active\n\
         \x20 palisade alerts watch\n\
         \x20 palisade alerts resolve <alert-id> --resolution legitimate\n\
         \x20 palisade compliance evaluate && palisade compliance findings\n\
         \x20 palisade tokens health\n\n\
         Ctrl-C stops everything gracefully.",
        data = data_dir.display(),
        notifier = ports::NOTIFIER,
        links = ports::NOTIFIER_LINKS,
        hooks = ports::WEBHOOKS,
        tb = ports::TOKEN_BROKER,
        ai = ports::ALERT_INGEST,
        co = ports::COMPLIANCE,
        sinks = sink_dir.display(),
        control = sim.control_url(),
        customers = demo::CUSTOMERS,
        every = args.alert_every,
    );
}
