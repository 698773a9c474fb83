//! Microsoft Graph partner security alerts (beta): `security/partner/securityAlerts`.
//!
//! List with `$filter` (status, `lastObservedDateTime`) following `@odata.nextLink`, get one,
//! and PATCH a resolution. The wire type is parsed liberally, as the reference asks where
//! Microsoft's own examples disagree: booleans may be strings, timestamps may lack a zone,
//! `activityLogs` may be a JSON-encoded string, property names may be PascalCase, unknown
//! properties are ignored and `alertType` is an open string. What we send is exact.
//!
//! This client never holds a credential: the caller passes a bearer token per call.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::http::{HttpError, RetryPolicy, Throttle, send_with_retry};

/// The path of the collection under the Graph base URL.
pub const SECURITY_ALERTS_PATH: &str = "beta/security/partner/securityAlerts";

/// `affectedResource`: Graph says `resourceId`/`resourceType`; fraudEvents says
/// `azureResourceId`/`type`. Both are accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AffectedResource {
    #[serde(default, alias = "azureResourceId", alias = "resourceID")]
    pub resource_id: String,
    #[serde(default, alias = "type")]
    pub resource_type: String,
}

/// One `activityLog` entry. fraudEvents calls the time `dateTime`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityLog {
    #[serde(default, deserialize_with = "lenient::string")]
    pub status_from: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub status_to: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub updated_by: String,
    #[serde(
        default,
        alias = "dateTime",
        deserialize_with = "lenient::opt_datetime"
    )]
    pub updated_date_time: Option<DateTime<Utc>>,
}

/// `microsoft.graph.partner.security.partnerSecurityAlert`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityAlert {
    #[serde(deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub display_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub description: String,
    /// An open string (see the reference §2.4): kept verbatim, compared case-insensitively.
    #[serde(default, deserialize_with = "lenient::string")]
    pub alert_type: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub status: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub severity: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub confidence_level: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub resolved_reason: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub customer_tenant_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub subscription_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value_added_reseller_tenant_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub catalog_offer_id: String,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub detected_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub first_observed_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub last_observed_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub resolved_on_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub resolved_by: String,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub is_test: bool,
    #[serde(default, deserialize_with = "lenient::vec_or_json_string")]
    pub affected_resources: Vec<AffectedResource>,
    #[serde(default, deserialize_with = "lenient::vec_or_json_string")]
    pub activity_logs: Vec<ActivityLog>,
    #[serde(default, deserialize_with = "lenient::string_map")]
    pub additional_details: BTreeMap<String, String>,
}

impl SecurityAlert {
    /// Parses one item of a list or a get, whatever casing its property names use.
    pub fn from_value(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        if !value.is_object() {
            return Err(<serde_json::Error as serde::de::Error>::custom(
                "a graph alert must be a JSON object",
            ));
        }
        serde_json::from_value(lenient::camel_case_keys(value))
    }
}

/// One page of the list, with the raw items so that the caller can quarantine what does not
/// parse without losing the rest of the page.
#[derive(Debug, Clone, Default)]
pub struct AlertPage {
    pub items: Vec<serde_json::Value>,
    pub next_link: Option<String>,
}

#[derive(Deserialize)]
struct RawPage {
    #[serde(default)]
    value: Vec<serde_json::Value>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct AlertQuery {
    /// `status eq '…'` (Graph's camelCase enum value, e.g. `active`).
    pub status: Option<String>,
    /// `lastObservedDateTime ge …`.
    pub last_observed_since: Option<DateTime<Utc>>,
}

impl AlertQuery {
    /// The `$filter` expression, or `None` for no filter.
    pub fn filter(&self) -> Option<String> {
        let mut clauses = Vec::new();
        if let Some(status) = &self.status {
            clauses.push(format!("status eq '{}'", status.replace('\'', "''")));
        }
        if let Some(since) = self.last_observed_since {
            clauses.push(format!(
                "lastObservedDateTime ge {}",
                since.to_rfc3339_opts(SecondsFormat::Millis, true)
            ));
        }
        (!clauses.is_empty()).then(|| clauses.join(" and "))
    }
}

/// The Graph partner security alerts client.
#[derive(Debug, Clone)]
pub struct GraphAlertsClient {
    http: reqwest::Client,
    base: reqwest::Url,
    retry: RetryPolicy,
    throttle: Arc<Throttle>,
}

impl GraphAlertsClient {
    /// `base` is `https://graph.microsoft.com` in production (ms-sim's `graph_url()` in tests).
    pub fn new(
        http: reqwest::Client,
        base: reqwest::Url,
        retry: RetryPolicy,
        throttle: Arc<Throttle>,
    ) -> Self {
        Self {
            http,
            base: crate::partner_center::with_trailing_slash(base),
            retry,
            throttle,
        }
    }

    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    fn collection_url(&self) -> Result<reqwest::Url, HttpError> {
        self.base
            .join(SECURITY_ALERTS_PATH)
            .map_err(|e| HttpError::RefusedUrl(e.to_string()))
    }

