//! `palisade dev`: Palisade in one process on embedded defaults, for a laptop.
//!
//! SQLite files and a local encryption key under `.palisade/`, the in-process queue, and every
//! service on its own fixed loopback port. With `DATABASE_URL` / `REDIS_URL` set it uses those
//! instead. An admin credential is minted on first start and kept in
//! `.palisade/admin-credential` (mode 0600) so the CLI can use it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use palisade_auth::{AuthStore, bootstrap_admin};
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
}

/// The fixed local ports, so the CLI's defaults find everything.
pub mod ports {
    pub const TOKEN_BROKER: u16 = 50051;
    pub const ALERT_INGEST: u16 = 50052;
    pub const NOTIFIER: u16 = 50053;
    pub const COMPLIANCE: u16 = 50054;
    pub const NOTIFIER_LINKS: u16 = 8081;
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
    let shutdown = CancellationToken::new();

    // The platform: the credential registry every service checks callers against.
    let store = AuthStore::open(&database)
        .await
        .context("opening the credential registry")?;
    admin_credential(&store, &data_dir).await?;

    // The services on the platform scaffold, each with its own ports and schema.
    let mut tasks = Vec::new();
    macro_rules! start {
        ($krate:ident, $grpc:expr, $admin:expr) => {{
            let settings = $krate::Settings {
                server: palisade_server::ServerSettings {
                    grpc_listen: SocketAddr::new(args.bind, $grpc),
                    admin_listen: SocketAddr::new(args.bind, $admin),
                    shutdown_deadline: Duration::from_secs(5),
                    ..Default::default()
                },
                database: database.clone(),
                ..Default::default()
            };
            let listeners = palisade_server::Listeners::bind(&settings.server)
                .await
                .context("is another `palisade dev` running?")?;
            tasks.push(tokio::spawn($krate::run(
                settings,
                listeners,
                shutdown.clone(),
            )));
        }};
    }
    start!(
        palisade_token_broker,
        ports::TOKEN_BROKER,
        ports::ADMIN_BASE + 1
    );
    start!(
        palisade_alert_ingest,
        ports::ALERT_INGEST,
        ports::ADMIN_BASE + 2
    );
    start!(
        palisade_compliance,
        ports::COMPLIANCE,
        ports::ADMIN_BASE + 4
    );

    // The notifier, with notifications written to files a person can open.
    let sink_dir = data_dir.join("notifications");
    let mut notifier = palisade_notifier::Settings {
        server: palisade_server::ServerSettings {
            grpc_listen: SocketAddr::new(args.bind, ports::NOTIFIER),
            admin_listen: SocketAddr::new(args.bind, ports::ADMIN_BASE + 3),
            shutdown_deadline: Duration::from_secs(5),
            ..Default::default()
        },
        database: database.clone(),
        ack_listen: Some(SocketAddr::new(args.bind, ports::NOTIFIER_LINKS)),
        ..Default::default()
    };
    notifier.kek.key_file = Some(data_dir.join("local-kek"));
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

    print_banner(&args, &data_dir, &sink_dir);

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
    shutdown.cancel();
    for task in tasks {
        task.await.context("service task")??;
    }
    Ok(())
}

fn print_banner(args: &DevArgs, data_dir: &std::path::Path, sink_dir: &std::path::Path) {
    let ip = args.bind;
    println!(
        "\nPalisade is running (data in {data}).\n\n\
         gRPC\n  token-broker  http://{ip}:{tb}   (metrics http://{ip}:9101/metrics)\n\
         \x20 alert-ingest  http://{ip}:{ai}   (metrics http://{ip}:9102/metrics)\n\
         \x20 notifier      http://{ip}:{notifier}   (metrics http://{ip}:9103/metrics, ack links http://{ip}:{links})\n\
         \x20 compliance    http://{ip}:{co}   (metrics http://{ip}:9104/metrics)\n\n\
         token-broker, alert-ingest and compliance answer health and the credential API; their\n\
         own APIs, and ms-sim, land with their open issues.\n\n\
         Notifications land in {sinks}/mail/new (.eml) and {sinks}/http (.json).\n\n\
         The admin credential is in {data}/admin-credential. Try:\n\
         \x20 export PALISADE_CREDENTIAL=$(cat {data}/admin-credential) PALISADE_PARTNER=demo-partner\n\
         \x20 palisade notify contacts set-security --first-name Sec --last-name Ops --email secops@example.com --phone +81312345678\n\
         \x20 palisade notify contacts status\n\
         \x20 palisade notify agents upsert --name 'Aiko Sato' --email aiko@example.com --language ja --time-zone Asia/Tokyo\n\
         \x20 palisade notify channels create --name audit --kind webhook --target http://127.0.0.1:9/hook\n\
         \x20 palisade notify deliveries\n\n\
         Ctrl-C stops everything gracefully.",
        data = data_dir.display(),
        notifier = ports::NOTIFIER,
        links = ports::NOTIFIER_LINKS,
        tb = ports::TOKEN_BROKER,
        ai = ports::ALERT_INGEST,
        co = ports::COMPLIANCE,
        sinks = sink_dir.display(),
    );
}
