//! Key-encryption-key providers the broker can rotate: local keys (a file or configuration,
//! the embedded default), an Azure Key Vault key (`wrapkey`/`unwrapkey` over REST) and a
//! HashiCorp Vault transit key (`encrypt`/`decrypt` over HTTP).
//!
//! Rotation creates a new KEK version that new seals use at once; old versions stay readable,
//! so the online rewrap (`RotateKey`) can run while tokens are minted and stored.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use base64::Engine;
use palisade_crypto::{CryptoError, KeyEncryptionKey, LocalKek, WrappedKey};
use palisade_microsoft::key_vault::KeyVaultClient;

use crate::vault_transit::{VaultTransitClient, VaultTransitError, version_of_ciphertext};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// Versions and their keys, oldest first (the last is current).
type Keys = Vec<(String, Zeroizing<[u8; 32]>)>;

/// A KEK that can also create its next version.
#[async_trait::async_trait]
pub trait RotatingKek: KeyEncryptionKey {
    /// Creates and switches to a new version. `Ok(None)` when this configuration cannot create
    /// versions (keys given in configuration): the operator adds one and restarts, and
    /// `RotateKey` then only re-wraps to the configured current version.
    async fn rotate(&self) -> Result<Option<String>, CryptoError>;
}

/// Local 256-bit KEKs. With a key file, rotation appends a random version to the file (written
/// atomically, mode 0600); with keys from configuration, it cannot.
pub struct LocalKeyring {
    keys: RwLock<(Keys, Arc<LocalKek>)>,
    file: Option<PathBuf>,
}

impl std::fmt::Debug for LocalKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyring")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn parse_spec(spec: &str) -> Result<Keys, CryptoError> {
    let mut keys = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (version, encoded) = entry
            .split_once(':')
            .ok_or_else(|| CryptoError::InvalidKey("expected version:base64key".into()))?;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| CryptoError::InvalidKey(format!("key {version} is not base64")))?,
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::InvalidKey(format!("key {version} must be 32 bytes")))?;
        keys.push((version.to_owned(), Zeroizing::new(key)));
    }
    if keys.is_empty() {
        return Err(CryptoError::InvalidKey("no key configured".into()));
    }
    Ok(keys)
}

fn build(keys: &[(String, Zeroizing<[u8; 32]>)]) -> Result<Arc<LocalKek>, CryptoError> {
    let current = keys
        .last()
        .map(|(v, _)| v.clone())
        .ok_or_else(|| CryptoError::InvalidKey("no key configured".into()))?;
    Ok(Arc::new(LocalKek::new(
        keys.iter().map(|(v, k)| (v.clone(), **k)).collect(),
        current,
    )?))
}

impl LocalKeyring {
    /// Keys from configuration (`v1:<base64>,v2:<base64>`; the last is current).
    pub fn from_spec(spec: &SecretString) -> Result<Self, CryptoError> {
        let keys = parse_spec(spec.expose_secret())?;
        let kek = build(&keys)?;
        Ok(Self {
            keys: RwLock::new((keys, kek)),
            file: None,
        })
    }

    /// Keys from a file, created with one random version when missing.
    pub fn from_file(path: PathBuf) -> Result<Self, CryptoError> {
        // The notifier's loader creates the file the same way; reuse it for the first key.
        LocalKek::load_or_create(&path)?;
        let spec = std::fs::read_to_string(&path)
            .map_err(|e| CryptoError::InvalidKey(format!("{}: {e}", path.display())))?;
        let keys = parse_spec(&spec)?;
        let kek = build(&keys)?;
        Ok(Self {
            keys: RwLock::new((keys, kek)),
            file: Some(path),
        })
    }

    fn kek(&self) -> Arc<LocalKek> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()).1)
    }
}

fn write_atomically(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("rotating");
    let _ = std::fs::remove_file(&tmp);
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[async_trait::async_trait]
impl KeyEncryptionKey for LocalKeyring {
    fn provider(&self) -> &'static str {
        "local"
    }
    async fn current_version(&self) -> Result<String, CryptoError> {
        self.kek().current_version().await
    }
    async fn wrap(&self, data_key: &[u8; 32]) -> Result<WrappedKey, CryptoError> {
        self.kek().wrap(data_key).await
    }
    async fn unwrap(
        &self,
        key_version: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        self.kek().unwrap(key_version, wrapped).await
    }
}

