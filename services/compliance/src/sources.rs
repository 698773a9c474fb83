//! Where observations come from: the other Palisade services over gRPC (the broker for
//! tokens, MFA statistics and consents; the notifier for contacts; alert-ingest for response
//! times), and Microsoft over HTTP with those tokens. Each read returns an [`Obs`]: a failure
//! becomes the reason a check is `unknown`, never an error of the whole evaluation.

use std::{collections::HashMap, sync::Arc, time::Duration};

use palisade_auth::BearerInterceptor;
use palisade_contracts::{
    alerts::v1::{GetResponseTimesRequest, alert_service_client::AlertServiceClient},
    common::v1::TimeRange,
    notify::v1::{
        GetSecurityContactStatusRequest, notification_service_client::NotificationServiceClient,
    },
    tokens::v1::{
        GetAccessTokenRequest, GetMfaStatisticsRequest, ListAppsRequest, ListConsentsRequest,
        Resource, TokenHealthState, token_broker_service_client::TokenBrokerServiceClient,
    },
};
use palisade_microsoft::{
    graph_compliance::{Call, GraphComplianceClient},
    http::{RetryPolicy, Throttle},
    partner_center_reports::{PartnerCenterReportsClient, is_mfa_rejection},
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::model::*;

/// Palisade's own services, as the evaluator needs them.
#[async_trait::async_trait]
pub trait Peers: Send + Sync {
    /// An access token for `target` (the partner itself or a customer) from the broker.
    async fn access_token(&self, partner: &str, target: &str, resource: Resource) -> Obs<String>;
    async fn token_mfa(&self, partner: &str, since: i64, until: i64) -> Obs<TokenMfaStats>;
    async fn sam(&self, partner: &str) -> Obs<Vec<SamApp>>;
    async fn contacts(&self, partner: &str) -> Obs<ContactStatus>;
    async fn alert_response(&self, partner: &str, as_of: i64) -> Obs<AlertResponse>;
}

/// Addresses of the other services and this service's credential for calling them.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSettings {
    pub token_broker: String,
    pub notifier: String,
    pub alert_ingest: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl std::fmt::Debug for PeerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSettings")
            .field("token_broker", &self.token_broker)
            .field("notifier", &self.notifier)
            .field("alert_ingest", &self.alert_ingest)
            .finish_non_exhaustive()
    }
}

impl Default for PeerSettings {
    /// The ports `palisade dev` uses.
    fn default() -> Self {
        Self {
            token_broker: "http://127.0.0.1:50051".into(),
            alert_ingest: "http://127.0.0.1:50052".into(),
            notifier: "http://127.0.0.1:50053".into(),
            timeout: Duration::from_secs(20),
        }
    }
}

type Authed = InterceptedService<Channel, BearerInterceptor>;

/// [`Peers`] over gRPC, presenting this service's credential.
#[derive(Clone)]
pub struct GrpcPeers {
    broker: TokenBrokerServiceClient<Authed>,
    notifier: NotificationServiceClient<Authed>,
    alerts: AlertServiceClient<Authed>,
}

impl std::fmt::Debug for GrpcPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcPeers")
    }
}

fn channel(address: &str, timeout: Duration) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(address.to_owned())?
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        // Lazy: a peer that starts later (or restarts) is reached when it is up.
        .connect_lazy())
}

impl GrpcPeers {
    pub fn new(settings: &PeerSettings, credential: Option<&SecretString>) -> anyhow::Result<Self> {
        let interceptor = BearerInterceptor::new(credential);
        let c = |a: &str| channel(a, settings.timeout);
        Ok(Self {
            broker: TokenBrokerServiceClient::with_interceptor(
                c(&settings.token_broker)?,
                interceptor.clone(),
            ),
            notifier: NotificationServiceClient::with_interceptor(
                c(&settings.notifier)?,
                interceptor.clone(),
            ),
            alerts: AlertServiceClient::with_interceptor(c(&settings.alert_ingest)?, interceptor),
        })
    }
}

fn status_text(service: &str, s: &tonic::Status) -> String {
    format!("{service}: {:?}: {}", s.code(), s.message())
}

fn state_name(state: i32) -> String {
    TokenHealthState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TOKEN_HEALTH_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into())
}

