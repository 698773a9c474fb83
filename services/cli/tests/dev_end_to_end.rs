//! Starts `palisade dev` as a real process and drives it with the real CLI binary, as the
//! README's quickstart does.

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(dir: &Path, credential: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("PALISADE_CREDENTIAL", credential)
        .env("PALISADE_PARTNER", "demo-partner")
        .env_remove("PALISADE_CLI_CONFIG")
        .env("HOME", dir)
        .output()
        .expect("run the CLI")
}

#[test]
fn the_quickstart_works_against_a_real_dev_process() {
    let dir = std::env::temp_dir().join(format!("palisade-dev-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dev = Dev(Command::new(BIN)
        .args(["dev", "--exit-after", "120"])
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start palisade dev"));

    // Ready when the admin credential exists and the notifier answers.
    let credential_file = dir.join(".palisade/admin-credential");
    let started = Instant::now();
    let credential = loop {
        if let Ok(c) = std::fs::read_to_string(&credential_file) {
            let out = cli(&dir, &c, &["notify", "contacts", "status", "-o", "json"]);
            if out.status.success() {
                break c;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "palisade dev did not become ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    let set = cli(
        &dir,
        &credential,
        &[
            "notify",
            "contacts",
            "set-security",
            "--first-name",
            "Sec",
            "--last-name",
            "Ops",
            "--email",
            "secops@example.com",
            "--phone",
            "+81312345678",
        ],
    );
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );

    // JSON output is valid and uses the proto field names.
    let status = cli(
        &dir,
        &credential,
        &["notify", "contacts", "status", "-o", "json"],
    );
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("valid JSON");
    assert_eq!(json["security_contact_complete"], true);
    assert_eq!(json["compliance_contact_present"], false);

    // Bad input: a clear error and exit code 6, nothing stored.
    let bad = cli(
        &dir,
        &credential,
        &[
            "notify",
            "contacts",
            "set-security",
            "--first-name",
            "X",
            "--last-name",
            "Y",
            "--email",
            "not-an-email",
            "--phone",
            "12",
        ],
    );
    assert_eq!(
        bad.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let still = cli(
        &dir,
        &credential,
        &["notify", "contacts", "get-security", "-o", "json"],
    );
    let contact: serde_json::Value = serde_json::from_slice(&still.stdout).unwrap();
    assert_eq!(contact["contact"]["email"], "secops@example.com");

    // A wrong credential: exit code 3 (unauthenticated).
    let denied = cli(
        &dir,
        "pal_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &["notify", "contacts", "status"],
    );
    assert_eq!(denied.status.code(), Some(3));
    // Every service hosts the credential API over the shared registry.
    for service in [
        "--token-broker=http://127.0.0.1:50051",
        "--token-broker=http://127.0.0.1:50052",
        "--token-broker=http://127.0.0.1:50053",
        "--token-broker=http://127.0.0.1:50054",
    ] {
        let me = cli(
            &dir,
            &credential,
            &["auth", "whoami", "-o", "json", service],
        );
        assert!(
            me.status.success(),
            "{service}: {}",
            String::from_utf8_lossy(&me.stderr)
        );
        let me: serde_json::Value = serde_json::from_slice(&me.stdout).unwrap();
        assert_eq!(me["display_name"], "palisade dev admin");
    }
    // A service that is not reachable: exit code 7 (unavailable), with a hint.
    let down = cli(
        &dir,
        &credential,
        &["compliance", "status", "--compliance", "http://127.0.0.1:1"],
    );
    assert_eq!(down.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&down.stderr).contains("palisade dev"));

    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}
