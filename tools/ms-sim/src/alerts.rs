//! Partner security alerts. One store serves both APIs: Graph's
//! `security/partner/securityAlerts` (the current one) and Partner Center's legacy
//! `fraudEvents`, because Microsoft exposes the same detections through both. Resolving an alert
//! through either is visible through the other.
//!
//! The quirks are always on (reference §2, §3): Graph's `isTest` is sometimes the string
//! `"false"`; some alerts carry fields no documentation names; alert types include values no
//! client knows; fraudEvents carry `hitCount` as a string, `activityLogs` as a JSON-encoded
//! string, `IsTest` as a string, and timestamps without a zone.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::scenario::{Customer, Partner, Scenario, derived_id};

/// Every alert type the simulator emits: the current reference-guide types, the legacy
/// fraud-event types, the camelCase spellings of Graph's examples, and one no client knows.
pub const ALERT_TYPES: &[&str] = &[
    "CryptoMining",
    "ARM_AnomalousResourceConsumption",
    "ARM_SuspiciousOperations",
    "VM_AnomalousDeployment",
    "AzureBatch_AnomalousDeployment",
    "AzureContainerInstances_AnomalousDeployment",
    "AzureMachineLearning_AnomalousDeployment",
    "networkConnectionsToCryptoMiningPools",
    "usageAnomalyDetection",
    "ServiceHealthSecurityAdvisory",
    "MultiRegionVirtualMachineScaleSetDeploymentAnomaly",
    "VirtualMachineDeploymentAnomaly",
    "MultiRegionMachineLearningUsageAnomaly",
    "QuotaIncreaseAnomalyPreview",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    Active,
    Investigating,
    Resolved,
}

impl AlertStatus {
    pub fn graph(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Investigating => "investigating",
            Self::Resolved => "resolved",
        }
    }
    fn partner_center(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Investigating => "Investigating",
            Self::Resolved => "Resolved",
        }
    }
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "active" => Some(Self::Active),
            "investigating" => Some(Self::Investigating),
            // One documentation table spells it "Resolve".
            "resolved" | "resolve" => Some(Self::Resolved),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ActivityLog {
    pub from: AlertStatus,
    pub to: AlertStatus,
    pub by: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Alert {
    pub id: String,
    pub entity_id: String,
    pub partner_tenant: String,
    pub partner_name: String,
    pub customer_tenant: String,
    pub customer_name: String,
    pub subscription_id: String,
    pub alert_type: String,
    pub display_name: String,
    pub description: String,
    pub status: AlertStatus,
    pub severity: &'static str,
    pub confidence: &'static str,
    pub resolved_reason: Option<String>,
    pub resolved_on_ms: Option<i64>,
    pub resolved_by: Option<String>,
    pub detected_ms: i64,
    pub first_observed_ms: i64,
    pub last_observed_ms: i64,
    pub is_test: bool,
    pub hit_count: u32,
    pub reseller: Option<(String, String)>,
    pub activity_logs: Vec<ActivityLog>,
    pub additional_details: BTreeMap<String, String>,
    /// Varies the quirks per alert, deterministically.
    pub quirk: u64,
}

/// What the control API may set when raising an alert; the rest is generated.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct AlertSpec {
    /// The customer (tenant id); the partner's first customer when absent.
    pub customer_tenant_id: Option<String>,
    pub alert_type: Option<String>,
    pub severity: Option<String>,
    #[serde(default)]
    pub is_test: bool,
    /// How long before it appears the detected activity ended: Microsoft computes some
    /// detections from delayed usage data, so an alert can surface with a
    /// `lastObservedDateTime` hours in the past (its `detectedDateTime` is still now).
    /// One minute when absent.
    #[serde(default)]
    pub observed_seconds_ago: Option<u64>,
}

/// Graph's form: seven fractional digits and `Z`, e.g. `2025-03-04T09:12:44.1230000Z`.
pub fn iso_z(ms: i64) -> String {
    seven_digits(ms) + "Z"
}

/// `2025-03-04T09:12:44.1230000`: .NET's round-trip precision.
pub fn seven_digits(ms: i64) -> String {
    let time = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    format!(
        "{}.{:07}",
        time.format("%Y-%m-%dT%H:%M:%S"),
        time.timestamp_subsec_nanos() / 100
    )
}