#[async_trait::async_trait]
impl Peers for GrpcPeers {
    async fn access_token(&self, partner: &str, target: &str, resource: Resource) -> Obs<String> {
        let response = self
            .broker
            .clone()
            .get_access_token(GetAccessTokenRequest {
                partner_tenant_id: partner.to_owned(),
                target_tenant_id: target.to_owned(),
                resource: resource as i32,
                custom_scope: String::new(),
                force_refresh: false,
            })
            .await
            .map_err(|s| status_text("token broker", &s))?;
        Ok(response.into_inner().access_token)
    }

    async fn token_mfa(&self, partner: &str, since: i64, until: i64) -> Obs<TokenMfaStats> {
        let r = self
            .broker
            .clone()
            .get_mfa_statistics(GetMfaStatisticsRequest {
                partner_tenant_id: partner.to_owned(),
                time_range: Some(TimeRange {
                    start: Some(palisade_contracts::time::from_millis(since)),
                    end: Some(palisade_contracts::time::from_millis(until)),
                }),
            })
            .await
            .map_err(|s| status_text("token broker", &s))?
            .into_inner();
        Ok(TokenMfaStats {
            minted: r.tokens_minted,
            minted_with_mfa: r.tokens_minted_with_mfa,
        })
    }

    async fn sam(&self, partner: &str) -> Obs<Vec<SamApp>> {
        let mut broker = self.broker.clone();
        let mut apps = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = broker
                .list_apps(ListAppsRequest {
                    partner_tenant_id: partner.to_owned(),
                    page_size: 200,
                    page_token: page_token.clone(),
                })
                .await
                .map_err(|s| status_text("token broker", &s))?
                .into_inner();
            apps.extend(r.apps);
            if r.next_page_token.is_empty() {
                break;
            }
            page_token = r.next_page_token;
        }
        let mut consents = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = broker
                .list_consents(ListConsentsRequest {
                    partner_tenant_id: partner.to_owned(),
                    page_size: 200,
                    page_token: page_token.clone(),
                })
                .await
                .map_err(|s| status_text("token broker", &s))?
                .into_inner();
            consents.extend(r.consents);
            if r.next_page_token.is_empty() {
                break;
            }
            page_token = r.next_page_token;
        }
        let mut by_app: HashMap<String, Vec<SamConsent>> = HashMap::new();
        for c in consents {
            by_app
                .entry(c.app_id.clone())
                .or_default()
                .push(SamConsent {
                    consent_id: c.consent_id,
                    consented_by_upn: c.consented_by_upn,
                    consented_with_mfa: c.consented_with_mfa,
                    healthy: c.state == TokenHealthState::Healthy as i32,
                    state: state_name(c.state),
                    remediation: c.remediation,
                });
        }
        Ok(apps
            .into_iter()
            .map(|a| SamApp {
                consents: by_app.remove(&a.app_id).unwrap_or_default(),
                app_id: a.app_id,
                display_name: a.display_name,
            })
            .collect())
    }

    async fn contacts(&self, partner: &str) -> Obs<ContactStatus> {
        let r = self
            .notifier
            .clone()
            .get_security_contact_status(GetSecurityContactStatusRequest {
                partner_tenant_id: partner.to_owned(),
            })
            .await
            .map_err(|s| status_text("notifier", &s))?
            .into_inner();
        Ok(ContactStatus {
            security_contact_present: r.security_contact_present,
            security_contact_complete: r.security_contact_complete,
            missing_fields: r.missing_fields,
            compliance_contact_present: r.compliance_contact_present,
        })
    }

    async fn alert_response(&self, partner: &str, as_of: i64) -> Obs<AlertResponse> {
        let r = self
            .alerts
            .clone()
            .get_response_times(GetResponseTimesRequest {
                partner_tenant_id: partner.to_owned(),
                as_of: Some(palisade_contracts::time::from_millis(as_of)),
            })
            .await
            .map_err(|s| status_text("alert-ingest", &s))?
            .into_inner();
        Ok(AlertResponse {
            average_response_seconds: r.average_response_seconds,
            resolved_in_window: r.resolved_in_window,
            unresolved_older_than_requirement: r.unresolved_older_than_requirement,
            breaching_alert_ids: r.breaching_alerts.into_iter().map(|a| a.alert_id).collect(),
        })
    }
}

// ---- Microsoft -----------------------------------------------------------------------------

