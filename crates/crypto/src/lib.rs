//! Envelope encryption for secrets at rest (refresh tokens, app secrets, channel secrets).
//!
//! Every record gets its own random 256-bit data key. The record is sealed with AES-256-GCM
//! under that key, with associated data that binds the ciphertext to its purpose, partner and
//! record id, so a ciphertext copied onto another row does not open. The data key itself is
//! wrapped by a key-encryption key (KEK) that has a version id, so the KEK can rotate and old
//! records be re-wrapped online without touching their ciphertext.
//!
//! This module must never log, print or `Debug` a plaintext, a data key or a KEK.

mod kek;
mod sealed;

pub use kek::{KeyEncryptionKey, LocalKek, LocalKekSettings, WrappedKey};
pub use sealed::{Aad, Sealed};

use std::sync::Arc;

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use rand::RngCore;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("decryption failed: wrong key, wrong associated data or tampered ciphertext")]
    Decrypt,
    #[error("unknown key-encryption key version {0:?}")]
    UnknownKeyVersion(String),
    #[error("malformed sealed record: {0}")]
    Malformed(&'static str),
    #[error("invalid key configuration: {0}")]
    InvalidKey(String),
    #[error("key provider failed: {0}")]
    Provider(String),
    /// The key provider is unreachable, overloaded or failing on its side (network, 429, 5xx)
    /// after the provider's own retries: worth retrying later, nothing is wrong with the data.
    #[error("key provider temporarily unavailable: {0}")]
    Unavailable(String),
}

/// Seals and opens records under data keys wrapped by the configured KEK.
#[derive(Clone)]
pub struct EnvelopeCipher {
    kek: Arc<dyn KeyEncryptionKey>,
}

impl std::fmt::Debug for EnvelopeCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvelopeCipher")
            .field("provider", &self.kek.provider())
            .finish()
    }
}

impl EnvelopeCipher {
    pub fn new(kek: Arc<dyn KeyEncryptionKey>) -> Self {
        Self { kek }
    }

    pub fn kek(&self) -> &Arc<dyn KeyEncryptionKey> {
        &self.kek
    }

    /// Encrypts `plaintext` under a fresh data key, wrapped by the current KEK version.
    pub async fn seal(&self, plaintext: &[u8], aad: &Aad) -> Result<Sealed, CryptoError> {
        let mut data_key = Zeroizing::new([0_u8; 32]);
        rand::rngs::OsRng.fill_bytes(data_key.as_mut());
        let mut nonce = [0_u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new_from_slice(data_key.as_ref())
            .map_err(|_| CryptoError::InvalidKey("data key length".into()))?;
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)?;
        let wrapped = self.kek.wrap(&data_key).await?;
        Ok(Sealed {
            key_version: wrapped.key_version,
            wrapped_data_key: wrapped.wrapped,
            nonce,
            ciphertext,
        })
    }

