//! HashiCorp Vault's transit secrets engine over HTTP, for the `vault_transit` key provider:
//! `encrypt`/`decrypt` of data keys under a named transit key, the key's latest version, and
//! `rotate`. Vault keeps the key; the broker only ever sees `vault:v{N}:…` ciphertexts, whose
//! prefix names the key version that wrapped them, so every old version keeps unwrapping after
//! a rotation.
//!
//! The token (`X-Vault-Token`) comes from configuration or from a file (a mounted Kubernetes
//! secret, a Vault Agent sink), which is read again whenever it changes. The token never reaches
//! a log, an error message or `Debug`. Failures on Vault's side (network, 429, 5xx) are retried
//! a few times and then reported as transient; a 403 says which path was denied.

use std::{
    path::PathBuf,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use url::Url;
use zeroize::Zeroizing;

/// Calls per operation when Vault fails on its side, with the delay doubling from
/// [`RETRY_BASE`] between them.
const ATTEMPTS: u32 = 3;
const RETRY_BASE: Duration = Duration::from_millis(100);
/// Vault's error messages are echoed into ours; keep them to a readable length.
const MESSAGE_LIMIT: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum VaultTransitError {
    #[error(
        "vault denied {operation} on {path}: permission denied (http 403); the token is missing, expired or revoked, or its policy does not grant this path"
    )]
    PermissionDenied {
        operation: &'static str,
        path: String,
    },
    /// Vault could not decrypt the ciphertext: tampered, cut, or not from this key.
    #[error("vault could not decrypt the wrapped key: {0}")]
    Ciphertext(String),
    #[error("vault refused {operation} on {path}: http {status}: {message}")]
    Refused {
        operation: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("vault unreachable: {0}")]
    Network(String),
    #[error("malformed vault response: {0}")]
    Malformed(String),
    #[error("vault token: {0}")]
    Token(String),
}

impl VaultTransitError {
    /// Worth retrying later: Vault unreachable, sealed, overloaded or failing on its side.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Refused { status, .. } => *status == 429 || *status >= 500,
            Self::Network(_) => true,
            Self::PermissionDenied { .. }
            | Self::Ciphertext(_)
            | Self::Malformed(_)
            | Self::Token(_) => false,
        }
    }
}

/// Where the token comes from.
pub enum TokenSource {
    Static(SecretString),
    /// Read at first use and again whenever the file's modification time changes (or after a
    /// 403), so a rotated Kubernetes secret or a renewed agent token needs no restart.
    File(PathBuf),
}

struct CachedToken {
    modified: Option<SystemTime>,
    token: SecretString,
}

/// One transit key on one Vault server.
pub struct VaultTransitClient {
    http: reqwest::Client,
    /// Always ends with `/`, so `v1/...` joins under any path prefix.
    address: Url,
    mount: String,
    key_name: String,
    namespace: Option<String>,
    token: TokenSource,
    file_token: Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for VaultTransitClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultTransitClient")
            .field("address", &self.address.as_str())
            .field("mount", &self.mount)
            .field("key_name", &self.key_name)
            .field("namespace", &self.namespace)
            .field(
                "token",
                &match &self.token {
                    TokenSource::Static(_) => "[redacted]".to_owned(),
                    TokenSource::File(path) => format!("file {}", path.display()),
                },
            )
            .finish()
    }
}

/// The key version a transit ciphertext names: `vault:v3:…` → 3 (Vault reads `v0` as 1).
pub fn version_of_ciphertext(ciphertext: &str) -> Option<u32> {
    let rest = ciphertext.strip_prefix("vault:v")?;
    let (version, body) = rest.split_once(':')?;
    if body.is_empty() {
        return None;
    }
    version.parse::<u32>().ok().map(|v| v.max(1))
}

