//! The rules: one pure function per partner security requirement, from observations to a
//! check result with its evidence, the offending subjects and a fix. No I/O happens here, so
//! every pass, fail, warn and unknown is proven by unit tests on plain values.
//!
//! Principles: evidence of a failure is a failure even when other sources are unknown; a check
//! is `unknown` only when what is known cannot decide it; `warn` is for what is compliant today
//! but will not be soon (an expiring relationship), or is below Microsoft's recommendation but
//! within its requirement.

use palisade_contracts::common::v1::Severity;
use palisade_contracts::compliance::v1::{CheckKind, CheckStatus};

use crate::model::*;

const DAY_MS: i64 = 86_400_000;
/// How many subjects a finding lists before it summarises the rest.
pub const MAX_SUBJECTS: usize = 200;
/// Microsoft's requirement: 24 h on average over 30 days; its recommendation: one hour.
pub const ALERT_REQUIREMENT_SECS: f64 = 24.0 * 3600.0;
pub const ALERT_RECOMMENDATION_SECS: f64 = 3600.0;
/// Relationships ending within this window without auto-extend are warned about.
pub const GDAP_EXPIRY_WARNING_DAYS: i64 = 30;

pub mod docs {
    pub const MFA: &str = "https://learn.microsoft.com/partner-center/security/partner-security-requirements-mandating-mfa";
    pub const MFA_REPORT: &str =
        "https://learn.microsoft.com/partner-center/security/partner-security-compliance";
    pub const SAM: &str =
        "https://learn.microsoft.com/partner-center/developer/enable-secure-app-model";
    pub const SECURITY_CONTACT: &str =
        "https://learn.microsoft.com/partner-center/security/security-contact";
    pub const ALERTS: &str =
        "https://learn.microsoft.com/partner-center/security/security-alerts-dashboard";
    pub const GDAP: &str = "https://learn.microsoft.com/partner-center/customers/gdap-introduction";
    pub const DAP_REMOVAL: &str = "https://learn.microsoft.com/partner-center/developer/remove-dap";
    pub const P2: &str =
        "https://learn.microsoft.com/partner-center/security/partner-security-requirements";
    pub const SCORE: &str =
        "https://learn.microsoft.com/partner-center/security/security-requirements";
    pub const SECURITY_DEFAULTS: &str =
        "https://learn.microsoft.com/entra/fundamentals/security-defaults";
}

fn capped(mut subjects: Vec<String>) -> Vec<String> {
    subjects.sort();
    subjects.dedup();
    if subjects.len() > MAX_SUBJECTS {
        let rest = subjects.len() - MAX_SUBJECTS;
        subjects.truncate(MAX_SUBJECTS);
        subjects.push(format!("… and {rest} more"));
    }
    subjects
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "n/a".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// Whether a Conditional Access policy, as it stands, demands MFA.
pub fn requires_mfa(policy: &CaPolicy) -> bool {
    if !policy.state.eq_ignore_ascii_case("enabled") {
        return false;
    }
    if policy.authentication_strength {
        return true;
    }
    let mfa = policy
        .built_in_controls
        .iter()
        .any(|c| c.eq_ignore_ascii_case("mfa"));
    // With OR, another control (a compliant device, say) satisfies the policy without MFA.
    let alternatives = policy
        .built_in_controls
        .iter()
        .any(|c| !c.eq_ignore_ascii_case("mfa"));
    mfa && (policy.operator.eq_ignore_ascii_case("AND") || !alternatives)
}

/// What keeps a policy that demands MFA from covering every user and every app.
pub fn coverage_gaps(policy: &CaPolicy) -> Vec<String> {
    let mut gaps = Vec::new();
    if !policy
        .include_users
        .iter()
        .any(|u| u.eq_ignore_ascii_case("All"))
    {
        gaps.push("does not include all users".to_owned());
    }
    if !policy.exclude_users.is_empty() {
        gaps.push(format!("excludes {} user(s)", policy.exclude_users.len()));
    }
    if !policy.exclude_groups.is_empty() {
        gaps.push(format!("excludes {} group(s)", policy.exclude_groups.len()));
    }
    if !policy.exclude_roles.is_empty() {
        gaps.push(format!("excludes {} role(s)", policy.exclude_roles.len()));
    }
    if policy.excludes_guests_or_external {
        gaps.push("excludes guests or external users".to_owned());
    }
    if !policy
        .include_applications
        .iter()
        .any(|a| a.eq_ignore_ascii_case("All"))
    {
        gaps.push("does not include all cloud apps".to_owned());
    }
    if !policy.exclude_applications.is_empty() {
        gaps.push(format!(
            "excludes {} application(s)",
            policy.exclude_applications.len()
        ));
    }
    if !policy.client_app_types.is_empty()
        && !policy
            .client_app_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case("all"))
    {
        gaps.push("applies to some client app types only".to_owned());
    }
    gaps
}