    fn item_url(&self, id: &str) -> Result<reqwest::Url, HttpError> {
        let mut url = self.collection_url()?;
        url.path_segments_mut()
            .map_err(|()| HttpError::RefusedUrl("base cannot be a base".into()))?
            .push(id);
        Ok(url)
    }

    /// The first page of the list.
    pub async fn list(&self, token: &str, query: &AlertQuery) -> Result<AlertPage, HttpError> {
        let mut url = self.collection_url()?;
        if let Some(filter) = query.filter() {
            url.query_pairs_mut().append_pair("$filter", &filter);
        }
        self.page(token, url).await
    }

    /// The page an `@odata.nextLink` points to. The link must stay on the configured Graph
    /// host: a bearer token is never sent anywhere else.
    pub async fn next_page(&self, token: &str, next_link: &str) -> Result<AlertPage, HttpError> {
        let url = reqwest::Url::parse(next_link)
            .map_err(|e| HttpError::RefusedUrl(format!("nextLink: {e}")))?;
        if url.origin() != self.base.origin() {
            return Err(HttpError::RefusedUrl(format!(
                "nextLink leaves the Graph host: {}",
                url.origin().ascii_serialization()
            )));
        }
        self.page(token, url).await
    }

    async fn page(&self, token: &str, url: reqwest::Url) -> Result<AlertPage, HttpError> {
        let raw: RawPage = send_with_retry(
            &self.retry,
            &self.throttle,
            "GET",
            &url,
            || {
                self.http
                    .get(url.clone())
                    .bearer_auth(token)
                    .header("Accept", "application/json")
            },
            |r| r.json("GET", &url),
        )
        .await?;
        Ok(AlertPage {
            items: raw.value,
            next_link: raw.next_link.filter(|l| !l.is_empty()),
        })
    }

    /// One alert, raw (parse with [`SecurityAlert::from_value`]).
    pub async fn get(&self, token: &str, id: &str) -> Result<serde_json::Value, HttpError> {
        let url = self.item_url(id)?;
        send_with_retry(
            &self.retry,
            &self.throttle,
            "GET",
            &url,
            || {
                self.http
                    .get(url.clone())
                    .bearer_auth(token)
                    .header("Accept", "application/json")
            },
            |r| r.json("GET", &url),
        )
        .await
    }

    /// `PATCH {"status": …, "resolvedReason": …}`; Graph answers 200 with the updated alert.
    /// Idempotent, so it is retried like a read.
    pub async fn update(
        &self,
        token: &str,
        id: &str,
        status: &str,
        resolved_reason: Option<&str>,
    ) -> Result<serde_json::Value, HttpError> {
        let url = self.item_url(id)?;
        let mut body = serde_json::json!({ "status": status });
        if let Some(reason) = resolved_reason {
            body["resolvedReason"] = serde_json::Value::String(reason.to_owned());
        }
        send_with_retry(
            &self.retry,
            &self.throttle,
            "PATCH",
            &url,
            || {
                self.http
                    .patch(url.clone())
                    .bearer_auth(token)
                    .header("Accept", "application/json")
                    .json(&body)
            },
            |r| {
                if r.body.is_empty() {
                    // 204 is not documented, but it is a confirmation all the same.
                    Ok(serde_json::Value::Null)
                } else {
                    r.json("PATCH", &url)
                }
            },
        )
        .await
    }
}

/// Deserializers that accept every shape the reference documents for one value.
pub mod lenient {
    use std::collections::BTreeMap;

