//! The short chaos run CI executes (`make test`): a few hundred alerts through the four
//! services as real processes while each service is SIGKILLed and Redis and Postgres are
//! restarted, then every promise checked. The full run is `make chaos`.

use std::process::Command;

const PACKAGES: [(&str, &str); 5] = [
    ("ms-sim", "ms-sim"),
    ("palisade-token-broker", "palisade-token-broker"),
    ("palisade-alert-ingest", "palisade-alert-ingest"),
    ("palisade-notifier", "palisade-notifier"),
    ("palisade-compliance", "palisade-compliance"),
];

/// `make test` (`cargo nextest run --workspace`) builds every workspace binary before any test
/// runs, so they are used as they are. Only a missing one is built here, because a `cargo
/// build` with another package selection unifies features differently and would compile a
/// second copy of the dependencies on a busy machine. Run alone, `make chaos-short` builds
/// them first.
fn build_missing_binaries(bin_dir: &std::path::Path) {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, bin)| !bin_dir.join(bin).is_file())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--manifest-path", manifest, "--bins"]);
    for package in missing {
        cmd.args(["-p", package]);
    }
    if bin_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "building the service binaries failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_keeps_every_promise() {
    let bin_dir = palisade_chaos::default_bin_dir().expect("the target directory");
    build_missing_binaries(&bin_dir);
    let options = palisade_chaos::Options::short(bin_dir);
    let report = palisade_chaos::run(options)
        .await
        .expect("the chaos harness could not run");
    println!("{}", report.render());
    // Every kind of fault happened at least once.
    for needle in [
        "SIGKILL token-broker",
        "SIGKILL alert-ingest",
        "SIGKILL notifier",
        "SIGKILL compliance",
        "redis-server",
        "pg_ctl",
    ] {
        assert!(
            report.faults.iter().any(|f| f.contains(needle)),
            "no fault {needle:?} in the run"
        );
    }
    assert!(report.findings.alerts_raised > 0, "no alerts were raised");
    assert!(report.passed(), "{}", report.render());
}
