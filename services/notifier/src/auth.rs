//! The check every RPC runs first, before any lookup, so a denial never tells whether the
//! partner's data exists. Credentials are verified by the platform's `AuthLayer` in the
//! server stack; this only asks whether the verified caller may act for the partner.

pub use palisade_auth::{Principal, Scope};

/// `UNAUTHENTICATED` without a verified credential; `PERMISSION_DENIED` for another partner
/// or a missing scope. Whoever may administer a partner's notifications may also read them.
pub fn authorize<T>(
    request: &tonic::Request<T>,
    partner_tenant_id: &str,
    scope: Scope,
) -> Result<(), tonic::Status> {
    match palisade_auth::authorize(request, partner_tenant_id, scope) {
        Ok(_) => Ok(()),
        Err(denied)
            if scope == Scope::NotifyRead && denied.code() == tonic::Code::PermissionDenied =>
        {
            palisade_auth::authorize(request, partner_tenant_id, Scope::NotifyAdmin)
                .map(|_| ())
                .map_err(|_| denied)
        }
        Err(e) => Err(e),
    }
}