/// Base URLs and throttle budgets for Microsoft.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MicrosoftSettings {
    /// `https://graph.microsoft.com` in production; ms-sim's Graph URL in tests.
    pub graph_url: String,
    /// `https://api.partnercenter.microsoft.com` in production.
    pub partner_center_url: String,
    /// Graph throttles per app across tenants (130,000 per 10 s published); this is the share
    /// this deployment may spend, in requests per second.
    pub graph_requests_per_second: f64,
    /// Per tenant, so one customer's throttling never slows the others.
    pub graph_tenant_requests_per_second: f64,
    pub graph_tenant_burst: u32,
    /// Partner Center limits the customer resources to 500 requests a minute per partner.
    pub partner_center_requests_per_minute: f64,
    pub partner_center_burst: u32,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for MicrosoftSettings {
    fn default() -> Self {
        Self {
            graph_url: "https://graph.microsoft.com".into(),
            partner_center_url: "https://api.partnercenter.microsoft.com".into(),
            graph_requests_per_second: 2000.0,
            graph_tenant_requests_per_second: 20.0,
            graph_tenant_burst: 20,
            partner_center_requests_per_minute: 450.0,
            partner_center_burst: 20,
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl MicrosoftSettings {
    pub fn validate(&self) -> Result<(), String> {
        for (key, url) in [
            ("microsoft.graph_url", &self.graph_url),
            ("microsoft.partner_center_url", &self.partner_center_url),
        ] {
            url::Url::parse(url).map_err(|e| format!("{key}: {e}"))?;
        }
        for (key, v) in [
            (
                "microsoft.graph_requests_per_second",
                self.graph_requests_per_second,
            ),
            (
                "microsoft.graph_tenant_requests_per_second",
                self.graph_tenant_requests_per_second,
            ),
            (
                "microsoft.partner_center_requests_per_minute",
                self.partner_center_requests_per_minute,
            ),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{key}: must be a positive number"));
            }
        }
        if self.max_attempts == 0 {
            return Err("microsoft.max_attempts: must be at least 1".into());
        }
        Ok(())
    }
}

/// Microsoft's Graph and Partner Center, read with tokens from the broker, within budgets: one
/// for the app across every tenant, one per tenant (customers are throttled separately), and
/// one per partner for Partner Center.
#[derive(Debug)]
pub struct Microsoft {
    pub graph: GraphComplianceClient,
    pub partner_center: PartnerCenterReportsClient,
    settings: MicrosoftSettings,
    graph_app: Arc<Throttle>,
    tenants: std::sync::Mutex<HashMap<String, Arc<Throttle>>>,
    partner_center_budgets: std::sync::Mutex<HashMap<String, Arc<Throttle>>>,
}

/// Kept for the short-lived customer budgets: a tenant's throttle is dropped when idle.
const MAX_TENANT_BUDGETS: usize = 50_000;

impl Microsoft {
    pub fn new(settings: &MicrosoftSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let retry = RetryPolicy {
            max_attempts: settings.max_attempts,
            base_delay: settings.base_delay,
            max_retry_after: settings.max_retry_after,
            ..RetryPolicy::default()
        };
        Ok(Self {
            graph: GraphComplianceClient::new(
                http.clone(),
                url::Url::parse(&settings.graph_url)?,
                retry.clone(),
            ),
            partner_center: PartnerCenterReportsClient::new(
                http,
                url::Url::parse(&settings.partner_center_url)?,
                retry,
            ),
            graph_app: Arc::new(Throttle::new(
                settings.graph_requests_per_second,
                (settings.graph_requests_per_second as u32).clamp(1, 1000),
            )),
            settings: settings.clone(),
            tenants: std::sync::Mutex::new(HashMap::new()),
            partner_center_budgets: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> &MicrosoftSettings {
        &self.settings
    }

    /// The budgets a Graph call for `tenant` spends: the app's, then the tenant's.
    pub fn graph_budgets(&self, tenant: &str) -> [Arc<Throttle>; 2] {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if tenants.len() > MAX_TENANT_BUDGETS {
            // Budgets nobody else holds are idle; dropping them forgets only a full bucket.
            tenants.retain(|_, t| Arc::strong_count(t) > 1);
        }
        let tenant_budget = tenants
            .entry(tenant.to_ascii_lowercase())
            .or_insert_with(|| {
                Arc::new(Throttle::new(
                    self.settings.graph_tenant_requests_per_second,
                    self.settings.graph_tenant_burst,
                ))
            })
            .clone();
        [self.graph_app.clone(), tenant_budget]
    }

    /// The Partner Center budget of a partner.
    pub fn partner_center_budgets(&self, partner: &str) -> [Arc<Throttle>; 1] {
        let mut budgets = self
            .partner_center_budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        [budgets
            .entry(partner.to_ascii_lowercase())
            .or_insert_with(|| {
                Arc::new(Throttle::new(
                    self.settings.partner_center_requests_per_minute / 60.0,
                    self.settings.partner_center_burst,
                ))
            })
            .clone()]
    }

    /// Graph requests sent (pages and retries included) and 429s received.
    pub fn graph_usage(&self) -> (u64, u64) {
        let u = self.graph.usage();
        (u.requests(), u.throttled())
    }

    pub fn partner_center_usage(&self) -> (u64, u64) {
        let u = self.partner_center.usage();
        (u.requests(), u.throttled())
    }
}

fn http_text(e: &palisade_microsoft::http::HttpError) -> String {
    if is_mfa_rejection(e) {
        return format!("Partner Center rejected the token for lack of MFA ({e})");
    }
    e.to_string()
}

/// Graph reads for one tenant with one token.
pub struct GraphTenant<'a> {
    pub microsoft: &'a Microsoft,
    pub token: &'a str,
    pub budgets: &'a [Arc<Throttle>],
}

impl GraphTenant<'_> {
    fn call(&self) -> Call<'_> {
        Call {
            access_token: self.token,
            budgets: self.budgets,
        }
    }

    pub async fn security_defaults(&self) -> Obs<bool> {
        self.microsoft
            .graph
            .security_defaults(&self.call())
            .await
            .map(|p| p.is_enabled)
            .map_err(|e| http_text(&e))
    }

    pub async fn ca_policies(&self) -> Obs<Vec<CaPolicy>> {
        let policies = self
            .microsoft
            .graph
            .conditional_access_policies(&self.call())
            .await
            .map_err(|e| http_text(&e))?;
        Ok(policies
            .into_iter()
            .map(|p| CaPolicy {
                id: p.id,
                display_name: p.display_name,
                state: p.state,
                operator: p.grant_controls.operator,
                built_in_controls: p.grant_controls.built_in_controls,
                authentication_strength: p
                    .grant_controls
                    .authentication_strength
                    .is_some_and(|v| !v.is_null()),
                include_users: p.conditions.users.include_users,
                exclude_users: p.conditions.users.exclude_users,
                include_groups: p.conditions.users.include_groups,
                exclude_groups: p.conditions.users.exclude_groups,
                include_roles: p.conditions.users.include_roles,
                exclude_roles: p.conditions.users.exclude_roles,
                excludes_guests_or_external: p
                    .conditions
                    .users
                    .exclude_guests_or_external_users
                    .is_some_and(|v| !v.is_null()),
                include_applications: p.conditions.applications.include_applications,
                exclude_applications: p.conditions.applications.exclude_applications,
                client_app_types: p.conditions.client_app_types,
            })
            .collect())
    }

    pub async fn registrations(&self, admins_only: bool) -> Obs<Vec<UserRegistration>> {
        let filter = admins_only.then_some("isAdmin eq true");
        let users = self
            .microsoft
            .graph
            .user_registration_details(&self.call(), filter)
            .await
            .map_err(|e| http_text(&e))?;
        Ok(users
            .into_iter()
            .map(|u| UserRegistration {
                id: u.id,
                user_principal_name: u.user_principal_name,
                display_name: u.user_display_name,
                is_admin: u.is_admin,
                is_mfa_registered: u.is_mfa_registered,
                is_mfa_capable: u.is_mfa_capable,
            })
            .collect())
    }

    pub async fn skus(&self) -> Obs<Vec<Sku>> {
        let skus = self
            .microsoft
            .graph
            .subscribed_skus(&self.call())
            .await
            .map_err(|e| http_text(&e))?;
        Ok(skus
            .into_iter()
            .map(|s| Sku {
                sku_id: s.sku_id,
                sku_part_number: s.sku_part_number,
                capability_status: s.capability_status,
                enabled_units: s.prepaid_units.enabled,
                consumed_units: s.consumed_units,
                service_plans: s
                    .service_plans
                    .into_iter()
                    .map(|p| (p.service_plan_id, p.service_plan_name))
                    .collect(),
            })
            .collect())
    }

    pub async fn relationships(&self) -> Obs<Vec<GdapRelationship>> {
        let list = self
            .microsoft
            .graph
            .delegated_admin_relationships(&self.call())
            .await
            .map_err(|e| http_text(&e))?;
        Ok(list
            .into_iter()
            .map(|g| GdapRelationship {
                id: g.id,
                display_name: g.display_name,
                status: g.status,
                customer_tenant_id: g.customer.tenant_id,
                customer_name: g.customer.display_name,
                role_ids: g
                    .access_details
                    .unified_roles
                    .into_iter()
                    .map(|r| r.role_definition_id)
                    .collect(),
                auto_extend_duration: g.auto_extend_duration,
                end_millis: g.end_date_time.map(|d| d.timestamp_millis()),
            })
            .collect())
    }

    pub async fn security_score(&self) -> Obs<MsScore> {
        let s = self
            .microsoft
            .graph
            .security_score(&self.call())
            .await
            .map_err(|e| http_text(&e))?;
        Ok(MsScore {
            current: s.current_score,
            max: s.max_score,
            requirements: s
                .requirements
                .into_iter()
                .map(|q| {
                    let compliant = q.is_compliant();
                    let details = q
                        .details
                        .iter()
                        .filter(|(k, v)| {
                            !k.starts_with('@')
                                && !matches!(k.as_str(), "updatedDateTime")
                                && (v.is_number() || v.is_string() || v.is_boolean())
                        })
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                            )
                        })
                        .collect();
                    MsRequirement {
                        requirement_type: q.requirement_type,
                        compliant,
                        score: q.score,
                        max_score: q.max_score,
                        state: q.state,
                        help_url: q.help_url,
                        details,
                    }
                })
                .collect(),
        })
    }
}

