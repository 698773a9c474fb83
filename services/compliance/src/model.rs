//! What an evaluation observes, in the service's own words, independent of the wire shapes it
//! was read from. The rules (`rules.rs`) are pure functions of these types, so every rule can be
//! proven on its own, and a source that failed is an `Err` carrying the reason, which the rule
//! turns into `unknown` rather than a guess.

use std::collections::BTreeMap;

use palisade_contracts::common::v1::Severity;
use palisade_contracts::compliance::v1::{CheckKind, CheckStatus};

/// An observation, or why it could not be made (the text a person will read as evidence).
pub type Obs<T> = Result<T, String>;

/// Global Administrator: a least-privilege GDAP relationship must not carry it.
pub const ROLE_GLOBAL_ADMINISTRATOR: &str = "62e90394-69f5-4237-9190-012177145e10";
/// The Entra ID P2 SKU and its service plan (found inside bundles such as E5).
pub const SKU_AAD_PREMIUM_P2: &str = "AAD_PREMIUM_P2";
pub const SKU_ID_AAD_PREMIUM_P2: &str = "84a661c4-e949-4bd2-a560-ed7766fcaf2b";
pub const SERVICE_PLAN_ID_AAD_PREMIUM_P2: &str = "eec0eb4f-6444-4f95-aba0-50c24d67f998";

/// A Conditional Access policy, reduced to what decides "MFA for everyone".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaPolicy {
    pub id: String,
    pub display_name: String,
    /// `enabled`, `disabled` or `enabledForReportingButNotEnforced`.
    pub state: String,
    /// `AND` or `OR`.
    pub operator: String,
    pub built_in_controls: Vec<String>,
    /// An authentication strength also demands MFA.
    pub authentication_strength: bool,
    pub include_users: Vec<String>,
    pub exclude_users: Vec<String>,
    pub include_groups: Vec<String>,
    pub exclude_groups: Vec<String>,
    pub include_roles: Vec<String>,
    pub exclude_roles: Vec<String>,
    pub excludes_guests_or_external: bool,
    pub include_applications: Vec<String>,
    pub exclude_applications: Vec<String>,
    pub client_app_types: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRegistration {
    pub id: String,
    pub user_principal_name: String,
    pub display_name: String,
    pub is_admin: bool,
    pub is_mfa_registered: bool,
    pub is_mfa_capable: bool,
}

/// A user Partner Center saw calling without MFA (`nonMfaCompliantPartnerPrincipals`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NonMfaPrincipal {
    pub upn: String,
    pub last_non_mfa_request: String,
}

/// App+User requests to Partner Center and how many carried the MFA claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestShare {
    pub total: u64,
    pub with_mfa: u64,
    /// Who called without MFA (UPN or application), for the finding's subjects.
    pub without_mfa: Vec<String>,
}

/// Tokens the broker minted, and how many carried MFA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenMfaStats {
    pub minted: u64,
    pub minted_with_mfa: u64,
}