/// Whether a policy demands MFA of every admin (all users, or admin roles, with no exclusions).
fn covers_admins(policy: &CaPolicy) -> bool {
    let all_users = policy
        .include_users
        .iter()
        .any(|u| u.eq_ignore_ascii_case("All"));
    let roles = !policy.include_roles.is_empty();
    requires_mfa(policy)
        && (all_users || roles)
        && policy.exclude_users.is_empty()
        && policy.exclude_groups.is_empty()
        && policy.exclude_roles.is_empty()
        && policy
            .include_applications
            .iter()
            .any(|a| a.eq_ignore_ascii_case("All"))
        && policy.exclude_applications.is_empty()
}

/// How the tenant enforces MFA for everyone, if it does: the mechanism's name, and the
/// MFA policies that fall short, with why.
fn enforcement(
    security_defaults: &Obs<bool>,
    ca: &Obs<Vec<CaPolicy>>,
) -> (Option<String>, Vec<String>, bool) {
    let mut shortfalls = Vec::new();
    if let Ok(true) = security_defaults {
        return (Some("security defaults".into()), shortfalls, true);
    }
    if let Ok(policies) = ca {
        for policy in policies.iter().filter(|p| requires_mfa(p)) {
            let gaps = coverage_gaps(policy);
            if gaps.is_empty() {
                return (
                    Some(format!(
                        "conditional access policy \"{}\"",
                        policy.display_name
                    )),
                    shortfalls,
                    true,
                );
            }
            shortfalls.push(format!("\"{}\" {}", policy.display_name, gaps.join(", ")));
        }
    }
    // "Not enforced" is a finding only when both mechanisms were actually read.
    (None, shortfalls, security_defaults.is_ok() && ca.is_ok())
}

/// Check 1: MFA for every user of the partner tenant, service and emergency accounts included.
pub fn mfa_all_users(o: &PartnerObservations) -> CheckResult {
    let mut r = CheckResult::new(
        CheckKind::MfaAllUsers,
        "MFA for every user of the partner tenant",
        docs::MFA,
    );
    let (mechanism, shortfalls, decided) = enforcement(&o.security_defaults, &o.ca_policies);
    match &o.security_defaults {
        Ok(on) => r = r.evidence("security_defaults", if *on { "on" } else { "off" }),
        Err(e) => r = r.evidence("security_defaults", format!("unknown: {e}")),
    }
    if let Err(e) = &o.ca_policies {
        r = r.evidence("conditional_access", format!("unknown: {e}"));
    }
    if let Some(m) = &mechanism {
        r = r.evidence("enforced_by", m);
    }
    if !shortfalls.is_empty() {
        r = r.evidence("mfa_policies_with_gaps", shortfalls.join("; "));
    }
    let mut unregistered = Vec::new();
    match &o.registrations {
        Ok(users) => {
            unregistered = users
                .iter()
                .filter(|u| !u.is_mfa_registered)
                .map(|u| u.user_principal_name.clone())
                .collect();
            r = r
                .evidence("users", users.len())
                .evidence("users_registered_for_mfa", users.len() - unregistered.len());
        }
        Err(e) => r = r.evidence("registration", format!("unknown: {e}")),
    }
    let mut non_mfa = Vec::new();
    match &o.non_mfa_principals {
        Ok(principals) => {
            non_mfa = principals.iter().map(|p| p.upn.clone()).collect();
            r = r.evidence("partner_center_non_mfa_principals", principals.len());
        }
        Err(e) => r = r.evidence("partner_center_non_mfa_principals", format!("unknown: {e}")),
    }
    let mut subjects = unregistered.clone();
    subjects.extend(non_mfa.iter().cloned());
    r.subjects = capped(subjects);

    let mut reasons = Vec::new();
    if decided && mechanism.is_none() {
        reasons.push(if shortfalls.is_empty() {
            "neither security defaults nor a Conditional Access policy requires MFA".to_owned()
        } else {
            format!(
                "no Conditional Access policy requires MFA for all users and apps without exclusions ({})",
                shortfalls.join("; ")
            )
        });
    }
    if !unregistered.is_empty() {
        reasons.push(format!(
            "{} user(s) have no MFA method registered: {}",
            unregistered.len(),
            unregistered.join(", ")
        ));
    }
    if !non_mfa.is_empty() {
        reasons.push(format!(
            "Partner Center saw requests without MFA from {}",
            non_mfa.join(", ")
        ));
    }
    if !reasons.is_empty() {
        r.status = CheckStatus::Fail;
        r.severity = Severity::High;
        r.summary = reasons.join("; ");
        r.remediation = "Turn on security defaults, or enable a Conditional Access policy that \
            requires MFA for all users and all cloud apps with no exclusions (service and \
            emergency-access accounts included). Have every listed user register an MFA method, \
            and make automation sign in through the Secure Application Model."
            .into();
    } else if mechanism.is_some() && o.registrations.is_ok() && o.non_mfa_principals.is_ok() {
        r.status = CheckStatus::Pass;
        r.summary = format!(
            "MFA is enforced by {} and every user has a method registered",
            mechanism.unwrap_or_default()
        );
    } else {
        r.status = CheckStatus::Unknown;
        r.summary = "MFA enforcement could not be established from the sources available".into();
        r.remediation = "Check that the token broker can mint Graph and Partner Center tokens for \
            the partner with Policy.Read.All and AuditLog.Read.All."
            .into();
    }
    r
}