#[async_trait::async_trait]
impl RotatingKek for LocalKeyring {
    async fn rotate(&self) -> Result<Option<String>, CryptoError> {
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let mut guard = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let next = (1..)
            .map(|n| format!("v{n}"))
            .find(|v| !guard.0.iter().any(|(existing, _)| existing == v))
            .unwrap_or_else(|| format!("v{}", uuid::Uuid::new_v4().simple()));
        let mut key = Zeroizing::new([0_u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        let mut keys = guard.0.clone();
        keys.push((next.clone(), key));
        let spec = Zeroizing::new(
            keys.iter()
                .map(|(v, k)| {
                    format!(
                        "{v}:{}",
                        base64::engine::general_purpose::STANDARD.encode(k.as_ref())
                    )
                })
                .collect::<Vec<_>>()
                .join(","),
        );
        // On disk first: a version only in memory would be lost with the process.
        write_atomically(path, &spec)
            .map_err(|e| CryptoError::Provider(format!("writing {}: {e}", path.display())))?;
        let kek = build(&keys)?;
        *guard = (keys, kek);
        Ok(Some(next))
    }
}

/// An Azure Key Vault RSA key: data keys are wrapped with RSA-OAEP-256 by the vault, which
/// never lets the KEK out. The current version is cached for a minute.
pub struct KeyVaultKek {
    client: KeyVaultClient,
    current: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for KeyVaultKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVaultKek")
            .field("client", &self.client)
            .finish()
    }
}

const VERSION_CACHE: Duration = Duration::from_secs(60);

impl KeyVaultKek {
    pub fn new(client: KeyVaultClient) -> Self {
        Self {
            client,
            current: tokio::sync::Mutex::new(None),
        }
    }

    pub fn client(&self) -> &KeyVaultClient {
        &self.client
    }
}

fn provider_error(e: palisade_microsoft::key_vault::KeyVaultError) -> CryptoError {
    if e.is_transient() {
        CryptoError::Unavailable(e.to_string())
    } else {
        CryptoError::Provider(e.to_string())
    }
}

#[async_trait::async_trait]
impl KeyEncryptionKey for KeyVaultKek {
    fn provider(&self) -> &'static str {
        "azure-key-vault"
    }

    async fn current_version(&self) -> Result<String, CryptoError> {
        let mut cached = self.current.lock().await;
        if let Some((version, at)) = cached.as_ref()
            && at.elapsed() < VERSION_CACHE
        {
            return Ok(version.clone());
        }
        let version = self
            .client
            .current_version()
            .await
            .map_err(provider_error)?;
        *cached = Some((version.clone(), Instant::now()));
        Ok(version)
    }

    async fn wrap(&self, data_key: &[u8; 32]) -> Result<WrappedKey, CryptoError> {
        let version = self.current_version().await?;
        let (key_version, wrapped) = self
            .client
            .wrap_key(Some(&version), data_key)
            .await
            .map_err(provider_error)?;
        Ok(WrappedKey {
            key_version,
            wrapped,
        })
    }

    async fn unwrap(
        &self,
        key_version: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let plain = self
            .client
            .unwrap_key(key_version, wrapped)
            .await
            .map_err(provider_error)?;
        let key: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed("data key length"))?;
        Ok(Zeroizing::new(key))
    }
}

#[async_trait::async_trait]
impl RotatingKek for KeyVaultKek {
    async fn rotate(&self) -> Result<Option<String>, CryptoError> {
        let version = self.client.rotate().await.map_err(provider_error)?;
        *self.current.lock().await = Some((version.clone(), Instant::now()));
        Ok(Some(version))
    }
}

/// A HashiCorp Vault transit key: data keys are encrypted by Vault, which never lets the key
/// out. The wrapped key is Vault's `vault:v{N}:…` ciphertext and the record's key version is
/// `v{N}`, taken from that prefix. The latest version is cached for a minute.
pub struct VaultTransitKek {
    client: VaultTransitClient,
    current: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for VaultTransitKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultTransitKek")
            .field("client", &self.client)
            .finish()
    }
}

