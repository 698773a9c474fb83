//! Authentication and authorisation for a multi-tenant gRPC surface.
//!
//! A client credential is `pal_<credential id>_<secret>`. The registry stores the id, the
//! partner tenants and scopes it is bound to, and SHA-256 of the secret, never the secret.
//! Every service verifies credentials from an in-memory cache (no database round trip on the
//! hot path), refreshed every second from the registry's change feed, so a revocation takes
//! effect everywhere within about two seconds.
//!
//! Every RPC then calls [`authorize`] with the partner it touches and the scope it needs,
//! before any lookup, so a denial never reveals whether the data exists.

mod credential;
mod layer;
mod service;
mod store;

pub use credential::{Principal, Scope, generate_secret, parse_secret};
pub use layer::{AuthLayer, Authenticator, BearerInterceptor};
pub use service::{CredentialServiceImpl, bootstrap_admin, ensure_configured_credential};
pub use store::{AuthStore, CredentialRecord, MIGRATIONS, NewCredential};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Auth settings shared by every service.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// A `pal_…` credential hashed into the registry as an admin at start (for Kubernetes, from
    /// an existing Secret). Its id part names the credential.
    #[serde(skip_serializing)]
    pub bootstrap_admin_secret: Option<SecretString>,
    /// This service's own credential, presented when it calls another service.
    #[serde(skip_serializing)]
    pub service_credential: Option<SecretString>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field(
                "bootstrap_admin_secret",
                &self.bootstrap_admin_secret.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "service_credential",
                &self.service_credential.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// The check every RPC runs first: the caller must hold `scope` for `partner_tenant_id`.
///
/// No credential → UNAUTHENTICATED; another partner or a missing scope → PERMISSION_DENIED,
/// decided before any data is read; an empty partner → INVALID_ARGUMENT.
pub fn authorize<T>(
    request: &tonic::Request<T>,
    partner_tenant_id: &str,
    scope: Scope,
) -> Result<Principal, tonic::Status> {
    authorize_ref(request, partner_tenant_id, scope).cloned()
}

/// [`authorize`] without copying the principal, for hot paths that only read it.
pub fn authorize_ref<'r, T>(
    request: &'r tonic::Request<T>,
    partner_tenant_id: &str,
    scope: Scope,
) -> Result<&'r Principal, tonic::Status> {
    let principal = request.extensions().get::<Principal>().ok_or_else(|| {
        tonic::Status::unauthenticated("missing credential: send `authorization: Bearer pal_…`")
    })?;
    if partner_tenant_id.trim().is_empty() {
        return Err(tonic::Status::invalid_argument(
            "partner_tenant_id is required",
        ));
    }
    principal.check(partner_tenant_id, scope)?;
    Ok(principal)
}

/// The caller, for RPCs that are not about one partner (credential management).
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| {
            tonic::Status::unauthenticated("missing credential: send `authorization: Bearer pal_…`")
        })
}
