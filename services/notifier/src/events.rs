//! Turns queue envelopes into notification items: one alert, token health change, compliance
//! finding or relationship change, with the stable fingerprint that identifies it end to end.
//!
//! This module only reads events; it never decides who hears about them (see `routing`).

use palisade_contracts::{
    alerts::v1::{AlertSource, AlertStatus},
    common::v1::Severity,
    compliance::v1::{CheckKind, CheckStatus},
    events::v1::{
        AlertRaised, AlertReopened, AlertResolved, AlertUpdated, ComplianceChanged,
        DapRelationshipTerminated, Envelope, GdapRelationshipChanged, TokenHealthChanged,
    },
    tokens::v1::TokenHealthState,
};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::error::{NotifierError, Result};

pub const ALERT_RAISED: &str = "alert.raised";
pub const ALERT_UPDATED: &str = "alert.updated";
pub const ALERT_RESOLVED: &str = "alert.resolved";
pub const ALERT_REOPENED: &str = "alert.reopened";
pub const TOKEN_HEALTH_CHANGED: &str = "token.health_changed";
pub const COMPLIANCE_CHANGED: &str = "compliance.changed";
pub const GDAP_CHANGED: &str = "gdap.relationship_changed";
pub const DAP_TERMINATED: &str = "dap.relationship_terminated";

/// What kind of thing an item is, which decides the default audience and the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Azure fraud and anomaly alerts: Microsoft sends these to admin agents.
    FraudAlert,
    TokenHealth,
    Compliance,
    Gdap,
    Dap,
}

impl Category {
    pub fn template(self) -> &'static str {
        match self {
            Self::FraudAlert => "alert",
            Self::TokenHealth => "token_health",
            Self::Compliance => "compliance",
            Self::Gdap => "gdap",
            Self::Dap => "dap",
        }
    }
}

/// One notifiable thing as groups, templates and payloads see it. Stored as JSON in the
/// group, so a flush renders without re-reading the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemSummary {
    pub event_id: String,
    pub kind: String,
    pub category: Category,
    pub fingerprint: String,
    /// Still a problem (`false` once resolved, healthy again or passing).
    pub firing: bool,
    /// A notice rather than a condition (relationship changes): told once, never repeated.
    #[serde(default)]
    pub one_shot: bool,
    /// Incidents Microsoft would send to the security contact: revoked or unusable partner
    /// tokens, failing critical compliance checks, terminated relationships.
    pub incident: bool,
    pub severity: i32,
    pub severity_name: String,
    pub title: String,
    pub detail: String,
    pub alert_type: String,
    pub customer_tenant_id: String,
    pub customer_name: String,
    pub subscription_id: String,
    pub link: String,
    pub occurred_at: i64,
}

pub fn severity_name(severity: i32) -> &'static str {
    match Severity::try_from(severity).unwrap_or(Severity::Unspecified) {
        Severity::High => "high",
        Severity::Medium => "medium",
        Severity::Low => "low",
        Severity::Informational => "informational",
        Severity::Unspecified => "unspecified",
    }
}

fn decode<M: Message + Default>(envelope: &Envelope) -> Result<M> {
    M::decode(envelope.payload.as_slice())
        .map_err(|e| NotifierError::invalid(format!("payload of {}: {e}", envelope.kind)))
}