    use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
    use serde::{Deserialize, Deserializer, de::DeserializeOwned};
    use serde_json::Value;

    /// `IsTest` → `isTest`, recursively: Partner Center's examples use PascalCase where its
    /// tables use camelCase. Annotations (`@odata…`) and `additionalDetails`' keys are kept.
    pub fn camel_case_keys(value: Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let key = lower_first(&k);
                        // Its keys are data (`VM_IP`, `ConnectionCount`), not property names.
                        let v = if key == "additionalDetails" {
                            v
                        } else {
                            camel_case_keys(v)
                        };
                        (key, v)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(camel_case_keys).collect()),
            other => other,
        }
    }

    fn lower_first(key: &str) -> String {
        // An all-caps key (`VM_IP`) is a value name, not a property: keep it.
        if key.chars().all(|c| !c.is_ascii_lowercase()) {
            return key.to_owned();
        }
        let mut chars = key.chars();
        match chars.next() {
            Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
            None => String::new(),
        }
    }

    /// A string; `null` is empty; numbers and booleans become their text.
    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Null => String::new(),
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => other.to_string(),
        })
    }

    /// `true`, `"true"`, `"True"`, `1` and `"1"` are true; null is false.
    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Bool(b) => b,
            Value::String(s) => matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "1"),
            Value::Number(n) => n.as_i64().is_some_and(|v| v != 0),
            _ => false,
        })
    }

    /// A count sent as a number or as a string (`hitCount: "3"`); absent or garbage is 0.
    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_u64()
                .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
                .unwrap_or(0),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map(|f| f.max(0.0) as u64)
                .unwrap_or(0),
            _ => 0,
        })
    }

    /// ISO 8601 with or without a zone (zoneless means UTC, as fraudEvents sends), with any
    /// fraction; the open-ended sentinels (`9999-12-31…`, `0001-01-01…`) and empty are `None`.
    pub fn opt_datetime<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(s) => parse_datetime(&s),
            _ => None,
        })
    }

    pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        let parsed = DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                // Zoneless: `2021-12-08T00:25:45.69`, also with a space instead of the `T`.
                [
                    "%Y-%m-%dT%H:%M:%S%.f",
                    "%Y-%m-%d %H:%M:%S%.f",
                    "%Y-%m-%dT%H:%M",
                ]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
                .map(|n| Utc.from_utc_datetime(&n))
            })
            .or_else(|| {
                NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|n| Utc.from_utc_datetime(&n))
            })?;
        let year = chrono::Datelike::year(&parsed);
        (2..9999).contains(&year).then_some(parsed)
    }

    /// An array, or a JSON-encoded string holding one (fraudEvents' `activityLogs`), or
    /// null/empty. Items that do not parse are dropped rather than failing the alert.
    pub fn vec_or_json_string<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        let items = match Value::deserialize(d)? {
            Value::Array(items) => items,
            Value::String(s) if !s.trim().is_empty() => match serde_json::from_str::<Value>(&s) {
                Ok(Value::Array(items)) => items,
                Ok(one @ Value::Object(_)) => vec![one],
                _ => Vec::new(),
            },
            one @ Value::Object(_) => vec![one],
            _ => Vec::new(),
        };
        Ok(items
            .into_iter()
            .filter_map(|v| serde_json::from_value(camel_case_keys(v)).ok())
            .collect())
    }

    /// A string→string map (`additionalDetails`); non-string values keep their JSON text, and
    /// a JSON-encoded object in a string is opened.
    pub fn string_map<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        let object = match Value::deserialize(d)? {
            Value::Object(map) => map,
            Value::String(s) => match serde_json::from_str::<Value>(&s) {
                Ok(Value::Object(map)) => map,
                _ => return Ok(BTreeMap::new()),
            },
            _ => return Ok(BTreeMap::new()),
        };
        Ok(object
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_example_parses() {
        let value = serde_json::json!({
          "id": "7c1e0f2a-4b9d-4c61-9f0e-2f5d1a8b3c44",
          "displayName": "Action Required: Cryptocurrency mining activity detected",
          "alertType": "CryptoMining",
          "status": "active",
          "severity": "high",
          "confidenceLevel": "medium",
          "customerTenantId": "0b6e2c1d-5a44-4f0b-9a3e-6d2f7c8e9a10",
          "subscriptionId": "3f9a7d21-8c6b-4e25-b1d4-7a0c5e2f9b63",
          "valueAddedResellerTenantId": "a1d2c3b4-0e9f-4a8b-8c7d-6e5f4a3b2c1d",
          "catalogOfferId": "MS-AZR-0017G",
          "detectedDateTime": "2025-03-04T09:12:44Z",
          "firstObservedDateTime": "2025-03-04T08:55:02Z",
          "lastObservedDateTime": "2025-03-04T09:10:31Z",
          "resolvedReason": null, "resolvedOnDateTime": null, "resolvedBy": null,
          "isTest": false,
          "affectedResources": [{"resourceId": "/subscriptions/x/vm-1", "resourceType": "AzureResource"}],
          "activityLogs": [],
          "additionalDetails": {"VM_IP": "[\"20.1.2.3\"]", "ConnectionCount": "12"},
          "someFutureProperty": {"nested": true}
        });
        let alert = SecurityAlert::from_value(value).unwrap();
        assert_eq!(alert.alert_type, "CryptoMining");
        assert_eq!(alert.resolved_reason, "");
        assert!(!alert.is_test);
        assert_eq!(
            alert.affected_resources[0].resource_id,
            "/subscriptions/x/vm-1"
        );
        assert_eq!(alert.additional_details["VM_IP"], "[\"20.1.2.3\"]");
        assert_eq!(
            alert.last_observed_date_time.unwrap().to_rfc3339(),
            "2025-03-04T09:10:31+00:00"
        );
    }

    #[test]
    fn quirks_are_accepted() {
        let value = serde_json::json!({
          "Id": "a-1",
          "AlertType": "someNewTypeNobodyHasSeen",
          "IsTest": "true",
          "LastObservedDateTime": "2021-12-08T00:25:45.69",
          "ActivityLogs": "[{\"statusFrom\":\"active\",\"statusTo\":\"investigating\",\"updatedBy\":\"x@y\",\"updatedDateTime\":\"2021-12-08T00:25:45\"}]",
          "AffectedResources": [{"azureResourceId": "/subscriptions/s/r", "type": "VM"}],
          "AdditionalDetails": {"ConnectionCount": 12, "Flag": true}
        });
        let alert = SecurityAlert::from_value(value).unwrap();
        assert_eq!(alert.id, "a-1");
        assert!(alert.is_test);
        assert_eq!(alert.alert_type, "someNewTypeNobodyHasSeen");
        assert_eq!(
            alert.last_observed_date_time.unwrap().timestamp_millis(),
            1_638_923_145_690
        );
        assert_eq!(alert.activity_logs.len(), 1);
        assert_eq!(alert.activity_logs[0].status_to, "investigating");
        assert_eq!(alert.affected_resources[0].resource_type, "VM");
        assert_eq!(alert.additional_details["ConnectionCount"], "12");
        assert_eq!(alert.additional_details["Flag"], "true");
    }

    #[test]
    fn sentinels_and_garbage_dates_are_none() {
        assert!(lenient::parse_datetime("9999-12-31T23:59:59.997").is_none());
        assert!(lenient::parse_datetime("0001-01-01T00:00:00").is_none());
        assert!(lenient::parse_datetime("not a date").is_none());
        assert!(lenient::parse_datetime("2025-03-04T09:13:00.1234567+00:00").is_some());
    }

    #[test]
    fn the_filter_is_odata() {
        let q = AlertQuery {
            status: Some("active".into()),
            last_observed_since: Some(
                DateTime::parse_from_rfc3339("2025-03-04T09:10:31Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
        };
        assert_eq!(
            q.filter().unwrap(),
            "status eq 'active' and lastObservedDateTime ge 2025-03-04T09:10:31.000Z"
        );
    }
}
