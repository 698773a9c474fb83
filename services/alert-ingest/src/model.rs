//! One alert model for both of Microsoft's shapes, its stable fingerprint, and the lifecycle
//! rules that decide what an observation changes.
//!
//! Everything here is pure: no I/O, no clock. The store applies what [`merge`] decides, inside
//! one transaction with the events it implies.
//!
//! **Fingerprint.** One detection reaches us through Graph (id `7c1e…`) and through legacy
//! fraudEvents (id `{subscriptionId}_{entityId}`) with different ids, and again through the
//! webhook (which only points at fraudEvents). What both shapes share is the partner, the
//! customer, the Azure subscription, the alert type (compared case-insensitively) and the
//! moment the activity was first observed. The fingerprint is SHA-256 of those; when a shape
//! lacks one of them, the provider's own id stands in, so the alert still dedups within its
//! source. The alert id is derived from the fingerprint, so two replicas that see the same
//! alert at once write the same row.

use std::collections::BTreeMap;

use palisade_contracts::{
    alerts::v1::{
        AffectedResource, Alert, AlertSource, AlertStatus, AlertTransition, Resolution,
        WriteBackState,
    },
    common::v1::Severity,
    time::{from_millis, to_millis},
};
use palisade_microsoft::{
    graph_alerts::{ActivityLog, SecurityAlert},
    partner_center::FraudEvent,
};
use sha2::{Digest, Sha256};

/// The actor recorded when Microsoft (or the partner, through Microsoft's portal) changed an
/// alert and did not say who.
pub const ACTOR_MICROSOFT: &str = "microsoft";

/// One alert as one source reported it, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub partner_tenant_id: String,
    pub source: AlertSource,
    pub provider_id: String,
    pub fingerprint: String,
    pub alert_type: String,
    pub display_name: String,
    pub description: String,
    pub status: AlertStatus,
    pub severity: Severity,
    pub confidence_level: String,
    pub customer_tenant_id: String,
    pub customer_name: String,
    pub subscription_id: String,
    pub subscription_name: String,
    pub reseller_tenant_id: String,
    pub reseller_name: String,
    pub catalog_offer_id: String,
    pub hit_count: u64,
    pub is_test: bool,
    pub affected_resources: Vec<AffectedResource>,
    pub additional_details: BTreeMap<String, String>,
    /// Unix ms; 0 when the source did not say.
    pub detected_at: i64,
    pub first_observed_at: i64,
    pub last_observed_at: i64,
    pub resolved_at: Option<i64>,
    pub resolution: Resolution,
    pub resolved_by: String,
    /// Microsoft's activity log, oldest first.
    pub activity: Vec<AlertTransition>,
    /// The payload as received, for audit.
    pub raw: String,
}

pub fn parse_status(value: &str) -> Option<AlertStatus> {
    match value.trim().to_ascii_lowercase().as_str() {
        "active" | "new" => Some(AlertStatus::Active),
        "investigating" | "inprogress" => Some(AlertStatus::Investigating),
        "resolved" | "resolve" | "closed" => Some(AlertStatus::Resolved),
        _ => None,
    }
}

pub fn parse_severity(value: &str) -> Severity {
    match value.trim().to_ascii_lowercase().as_str() {
        "informational" | "info" => Severity::Informational,
        "low" => Severity::Low,
        "medium" | "moderate" => Severity::Medium,
        "high" | "critical" => Severity::High,
        _ => Severity::Unspecified,
    }
}

pub fn parse_resolution(value: &str) -> Resolution {
    match value.trim().to_ascii_lowercase().as_str() {
        "legitimate" => Resolution::Legitimate,
        "fraud" => Resolution::Fraud,
        "ignore" => Resolution::Ignore,
        _ => Resolution::Unspecified,
    }
}

/// Graph's spelling of a resolution (`resolvedReason`).
pub fn graph_reason(resolution: Resolution) -> Option<&'static str> {
    match resolution {
        Resolution::Legitimate => Some("legitimate"),
        Resolution::Fraud => Some("fraud"),
        Resolution::Ignore => Some("ignore"),
        Resolution::Unspecified => None,
    }
}