    /// Decrypts a record; fails if the associated data differs from what it was sealed with.
    pub async fn open(
        &self,
        sealed: &Sealed,
        aad: &Aad,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let data_key = self
            .kek
            .unwrap(&sealed.key_version, &sealed.wrapped_data_key)
            .await?;
        let cipher = Aes256Gcm::new_from_slice(data_key.as_ref())
            .map_err(|_| CryptoError::InvalidKey("data key length".into()))?;
        let plaintext = cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)?;
        Ok(Zeroizing::new(plaintext))
    }

    /// Re-wraps the record's data key under the current KEK version. The ciphertext is
    /// untouched, so a rewrap racing a reader never makes the record unreadable.
    pub async fn rewrap(&self, sealed: &Sealed) -> Result<Sealed, CryptoError> {
        let current = self.kek.current_version().await?;
        if sealed.key_version == current {
            return Ok(sealed.clone());
        }
        let data_key = self
            .kek
            .unwrap(&sealed.key_version, &sealed.wrapped_data_key)
            .await?;
        let wrapped = self.kek.wrap(&data_key).await?;
        Ok(Sealed {
            key_version: wrapped.key_version,
            wrapped_data_key: wrapped.wrapped,
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher_with(versions: &[(&str, [u8; 32])]) -> EnvelopeCipher {
        let kek = LocalKek::new(
            versions
                .iter()
                .map(|(v, k)| ((*v).to_owned(), *k))
                .collect(),
            versions.last().map(|(v, _)| (*v).to_owned()).unwrap(),
        )
        .unwrap();
        EnvelopeCipher::new(Arc::new(kek))
    }

    #[tokio::test]
    async fn seals_and_opens_with_matching_aad() {
        let cipher = cipher_with(&[("v1", [7; 32])]);
        let aad = Aad::new("refresh_token", "partner-a", "consent-1");
        let sealed = cipher.seal(b"0.AAAA-refresh", &aad).await.unwrap();
        assert_eq!(sealed.key_version, "v1");
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"0.AAAA"));
        assert_eq!(
            &*cipher.open(&sealed, &aad).await.unwrap(),
            b"0.AAAA-refresh"
        );
    }

    #[tokio::test]
    async fn a_ciphertext_moved_to_another_partner_or_record_does_not_open() {
        let cipher = cipher_with(&[("v1", [7; 32])]);
        let sealed = cipher
            .seal(
                b"secret",
                &Aad::new("refresh_token", "partner-a", "consent-1"),
            )
            .await
            .unwrap();
        for other in [
            Aad::new("refresh_token", "partner-b", "consent-1"),
            Aad::new("refresh_token", "partner-a", "consent-2"),
            Aad::new("client_secret", "partner-a", "consent-1"),
        ] {
            assert!(matches!(
                cipher.open(&sealed, &other).await,
                Err(CryptoError::Decrypt)
            ));
        }
    }

    #[tokio::test]
    async fn tampering_is_detected() {
        let cipher = cipher_with(&[("v1", [7; 32])]);
        let aad = Aad::new("t", "p", "r");
        let mut sealed = cipher.seal(b"secret", &aad).await.unwrap();
        sealed.ciphertext[0] ^= 1;
        assert!(cipher.open(&sealed, &aad).await.is_err());
    }

    #[tokio::test]
    async fn rotation_keeps_old_versions_readable_and_rewraps_to_the_new_one() {
        let old = cipher_with(&[("v1", [1; 32])]);
        let aad = Aad::new("t", "p", "r");
        let sealed = old.seal(b"secret", &aad).await.unwrap();

        let rotated = cipher_with(&[("v1", [1; 32]), ("v2", [2; 32])]);
        // Readable before the rewrap finishes…
        assert_eq!(&*rotated.open(&sealed, &aad).await.unwrap(), b"secret");
        let rewrapped = rotated.rewrap(&sealed).await.unwrap();
        assert_eq!(rewrapped.key_version, "v2");
        assert_eq!(rewrapped.ciphertext, sealed.ciphertext);
        // …and after it, even once v1 is retired.
        let retired = cipher_with(&[("v2", [2; 32])]);
        assert_eq!(&*retired.open(&rewrapped, &aad).await.unwrap(), b"secret");
        assert!(matches!(
            retired.open(&sealed, &aad).await,
            Err(CryptoError::UnknownKeyVersion(_))
        ));
    }

    #[tokio::test]
    async fn sealed_records_round_trip_through_bytes() {
        let cipher = cipher_with(&[("v1", [9; 32])]);
        let aad = Aad::new("t", "p", "r");
        let sealed = cipher.seal(b"secret", &aad).await.unwrap();
        let decoded = Sealed::from_bytes(&sealed.to_bytes()).unwrap();
        assert_eq!(decoded, sealed);
        assert!(Sealed::from_bytes(b"\x01garbage").is_err());
        assert!(Sealed::from_bytes(b"").is_err());
    }
}