impl VaultTransitKek {
    pub fn new(client: VaultTransitClient) -> Self {
        Self {
            client,
            current: tokio::sync::Mutex::new(None),
        }
    }
}

fn transit_error(e: VaultTransitError) -> CryptoError {
    match e {
        // Indistinguishable, to a caller, from a local key that does not open the record.
        VaultTransitError::Ciphertext(_) => CryptoError::Decrypt,
        e if e.is_transient() => CryptoError::Unavailable(e.to_string()),
        e => CryptoError::Provider(e.to_string()),
    }
}

#[async_trait::async_trait]
impl KeyEncryptionKey for VaultTransitKek {
    fn provider(&self) -> &'static str {
        "vault-transit"
    }

    async fn current_version(&self) -> Result<String, CryptoError> {
        let mut cached = self.current.lock().await;
        if let Some((version, at)) = cached.as_ref()
            && at.elapsed() < VERSION_CACHE
        {
            return Ok(version.clone());
        }
        let version = format!(
            "v{}",
            self.client.latest_version().await.map_err(transit_error)?
        );
        *cached = Some((version.clone(), Instant::now()));
        Ok(version)
    }

    async fn wrap(&self, data_key: &[u8; 32]) -> Result<WrappedKey, CryptoError> {
        let (version, ciphertext) = self.client.encrypt(data_key).await.map_err(transit_error)?;
        Ok(WrappedKey {
            key_version: format!("v{version}"),
            wrapped: ciphertext.into_bytes(),
        })
    }

    async fn unwrap(
        &self,
        key_version: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let ciphertext = std::str::from_utf8(wrapped)
            .map_err(|_| CryptoError::Malformed("a vault ciphertext is text"))?;
        // Vault decrypts by the ciphertext's own prefix; a record whose label disagrees has
        // been altered or mixed up, and must not open under either.
        let labelled = key_version
            .strip_prefix('v')
            .and_then(|v| v.parse::<u32>().ok());
        if labelled.is_none() || labelled != version_of_ciphertext(ciphertext) {
            return Err(CryptoError::UnknownKeyVersion(key_version.to_owned()));
        }
        let plain = self
            .client
            .decrypt(ciphertext)
            .await
            .map_err(transit_error)?;
        let key: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed("data key length"))?;
        Ok(Zeroizing::new(key))
    }
}

#[async_trait::async_trait]
impl RotatingKek for VaultTransitKek {
    async fn rotate(&self) -> Result<Option<String>, CryptoError> {
        let version = format!("v{}", self.client.rotate().await.map_err(transit_error)?);
        *self.current.lock().await = Some((version.clone(), Instant::now()));
        Ok(Some(version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_crypto::{Aad, EnvelopeCipher};

    #[tokio::test]
    async fn a_file_keyring_rotates_on_disk_and_keeps_old_versions_readable() {
        let dir = std::env::temp_dir().join(format!("tb-kek-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kek");
        let ring = Arc::new(LocalKeyring::from_file(path.clone()).unwrap());
        let cipher = EnvelopeCipher::new(ring.clone());
        let aad = Aad::new("refresh_token", "p", "c");
        let sealed = cipher.seal(b"0.AAAA", &aad).await.unwrap();
        assert_eq!(sealed.key_version, "v1");
        assert_eq!(ring.rotate().await.unwrap().as_deref(), Some("v2"));
        let rewrapped = cipher.rewrap(&sealed).await.unwrap();
        assert_eq!(rewrapped.key_version, "v2");
        // A restart reads both versions back from the file.
        let reopened = EnvelopeCipher::new(Arc::new(LocalKeyring::from_file(path).unwrap()));
        assert_eq!(&*reopened.open(&sealed, &aad).await.unwrap(), b"0.AAAA");
        assert_eq!(&*reopened.open(&rewrapped, &aad).await.unwrap(), b"0.AAAA");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn configured_keys_cannot_rotate_themselves() {
        let spec = SecretString::from(format!(
            "v1:{}",
            base64::engine::general_purpose::STANDARD.encode([3_u8; 32])
        ));
        let ring = LocalKeyring::from_spec(&spec).unwrap();
        assert_eq!(ring.rotate().await.unwrap(), None);
    }
}