/// One registered SAM app and the health of its consents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SamApp {
    pub app_id: String,
    pub display_name: String,
    pub consents: Vec<SamConsent>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SamConsent {
    pub consent_id: String,
    pub consented_by_upn: String,
    pub consented_with_mfa: bool,
    pub healthy: bool,
    /// The broker's state name, e.g. "expired", "mfa_required".
    pub state: String,
    pub remediation: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactStatus {
    pub security_contact_present: bool,
    pub security_contact_complete: bool,
    pub missing_fields: Vec<String>,
    pub compliance_contact_present: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertResponse {
    pub average_response_seconds: f64,
    pub resolved_in_window: u64,
    pub unresolved_older_than_requirement: u64,
    /// Alert ids resolved late or still open past the requirement.
    pub breaching_alert_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MsRequirement {
    pub requirement_type: String,
    /// `compliant` or not (`noncomplaint` / `nonCompliant`, as Microsoft spells it).
    pub compliant: bool,
    pub score: f64,
    pub max_score: f64,
    /// `active` or `preview`.
    pub state: String,
    pub help_url: String,
    /// Subtype fields (counts, average hours) as text, for evidence.
    pub details: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MsScore {
    pub current: f64,
    pub max: f64,
    pub requirements: Vec<MsRequirement>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GdapRelationship {
    pub id: String,
    pub display_name: String,
    pub status: String,
    pub customer_tenant_id: String,
    pub customer_name: String,
    pub role_ids: Vec<String>,
    /// `PT0S` / `P0D` (no extension) or e.g. `P180D`.
    pub auto_extend_duration: String,
    /// Unix milliseconds, when known.
    pub end_millis: Option<i64>,
}

impl GdapRelationship {
    pub fn auto_extends(&self) -> bool {
        !matches!(
            self.auto_extend_duration.trim(),
            "" | "PT0S" | "P0D" | "P0DT0S"
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sku {
    pub sku_id: String,
    pub sku_part_number: String,
    pub capability_status: String,
    pub enabled_units: u64,
    pub consumed_units: u64,
    /// Service plan ids and names inside the SKU.
    pub service_plans: Vec<(String, String)>,
}

impl Sku {
    /// Whether a seat of this SKU gives Entra ID P2 (the SKU itself or a bundle containing it).
    pub fn grants_p2(&self) -> bool {
        let usable = matches!(
            self.capability_status.to_ascii_lowercase().as_str(),
            "enabled" | "warning"
        );
        usable
            && (self
                .sku_part_number
                .eq_ignore_ascii_case(SKU_AAD_PREMIUM_P2)
                || self.sku_id.eq_ignore_ascii_case(SKU_ID_AAD_PREMIUM_P2)
                || self.service_plans.iter().any(|(id, name)| {
                    id.eq_ignore_ascii_case(SERVICE_PLAN_ID_AAD_PREMIUM_P2)
                        || name.eq_ignore_ascii_case(SKU_AAD_PREMIUM_P2)
                }))
    }
}

/// A customer of the partner, as Partner Center and GDAP know it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerRef {
    pub tenant_id: String,
    pub display_name: String,
}

/// Everything observed about the partner tenant and Palisade's own records of the partner.
#[derive(Debug, Clone)]
pub struct PartnerObservations {
    pub security_defaults: Obs<bool>,
    pub ca_policies: Obs<Vec<CaPolicy>>,
    pub registrations: Obs<Vec<UserRegistration>>,
    pub non_mfa_principals: Obs<Vec<NonMfaPrincipal>>,
    pub api_requests: Obs<RequestShare>,
    pub token_mfa: Obs<TokenMfaStats>,
    pub sam: Obs<Vec<SamApp>>,
    pub contacts: Obs<ContactStatus>,
    pub alert_response: Obs<AlertResponse>,
    pub ms_score: Obs<MsScore>,
    pub relationships: Obs<Vec<GdapRelationship>>,
    /// Customers whose legacy DAP is still allowed.
    pub dap_customers: Obs<Vec<CustomerRef>>,
    pub skus: Obs<Vec<Sku>>,
    /// Unix milliseconds of the evaluation.
    pub now_millis: i64,
}

/// One customer tenant's admin MFA posture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerPostureRow {
    pub customer_tenant_id: String,
    pub display_name: String,
    pub status: CheckStatus,
    /// `security_defaults`, `conditional_access`, `registration` or `none`.
    pub mechanism: String,
    pub admins_total: u32,
    pub admins_with_mfa: u32,
    pub detail: String,
    /// Admins without MFA registered, for the finding's subjects.
    pub admins_without_mfa: Vec<String>,
    pub evaluated_at: i64,
    /// Legacy DAP still allowed, as last read (`None`: never read).
    pub dap: Option<bool>,
    /// When DAP was last read; `None` on a row that did not read it (the stored value is kept).
    pub dap_checked_at: Option<i64>,
}

/// The outcome of one check, before it becomes a `Finding` on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub check: CheckKind,
    pub status: CheckStatus,
    pub severity: Severity,
    pub title: String,
    pub summary: String,
    pub evidence: BTreeMap<String, String>,
    pub subjects: Vec<String>,
    pub remediation: String,
    pub doc_url: String,
    /// Empty for partner-level findings.
    pub customer_tenant_id: String,
    /// The share of the check that passes, 0.0–1.0, for checks scored in proportion
    /// (customers' admin MFA, the MFA share of requests). `None`: all or nothing.
    pub ratio: Option<f64>,
}

impl CheckResult {
    pub fn new(check: CheckKind, title: &str, doc_url: &str) -> Self {
        Self {
            check,
            status: CheckStatus::Unknown,
            severity: Severity::Informational,
            title: title.to_owned(),
            summary: String::new(),
            evidence: BTreeMap::new(),
            subjects: Vec::new(),
            remediation: String::new(),
            doc_url: doc_url.to_owned(),
            customer_tenant_id: String::new(),
            ratio: None,
        }
    }

    pub fn evidence(mut self, key: &str, value: impl ToString) -> Self {
        self.evidence.insert(key.to_owned(), value.to_string());
        self
    }

    pub fn finding(
        &self,
        finding_id: String,
        evaluated_at: i64,
    ) -> palisade_contracts::compliance::v1::Finding {
        palisade_contracts::compliance::v1::Finding {
            finding_id,
            check: self.check as i32,
            status: self.status as i32,
            severity: self.severity as i32,
            title: self.title.clone(),
            summary: self.summary.clone(),
            evidence: self.evidence.clone().into_iter().collect(),
            subjects: self.subjects.clone(),
            remediation: self.remediation.clone(),
            doc_url: self.doc_url.clone(),
            evaluated_at: Some(palisade_contracts::time::from_millis(evaluated_at)),
            customer_tenant_id: self.customer_tenant_id.clone(),
        }
    }
}

/// The lower-case name of a status, for evidence and reports.
pub fn status_name(status: CheckStatus) -> &'static str {
    match status {
        CheckStatus::Pass => "pass",
        CheckStatus::Fail => "fail",
        CheckStatus::Warn => "warn",
        CheckStatus::Unknown => "unknown",
        CheckStatus::Unspecified => "unspecified",
    }
}

/// The stable short name of a check, for reports and event consumers.
pub fn check_name(check: CheckKind) -> &'static str {
    match check {
        CheckKind::MfaAllUsers => "mfa_all_users",
        CheckKind::MfaOnRequests => "mfa_on_requests",
        CheckKind::SecureApplicationModel => "secure_application_model",
        CheckKind::SecurityContact => "security_contact",
        CheckKind::AlertResponse => "alert_response",
        CheckKind::GdapLeastPrivilege => "gdap_least_privilege",
        CheckKind::EntraIdP2 => "entra_id_p2",
        CheckKind::MicrosoftSecurityScore => "microsoft_security_score",
        CheckKind::CustomerAdminMfa => "customer_admin_mfa",
        CheckKind::Unspecified => "unspecified",
    }
}

/// Every check an evaluation produces, in report order.
pub const ALL_CHECKS: [CheckKind; 9] = [
    CheckKind::MfaAllUsers,
    CheckKind::MfaOnRequests,
    CheckKind::SecureApplicationModel,
    CheckKind::SecurityContact,
    CheckKind::AlertResponse,
    CheckKind::GdapLeastPrivilege,
    CheckKind::EntraIdP2,
    CheckKind::MicrosoftSecurityScore,
    CheckKind::CustomerAdminMfa,
];
