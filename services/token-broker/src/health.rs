//! From a token endpoint's answer to a state a person can act on.
//!
//! AADSTS codes (shared reference §1.7) are classified by `palisade_microsoft::entra` into
//! kinds; this module decides whose problem each kind is (the consent's, so every tenant is
//! affected, or one customer's, so only that customer is) and what to do about it. Transient
//! failures (throttling, 5xx, network) classify to nothing: they never mark a token broken.

use palisade_contracts::{common::v1::Severity, tokens::v1::TokenHealthState};
use palisade_microsoft::entra::{AadstsKind, EntraError};

/// Where a failure belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The refresh token or the app: every target is affected.
    Consent {
        state: TokenHealthState,
        detail: String,
    },
    /// One customer tenant (GDAP, consent or policy there); other customers are unaffected.
    Customer { detail: String },
    /// Worth retrying later; nothing changes state.
    Transient { detail: String },
}

fn code_text(err: &EntraError) -> String {
    match err.aadsts() {
        Some(a) => {
            let first_line = a
                .description
                .split(" Trace ID:")
                .next()
                .unwrap_or_default()
                .trim();
            match a.code() {
                Some(code) if first_line.is_empty() => format!("AADSTS{code} ({})", a.error),
                Some(_) => first_line.to_owned(),
                None => a.error.clone(),
            }
        }
        None => err.to_string(),
    }
}

/// Classifies a redemption failure at `target_tenant` (`customer` is set when the target is
/// a customer tenant rather than the partner's own).
pub fn classify(err: &EntraError, customer: Option<&str>) -> Failure {
    use TokenHealthState as S;
    let detail = code_text(err);
    if err.is_transient() {
        return Failure::Transient { detail };
    }
    let consent = |state| Failure::Consent {
        state,
        detail: detail.clone(),
    };
    match err {
        EntraError::Credential(_) => consent(S::ClientCredentialInvalid),
        EntraError::Malformed(_) | EntraError::Network(_) | EntraError::Unavailable { .. } => {
            Failure::Transient { detail }
        }
        EntraError::Aadsts(a) => match (a.kind(), customer) {
            (AadstsKind::RefreshTokenExpired | AadstsKind::GrantExpired, _) => consent(S::Expired),
            // The refresh token no longer satisfies a sign-in frequency policy: it is dead and
            // only a new sign-in (consent) replaces it.
            (AadstsKind::SignInFrequency, _) => consent(S::Expired),
            (AadstsKind::Revoked | AadstsKind::CodeInvalid, _) => consent(S::Revoked),
            (AadstsKind::MfaRequired, _) => consent(S::MfaRequired),
            (AadstsKind::ClientCredentialInvalid, _) => consent(S::ClientCredentialInvalid),
            (
                AadstsKind::ConsentMissing
                | AadstsKind::ResourceNotInTenant
                | AadstsKind::BlockedByPolicy
                | AadstsKind::TenantAccessDenied,
                Some(_),
            ) => Failure::Customer { detail },
            (AadstsKind::ConsentMissing | AadstsKind::ResourceNotInTenant, None) => {
                consent(S::ConsentMissing)
            }
            (AadstsKind::BlockedByPolicy, None) => consent(S::BlockedByPolicy),
            (AadstsKind::TenantAccessDenied, None) => consent(S::Revoked),
            (AadstsKind::Transient, _) => Failure::Transient { detail },
            // Never silently drop a tenant: an unknown refusal of the grant still shows.
            (AadstsKind::Unknown, Some(_)) => Failure::Customer { detail },
            (AadstsKind::Unknown, None) if a.error == "invalid_grant" => consent(S::Revoked),
            (AadstsKind::Unknown, None) => consent(S::ConsentMissing),
        },
    }
}

/// Whether tokens can still be minted in this state.
pub fn usable(state: TokenHealthState) -> bool {
    matches!(
        state,
        TokenHealthState::Healthy | TokenHealthState::ClientCredentialExpiring
    )
}

/// Whether the fix is a new consent (so events carry a re-consent link).
pub fn needs_reconsent(state: TokenHealthState) -> bool {
    matches!(
        state,
        TokenHealthState::Expired
            | TokenHealthState::Revoked
            | TokenHealthState::MfaRequired
            | TokenHealthState::ConsentMissing
    )
}

pub fn severity(state: TokenHealthState) -> Severity {
    match state {
        TokenHealthState::Healthy => Severity::Informational,
        TokenHealthState::ClientCredentialExpiring => Severity::Medium,
        TokenHealthState::CustomerAccessDenied | TokenHealthState::RevokedByOperator => {
            Severity::Medium
        }
        _ => Severity::High,
    }
}