/// Partner Center's spelling (`ResolvedReason`), PascalCase as its examples send it.
pub fn partner_center_reason(resolution: Resolution) -> Option<&'static str> {
    match resolution {
        Resolution::Legitimate => Some("Legitimate"),
        Resolution::Fraud => Some("Fraud"),
        Resolution::Ignore => Some("Ignore"),
        Resolution::Unspecified => None,
    }
}

fn millis(t: Option<chrono::DateTime<chrono::Utc>>) -> i64 {
    t.map(|t| t.timestamp_millis()).unwrap_or(0)
}

fn activity(logs: &[ActivityLog]) -> Vec<AlertTransition> {
    logs.iter()
        .map(|l| AlertTransition {
            from_status: parse_status(&l.status_from).unwrap_or(AlertStatus::Unspecified) as i32,
            to_status: parse_status(&l.status_to).unwrap_or(AlertStatus::Unspecified) as i32,
            actor: if l.updated_by.is_empty() {
                ACTOR_MICROSOFT.to_owned()
            } else {
                l.updated_by.clone()
            },
            reason: "microsoft activity log".to_owned(),
            at: l
                .updated_date_time
                .map(|t| from_millis(t.timestamp_millis())),
        })
        .collect()
}

/// The stable identity of an alert (see the module doc).
pub fn fingerprint(
    partner_tenant_id: &str,
    customer_tenant_id: &str,
    subscription_id: &str,
    alert_type: &str,
    first_observed_at: i64,
    source: AlertSource,
    provider_id: &str,
) -> String {
    let mut hash = Sha256::new();
    let partner = partner_tenant_id.to_ascii_lowercase();
    if !customer_tenant_id.is_empty()
        && !subscription_id.is_empty()
        && !alert_type.is_empty()
        && first_observed_at > 0
    {
        hash.update(
            format!(
                "alert/v1|{partner}|{}|{}|{}|{first_observed_at}",
                customer_tenant_id.to_ascii_lowercase(),
                subscription_id.to_ascii_lowercase(),
                alert_type.to_ascii_lowercase(),
            )
            .as_bytes(),
        );
    } else {
        hash.update(format!("alert/v1|{partner}|{}|{provider_id}", source as i32).as_bytes());
    }
    hex::encode(hash.finalize())
}

/// The alert id a fingerprint names: UUID-shaped, derived, so concurrent writers agree.
pub fn alert_id_for(fingerprint: &str) -> String {
    let bytes = hex::decode(&fingerprint[..32.min(fingerprint.len())]).unwrap_or_default();
    let mut raw = [0_u8; 16];
    raw[..bytes.len().min(16)].copy_from_slice(&bytes[..bytes.len().min(16)]);
    uuid::Builder::from_custom_bytes(raw)
        .into_uuid()
        .to_string()
}

/// The fingerprint of the `slot`-th distinct alert that shares `fingerprint`.
///
/// Two alerts can agree on everything the fingerprint covers and still be two alerts: Microsoft
/// gives each its own id, and a burst of one type on one subscription can carry the same first
/// observation (the documented examples are whole seconds). Each such alert gets a slot of its
/// own. Slot 0 is the fingerprint itself, so alerts stored before slots existed keep their ids.
pub fn slot_fingerprint(fingerprint: &str, slot: usize) -> String {
    if slot == 0 {
        return fingerprint.to_owned();
    }
    hex::encode(Sha256::digest(format!("{fingerprint}#{slot}").as_bytes()))
}

/// How well an observation fits a stored alert that shares its fingerprint; higher fits better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Affinity {
    /// Another alert of the same source holds the row. Merging would overwrite its id and lose
    /// one of the two, so the observation never goes there.
    Taken,
    /// The row lacks this source's id, but the two name different affected resources.
    OtherResource,
    /// The row lacks this source's id; resources do not tell (one side names none).
    Free,
    /// The row lacks this source's id and names one of the observation's affected resources.
    SameResource,
    /// The row is this very alert (same source, same id).
    Same,
}

