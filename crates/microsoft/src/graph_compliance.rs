//! Microsoft Graph reads of the compliance checker (reference §6, §2.6), in any tenant: the
//! partner's own, or a customer's through GDAP, with a token for that tenant.
//!
//! - `GET /v1.0/policies/identitySecurityDefaultsEnforcementPolicy`
//! - `GET /v1.0/identity/conditionalAccess/policies`
//! - `GET /v1.0/reports/authenticationMethods/userRegistrationDetails` (`$filter` with `eq`)
//! - `GET /v1.0/subscribedSkus` (no `$filter`)
//! - `GET /v1.0/tenantRelationships/delegatedAdminRelationships` (`$top` ≤ 300) and
//!   `.../{id}/accessAssignments`
//! - `GET /beta/security/partner/securityScore?$expand=requirements`
//!
//! Collections are followed through `@odata.nextLink` (which carries `$skipToken`); a next link
//! is only followed on the configured Graph origin, so a token never leaves for another host.
//! Every attempt, page and retry first takes a slot from each of the call's budgets (the app's
//! global Graph budget and the tenant's own), and a 429 pauses the budgets for its
//! `Retry-After`, so a fleet of evaluations never exceeds what was configured.
//!
//! Parsing is liberal where the reference says Microsoft is inconsistent: numbers or strings,
//! `nonCompliant` or the documented misspelling `noncomplaint`, missing arrays.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use crate::graph_alerts::lenient;
use crate::http::{HttpError, RetryPolicy, Throttle, send_once};

/// The one call a client makes: whose token, under which budgets.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub access_token: &'a str,
    /// Taken in order before every attempt: typically the app-wide budget, then the tenant's.
    pub budgets: &'a [Arc<Throttle>],
}

/// Counters a caller reads to report what it spent (requests per second, 429s).
#[derive(Debug, Default)]
pub struct Usage {
    pub requests: AtomicU64,
    pub throttled: AtomicU64,
    pub retries: AtomicU64,
}

impl Usage {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }
}

