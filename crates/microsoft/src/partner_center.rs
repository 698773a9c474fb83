//! The Partner Center REST calls alert-ingest makes: legacy fraud events (list, and POST of a
//! status), and the customer, indirect-reseller and subscription reads that enrich an alert.
//!
//! Every call carries `MS-RequestId` (a GUID kept across retries of the same call, so Partner
//! Center can recognise a repeat) and `MS-CorrelationId` (a GUID per call). Errors keep
//! Partner Center's `{code, description, data, source}` body and `WWW-Authenticate` (a 401 for
//! a token without MFA says `Bearer error="invalid_token"`).

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    graph_alerts::{ActivityLog, AffectedResource, lenient},
    http::{HttpError, RetryPolicy, Throttle, send_with_retry},
};

pub(crate) fn with_trailing_slash(mut url: reqwest::Url) -> reqwest::Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// A legacy fraud event (`GET /v1/fraudEvents`), new events model included.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FraudEvent {
    /// `{subscriptionId}_{entityId}`.
    #[serde(deserialize_with = "lenient::string")]
    pub event_id: String,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub event_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub partner_tenant_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub partner_friendly_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub customer_tenant_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub customer_friendly_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub subscription_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub subscription_type: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub subscription_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub entity_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub entity_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub entity_url: String,
    /// A string on the wire.
    #[serde(default, deserialize_with = "lenient::u64")]
    pub hit_count: u64,
    #[serde(default, deserialize_with = "lenient::string")]
    pub catalog_offer_id: String,
    /// `Active`, `Resolved`, `Investigating`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub event_status: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub service_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub resource_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub resource_group_name: String,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub first_occurrence: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub last_occurrence: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub first_observed: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub last_observed: Option<DateTime<Utc>>,
    /// `None` (the word) while open.
    #[serde(default, deserialize_with = "lenient::string")]
    pub resolved_reason: String,
    /// `9999-12-31T23:59:59.997` while open, which parses to `None`.
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub resolved_on: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub resolved_by: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub event_type: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub severity: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub confidence_level: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub display_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub description: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub country: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value_added_reseller_tenant_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value_added_reseller_friendly_name: String,
    /// `[{azureResourceId, type}]`.
    #[serde(default, deserialize_with = "lenient::vec_or_json_string")]
    pub affected_resources: Vec<AffectedResource>,
    #[serde(default, deserialize_with = "lenient::string_map")]
    pub additional_details: BTreeMap<String, String>,
    /// `IsTest`: the string `"true"`/`"false"`.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub is_test: bool,
    /// A JSON-encoded string holding `[{statusFrom, statusTo, updatedBy, dateTime}]`.
    #[serde(default, deserialize_with = "lenient::vec_or_json_string")]
    pub activity_logs: Vec<ActivityLog>,
}

impl FraudEvent {
    pub fn from_value(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        if !value.is_object() {
            return Err(<serde_json::Error as serde::de::Error>::custom(
                "a fraud event must be a JSON object",
            ));
        }
        serde_json::from_value(lenient::camel_case_keys(value))
    }
}

/// `GET /v1/fraudEvents` parameters. Paging is honoured only with `X-NewEventsModel: true`,
/// which this client always sends.
#[derive(Debug, Clone, Default)]
pub struct FraudEventQuery {
    pub event_status: Option<String>,
    pub subscription_id: Option<String>,
    pub event_type: Option<String>,
    pub page_size: Option<u32>,
    pub page_number: Option<u32>,
}

/// `companyProfile` of a customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompanyProfile {
    #[serde(default, deserialize_with = "lenient::string")]
    pub tenant_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub domain: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub company_name: String,
}

/// `GET /v1/customers/{id}`, the parts enrichment uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    #[serde(default, deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default)]
    pub company_profile: CompanyProfile,
    #[serde(default, deserialize_with = "lenient::string")]
    pub relationship_to_partner: String,
    /// The indirect reseller, as an indirect provider sets it.
    #[serde(default, deserialize_with = "lenient::string")]
    pub associated_partner_id: String,
}