/// See [`Affinity`]. A store puts an observation in the stored slot with the highest affinity
/// above `Taken` (the lowest slot on a tie), and in a new slot when every slot is taken.
pub fn affinity(alert: &Alert, obs: &Observation) -> Affinity {
    let held = match obs.source {
        AlertSource::Graph => alert.graph_alert_id.as_str(),
        AlertSource::FraudEvents => alert.fraud_event_id.as_str(),
        AlertSource::Unspecified => alert.provider_alert_id.as_str(),
    };
    if held == obs.provider_id {
        return Affinity::Same;
    }
    if !held.is_empty() {
        return Affinity::Taken;
    }
    if alert.affected_resources.is_empty() || obs.affected_resources.is_empty() {
        return Affinity::Free;
    }
    let shared = alert.affected_resources.iter().any(|r| {
        !r.resource_id.is_empty()
            && obs
                .affected_resources
                .iter()
                .any(|o| o.resource_id.eq_ignore_ascii_case(&r.resource_id))
    });
    if shared {
        Affinity::SameResource
    } else {
        Affinity::OtherResource
    }
}

/// Normalises one item of Graph's list.
pub fn from_graph(partner_tenant_id: &str, raw: serde_json::Value) -> Result<Observation, String> {
    let text = raw.to_string();
    from_graph_with_text(partner_tenant_id, raw, text).map_err(|(reason, _)| reason)
}

/// [`from_graph`] when the caller already has the payload's text. The text moves into the
/// observation (no copy of a kilobyte per alert); a refusal hands it back with the reason, for
/// quarantine.
pub fn from_graph_with_text(
    partner_tenant_id: &str,
    raw: serde_json::Value,
    text: String,
) -> Result<Observation, (String, String)> {
    let a = match SecurityAlert::from_value(raw) {
        Ok(a) => a,
        Err(e) => return Err((format!("graph alert does not parse: {e}"), text)),
    };
    if a.id.trim().is_empty() {
        return Err(("graph alert without an id".into(), text));
    }
    let status = parse_status(&a.status).unwrap_or(AlertStatus::Active);
    let first = millis(a.first_observed_date_time);
    let fp = fingerprint(
        partner_tenant_id,
        &a.customer_tenant_id,
        &a.subscription_id,
        &a.alert_type,
        first,
        AlertSource::Graph,
        &a.id,
    );
    let resolved = status == AlertStatus::Resolved;
    Ok(Observation {
        partner_tenant_id: partner_tenant_id.to_owned(),
        source: AlertSource::Graph,
        provider_id: a.id,
        fingerprint: fp,
        alert_type: a.alert_type,
        display_name: a.display_name,
        description: a.description,
        status,
        severity: parse_severity(&a.severity),
        confidence_level: a.confidence_level.to_ascii_lowercase(),
        customer_tenant_id: a.customer_tenant_id,
        customer_name: String::new(),
        subscription_id: a.subscription_id,
        subscription_name: String::new(),
        reseller_tenant_id: a.value_added_reseller_tenant_id,
        reseller_name: String::new(),
        catalog_offer_id: a.catalog_offer_id,
        hit_count: 0,
        is_test: a.is_test,
        affected_resources: a
            .affected_resources
            .into_iter()
            .map(|r| AffectedResource {
                resource_id: r.resource_id,
                resource_type: r.resource_type,
            })
            .collect(),
        additional_details: a.additional_details,
        detected_at: millis(a.detected_date_time),
        first_observed_at: first,
        last_observed_at: millis(a.last_observed_date_time),
        resolved_at: if resolved {
            a.resolved_on_date_time.map(|t| t.timestamp_millis())
        } else {
            None
        },
        resolution: if resolved {
            parse_resolution(&a.resolved_reason)
        } else {
            Resolution::Unspecified
        },
        resolved_by: if resolved {
            a.resolved_by
        } else {
            String::new()
        },
        activity: activity(&a.activity_logs),
        raw: text,
    })
}

/// Normalises one legacy fraud event.
pub fn from_fraud_event(
    partner_tenant_id: &str,
    raw: serde_json::Value,
) -> Result<Observation, String> {
    let text = raw.to_string();
    from_fraud_event_with_text(partner_tenant_id, raw, text).map_err(|(reason, _)| reason)
}

