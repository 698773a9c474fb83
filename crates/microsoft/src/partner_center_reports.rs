//! Partner Center reads of the compliance checker (reference §5.1, §6 profiles, §7 customers):
//!
//! - `GET /v1/nonMfaCompliantPartnerPrincipals` → `{totalCount, items}`
//! - `GET /v1/applicationmfaadoptionstatus` → a bare array (an envelope is accepted too)
//! - `GET /v1/partnerRequests` → `{totalCount, items}` (App+User requests of the last 7 days)
//! - `GET /v1/profiles/organization`, `GET /v1/profiles/legalbusiness?vettingVersion=Current`
//! - `GET /v1/customers?size=500`, following `links.next` with its `MS-ContinuationToken`
//! - `GET /v1/customers/{id}` for `allowDelegatedAccess` (only the by-id answer carries it)
//!
//! All are App+User: a token without the MFA claim gets 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"`, reported as [`is_mfa_rejection`].
//! Requests carry `MS-RequestId` (kept across retries), `MS-CorrelationId` and
//! `MS-Contract-Version`, and spend the caller's budgets like the Graph client's do.

use std::sync::Arc;

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use crate::graph_alerts::lenient;
use crate::graph_compliance::{Call, Usage, send_budgeted};
use crate::http::{HttpError, RetryPolicy};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NonMfaCompliantPrincipal {
    #[serde(default, deserialize_with = "lenient::string")]
    pub object_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub tenant_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub upn: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub last_non_mfa_compliant_request_date_time: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationMfaAdoption {
    #[serde(default, deserialize_with = "lenient::string")]
    pub login_date: String,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub mfa_compliant_request_count: u64,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub total_request_count: u64,
    #[serde(default, deserialize_with = "lenient::string")]
    pub application_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub application_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartnerRequest {
    #[serde(default, deserialize_with = "lenient::string")]
    pub request_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub operation_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub request_date_time: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub upn: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub application_id: String,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub mfa_compliant: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationProfile {
    #[serde(default, deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub company_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub tenant_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub domain: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub email: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    #[serde(default, deserialize_with = "lenient::string")]
    pub first_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub last_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub email: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub phone_number: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegalBusinessProfile {
    #[serde(default, deserialize_with = "lenient::string")]
    pub company_name: String,
    #[serde(default)]
    pub primary_contact: Option<Contact>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub vetting_status: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub vetting_sub_status: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerCompanyProfile {
    #[serde(default, deserialize_with = "lenient::string")]
    pub tenant_id: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub domain: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub company_name: String,
}

/// A customer as the list and get-by-id return it. `allow_delegated_access` is `None` when the
/// answer does not carry the flag (the list never does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerRecord {
    #[serde(default, deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(default)]
    pub company_profile: Option<CustomerCompanyProfile>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub relationship_to_partner: String,
    #[serde(default, deserialize_with = "opt_bool")]
    pub allow_delegated_access: Option<bool>,
}

impl CustomerRecord {
    pub fn tenant_id(&self) -> &str {
        self.company_profile
            .as_ref()
            .map(|p| p.tenant_id.as_str())
            .filter(|t| !t.is_empty())
            .unwrap_or(&self.id)
    }
    pub fn display_name(&self) -> &str {
        self.company_profile
            .as_ref()
            .map(|p| p.company_name.as_str())
            .unwrap_or_default()
    }
}

fn opt_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => Some(b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    })
}

#[derive(Deserialize)]
struct Collection<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
    #[serde(default)]
    links: Option<Links>,
}

#[derive(Deserialize)]
struct Links {
    #[serde(default)]
    next: Option<Link>,
}

#[derive(Deserialize)]
struct Link {
    #[serde(default)]
    uri: String,
    #[serde(default)]
    headers: Vec<LinkHeader>,
}

#[derive(Deserialize)]
struct LinkHeader {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

/// Either a bare array or `{items: [...]}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ArrayOrCollection<T> {
    Array(Vec<T>),
    Collection { items: Vec<T> },
}

/// The Partner Center client for compliance reads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PartnerCenterReportsClient {
    http: reqwest::Client,
    base: reqwest::Url,
    retry: RetryPolicy,
    usage: Arc<Usage>,
}

impl PartnerCenterReportsClient {
    /// `base` is `https://api.partnercenter.microsoft.com` in production.
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