/// One `PartnerRelationship` of `GET /v1/customers/{id}/relationships`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartnerRelationship {
    /// The reseller's tenant id.
    #[serde(default, deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub relationship_type: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub mpn_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub state: String,
}

/// `GET /v1/customers/{cid}/subscriptions/{sid}`, the parts enrichment uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    #[serde(default, deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub offer_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub offer_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub friendly_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub entitlement_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub status: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub partner_id: String,
}

#[derive(Deserialize)]
struct Collection<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
}

/// The Partner Center client.
#[derive(Debug, Clone)]
pub struct PartnerCenterClient {
    http: reqwest::Client,
    base: reqwest::Url,
    retry: RetryPolicy,
    throttle: Arc<Throttle>,
}

impl PartnerCenterClient {
    /// `base` is `https://api.partnercenter.microsoft.com` in production.
    pub fn new(
        http: reqwest::Client,
        base: reqwest::Url,
        retry: RetryPolicy,
        throttle: Arc<Throttle>,
    ) -> Self {
        Self {
            http,
            base: with_trailing_slash(base),
            retry,
            throttle,
        }
    }

    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, HttpError> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| HttpError::RefusedUrl(e.to_string()))
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        token: &str,
        new_events_model: bool,
        body: Option<&serde_json::Value>,
    ) -> Result<T, HttpError> {
        // Kept across the retries of this call: Partner Center's idempotency key.
        let request_id = uuid::Uuid::new_v4().to_string();
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let name = method.as_str().to_owned();
        send_with_retry(
            &self.retry,
            &self.throttle,
            &name,
            &url,
            || {
                let mut request = self
                    .http
                    .request(method.clone(), url.clone())
                    .bearer_auth(token)
                    .header("Accept", "application/json")
                    .header("MS-RequestId", &request_id)
                    .header("MS-CorrelationId", &correlation_id)
                    .header("MS-Contract-Version", "v1");
                if new_events_model {
                    request = request.header("X-NewEventsModel", "true");
                }
                if let Some(body) = body {
                    request = request.json(body);
                }
                request
            },
            |r| r.json(&name, &url),
        )
        .await
    }

    /// `GET /v1/fraudEvents` with `X-NewEventsModel: true`: a bare JSON array, returned raw so
    /// that one malformed event can be quarantined without losing the page.
    pub async fn list_fraud_events(
        &self,
        token: &str,
        query: &FraudEventQuery,
    ) -> Result<Vec<serde_json::Value>, HttpError> {
        let mut url = self.url("v1/fraudEvents")?;
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(v) = &query.event_status {
                pairs.append_pair("EventStatus", v);
            }
            if let Some(v) = &query.subscription_id {
                pairs.append_pair("SubscriptionId", v);
            }
            if let Some(v) = &query.event_type {
                pairs.append_pair("EventType", v);
            }
            if let Some(v) = query.page_size {
                pairs.append_pair("PageSize", &v.max(1).to_string());
            }
            if let Some(v) = query.page_number {
                pairs.append_pair("PageNumber", &v.max(1).to_string());
            }
        }
        let url = strip_empty_query(url);
        self.fraud_events_at(token, url).await
    }

    /// Follows a webhook's `ResourceUri` (`…/v1/fraudEvents?SubscriptionId=…&EventStatus=…`).
    /// Only its path and query are used, against the configured base: a webhook body never
    /// decides where a bearer token goes.
    pub async fn list_fraud_events_by_uri(
        &self,
        token: &str,
        resource_uri: &str,
    ) -> Result<Vec<serde_json::Value>, HttpError> {
        let given = reqwest::Url::parse(resource_uri)
            .or_else(|_| self.base.join(resource_uri.trim_start_matches('/')))
            .map_err(|e| HttpError::RefusedUrl(format!("ResourceUri: {e}")))?;
        if !given
            .path()
            .to_ascii_lowercase()
            .trim_end_matches('/')
            .ends_with("/v1/fraudevents")
        {
            return Err(HttpError::RefusedUrl(format!(
                "ResourceUri is not a fraudEvents query: {}",
                given.path()
            )));
        }
        let mut url = self.url("v1/fraudEvents")?;
        url.set_query(given.query());
        self.fraud_events_at(token, url).await
    }

    async fn fraud_events_at(
        &self,
        token: &str,
        url: reqwest::Url,
    ) -> Result<Vec<serde_json::Value>, HttpError> {
        let value: serde_json::Value = self
            .call(reqwest::Method::GET, url.clone(), token, true, None)
            .await?;
        match value {
            serde_json::Value::Array(items) => Ok(items),
            // Documented as a bare array; a collection envelope is accepted all the same.
            serde_json::Value::Object(mut map) => match map.remove("items") {
                Some(serde_json::Value::Array(items)) => Ok(items),
                _ => Err(HttpError::malformed("GET", &url, "not an array of events")),
            },
            _ => Err(HttpError::malformed("GET", &url, "not an array of events")),
        }
    }

    /// `POST /v1/fraudEvents/subscription/{sid}/status` with the documented PascalCase body.
    /// `resolved_reason` is `Fraud`, `Ignore` or `Legitimate`. Returns the updated events.
    pub async fn update_fraud_event_status(
        &self,
        token: &str,
        subscription_id: &str,
        event_ids: &[String],
        event_status: &str,
        resolved_reason: &str,
    ) -> Result<Vec<serde_json::Value>, HttpError> {
        let mut url = self.url("v1/fraudEvents/subscription")?;
        url.path_segments_mut()
            .map_err(|()| HttpError::RefusedUrl("base cannot be a base".into()))?
            .push(subscription_id)
            .push("status");
        let body = serde_json::json!({
            "EventIds": event_ids,
            "EventStatus": event_status,
            "ResolvedReason": resolved_reason,
        });
        let value: serde_json::Value = self
            .call(reqwest::Method::POST, url, token, true, Some(&body))
            .await?;
        Ok(match value {
            serde_json::Value::Array(items) => items,
            serde_json::Value::Null => Vec::new(),
            other => vec![other],
        })
    }

    /// `GET /v1/customers/{id}`.
    pub async fn get_customer(
        &self,
        token: &str,
        customer_id: &str,
    ) -> Result<Customer, HttpError> {
        let url = self.segments(&["v1", "customers", customer_id])?;
        let value: serde_json::Value = self
            .call(reqwest::Method::GET, url.clone(), token, false, None)
            .await?;
        serde_json::from_value(lenient::camel_case_keys(value))
            .map_err(|e| HttpError::malformed("GET", &url, e))
    }

    /// `GET /v1/customers/{id}/relationships`: the customer's indirect resellers.
    pub async fn list_customer_relationships(
        &self,
        token: &str,
        customer_id: &str,
    ) -> Result<Vec<PartnerRelationship>, HttpError> {
        let url = self.segments(&["v1", "customers", customer_id, "relationships"])?;
        let value: serde_json::Value = self
            .call(reqwest::Method::GET, url.clone(), token, false, None)
            .await?;
        let collection: Collection<PartnerRelationship> =
            serde_json::from_value(lenient::camel_case_keys(value))
                .map_err(|e| HttpError::malformed("GET", &url, e))?;
        Ok(collection.items)
    }

    /// `GET /v1/customers/{cid}/subscriptions`. An Azure plan's Azure subscription id is its
    /// `entitlementId`, so this is how an alert's subscription is found (reference §7).
    pub async fn list_subscriptions(
        &self,
        token: &str,
        customer_id: &str,
    ) -> Result<Vec<Subscription>, HttpError> {
        let url = self.segments(&["v1", "customers", customer_id, "subscriptions"])?;
        let value: serde_json::Value = self
            .call(reqwest::Method::GET, url.clone(), token, false, None)
            .await?;
        let collection: Collection<Subscription> =
            serde_json::from_value(lenient::camel_case_keys(value))
                .map_err(|e| HttpError::malformed("GET", &url, e))?;
        Ok(collection.items)
    }

    /// `GET /v1/customers/{cid}/subscriptions/{sid}`.
    pub async fn get_subscription(
        &self,
        token: &str,
        customer_id: &str,
        subscription_id: &str,
    ) -> Result<Subscription, HttpError> {
        let url = self.segments(&[
            "v1",
            "customers",
            customer_id,
            "subscriptions",
            subscription_id,
        ])?;
        let value: serde_json::Value = self
            .call(reqwest::Method::GET, url.clone(), token, false, None)
            .await?;
        serde_json::from_value(lenient::camel_case_keys(value))
            .map_err(|e| HttpError::malformed("GET", &url, e))
    }

    /// Registers (or, when a registration exists, updates) the partner's webhook:
    /// `POST /webhooks/v1/registration`, then `PUT` on 409. Returns the registration as sent back.
    pub async fn register_webhook(
        &self,
        token: &str,
        webhook_url: &str,
        events: &[&str],
    ) -> Result<serde_json::Value, HttpError> {
        let url = self.url("webhooks/v1/registration")?;
        let body = serde_json::json!({ "WebhookUrl": webhook_url, "WebhookEvents": events });
        match self
            .call(
                reqwest::Method::POST,
                url.clone(),
                token,
                false,
                Some(&body),
            )
            .await
        {
            Err(e) if e.status() == Some(409) => {
                self.call(reqwest::Method::PUT, url, token, false, Some(&body))
                    .await
            }
            other => other,
        }
    }

    fn segments(&self, segments: &[&str]) -> Result<reqwest::Url, HttpError> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| HttpError::RefusedUrl("base cannot be a base".into()))?;
            path.pop_if_empty();
            for s in segments {
                path.push(s);
            }
        }
        Ok(url)
    }
}