/// Check 2: MFA on API and portal requests: Partner Center's request data and the broker's tokens.
pub fn mfa_on_requests(o: &PartnerObservations) -> CheckResult {
    let mut r = CheckResult::new(
        CheckKind::MfaOnRequests,
        "MFA on every App+User request",
        docs::MFA_REPORT,
    );
    let mut total = 0_u64;
    let mut with_mfa = 0_u64;
    let mut known = false;
    let mut subjects = Vec::new();
    match &o.api_requests {
        Ok(share) => {
            known = true;
            total += share.total;
            with_mfa += share.with_mfa;
            subjects.extend(share.without_mfa.iter().cloned());
            r = r
                .evidence("partner_center_requests", share.total)
                .evidence("partner_center_requests_with_mfa", share.with_mfa)
                .evidence("partner_center_mfa_share", pct(share.with_mfa, share.total));
        }
        Err(e) => r = r.evidence("partner_center_requests", format!("unknown: {e}")),
    }
    match &o.token_mfa {
        Ok(stats) => {
            known = true;
            total += stats.minted;
            with_mfa += stats.minted_with_mfa;
            r = r
                .evidence("tokens_minted", stats.minted)
                .evidence("tokens_minted_with_mfa", stats.minted_with_mfa)
                .evidence("token_mfa_share", pct(stats.minted_with_mfa, stats.minted));
            if stats.minted_with_mfa < stats.minted {
                subjects.push("palisade token broker".into());
            }
        }
        Err(e) => r = r.evidence("tokens_minted", format!("unknown: {e}")),
    }
    r.subjects = capped(subjects);
    r.ratio = Some(if total == 0 {
        1.0
    } else {
        with_mfa as f64 / total as f64
    });
    if with_mfa < total {
        r.status = CheckStatus::Fail;
        r.severity = Severity::High;
        r.summary = format!(
            "{} of {} App+User requests and tokens carried MFA ({})",
            with_mfa,
            total,
            pct(with_mfa, total)
        );
        r.remediation = "Find the callers listed and move them to tokens from an MFA consent \
            (Secure Application Model); Partner Center rejects App+User tokens without the MFA \
            claim."
            .into();
    } else if known {
        r.status = CheckStatus::Pass;
        r.summary = if total == 0 {
            "no App+User requests in the reporting window".into()
        } else {
            format!("all {total} App+User requests and tokens carried MFA")
        };
    } else {
        r.status = CheckStatus::Unknown;
        r.ratio = None;
        r.summary =
            "neither Partner Center's request data nor the broker's statistics could be read"
                .into();
    }
    r
}