/// [`from_fraud_event`] when the caller already has the payload's text; as
/// [`from_graph_with_text`].
pub fn from_fraud_event_with_text(
    partner_tenant_id: &str,
    raw: serde_json::Value,
    text: String,
) -> Result<Observation, (String, String)> {
    let e = match FraudEvent::from_value(raw) {
        Ok(e) => e,
        Err(err) => return Err((format!("fraud event does not parse: {err}"), text)),
    };
    if e.event_id.trim().is_empty() {
        return Err(("fraud event without an eventId".into(), text));
    }
    let status = parse_status(&e.event_status).unwrap_or(AlertStatus::Active);
    let first = millis(e.first_observed.or(e.first_occurrence));
    let subscription_id = if e.subscription_id.is_empty() {
        e.event_id.split('_').next().unwrap_or_default().to_owned()
    } else {
        e.subscription_id.clone()
    };
    let fp = fingerprint(
        partner_tenant_id,
        &e.customer_tenant_id,
        &subscription_id,
        &e.event_type,
        first,
        AlertSource::FraudEvents,
        &e.event_id,
    );
    let resolved = status == AlertStatus::Resolved;
    let display_name = if e.display_name.is_empty() {
        e.event_type.clone()
    } else {
        e.display_name
    };
    Ok(Observation {
        partner_tenant_id: partner_tenant_id.to_owned(),
        source: AlertSource::FraudEvents,
        provider_id: e.event_id,
        fingerprint: fp,
        alert_type: e.event_type,
        display_name,
        description: e.description,
        status,
        severity: parse_severity(&e.severity),
        confidence_level: e.confidence_level.to_ascii_lowercase(),
        customer_tenant_id: e.customer_tenant_id,
        customer_name: e.customer_friendly_name,
        subscription_id,
        subscription_name: e.subscription_name,
        reseller_tenant_id: e.value_added_reseller_tenant_id,
        reseller_name: e.value_added_reseller_friendly_name,
        catalog_offer_id: e.catalog_offer_id,
        hit_count: e.hit_count,
        is_test: e.is_test,
        affected_resources: e
            .affected_resources
            .into_iter()
            .map(|r| AffectedResource {
                resource_id: r.resource_id,
                resource_type: r.resource_type,
            })
            .collect(),
        additional_details: e.additional_details,
        detected_at: millis(e.event_time),
        first_observed_at: first,
        last_observed_at: millis(e.last_observed.or(e.last_occurrence)),
        resolved_at: if resolved {
            e.resolved_on.map(|t| t.timestamp_millis())
        } else {
            None
        },
        resolution: if resolved {
            parse_resolution(&e.resolved_reason)
        } else {
            Resolution::Unspecified
        },
        resolved_by: if resolved {
            e.resolved_by
        } else {
            String::new()
        },
        activity: activity(&e.activity_logs),
        raw: text,
    })
}

/// What an observation did to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Raised,
    Updated,
    Resolved,
    Reopened,
}

impl ChangeKind {
    pub fn event_kind(self) -> &'static str {
        match self {
            Self::Raised => "alert.raised",
            Self::Updated => "alert.updated",
            Self::Resolved => "alert.resolved",
            Self::Reopened => "alert.reopened",
        }
    }
}

/// The outcome of [`merge`]: the new state, and what (if anything) is worth an event.
#[derive(Debug, Clone)]
pub struct Merged {
    pub alert: Alert,
    pub change: Option<ChangeKind>,
    pub changed_fields: Vec<String>,
    /// A status transition to record in the history.
    pub transition: Option<AlertTransition>,
    /// Anything at all differs from what was stored (including raw-only details).
    pub dirty: bool,
}

fn set_if_empty(target: &mut String, value: &str, field: &'static str, changed: &mut Vec<String>) {
    if target.is_empty() && !value.is_empty() {
        *target = value.to_owned();
        changed.push(field.to_owned());
    }
}

fn ts(ms: i64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| from_millis(ms))
}

fn ms(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().map(to_millis).unwrap_or(0)
}

