//! Configuration: layered loading with errors that name the key, secrets that never reach
//! `Debug`, and the file sink used by the local run.

use std::time::Duration;

use palisade_contracts::notify::v1::ChannelKind;
use palisade_notifier::{
    Settings,
    channels::{ChannelSecrets, ChannelSettings, Senders, SinkMode},
    store::{DeliveryRow, NewDelivery},
};

fn load(path: &std::path::Path) -> Result<Settings, palisade_config::ConfigError> {
    palisade_config::load_from("notifier", Some(path), std::iter::empty())
}

fn write(dir: &std::path::Path, toml: &str) -> std::path::PathBuf {
    let path = dir.join("notifier.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn a_file_layers_over_the_defaults_and_bad_values_name_their_key() {
    let dir = palisade_testkit::TestSqlite::create();
    let path = write(
        dir.dir(),
        r#"
        [engine]
        public_url = "https://notify.example.com"
        retry_schedule = ["1s", "10s"]
        default_group_wait = "10s"

        [channels.smtp]
        host = "smtp.example.com"
        port = 465
        tls = "tls"
        password = "smtp-password-do-not-print"

        [channels.sms]
        twilio_auth_token = "twilio-token-do-not-print"
        "#,
    );
    let settings = load(&path).unwrap();
    assert_eq!(
        settings.engine.retry_schedule,
        vec![Duration::from_secs(1), Duration::from_secs(10)]
    );
    assert_eq!(settings.engine.default_group_wait, Duration::from_secs(10));
    assert_eq!(
        settings.engine.default_repeat_interval,
        Duration::from_secs(4 * 3600),
        "defaults stay"
    );
    assert_eq!(settings.channels.smtp.port, 465);
    let shown = format!("{settings:?}");
    assert!(!shown.contains("do-not-print"), "{shown}");

    let bad = write(dir.dir(), "[engine]\nretry_jitter = 1.5\n");
    let err = load(&bad).unwrap_err().to_string();
    assert!(err.contains("retry_jitter"), "{err}");
    let unknown = write(dir.dir(), "[engine]\nretry_jiter = 0.1\n");
    let err = load(&unknown).unwrap_err().to_string();
    assert!(err.contains("retry_jiter"), "{err}");
}

fn row(kind: ChannelKind, target: &str, body: &str) -> DeliveryRow {
    DeliveryRow {
        delivery: NewDelivery {
            delivery_id: format!("msg_{}", kind.as_str_name().to_lowercase()),
            partner_tenant_id: "p".into(),
            event_id: "e".into(),
            event_kind: "alert.raised".into(),
            fingerprint: "fp".into(),
            channel_kind: kind as i32,
            channel_id: String::new(),
            recipient: "r".into(),
            target: target.into(),
            language: "ja".into(),
            subject: "アラート".into(),
            body: body.into(),
            next_attempt_at: 0,
            created_at: 0,
        },
        status: 2,
        attempts: 0,
        retry_base: 0,
        last_error: String::new(),
        updated_at: 0,
    }
}

#[tokio::test]
async fn the_file_sink_writes_eml_and_json_instead_of_sending() {
    let dir = palisade_testkit::TestSqlite::create();
    let senders = Senders::new(ChannelSettings {
        sink: SinkMode::File,
        sink_dir: dir.dir().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    let none = ChannelSecrets(Vec::new());
    let mail = senders
        .send(&row(ChannelKind::Email, "soc@example.com", "本文"), &none)
        .await;
    assert!(mail.success, "{mail:?}");
    let eml =
        std::fs::read_to_string(dir.dir().join("mail/new/msg_channel_kind_email.eml")).unwrap();
    assert!(
        eml.contains("To: soc@example.com") && eml.contains("charset=utf-8"),
        "{eml}"
    );
    let hook = senders
        .send(
            &row(
                ChannelKind::Webhook,
                "https://hooks.example.com/x",
                "{\"a\":1}",
            ),
            &none,
        )
        .await;
    assert!(hook.success);
    let json =
        std::fs::read_to_string(dir.dir().join("http/msg_channel_kind_webhook.json")).unwrap();
    assert_eq!(json, "{\"a\":1}");
}