/// Check 3: Secure Application Model adopted: every app has a healthy MFA consent, and no token
/// was minted without MFA.
pub fn secure_application_model(o: &PartnerObservations) -> CheckResult {
    let mut r = CheckResult::new(
        CheckKind::SecureApplicationModel,
        "Secure Application Model adopted",
        docs::SAM,
    );
    let apps = match &o.sam {
        Ok(apps) => apps,
        Err(e) => {
            r.summary = format!("the token broker's apps and consents could not be read: {e}");
            return r;
        }
    };
    let mut problems = Vec::new();
    let mut subjects = Vec::new();
    let mut remediations = Vec::new();
    for app in apps {
        let healthy: Vec<_> = app
            .consents
            .iter()
            .filter(|c| c.healthy && c.consented_with_mfa)
            .collect();
        if healthy.is_empty() {
            subjects.push(format!("app {}", app.display_name));
            let states: Vec<String> = app
                .consents
                .iter()
                .map(|c| {
                    if !c.consented_with_mfa {
                        format!("{} consented without MFA", c.consented_by_upn)
                    } else {
                        format!("{} is {}", c.consented_by_upn, c.state)
                    }
                })
                .collect();
            problems.push(if states.is_empty() {
                format!("app \"{}\" has no consent", app.display_name)
            } else {
                format!(
                    "app \"{}\" has no healthy MFA consent ({})",
                    app.display_name,
                    states.join(", ")
                )
            });
            remediations.extend(
                app.consents
                    .iter()
                    .filter(|c| !c.remediation.is_empty())
                    .map(|c| c.remediation.clone()),
            );
        }
    }
    r = r
        .evidence("apps", apps.len())
        .evidence("apps_with_healthy_consent", apps.len() - subjects.len());
    if apps.is_empty() {
        problems.push("no SAM app is registered with the token broker".into());
    }
    if let Ok(stats) = &o.token_mfa {
        r = r.evidence(
            "tokens_minted_without_mfa",
            stats.minted - stats.minted_with_mfa.min(stats.minted),
        );
        if stats.minted_with_mfa < stats.minted {
            problems.push(format!(
                "{} token(s) were minted without MFA",
                stats.minted - stats.minted_with_mfa
            ));
        }
    }
    r.subjects = capped(subjects);
    if problems.is_empty() {
        r.status = CheckStatus::Pass;
        r.summary = format!("{} app(s), each with a healthy MFA consent", apps.len());
    } else {
        r.status = CheckStatus::Fail;
        r.severity = Severity::High;
        r.summary = problems.join("; ");
        remediations.dedup();
        r.remediation = if remediations.is_empty() {
            "Register the partner's multi-tenant app with the token broker and have an admin \
             agent (Global Admin and Admin Agent, with MFA) consent once; automation then uses \
             only the broker's tokens."
                .into()
        } else {
            remediations.join(" ")
        };
    }
    r
}

/// Check 4: Security contact complete (and seen by Microsoft), plus a compliance contact.
pub fn security_contact(o: &PartnerObservations) -> CheckResult {
    let mut r = CheckResult::new(
        CheckKind::SecurityContact,
        "Security contact and compliance contact",
        docs::SECURITY_CONTACT,
    );
    let microsoft = o.ms_score.as_ref().ok().and_then(|s| {
        s.requirements
            .iter()
            .find(|q| {
                q.requirement_type
                    .eq_ignore_ascii_case("securityContactProvided")
            })
            .map(|q| q.compliant)
    });
    if let Some(provided) = microsoft {
        r = r.evidence("microsoft_security_contact_provided", provided);
    }
    let contacts = match &o.contacts {
        Ok(c) => c,
        Err(e) => {
            r = r.evidence("notifier", format!("unknown: {e}"));
            if microsoft == Some(false) {
                r.status = CheckStatus::Fail;
                r.severity = Severity::High;
                r.summary = "Microsoft reports no security contact in Partner Center".into();
                r.remediation = "A Global Administrator sets it in Partner Center under Account \
                    settings → Legal info; there is no API to write it."
                    .into();
            } else {
                r.summary = format!("the notifier's contact status could not be read: {e}");
            }
            return r;
        }
    };
    r = r
        .evidence(
            "security_contact_present",
            contacts.security_contact_present,
        )
        .evidence(
            "security_contact_complete",
            contacts.security_contact_complete,
        )
        .evidence(
            "compliance_contact_present",
            contacts.compliance_contact_present,
        );
    if !contacts.missing_fields.is_empty() {
        r = r.evidence("missing_fields", contacts.missing_fields.join(", "));
    }
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if !contacts.security_contact_present {
        problems.push("no security contact is recorded".to_owned());
    } else if !contacts.security_contact_complete {
        problems.push(format!(
            "the security contact lacks {}",
            contacts.missing_fields.join(", ")
        ));
    }
    if !contacts.security_contact_complete {
        fixes.push("Record a complete security contact in Palisade (first and last name, email, a phone answered 24x7): `palisade notify contacts set-security`.");
    }
    if microsoft == Some(false) {
        problems.push("Microsoft reports no security contact in Partner Center".into());
        fixes.push("A Global Administrator must also set it in Partner Center under Account settings → Legal info (there is no API to write it).");
    }
    if !contacts.compliance_contact_present {
        problems.push("no compliance contact is recorded".into());
        fixes.push("Record a compliance contact: `palisade notify contacts set-compliance`.");
    }
    if problems.is_empty() {
        r.status = CheckStatus::Pass;
        r.summary = "a complete security contact and a compliance contact are recorded".into();
    } else {
        r.status = CheckStatus::Fail;
        r.severity = if contacts.security_contact_complete && microsoft != Some(false) {
            Severity::Medium
        } else {
            Severity::High
        };
        r.summary = problems.join("; ");
        r.remediation = fixes.join(" ");
        r.subjects = contacts.missing_fields.clone();
    }
    r
}

