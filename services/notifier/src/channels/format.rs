//! Builds each channel's wire body from a rendered message, at planning time, so every retry
//! of a delivery sends the same bytes. Secrets (PagerDuty routing keys, signatures) are added
//! only at send time and are never stored in a delivery row.

use palisade_contracts::notify::v1::ChannelKind;
use serde_json::{Value, json};

use crate::{events::ItemSummary, templates::Rendered};

/// What a message says, independent of the channel.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub partner_tenant_id: &'a str,
    pub event_kind: &'a str,
    pub rendered: &'a Rendered,
    pub items: &'a [ItemSummary],
    pub ack_url: Option<&'a str>,
    pub language: &'a str,
    pub occurred_at: i64,
}

/// `(subject, body)` as stored in the delivery row.
pub fn format(kind: ChannelKind, msg: &Message<'_>) -> (String, String) {
    let subject = msg.rendered.subject.clone();
    let body = match kind {
        ChannelKind::Email | ChannelKind::Unspecified => email_text(msg),
        ChannelKind::Webhook => webhook(msg).to_string(),
        ChannelKind::Teams => teams(msg).to_string(),
        ChannelKind::Slack => slack(msg).to_string(),
        ChannelKind::Sms => sms(msg),
        ChannelKind::Pagerduty => pagerduty(msg).to_string(),
    };
    (subject, body)
}

fn email_text(msg: &Message<'_>) -> String {
    // The acknowledgement link is already in the templates that offer it.
    msg.rendered.body.clone()
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max_chars.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// The Standard Webhooks payload shape: `type`, `timestamp`, `data`.
pub fn webhook(msg: &Message<'_>) -> Value {
    let timestamp = chrono::DateTime::from_timestamp_millis(msg.occurred_at)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "type": format!("palisade.{}", msg.event_kind),
        "timestamp": timestamp,
        "data": {
            "partner_tenant_id": msg.partner_tenant_id,
            "event_kind": msg.event_kind,
            "language": msg.language,
            "subject": msg.rendered.subject,
            "text": msg.rendered.body,
            "acknowledge_url": msg.ack_url,
            "items": msg.items,
        }
    })
}

/// A Teams Workflows ("When a Teams webhook request is received") message carrying one
/// Adaptive Card; Teams renders the card instead of raw text.
pub fn teams(msg: &Message<'_>) -> Value {
    let mut body = vec![
        json!({"type": "TextBlock", "text": msg.rendered.subject, "weight": "Bolder",
               "size": "Medium", "wrap": true}),
        json!({"type": "TextBlock", "text": msg.rendered.body, "wrap": true}),
    ];
    if !msg.items.is_empty() {
        let facts: Vec<Value> = msg
            .items
            .iter()
            .take(10)
            .map(|i| json!({"title": i.severity_name, "value": i.title}))
            .collect();
        body.push(json!({"type": "FactSet", "facts": facts}));
    }
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "lang": msg.language,
        "body": body,
    });
    if let Some(url) = msg.ack_url {
        card["actions"] = json!([{"type": "Action.OpenUrl", "title": "Acknowledge", "url": url}]);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }]
    })
}

/// Slack Block Kit for an incoming webhook; `text` is the notification fallback.
pub fn slack(msg: &Message<'_>) -> Value {
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text",
               "text": truncate(&msg.rendered.subject, 150), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn",
               "text": truncate(&slack_escape(&msg.rendered.body), 3000)}}),
    ];
    if let Some(url) = msg.ack_url {
        blocks.push(json!({"type": "actions", "elements": [{
            "type": "button", "style": "primary", "action_id": "palisade_acknowledge",
            "text": {"type": "plain_text", "text": "Acknowledge"}, "url": url}]}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
        "text": slack_escape(&format!("Palisade · {}", msg.partner_tenant_id))}]}));
    json!({"text": truncate(&msg.rendered.subject, 3000), "blocks": blocks})
}

/// Slack's mrkdwn needs only these three escaped.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One short text: SMS is read on a phone at 3 a.m.; the subject and the link are what count.
pub fn sms(msg: &Message<'_>) -> String {
    match msg.ack_url {
        Some(url) => format!("{} {}", truncate(&msg.rendered.subject, 200), url),
        None => truncate(&msg.rendered.subject, 300),
    }
}

/// PagerDuty Events API v2, without `routing_key` (a secret, added at send time). The
/// alert fingerprint is the `dedup_key`, so PagerDuty folds repeats into one incident and a
/// resolve closes it.
pub fn pagerduty(msg: &Message<'_>) -> Value {
    let item = msg.items.first();
    let firing = item.is_none_or(|i| i.firing);
    let severity = match item.map(|i| i.severity).unwrap_or(0) {
        4 => "critical",
        3 => "error",
        2 => "warning",
        _ => "info",
    };
    let mut event = json!({
        "event_action": if firing { "trigger" } else { "resolve" },
        "dedup_key": item.map(|i| i.fingerprint.as_str()).unwrap_or(msg.event_kind),
        "payload": {
            "summary": truncate(&msg.rendered.subject, 1024),
            "source": "palisade",
            "severity": severity,
            "component": item.map(|i| i.customer_tenant_id.as_str()).unwrap_or(""),
            "group": msg.partner_tenant_id,
            "class": item.map(|i| i.alert_type.as_str()).unwrap_or(""),
            "custom_details": {"text": msg.rendered.body, "items": msg.items},
        },
    });
    if let Some(url) = msg.ack_url {
        event["links"] = json!([{"href": url, "text": "Acknowledge in Palisade"}]);
    }
    event
}
