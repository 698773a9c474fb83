//! The authorisation check every RPC runs first, before any lookup, so a denial never tells
//! whether the partner's data exists.
//!
//! The platform's credential registry (`palisade-auth`) was still being written while this
//! service was built; [`Authorize`] is the seam. [`StaticCredentials`] is the small adapter
//! used until then: bearer tokens from config, stored only as SHA-256 digests, each bound to
//! partner tenants and scopes.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use crate::error::{NotifierError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    NotifyRead,
    NotifyAdmin,
}

impl Scope {
    fn granted_by(self, scope: &str) -> bool {
        match self {
            Self::NotifyRead => matches!(scope, "notify:read" | "notify:admin" | "admin"),
            Self::NotifyAdmin => matches!(scope, "notify:admin" | "admin"),
        }
    }
}

#[async_trait::async_trait]
pub trait Authorize: Send + Sync + 'static {
    /// Unauthenticated without a valid credential; permission denied when the credential
    /// does not cover `partner` with `scope`.
    async fn authorize(&self, metadata: &MetadataMap, partner: &str, scope: Scope) -> Result<()>;
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StaticCredential {
    pub name: String,
    /// Hex SHA-256 of the bearer token; the token itself is never stored.
    pub token_sha256: String,
    /// Partner tenant ids, or `*` for every partner (internal services).
    pub partners: Vec<String>,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct StaticCredentials {
    credentials: Vec<StaticCredential>,
}

impl StaticCredentials {
    pub fn new(credentials: Vec<StaticCredential>) -> Self {
        Self { credentials }
    }

    pub fn digest(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }
}

#[async_trait::async_trait]
impl Authorize for StaticCredentials {
    async fn authorize(&self, metadata: &MetadataMap, partner: &str, scope: Scope) -> Result<()> {
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(NotifierError::Unauthenticated)?;
        let digest = Sha256::digest(token.as_bytes());
        let credential = self
            .credentials
            .iter()
            .find(|c| {
                hex::decode(&c.token_sha256)
                    .map(|d| bool::from(d.ct_eq(digest.as_slice())))
                    .unwrap_or(false)
            })
            .ok_or(NotifierError::Unauthenticated)?;
        let partner_ok = credential.partners.iter().any(|p| p == "*" || p == partner);
        let scope_ok = credential.scopes.iter().any(|s| scope.granted_by(s));
        if partner_ok && scope_ok && !partner.is_empty() {
            Ok(())
        } else {
            Err(NotifierError::PermissionDenied)
        }
    }
}