/// Check 5: Alert response: 30-day average of 24 h or less, and no unresolved alert older than 24 h.
pub fn alert_response(o: &PartnerObservations) -> CheckResult {
    let mut r = CheckResult::new(
        CheckKind::AlertResponse,
        "Security alerts answered within 24 hours",
        docs::ALERTS,
    );
    let a = match &o.alert_response {
        Ok(a) => a,
        Err(e) => {
            r.summary = format!("alert-ingest's response times could not be read: {e}");
            return r;
        }
    };
    let hours = a.average_response_seconds / 3600.0;
    r = r
        .evidence("average_response_hours_30d", format!("{hours:.2}"))
        .evidence("resolved_in_window", a.resolved_in_window)
        .evidence(
            "unresolved_older_than_24h",
            a.unresolved_older_than_requirement,
        );
    r.subjects = capped(a.breaching_alert_ids.clone());
    let slow = a.resolved_in_window > 0 && a.average_response_seconds > ALERT_REQUIREMENT_SECS;
    let stale = a.unresolved_older_than_requirement > 0;
    if slow || stale {
        let mut problems = Vec::new();
        if slow {
            problems.push(format!(
                "the 30-day average response time is {hours:.1} h, above the 24 h requirement"
            ));
        }
        if stale {
            problems.push(format!(
                "{} unresolved alert(s) are older than 24 h",
                a.unresolved_older_than_requirement
            ));
        }
        r.status = CheckStatus::Fail;
        r.severity = Severity::High;
        r.summary = problems.join("; ");
        r.remediation = "Investigate and resolve each listed alert as legitimate, fraud or ignore \
            (`palisade alerts resolve`), including old ones; route alerts to someone on call so \
            the average stays under 24 h (Microsoft recommends one hour)."
            .into();
    } else if a.resolved_in_window > 0 && a.average_response_seconds > ALERT_RECOMMENDATION_SECS {
        r.status = CheckStatus::Warn;
        r.severity = Severity::Low;
        r.summary = format!(
            "the 30-day average response time is {hours:.1} h: within 24 h, above the one hour Microsoft recommends"
        );
        r.remediation =
            "Shorten the response path: escalation to the 24x7 phone, a route to the on-call team."
                .into();
    } else {
        r.status = CheckStatus::Pass;
        r.summary = if a.resolved_in_window == 0 {
            "no alerts resolved in the last 30 days and none open past 24 h".into()
        } else {
            format!("the 30-day average response time is {hours:.1} h")
        };
    }
    r
}