fn trimmed(message: String) -> String {
    if message.len() <= MESSAGE_LIMIT {
        return message;
    }
    let mut end = MESSAGE_LIMIT;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

impl VaultTransitClient {
    /// `ca_pem`: extra trust anchors for Vault's certificate (a private CA), PEM.
    pub fn new(
        address: &Url,
        mount: &str,
        key_name: &str,
        namespace: Option<String>,
        token: TokenSource,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, VaultTransitError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            // A redirect (a standby node pointing at the active one) would carry the token to
            // whatever host it names; point the address at the active node or its balancer.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| VaultTransitError::Malformed(format!("ca_file: {e}")))?;
            if roots.is_empty() {
                return Err(VaultTransitError::Malformed(
                    "ca_file holds no PEM certificate".into(),
                ));
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let http = builder
            .build()
            .map_err(|e| VaultTransitError::Network(e.to_string()))?;
        let mut address = address.clone();
        if !address.path().ends_with('/') {
            address.set_path(&format!("{}/", address.path()));
        }
        Ok(Self {
            http,
            address,
            mount: mount.trim_matches('/').to_owned(),
            key_name: key_name.to_owned(),
            namespace: namespace
                .map(|n| n.trim_matches('/').to_owned())
                .filter(|n| !n.is_empty()),
            token,
            file_token: Mutex::new(None),
        })
    }

    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    fn token(&self) -> Result<SecretString, VaultTransitError> {
        let path = match &self.token {
            TokenSource::Static(token) => return Ok(token.clone()),
            TokenSource::File(path) => path,
        };
        // One stat per call: cheap next to the HTTP call, and it notices a renewed token at once.
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut cached = self.file_token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref()
            && c.modified.is_some()
            && c.modified == modified
        {
            return Ok(c.token.clone());
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            VaultTransitError::Token(format!("reading {}: {}", path.display(), e.kind()))
        })?);
        let token = text.trim();
        if token.is_empty() {
            return Err(VaultTransitError::Token(format!(
                "{} is empty",
                path.display()
            )));
        }
        let token = SecretString::from(token.to_owned());
        *cached = Some(CachedToken {
            modified,
            token: token.clone(),
        });
        Ok(token)
    }

    /// After a 403 the file is read again even if its time did not change (two writes
    /// within the file system's time resolution).
    fn forget_file_token(&self) {
        *self.file_token.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// One operation, retried while Vault fails on its side. `None` is a 204.
    async fn call(
        &self,
        operation: &'static str,
        suffix: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, VaultTransitError> {
        let mut delay = RETRY_BASE;
        let mut attempt = 1;
        loop {
            match self.call_once(operation, suffix, body).await {
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    tracing::warn!(operation, attempt, error = %e, "vault transit call failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn call_once(
        &self,
        operation: &'static str,
        suffix: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, VaultTransitError> {
        let path = format!("{}/{suffix}", self.mount);
        let url = self
            .address
            .join(&format!("v1/{path}"))
            .map_err(|e| VaultTransitError::Malformed(e.to_string()))?;
        let token = self.token()?;
        let mut request = match body {
            Some(body) => self.http.post(url).json(body),
            None => self.http.get(url),
        };
        request = request.header("X-Vault-Token", token.expose_secret());
        if let Some(namespace) = &self.namespace {
            request = request.header("X-Vault-Namespace", namespace);
        }
        let response = request
            .send()
            .await
            .map_err(|e| VaultTransitError::Network(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| VaultTransitError::Network(e.without_url().to_string()))?;
        if status == 204 {
            return Ok(None);
        }
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| VaultTransitError::Malformed(e.to_string()));
        }
        // Vault's error body: {"errors": ["…"]}.
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| {
                v["errors"].as_array().map(|errors| {
                    errors
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            })
            .unwrap_or_default();
        if status == 403 {
            if matches!(self.token, TokenSource::File(_)) {
                self.forget_file_token();
            }
            return Err(VaultTransitError::PermissionDenied { operation, path });
        }
        if status == 400
            && operation == "decrypt"
            && (message.starts_with("cipher:") || message.starts_with("invalid ciphertext"))
        {
            return Err(VaultTransitError::Ciphertext(trimmed(message)));
        }
        let message = match (status, message.is_empty()) {
            (300..=399, _) => {
                "redirected to another node; set the address of the active node or its load balancer"
                    .to_owned()
            }
            (404, true) => format!(
                "not found: no such mount or key (create the key with `vault write -f {}/keys/{}`)",
                self.mount, self.key_name
            ),
            (_, true) => "no error message".to_owned(),
            (_, false) => trimmed(message),
        };
        Err(VaultTransitError::Refused {
            operation,
            path,
            status,
            message,
        })
    }

    /// Encrypts with the key's latest version: (that version, the `vault:v{N}:…` ciphertext).
    pub async fn encrypt(&self, plaintext: &[u8]) -> Result<(u32, String), VaultTransitError> {
        let body = json!({"plaintext": STANDARD.encode(plaintext)});
        let answer = self
            .call(
                "encrypt",
                &format!("encrypt/{}", self.key_name),
                Some(&body),
            )
            .await?
            .ok_or_else(|| {
                VaultTransitError::Malformed("encrypt answered without a body".into())
            })?;
        let ciphertext = answer["data"]["ciphertext"]
            .as_str()
            .ok_or_else(|| VaultTransitError::Malformed("no data.ciphertext".into()))?
            .to_owned();
        // The prefix is what decryption goes by, so it is the version of record.
        let version = version_of_ciphertext(&ciphertext).ok_or_else(|| {
            VaultTransitError::Malformed("the ciphertext has no vault:v{N}: prefix".into())
        })?;
        Ok((version, ciphertext))
    }

    pub async fn decrypt(&self, ciphertext: &str) -> Result<Zeroizing<Vec<u8>>, VaultTransitError> {
        let body = json!({"ciphertext": ciphertext});
        let answer = self
            .call(
                "decrypt",
                &format!("decrypt/{}", self.key_name),
                Some(&body),
            )
            .await?
            .ok_or_else(|| {
                VaultTransitError::Malformed("decrypt answered without a body".into())
            })?;
        let encoded = answer["data"]["plaintext"]
            .as_str()
            .ok_or_else(|| VaultTransitError::Malformed("no data.plaintext".into()))?;
        STANDARD
            .decode(encoded)
            .map(Zeroizing::new)
            .map_err(|_| VaultTransitError::Malformed("data.plaintext is not base64".into()))
    }

    fn latest_of(answer: &Value) -> Result<u32, VaultTransitError> {
        answer["data"]["latest_version"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| VaultTransitError::Malformed("no data.latest_version".into()))
    }

    /// The version new ciphertexts are made with.
    pub async fn latest_version(&self) -> Result<u32, VaultTransitError> {
        let answer = self
            .call("read key", &format!("keys/{}", self.key_name), None)
            .await?
            .ok_or_else(|| {
                VaultTransitError::Malformed("key read answered without a body".into())
            })?;
        Self::latest_of(&answer)
    }

    /// Creates a new key version and returns it. Vault 1.13 and later answer with the key;
    /// older versions answer 204, and the key is read back.
    pub async fn rotate(&self) -> Result<u32, VaultTransitError> {
        let answer = self
            .call(
                "rotate",
                &format!("keys/{}/rotate", self.key_name),
                Some(&json!({})),
            )
            .await?;
        match answer {
            Some(answer) => Self::latest_of(&answer),
            None => self.latest_version().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_the_ciphertext_prefix() {
        assert_eq!(version_of_ciphertext("vault:v3:AAAA"), Some(3));
        assert_eq!(version_of_ciphertext("vault:v0:AAAA"), Some(1));
        assert_eq!(version_of_ciphertext("vault:v3:"), None);
        assert_eq!(version_of_ciphertext("vault:vX:AAAA"), None);
        assert_eq!(version_of_ciphertext("v3:AAAA"), None);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let client = VaultTransitClient::new(
            &Url::parse("https://vault.example:8200").unwrap(),
            "transit",
            "palisade-kek",
            None,
            TokenSource::Static(SecretString::from("hvs.very-secret-token")),
            None,
        )
        .unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }

    #[test]
    fn long_vault_messages_are_cut_on_a_character_boundary() {
        let cut = trimmed("é".repeat(400));
        assert!(cut.len() <= MESSAGE_LIMIT + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