/// Partner Center reads for one partner with one token.
pub struct PartnerCenterPartner<'a> {
    pub microsoft: &'a Microsoft,
    pub token: &'a str,
    pub budgets: &'a [Arc<Throttle>],
}

impl PartnerCenterPartner<'_> {
    fn call(&self) -> Call<'_> {
        Call {
            access_token: self.token,
            budgets: self.budgets,
        }
    }

    pub async fn non_mfa_principals(&self) -> Obs<Vec<NonMfaPrincipal>> {
        let list = self
            .microsoft
            .partner_center
            .non_mfa_compliant_principals(&self.call())
            .await
            .map_err(|e| http_text(&e))?;
        Ok(list
            .into_iter()
            .map(|p| NonMfaPrincipal {
                upn: p.upn,
                last_non_mfa_request: p.last_non_mfa_compliant_request_date_time,
            })
            .collect())
    }

    /// The MFA share of App+User requests: the request log when it has entries, else the
    /// per-application daily counts.
    pub async fn request_share(&self) -> Obs<RequestShare> {
        let requests = self
            .microsoft
            .partner_center
            .partner_requests(&self.call())
            .await
            .map_err(|e| http_text(&e))?;
        if !requests.is_empty() {
            let with_mfa = requests.iter().filter(|r| r.mfa_compliant).count() as u64;
            let mut without: Vec<String> = requests
                .iter()
                .filter(|r| !r.mfa_compliant)
                .map(|r| {
                    if r.upn.is_empty() {
                        format!("application {}", r.application_id)
                    } else {
                        r.upn.clone()
                    }
                })
                .collect();
            without.sort();
            without.dedup();
            return Ok(RequestShare {
                total: requests.len() as u64,
                with_mfa,
                without_mfa: without,
            });
        }
        let adoption = self
            .microsoft
            .partner_center
            .application_mfa_adoption(&self.call())
            .await
            .map_err(|e| http_text(&e))?;
        let mut share = RequestShare::default();
        for a in adoption {
            share.total += a.total_request_count;
            share.with_mfa += a.mfa_compliant_request_count.min(a.total_request_count);
            if a.mfa_compliant_request_count < a.total_request_count {
                share.without_mfa.push(format!(
                    "application {}",
                    if a.application_name.is_empty() {
                        &a.application_id
                    } else {
                        &a.application_name
                    }
                ));
            }
        }
        share.without_mfa.sort();
        share.without_mfa.dedup();
        Ok(share)
    }

    pub async fn customers(&self) -> Obs<Vec<CustomerRef>> {
        let list = self
            .microsoft
            .partner_center
            .customers(&self.call())
            .await
            .map_err(|e| http_text(&e))?;
        Ok(list
            .into_iter()
            .map(|c| CustomerRef {
                tenant_id: c.tenant_id().to_ascii_lowercase(),
                display_name: c.display_name().to_owned(),
            })
            .collect())
    }

    /// Whether the customer still allows legacy DAP.
    pub async fn dap_allowed(&self, customer: &str) -> Obs<bool> {
        let c = self
            .microsoft
            .partner_center
            .customer(&self.call(), customer)
            .await
            .map_err(|e| http_text(&e))?;
        c.allow_delegated_access
            .ok_or_else(|| "Partner Center did not say whether DAP is allowed".to_owned())
    }
}