/// Check 6: GDAP least privilege and expiry, and leftover DAP.
pub fn gdap_least_privilege(o: &PartnerObservations) -> CheckResult {
    let mut r = CheckResult::new(
        CheckKind::GdapLeastPrivilege,
        "GDAP least privilege, expiry, and no leftover DAP",
        docs::GDAP,
    );
    let mut failures = Vec::new();
    let mut warnings = Vec::new();
    let mut subjects = Vec::new();
    let mut fixes = Vec::new();
    let mut known = true;
    match &o.relationships {
        Ok(relationships) => {
            let active: Vec<_> = relationships
                .iter()
                .filter(|g| g.status.eq_ignore_ascii_case("active"))
                .collect();
            let with_ga: Vec<_> = active
                .iter()
                .filter(|g| {
                    g.role_ids
                        .iter()
                        .any(|id| id.eq_ignore_ascii_case(ROLE_GLOBAL_ADMINISTRATOR))
                })
                .collect();
            let expiring: Vec<_> = active
                .iter()
                .filter(|g| {
                    !g.auto_extends()
                        && g.end_millis.is_some_and(|end| {
                            end - o.now_millis <= GDAP_EXPIRY_WARNING_DAYS * DAY_MS
                        })
                })
                .collect();
            let inactive: Vec<_> = relationships
                .iter()
                .filter(|g| {
                    !g.status.eq_ignore_ascii_case("active")
                        && !g.status.eq_ignore_ascii_case("terminated")
                })
                .collect();
            r = r
                .evidence("relationships", relationships.len())
                .evidence("active_relationships", active.len())
                .evidence("relationships_with_global_admin", with_ga.len())
                .evidence(
                    "relationships_expiring_30d_without_auto_extend",
                    expiring.len(),
                );
            if !inactive.is_empty() {
                r = r.evidence(
                    "relationships_not_active",
                    inactive
                        .iter()
                        .map(|g| format!("{} ({})", g.display_name, g.status))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
            }
            if !with_ga.is_empty() {
                failures.push(format!(
                    "{} active relationship(s) grant Global Administrator",
                    with_ga.len()
                ));
                subjects.extend(
                    with_ga
                        .iter()
                        .map(|g| format!("relationship {} ({})", g.display_name, g.customer_name)),
                );
                fixes.push("Replace Global Administrator with the least-privileged roles the work needs (for example Helpdesk, User or Security Administrator) in a new relationship, then end the old one.");
            }
            if !expiring.is_empty() {
                warnings.push(format!(
                    "{} relationship(s) end within {GDAP_EXPIRY_WARNING_DAYS} days without auto-extend",
                    expiring.len()
                ));
                subjects.extend(expiring.iter().map(|g| {
                    format!(
                        "relationship {} ({}) expiring",
                        g.display_name, g.customer_name
                    )
                }));
                fixes.push("Renew expiring relationships with the customer, or turn on auto-extend (P180D) where the roles allow it.");
            }
        }
        Err(e) => {
            known = false;
            r = r.evidence("relationships", format!("unknown: {e}"));
        }
    }
    match &o.dap_customers {
        Ok(dap) => {
            r = r.evidence("dap_customers", dap.len());
            if !dap.is_empty() {
                failures.push(format!("{} customer(s) still allow legacy DAP", dap.len()));
                subjects.extend(
                    dap.iter()
                        .map(|c| format!("DAP {} ({})", c.display_name, c.tenant_id)),
                );
                fixes.push("Remove DAP from each listed customer once GDAP covers the work: PATCH /v1/customers/{id} with {\"AllowDelegatedAccess\":false} or Partner Center → Customers → Admin relationships.");
            }
        }
        Err(e) => {
            known = false;
            r = r.evidence("dap_customers", format!("unknown: {e}"));
        }
    }
    r.subjects = capped(subjects);
    r.remediation = fixes.join(" ");
    if !failures.is_empty() {
        r.status = CheckStatus::Fail;
        r.severity = Severity::High;
        failures.extend(warnings);
        r.summary = failures.join("; ");
    } else if !warnings.is_empty() {
        r.status = CheckStatus::Warn;
        r.severity = Severity::Medium;
        r.summary = warnings.join("; ");
    } else if known {
        r.status = CheckStatus::Pass;
        r.summary =
            "no Global Administrator in any relationship, none expiring unnoticed, no DAP left"
                .into();
    } else {
        r.status = CheckStatus::Unknown;
        r.summary = "GDAP relationships or DAP status could not be read".into();
    }
    r
}

/// Check 7: Entra ID P2 for every admin agent.
pub fn entra_id_p2(o: &PartnerObservations) -> CheckResult {
    let mut r = CheckResult::new(
        CheckKind::EntraIdP2,
        "Entra ID P2 for every admin agent",
        docs::P2,
    );
    let (skus, users) = match (&o.skus, &o.registrations) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => {
            r.summary = format!("licences or admins could not be read: {e}");
            return r;
        }
    };
    let admins: Vec<_> = users.iter().filter(|u| u.is_admin).collect();
    let p2_skus: Vec<_> = skus.iter().filter(|s| s.grants_p2()).collect();
    let units: u64 = p2_skus.iter().map(|s| s.enabled_units).sum();
    r = r
        .evidence("admin_agents", admins.len())
        .evidence("p2_units", units)
        .evidence(
            "p2_skus",
            p2_skus
                .iter()
                .map(|s| format!("{} ({} units)", s.sku_part_number, s.enabled_units))
                .collect::<Vec<_>>()
                .join(", "),
        );
    if units >= admins.len() as u64 {
        r.status = CheckStatus::Pass;
        r.summary = format!(
            "{units} Entra ID P2 unit(s) cover {} admin agent(s)",
            admins.len()
        );
    } else {
        r.status = CheckStatus::Fail;
        r.severity = Severity::Medium;
        r.summary = format!(
            "{units} Entra ID P2 unit(s) for {} admin agent(s): {} short",
            admins.len(),
            admins.len() as u64 - units
        );
        r.subjects = capped(
            admins
                .iter()
                .map(|u| u.user_principal_name.clone())
                .collect(),
        );
        r.remediation = "Buy Entra ID P2 (AAD_PREMIUM_P2, or a bundle that includes it such as \
            Microsoft 365 E5) for every admin agent and assign it, so PIM, risk-based \
            Conditional Access and sign-in logs cover them."
            .into();
    }
    r
}

