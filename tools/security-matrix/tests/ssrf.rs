//! SSRF: every URL a partner can type is tried with internal destinations (private, loopback,
//! link-local and cloud metadata, IPv6 loopback, unique-local and IPv4-mapped, a hostname
//! that resolves to loopback), with loopback not allowed by configuration. Each must be
//! refused, and a TCP listener on loopback (the trap) must see no connection at all.
//!
//! Partner-typed URLs: the notifier's webhook, Teams and Slack targets (checked when the
//! channel is created, and again by the resolver at every send), and alert-ingest's webhook
//! callback (handed to Partner Center, never called by Palisade). The SMTP host, the SMS
//! provider's base URL, the PagerDuty endpoint and the Key Vault URL are operator
//! configuration, not reachable through any RPC; see README.md.

#[path = "../../../services/compliance/tests/support/mod.rs"]
mod support;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use palisade_contracts::{alerts::v1 as alerts_pb, notify::v1 as notify_pb};
use palisade_notifier::{
    channels::{ChannelSecrets, ChannelSettings, Senders, SsrfPolicy, signing},
    store::{DeliveryRow, NewDelivery},
};
use tonic::Code;

/// A loopback listener that counts every TCP connection it accepts.
struct Trap {
    port: u16,
    v6_port: Option<u16>,
    hits: Arc<AtomicUsize>,
}

impl Trap {
    async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        // Not every machine has IPv6 loopback; the v6 URLs are still tried, on the v4 port.
        let v6 = tokio::net::TcpListener::bind("[::1]:0").await.ok();
        let v6_port = v6.as_ref().map(|l| l.local_addr().unwrap().port());
        for listener in std::iter::once(v4).chain(v6) {
            let hits = Arc::clone(&hits);
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    hits.fetch_add(1, Ordering::SeqCst);
                    drop(socket);
                }
            });
        }
        Self {
            port,
            v6_port,
            hits,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Internal destinations, https so that only the address can be the reason to refuse.
    fn urls(&self) -> Vec<String> {
        let p = self.port;
        let p6 = self.v6_port.unwrap_or(p);
        vec![
            format!("https://127.0.0.1:{p}/hook"),
            format!("https://127.9.9.9:{p}/hook"),
            format!("https://0.0.0.0:{p}/hook"),
            // 127.0.0.1 spelt as one decimal number.
            format!("https://2130706433:{p}/hook"),
            format!("https://localhost:{p}/hook"),
            format!("https://LOCALHOST.:{p}/hook"),
            format!("https://[::1]:{p6}/hook"),
            format!("https://[::ffff:127.0.0.1]:{p}/hook"),
            format!("https://[::ffff:7f00:1]:{p}/hook"),
            format!("https://[64:ff9b::7f00:1]:{p}/hook"),
            "https://169.254.169.254/latest/meta-data/iam/security-credentials/".into(),
            "https://[fe80::1]/hook".into(),
            "https://[fd00::1]/hook".into(),
            "https://10.0.0.1/hook".into(),
            "https://172.16.0.1/hook".into(),
            "https://192.168.1.1/hook".into(),
            "https://100.64.0.1/hook".into(),
            format!("http://127.0.0.1:{p}/hook"),
        ]
    }
}

