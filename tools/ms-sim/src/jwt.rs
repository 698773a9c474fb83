//! RS256 access tokens and the JWKS that verifies them.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::SeedableRng;
use rsa::{
    RsaPrivateKey,
    pkcs1v15::{Signature, SigningKey, VerifyingKey},
    signature::{SignatureEncoding, Signer, Verifier},
    traits::PublicKeyParts,
};
use sha2::Sha256;

pub struct TokenSigner {
    key: SigningKey<Sha256>,
    public: rsa::RsaPublicKey,
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
        Ok(Self {
            key: SigningKey::<Sha256>::new(private),
            public,
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
        let signature = self.key.sign(signing_input.as_bytes()).to_vec();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// The claims of a token this signer issued, or None (forged, altered, or not a JWT).
    pub fn verify(&self, token: &str) -> Option<serde_json::Value> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let signature =
            Signature::try_from(URL_SAFE_NO_PAD.decode(signature).ok()?.as_slice()).ok()?;
        VerifyingKey::<Sha256>::new(self.public.clone())
            .verify(signing_input.as_bytes(), &signature)
            .ok()?;
        decode_unverified(token)
    }

    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "x5t": self.kid,
            "n": URL_SAFE_NO_PAD.encode(self.public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(self.public.e().to_bytes_be()),
        }]})
    }
}

/// The claims of any JWT, unchecked: only for logging who called.
pub fn decode_unverified(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}