fn is_mandatory(requirement_type: &str) -> bool {
    [
        "mfaEnforcedForAdmins",
        "securityContactProvided",
        "securityAlertsPromptlyResolved",
    ]
    .iter()
    .any(|m| m.eq_ignore_ascii_case(requirement_type))
}

/// Check 8: Microsoft's own security score, mirrored with each requirement.
pub fn microsoft_security_score(o: &PartnerObservations) -> CheckResult {
    let mut r = CheckResult::new(
        CheckKind::MicrosoftSecurityScore,
        "Microsoft's partner security score",
        docs::SCORE,
    );
    let score = match &o.ms_score {
        Ok(s) => s,
        Err(e) => {
            r.summary = format!("Microsoft's security score could not be read: {e}");
            return r;
        }
    };
    r = r
        .evidence("current_score", format!("{:.0}", score.current))
        .evidence("max_score", format!("{:.0}", score.max));
    let mut mandatory_failing = Vec::new();
    let mut recommended_failing = Vec::new();
    for q in &score.requirements {
        let mut text = format!(
            "{} ({:.0}/{:.0}, {}{})",
            if q.compliant {
                "compliant"
            } else {
                "not compliant"
            },
            q.score,
            q.max_score,
            if is_mandatory(&q.requirement_type) {
                "mandatory"
            } else {
                "recommended"
            },
            if q.state.eq_ignore_ascii_case("preview") {
                ", preview"
            } else {
                ""
            }
        );
        for (k, v) in &q.details {
            text.push_str(&format!(", {k}={v}"));
        }
        r.evidence
            .insert(format!("requirement.{}", q.requirement_type), text);
        if !q.compliant && !q.state.eq_ignore_ascii_case("preview") {
            if is_mandatory(&q.requirement_type) {
                mandatory_failing.push(q.requirement_type.clone());
            } else {
                recommended_failing.push(q.requirement_type.clone());
            }
        }
    }
    r.ratio = (score.max > 0.0).then(|| (score.current / score.max).clamp(0.0, 1.0));
    if !mandatory_failing.is_empty() {
        r.status = CheckStatus::Fail;
        r.severity = Severity::High;
        r.subjects = mandatory_failing.clone();
        r.summary = format!(
            "score {:.0}/{:.0}; mandatory requirement(s) not met: {}",
            score.current,
            score.max,
            mandatory_failing.join(", ")
        );
        r.remediation = "Fix the mandatory items first (MFA for admins, the security contact, \
            alert response); Microsoft refreshes the score daily."
            .into();
    } else if !recommended_failing.is_empty() {
        r.status = CheckStatus::Warn;
        r.severity = Severity::Low;
        r.subjects = recommended_failing.clone();
        r.summary = format!(
            "score {:.0}/{:.0}; recommended requirement(s) not met: {}",
            score.current,
            score.max,
            recommended_failing.join(", ")
        );
        r.remediation = "Enforce MFA for customers' admins and set spending budgets on customer Azure subscriptions.".into();
    } else {
        r.status = CheckStatus::Pass;
        r.summary = format!(
            "score {:.0}/{:.0}; every requirement met",
            score.current, score.max
        );
    }
    r
}

/// Check 9a: One customer's admin MFA: security defaults, Conditional Access or registration.
pub fn customer_admin_mfa(
    customer: &CustomerRef,
    security_defaults: &Obs<bool>,
    ca: &Obs<Vec<CaPolicy>>,
    admins: &Obs<Vec<UserRegistration>>,
    now_millis: i64,
) -> CustomerPostureRow {
    let mut row = CustomerPostureRow {
        customer_tenant_id: customer.tenant_id.clone(),
        display_name: customer.display_name.clone(),
        status: CheckStatus::Unknown,
        mechanism: "none".into(),
        admins_total: 0,
        admins_with_mfa: 0,
        detail: String::new(),
        admins_without_mfa: Vec::new(),
        evaluated_at: now_millis,
        dap: None,
        dap_checked_at: None,
    };
    if let Ok(admins) = admins {
        let admins: Vec<_> = admins.iter().filter(|u| u.is_admin).collect();
        row.admins_total = admins.len() as u32;
        row.admins_with_mfa = admins.iter().filter(|u| u.is_mfa_registered).count() as u32;
        row.admins_without_mfa = admins
            .iter()
            .filter(|u| !u.is_mfa_registered)
            .map(|u| u.user_principal_name.clone())
            .collect();
    }
    if let Ok(true) = security_defaults {
        row.status = CheckStatus::Pass;
        row.mechanism = "security_defaults".into();
        row.detail = "security defaults require MFA of every admin".into();
        return row;
    }
    if let Ok(policies) = ca
        && let Some(p) = policies.iter().find(|p| covers_admins(p))
    {
        row.status = CheckStatus::Pass;
        row.mechanism = "conditional_access".into();
        row.detail = format!(
            "Conditional Access policy \"{}\" requires MFA of admins",
            p.display_name
        );
        return row;
    }
    match admins {
        Ok(_) if row.admins_total > 0 && row.admins_with_mfa == row.admins_total => {
            row.status = CheckStatus::Pass;
            row.mechanism = "registration".into();
            row.detail = "no tenant-wide MFA policy, but every admin has MFA registered".into();
        }
        Ok(_) if row.admins_total > row.admins_with_mfa => {
            row.status = CheckStatus::Fail;
            row.detail = format!(
                "no MFA policy and {} of {} admin(s) have no MFA method: {}",
                row.admins_total - row.admins_with_mfa,
                row.admins_total,
                row.admins_without_mfa.join(", ")
            );
        }
        Ok(_) => {
            row.detail = "no admins reported and no MFA policy".into();
        }
        Err(e) => {
            let policy_known = security_defaults.is_ok() && ca.is_ok();
            row.detail = if policy_known {
                format!("no MFA policy; admin registration unknown: {e}")
            } else {
                format!("unknown: {e}")
            };
        }
    }
    row
}

