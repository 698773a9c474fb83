use crate::CryptoError;

/// Associated data: what a ciphertext is, and whose. Authenticated but not secret.
#[derive(Debug, Clone)]
pub struct Aad(Vec<u8>);

impl Aad {
    /// `purpose` names the field ("refresh_token", "client_secret"…); the partner and record
    /// ids pin the ciphertext to its row.
    pub fn new(purpose: &str, partner_tenant_id: &str, record_id: &str) -> Self {
        // Length prefixes make the encoding unambiguous ("a|bc" never equals "ab|c").
        let mut bytes = Vec::new();
        for part in [purpose, partner_tenant_id, record_id] {
            bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
            bytes.extend_from_slice(part.as_bytes());
        }
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A sealed record as stored: the KEK version, the wrapped data key, the nonce and the
/// ciphertext (with its GCM tag).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_version: String,
    pub wrapped_data_key: Vec<u8>,
    pub nonce: [u8; 12],
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("key_version", &self.key_version)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

const FORMAT_VERSION: u8 = 1;

impl Sealed {
    /// One self-describing blob: `1 | len(version) | version | len(wrapped) | wrapped | nonce | ciphertext`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            1 + 2
                + self.key_version.len()
                + 2
                + self.wrapped_data_key.len()
                + 12
                + self.ciphertext.len(),
        );
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&(self.key_version.len() as u16).to_be_bytes());
        out.extend_from_slice(self.key_version.as_bytes());
        out.extend_from_slice(&(self.wrapped_data_key.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.wrapped_data_key);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8], CryptoError> {
            if rest.len() < n {
                return Err(CryptoError::Malformed("truncated"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        if take(1)?[0] != FORMAT_VERSION {
            return Err(CryptoError::Malformed("unknown format version"));
        }
        let len = u16::from_be_bytes(
            take(2)?
                .try_into()
                .map_err(|_| CryptoError::Malformed("length"))?,
        );
        let key_version = std::str::from_utf8(take(len as usize)?)
            .map_err(|_| CryptoError::Malformed("key version is not utf-8"))?
            .to_owned();
        let len = u16::from_be_bytes(
            take(2)?
                .try_into()
                .map_err(|_| CryptoError::Malformed("length"))?,
        );
        let wrapped_data_key = take(len as usize)?.to_vec();
        let nonce: [u8; 12] = take(12)?
            .try_into()
            .map_err(|_| CryptoError::Malformed("nonce"))?;
        let ciphertext = rest.to_vec();
        if ciphertext.len() < 16 {
            return Err(CryptoError::Malformed("ciphertext shorter than its tag"));
        }
        Ok(Self {
            key_version,
            wrapped_data_key,
            nonce,
            ciphertext,
        })
    }
}