const PARTNER_URL_KINDS: [notify_pb::ChannelKind; 3] = [
    notify_pb::ChannelKind::Webhook,
    notify_pb::ChannelKind::Teams,
    notify_pb::ChannelKind::Slack,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn internal_urls_are_refused_when_a_partner_configures_them_and_reach_nothing() {
    let trap = Trap::start().await;
    // The harness's notifier runs with the default policy: no loopback, private or link-local.
    let h = support::start(ms_sim::SimConfig::default(), |_| {}).await;
    let partner = h.partner.tenant_id.clone();
    let mut notifier = h.notifier_client().await;
    let mut accepted = Vec::new();
    for kind in PARTNER_URL_KINDS {
        for url in trap.urls() {
            let result = notifier
                .create_channel(notify_pb::CreateChannelRequest {
                    partner_tenant_id: partner.clone(),
                    display_name: "internal".into(),
                    kind: kind as i32,
                    target: url.clone(),
                    language: "en".into(),
                    ..Default::default()
                })
                .await;
            match result {
                Err(status) if status.code() == Code::InvalidArgument => {}
                other => accepted.push(format!("{kind:?} {url}: {other:?}")),
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "internal URLs accepted as channels:\n{}",
        accepted.join("\n")
    );
    let listed = notifier
        .list_channels(notify_pb::ListChannelsRequest {
            partner_tenant_id: partner.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.channels.is_empty(), "nothing refused was stored");

    // alert-ingest's webhook callback is registered at Partner Center, which calls it;
    // Palisade itself must never connect to it.
    let mut alerts = h.alerts_client().await;
    for url in trap.urls() {
        let _ = alerts
            .configure_ingestion(alerts_pb::ConfigureIngestionRequest {
                partner_tenant_id: partner.clone(),
                settings: Some(alerts_pb::IngestionSettings {
                    graph_enabled: false,
                    fraud_events_enabled: false,
                    poll_interval_seconds: 60,
                    webhook_url: url,
                }),
            })
            .await;
    }
    assert_eq!(trap.hits(), 0, "something connected to the loopback trap");
    h.stop().await;
}

fn delivery(kind: notify_pb::ChannelKind, target: &str) -> DeliveryRow {
    DeliveryRow {
        delivery: NewDelivery {
            delivery_id: format!("ssrf_{}", uuid::Uuid::now_v7().simple()),
            partner_tenant_id: "partner-ssrf".into(),
            event_id: String::new(),
            event_kind: "notification.test".into(),
            fingerprint: String::new(),
            channel_kind: kind as i32,
            channel_id: "ch_ssrf".into(),
            recipient: "channel:ch_ssrf".into(),
            target: target.to_owned(),
            language: "en".into(),
            subject: "test".into(),
            body: "{\"text\":\"test\"}".into(),
            next_attempt_at: 0,
            created_at: 0,
        },
        status: notify_pb::DeliveryStatus::Sending as i32,
        attempts: 0,
        retry_base: 0,
        last_error: String::new(),
        updated_at: 0,
    }
}

/// A URL that passed at creation can point elsewhere at send time (DNS rebinding, or a row
/// written before the policy tightened): the resolver inside the HTTP client is what really
/// protects, so it is tried here with the stored URL as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_refuses_internal_addresses_at_send_time_whatever_is_stored() {
    let trap = Trap::start().await;
    let secrets = ChannelSecrets(vec![signing::generate_secret()]);
    let refusing = Senders::new(ChannelSettings {
        ssrf: SsrfPolicy::default(),
        ..Default::default()
    })
    .unwrap();
    let mut delivered = Vec::new();
    for kind in PARTNER_URL_KINDS {
        for url in trap.urls() {
            let outcome = refusing.send(&delivery(kind, &url), &secrets).await;
            if outcome.success || outcome.status != 0 {
                delivered.push(format!("{kind:?} {url}: {outcome:?}"));
            }
        }
    }
    assert!(
        delivered.is_empty(),
        "sent to internal URLs:\n{}",
        delivered.join("\n")
    );
    assert_eq!(trap.hits(), 0, "a send connected to the loopback trap");

    // The control: with loopback allowed, the same send does reach the trap, so the trap
    // would have seen the refused ones.
    let allowing = Senders::new(ChannelSettings {
        ssrf: SsrfPolicy {
            allow_loopback: true,
            ..SsrfPolicy::default()
        },
        ..Default::default()
    })
    .unwrap();
    let _ = allowing
        .send(
            &delivery(
                notify_pb::ChannelKind::Webhook,
                &format!("https://127.0.0.1:{}/hook", trap.port),
            ),
            &secrets,
        )
        .await;
    assert!(
        trap.hits() > 0,
        "the trap sees a connection that is allowed"
    );
}