/// Applies an observation to the stored alert (or creates it).
///
/// Rules: observed times only move outward (first earlier, last later), hit counts only grow,
/// and a status from Microsoft is only believed when it is news:
/// - a resolution by Palisade whose write-back Microsoft has not confirmed yet is not undone
///   by Microsoft still saying "active" (that is the lag, not a reopen);
/// - a resolved alert reopens only on activity observed after it was resolved;
/// - an open alert that Microsoft reports resolved is resolved by Microsoft (nothing to write
///   back).
pub fn merge(existing: Option<&Alert>, obs: &Observation, now: i64) -> Merged {
    merge_into_slot(existing, obs, &obs.fingerprint, now)
}

/// [`merge`] into the slot whose fingerprint is `slot_fingerprint` (see [`slot_fingerprint`]):
/// a new alert takes that fingerprint and the id it names.
pub fn merge_into_slot(
    existing: Option<&Alert>,
    obs: &Observation,
    slot_fingerprint: &str,
    now: i64,
) -> Merged {
    let Some(old) = existing else {
        return create(obs, slot_fingerprint, now);
    };
    let mut a = old.clone();
    let mut changed = Vec::new();
    match obs.source {
        AlertSource::Graph if a.graph_alert_id != obs.provider_id => {
            a.graph_alert_id = obs.provider_id.clone();
            changed.push("graph_alert_id".to_owned());
        }
        AlertSource::FraudEvents if a.fraud_event_id != obs.provider_id => {
            a.fraud_event_id = obs.provider_id.clone();
            changed.push("fraud_event_id".to_owned());
        }
        _ => {}
    }
    let last = ms(&a.last_observed_at);
    if obs.last_observed_at > last {
        a.last_observed_at = ts(obs.last_observed_at);
        changed.push("last_observed_at".to_owned());
    }
    let first = ms(&a.first_observed_at);
    if obs.first_observed_at > 0 && (first == 0 || obs.first_observed_at < first) {
        a.first_observed_at = ts(obs.first_observed_at);
        changed.push("first_observed_at".to_owned());
    }
    if ms(&a.detected_at) == 0 && obs.detected_at > 0 {
        a.detected_at = ts(obs.detected_at);
        changed.push("detected_at".to_owned());
    }
    if obs.hit_count > a.hit_count {
        a.hit_count = obs.hit_count;
        changed.push("hit_count".to_owned());
    }
    if obs.severity != Severity::Unspecified && a.severity != obs.severity as i32 {
        a.severity = obs.severity as i32;
        changed.push("severity".to_owned());
    }
    for (target, value, field) in [
        (&mut a.display_name, &obs.display_name, "display_name"),
        (&mut a.description, &obs.description, "description"),
        (
            &mut a.confidence_level,
            &obs.confidence_level,
            "confidence_level",
        ),
        (&mut a.customer_name, &obs.customer_name, "customer_name"),
        (
            &mut a.subscription_name,
            &obs.subscription_name,
            "subscription_name",
        ),
        (
            &mut a.reseller_tenant_id,
            &obs.reseller_tenant_id,
            "reseller_tenant_id",
        ),
        (&mut a.reseller_name, &obs.reseller_name, "reseller_name"),
        (
            &mut a.catalog_offer_id,
            &obs.catalog_offer_id,
            "catalog_offer_id",
        ),
    ] {
        set_if_empty(target, value, field, &mut changed);
    }
    if a.affected_resources.is_empty() && !obs.affected_resources.is_empty() {
        a.affected_resources = obs.affected_resources.clone();
        changed.push("affected_resources".to_owned());
    }
    for (k, v) in &obs.additional_details {
        if a.additional_details.get(k) != Some(v) {
            a.additional_details.insert(k.clone(), v.clone());
            if !changed.iter().any(|c| c == "additional_details") {
                changed.push("additional_details".to_owned());
            }
        }
    }
    if obs.activity.len() > a.history.len() {
        a.history = obs.activity.clone();
    }

    let old_status = AlertStatus::try_from(old.status).unwrap_or(AlertStatus::Active);
    let mut change = None;
    let mut transition = None;
    let transition_to = |to: AlertStatus, actor: &str, reason: &str, at: i64| AlertTransition {
        from_status: old_status as i32,
        to_status: to as i32,
        actor: actor.to_owned(),
        reason: reason.to_owned(),
        at: Some(from_millis(at)),
    };
    match (old_status, obs.status) {
        (AlertStatus::Resolved, AlertStatus::Active | AlertStatus::Investigating) => {
            let resolved_at = ms(&a.resolved_at);
            let awaiting_write_back = a.write_back_state == WriteBackState::Pending as i32
                || a.write_back_state == WriteBackState::Failed as i32;
            if !awaiting_write_back && obs.last_observed_at > resolved_at {
                a.status = obs.status as i32;
                a.resolution = Resolution::Unspecified as i32;
                a.resolved_at = None;
                a.resolved_by.clear();
                a.resolution_note.clear();
                a.write_back_state = WriteBackState::Unspecified as i32;
                a.write_back_error.clear();
                a.write_back_attempts = 0;
                a.write_back_confirmed_at = None;
                change = Some(ChangeKind::Reopened);
                transition = Some(transition_to(
                    obs.status,
                    ACTOR_MICROSOFT,
                    "new activity after resolution",
                    now,
                ));
            }
        }
        (AlertStatus::Active | AlertStatus::Investigating, AlertStatus::Resolved) => {
            let at = obs.resolved_at.unwrap_or(now);
            a.status = AlertStatus::Resolved as i32;
            a.resolution = obs.resolution as i32;
            a.resolved_at = Some(from_millis(at));
            a.resolved_by = if obs.resolved_by.is_empty() {
                ACTOR_MICROSOFT.to_owned()
            } else {
                obs.resolved_by.clone()
            };
            a.write_back_state = WriteBackState::NotNeeded as i32;
            change = Some(ChangeKind::Resolved);
            let reason = graph_reason(obs.resolution).unwrap_or("resolved");
            transition = Some(transition_to(
                AlertStatus::Resolved,
                &a.resolved_by.clone(),
                &format!("resolved at Microsoft as {reason}"),
                at,
            ));
        }
        (AlertStatus::Active, AlertStatus::Investigating)
        | (AlertStatus::Investigating, AlertStatus::Active)
            if obs.last_observed_at >= last =>
        {
            a.status = obs.status as i32;
            changed.push("status".to_owned());
            transition = Some(transition_to(
                obs.status,
                ACTOR_MICROSOFT,
                "status at Microsoft",
                now,
            ));
        }
        _ => {}
    }
    let dirty = change.is_some() || !changed.is_empty();
    if change.is_none() && !changed.is_empty() {
        // Only ids or times that no person cares about changed: store them, raise no event.
        let silent = [
            "graph_alert_id",
            "fraud_event_id",
            "detected_at",
            "first_observed_at",
        ];
        if changed.iter().any(|c| !silent.contains(&c.as_str())) {
            change = Some(ChangeKind::Updated);
        }
    }
    if dirty {
        a.updated_at = Some(from_millis(now));
    }
    Merged {
        alert: a,
        change,
        changed_fields: changed,
        transition,
        dirty,
    }
}

