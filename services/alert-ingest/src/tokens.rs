//! Access tokens, from the token broker over gRPC. alert-ingest never sees a refresh token or
//! an app secret: it asks `palisade.tokens.v1.TokenBrokerService/GetAccessToken` for a token
//! for one partner and one resource, and keeps it in memory until shortly before it expires.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use palisade_auth::BearerInterceptor;
use palisade_contracts::tokens::v1::{
    GetAccessTokenRequest, Resource, token_broker_service_client::TokenBrokerServiceClient,
};
use secrecy::SecretString;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no access token for partner {partner_tenant_id}: {reason}")]
pub struct TokenError {
    pub partner_tenant_id: String,
    pub reason: String,
    /// The broker answered with a state a person must fix (consent, MFA): retrying soon is
    /// pointless, but the work must not be dropped either.
    pub needs_person: bool,
}

#[async_trait::async_trait]
pub trait AccessTokens: Send + Sync + std::fmt::Debug {
    async fn access_token(
        &self,
        partner_tenant_id: &str,
        resource: Resource,
    ) -> Result<String, TokenError>;
    /// Forgets a cached token Microsoft refused (401), so the next call asks the broker anew.
    fn invalidate(&self, partner_tenant_id: &str, resource: Resource);
}

type Client = TokenBrokerServiceClient<InterceptedService<Channel, BearerInterceptor>>;

/// The broker's client, with a small cache (the broker caches too; this saves the round trip
/// per Microsoft call on the hot path).
pub struct BrokerTokens {
    client: Client,
    cache: Mutex<HashMap<(String, i32), (String, i64)>>,
    /// Force the next request for these keys past the broker's cache.
    refused: Mutex<std::collections::HashSet<(String, i32)>>,
}

impl std::fmt::Debug for BrokerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerTokens")
    }
}

impl BrokerTokens {
    /// Connects lazily: the broker may start after us.
    pub fn connect(url: &str, credential: Option<&SecretString>) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(url.to_owned())
            .map_err(|e| anyhow::anyhow!("config key token_broker.url: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        Ok(Self {
            client: TokenBrokerServiceClient::with_interceptor(
                channel,
                BearerInterceptor::new(credential),
            ),
            cache: Mutex::new(HashMap::new()),
            refused: Mutex::new(Default::default()),
        })
    }
}

#[async_trait::async_trait]
impl AccessTokens for BrokerTokens {
    async fn access_token(
        &self,
        partner_tenant_id: &str,
        resource: Resource,
    ) -> Result<String, TokenError> {
        let key = (partner_tenant_id.to_owned(), resource as i32);
        let now = palisade_storage::now_millis();
        let force_refresh = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        if !force_refresh
            && let Some((token, expires)) = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
            && *expires > now + 120_000
        {
            return Ok(token.clone());
        }
        let response = self
            .client
            .clone()
            .get_access_token(GetAccessTokenRequest {
                partner_tenant_id: partner_tenant_id.to_owned(),
                target_tenant_id: String::new(),
                resource: resource as i32,
                custom_scope: String::new(),
                force_refresh,
            })
            .await
            .map_err(|status| TokenError {
                partner_tenant_id: partner_tenant_id.to_owned(),
                reason: format!("{:?}: {}", status.code(), status.message()),
                needs_person: matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition
                        | tonic::Code::PermissionDenied
                        | tonic::Code::NotFound
                ),
            })?
            .into_inner();
        let expires = response
            .expires_at
            .as_ref()
            .map(palisade_contracts::time::to_millis)
            .unwrap_or(now + 300_000);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (response.access_token.clone(), expires));
        Ok(response.access_token)
    }

    fn invalidate(&self, partner_tenant_id: &str, resource: Resource) {
        let key = (partner_tenant_id.to_owned(), resource as i32);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
    }
}
