//! Standard Webhooks signing (<https://www.standardwebhooks.com/>).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, signed with HMAC-SHA256
//! under the base64-decoded part of a `whsec_` secret, and sent as `v1,<base64 signature>`.
//! During a key rotation every active secret signs, space-separated, so receivers holding
//! either key accept the message.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::error::{NotifierError, Result};

pub const SECRET_PREFIX: &str = "whsec_";

/// A fresh secret: `whsec_` and 32 random bytes in base64 (the spec asks for 24 to 64).
pub fn generate_secret() -> SecretString {
    let mut key = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    SecretString::from(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
}

/// Decodes a `whsec_` secret into its key bytes, refusing short or malformed ones.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| NotifierError::invalid("secret: must start with whsec_"))?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| NotifierError::invalid("secret: the part after whsec_ must be base64"))?;
    if !(24..=64).contains(&key.len()) {
        return Err(NotifierError::invalid(
            "secret: must hold 24 to 64 random bytes",
        ));
    }
    Ok(key)
}

/// The `webhook-signature` header value for `body`, signed by every secret given (newest
/// first). Secrets that do not decode are skipped; they were validated when stored.
pub fn sign(msg_id: &str, timestamp_secs: i64, body: &[u8], secrets: &[SecretString]) -> String {
    let mut signed = Vec::with_capacity(msg_id.len() + body.len() + 24);
    signed.extend_from_slice(msg_id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp_secs.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    secrets
        .iter()
        .filter_map(|s| decode_secret(s.expose_secret()).ok())
        .map(|key| {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(&key).expect("hmac accepts keys of any length");
            mac.update(&signed);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_spec_example() {
        // The example from the Standard Webhooks specification.
        let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"test": 2432232314}"#;
        let sig = sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, &[secret]);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_key() {
        let a = generate_secret();
        let b = generate_secret();
        let sig = sign("id", 1, b"{}", &[a, b]);
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
    }

    #[test]
    fn refuses_bad_secrets() {
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_c2hvcnQ=").is_err());
        assert!(decode_secret("whsec_!!!").is_err());
        decode_secret(generate_secret().expose_secret()).unwrap();
    }
}
