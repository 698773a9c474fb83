//! The score: 0–100 from configurable weights per check.
//!
//! A passing check earns its whole weight, a warning half, a failure nothing; checks with a
//! proportion (customers' admin MFA, the MFA share of requests) earn their weight times the
//! share that passes. An `unknown` check is left out of both what was earned and what was
//! possible, so an outage of one source neither rewards nor punishes the partner; the result is
//! scaled to 100. The defaults follow Microsoft's own score, where MFA for admins and for
//! customers' admins weigh 20 each and the contact and alert items 10–20, and give the rest of
//! the requirements smaller weights. Microsoft's own score is mirrored, not counted again
//! (weight 0).

use palisade_contracts::compliance::v1::{CheckKind, CheckStatus};
use serde::{Deserialize, Serialize};

use crate::model::CheckResult;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreWeights {
    pub mfa_all_users: f64,
    pub mfa_on_requests: f64,
    pub secure_application_model: f64,
    pub security_contact: f64,
    pub alert_response: f64,
    pub gdap_least_privilege: f64,
    pub entra_id_p2: f64,
    pub microsoft_security_score: f64,
    pub customer_admin_mfa: f64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            mfa_all_users: 20.0,
            customer_admin_mfa: 20.0,
            security_contact: 15.0,
            alert_response: 15.0,
            mfa_on_requests: 10.0,
            secure_application_model: 10.0,
            gdap_least_privilege: 5.0,
            entra_id_p2: 5.0,
            microsoft_security_score: 0.0,
        }
    }
}

impl ScoreWeights {
    pub fn weight(&self, check: CheckKind) -> f64 {
        match check {
            CheckKind::MfaAllUsers => self.mfa_all_users,
            CheckKind::MfaOnRequests => self.mfa_on_requests,
            CheckKind::SecureApplicationModel => self.secure_application_model,
            CheckKind::SecurityContact => self.security_contact,
            CheckKind::AlertResponse => self.alert_response,
            CheckKind::GdapLeastPrivilege => self.gdap_least_privilege,
            CheckKind::EntraIdP2 => self.entra_id_p2,
            CheckKind::MicrosoftSecurityScore => self.microsoft_security_score,
            CheckKind::CustomerAdminMfa => self.customer_admin_mfa,
            CheckKind::Unspecified => 0.0,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("mfa_all_users", self.mfa_all_users),
            ("mfa_on_requests", self.mfa_on_requests),
            ("secure_application_model", self.secure_application_model),
            ("security_contact", self.security_contact),
            ("alert_response", self.alert_response),
            ("gdap_least_privilege", self.gdap_least_privilege),
            ("entra_id_p2", self.entra_id_p2),
            ("microsoft_security_score", self.microsoft_security_score),
            ("customer_admin_mfa", self.customer_admin_mfa),
        ];
        for (key, w) in all {
            if !w.is_finite() || w < 0.0 {
                return Err(format!("score.{key}: must be a finite number ≥ 0"));
            }
        }
        if all.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err("score: at least one weight must be positive".into());
        }
        Ok(())
    }
}

/// The earned share of one check, 0.0–1.0; `None` for unknown.
pub fn credit(result: &CheckResult) -> Option<f64> {
    match result.status {
        CheckStatus::Pass => Some(1.0),
        CheckStatus::Warn => Some(result.ratio.map_or(0.5, |r| r.clamp(0.0, 1.0))),
        CheckStatus::Fail => Some(result.ratio.map_or(0.0, |r| r.clamp(0.0, 1.0))),
        CheckStatus::Unknown | CheckStatus::Unspecified => None,
    }
}

/// The score out of 100 (`max_score` is always 100).
pub fn score(results: &[CheckResult], weights: &ScoreWeights) -> f64 {
    let mut earned = 0.0;
    let mut possible = 0.0;
    for r in results {
        let w = weights.weight(r.check);
        if let Some(c) = credit(r) {
            earned += w * c;
            possible += w;
        }
    }
    if possible <= 0.0 {
        return 0.0;
    }
    (earned / possible * 1000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(check: CheckKind, status: CheckStatus, ratio: Option<f64>) -> CheckResult {
        let mut r = CheckResult::new(check, "t", "u");
        r.status = status;
        r.ratio = ratio;
        r
    }

    #[test]
    fn pass_earns_all_warn_half_fail_nothing_unknown_is_left_out() {
        let w = ScoreWeights::default();
        let all_pass: Vec<_> = crate::model::ALL_CHECKS
            .iter()
            .map(|c| result(*c, CheckStatus::Pass, None))
            .collect();
        assert_eq!(score(&all_pass, &w), 100.0);
        let mixed = vec![
            result(CheckKind::MfaAllUsers, CheckStatus::Fail, None), // 0 of 20
            result(CheckKind::SecurityContact, CheckStatus::Pass, None), // 15 of 15
            result(CheckKind::AlertResponse, CheckStatus::Warn, None), // 7.5 of 15
            result(CheckKind::CustomerAdminMfa, CheckStatus::Fail, Some(0.75)), // 15 of 20
            result(CheckKind::EntraIdP2, CheckStatus::Unknown, None), // left out
        ];
        assert_eq!(score(&mixed, &w), 53.6); // 37.5 / 70
    }

    #[test]
    fn weights_are_validated() {
        let mut w = ScoreWeights::default();
        assert!(w.validate().is_ok());
        w.alert_response = -1.0;
        assert!(w.validate().unwrap_err().contains("score.alert_response"));
    }
}