fn create(obs: &Observation, fingerprint: &str, now: i64) -> Merged {
    let resolved = obs.status == AlertStatus::Resolved;
    let alert = Alert {
        alert_id: alert_id_for(fingerprint),
        partner_tenant_id: obs.partner_tenant_id.clone(),
        fingerprint: fingerprint.to_owned(),
        source: obs.source as i32,
        provider_alert_id: obs.provider_id.clone(),
        alert_type: obs.alert_type.clone(),
        display_name: obs.display_name.clone(),
        description: obs.description.clone(),
        status: obs.status as i32,
        severity: obs.severity as i32,
        confidence_level: obs.confidence_level.clone(),
        customer_tenant_id: obs.customer_tenant_id.clone(),
        customer_name: obs.customer_name.clone(),
        customer_domain: String::new(),
        subscription_id: obs.subscription_id.clone(),
        subscription_name: obs.subscription_name.clone(),
        reseller_tenant_id: obs.reseller_tenant_id.clone(),
        reseller_name: obs.reseller_name.clone(),
        reseller_mpn_id: String::new(),
        catalog_offer_id: obs.catalog_offer_id.clone(),
        hit_count: obs.hit_count,
        is_test: obs.is_test,
        affected_resources: obs.affected_resources.clone(),
        additional_details: obs.additional_details.clone().into_iter().collect(),
        detected_at: ts(obs.detected_at),
        first_observed_at: ts(obs.first_observed_at),
        last_observed_at: ts(obs.last_observed_at),
        resolved_at: if resolved {
            Some(from_millis(obs.resolved_at.unwrap_or(now)))
        } else {
            None
        },
        resolution: obs.resolution as i32,
        resolved_by: if resolved && obs.resolved_by.is_empty() {
            ACTOR_MICROSOFT.to_owned()
        } else {
            obs.resolved_by.clone()
        },
        resolution_note: String::new(),
        write_back_state: if resolved {
            WriteBackState::NotNeeded as i32
        } else {
            WriteBackState::Unspecified as i32
        },
        created_at: Some(from_millis(now)),
        updated_at: Some(from_millis(now)),
        history: obs.activity.clone(),
        graph_alert_id: if obs.source == AlertSource::Graph {
            obs.provider_id.clone()
        } else {
            String::new()
        },
        fraud_event_id: if obs.source == AlertSource::FraudEvents {
            obs.provider_id.clone()
        } else {
            String::new()
        },
        write_back_error: String::new(),
        write_back_attempts: 0,
        write_back_confirmed_at: None,
        enriched: false,
    };
    Merged {
        transition: Some(AlertTransition {
            from_status: AlertStatus::Unspecified as i32,
            to_status: obs.status as i32,
            actor: ACTOR_MICROSOFT.to_owned(),
            reason: format!("first seen through {}", source_name(obs.source)),
            at: Some(from_millis(now)),
        }),
        alert,
        change: Some(ChangeKind::Raised),
        changed_fields: Vec::new(),
        dirty: true,
    }
}

