//! Azure Key Vault over REST (api-version 7.4): `wrapkey` / `unwrapkey` with RSA-OAEP-256 for
//! envelope encryption, the key's current version, `rotate`, and reading a secret by URL (for
//! app secrets referenced from Key Vault).
//!
//! The client authenticates with a bearer token for `https://vault.azure.net` from the Entra
//! client-credentials grant of an operator app, cached until shortly before it expires.
//! Neither keys, wrapped values nor tokens are ever logged.

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use crate::entra::{
    AppIdentity, EntraClient, EntraError, Grant, RetryPolicy, TokenTarget, TokenVersion,
};

const API_VERSION: &str = "7.4";
const ALGORITHM: &str = "RSA-OAEP-256";

#[derive(Debug, thiserror::Error)]
pub enum KeyVaultError {
    #[error("key vault authentication failed: {0}")]
    Auth(#[from] EntraError),
    #[error("key vault refused: http {status} {code}")]
    Refused { status: u16, code: String },
    #[error("key vault unreachable: {0}")]
    Network(String),
    #[error("malformed key vault response: {0}")]
    Malformed(String),
}

impl KeyVaultError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Auth(e) => e.is_transient(),
            Self::Refused { status, .. } => *status == 429 || *status >= 500,
            Self::Network(_) => true,
            Self::Malformed(_) => false,
        }
    }
}

/// One key in one vault, addressed by name; versions come back in every answer's `kid`.
pub struct KeyVaultClient {
    http: reqwest::Client,
    vault: Url,
    key_name: String,
    entra: EntraClient,
    /// The operator app holding `wrapKey`/`unwrapKey` (and `rotate`) on the key.
    app: AppIdentity,
    tenant: String,
    token: Mutex<Option<(SecretString, Instant)>>,
}

impl std::fmt::Debug for KeyVaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVaultClient")
            .field("vault", &self.vault.as_str())
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct KeyOperationResult {
    kid: String,
    value: String,
}

#[derive(Deserialize)]
struct KeyBundle {
    key: JsonWebKey,
}

#[derive(Deserialize)]
struct JsonWebKey {
    kid: String,
}

#[derive(Deserialize)]
struct SecretBundle {
    value: String,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
}

/// The version at the end of a key id: `https://v.vault.azure.net/keys/name/<version>`.
pub fn version_of_kid(kid: &str) -> Option<&str> {
    let mut parts = kid.trim_end_matches('/').rsplit('/');
    let version = parts.next()?;
    let _name = parts.next()?;
    (parts.next()? == "keys").then_some(version)
}