/// `Ok(None)` for kinds this service does not consume (for example `alert.write_back`).
pub fn item_from_envelope(envelope: &Envelope) -> Result<Option<ItemSummary>> {
    let occurred_at = envelope
        .occurred_at
        .as_ref()
        .map(palisade_contracts::time::to_millis)
        .unwrap_or_default();
    let kind = envelope.kind.as_str();
    let mut item = match kind {
        ALERT_RAISED | ALERT_UPDATED | ALERT_RESOLVED | ALERT_REOPENED => {
            let alert = match kind {
                ALERT_RAISED => decode::<AlertRaised>(envelope)?.alert,
                ALERT_UPDATED => decode::<AlertUpdated>(envelope)?.alert,
                ALERT_RESOLVED => decode::<AlertResolved>(envelope)?.alert,
                _ => decode::<AlertReopened>(envelope)?.alert,
            }
            .ok_or_else(|| NotifierError::invalid(format!("{kind} without an alert")))?;
            if alert.fingerprint.is_empty() {
                return Err(NotifierError::invalid("alert without a fingerprint"));
            }
            let firing = kind != ALERT_RESOLVED && alert.status() != AlertStatus::Resolved;
            let source = match alert.source() {
                AlertSource::FraudEvents => "fraudEvents",
                _ => "Graph",
            };
            ItemSummary {
                event_id: envelope.message_id.clone(),
                kind: kind.to_owned(),
                category: Category::FraudAlert,
                fingerprint: alert.fingerprint.clone(),
                firing,
                one_shot: false,
                incident: false,
                severity: alert.severity,
                severity_name: String::new(),
                title: if alert.display_name.is_empty() {
                    alert.alert_type.clone()
                } else {
                    alert.display_name.clone()
                },
                detail: format!("{} ({source})", alert.description),
                alert_type: alert.alert_type.clone(),
                customer_tenant_id: alert.customer_tenant_id.clone(),
                customer_name: alert.customer_name.clone(),
                subscription_id: alert.subscription_id.clone(),
                link: String::new(),
                occurred_at,
            }
        }
        TOKEN_HEALTH_CHANGED => {
            let e: TokenHealthChanged = decode(envelope)?;
            let state = e.state();
            let firing = state != TokenHealthState::Healthy;
            let incident = e.customer_tenant_id.is_empty()
                && matches!(
                    state,
                    TokenHealthState::Revoked
                        | TokenHealthState::RevokedByOperator
                        | TokenHealthState::Expired
                        | TokenHealthState::MfaRequired
                        | TokenHealthState::BlockedByPolicy
                );
            let severity = if e.severity != 0 {
                e.severity
            } else if incident {
                Severity::High as i32
            } else {
                Severity::Medium as i32
            };
            ItemSummary {
                event_id: envelope.message_id.clone(),
                kind: kind.to_owned(),
                category: Category::TokenHealth,
                fingerprint: format!("token:{}:{}", e.consent_id, e.customer_tenant_id),
                firing,
                one_shot: false,
                incident,
                severity,
                severity_name: String::new(),
                title: state
                    .as_str_name()
                    .trim_start_matches("TOKEN_HEALTH_STATE_")
                    .to_owned(),
                detail: [e.detail.as_str(), e.remediation.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
                alert_type: String::new(),
                customer_tenant_id: e.customer_tenant_id.clone(),
                customer_name: String::new(),
                subscription_id: String::new(),
                link: e.reconsent_url.clone(),
                occurred_at,
            }
        }
        COMPLIANCE_CHANGED => {
            let e: ComplianceChanged = decode(envelope)?;
            let finding = e.finding.clone().unwrap_or_default();
            let status = e.status();
            let firing = matches!(status, CheckStatus::Fail | CheckStatus::Warn);
            let severity = if finding.severity != 0 {
                finding.severity
            } else if status == CheckStatus::Fail {
                Severity::High as i32
            } else {
                Severity::Low as i32
            };
            let check = CheckKind::try_from(e.check).unwrap_or(CheckKind::Unspecified);
            ItemSummary {
                event_id: envelope.message_id.clone(),
                kind: kind.to_owned(),
                category: Category::Compliance,
                fingerprint: format!(
                    "compliance:{}:{}",
                    check
                        .as_str_name()
                        .trim_start_matches("CHECK_KIND_")
                        .to_lowercase(),
                    finding.customer_tenant_id
                ),
                firing,
                one_shot: false,
                incident: status == CheckStatus::Fail && severity >= Severity::High as i32,
                severity,
                severity_name: String::new(),
                title: if finding.title.is_empty() {
                    check.as_str_name().to_owned()
                } else {
                    finding.title.clone()
                },
                detail: [finding.summary.as_str(), finding.remediation.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
                alert_type: String::new(),
                customer_tenant_id: finding.customer_tenant_id.clone(),
                customer_name: String::new(),
                subscription_id: String::new(),
                link: finding.doc_url.clone(),
                occurred_at,
            }
        }
        GDAP_CHANGED => {
            let e: GdapRelationshipChanged = decode(envelope)?;
            ItemSummary {
                event_id: envelope.message_id.clone(),
                kind: kind.to_owned(),
                category: Category::Gdap,
                fingerprint: format!("gdap:{}:{}", e.relationship_id, e.event_name),
                firing: true,
                one_shot: true,
                incident: e.event_name.contains("terminated"),
                severity: Severity::Medium as i32,
                severity_name: String::new(),
                title: e.event_name.clone(),
                detail: e.relationship_id.clone(),
                alert_type: String::new(),
                customer_tenant_id: String::new(),
                customer_name: String::new(),
                subscription_id: String::new(),
                link: e.resource_uri.clone(),
                occurred_at,
            }
        }
        DAP_TERMINATED => {
            let e: DapRelationshipTerminated = decode(envelope)?;
            ItemSummary {
                event_id: envelope.message_id.clone(),
                kind: kind.to_owned(),
                category: Category::Dap,
                fingerprint: format!("dap:{}:{}", e.partner_tenant_id, e.event_name),
                firing: true,
                one_shot: true,
                incident: true,
                severity: Severity::Medium as i32,
                severity_name: String::new(),
                title: e.event_name.clone(),
                detail: String::new(),
                alert_type: String::new(),
                customer_tenant_id: String::new(),
                customer_name: String::new(),
                subscription_id: String::new(),
                link: String::new(),
                occurred_at,
            }
        }
        _ => return Ok(None),
    };
    item.severity_name = severity_name(item.severity).to_owned();
    Ok(Some(item))
}
