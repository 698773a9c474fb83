//! Certificates: each app's `client_assertion` certificate, and the Partner Center webhook
//! signing chain (a simulator root CA, which tests configure as trusted, issuing the
//! `pcnotifications-dispatch.microsoft.com` leaf that signs event bodies).
//!
//! Keys derive from the seed, so a restarted simulator keeps the same trust anchor. The root's
//! subject carries `O=Microsoft Corporation`, as the documented receiver check expects of the
//! issuer.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::SeedableRng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256,
};
use rsa::{
    RsaPrivateKey,
    pkcs1v15::SigningKey,
    pkcs8::{EncodePrivateKey, LineEnding},
    signature::{SignatureEncoding, Signer},
};
use sha2::Sha256;

use crate::scenario::AppCertificate;

/// The subject the real dispatcher's certificate carries.
pub const WEBHOOK_SIGNER_CN: &str = "pcnotifications-dispatch.microsoft.com";

pub(crate) fn rsa_from_seed(seed: u64) -> anyhow::Result<RsaPrivateKey> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    Ok(RsaPrivateKey::new(&mut rng, 2048)?)
}

fn rcgen_key(key: &RsaPrivateKey) -> anyhow::Result<KeyPair> {
    let der = key.to_pkcs8_der()?;
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &der.as_bytes().to_vec().into(),
        &PKCS_RSA_SHA256,
    )?)
}

fn x5t(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        der,
    ))
}

pub(crate) fn app_certificate(seed: u64, client_id: &str) -> anyhow::Result<AppCertificate> {
    let private = rsa_from_seed(seed)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("sam-app-{client_id}"));
    let cert = params.self_signed(&rcgen_key(&private)?)?;
    Ok(AppCertificate {
        certificate_pem: cert.pem(),
        private_key_pem: private.to_pkcs8_pem(LineEnding::LF)?.to_string(),
        x5t: x5t(cert.der()),
        public_key: private.to_public_key(),
    })
}

/// The webhook signing chain: a root CA with `O=Microsoft Corporation` and the dispatcher's
/// leaf certificate. Public so that verifier tests and fuzz seeds can sign bodies offline.
pub struct WebhookPki {
    pub root_pem: String,
    pub signer_der: Vec<u8>,
    signer: SigningKey<Sha256>,
}

impl std::fmt::Debug for WebhookPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookPki")
    }
}

impl WebhookPki {
    pub fn generate(seed: u64) -> anyhow::Result<Self> {
        let root_key = rcgen_key(&rsa_from_seed(seed ^ 0x524f_4f54)?)?;
        let mut root = CertificateParams::new(Vec::<String>::new())?;
        root.distinguished_name = DistinguishedName::new();
        root.distinguished_name
            .push(DnType::CommonName, "ms-sim Root Certificate Authority");
        root.distinguished_name
            .push(DnType::OrganizationName, "Microsoft Corporation");
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_cert = root.self_signed(&root_key)?;
        let issuer = Issuer::new(root, root_key);

        let signer_private = rsa_from_seed(seed ^ 0x5349_474e)?;
        let mut leaf = CertificateParams::new(vec![WEBHOOK_SIGNER_CN.to_owned()])?;
        leaf.distinguished_name = DistinguishedName::new();
        leaf.distinguished_name
            .push(DnType::CommonName, WEBHOOK_SIGNER_CN);
        leaf.distinguished_name
            .push(DnType::OrganizationName, "Microsoft Corporation");
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // As a TLS-style certificate for the dispatcher's host name would carry.
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf_cert = leaf.signed_by(&rcgen_key(&signer_private)?, &issuer)?;
        Ok(Self {
            root_pem: root_cert.pem(),
            signer_der: leaf_cert.der().to_vec(),
            signer: SigningKey::<Sha256>::new(signer_private),
        })
    }

    /// RSA PKCS#1 v1.5 over SHA-256 of the raw body, base64 (the `Signature` scheme's value).
    pub fn sign(&self, body: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.signer.sign(body).to_vec())
    }
}
