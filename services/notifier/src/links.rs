//! Signed one-click acknowledgement links for emails, cards and SMS.
//!
//! A link carries the partner, the fingerprint and an expiry, authenticated by HMAC-SHA256
//! under a key only the notifier holds, so it needs no login and cannot be forged or moved
//! to another alert. Opening it (GET) shows a confirmation button; only the POST
//! acknowledges, because mail security scanners fetch every link in a message and would
//! otherwise acknowledge alerts nobody has read.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct LinkSigner {
    key: SecretString,
    base_url: String,
    ttl_secs: i64,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// A verified acknowledgement request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckClaim {
    pub partner_tenant_id: String,
    pub fingerprint: String,
}

impl LinkSigner {
    pub fn new(key: SecretString, base_url: &str, ttl_secs: i64) -> Self {
        Self {
            key,
            base_url: base_url.trim_end_matches('/').to_owned(),
            ttl_secs,
        }
    }

    fn mac(&self, partner: &str, fingerprint: &str, expires: i64) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose_secret().as_bytes())
            .expect("hmac accepts keys of any length");
        // Length-prefixed fields: "a" + "bc" never signs the same as "ab" + "c".
        for part in ["ack", partner, fingerprint, &expires.to_string()] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().to_vec()
    }

    pub fn ack_url(&self, partner: &str, fingerprint: &str, now_millis: i64) -> String {
        let expires = now_millis / 1000 + self.ttl_secs;
        let sig = hex::encode(self.mac(partner, fingerprint, expires));
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("p", partner)
            .append_pair("f", fingerprint)
            .append_pair("e", &expires.to_string())
            .append_pair("s", &sig)
            .finish();
        format!("{}/ack?{query}", self.base_url)
    }

    pub fn verify(
        &self,
        partner: &str,
        fingerprint: &str,
        expires: i64,
        sig_hex: &str,
        now_millis: i64,
    ) -> Option<AckClaim> {
        let sig = hex::decode(sig_hex).ok()?;
        let expected = self.mac(partner, fingerprint, expires);
        if !bool::from(expected.ct_eq(&sig)) || expires < now_millis / 1000 {
            return None;
        }
        Some(AckClaim {
            partner_tenant_id: partner.to_owned(),
            fingerprint: fingerprint.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_only_as_issued_and_until_they_expire() {
        let signer = LinkSigner::new(
            SecretString::from("k".repeat(32)),
            "https://n.example/",
            3600,
        );
        let url = url::Url::parse(&signer.ack_url("p1", "fp/1", 1_000_000)).unwrap();
        assert!(url.as_str().starts_with("https://n.example/ack?"));
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        let e: i64 = q["e"].parse().unwrap();
        assert!(signer.verify("p1", "fp/1", e, &q["s"], 1_000_000).is_some());
        assert!(signer.verify("p2", "fp/1", e, &q["s"], 1_000_000).is_none());
        assert!(signer.verify("p1", "fp/2", e, &q["s"], 1_000_000).is_none());
        assert!(
            signer
                .verify("p1", "fp/1", e + 1, &q["s"], 1_000_000)
                .is_none()
        );
        assert!(
            signer
                .verify("p1", "fp/1", e, &q["s"], (e + 1) * 1000)
                .is_none()
        );
        let other = LinkSigner::new(
            SecretString::from("x".repeat(32)),
            "https://n.example",
            3600,
        );
        assert!(other.verify("p1", "fp/1", e, &q["s"], 1_000_000).is_none());
    }
}
