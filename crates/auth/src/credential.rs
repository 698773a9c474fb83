use std::collections::BTreeSet;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// What a credential may do. `admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    TokensIssue,
    TokensRead,
    TokensAdmin,
    AlertsRead,
    AlertsWrite,
    NotifyRead,
    NotifyAdmin,
    ComplianceRead,
    ComplianceWrite,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 10] = [
        Self::TokensIssue,
        Self::TokensRead,
        Self::TokensAdmin,
        Self::AlertsRead,
        Self::AlertsWrite,
        Self::NotifyRead,
        Self::NotifyAdmin,
        Self::ComplianceRead,
        Self::ComplianceWrite,
        Self::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokensIssue => "tokens:issue",
            Self::TokensRead => "tokens:read",
            Self::TokensAdmin => "tokens:admin",
            Self::AlertsRead => "alerts:read",
            Self::AlertsWrite => "alerts:write",
            Self::NotifyRead => "notify:read",
            Self::NotifyAdmin => "notify:admin",
            Self::ComplianceRead => "compliance:read",
            Self::ComplianceWrite => "compliance:write",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text.trim())
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub credential_id: String,
    pub display_name: String,
    pub service: bool,
    pub all_partners: bool,
    pub partners: BTreeSet<String>,
    pub scopes: BTreeSet<Scope>,
}

impl Principal {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }

    pub fn may_act_for(&self, partner_tenant_id: &str) -> bool {
        self.all_partners || self.partners.contains(partner_tenant_id)
    }

    /// PERMISSION_DENIED naming the partner and what is missing, never whether data exists.
    pub fn check(&self, partner_tenant_id: &str, scope: Scope) -> Result<(), tonic::Status> {
        if !self.may_act_for(partner_tenant_id) {
            return Err(tonic::Status::permission_denied(format!(
                "permission denied for partner {partner_tenant_id}: the credential is not bound to this partner"
            )));
        }
        if !self.has_scope(scope) {
            return Err(tonic::Status::permission_denied(format!(
                "permission denied for partner {partner_tenant_id}: the credential lacks {scope}"
            )));
        }
        Ok(())
    }

    /// For RPCs about the platform itself (credentials, keys): needs the scope on a credential
    /// bound to every partner. A partner-bound `admin` administers its partners only: were it
    /// enough here, it could mint itself an all-partners credential (the security matrix found
    /// this) or revoke other partners' credentials.
    pub fn check_global(&self, scope: Scope) -> Result<(), tonic::Status> {
        if !self.has_scope(scope) {
            return Err(tonic::Status::permission_denied(format!(
                "permission denied: the credential lacks {scope}"
            )));
        }
        if !self.all_partners {
            return Err(tonic::Status::permission_denied(format!(
                "permission denied: {scope} over the platform needs a credential bound to every partner"
            )));
        }
        Ok(())
    }
}

/// A new credential: `(credential id, full secret "pal_<id>_<secret>", sha256 of the secret part)`.
pub fn generate_secret() -> (String, String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let mut bytes = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_secret(&secret);
    (id.clone(), format!("pal_{id}_{secret}"), hash)
}

/// `pal_<id>_<secret>` → `(id, sha256(secret))`.
pub fn parse_secret(full: &str) -> Option<(String, String)> {
    let (id, secret) = split_secret(full)?;
    Some((id.to_owned(), hash_secret(secret)))
}

/// `pal_<id>_<secret>` → `(id, secret)`, borrowed: the per-RPC check allocates nothing.
pub(crate) fn split_secret(full: &str) -> Option<(&str, &str)> {
    let rest = full.trim().strip_prefix("pal_")?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 16 || !id.chars().all(|c| c.is_ascii_hexdigit()) || secret.len() < 32 {
        return None;
    }
    Some((id, secret))
}

pub(crate) fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub(crate) fn hash_secret(secret: &str) -> String {
    hex::encode(secret_digest(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse_back_to_their_id_and_hash() {
        let (id, full, hash) = generate_secret();
        assert!(full.starts_with(&format!("pal_{id}_")));
        assert_eq!(parse_secret(&full), Some((id, hash)));
        assert_eq!(parse_secret("pal_short_x"), None);
        assert_eq!(parse_secret("Bearer nonsense"), None);
    }

    #[test]
    fn admin_implies_every_scope_but_not_every_partner() {
        let p = Principal {
            credential_id: "c".into(),
            display_name: "ops".into(),
            service: false,
            all_partners: false,
            partners: ["p1".to_owned()].into(),
            scopes: [Scope::Admin].into(),
        };
        assert!(p.check("p1", Scope::AlertsWrite).is_ok());
        let denied = p.check("p2", Scope::AlertsRead).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("p2"));
    }

    #[test]
    fn platform_rpcs_need_every_partner_not_just_admin() {
        let mut p = Principal {
            credential_id: "c".into(),
            display_name: "partner admin".into(),
            service: false,
            all_partners: false,
            partners: ["p1".to_owned()].into(),
            scopes: [Scope::Admin].into(),
        };
        let denied = p.check_global(Scope::Admin).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        p.all_partners = true;
        assert!(p.check_global(Scope::Admin).is_ok());
    }

    #[test]
    fn missing_scope_is_named() {
        let p = Principal {
            credential_id: "c".into(),
            display_name: "ro".into(),
            service: false,
            all_partners: true,
            partners: Default::default(),
            scopes: [Scope::AlertsRead].into(),
        };
        let denied = p.check("p1", Scope::AlertsWrite).unwrap_err();
        assert_eq!(
            denied.message(),
            "permission denied for partner p1: the credential lacks alerts:write"
        );
    }
}
