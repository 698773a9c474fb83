//! RS256 access tokens and the JWKS that verifies them.
//!
//! The key derives from the seed (generated with `rsa`), and signing and verification run on
//! `ring`, several times faster: the token endpoint and every resource call sit on this path, and
//! the simulator must never be what bounds a Palisade benchmark. Verified tokens are remembered,
//! because clients present the same cached token many times.

use std::{collections::HashMap, sync::Mutex};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::SeedableRng;
use ring::signature::{
    RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents,
};
use rsa::{RsaPrivateKey, pkcs8::EncodePrivateKey, traits::PublicKeyParts};

/// How many verified tokens are remembered before the memory starts over.
const VERIFIED_CACHE: usize = 50_000;

pub struct TokenSigner {
    key: RsaKeyPair,
    n: Vec<u8>,
    e: Vec<u8>,
    verified: Mutex<HashMap<String, serde_json::Value>>,
    pub kid: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish()
    }
}

impl TokenSigner {
    /// Deterministic from the seed, so restarted simulators issue verifiable tokens.
    pub fn from_seed(seed: u64) -> anyhow::Result<Self> {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed ^ 0x5157_4d53);
        let private = RsaPrivateKey::new(&mut rng, 2048)?;
        let public = private.to_public_key();
        let key = RsaKeyPair::from_pkcs8(private.to_pkcs8_der()?.as_bytes())
            .map_err(|e| anyhow::anyhow!("the seeded key does not load: {e}"))?;
        Ok(Self {
            key,
            n: public.n().to_bytes_be(),
            e: public.e().to_bytes_be(),
            verified: Mutex::new(HashMap::new()),
            kid: format!("sim-{seed:x}"),
        })
    }

    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header =
            serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": self.kid, "x5t": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .expect("signing with a valid key cannot fail");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// The claims of a token this signer issued, or None (forged, altered, or not a JWT).
    pub fn verify(&self, token: &str) -> Option<serde_json::Value> {
        if let Some(claims) = self.lock().get(token) {
            return Some(claims.clone());
        }
        let (signing_input, signature) = token.rsplit_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        RsaPublicKeyComponents {
            n: &self.n,
            e: &self.e,
        }
        .verify(
            &RSA_PKCS1_2048_8192_SHA256,
            signing_input.as_bytes(),
            &signature,
        )
        .ok()?;
        let claims = decode_unverified(token)?;
        let mut verified = self.lock();
        if verified.len() >= VERIFIED_CACHE {
            verified.clear();
        }
        verified.insert(token.to_owned(), claims.clone());
        Some(claims)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, serde_json::Value>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "x5t": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&self.n),
            "e": URL_SAFE_NO_PAD.encode(&self.e),
        }]})
    }
}

/// The claims of any JWT, unchecked: only for logging who called.
pub fn decode_unverified(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}
