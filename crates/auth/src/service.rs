//! `palisade.auth.v1.CredentialService`, hosted by every service over the shared registry.

use std::sync::Arc;

use palisade_contracts::{auth::v1 as pb, time};

use crate::{
    credential::{Scope, generate_secret},
    layer::Authenticator,
    principal,
    store::{CredentialRecord, NewCredential},
};

#[derive(Clone, Debug)]
pub struct CredentialServiceImpl {
    authenticator: Arc<Authenticator>,
}

impl CredentialServiceImpl {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }

    pub fn into_server(self) -> pb::credential_service_server::CredentialServiceServer<Self> {
        pb::credential_service_server::CredentialServiceServer::new(self)
    }
}

fn to_proto(record: &CredentialRecord) -> pb::Credential {
    pb::Credential {
        credential_id: record.credential_id.clone(),
        display_name: record.display_name.clone(),
        kind: if record.service {
            pb::CredentialKind::Service
        } else {
            pb::CredentialKind::Client
        } as i32,
        partner_tenant_ids: record.partners.iter().cloned().collect(),
        all_partners: record.all_partners,
        scopes: record
            .scopes
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        created_at: Some(time::from_millis(record.created_at)),
        revoked_at: record.revoked_at.map(time::from_millis),
        expires_at: record.expires_at.map(time::from_millis),
    }
}

fn internal(e: impl std::fmt::Display) -> tonic::Status {
    tracing::error!(error = %e, "credential registry error");
    tonic::Status::internal("internal error")
}

#[tonic::async_trait]
impl pb::credential_service_server::CredentialService for CredentialServiceImpl {
    async fn create_credential(
        &self,
        request: tonic::Request<pb::CreateCredentialRequest>,
    ) -> Result<tonic::Response<pb::CreateCredentialResponse>, tonic::Status> {
        principal(&request)?.check_global(Scope::Admin)?;
        let req = request.into_inner();
        if req.display_name.trim().is_empty() {
            return Err(tonic::Status::invalid_argument("display_name is required"));
        }
        let mut scopes = Vec::new();
        for s in &req.scopes {
            scopes.push(Scope::parse(s).ok_or_else(|| {
                tonic::Status::invalid_argument(format!(
                    "unknown scope {s:?}; known: {}",
                    Scope::ALL.map(Scope::as_str).join(", ")
                ))
            })?);
        }
        if scopes.is_empty() {
            return Err(tonic::Status::invalid_argument(
                "at least one scope is required",
            ));
        }
        if !req.all_partners && req.partner_tenant_ids.is_empty() {
            return Err(tonic::Status::invalid_argument(
                "bind the credential to partner_tenant_ids or set all_partners",
            ));
        }
        if req
            .partner_tenant_ids
            .iter()
            .any(|p| p.contains(',') || p.trim().is_empty())
        {
            return Err(tonic::Status::invalid_argument(
                "partner tenant ids must be non-empty and contain no commas",
            ));
        }
        let (id, secret, hash) = generate_secret();
        let record = self
            .authenticator
            .store()
            .insert(
                &id,
                &hash,
                &NewCredential {
                    display_name: req.display_name,
                    service: req.kind == pb::CredentialKind::Service as i32,
                    all_partners: req.all_partners,
                    partners: req.partner_tenant_ids,
                    scopes,
                    expires_at: req.expires_at.as_ref().map(time::to_millis),
                },
            )
            .await
            .map_err(internal)?;
        tracing::info!(credential_id = %id, "credential created");
        Ok(tonic::Response::new(pb::CreateCredentialResponse {
            credential: Some(to_proto(&record)),
            secret,
        }))
    }

    async fn list_credentials(
        &self,
        request: tonic::Request<pb::ListCredentialsRequest>,
    ) -> Result<tonic::Response<pb::ListCredentialsResponse>, tonic::Status> {
        principal(&request)?.check_global(Scope::Admin)?;
        let req = request.into_inner();
        let limit = i64::from(req.page_size.clamp(1, 500)).max(1);
        let limit = if req.page_size <= 0 { 100 } else { limit };
        let mut rows = self
            .authenticator
            .store()
            .list(&req.page_token, limit + 1, req.include_revoked)
            .await
            .map_err(internal)?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|r| r.credential_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(tonic::Response::new(pb::ListCredentialsResponse {
            credentials: rows.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn revoke_credential(
        &self,
        request: tonic::Request<pb::RevokeCredentialRequest>,
    ) -> Result<tonic::Response<pb::RevokeCredentialResponse>, tonic::Status> {
        principal(&request)?.check_global(Scope::Admin)?;
        let id = request.into_inner().credential_id;
        let record = self
            .authenticator
            .store()
            .revoke(&id)
            .await
            .map_err(internal)?
            .ok_or_else(|| tonic::Status::not_found(format!("no credential {id}")))?;
        tracing::info!(credential_id = %id, "credential revoked");
        // This replica stops accepting it at once; the others within a refresh interval.
        let _ = self.authenticator.refresh().await;
        Ok(tonic::Response::new(pb::RevokeCredentialResponse {
            credential: Some(to_proto(&record)),
        }))
    }

    async fn who_am_i(
        &self,
        request: tonic::Request<pb::WhoAmIRequest>,
    ) -> Result<tonic::Response<pb::WhoAmIResponse>, tonic::Status> {
        let caller = principal(&request)?;
        // The layer just authenticated the caller from the cache, so the row is there; the
        // registry is read only if a refresh raced it out.
        let record = match self.authenticator.cached(&caller.credential_id) {
            Some(record) => record,
            None => self
                .authenticator
                .store()
                .get(&caller.credential_id)
                .await
                .map_err(internal)?
                .ok_or_else(|| tonic::Status::unauthenticated("invalid or revoked credential"))?,
        };
        Ok(tonic::Response::new(pb::WhoAmIResponse {
            credential: Some(to_proto(&record)),
        }))
    }
}

/// Creates an admin credential bound to every partner and prints nothing: the caller shows
/// the returned secret once.
pub async fn bootstrap_admin(
    store: &crate::AuthStore,
    display_name: &str,
) -> anyhow::Result<String> {
    let (id, secret, hash) = generate_secret();
    store
        .insert(
            &id,
            &hash,
            &NewCredential {
                display_name: display_name.to_owned(),
                service: false,
                all_partners: true,
                partners: Vec::new(),
                scopes: vec![Scope::Admin],
                expires_at: None,
            },
        )
        .await?;
    Ok(secret)
}

/// Hashes a configured `pal_…` credential into the registry (idempotent across replicas).
pub async fn ensure_configured_credential(
    store: &crate::AuthStore,
    secret: &secrecy::SecretString,
    display_name: &str,
    scopes: Vec<Scope>,
) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let (id, hash) = crate::parse_secret(secret.expose_secret()).ok_or_else(|| {
        anyhow::anyhow!("config key auth: the credential is not of the form pal_<16 hex>_<secret>")
    })?;
    store
        .upsert(
            &id,
            &hash,
            &NewCredential {
                display_name: display_name.to_owned(),
                service: false,
                all_partners: true,
                partners: Vec::new(),
                scopes,
                expires_at: None,
            },
        )
        .await?;
    Ok(())
}