pub fn source_name(source: AlertSource) -> &'static str {
    match source {
        AlertSource::Graph => "graph",
        AlertSource::FraudEvents => "fraud_events",
        AlertSource::Unspecified => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph_value(status: &str) -> serde_json::Value {
        serde_json::json!({
            "id": "g-1", "alertType": "networkConnectionsToCryptoMiningPools", "status": status,
            "severity": "high", "customerTenantId": "C", "subscriptionId": "S",
            "firstObservedDateTime": "2025-03-04T08:55:02.1230000Z",
            "lastObservedDateTime": "2025-03-04T09:10:31Z", "isTest": "false",
            "resolvedReason": if status == "resolved" { "fraud" } else { "" },
            "resolvedOnDateTime": if status == "resolved" { "2025-03-05T00:00:00Z" } else { "" }
        })
    }

    fn fraud_value() -> serde_json::Value {
        serde_json::json!({
            "eventId": "S_e-1", "eventType": "NetworkConnectionsToCryptoMiningPools",
            "eventStatus": "Active", "customerTenantId": "c", "subscriptionId": "s",
            "firstObserved": "2025-03-04T08:55:02.123", "lastObserved": "2025-03-04T09:20:00",
            "hitCount": "4", "IsTest": "false", "severity": "High",
            "resolvedOn": "9999-12-31T23:59:59.997", "resolvedReason": "None",
            "customerFriendlyName": "Contoso"
        })
    }

    #[test]
    fn both_shapes_of_one_detection_share_a_fingerprint() {
        let g = from_graph("P", graph_value("active")).unwrap();
        let f = from_fraud_event("p", fraud_value()).unwrap();
        assert_eq!(g.fingerprint, f.fingerprint);
        assert_ne!(g.provider_id, f.provider_id);
        assert_eq!(f.hit_count, 4);
    }

    #[test]
    fn an_alert_of_the_same_source_never_joins_a_row_another_holds() {
        let g = from_graph("P", graph_value("active")).unwrap();
        let f = from_fraud_event("P", fraud_value()).unwrap();
        let stored = merge(None, &g, 1).alert;
        assert_eq!(affinity(&stored, &g), Affinity::Same);
        assert_eq!(affinity(&stored, &f), Affinity::Free);
        let mut other = graph_value("active");
        other["id"] = "g-2".into();
        let other = from_graph("P", other).unwrap();
        assert_eq!(other.fingerprint, g.fingerprint);
        assert_eq!(affinity(&stored, &other), Affinity::Taken);
        // A second alike goes to a slot of its own, with an id of its own.
        let second = merge_into_slot(None, &other, &slot_fingerprint(&other.fingerprint, 1), 2);
        assert_ne!(second.alert.alert_id, stored.alert_id);
        assert_eq!(slot_fingerprint(&g.fingerprint, 0), g.fingerprint);
    }

    #[test]
    fn a_second_source_updates_and_keeps_both_ids() {
        let g = from_graph("P", graph_value("active")).unwrap();
        let f = from_fraud_event("P", fraud_value()).unwrap();
        let first = merge(None, &g, 1);
        assert_eq!(first.change, Some(ChangeKind::Raised));
        let second = merge(Some(&first.alert), &f, 2);
        assert_eq!(second.change, Some(ChangeKind::Updated));
        assert!(second.changed_fields.contains(&"hit_count".to_owned()));
        assert_eq!(second.alert.graph_alert_id, "g-1");
        assert_eq!(second.alert.fraud_event_id, "S_e-1");
        assert_eq!(second.alert.customer_name, "Contoso");
        // The same observation again changes nothing.
        let third = merge(Some(&second.alert), &f, 3);
        assert!(third.change.is_none() && !third.dirty);
    }

    #[test]
    fn microsoft_resolution_and_reopen() {
        let open = merge(None, &from_graph("P", graph_value("active")).unwrap(), 1).alert;
        let resolved = merge(
            Some(&open),
            &from_graph("P", graph_value("resolved")).unwrap(),
            2,
        );
        assert_eq!(resolved.change, Some(ChangeKind::Resolved));
        assert_eq!(resolved.alert.resolution, Resolution::Fraud as i32);
        assert_eq!(
            resolved.alert.write_back_state,
            WriteBackState::NotNeeded as i32
        );
        // A stale "active" read (nothing observed since the resolution) is not a reopen.
        let stale = merge(
            Some(&resolved.alert),
            &from_graph("P", graph_value("active")).unwrap(),
            3,
        );
        assert!(stale.change.is_none());
        // New activity after the resolution is.
        let mut later = from_graph("P", graph_value("active")).unwrap();
        later.last_observed_at = ms(&resolved.alert.resolved_at) + 1000;
        let reopened = merge(Some(&resolved.alert), &later, 4);
        assert_eq!(reopened.change, Some(ChangeKind::Reopened));
        assert_eq!(reopened.alert.status, AlertStatus::Active as i32);
    }

    #[test]
    fn our_pending_resolution_is_not_undone_by_microsoft_lagging() {
        let mut ours = merge(None, &from_graph("P", graph_value("active")).unwrap(), 1).alert;
        ours.status = AlertStatus::Resolved as i32;
        ours.resolved_at = Some(from_millis(1));
        ours.write_back_state = WriteBackState::Pending as i32;
        let mut later = from_graph("P", graph_value("active")).unwrap();
        later.last_observed_at += 10_000_000;
        let m = merge(Some(&ours), &later, 5);
        assert_eq!(m.alert.status, AlertStatus::Resolved as i32);
        assert_ne!(m.change, Some(ChangeKind::Reopened));
    }

    #[test]
    fn unknown_types_are_kept_verbatim_and_garbage_is_refused() {
        let mut v = graph_value("active");
        v["alertType"] = "BrandNewThing_Preview".into();
        assert_eq!(
            from_graph("P", v).unwrap().alert_type,
            "BrandNewThing_Preview"
        );
        assert!(from_graph("P", serde_json::json!({"alertType": "x"})).is_err());
        assert!(from_fraud_event("P", serde_json::json!([1, 2])).is_err());
    }
}
