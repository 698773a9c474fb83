//! `palisade.tokens.v1.TokenBrokerService`: authorise first, validate, call the broker,
//! translate. No response ever carries a refresh token or a secret.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use palisade_auth::{Principal, Scope};
use palisade_contracts::{
    common::v1::{Progress, TimeRange},
    time::{from_millis, opt_from_millis, to_millis},
    tokens::v1::{self as pb, token_broker_service_server::TokenBrokerService},
};
use secrecy::SecretString;
use tonic::{Request, Response, Status};

use crate::{
    broker::{Broker, INACTIVITY_LIMIT, NewApp, ResourceSpec},
    store::{AppRow, ConsentRow, Cursor},
};

#[derive(Debug, Clone)]
pub struct TokenBrokerApi {
    broker: Arc<Broker>,
}

impl TokenBrokerApi {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    pub fn into_server(self) -> pb::token_broker_service_server::TokenBrokerServiceServer<Self> {
        pb::token_broker_service_server::TokenBrokerServiceServer::new(self)
    }
}

/// The first line of every RPC. Whoever administers a partner's tokens may also read their
/// metadata; minting needs `tokens:issue` itself.
fn authorize<T>(request: &Request<T>, partner: &str, scope: Scope) -> Result<Principal, Status> {
    match palisade_auth::authorize(request, partner, scope) {
        Ok(p) => Ok(p),
        Err(denied)
            if scope == Scope::TokensRead && denied.code() == tonic::Code::PermissionDenied =>
        {
            palisade_auth::authorize(request, partner, Scope::TokensAdmin).map_err(|_| denied)
        }
        Err(e) => Err(e),
    }
}

/// Key management concerns every partner of the deployment: only a credential bound to all
/// partners with the scope may do it.
fn authorize_global<T>(request: &Request<T>, scope: Scope) -> Result<Principal, Status> {
    let principal = palisade_auth::principal(request)?;
    let allowed = principal.all_partners
        && (principal.has_scope(scope)
            || (scope == Scope::TokensRead && principal.has_scope(Scope::TokensAdmin)));
    if !allowed {
        return Err(Status::permission_denied(format!(
            "permission denied: key management needs {scope} on a credential bound to every partner"
        )));
    }
    Ok(principal)
}

fn page_size(requested: i32) -> i64 {
    match requested {
        n if n <= 0 => 50,
        n => i64::from(n.min(500)),
    }
}

fn decode_cursor(token: &str, limit: i64) -> Result<Cursor, Status> {
    if token.is_empty() {
        return Ok(Cursor { after: None, limit });
    }
    let decoded = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| Status::invalid_argument("page_token is not one this service issued"))?;
    let (at, id) = decoded
        .split_once(':')
        .ok_or_else(|| Status::invalid_argument("page_token is not one this service issued"))?;
    let at = at
        .parse()
        .map_err(|_| Status::invalid_argument("page_token is not one this service issued"))?;
    Ok(Cursor {
        after: Some((at, id.to_owned())),
        limit,
    })
}

fn encode_cursor(at: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{at}:{id}"))
}

fn range_of(range: Option<&TimeRange>) -> (Option<i64>, Option<i64>) {
    match range {
        Some(r) => (
            r.start.as_ref().map(to_millis),
            r.end.as_ref().map(to_millis),
        ),
        None => (None, None),
    }
}

fn app_to_proto(app: &AppRow) -> pb::App {
    pb::App {
        app_id: app.app_id.clone(),
        partner_tenant_id: app.partner_tenant_id.clone(),
        display_name: app.display_name.clone(),
        client_id: app.client_id.clone(),
        cloud: app.cloud,
        scopes: app.scopes.clone(),
        credential_kind: app.credential_kind,
        credential_expires_at: opt_from_millis(app.credential_expires_at),
        token_endpoint: app.token_endpoint,
        redirect_uri: app.redirect_uri.clone(),
        created_at: Some(from_millis(app.created_at)),
    }
}

fn consent_to_proto(c: &ConsentRow) -> pb::Consent {
    pb::Consent {
        consent_id: c.consent_id.clone(),
        partner_tenant_id: c.partner_tenant_id.clone(),
        app_id: c.app_id.clone(),
        consented_by_upn: c.consented_by_upn.clone(),
        consented_with_mfa: c.consented_with_mfa,
        state: c.health,
        state_detail: c.health_detail.clone(),
        created_at: Some(from_millis(c.created_at)),
        last_redeemed_at: Some(from_millis(c.last_redeemed_at)),
        inactivity_deadline: c
            .revoked_at
            .is_none()
            .then(|| from_millis(c.last_redeemed_at + INACTIVITY_LIMIT.as_millis() as i64)),
        rotation_count: c.rotation_count.max(0) as u64,
        remediation: c.remediation.clone(),
        reconsent_url: c.reconsent_url.clone(),
    }
}

