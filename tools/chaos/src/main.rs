//! `palisade-chaos`: see the library's documentation and tools/chaos/README.md.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "palisade-chaos",
    about = "Palisade as real processes under load, with SIGKILLs and Redis and Postgres restarts; then checks what must hold"
)]
struct Args {
    /// The CI-sized run (a few hundred alerts, every fault once) instead of the full one.
    #[arg(long)]
    short: bool,
    /// Replays a run's fault schedule; random (and printed) when omitted.
    #[arg(long)]
    seed: Option<u64>,
    /// Alerts ms-sim raises (default: 3000, or 240 with --short).
    #[arg(long)]
    alerts: Option<usize>,
    /// Seconds of load and faults (default: 180, or 30 with --short).
    #[arg(long)]
    load_secs: Option<u64>,
    #[arg(long)]
    partners: Option<usize>,
    /// Where the service and ms-sim binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep logs and data even when the run passes.
    #[arg(long)]
    keep: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let bin_dir = match args
        .bin_dir
        .map_or_else(palisade_chaos::default_bin_dir, Ok)
    {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("palisade-chaos: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut options = if args.short {
        palisade_chaos::Options::short(bin_dir)
    } else {
        palisade_chaos::Options::full(bin_dir)
    };
    if let Some(seed) = args.seed {
        options.seed = seed;
    }
    if let Some(alerts) = args.alerts {
        options.alerts = alerts;
    }
    if let Some(secs) = args.load_secs {
        options.load_for = Duration::from_secs(secs);
    }
    if let Some(partners) = args.partners {
        options.partners = partners.max(1);
    }
    options.keep = args.keep;
    match palisade_chaos::run(options).await {
        Ok(report) => {
            println!("{}", report.render());
            if let Some(path) = args.json
                && let Err(e) = std::fs::write(
                    &path,
                    serde_json::to_string_pretty(&report).unwrap_or_default(),
                )
            {
                eprintln!("palisade-chaos: cannot write {}: {e}", path.display());
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("palisade-chaos: the harness failed: {e:#}");
            ExitCode::from(2)
        }
    }
}
