//! The check every RPC runs first, before any lookup, so a denial never tells whether the
//! partner's data exists. Credentials are verified by the platform's `AuthLayer`; this only
//! asks whether the verified caller may act for the partner. Whoever may change a partner's
//! evaluations (`compliance:write`) may also read them.

pub use palisade_auth::{Principal, Scope};

pub fn authorize<T>(
    request: &tonic::Request<T>,
    partner_tenant_id: &str,
    scope: Scope,
) -> Result<(), tonic::Status> {
    match palisade_auth::authorize(request, partner_tenant_id, scope) {
        Ok(_) => Ok(()),
        Err(denied)
            if scope == Scope::ComplianceRead && denied.code() == tonic::Code::PermissionDenied =>
        {
            palisade_auth::authorize(request, partner_tenant_id, Scope::ComplianceWrite)
                .map(|_| ())
                .map_err(|_| denied)
        }
        Err(e) => Err(e),
    }
}