    async fn get<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        url: &reqwest::Url,
        extra: &[(String, String)],
    ) -> Result<T, HttpError> {
        // Kept across the retries of this call: Partner Center's idempotency key.
        let request_id = uuid::Uuid::new_v4().to_string();
        send_budgeted(&self.retry, &self.usage, call, url, || {
            let mut request = self
                .http
                .get(url.clone())
                .bearer_auth(call.access_token)
                .header("Accept", "application/json")
                .header("MS-RequestId", &request_id)
                .header("MS-CorrelationId", uuid::Uuid::new_v4().to_string())
                .header("MS-Contract-Version", "v1");
            for (k, v) in extra {
                request = request.header(k.as_str(), v.as_str());
            }
            request
        })
        .await
    }

    pub async fn non_mfa_compliant_principals(
        &self,
        call: &Call<'_>,
    ) -> Result<Vec<NonMfaCompliantPrincipal>, HttpError> {
        let url = self.url("v1/nonMfaCompliantPartnerPrincipals")?;
        self.collect(call, url).await
    }

    pub async fn application_mfa_adoption(
        &self,
        call: &Call<'_>,
    ) -> Result<Vec<ApplicationMfaAdoption>, HttpError> {
        let url = self.url("v1/applicationmfaadoptionstatus")?;
        Ok(match self.get(call, &url, &[]).await? {
            ArrayOrCollection::Array(items) | ArrayOrCollection::Collection { items } => items,
        })
    }

    pub async fn partner_requests(
        &self,
        call: &Call<'_>,
    ) -> Result<Vec<PartnerRequest>, HttpError> {
        let url = self.url("v1/partnerRequests")?;
        self.collect(call, url).await
    }

    pub async fn organization_profile(
        &self,
        call: &Call<'_>,
    ) -> Result<OrganizationProfile, HttpError> {
        let url = self.url("v1/profiles/organization")?;
        self.get(call, &url, &[]).await
    }

    pub async fn legal_business_profile(
        &self,
        call: &Call<'_>,
    ) -> Result<LegalBusinessProfile, HttpError> {
        let mut url = self.url("v1/profiles/legalbusiness")?;
        url.query_pairs_mut()
            .append_pair("vettingVersion", "Current");
        self.get(call, &url, &[]).await
    }

    /// Every customer of the partner, 500 a page.
    pub async fn customers(&self, call: &Call<'_>) -> Result<Vec<CustomerRecord>, HttpError> {
        let mut url = self.url("v1/customers")?;
        url.query_pairs_mut().append_pair("size", "500");
        self.collect(call, url).await
    }

    pub async fn customer(
        &self,
        call: &Call<'_>,
        customer_tenant_id: &str,
    ) -> Result<CustomerRecord, HttpError> {
        let mut url = self.url("v1/customers")?;
        url.path_segments_mut()
            .map_err(|()| HttpError::RefusedUrl("base cannot be a base".into()))?
            .push(customer_tenant_id);
        self.get(call, &url, &[]).await
    }

    /// A collection, following `links.next` (a relative uri, with or without `/v1`, and the
    /// headers it names, typically `MS-ContinuationToken`).
    async fn collect<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        first: reqwest::Url,
    ) -> Result<Vec<T>, HttpError> {
        let mut items = Vec::new();
        let mut next = Some((first, Vec::new()));
        let mut pages = 0;
        while let Some((url, headers)) = next.take() {
            pages += 1;
            if pages > 10_000 {
                return Err(HttpError::malformed("GET", &url, "too many pages"));
            }
            let page: Collection<T> = self.get(call, &url, &headers).await?;
            items.extend(page.items);
            if let Some(link) = page
                .links
                .and_then(|l| l.next)
                .filter(|l| !l.uri.is_empty())
            {
                let path = link.uri.trim_start_matches('/');
                let path = if path.starts_with("v1/") {
                    path.to_owned()
                } else {
                    format!("v1/{path}")
                };
                let url = self.url(&path)?;
                if url.origin() != self.base.origin() {
                    return Err(HttpError::RefusedUrl("next link to another host".into()));
                }
                let headers = link
                    .headers
                    .into_iter()
                    .filter(|h| !h.key.is_empty())
                    .map(|h| (h.key, h.value))
                    .collect();
                next = Some((url, headers));
            }
        }
        Ok(items)
    }
}

/// Partner Center refused the token because it lacks the MFA claim.
pub fn is_mfa_rejection(error: &HttpError) -> bool {
    match error {
        HttpError::Status {
            status: 401,
            www_authenticate: Some(value),
            ..
        } => value.contains("invalid_token"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adoption_is_a_bare_array_or_a_collection() {
        let bare: ArrayOrCollection<ApplicationMfaAdoption> = serde_json::from_str(
            r#"[{"loginDate":"2025-03-01T00:00:00Z","mfaCompliantRequestCount":"3","totalRequestCount":4,"applicationId":"a","applicationName":"n"}]"#,
        )
        .unwrap();
        let ArrayOrCollection::Array(items) = bare else {
            panic!("a bare array")
        };
        assert_eq!(items[0].mfa_compliant_request_count, 3);
        let wrapped: ArrayOrCollection<ApplicationMfaAdoption> =
            serde_json::from_str(r#"{"totalCount":0,"items":[]}"#).unwrap();
        assert!(matches!(wrapped, ArrayOrCollection::Collection { items } if items.is_empty()));
    }

    #[test]
    fn only_the_by_id_customer_carries_dap() {
        let listed: CustomerRecord = serde_json::from_str(
            r#"{"id":"c1","companyProfile":{"tenantId":"c1","companyName":"Contoso"}}"#,
        )
        .unwrap();
        assert_eq!(listed.allow_delegated_access, None);
        assert_eq!(listed.display_name(), "Contoso");
        let by_id: CustomerRecord =
            serde_json::from_str(r#"{"id":"c1","allowDelegatedAccess":"True"}"#).unwrap();
        assert_eq!(by_id.allow_delegated_access, Some(true));
    }
}