fn required(value: &str, name: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{name} is required")));
    }
    Ok(())
}

fn validate_redirect(uri: &str) -> Result<(), Status> {
    if uri.is_empty() {
        return Ok(());
    }
    let parsed =
        url::Url::parse(uri).map_err(|_| Status::invalid_argument("redirect_uri is not a URL"))?;
    let local = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if parsed.scheme() != "https" && !(parsed.scheme() == "http" && local) {
        return Err(Status::invalid_argument(
            "redirect_uri must be https (http only for localhost)",
        ));
    }
    Ok(())
}

type RotateStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::RotateKeyProgress, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl TokenBrokerService for TokenBrokerApi {
    async fn register_app(
        &self,
        request: Request<pb::RegisterAppRequest>,
    ) -> Result<Response<pb::RegisterAppResponse>, Status> {
        let principal = authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensAdmin,
        )?;
        let r = request.into_inner();
        required(&r.client_id, "client_id")?;
        validate_redirect(&r.redirect_uri)?;
        let app = self
            .broker
            .register_app(
                &principal.credential_id,
                NewApp {
                    partner_tenant_id: r.partner_tenant_id,
                    display_name: r.display_name,
                    client_id: r.client_id.trim().to_owned(),
                    cloud: if r.cloud == 0 {
                        palisade_contracts::common::v1::Cloud::Public as i32
                    } else {
                        r.cloud
                    },
                    scopes: r.scopes,
                    token_endpoint: if r.token_endpoint == 0 {
                        pb::TokenEndpoint::V1 as i32
                    } else {
                        r.token_endpoint
                    },
                    redirect_uri: r.redirect_uri,
                    credential: r.credential,
                    credential_expires_at: r.credential_expires_at.as_ref().map(to_millis),
                },
            )
            .await?;
        Ok(Response::new(pb::RegisterAppResponse {
            app: Some(app_to_proto(&app)),
        }))
    }

    async fn get_app(
        &self,
        request: Request<pb::GetAppRequest>,
    ) -> Result<Response<pb::GetAppResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensRead,
        )?;
        let r = request.into_inner();
        let app = self.broker.get_app(&r.partner_tenant_id, &r.app_id).await?;
        Ok(Response::new(pb::GetAppResponse {
            app: Some(app_to_proto(&app)),
        }))
    }

    async fn list_apps(
        &self,
        request: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensRead,
        )?;
        let r = request.into_inner();
        let cursor = decode_cursor(&r.page_token, page_size(r.page_size))?;
        let apps = self.broker.list_apps(&r.partner_tenant_id, &cursor).await?;
        let next_page_token = match apps.last() {
            Some(last) if apps.len() as i64 == cursor.limit => {
                encode_cursor(last.created_at, &last.app_id)
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAppsResponse {
            apps: apps.iter().map(app_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_app_credential(
        &self,
        request: Request<pb::UpdateAppCredentialRequest>,
    ) -> Result<Response<pb::UpdateAppCredentialResponse>, Status> {
        let principal = authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensAdmin,
        )?;
        let r = request.into_inner();
        let credential = r
            .credential
            .ok_or_else(|| Status::invalid_argument("credential is required"))?;
        let app = self
            .broker
            .update_app_credential(
                &principal.credential_id,
                &r.partner_tenant_id,
                &r.app_id,
                &credential,
                r.credential_expires_at.as_ref().map(to_millis),
            )
            .await?;
        Ok(Response::new(pb::UpdateAppCredentialResponse {
            app: Some(app_to_proto(&app)),
        }))
    }

    async fn delete_app(
        &self,
        request: Request<pb::DeleteAppRequest>,
    ) -> Result<Response<pb::DeleteAppResponse>, Status> {
        let principal = authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensAdmin,
        )?;
        let r = request.into_inner();
        self.broker
            .delete_app(&principal.credential_id, &r.partner_tenant_id, &r.app_id)
            .await?;
        Ok(Response::new(pb::DeleteAppResponse {}))
    }

    async fn begin_consent(
        &self,
        request: Request<pb::BeginConsentRequest>,
    ) -> Result<Response<pb::BeginConsentResponse>, Status> {
        let principal = authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensAdmin,
        )?;
        let r = request.into_inner();
        validate_redirect(&r.redirect_uri)?;
        let (url, pending) = self
            .broker
            .begin_consent_default(
                &principal.credential_id,
                &r.partner_tenant_id,
                &r.app_id,
                &r.redirect_uri,
            )
            .await?;
        Ok(Response::new(pb::BeginConsentResponse {
            authorize_url: url,
            state: pending.state,
            nonce: pending.nonce,
            expires_at: Some(from_millis(pending.expires_at)),
        }))
    }

    async fn complete_consent(
        &self,
        request: Request<pb::CompleteConsentRequest>,
    ) -> Result<Response<pb::CompleteConsentResponse>, Status> {
        let principal = authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensAdmin,
        )?;
        let r = request.into_inner();
        required(&r.state, "state")?;
        required(&r.code, "code")?;
        let code = SecretString::from(r.code);
        let consent = self
            .broker
            .complete_consent(
                &principal.credential_id,
                &r.partner_tenant_id,
                &r.state,
                &code,
            )
            .await?;
        Ok(Response::new(pb::CompleteConsentResponse {
            consent: Some(consent_to_proto(&consent)),
        }))
    }

    async fn import_refresh_token(
        &self,
        request: Request<pb::ImportRefreshTokenRequest>,
    ) -> Result<Response<pb::ImportRefreshTokenResponse>, Status> {
        let principal = authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensAdmin,
        )?;
        let r = request.into_inner();
        required(&r.refresh_token, "refresh_token")?;
        let refresh_token = SecretString::from(r.refresh_token);
        let consent = self
            .broker
            .import_refresh_token(
                &principal.credential_id,
                &r.partner_tenant_id,
                &r.app_id,
                &refresh_token,
                &r.source,
            )
            .await?;
        Ok(Response::new(pb::ImportRefreshTokenResponse {
            consent: Some(consent_to_proto(&consent)),
        }))
    }

    async fn list_consents(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensRead,
        )?;
        let r = request.into_inner();
        let cursor = decode_cursor(&r.page_token, page_size(r.page_size))?;
        let consents = self
            .broker
            .list_consents(&r.partner_tenant_id, &cursor)
            .await?;
        let next_page_token = match consents.last() {
            Some(last) if consents.len() as i64 == cursor.limit => {
                encode_cursor(last.created_at, &last.consent_id)
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListConsentsResponse {
            consents: consents.iter().map(consent_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn revoke_consent(
        &self,
        request: Request<pb::RevokeConsentRequest>,
    ) -> Result<Response<pb::RevokeConsentResponse>, Status> {
        let principal = authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensAdmin,
        )?;
        let r = request.into_inner();
        let consent = self
            .broker
            .revoke_consent(
                &principal.credential_id,
                &r.partner_tenant_id,
                &r.consent_id,
            )
            .await?;
        Ok(Response::new(pb::RevokeConsentResponse {
            consent: Some(consent_to_proto(&consent)),
        }))
    }

    async fn get_access_token(
        &self,
        request: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::GetAccessTokenResponse>, Status> {
        // The hot path: the principal is borrowed from the request, not copied.
        let r = request.get_ref();
        let principal =
            palisade_auth::authorize_ref(&request, &r.partner_tenant_id, Scope::TokensIssue)?;
        let resource = ResourceSpec::from_request(r.resource, &r.custom_scope)?;
        if !self.broker.may_issue(&principal.credential_id, &resource) {
            return Err(Status::permission_denied(format!(
                "permission denied for partner {}: the credential may not mint {} tokens",
                r.partner_tenant_id,
                resource.name()
            )));
        }
        let issued = self
            .broker
            .access_token(
                &principal.credential_id,
                &r.partner_tenant_id,
                &r.target_tenant_id,
                &resource,
                r.force_refresh,
            )
            .await?;
        use secrecy::ExposeSecret;
        Ok(Response::new(pb::GetAccessTokenResponse {
            access_token: issued.access_token.expose_secret().to_owned(),
            expires_at: Some(from_millis(issued.expires_at)),
            mfa: issued.mfa,
            from_cache: issued.from_cache,
            token_type: issued.token_type,
        }))
    }

    async fn get_token_health(
        &self,
        request: Request<pb::GetTokenHealthRequest>,
    ) -> Result<Response<pb::GetTokenHealthResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensRead,
        )?;
        let r = request.into_inner();
        let (state, consents, customers) = self.broker.token_health(&r.partner_tenant_id).await?;
        Ok(Response::new(pb::GetTokenHealthResponse {
            state: state as i32,
            consents: consents.iter().map(consent_to_proto).collect(),
            customer_issues: customers
                .into_iter()
                .map(|c| pb::CustomerAccessIssue {
                    customer_tenant_id: c.customer_tenant_id,
                    state: c.health,
                    detail: c.detail,
                    since: Some(from_millis(c.since)),
                })
                .collect(),
        }))
    }

    type RotateKeyStream = RotateStream;

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<Self::RotateKeyStream>, Status> {
        let principal = authorize_global(&request, Scope::TokensAdmin)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let broker = Arc::clone(&self.broker);
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let result = broker
                .rotate_key(
                    &principal.credential_id,
                    move |version, done, total, failed| {
                        let _ = progress_tx.try_send(Ok(pb::RotateKeyProgress {
                            new_key_version: version.to_owned(),
                            progress: Some(Progress {
                                done,
                                total,
                                failed,
                                message: format!("{done} of {total} data keys re-wrapped"),
                            }),
                        }));
                    },
                )
                .await;
            match result {
                Ok(version) => {
                    let _ = tx
                        .send(Ok(pb::RotateKeyProgress {
                            new_key_version: version,
                            progress: Some(Progress {
                                message: "done".into(),
                                ..Default::default()
                            }),
                        }))
                        .await;
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_key_status(
        &self,
        request: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::GetKeyStatusResponse>, Status> {
        authorize_global(&request, Scope::TokensRead)?;
        let (current, counts) = self.broker.key_status().await?;
        Ok(Response::new(pb::GetKeyStatusResponse {
            provider: self.broker.key_provider().to_owned(),
            current_key_version: current,
            records_by_key_version: counts.into_iter().collect(),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensRead,
        )?;
        let r = request.into_inner();
        let cursor = decode_cursor(&r.page_token, page_size(r.page_size))?;
        let target = (!r.target_tenant_id.is_empty()).then_some(r.target_tenant_id.as_str());
        let rows = self
            .broker
            .store()
            .list_audit(
                &r.partner_tenant_id,
                target,
                range_of(r.time_range.as_ref()),
                &cursor,
            )
            .await
            .map_err(Status::from)?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() as i64 == cursor.limit => {
                encode_cursor(last.occurred_at, &last.event_id)
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: rows
                .into_iter()
                .map(|a| pb::AuditEvent {
                    event_id: a.event_id,
                    partner_tenant_id: a.partner_tenant_id,
                    kind: a.kind,
                    target_tenant_id: a.target_tenant_id,
                    resource: a.resource,
                    caller: a.caller,
                    success: a.success,
                    detail: a.detail,
                    occurred_at: Some(from_millis(a.occurred_at)),
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn list_token_usage(
        &self,
        request: Request<pb::ListTokenUsageRequest>,
    ) -> Result<Response<pb::ListTokenUsageResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensRead,
        )?;
        let r = request.into_inner();
        let limit = page_size(r.page_size);
        let offset: i64 = if r.page_token.is_empty() {
            0
        } else {
            r.page_token.parse().map_err(|_| {
                Status::invalid_argument("page_token is not one this service issued")
            })?
        };
        // Counts still in memory are written first, so the answer includes the latest minute.
        self.broker.flush_usage().await?;
        let target = (!r.target_tenant_id.is_empty()).then_some(r.target_tenant_id.as_str());
        let rows = self
            .broker
            .store()
            .list_usage(
                &r.partner_tenant_id,
                target,
                range_of(r.time_range.as_ref()),
                &Cursor {
                    after: Some((offset, String::new())),
                    limit,
                },
            )
            .await
            .map_err(Status::from)?;
        let next_page_token = if rows.len() as i64 == limit {
            (offset + limit).to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListTokenUsageResponse {
            usage: rows
                .into_iter()
                .map(|u| pb::TokenUsage {
                    minute: Some(from_millis(u.minute)),
                    caller: u.caller,
                    target_tenant_id: u.target_tenant_id,
                    resource: u.resource,
                    cache_hits: u.cache_hits.max(0) as u64,
                    issued: u.issued.max(0) as u64,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn get_mfa_statistics(
        &self,
        request: Request<pb::GetMfaStatisticsRequest>,
    ) -> Result<Response<pb::GetMfaStatisticsResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::TokensRead,
        )?;
        let r = request.into_inner();
        let (minted, with_mfa) = self
            .broker
            .store()
            .mfa_statistics(&r.partner_tenant_id, range_of(r.time_range.as_ref()))
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::GetMfaStatisticsResponse {
            tokens_minted: minted,
            tokens_minted_with_mfa: with_mfa,
        }))
    }
}