/// Sends `build()` under `call`'s budgets, retrying what may be retried (429 and 5xx after
/// `Retry-After` or backoff, torn connections), and parses the body as `T`.
pub(crate) async fn send_budgeted<T: DeserializeOwned>(
    retry: &RetryPolicy,
    usage: &Usage,
    call: &Call<'_>,
    url: &reqwest::Url,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<T, HttpError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        for budget in call.budgets {
            budget.acquire().await;
        }
        usage.requests.fetch_add(1, Ordering::Relaxed);
        let result = match send_once(build(), "GET", url).await {
            Ok(response) => response.json::<T>("GET", url),
            Err(e) => Err(e),
        };
        match result {
            Ok(value) => return Ok(value),
            Err(error) => {
                let delay = retry.delay(attempt, &error);
                if error.is_throttled() {
                    usage.throttled.fetch_add(1, Ordering::Relaxed);
                    // Everyone spending these budgets waits, not only this caller.
                    for budget in call.budgets {
                        budget.pause(delay);
                    }
                }
                if !error.is_retryable() || attempt >= retry.max_attempts {
                    return Err(error);
                }
                usage.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, attempt, delay_ms = delay.as_millis() as u64, "retrying a Graph call");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

// ---- wire shapes ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityDefaultsPolicy {
    #[serde(default, deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub display_name: String,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub is_enabled: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionalAccessPolicy {
    #[serde(default, deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub display_name: String,
    /// `enabled`, `disabled`, `enabledForReportingButNotEnforced`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub state: String,
    #[serde(default, deserialize_with = "null_default")]
    pub conditions: CaConditions,
    #[serde(default, deserialize_with = "null_default")]
    pub grant_controls: GrantControls,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaConditions {
    #[serde(default, deserialize_with = "null_default")]
    pub users: CaUsers,
    #[serde(default, deserialize_with = "null_default")]
    pub applications: CaApplications,
    #[serde(default, deserialize_with = "strings")]
    pub client_app_types: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaUsers {
    #[serde(default, deserialize_with = "strings")]
    pub include_users: Vec<String>,
    #[serde(default, deserialize_with = "strings")]
    pub exclude_users: Vec<String>,
    #[serde(default, deserialize_with = "strings")]
    pub include_groups: Vec<String>,
    #[serde(default, deserialize_with = "strings")]
    pub exclude_groups: Vec<String>,
    #[serde(default, deserialize_with = "strings")]
    pub include_roles: Vec<String>,
    #[serde(default, deserialize_with = "strings")]
    pub exclude_roles: Vec<String>,
    /// Present (an object) when guests or external users are excluded.
    #[serde(default)]
    pub exclude_guests_or_external_users: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaApplications {
    #[serde(default, deserialize_with = "strings")]
    pub include_applications: Vec<String>,
    #[serde(default, deserialize_with = "strings")]
    pub exclude_applications: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantControls {
    /// `AND` or `OR`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub operator: String,
    #[serde(default, deserialize_with = "strings")]
    pub built_in_controls: Vec<String>,
    #[serde(default)]
    pub authentication_strength: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRegistrationDetail {
    #[serde(default, deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub user_principal_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub user_display_name: String,
    /// `member` or `guest`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub user_type: String,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub is_admin: bool,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub is_mfa_registered: bool,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub is_mfa_capable: bool,
    #[serde(default, deserialize_with = "strings")]
    pub methods_registered: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepaidUnits {
    #[serde(default, deserialize_with = "lenient::u64")]
    pub enabled: u64,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub suspended: u64,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub warning: u64,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub locked_out: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    #[serde(default, deserialize_with = "lenient::string")]
    pub service_plan_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub service_plan_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub provisioning_status: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub applies_to: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribedSku {
    #[serde(default, deserialize_with = "lenient::string")]
    pub sku_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub sku_part_number: String,
    /// `Enabled`, `Warning`, `Suspended`, `Deleted`, `LockedOut`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub capability_status: String,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub consumed_units: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub prepaid_units: PrepaidUnits,
    #[serde(default, deserialize_with = "null_default")]
    pub service_plans: Vec<ServicePlan>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub applies_to: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelationshipCustomer {
    #[serde(default, deserialize_with = "lenient::string")]
    pub tenant_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub display_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnifiedRole {
    #[serde(default, deserialize_with = "lenient::string")]
    pub role_definition_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessDetails {
    #[serde(default, deserialize_with = "null_default")]
    pub unified_roles: Vec<UnifiedRole>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelegatedAdminRelationship {
    #[serde(default, rename = "@odata.type", deserialize_with = "lenient::string")]
    pub odata_type: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub display_name: String,
    /// ISO 8601, e.g. `P730D`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub duration: String,
    /// `PT0S` (no extension, the default), `P0D`, or `P180D`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub auto_extend_duration: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub status: String,
    #[serde(default, deserialize_with = "null_default")]
    pub customer: RelationshipCustomer,
    #[serde(default, deserialize_with = "null_default")]
    pub access_details: AccessDetails,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub activated_date_time: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub end_date_time: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessContainer {
    #[serde(default, deserialize_with = "lenient::string")]
    pub access_container_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub access_container_type: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessAssignment {
    #[serde(default, deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub status: String,
    #[serde(default, deserialize_with = "null_default")]
    pub access_container: AccessContainer,
    #[serde(default, deserialize_with = "null_default")]
    pub access_details: AccessDetails,
}

/// A requirement of the partner security score. Subtype fields (`totalAdminsCount`,
/// `averageResponseTimeInHours`, …) are kept in `details`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityRequirement {
    #[serde(default, rename = "@odata.type", deserialize_with = "lenient::string")]
    pub odata_type: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub requirement_type: String,
    /// `compliant`, or `noncomplaint` / `nonCompliant`: see [`Self::is_compliant`].
    #[serde(default, deserialize_with = "lenient::string")]
    pub compliance_status: String,
    #[serde(default, deserialize_with = "number")]
    pub score: f64,
    #[serde(default, deserialize_with = "number")]
    pub max_score: f64,
    /// `active` or `preview`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub state: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub action_url: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub help_url: String,
    #[serde(flatten)]
    pub details: serde_json::Map<String, Value>,
}

impl SecurityRequirement {
    pub fn is_compliant(&self) -> bool {
        self.compliance_status.eq_ignore_ascii_case("compliant")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityScore {
    #[serde(default, deserialize_with = "number")]
    pub current_score: f64,
    #[serde(default, deserialize_with = "number")]
    pub max_score: f64,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub last_refresh_date_time: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, deserialize_with = "null_default")]
    pub requirements: Vec<SecurityRequirement>,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + DeserializeOwned,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A string array; null is empty, and non-string items keep their JSON text.
fn strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        Value::String(s) if !s.is_empty() => vec![s],
        _ => Vec::new(),
    })
}

/// A number sent as a number or as a string; anything else is 0.
fn number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::String(s) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    })
}

#[derive(Deserialize)]
struct ODataPage<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

// ---- the client ----------------------------------------------------------------------------

/// The Graph client for compliance reads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GraphComplianceClient {
    http: reqwest::Client,
    base: reqwest::Url,
    retry: RetryPolicy,
    usage: Arc<Usage>,
    /// Safety cap on pages per collection, so a looping next link cannot run forever.
    max_pages: usize,
}

impl GraphComplianceClient {
    /// `base` is `https://graph.microsoft.com` in production.
    pub fn new(http: reqwest::Client, base: reqwest::Url, retry: RetryPolicy) -> Self {
        let mut base = base;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Self {
            http,
            base,
            retry,
            usage: Arc::new(Usage::default()),
            max_pages: 10_000,
        }
    }

    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, HttpError> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| HttpError::RefusedUrl(e.to_string()))
    }

    /// A next link, only on our own Graph origin.
    fn follow(&self, link: &str) -> Result<reqwest::Url, HttpError> {
        let url = self
            .base
            .join(link)
            .map_err(|e| HttpError::RefusedUrl(e.to_string()))?;
        if url.origin() != self.base.origin() {
            return Err(HttpError::RefusedUrl(format!(
                "next link to another host: {}",
                url.host_str().unwrap_or_default()
            )));
        }
        Ok(url)
    }

    async fn get<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        url: &reqwest::Url,
    ) -> Result<T, HttpError> {
        send_budgeted(&self.retry, &self.usage, call, url, || {
            self.http
                .get(url.clone())
                .bearer_auth(call.access_token)
                .header("Accept", "application/json")
                // Graph's request id for support cases.
                .header("client-request-id", uuid::Uuid::new_v4().to_string())
        })
        .await
    }

    async fn collect<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        first: reqwest::Url,
    ) -> Result<Vec<T>, HttpError> {
        let mut items = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > self.max_pages {
                return Err(HttpError::malformed("GET", &url, "too many pages"));
            }
            let page: ODataPage<T> = self.get(call, &url).await?;
            items.extend(page.value);
            next = page
                .next_link
                .filter(|l| !l.is_empty())
                .map(|l| self.follow(&l))
                .transpose()?;
        }
        Ok(items)
    }

    pub async fn security_defaults(
        &self,
        call: &Call<'_>,
    ) -> Result<SecurityDefaultsPolicy, HttpError> {
        let url = self.url("v1.0/policies/identitySecurityDefaultsEnforcementPolicy")?;
        self.get(call, &url).await
    }

    pub async fn conditional_access_policies(
        &self,
        call: &Call<'_>,
    ) -> Result<Vec<ConditionalAccessPolicy>, HttpError> {
        let url = self.url("v1.0/identity/conditionalAccess/policies")?;
        self.collect(call, url).await
    }

    /// `filter` is an OData `$filter` with `eq` clauses, e.g. `isAdmin eq true`.
    pub async fn user_registration_details(
        &self,
        call: &Call<'_>,
        filter: Option<&str>,
    ) -> Result<Vec<UserRegistrationDetail>, HttpError> {
        let mut url = self.url("v1.0/reports/authenticationMethods/userRegistrationDetails")?;
        if let Some(filter) = filter {
            url.query_pairs_mut().append_pair("$filter", filter);
        }
        self.collect(call, url).await
    }

    pub async fn subscribed_skus(&self, call: &Call<'_>) -> Result<Vec<SubscribedSku>, HttpError> {
        let url = self.url("v1.0/subscribedSkus")?;
        self.collect(call, url).await
    }

    /// Every relationship of the partner, 300 a page (the documented maximum).
    pub async fn delegated_admin_relationships(
        &self,
        call: &Call<'_>,
    ) -> Result<Vec<DelegatedAdminRelationship>, HttpError> {
        let mut url = self.url("v1.0/tenantRelationships/delegatedAdminRelationships")?;
        url.query_pairs_mut().append_pair("$top", "300");
        self.collect(call, url).await
    }

    pub async fn access_assignments(
        &self,
        call: &Call<'_>,
        relationship_id: &str,
    ) -> Result<Vec<AccessAssignment>, HttpError> {
        let mut url = self.url("v1.0/tenantRelationships/delegatedAdminRelationships")?;
        url.path_segments_mut()
            .map_err(|()| HttpError::RefusedUrl("base cannot be a base".into()))?
            .push(relationship_id)
            .push("accessAssignments");
        self.collect(call, url).await
    }

    /// The partner's security score with each requirement (beta).
    pub async fn security_score(&self, call: &Call<'_>) -> Result<SecurityScore, HttpError> {
        let mut url = self.url("beta/security/partner/securityScore")?;
        url.query_pairs_mut().append_pair("$expand", "requirements");
        self.get(call, &url).await
    }
}

/// Whether a Graph error says the tenant or token lacks something (permission, licence), as
/// opposed to a transient fault: such errors make a check `unknown` with the reason.
pub fn is_denied(error: &HttpError) -> bool {
    matches!(error.status(), Some(401 | 403))
}

/// The wait a caller should respect before asking the same tenant again, if Graph said.
pub fn retry_after(error: &HttpError) -> Option<Duration> {
    error.retry_after()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_parse_both_spellings_and_keep_subtype_fields() {
        let score: SecurityScore = serde_json::from_str(
            r##"{"currentScore":"60","maxScore":100.0,"requirements":[
              {"@odata.type":"#microsoft.graph.partner.security.adminsMfaEnforcedSecurityRequirement",
               "id":"a","requirementType":"mfaEnforcedForAdmins","complianceStatus":"noncomplaint",
               "score":0,"maxScore":"20","state":"active","totalAdminsCount":3,"mfaEnabledAdminsCount":2},
              {"id":"b","requirementType":"securityContactProvided","complianceStatus":"compliant",
               "score":20,"maxScore":20,"state":"active"}]}"##,
        )
        .unwrap();
        assert_eq!(score.current_score, 60.0);
        assert!(!score.requirements[0].is_compliant());
        assert!(score.requirements[1].is_compliant());
        assert_eq!(score.requirements[0].max_score, 20.0);
        assert_eq!(score.requirements[0].details["totalAdminsCount"], 3);
    }

    #[test]
    fn policies_tolerate_nulls_and_missing_parts() {
        let p: ConditionalAccessPolicy = serde_json::from_str(
            r#"{"id":"x","displayName":"MFA","state":"enabled","conditions":null,
                "grantControls":{"operator":"OR","builtInControls":["mfa"]}}"#,
        )
        .unwrap();
        assert_eq!(p.grant_controls.built_in_controls, vec!["mfa"]);
        assert!(p.conditions.users.include_users.is_empty());
    }
}