/// Check 9b: Every customer's admin MFA, summarised for the partner.
pub fn customers_admin_mfa(rows: &[CustomerPostureRow], total_customers: usize) -> CheckResult {
    let mut r = CheckResult::new(
        CheckKind::CustomerAdminMfa,
        "MFA for the admins of every customer tenant",
        docs::SECURITY_DEFAULTS,
    );
    let count = |s: CheckStatus| rows.iter().filter(|c| c.status == s).count();
    let (pass, fail, unknown) = (
        count(CheckStatus::Pass),
        count(CheckStatus::Fail),
        count(CheckStatus::Unknown),
    );
    r = r
        .evidence("customers", total_customers)
        .evidence("customers_evaluated", rows.len())
        .evidence("compliant", pass)
        .evidence("non_compliant", fail)
        .evidence("unknown", unknown);
    for mechanism in ["security_defaults", "conditional_access", "registration"] {
        r = r.evidence(
            &format!("by_{mechanism}"),
            rows.iter().filter(|c| c.mechanism == mechanism).count(),
        );
    }
    let known = pass + fail;
    r.ratio = (known > 0).then(|| pass as f64 / known as f64);
    r.subjects = capped(
        rows.iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .map(|c| c.customer_tenant_id.clone())
            .collect(),
    );
    if fail > 0 {
        r.status = CheckStatus::Fail;
        r.severity = Severity::Medium;
        r.summary = format!(
            "{fail} of {known} customer tenant(s) evaluated do not enforce MFA for their admins"
        );
        r.remediation = "In each listed customer tenant, turn on security defaults or a \
            Conditional Access policy requiring MFA for admin roles, and have every admin \
            register a method (`palisade compliance customers --status fail`)."
            .into();
    } else if unknown > 0 {
        r.status = CheckStatus::Warn;
        r.severity = Severity::Low;
        r.summary = format!(
            "{pass} customer tenant(s) enforce admin MFA; {unknown} could not be evaluated"
        );
        r.subjects = capped(
            rows.iter()
                .filter(|c| c.status == CheckStatus::Unknown)
                .map(|c| c.customer_tenant_id.clone())
                .collect(),
        );
        r.remediation = "Restore GDAP access (a relationship with a directory reader role and \
            the app's consent) to the listed customers so they can be evaluated."
            .into();
    } else if pass > 0 {
        r.status = CheckStatus::Pass;
        r.summary = format!("all {pass} customer tenant(s) enforce MFA for their admins");
    } else {
        r.status = if total_customers == 0 {
            CheckStatus::Pass
        } else {
            CheckStatus::Unknown
        };
        r.summary = if total_customers == 0 {
            "the partner has no customers".into()
        } else {
            "no customer could be evaluated".into()
        };
    }
    r
}

/// Every partner-level check from one set of observations, in report order.
pub fn evaluate_partner(
    o: &PartnerObservations,
    customers: &[CustomerPostureRow],
    total_customers: usize,
) -> Vec<CheckResult> {
    vec![
        mfa_all_users(o),
        mfa_on_requests(o),
        secure_application_model(o),
        security_contact(o),
        alert_response(o),
        gdap_least_privilege(o),
        entra_id_p2(o),
        microsoft_security_score(o),
        customers_admin_mfa(customers, total_customers),
    ]
}