/// Partner Center's zoneless form, e.g. `2021-12-08T00:25:45.69`.
fn zoneless(ms: i64) -> String {
    let text = DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3f")
        .to_string();
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

const HOUR_MS: i64 = 3_600_000;

impl Alert {
    /// A new alert for a customer, at `now_ms`. `n` numbers alerts within a partner.
    pub fn generate(
        scenario: &Scenario,
        partner: &Partner,
        customer: &Customer,
        n: u64,
        now_ms: i64,
        spec: &AlertSpec,
    ) -> Self {
        let alert_type = spec
            .alert_type
            .clone()
            .unwrap_or_else(|| ALERT_TYPES[n as usize % ALERT_TYPES.len()].to_owned());
        let severity = match spec
            .severity
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("low") => "low",
            Some("medium") => "medium",
            Some("informational") => "informational",
            Some(_) => "high",
            None => ["high", "medium", "low", "informational"][n as usize % 4],
        };
        let subscription_id = scenario.azure_subscription_id(customer);
        let observed_ago_ms = spec
            .observed_seconds_ago
            .map_or(60_000, |s| (s as i64).saturating_mul(1000));
        let last_observed_ms = now_ms - observed_ago_ms;
        let entity_id = derived_id(scenario.seed, &format!("{}/alert{n}", partner.tenant_id));
        let mut additional_details = BTreeMap::new();
        if alert_type.to_ascii_lowercase().contains("crypto") {
            additional_details.insert("VM_IP".into(), "[\"20.1.2.3\"]".into());
            additional_details.insert("MiningPool_IP".into(), "[\"45.9.148.21\"]".into());
            additional_details.insert("ConnectionCount".into(), format!("{}", 3 + n % 40));
            additional_details.insert(
                "CryptoCurrencyMiningPoolDomainName".into(),
                "pool.minexmr.example".into(),
            );
        } else {
            additional_details.insert("ResourceCount".into(), format!("{}", 1 + n % 9));
        }
        Self {
            id: derived_id(
                scenario.seed,
                &format!("{}/graph-alert{n}", partner.tenant_id),
            ),
            entity_id,
            partner_tenant: partner.tenant_id.clone(),
            partner_name: partner.company_name.clone(),
            customer_tenant: customer.tenant_id.clone(),
            customer_name: customer.display_name.clone(),
            subscription_id,
            display_name: format!("Action Required: {alert_type} detected"),
            description: format!(
                "Suspicious activity of type {alert_type} was detected in an Azure subscription of {}.",
                customer.display_name
            ),
            alert_type,
            status: AlertStatus::Active,
            severity,
            confidence: ["high", "medium", "low"][n as usize % 3],
            resolved_reason: None,
            resolved_on_ms: None,
            resolved_by: None,
            detected_ms: now_ms,
            first_observed_ms: last_observed_ms - 19 * 60_000,
            last_observed_ms,
            is_test: spec.is_test,
            hit_count: 1 + (n % 17) as u32,
            reseller: customer
                .reseller
                .as_ref()
                .map(|r| (r.tenant_id.clone(), r.name.clone())),
            activity_logs: Vec::new(),
            additional_details,
            quirk: n,
        }
    }

    /// The seeded history of a partner: every type, and every state and resolution.
    pub fn seeded(scenario: &Scenario, partner: &Partner, epoch_ms: i64) -> Vec<Self> {
        let count = scenario.alerts_per_partner as u64;
        (0..count)
            .filter_map(|n| {
                let customer = partner.customer(n as usize % partner.customer_count.max(1))?;
                let at = epoch_ms - (count - n) as i64 * 5 * HOUR_MS;
                let mut alert =
                    Self::generate(scenario, partner, &customer, n, at, &AlertSpec::default());
                match n % 6 {
                    3 => alert.transition(AlertStatus::Investigating, None, "admin", at + HOUR_MS),
                    4 | 5 => {
                        let reason = match (n % 6, n % 12) {
                            (5, 11) => "ignore",
                            (5, _) => "fraud",
                            _ => "legitimate",
                        };
                        let by = format!("admin@{}", partner.domain);
                        alert.transition(
                            AlertStatus::Resolved,
                            Some(reason),
                            &by,
                            at + (1 + n as i64 % 30) * HOUR_MS,
                        );
                    }
                    _ => {}
                }
                Some(alert)
            })
            .collect()
    }

    pub fn transition(&mut self, to: AlertStatus, reason: Option<&str>, by: &str, at_ms: i64) {
        self.activity_logs.push(ActivityLog {
            from: self.status,
            to,
            by: by.to_owned(),
            at_ms,
        });
        self.status = to;
        if to == AlertStatus::Resolved {
            self.resolved_reason = reason.map(str::to_ascii_lowercase);
            self.resolved_on_ms = Some(at_ms);
            self.resolved_by = Some(by.to_owned());
        } else {
            self.resolved_reason = None;
            self.resolved_on_ms = None;
            self.resolved_by = None;
        }
    }

    fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/rg-app/providers/Microsoft.Compute/virtualMachines/vm-{}",
            self.subscription_id,
            self.quirk % 7
        )
    }

    /// Graph's `partnerSecurityAlert`.
    pub fn graph_json(&self) -> Value {
        let mut value = json!({
            "id": self.id,
            "displayName": self.display_name,
            "description": self.description,
            "alertType": self.alert_type,
            "status": self.status.graph(),
            "severity": self.severity,
            "confidenceLevel": self.confidence,
            "customerTenantId": self.customer_tenant,
            "subscriptionId": self.subscription_id,
            "valueAddedResellerTenantId": self.reseller.as_ref().map(|r| r.0.clone()),
            "catalogOfferId": "MS-AZR-0017G",
            "detectedDateTime": iso_z(self.detected_ms),
            "firstObservedDateTime": iso_z(self.first_observed_ms),
            "lastObservedDateTime": iso_z(self.last_observed_ms),
            "resolvedReason": self.resolved_reason,
            "resolvedOnDateTime": self.resolved_on_ms.map(iso_z),
            "resolvedBy": self.resolved_by,
            // Quirk: the documented example carries isTest as a string.
            "isTest": if self.quirk.is_multiple_of(3) { json!(self.is_test.to_string()) } else { json!(self.is_test) },
            "affectedResources": [{"resourceId": self.resource_id(), "resourceType": "AzureResource"}],
            "activityLogs": self.activity_logs.iter().map(|l| json!({
                "statusFrom": l.from.graph(), "statusTo": l.to.graph(),
                "updatedBy": l.by, "updatedDateTime": iso_z(l.at_ms),
            })).collect::<Vec<_>>(),
            "additionalDetails": self.additional_details,
        });
        if self.quirk % 4 == 1 {
            // Quirk: fields no documentation names yet.
            value["@odata.type"] = json!("#microsoft.graph.partner.security.partnerSecurityAlert");
            value["riskScore"] = json!(self.quirk % 100);
            value["investigationState"] = json!({"stage": "triage"});
        }
        value
    }

    /// Partner Center's fraud event, in the legacy shape or with the new model's fields.
    pub fn fraud_event_json(&self, new_model: bool) -> Value {
        let open = self.status != AlertStatus::Resolved;
        let mut value = json!({
            "eventTime": zoneless(self.detected_ms),
            "eventId": format!("{}_{}", self.subscription_id, self.entity_id),
            "partnerTenantId": self.partner_tenant,
            "partnerFriendlyName": self.partner_name,
            "customerTenantId": self.customer_tenant,
            "customerFriendlyName": self.customer_name,
            "subscriptionId": self.subscription_id,
            "subscriptionType": "modern",
            "entityId": self.entity_id,
            "entityName": format!("vm-{}", self.quirk % 7),
            "entityUrl": self.resource_id(),
            "hitCount": self.hit_count.to_string(),
            "catalogOfferId": "MS-AZR-0017G",
            "eventStatus": self.status.partner_center(),
            "serviceName": "Microsoft.Compute",
            "resourceName": format!("vm-{}", self.quirk % 7),
            "resourceGroupName": "rg-app",
            "firstOccurrence": zoneless(self.first_observed_ms),
            "lastOccurrence": zoneless(self.last_observed_ms),
            "resolvedReason": if open { "None".to_owned() } else { capitalize(self.resolved_reason.as_deref().unwrap_or("none")) },
            "resolvedOn": if open { "9999-12-31T23:59:59.997".to_owned() } else { zoneless(self.resolved_on_ms.unwrap_or_default()) },
            "resolvedBy": self.resolved_by.clone().unwrap_or_default(),
            "firstObserved": zoneless(self.first_observed_ms),
            "lastObserved": zoneless(self.last_observed_ms),
        });
        if new_model {
            let logs: Vec<Value> = self
                .activity_logs
                .iter()
                .map(|l| {
                    json!({"statusFrom": l.from.partner_center(), "statusTo": l.to.partner_center(),
                    "updatedBy": l.by, "dateTime": zoneless(l.at_ms)})
                })
                .collect();
            let extra = json!({
                "eventType": self.alert_type,
                "severity": capitalize(self.severity),
                "confidenceLevel": capitalize(self.confidence),
                "displayName": self.display_name,
                "description": self.description,
                "country": "US",
                "valueAddedResellerTenantId": self.reseller.as_ref().map(|r| r.0.clone()).unwrap_or_default(),
                "valueAddedResellerFriendlyName": self.reseller.as_ref().map(|r| r.1.clone()).unwrap_or_default(),
                "subscriptionName": "Azure plan",
                "affectedResources": [{"azureResourceId": self.resource_id(), "type": "Microsoft.Compute/virtualMachines"}],
                "additionalDetails": self.additional_details,
                "IsTest": self.is_test.to_string(),
                // Quirk: a JSON document inside a string.
                "activityLogs": Value::Array(logs).to_string(),
            });
            if let (Value::Object(base), Value::Object(extra)) = (&mut value, extra) {
                base.extend(extra);
            }
        }
        value
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoneless_timestamps_drop_trailing_zeros_and_carry_no_zone() {
        assert_eq!(zoneless(1_638_923_145_690), "2021-12-08T00:25:45.69");
        assert_eq!(zoneless(1_638_923_145_000), "2021-12-08T00:25:45");
    }
}