impl KeyVaultClient {
    pub fn new(
        vault: Url,
        key_name: impl Into<String>,
        entra: EntraClient,
        app: AppIdentity,
        tenant: impl Into<String>,
    ) -> Result<Self, KeyVaultError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| KeyVaultError::Network(e.to_string()))?;
        Ok(Self {
            http,
            vault,
            key_name: key_name.into(),
            entra,
            app,
            tenant: tenant.into(),
            token: Mutex::new(None),
        })
    }

    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    async fn bearer(&self) -> Result<SecretString, KeyVaultError> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let response = self
            .entra
            .redeem_with_retry(
                &self.app,
                &self.tenant,
                TokenVersion::V2,
                &TokenTarget::key_vault(),
                Grant::ClientCredentials,
                RetryPolicy::default(),
            )
            .await?;
        // Renew five minutes early (or halfway through a very short token).
        let lifetime = Duration::from_secs(response.expires_in);
        let margin = Duration::from_secs(300).min(lifetime / 2);
        *cached = Some((
            response.access_token.clone(),
            Instant::now() + lifetime - margin,
        ));
        Ok(response.access_token)
    }

    fn url(&self, path: &str) -> Result<Url, KeyVaultError> {
        let mut url = self
            .vault
            .join(path)
            .map_err(|e| KeyVaultError::Malformed(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION);
        Ok(url)
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, KeyVaultError> {
        let token = self.bearer().await?;
        let response = request
            .bearer_auth(token.expose_secret())
            .send()
            .await
            .map_err(|e| KeyVaultError::Network(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| KeyVaultError::Network(e.without_url().to_string()))?;
        if !(200..300).contains(&status) {
            if status == 401 {
                // A token revoked or expired early: fetch a fresh one next time.
                *self.token.lock().await = None;
            }
            let code = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error.code)
                .unwrap_or_default();
            return Err(KeyVaultError::Refused { status, code });
        }
        serde_json::from_slice(&body).map_err(|e| KeyVaultError::Malformed(e.to_string()))
    }

    /// The key's current version (new data keys are wrapped with it).
    pub async fn current_version(&self) -> Result<String, KeyVaultError> {
        let url = self.url(&format!("keys/{}", self.key_name))?;
        let bundle: KeyBundle = self.send(self.http.get(url)).await?;
        version_of_kid(&bundle.key.kid)
            .map(str::to_owned)
            .ok_or_else(|| KeyVaultError::Malformed("kid without a version".into()))
    }

    /// Creates a new key version (`POST /keys/{name}/rotate`) and returns it.
    pub async fn rotate(&self) -> Result<String, KeyVaultError> {
        let url = self.url(&format!("keys/{}/rotate", self.key_name))?;
        let bundle: KeyBundle = self
            .send(self.http.post(url).json(&serde_json::json!({})))
            .await?;
        version_of_kid(&bundle.key.kid)
            .map(str::to_owned)
            .ok_or_else(|| KeyVaultError::Malformed("kid without a version".into()))
    }

    /// Wraps `key` with the given version (or the current one when `None`); returns the
    /// version that wrapped it and the wrapped bytes.
    pub async fn wrap_key(
        &self,
        version: Option<&str>,
        key: &[u8],
    ) -> Result<(String, Vec<u8>), KeyVaultError> {
        let path = match version {
            Some(v) => format!("keys/{}/{v}/wrapkey", self.key_name),
            None => format!("keys/{}/wrapkey", self.key_name),
        };
        let url = self.url(&path)?;
        let body = serde_json::json!({"alg": ALGORITHM, "value": URL_SAFE_NO_PAD.encode(key)});
        let result: KeyOperationResult = self.send(self.http.post(url).json(&body)).await?;
        let version = version_of_kid(&result.kid)
            .ok_or_else(|| KeyVaultError::Malformed("kid without a version".into()))?
            .to_owned();
        let wrapped = URL_SAFE_NO_PAD
            .decode(result.value.trim_end_matches('='))
            .map_err(|_| KeyVaultError::Malformed("wrapped value is not base64url".into()))?;
        Ok((version, wrapped))
    }

    /// Unwraps with the version that wrapped it (old versions stay usable until disabled).
    pub async fn unwrap_key(
        &self,
        version: &str,
        wrapped: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyVaultError> {
        let url = self.url(&format!("keys/{}/{version}/unwrapkey", self.key_name))?;
        let body = serde_json::json!({"alg": ALGORITHM, "value": URL_SAFE_NO_PAD.encode(wrapped)});
        let result: KeyOperationResult = self.send(self.http.post(url).json(&body)).await?;
        let plain = URL_SAFE_NO_PAD
            .decode(result.value.trim_end_matches('='))
            .map_err(|_| KeyVaultError::Malformed("unwrapped value is not base64url".into()))?;
        Ok(zeroize::Zeroizing::new(plain))
    }

    /// Reads a secret by its URL (`https://<vault>/secrets/<name>[/<version>]`), which must be
    /// in this client's vault.
    pub async fn get_secret(&self, secret_url: &str) -> Result<SecretString, KeyVaultError> {
        let parsed = Url::parse(secret_url)
            .map_err(|_| KeyVaultError::Malformed("the secret reference is not a URL".into()))?;
        if !parsed.path().starts_with("/secrets/") {
            return Err(KeyVaultError::Malformed(
                "the secret reference must be https://<vault>/secrets/<name>".into(),
            ));
        }
        // The path is taken from the reference, the host from configuration: a reference can
        // never send the vault token to another host.
        let url = self.url(parsed.path().trim_start_matches('/'))?;
        let secret: SecretBundle = self.send(self.http.get(url)).await?;
        Ok(SecretString::from(secret.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_key_ids() {
        assert_eq!(
            version_of_kid("https://v.vault.azure.net/keys/palisade-kek/0123abcd"),
            Some("0123abcd")
        );
        assert_eq!(
            version_of_kid("https://v.vault.azure.net/keys/palisade-kek"),
            None
        );
    }
}
