use std::collections::BTreeMap;

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::CryptoError;

/// A data key wrapped by one KEK version.
#[derive(Clone)]
pub struct WrappedKey {
    pub key_version: String,
    pub wrapped: Vec<u8>,
}

/// A key-encryption key provider. Implementations: [`LocalKek`] (the embedded default), Azure
/// Key Vault `wrapkey`/`unwrapkey` and HashiCorp Vault transit `encrypt`/`decrypt` (both in the
/// token broker, which owns their HTTP clients and credentials).
#[async_trait::async_trait]
pub trait KeyEncryptionKey: Send + Sync {
    /// A short name for logs and `GetKeyStatus`, e.g. "local" or "azure-key-vault".
    fn provider(&self) -> &'static str;
    /// The version new data keys are wrapped with.
    async fn current_version(&self) -> Result<String, CryptoError>;
    async fn wrap(&self, data_key: &[u8; 32]) -> Result<WrappedKey, CryptoError>;
    async fn unwrap(
        &self,
        key_version: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError>;
}

/// Local KEKs from config: `keys = "v1:<base64 32 bytes>,v2:<base64 32 bytes>"`.
/// The last listed version is current; older ones stay for reading until re-wrapped.
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LocalKekSettings {
    pub keys: Option<SecretString>,
    /// Where `palisade dev` keeps a generated key when none is configured.
    pub key_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for LocalKekSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKekSettings")
            .field("keys", &self.keys.as_ref().map(|_| "[redacted]"))
            .field("key_file", &self.key_file)
            .finish()
    }
}

pub struct LocalKek {
    keys: BTreeMap<String, Zeroizing<[u8; 32]>>,
    current: String,
}

impl std::fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKek")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

impl LocalKek {
    pub fn new(keys: Vec<(String, [u8; 32])>, current: String) -> Result<Self, CryptoError> {
        let keys: BTreeMap<_, _> = keys
            .into_iter()
            .map(|(v, k)| (v, Zeroizing::new(k)))
            .collect();
        if !keys.contains_key(&current) {
            return Err(CryptoError::InvalidKey(format!(
                "current version {current:?} is not among the keys"
            )));
        }
        Ok(Self { keys, current })
    }

    /// Parses `v1:<base64>,v2:<base64>`; the last entry is current.
    pub fn parse(spec: &SecretString) -> Result<Self, CryptoError> {
        let mut keys = Vec::new();
        for entry in spec
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
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
            keys.push((version.to_owned(), key));
        }
        let current = keys
            .last()
            .map(|(v, _)| v.clone())
            .ok_or_else(|| CryptoError::InvalidKey("no key configured".into()))?;
        Self::new(keys, current)
    }

    /// Loads the key file, creating it with one random key (`v1`) when it does not exist.
    /// Meant for the local run only; production supplies keys from a secret.
    pub fn load_or_create(path: &std::path::Path) -> Result<Self, CryptoError> {
        if let Ok(existing) = std::fs::read_to_string(path) {
            return Self::parse(&SecretString::from(existing));
        }
        let mut key = Zeroizing::new([0_u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        let spec = format!(
            "v1:{}",
            base64::engine::general_purpose::STANDARD.encode(key.as_ref())
        );
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| CryptoError::InvalidKey(e.to_string()))?;
        }
        write_private(path, &spec).map_err(|e| CryptoError::InvalidKey(e.to_string()))?;
        Self::parse(&SecretString::from(spec))
    }

    fn cipher(&self, version: &str) -> Result<Aes256Gcm, CryptoError> {
        let key = self
            .keys
            .get(version)
            .ok_or_else(|| CryptoError::UnknownKeyVersion(version.to_owned()))?;
        Aes256Gcm::new_from_slice(key.as_ref())
            .map_err(|_| CryptoError::InvalidKey("kek length".into()))
    }
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

fn kek_aad(version: &str) -> Vec<u8> {
    format!("palisade-kek:{version}").into_bytes()
}

#[async_trait::async_trait]
impl KeyEncryptionKey for LocalKek {
    fn provider(&self) -> &'static str {
        "local"
    }

    async fn current_version(&self) -> Result<String, CryptoError> {
        Ok(self.current.clone())
    }

    async fn wrap(&self, data_key: &[u8; 32]) -> Result<WrappedKey, CryptoError> {
        let mut nonce = [0_u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = kek_aad(&self.current);
        let sealed = self
            .cipher(&self.current)?
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: data_key,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Decrypt)?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&sealed);
        Ok(WrappedKey {
            key_version: self.current.clone(),
            wrapped,
        })
    }

    async fn unwrap(
        &self,
        key_version: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        if wrapped.len() < 12 {
            return Err(CryptoError::Malformed("wrapped key too short"));
        }
        let (nonce, sealed) = wrapped.split_at(12);
        let aad = kek_aad(key_version);
        let plain = Zeroizing::new(
            self.cipher(key_version)?
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| CryptoError::Decrypt)?,
        );
        let key: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed("data key length"))?;
        Ok(Zeroizing::new(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_bad_specs_with_clear_errors() {
        for (spec, expected) in [
            ("", "no key configured"),
            ("v1", "expected version:base64key"),
            ("v1:!!!", "not base64"),
            ("v1:AAAA", "must be 32 bytes"),
        ] {
            let err = LocalKek::parse(&SecretString::from(spec))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{spec}: {err}");
        }
    }

    #[test]
    fn debug_never_shows_key_material() {
        let encoded = base64::engine::general_purpose::STANDARD.encode([42_u8; 32]);
        let spec = SecretString::from(format!("v1:{encoded}"));
        let kek = LocalKek::parse(&spec).unwrap();
        assert!(!format!("{kek:?}").contains(&encoded));
        let settings = LocalKekSettings {
            keys: Some(spec),
            key_file: None,
        };
        assert!(!format!("{settings:?}").contains(&encoded));
    }

    #[test]
    fn load_or_create_persists_one_key() {
        let dir = std::env::temp_dir().join(format!("palisade-kek-{}", std::process::id()));
        let path = dir.join("kek");
        let _ = std::fs::remove_file(&path);
        let first = LocalKek::load_or_create(&path).unwrap();
        let second = LocalKek::load_or_create(&path).unwrap();
        assert_eq!(
            first.keys.get("v1").map(|k| **k),
            second.keys.get("v1").map(|k| **k)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
