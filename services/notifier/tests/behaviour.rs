//! The notifier against real Postgres, a real SMTP server and real HTTP receivers on
//! loopback, with a manual clock: the bytes on the wire for every channel, grouping, snooze,
//! the daily digest, escalation with acknowledgement, retries, 429, 410, dead letters and
//! redrive, and the SSRF guard.

mod support;

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use palisade_contracts::{
    common::v1::Severity,
    events::v1::TokenHealthChanged,
    notify::v1::{notification_service_server::NotificationService, *},
    tokens::v1::TokenHealthState,
};
use palisade_notifier::{
    auth::{Principal, Scope},
    service::NotificationApi,
    store::{ChannelRecord, DeliveryFilter},
};
use prost::Message;
use sha2::Sha256;
use support::*;

fn api(h: &Harness) -> NotificationApi {
    NotificationApi::new(Arc::clone(&h.core))
}

/// A request as the server's auth layer hands it on: verified, for partner A, notify:admin.
fn req<T>(body: T) -> tonic::Request<T> {
    req_as(PARTNER, body)
}

/// The same for another partner's admin.
fn req_as<T>(partner: &str, body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.extensions_mut().insert(Principal {
        credential_id: "0123456789abcdef".into(),
        display_name: format!("{partner} admin"),
        service: false,
        all_partners: false,
        partners: [partner.to_owned()].into_iter().collect(),
        scopes: [Scope::NotifyAdmin].into_iter().collect(),
    });
    r
}