/// What a person should do, in words.
pub fn remediation(state: TokenHealthState, upn: &str, customer: Option<&str>) -> String {
    use TokenHealthState as S;
    match state {
        S::Healthy | S::Unspecified => String::new(),
        S::Expired => format!(
            "The refresh token consented by {upn} no longer works (90 days without use, or a \
             Conditional Access sign-in frequency). An admin agent with MFA must consent again: \
             open the re-consent link. If a sign-in frequency policy applies to {upn}, exclude the \
             SAM account from it, or this will recur."
        ),
        S::Revoked => format!(
            "The refresh token consented by {upn} was revoked (an admin reset the password or \
             revoked sessions). An admin agent with MFA must consent again: open the re-consent link."
        ),
        S::MfaRequired => format!(
            "Microsoft now requires multi-factor authentication for {upn}, and this token was \
             obtained without it. Register MFA for the account, then consent again through the \
             re-consent link."
        ),
        S::ConsentMissing => "The app's consent is missing in the partner tenant (it was removed, \
             or a permission was added). A Global Admin who is also an Admin Agent must consent \
             again through the re-consent link."
            .to_owned(),
        S::BlockedByPolicy => format!(
            "A Conditional Access policy, security defaults or a risk policy blocks sign-ins of \
             {upn} from the token broker. Allow the broker (for example its egress addresses) or \
             exclude the SAM account from the policy; tokens resume on the next attempt."
        ),
        S::ClientCredentialInvalid => "The app's client secret or certificate is invalid or \
             expired. Create a new one for the app in Entra ID and call UpdateAppCredential; \
             tokens resume at once."
            .to_owned(),
        S::ClientCredentialExpiring => "The app's client secret or certificate expires soon. \
             Create a new one in Entra ID and call UpdateAppCredential before it does."
            .to_owned(),
        S::CustomerAccessDenied => format!(
            "Access to customer {} was refused. Check the GDAP relationship with the customer \
             (active, not expired, with the roles the call needs) and the app's consent in the \
             customer tenant. Other customers are not affected.",
            customer.unwrap_or("(unknown)")
        ),
        S::RevokedByOperator => "The consent was revoked by an operator and its refresh token \
             destroyed. Consent again to resume."
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_microsoft::entra::AadstsError;

    fn aadsts(status: u16, error: &str, code: u32) -> EntraError {
        EntraError::Aadsts(AadstsError {
            status,
            error: error.into(),
            codes: vec![code],
            description: format!("AADSTS{code}: words. Trace ID: x Correlation ID: y"),
            trace_id: None,
            correlation_id: None,
            retry_after: None,
        })
    }

    #[test]
    fn each_documented_code_lands_in_its_state() {
        use TokenHealthState as S;
        for (code, error, state) in [
            (700082, "invalid_grant", S::Expired),
            (70008, "invalid_grant", S::Expired),
            (70043, "invalid_grant", S::Expired),
            (50173, "invalid_grant", S::Revoked),
            (50076, "interaction_required", S::MfaRequired),
            (50079, "interaction_required", S::MfaRequired),
            (65001, "invalid_grant", S::ConsentMissing),
            (53003, "invalid_grant", S::BlockedByPolicy),
            (7000215, "invalid_client", S::ClientCredentialInvalid),
            (7000222, "invalid_client", S::ClientCredentialInvalid),
        ] {
            match classify(&aadsts(400, error, code), None) {
                Failure::Consent { state: got, detail } => {
                    assert_eq!(got, state, "AADSTS{code}");
                    assert_eq!(detail, format!("AADSTS{code}: words."));
                }
                other => panic!("AADSTS{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn customer_problems_stay_with_the_customer_and_transient_ones_change_nothing() {
        for code in [50020, 65001, 500011, 53003] {
            assert!(matches!(
                classify(&aadsts(400, "invalid_grant", code), Some("c1")),
                Failure::Customer { .. }
            ));
        }
        // The refresh token's own death is everyone's problem, even when seen at a customer.
        assert!(matches!(
            classify(&aadsts(400, "invalid_grant", 700082), Some("c1")),
            Failure::Consent { .. }
        ));
        for err in [
            EntraError::Unavailable {
                status: 429,
                retry_after: None,
            },
            EntraError::Unavailable {
                status: 503,
                retry_after: None,
            },
            EntraError::Network("reset".into()),
            aadsts(400, "invalid_grant", 50196),
        ] {
            assert!(matches!(classify(&err, None), Failure::Transient { .. }));
        }
    }
}