fn strip_empty_query(mut url: reqwest::Url) -> reqwest::Url {
    if url.query() == Some("") {
        url.set_query(None);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_event_with_every_quirk_parses() {
        let value = serde_json::json!({
            "eventTime": "2021-12-08T00:25:45.69",
            "eventId": "3f9a7d21-8c6b-4e25-b1d4-7a0c5e2f9b63_5d1c9e7a",
            "partnerTenantId": "p", "customerTenantId": "c", "customerFriendlyName": "Contoso",
            "subscriptionId": "3f9a7d21-8c6b-4e25-b1d4-7a0c5e2f9b63", "subscriptionType": "modern",
            "entityId": "5d1c9e7a", "hitCount": "3", "eventStatus": "Active",
            "firstObserved": "2021-12-08T00:20:00", "lastObserved": "2021-12-08T00:25:45.69",
            "resolvedReason": "None", "resolvedOn": "9999-12-31T23:59:59.997", "resolvedBy": null,
            "eventType": "NetworkConnectionsToCryptoMiningPools", "severity": "High",
            "affectedResources": [{"azureResourceId": "/subscriptions/s/vm", "type": "VirtualMachine"}],
            "additionalDetails": {"MiningPool_IP": "1.2.3.4"},
            "IsTest": "false",
            "activityLogs": "[{\"statusFrom\":\"Active\",\"statusTo\":\"Investigating\",\"updatedBy\":\"a@b\",\"dateTime\":\"2021-12-08T01:00:00\"}]",
            "aFieldFromTheFuture": 1
        });
        let event = FraudEvent::from_value(value).unwrap();
        assert_eq!(event.hit_count, 3);
        assert!(!event.is_test);
        assert!(event.resolved_on.is_none());
        assert_eq!(event.resolved_reason, "None");
        assert_eq!(
            event.affected_resources[0].resource_id,
            "/subscriptions/s/vm"
        );
        assert_eq!(event.activity_logs[0].status_to, "Investigating");
        assert_eq!(
            event.activity_logs[0]
                .updated_date_time
                .unwrap()
                .to_rfc3339(),
            "2021-12-08T01:00:00+00:00"
        );
        assert_eq!(
            event.last_observed.unwrap().timestamp_millis(),
            1_638_923_145_690
        );
    }

    #[test]
    fn urls_keep_the_configured_base() {
        let client = PartnerCenterClient::new(
            reqwest::Client::new(),
            "http://127.0.0.1:9/pc".parse().unwrap(),
            RetryPolicy::default(),
            Arc::new(Throttle::unlimited()),
        );
        assert_eq!(
            client
                .segments(&["v1", "customers", "a/b"])
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9/pc/v1/customers/a%2Fb"
        );
    }
}
