//! Starts `palisade dev` as a real process and drives it with the real CLI binary, as the
//! README's quickstart does.

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// The demo partner: ms-sim's first partner for the fixed seed.
fn partner() -> String {
    ms_sim::scenario::derived_id(42, "partner0")
}

fn parsed(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

/// Polls until `check` is satisfied (the demo runs live in another process).
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

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
        .env("PALISADE_PARTNER", partner())
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
    let mut dev = Dev(Command::new(BIN)
        .args(["dev", "--exit-after", "600", "--alert-every", "3"])
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        // Kept, so a failure can show what `palisade dev` said.
        .stderr(std::fs::File::create(dir.join("dev.log")).unwrap())
        .spawn()
        .expect("start palisade dev"));

    // Ready when the admin credential exists and the notifier answers with the demo's seed (the
    // compliance contact): the credential is written before the demo has seeded anything.
    let credential_file = dir.join(".palisade/admin-credential");
    let started = Instant::now();
    let credential = loop {
        if let Ok(c) = std::fs::read_to_string(&credential_file) {
            let out = cli(&dir, &c, &["notify", "contacts", "status", "-o", "json"]);
            let seeded = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|status| status["compliance_contact_present"] == true);
            if out.status.success() && seeded {
                break c;
            }
        }
        if let Ok(Some(status)) = dev.0.try_wait() {
            // The fixed gRPC ports sit in Linux's ephemeral range: a parallel test's connection
            // can hold one for a moment. Start again rather than fail on someone else's socket.
            let log = std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default();
            if log.contains("Address already in use") && started.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_secs(2));
                dev = Dev(Command::new(BIN)
                    .args(["dev", "--exit-after", "600", "--alert-every", "3"])
                    .current_dir(&dir)
                    .env_remove("DATABASE_URL")
                    .env_remove("REDIS_URL")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.join("dev.log")).unwrap())
                    .spawn()
                    .expect("restart palisade dev"));
                continue;
            }
            panic!(
                "palisade dev exited ({status}): {}",
                std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "palisade dev did not become ready: {}",
            std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default()
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
    // The demo seeded the compliance contact.
    assert_eq!(json["compliance_contact_present"], true);

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

    // The live demo: ms-sim raises alerts and fires signed webhooks; each one is ingested ...
    let seeded = 12;
    let alerts = eventually("a webhook-delivered alert", || {
        let list = parsed(&cli(
            &dir,
            &credential,
            &["alerts", "list", "--status", "active", "-o", "json"],
        ));
        let alerts = list["alerts"].as_array().cloned().unwrap_or_default();
        (alerts.len() > seeded / 2
            && alerts
                .iter()
                .any(|a| a["alert_type"] == "ARM_SuspiciousOperations"))
        .then_some(alerts)
    });
    let status = parsed(&cli(
        &dir,
        &credential,
        &["alerts", "ingestion-status", "-o", "json"],
    ));
    assert!(
        status["last_webhook_at"].is_string(),
        "a webhook arrived: {status}"
    );
    // ... and delivered: e-mails in three languages in the maildir, and the webhook channel's log.
    let mail = dir.join(".palisade/notifications/mail/new");
    let texts = eventually("notifications in the maildir", || {
        let texts: Vec<String> = std::fs::read_dir(&mail)
            .ok()?
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect();
        (texts.iter().any(|t| t.contains("aiko@partner0.example"))
            && texts.iter().any(|t| t.contains("camille@partner0.example")))
        .then_some(texts)
    });
    assert!(
        texts.iter().any(|t| t.contains("Content-Type")),
        "real .eml files"
    );
    let hooks = dir.join(".palisade/notifications/http");
    eventually("the webhook channel's log", || {
        (std::fs::read_dir(&hooks).ok()?.count() > 0).then_some(())
    });

    // Resolved through the CLI, and the resolution reaches Microsoft (ms-sim's Graph).
    let alert = alerts
        .iter()
        .find(|a| a["graph_alert_id"].as_str().is_some_and(|g| !g.is_empty()))
        .expect("a Graph alert");
    let id = alert["alert_id"].as_str().unwrap();
    let graph_id = alert["graph_alert_id"].as_str().unwrap().to_owned();
    let resolved = cli(
        &dir,
        &credential,
        &[
            "alerts",
            "resolve",
            id,
            "--resolution",
            "legitimate",
            "--note",
            "expected load test",
        ],
    );
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    let sim_alerts = format!("http://127.0.0.1:7000/_sim/partners/{}/alerts", partner());
    eventually("the resolution written back to ms-sim", || {
        let body: serde_json::Value = reqwest_get(&sim_alerts)?;
        let written = body
            .as_array()?
            .iter()
            .find(|a| a["id"] == graph_id.as_str())?
            .clone();
        (written["status"] == "resolved" && written["resolvedReason"] == "legitimate").then_some(())
    });
    let shown = parsed(&cli(
        &dir,
        &credential,
        &["alerts", "show", id, "-o", "json"],
    ));
    assert_eq!(shown["alert"]["status"], "ALERT_STATUS_RESOLVED");

    // Compliance shows the seeded failures: a service account without MFA, GDAP with Global
    // Administrator.
    let evaluate = cli(&dir, &credential, &["compliance", "evaluate"]);
    assert!(
        evaluate.status.success(),
        "{}",
        String::from_utf8_lossy(&evaluate.stderr)
    );
    let findings = parsed(&cli(
        &dir,
        &credential,
        &["compliance", "findings", "-o", "json"],
    ));
    let failing: Vec<&str> = findings["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "CHECK_STATUS_FAIL" && f["customer_tenant_id"] == "")
        .filter_map(|f| f["check"].as_str())
        .collect();
    for seeded in [
        "CHECK_KIND_MFA_ALL_USERS",
        "CHECK_KIND_GDAP_LEAST_PRIVILEGE",
    ] {
        assert!(
            failing.contains(&seeded),
            "{seeded} should fail: {failing:?}"
        );
    }
    // The same command twice gives the same JSON (stable output for scripts).
    let again = parsed(&cli(
        &dir,
        &credential,
        &["compliance", "findings", "-o", "json"],
    ));
    assert_eq!(findings, again);

    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A GET against ms-sim's control API (plain HTTP/1.0 on loopback), parsed.
fn reqwest_get(url: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}