async fn create_channel(
    h: &Harness,
    kind: ChannelKind,
    target: &str,
    secret: &str,
) -> CreateChannelResponse {
    api(h)
        .create_channel(req(CreateChannelRequest {
            partner_tenant_id: PARTNER.into(),
            display_name: format!("{kind:?}"),
            kind: kind as i32,
            target: target.into(),
            secret: secret.into(),
            language: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn route_to(h: &Harness, channel_ids: Vec<String>) {
    api(h)
        .create_route(req(CreateRouteRequest {
            partner_tenant_id: PARTNER.into(),
            route: Some(Route {
                display_name: "to channels".into(),
                channel_ids,
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
}

async fn deliveries(h: &Harness) -> Vec<Delivery> {
    deliveries_of(h, PARTNER).await
}

/// Splits a raw RFC 5322 message and decodes its subject and text body.
fn decode_mail(raw: &str) -> (String, String, String) {
    let (head, body) = raw.split_once("\r\n\r\n").expect("header/body separator");
    // Unfold continuation lines.
    let head = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    let subject_raw = head
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or_default()
        .to_owned();
    let subject = subject_raw
        .split(' ')
        .map(|word| {
            if let Some(enc) = word
                .strip_prefix("=?utf-8?b?")
                .and_then(|w| w.strip_suffix("?="))
            {
                String::from_utf8(STANDARD.decode(enc).unwrap()).unwrap()
            } else if word.starts_with("=?") {
                panic!("unexpected encoded word {word}")
            } else {
                format!("{word} ")
            }
        })
        .collect::<String>();
    let text = if head.contains("Content-Transfer-Encoding: base64") {
        String::from_utf8(STANDARD.decode(body.replace("\r\n", "")).unwrap()).unwrap()
    } else if head.contains("Content-Transfer-Encoding: quoted-printable") {
        let joined = body.replace("=\r\n", "");
        let mut out = Vec::new();
        let bytes = joined.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' && i + 2 < bytes.len() {
                out.push(u8::from_str_radix(&joined[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    } else {
        body.to_owned()
    };
    (head, subject.trim().to_owned(), text)
}

fn token_revoked(at: i64) -> palisade_contracts::events::v1::Envelope {
    envelope(
        "token.health_changed",
        PARTNER,
        TokenHealthChanged {
            partner_tenant_id: PARTNER.into(),
            consent_id: "consent-1".into(),
            customer_tenant_id: String::new(),
            previous_state: TokenHealthState::Healthy as i32,
            state: TokenHealthState::Revoked as i32,
            detail: "AADSTS50173: the grant was revoked".into(),
            remediation: "An admin agent must consent again with MFA.".into(),
            reconsent_url: "https://palisade.example/consent".into(),
            severity: Severity::Medium as i32,
        }
        .encode_to_vec(),
        at,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_is_utf8_mime_in_each_recipients_language_and_defaults_mirror_microsoft() {
    let h = Harness::new().await;
    h.people("ja").await;
    h.settings(|s| s.group_wait_seconds = 0).await;

    // A revoked partner token is an incident: the security contact hears, in Japanese.
    h.core
        .handle_envelope(&token_revoked(h.now()))
        .await
        .unwrap();
    // An Azure fraud alert goes to the admin agents, each in their own language.
    let a = alert("fp-mail", Severity::Medium as i32, "c1");
    h.core.handle_envelope(&raised(&a, h.now())).await.unwrap();
    h.settle().await;

    let soc = h.smtp.to("soc@partner-a.test");
    assert_eq!(soc.len(), 1, "security contact gets the incident only");
    let raw = soc[0].text();
    let (head, subject, text) = decode_mail(&raw);
    assert!(head.contains("MIME-Version: 1.0"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains("Subject: =?utf-8?b?"),
        "japanese subject is an encoded word: {head}"
    );
    assert!(head.contains("Message-ID: <msg_"), "{head}");
    assert!(
        subject.contains("パートナーのアクセスに問題があります"),
        "{subject}"
    );
    assert!(
        text.contains("再同意: https://palisade.example/consent"),
        "{text}"
    );
    assert!(raw.is_ascii(), "8-bit text was transfer-encoded");

    let en = h.smtp.to("agent-1@partner-a.test");
    let fr = h.smtp.to("agent-2@partner-a.test");
    assert_eq!((en.len(), fr.len()), (1, 1));
    let (_, en_subject, en_text) = decode_mail(&en[0].text());
    let (_, fr_subject, fr_text) = decode_mail(&fr[0].text());
    assert!(
        en_subject.starts_with("[MEDIUM] Azure alert: Crypto mining activity"),
        "{en_subject}"
    );
    assert!(
        fr_subject.starts_with("[MEDIUM] Alerte Azure"),
        "{fr_subject}"
    );
    assert!(fr_text.contains("Gravité : medium"), "{fr_text}");
    assert!(
        en_text.contains("Acknowledge: http://127.0.0.1:9/ack?"),
        "{en_text}"
    );

    let log = deliveries(&h).await;
    assert_eq!(log.len(), 3);
    assert!(
        log.iter()
            .all(|d| d.status == DeliveryStatus::Delivered as i32 && d.attempts.len() == 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_teams_slack_and_pagerduty_bytes_on_the_wire() {
    let h = Harness::new().await;
    h.people("en").await;
    h.settings(|s| s.group_wait_seconds = 0).await;
    let hook = create_channel(&h, ChannelKind::Webhook, &h.http.url("/hook"), "").await;
    let secret = hook.generated_secret.clone();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(hook.channel.as_ref().unwrap().active_secret_count, 1);
    let teams = create_channel(&h, ChannelKind::Teams, &h.http.url("/teams"), "").await;
    let slack = create_channel(&h, ChannelKind::Slack, &h.http.url("/slack"), "").await;
    let pd_key = "R0UT1NGKEY0123456789abcdefABCDEF";
    let pd = create_channel(&h, ChannelKind::Pagerduty, "", pd_key).await;
    let ids = [&hook, &teams, &slack, &pd]
        .iter()
        .map(|c| c.channel.as_ref().unwrap().channel_id.clone())
        .collect();
    route_to(&h, ids).await;

    // Secrets are sealed at rest: the plaintext is nowhere in the row.
    let stored = h
        .store
        .get_channel(PARTNER, &hook.channel.as_ref().unwrap().channel_id)
        .await
        .unwrap()
        .unwrap();
    let sealed = stored.secret_sealed.clone().unwrap();
    assert!(
        !sealed
            .windows(10)
            .any(|w| secret.as_bytes().windows(10).any(|s| s == w))
    );
    assert!(!format!("{stored:?}").contains("whsec_"));

    let a = alert("fp-wire", Severity::Medium as i32, "c1");
    h.core.handle_envelope(&raised(&a, h.now())).await.unwrap();
    h.settle().await;

    // Standard Webhooks, verified from the spec with nothing of the notifier's code.
    let got = h.http.at("/hook");
    assert_eq!(got.len(), 1);
    let w = &got[0];
    let id = w.header("webhook-id");
    let ts = w.header("webhook-timestamp");
    let sigs = w.header("webhook-signature");
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&w.body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    assert!(
        sigs.split(' ')
            .any(|s| s.strip_prefix("v1,") == Some(expected.as_str())),
        "signature {sigs} does not verify"
    );
    let age = chrono::Utc::now().timestamp() - ts.parse::<i64>().unwrap();
    assert!(age.abs() < 300, "timestamp within tolerance");
    assert_eq!(w.header("content-type"), "application/json");
    let body = w.json();
    assert_eq!(body["type"], "palisade.alert.raised");
    assert_eq!(body["data"]["items"][0]["fingerprint"], "fp-wire");
    let log = deliveries(&h).await;
    assert!(
        log.iter().any(|d| d.delivery_id == id),
        "webhook-id is the delivery id"
    );

    // Teams: a Workflows message carrying an Adaptive Card.
    let t = h.http.at("/teams");
    assert_eq!(t.len(), 1);
    let card = t[0].json();
    assert_eq!(card["type"], "message");
    let attachment = &card["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(attachment["content"]["type"], "AdaptiveCard");
    assert_eq!(attachment["content"]["version"], "1.4");
    assert_eq!(
        attachment["content"]["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    assert_eq!(attachment["content"]["body"][0]["type"], "TextBlock");
    assert_eq!(
        attachment["content"]["actions"][0]["type"],
        "Action.OpenUrl"
    );

    // Slack Block Kit.
    let s = h.http.at("/slack")[0].json();
    assert_eq!(s["blocks"][0]["type"], "header");
    assert_eq!(s["blocks"][0]["text"]["type"], "plain_text");
    assert_eq!(s["blocks"][1]["text"]["type"], "mrkdwn");
    assert!(s["text"].as_str().unwrap().contains("Crypto mining"));

    // PagerDuty Events API v2: the fingerprint is the dedup key.
    let p = h.http.at("/pagerduty/v2/enqueue")[0].json();
    assert_eq!(p["routing_key"], pd_key);
    assert_eq!(p["dedup_key"], "fp-wire");
    assert_eq!(p["event_action"], "trigger");
    assert_eq!(p["payload"]["severity"], "error");
    assert_eq!(p["payload"]["source"], "palisade");

    // The resolve closes the PagerDuty incident under the same key.
    h.core
        .handle_envelope(&resolved(&a, h.now()))
        .await
        .unwrap();
    h.advance(Duration::from_secs(300));
    h.settle().await;
    let p = h.http.at("/pagerduty/v2/enqueue");
    assert_eq!(p.len(), 2);
    assert_eq!(p[1].json()["event_action"], "resolve");
    assert_eq!(p[1].json()["dedup_key"], "fp-wire");

    // Rotation: both the new and the previous secret sign until the previous one expires.
    let rotated = api(&h)
        .rotate_channel_secret(req(RotateChannelSecretRequest {
            partner_tenant_id: PARTNER.into(),
            channel_id: hook.channel.as_ref().unwrap().channel_id.clone(),
            new_secret: String::new(),
            previous_valid_hours: 1,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.channel.as_ref().unwrap().active_secret_count, 2);
    let new_secret = rotated.generated_secret.clone();
    let verifies = |r: &Received, secret: &str| {
        let key = STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(
            format!(
                "{}.{}.",
                r.header("webhook-id"),
                r.header("webhook-timestamp")
            )
            .as_bytes(),
        );
        mac.update(&r.body);
        let expected = STANDARD.encode(mac.finalize().into_bytes());
        r.header("webhook-signature")
            .split(' ')
            .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
    };
    h.core
        .handle_envelope(&raised(
            &alert("fp-rot-1", Severity::Medium as i32, "c1"),
            h.now(),
        ))
        .await
        .unwrap();
    h.advance(Duration::from_secs(300));
    h.settle().await;
    let during = h.http.at("/hook").last().cloned().unwrap();
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
    assert!(
        verifies(&during, &secret) && verifies(&during, &new_secret),
        "both keys sign during the rotation"
    );
    h.advance(Duration::from_secs(3600));
    h.core
        .handle_envelope(&raised(
            &alert("fp-rot-2", Severity::Medium as i32, "c1"),
            h.now(),
        ))
        .await
        .unwrap();
    h.advance(Duration::from_secs(300));
    h.settle().await;
    let after = h.http.at("/hook").last().cloned().unwrap();
    assert_eq!(after.header("webhook-signature").split(' ').count(), 1);
    assert!(
        verifies(&after, &new_secret) && !verifies(&after, &secret),
        "the old key expired"
    );

    // TestChannel answers with what the far end said.
    let test = api(&h)
        .test_channel(req(TestChannelRequest {
            partner_tenant_id: PARTNER.into(),
            channel_id: hook.channel.as_ref().unwrap().channel_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(test.success, "{}", test.detail);
    assert_eq!(test.http_status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouping_waits_dedups_repeats_and_closes_on_resolve() {
    let h = Harness::new().await;
    h.people("en").await;
    h.settings(|s| {
        s.group_wait_seconds = 30;
        s.group_interval_seconds = 300;
        s.repeat_interval_seconds = 3600;
    })
    .await;
    let agent = "agent-1@partner-a.test";
    let a = alert("fp-a", Severity::Medium as i32, "c1");
    let b = alert("fp-b", Severity::Low as i32, "c2");

    h.core.handle_envelope(&raised(&a, h.now())).await.unwrap();
    h.advance(Duration::from_secs(10));
    h.settle().await;
    assert_eq!(
        h.smtp.to(agent).len(),
        0,
        "group_wait holds the first notification"
    );

    h.advance(Duration::from_secs(20));
    h.settle().await;
    assert_eq!(
        h.smtp.to(agent).len(),
        1,
        "one notification after group_wait"
    );

    // A second alert, and the same alert again (a replayed event with a new id): only the
    // new alert changes the group, and only after group_interval.
    h.advance(Duration::from_secs(10));
    h.core.handle_envelope(&raised(&b, h.now())).await.unwrap();
    h.core.handle_envelope(&raised(&a, h.now())).await.unwrap();
    h.settle().await;
    assert_eq!(h.smtp.to(agent).len(), 1, "group_interval not over");
    h.advance(Duration::from_secs(290));
    h.settle().await;
    let mails = h.smtp.to(agent);
    assert_eq!(mails.len(), 2);
    let (_, subject, text) = decode_mail(&mails[1].text());
    assert!(subject.starts_with("2 active, 0 resolved"), "{subject}");
    assert!(text.contains("Customer c2"), "{text}");

    // Nothing changed: no notification until repeat_interval.
    h.advance(Duration::from_secs(600));
    h.settle().await;
    assert_eq!(h.smtp.to(agent).len(), 2, "unchanged group is not re-sent");

    // A resolve is a change.
    h.core
        .handle_envelope(&resolved(&a, h.now()))
        .await
        .unwrap();
    h.settle().await;
    let mails = h.smtp.to(agent);
    assert_eq!(mails.len(), 3);
    let (_, subject, _) = decode_mail(&mails[2].text());
    assert!(subject.starts_with("1 active, 1 resolved"), "{subject}");

    // Repeat after repeat_interval while b still fires.
    h.advance(Duration::from_secs(3600));
    h.settle().await;
    assert_eq!(
        h.smtp.to(agent).len(),
        4,
        "repeat_interval re-sends a firing group"
    );

    // The last alert resolves: told once, and the group closes.
    h.core
        .handle_envelope(&resolved(&b, h.now()))
        .await
        .unwrap();
    h.advance(Duration::from_secs(300));
    h.settle().await;
    let mails = h.smtp.to(agent);
    assert_eq!(mails.len(), 5);
    let (_, subject, _) = decode_mail(&mails[4].text());
    assert!(subject.starts_with("Resolved: Crypto mining"), "{subject}");
    let closed = h
        .store
        .load_group(&format!("{PARTNER}/default-admin-agents"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        closed.items.is_empty() && closed.next_flush_at == i64::MAX,
        "group closed"
    );
    h.advance(Duration::from_secs(86_400));
    h.settle().await;
    assert_eq!(h.smtp.to(agent).len(), 5);

    // A duplicate envelope (same message id) is applied once.
    let again = raised(&a, h.now());
    assert!(h.core.handle_envelope(&again).await.unwrap());
    assert!(!h.core.handle_envelope(&again).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relationship_notices_are_told_once_and_alerts_that_came_and_went_not_at_all() {
    let h = Harness::new().await;
    h.people("en").await;
    h.settings(|s| s.group_wait_seconds = 30).await;
    let gdap = envelope(
        "gdap.relationship_changed",
        PARTNER,
        palisade_contracts::events::v1::GdapRelationshipChanged {
            partner_tenant_id: PARTNER.into(),
            event_name: "granular-admin-relationship-expired".into(),
            relationship_id: "rel-1".into(),
            resource_uri: String::new(),
            changed_at: None,
        }
        .encode_to_vec(),
        h.now(),
    );
    h.core.handle_envelope(&gdap).await.unwrap();
    // An alert raised and resolved inside group_wait: nobody needs to hear about it.
    let a = alert("fp-blip", Severity::Low as i32, "c1");
    h.core.handle_envelope(&raised(&a, h.now())).await.unwrap();
    h.core
        .handle_envelope(&resolved(&a, h.now()))
        .await
        .unwrap();
    h.advance(Duration::from_secs(30));
    h.settle().await;
    let mails = h.smtp.to("agent-1@partner-a.test");
    assert_eq!(mails.len(), 1, "the notice, and not the blip");
    let (_, subject, text) = decode_mail(&mails[0].text());
    assert!(
        subject.starts_with("GDAP relationship changed"),
        "{subject}"
    );
    assert!(text.contains("rel-1"), "{text}");
    h.advance(Duration::from_secs(2 * 86_400));
    h.settle().await;
    assert_eq!(
        h.smtp.to("agent-1@partner-a.test").len(),
        1,
        "a notice is never repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snoozed_fingerprints_stay_quiet_until_the_snooze_ends() {
    let h = Harness::new().await;
    h.people("en").await;
    h.settings(|s| s.group_wait_seconds = 0).await;
    let a = alert("fp-snooze", Severity::Medium as i32, "c1");
    let err = api(&h)
        .snooze_alert(req(SnoozeAlertRequest {
            partner_tenant_id: PARTNER.into(),
            fingerprint: "fp-snooze".into(),
            days: 3,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let until = api(&h)
        .snooze_alert(req(SnoozeAlertRequest {
            partner_tenant_id: PARTNER.into(),
            fingerprint: "fp-snooze".into(),
            days: 7,
        }))
        .await
        .unwrap()
        .into_inner()
        .until
        .unwrap();
    assert_eq!(
        palisade_contracts::time::to_millis(&until),
        h.now() + 7 * 86_400_000
    );

    h.core.handle_envelope(&raised(&a, h.now())).await.unwrap();
    h.settle().await;
    assert!(h.smtp.mails().is_empty(), "snoozed alert is not told");

    h.advance(Duration::from_secs(7 * 86_400 + 1));
    h.core.handle_envelope(&raised(&a, h.now())).await.unwrap();
    h.settle().await;
    assert_eq!(
        h.smtp.to("agent-1@partner-a.test").len(),
        1,
        "told once the snooze ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_digest_goes_out_once_a_day_at_the_partners_local_hour() {
    let h = Harness::new().await;
    h.people("en").await;
    // T0 is 09:00 in Tokyo.
    h.settings(|s| {
        s.time_zone = "Asia/Tokyo".into();
        s.digest_hour = 9;
    })
    .await;
    h.clock.set(T0 - 60_000);
    for (fp, customer) in [("d1", "c1"), ("d2", "c1"), ("d3", "c2")] {
        h.core
            .handle_envelope(&raised(&alert(fp, Severity::Low as i32, customer), h.now()))
            .await
            .unwrap();
    }
    assert_eq!(
        h.core.run_digests().await.unwrap(),
        0,
        "08:59 in Tokyo: not yet"
    );
    h.advance(Duration::from_secs(60));
    assert_eq!(h.core.run_digests().await.unwrap(), 1, "09:00 in Tokyo");
    h.core.dispatch_once().await.unwrap();
    let digest: Vec<_> = h
        .smtp
        .to("agent-1@partner-a.test")
        .into_iter()
        .map(|m| decode_mail(&m.text()))
        .filter(|(_, s, _)| s.starts_with("Daily security summary"))
        .collect();
    assert_eq!(digest.len(), 1);
    let (_, subject, text) = &digest[0];
    assert!(
        subject.contains("2026-11-23") && subject.contains("3 unresolved alerts"),
        "{subject}"
    );
    assert!(text.contains("Customers affected: 2"), "{text}");
    assert!(text.contains("- cryptoMiningActivity: 3"), "{text}");
    assert!(text.contains("within the 24-hour requirement"), "{text}");

    h.advance(Duration::from_secs(3600));
    assert_eq!(h.core.run_digests().await.unwrap(), 0, "once a day");
    // The next day the alerts are over 24 hours old: the response-time line says so.
    h.advance(Duration::from_secs(23 * 3600));
    assert_eq!(h.core.run_digests().await.unwrap(), 1, "next day");
    h.core.dispatch_once().await.unwrap();
    let last = h.smtp.to("soc@partner-a.test").last().cloned().unwrap();
    let (_, _, text) = decode_mail(&last.text());
    assert!(
        text.contains("3 alerts open for more than 24 hours"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_runs_a_frozen_chain_to_the_24x7_phone_and_acknowledgement_stops_it() {
    let h = Harness::new().await;
    h.people("en").await;
    h.settings(|s| s.group_wait_seconds = 0).await;
    let high = Severity::High as i32;

    // A: acknowledged after the first step, so the SMS never goes.
    let a = alert("fp-esc-a", high, "c1");
    h.core.handle_envelope(&raised(&a, h.now())).await.unwrap();
    h.settle().await;
    h.advance(Duration::from_secs(15 * 60));
    h.settle().await;
    let escalated = |addr: &str| {
        h.smtp
            .to(addr)
            .iter()
            .filter(|m| decode_mail(&m.text()).1.starts_with("ESCALATION"))
            .count()
    };
    assert_eq!(escalated("agent-1@partner-a.test"), 1);
    assert_eq!(escalated("soc@partner-a.test"), 1);
    let ack = api(&h)
        .acknowledge_alert(req(AcknowledgeAlertRequest {
            partner_tenant_id: PARTNER.into(),
            fingerprint: "fp-esc-a".into(),
            note: "on it".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ack.cancelled_escalation_steps, 1,
        "the SMS step is cancelled"
    );
    h.advance(Duration::from_secs(60 * 60));
    h.settle().await;
    assert!(
        h.http
            .at("/twilio/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json")
            .is_empty()
    );

    // B: nobody acknowledges and the notifier was away for two hours: the stale e-mail
    // step is dropped and only the last rung, the SMS to the 24x7 phone, runs.
    let b = alert("fp-esc-b", high, "c2");
    h.core.handle_envelope(&raised(&b, h.now())).await.unwrap();
    h.settle().await;
    let before = escalated("agent-1@partner-a.test");
    h.advance(Duration::from_secs(2 * 3600));
    h.settle().await;
    assert_eq!(
        escalated("agent-1@partner-a.test"),
        before,
        "stale step dropped"
    );
    let sms = h
        .http
        .at("/twilio/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json");
    assert_eq!(sms.len(), 1);
    let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&sms[0].body)
        .into_owned()
        .collect();
    assert_eq!(form["To"], "+81312345678");
    assert_eq!(form["From"], "+15005550006");
    assert!(form["Body"].contains("/ack?"), "{}", form["Body"]);
    let basic = format!(
        "Basic {}",
        STANDARD.encode("AC0123456789abcdef0123456789abcdef:twilio-token")
    );
    assert_eq!(sms[0].header("authorization"), basic);
    let esc = h
        .store
        .get_escalation(PARTNER, "fp-esc-b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(esc.state, "done");

    // C: the one-click link in the email stops the chain. GET only asks; POST acknowledges.
    // A and B resolve first, so C's notification is its own (with its link), not a group.
    h.core
        .handle_envelope(&resolved(&a, h.now()))
        .await
        .unwrap();
    h.core
        .handle_envelope(&resolved(&b, h.now()))
        .await
        .unwrap();
    h.advance(Duration::from_secs(300));
    h.settle().await;
    let c = alert("fp-esc-c", high, "c3");
    h.core.handle_envelope(&raised(&c, h.now())).await.unwrap();
    h.advance(Duration::from_secs(300));
    h.settle().await;
    let mail = h
        .smtp
        .to("agent-1@partner-a.test")
        .into_iter()
        .map(|m| decode_mail(&m.text()).2)
        .find(|t| t.contains("Customer c3"))
        .unwrap();
    let link = mail
        .lines()
        .find_map(|l| l.strip_prefix("Acknowledge: "))
        .unwrap()
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = palisade_notifier::http::router(Arc::clone(&h.core));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let local = link.replace("http://127.0.0.1:9", &format!("http://127.0.0.1:{port}"));
    let client = reqwest::Client::new();
    let page = client.get(&local).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        !h.store.is_acknowledged(PARTNER, "fp-esc-c").await.unwrap(),
        "GET does not acknowledge"
    );
    let forged = client
        .post(local.replace("fp-esc-c", "fp-esc-x"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let done = client.post(&local).send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert!(h.store.is_acknowledged(PARTNER, "fp-esc-c").await.unwrap());
    let before = escalated("agent-1@partner-a.test");
    h.advance(Duration::from_secs(3600));
    h.settle().await;
    assert_eq!(
        escalated("agent-1@partner-a.test"),
        before,
        "acknowledged by link: no escalation"
    );
    assert_eq!(
        h.http
            .at("/twilio/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json")
            .len(),
        1
    );
}

async fn delivery_for(h: &Harness, channel_id: &str) -> Delivery {
    let mut all: Vec<_> = deliveries(h)
        .await
        .into_iter()
        .filter(|d| d.channel_id == channel_id)
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn next_at(d: &Delivery) -> i64 {
    palisade_contracts::time::to_millis(d.next_attempt_at.as_ref().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_429_410_dead_letters_redrive_and_five_days_of_failure() {
    let mut engine = engine_settings();
    engine.retry_schedule = vec![Duration::from_secs(10); 4];
    let h = Harness::with(engine, LOOPBACK).await;
    h.people("en").await;
    h.settings(|s| s.group_wait_seconds = 0).await;
    let flaky = create_channel(&h, ChannelKind::Webhook, &h.http.url("/flaky"), "")
        .await
        .channel
        .unwrap();
    let gone = create_channel(&h, ChannelKind::Slack, &h.http.url("/gone"), "")
        .await
        .channel
        .unwrap();
    let down = create_channel(&h, ChannelKind::Teams, &h.http.url("/down"), "")
        .await
        .channel
        .unwrap();
    route_to(
        &h,
        vec![
            flaky.channel_id.clone(),
            gone.channel_id.clone(),
            down.channel_id.clone(),
        ],
    )
    .await;
    h.http.script(
        "/flaky",
        [
            Reply::status(500),
            Reply::status(429).with_header("retry-after", "5"),
            Reply::status(429).with_header("retry-after", "7200"),
            Reply::status(502),
            Reply::status(500),
        ],
    );
    h.http.default_reply("/gone", Reply::status(410));
    h.http.default_reply("/down", Reply::status(500));

    h.core
        .handle_envelope(&raised(
            &alert("fp-retry", Severity::Medium as i32, "c1"),
            h.now(),
        ))
        .await
        .unwrap();
    h.settle().await;

    // 500: retried on the schedule with ±20% jitter.
    let d = delivery_for(&h, &flaky.channel_id).await;
    assert_eq!(d.status, DeliveryStatus::Retrying as i32);
    let wait = next_at(&d) - h.now();
    assert!((8_000..=12_000).contains(&wait), "{wait}");

    // 410 Gone: dead at once, the channel disabled, the owners told by email.
    let g = delivery_for(&h, &gone.channel_id).await;
    assert_eq!(g.status, DeliveryStatus::Dead as i32);
    let ch = h
        .store
        .get_channel(PARTNER, &gone.channel_id)
        .await
        .unwrap()
        .unwrap();
    assert!(!ch.enabled && ch.disabled_reason.contains("410"), "{ch:?}");
    let told = h
        .smtp
        .to("soc@partner-a.test")
        .iter()
        .filter(|m| decode_mail(&m.text()).1.contains("channel disabled"))
        .count();
    assert_eq!(told, 1);

    // 429 with a short Retry-After: at least 60 s.
    h.advance(Duration::from_millis(wait as u64));
    h.settle().await;
    let d = delivery_for(&h, &flaky.channel_id).await;
    assert_eq!(next_at(&d) - h.now(), 60_000, "429 waits at least 60 s");
    // 429 asking for two hours: clamped to the one-hour maximum.
    h.advance(Duration::from_secs(60));
    h.settle().await;
    let d = delivery_for(&h, &flaky.channel_id).await;
    assert_eq!(next_at(&d) - h.now(), 3_600_000, "Retry-After clamped");
    // Two more failures exhaust the schedule: a dead letter.
    for _ in 0..2 {
        let d = delivery_for(&h, &flaky.channel_id).await;
        h.clock.set(next_at(&d));
        h.settle().await;
    }
    let d = delivery_for(&h, &flaky.channel_id).await;
    assert_eq!(d.status, DeliveryStatus::Dead as i32);
    assert_eq!(d.attempts.len(), 5);
    let statuses: Vec<u32> = d.attempts.iter().map(|a| a.http_status).collect();
    assert_eq!(statuses, vec![500, 429, 429, 502, 500]);

    // Redrive: a fresh retry budget, and the endpoint works again.
    let redriven = api(&h)
        .redrive_dead_letters(req(RedriveDeadLettersRequest {
            partner_tenant_id: PARTNER.into(),
            delivery_ids: vec![d.delivery_id.clone()],
        }))
        .await
        .unwrap()
        .into_inner()
        .redriven;
    assert_eq!(redriven, 1);
    h.settle().await;
    let d = delivery_for(&h, &flaky.channel_id).await;
    assert_eq!(d.status, DeliveryStatus::Delivered as i32);
    assert_eq!(d.attempts.len(), 6);
    let ids: Vec<String> = h
        .http
        .at("/flaky")
        .iter()
        .map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(ids.len(), 6);
    assert!(
        ids.iter().all(|i| *i == d.delivery_id),
        "every retry carries the same webhook-id"
    );

    // Five days of continuous failure disable the endpoint and tell its owners.
    let down_ch = h
        .store
        .get_channel(PARTNER, &down.channel_id)
        .await
        .unwrap()
        .unwrap();
    assert!(down_ch.enabled && down_ch.failing_since.is_some());
    h.advance(Duration::from_secs(5 * 86_400));
    let stuck = delivery_for(&h, &down.channel_id).await;
    if stuck.status == DeliveryStatus::Dead as i32 {
        // The short schedule ran out first; a new notification finds the endpoint failing.
        h.core
            .handle_envelope(&raised(
                &alert("fp-retry-2", Severity::Medium as i32, "c1"),
                h.now(),
            ))
            .await
            .unwrap();
    }
    h.settle().await;
    let down_ch = h
        .store
        .get_channel(PARTNER, &down.channel_id)
        .await
        .unwrap()
        .unwrap();
    assert!(!down_ch.enabled, "disabled after five days");
    assert!(
        down_ch.disabled_reason.contains("5 days"),
        "{}",
        down_ch.disabled_reason
    );
    let told = h
        .smtp
        .to("soc@partner-a.test")
        .iter()
        .filter(|m| decode_mail(&m.text()).1.contains("channel disabled"))
        .count();
    assert_eq!(told, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_attempts_are_refused_at_creation_and_at_send_time() {
    let h = Harness::with(engine_settings(), Default::default()).await;
    h.people("en").await;
    h.settings(|s| s.group_wait_seconds = 0).await;
    let port = h.http.port;
    for target in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/hook".to_owned(),
        "http://[::ffff:10.0.0.1]/hook".to_owned(),
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        "gopher://example.com/".to_owned(),
    ] {
        let err = api(&h)
            .create_channel(req(CreateChannelRequest {
                partner_tenant_id: PARTNER.into(),
                display_name: "evil".into(),
                kind: ChannelKind::Webhook as i32,
                target: target.clone(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{target}: {err:?}"
        );
    }

    // A name that resolved to a public address when the channel was made and to loopback
    // now (DNS rebinding): the resolver-level guard refuses it at send time.
    let channel = ChannelRecord {
        channel_id: "ch_rebind".into(),
        partner_tenant_id: PARTNER.into(),
        display_name: "rebinding".into(),
        kind: ChannelKind::Slack as i32,
        target: format!("http://localhost:{port}/rebind"),
        language: String::new(),
        enabled: true,
        disabled_reason: String::new(),
        secret_sealed: None,
        secret_count: 0,
        failing_since: None,
        created_at: h.now(),
    };
    h.store.insert_channel(&channel).await.unwrap();
    route_to(&h, vec!["ch_rebind".into()]).await;
    h.core
        .handle_envelope(&raised(
            &alert("fp-ssrf", Severity::Medium as i32, "c1"),
            h.now(),
        ))
        .await
        .unwrap();
    h.settle().await;
    assert!(h.http.at("/rebind").is_empty(), "nothing reached loopback");
    let d = delivery_for(&h, "ch_rebind").await;
    assert_eq!(d.status, DeliveryStatus::Dead as i32);
    assert!(
        d.attempts[0].error.contains("ssrf guard"),
        "{:?}",
        d.attempts
    );
    let listed = h
        .store
        .list_deliveries(
            PARTNER,
            &DeliveryFilter {
                channel_id: Some("ch_rebind".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

/// With a cache that outlives the test, what the API changes must still reach the very next
/// delivery on this replica: the cache is cleared by the change, not by its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_changes_reach_the_next_delivery_through_the_cache() {
    let h = Harness::with(
        palisade_notifier::engine::EngineSettings {
            partner_cache_ttl: Duration::from_secs(3600),
            ..engine_settings()
        },
        LOOPBACK,
    )
    .await;
    h.people("en").await;
    h.settings(|s| s.group_wait_seconds = 0).await;
    let hook = create_channel(&h, ChannelKind::Webhook, &h.http.url("/hook"), "").await;
    let channel_id = hook.channel.as_ref().unwrap().channel_id.clone();
    route_to(&h, vec![channel_id.clone()]).await;
    let raise = |fingerprint: &'static str| {
        let h = &h;
        async move {
            let a = alert(fingerprint, Severity::Medium as i32, "c1");
            h.core.handle_envelope(&raised(&a, h.now())).await.unwrap();
            h.advance(Duration::from_secs(300));
            h.settle().await;
        }
    };

    raise("fp-cache-1").await;
    let hooks = h.http.at("/hook");
    assert_eq!(hooks.len(), 1, "the channel and its secret are now cached");
    assert_eq!(hooks[0].header("webhook-signature").split(' ').count(), 1);

    // A rotation through the API: the next delivery is signed with both secrets.
    api(&h)
        .rotate_channel_secret(req(RotateChannelSecretRequest {
            partner_tenant_id: PARTNER.into(),
            channel_id: channel_id.clone(),
            new_secret: String::new(),
            previous_valid_hours: 1,
        }))
        .await
        .unwrap();
    raise("fp-cache-2").await;
    let hooks = h.http.at("/hook");
    assert_eq!(hooks.len(), 2);
    assert_eq!(
        hooks[1].header("webhook-signature").split(' ').count(),
        2,
        "the rotated secret signs at once"
    );

    // A deleted channel gets nothing more.
    api(&h)
        .delete_channel(req(DeleteChannelRequest {
            partner_tenant_id: PARTNER.into(),
            channel_id,
        }))
        .await
        .unwrap();
    raise("fp-cache-3").await;
    assert_eq!(
        h.http.at("/hook").len(),
        2,
        "nothing is sent to a deleted channel"
    );
}

/// Partner `partner`: no group wait or interval, one webhook endpoint at `path`, one route to
/// it. Returns the channel id.
async fn immediate_webhook(h: &Harness, partner: &str, path: &str) -> String {
    h.store
        .set_settings(
            partner,
            &PartnerSettings {
                time_zone: "UTC".into(),
                digest_hour: 8,
                group_wait_seconds: 0,
                group_interval_seconds: 0,
                repeat_interval_seconds: 4 * 3600,
                escalation: Vec::new(),
                default_language: "en".into(),
            },
            h.now(),
        )
        .await
        .unwrap();
    let channel = api(h)
        .create_channel(req_as(
            partner,
            CreateChannelRequest {
                partner_tenant_id: partner.into(),
                display_name: path.into(),
                kind: ChannelKind::Webhook as i32,
                target: h.http.url(path),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    api(h)
        .create_route(req_as(
            partner,
            CreateRouteRequest {
                partner_tenant_id: partner.into(),
                route: Some(Route {
                    display_name: "at once".into(),
                    channel_ids: vec![channel.channel_id.clone()],
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap();
    channel.channel_id
}

async fn deliveries_of(h: &Harness, partner: &str) -> Vec<Delivery> {
    api(h)
        .list_deliveries(req_as(
            partner,
            ListDeliveriesRequest {
                partner_tenant_id: partner.into(),
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .deliveries
}

/// The `webhook-id`s a path answered 200 to, in order.
fn accepted(h: &Harness, path: &str, from: usize) -> Vec<String> {
    h.http.at(path)[from..]
        .iter()
        .map(|r| r.header("webhook-id"))
        .collect()
}

/// A new alert for each partner, then everything due is sent.
async fn raise_for_both(h: &Harness, n: u32) {
    for partner in [PARTNER, OTHER_PARTNER] {
        let mut a = alert(&format!("fp-breaker-{n}"), Severity::Medium as i32, "c1");
        a.partner_tenant_id = partner.into();
        h.core.handle_envelope(&raised(&a, h.now())).await.unwrap();
    }
    h.settle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_gets_only_probes_while_its_breaker_is_open() {
    let mut engine = engine_settings();
    // Retries come due long before the breaker's probe: the breaker, not the schedule, decides.
    engine.retry_schedule = vec![Duration::from_secs(5); 10];
    engine.limits.breaker_failures = 3;
    engine.limits.breaker_open = Duration::from_secs(60);
    engine.limits.breaker_open_max = Duration::from_secs(120);
    let logs = palisade_testkit::capture_logs();
    let h = Harness::with(engine, LOOPBACK).await;
    let down = immediate_webhook(&h, PARTNER, "/a-down").await;
    immediate_webhook(&h, OTHER_PARTNER, "/b-up").await;
    h.http.default_reply("/a-down", Reply::status(500));
    // Three failures in a row open A's breaker.
    for n in 0..3 {
        raise_for_both(&h, n).await;
    }
    assert_eq!(h.http.at("/a-down").len(), 3);
    // An operator sees it: on /metrics, and in a log line naming the channel, not its address.
    let text = h.metrics.render();
    assert!(text.contains("palisade_notify_breakers_open 1\n"), "{text}");
    assert!(
        text.contains("palisade_notify_breaker_opens_total{channel_kind=\"webhook\"} 1\n"),
        "{text}"
    );
    let opened = logs
        .contents()
        .lines()
        .filter(|l| l.contains("circuit breaker open") && l.contains(&down))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert!(
        opened[0].contains(PARTNER) && opened[0].contains("webhook"),
        "{opened:?}"
    );
    assert!(
        !opened[0].contains("/a-down"),
        "the endpoint's address was logged: {opened:?}"
    );
    // While it is open, A's new notifications are planned and not attempted, even when the
    // earlier ones' retries come due, and B's endpoint hears about every event at once.
    for n in 3..6 {
        h.advance(Duration::from_secs(6));
        raise_for_both(&h, n).await;
    }
    assert_eq!(
        h.http.at("/a-down").len(),
        3,
        "nothing but probes while open"
    );
    let a = deliveries_of(&h, PARTNER).await;
    assert_eq!(a.len(), 6, "{a:?}");
    assert_eq!(a.iter().filter(|d| d.attempts.is_empty()).count(), 3);
    assert!(a.iter().all(|d| d.channel_id == down
        && d.status != DeliveryStatus::Delivered as i32
        && d.status != DeliveryStatus::Dead as i32));
    let b = deliveries_of(&h, OTHER_PARTNER).await;
    assert_eq!(b.len(), 6);
    assert!(
        b.iter()
            .all(|d| d.status == DeliveryStatus::Delivered as i32 && d.attempts.len() == 1),
        "{b:?}"
    );
    let mut b_ids: Vec<String> = b.iter().map(|d| d.delivery_id.clone()).collect();
    let mut b_heard = accepted(&h, "/b-up", 0);
    b_ids.sort();
    b_heard.sort();
    assert_eq!(b_heard, b_ids, "B heard each of its notifications once");

    // At the end of the open period one probe goes out; it fails, and the breaker stays open
    // for twice as long.
    h.advance(Duration::from_secs(60));
    h.settle().await;
    assert_eq!(h.http.at("/a-down").len(), 4, "one probe");
    h.advance(Duration::from_secs(61));
    h.settle().await;
    assert_eq!(
        h.http.at("/a-down").len(),
        4,
        "still open after the failed probe"
    );

    // A recovers: the next probe closes the breaker and everything it held arrives, once each,
    // with the ids it was planned with.
    h.http.default_reply("/a-down", Reply::status(200));
    h.advance(Duration::from_secs(60));
    h.settle().await;
    // What finds every slot of the endpoint taken (the probe and the first of the backlog)
    // steps aside for a second; this clock only moves when told to.
    for _ in 0..3 {
        h.advance(Duration::from_secs(2));
        h.settle().await;
    }
    let a = deliveries_of(&h, PARTNER).await;
    assert!(
        a.iter()
            .all(|d| d.status == DeliveryStatus::Delivered as i32),
        "{a:?}"
    );
    let mut a_ids: Vec<String> = a.iter().map(|d| d.delivery_id.clone()).collect();
    let mut a_heard = accepted(&h, "/a-down", 4);
    a_ids.sort();
    a_heard.sort();
    assert_eq!(
        a_heard, a_ids,
        "each held notification arrived once after the recovery"
    );
    assert_eq!(
        h.http.at("/b-up").len(),
        6,
        "B was never held back or repeated"
    );
    // Opened, kept open by the failed probe, closed by the good one.
    let text = h.metrics.render();
    assert!(text.contains("palisade_notify_breakers_open 0\n"), "{text}");
    assert!(
        text.contains("palisade_notify_breaker_opens_total{channel_kind=\"webhook\"} 2\n"),
        "{text}"
    );
}
