//! Partner Center webhook authenticity, as documented (reference §4.4), plus our hardening.
//!
//! 1. `Authorization: Signature <base64>` (or `x-ms-signature`), `X-MS-Certificate-Url` and
//!    `X-MS-Signature-Algorithm` must all be present; the algorithm must be `rsa-sha256`.
//! 2. The certificate URL's host must be on the allow-list (our hardening: without it, anyone
//!    could point us at a certificate of their own), and HTTPS unless explicitly relaxed.
//! 3. The certificate is downloaded (bounded in size and time) and cached by URL.
//! 4. Its chain must verify against the configured trust anchors (Microsoft's roots in
//!    production; ms-sim's root in tests) at the current time.
//! 5. Its issuer must carry `O=<configured organisation>` (`Microsoft Corporation`).
//! 6. The signature is RSA PKCS#1 v1.5 with SHA-256 over the raw body bytes.
//!
//! Anything that fails is a [`VerifyError`]; the receiver answers 401 and stores nothing.
//! This module never looks at what the body means: [`WebhookEvent::parse`] does, afterwards.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine;
use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde::Deserialize;

use crate::graph_alerts::lenient;

/// How the verifier is configured.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Hosts the certificate may be downloaded from (exact match, case-insensitive).
    pub allowed_certificate_hosts: Vec<String>,
    /// PEM trust anchors (one or more certificates per string).
    pub trust_anchors_pem: Vec<String>,
    /// The issuer must carry this `O=` (the documented check).
    pub required_issuer_organization: String,
    /// Allow `http://` certificate URLs (the simulator); production keeps this off.
    pub allow_http_certificate_urls: bool,
    pub certificate_cache_ttl: Duration,
    pub max_certificate_bytes: usize,
    pub fetch_timeout: Duration,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            allowed_certificate_hosts: vec!["3psostorageacct.blob.core.windows.net".into()],
            trust_anchors_pem: Vec::new(),
            required_issuer_organization: "Microsoft Corporation".into(),
            allow_http_certificate_urls: false,
            certificate_cache_ttl: Duration::from_secs(3600),
            max_certificate_bytes: 64 * 1024,
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a webhook was refused. Every variant means 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no signature: expected `Authorization: Signature …` or `x-ms-signature`")]
    MissingSignature,
    #[error("the signature is not base64")]
    MalformedSignature,
    #[error("no X-MS-Certificate-Url")]
    MissingCertificateUrl,
    #[error("certificate url refused: {0}")]
    CertificateUrlRefused(String),
    #[error("unsupported signature algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("certificate download failed: {0}")]
    CertificateUnavailable(String),
    #[error("certificate rejected: {0}")]
    CertificateRejected(String),
    #[error("the certificate's issuer is not {0}")]
    WrongIssuer(String),
    #[error("the signature does not match the body")]
    BadSignature,
}

struct CachedCertificate {
    /// The leaf first, then any intermediates, as served.
    chain: Vec<Vec<u8>>,
    fetched_at: Instant,
}

/// Verifies Partner Center webhook signatures. Cheap to share behind an `Arc`.
pub struct WebhookVerifier {
    config: VerifierConfig,
    http: reqwest::Client,
    anchors: Vec<TrustAnchor<'static>>,
    cache: Mutex<HashMap<String, std::sync::Arc<CachedCertificate>>>,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field(
                "allowed_certificate_hosts",
                &self.config.allowed_certificate_hosts,
            )
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

/// Decodes every `CERTIFICATE` block of a PEM string, or takes the bytes as DER.
pub fn certificates_from_pem_or_der(bytes: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains("-----BEGIN") {
        let mut out = Vec::new();
        let mut inside = false;
        let mut b64 = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("-----BEGIN CERTIFICATE") {
                inside = true;
                b64.clear();
            } else if line.starts_with("-----END CERTIFICATE") {
                inside = false;
                if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&b64) {
                    out.push(der);
                }
            } else if inside {
                b64.push_str(line);
            }
        }
        return out;
    }
    let trimmed: Vec<u8> = bytes.to_vec();
    // A `.cer` may also be bare base64 of the DER.
    if trimmed.first() != Some(&0x30)
        && let Ok(der) = base64::engine::general_purpose::STANDARD.decode(
            text.chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>(),
        )
    {
        return vec![der];
    }
    vec![trimmed]
}

/// Accepts any extended key usage, as long as the extension parses: the documented check does
/// not constrain it, and Microsoft's dispatcher certificate's EKUs are not documented.
#[derive(Debug)]
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

impl WebhookVerifier {
    pub fn new(config: VerifierConfig, http: reqwest::Client) -> Result<Self, String> {
        let mut anchors = Vec::new();
        for pem in &config.trust_anchors_pem {
            for der in certificates_from_pem_or_der(pem.as_bytes()) {
                let der = CertificateDer::from(der);
                let anchor = webpki::anchor_from_trusted_cert(&der)
                    .map_err(|e| format!("trust anchor does not parse: {e}"))?
                    .to_owned();
                anchors.push(anchor);
            }
        }
        if anchors.is_empty() {
            return Err("no trust anchors configured for webhook signatures".into());
        }
        Ok(Self {
            config,
            http,
            anchors,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies the headers and the raw body. Returns nothing but success: parse afterwards.
    pub async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        let (signature, url) = self.check_headers(headers)?;
        let chain = self.certificate(&url).await?;
        self.verify_chain_and_signature(&chain.chain, &signature, body)
    }

    /// Every check of [`Self::verify`] except the certificate download: `certificate` stands for
    /// what `X-MS-Certificate-Url` would return (PEM or DER). Synchronous and network-free, so
    /// that the whole verifier can be fuzzed with attacker-chosen headers, bodies and chains.
    pub fn verify_with_certificate(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        certificate: &[u8],
    ) -> Result<(), VerifyError> {
        let (signature, _url) = self.check_headers(headers)?;
        let chain = certificates_from_pem_or_der(certificate);
        if chain.is_empty() || chain[0].is_empty() {
            return Err(VerifyError::CertificateRejected("empty certificate".into()));
        }
        self.verify_chain_and_signature(&chain, &signature, body)
    }

    /// The signature, the algorithm and the certificate URL, checked before anything is fetched.
    fn check_headers(&self, headers: &HeaderMap) -> Result<(Vec<u8>, reqwest::Url), VerifyError> {
        let signature = signature_from(headers)?;
        let algorithm = header(headers, "x-ms-signature-algorithm")
            .unwrap_or_default()
            .to_ascii_lowercase();
        // Split on '-' as the documented sample does: rsa + sha256.
        if algorithm.split('-').collect::<Vec<_>>() != ["rsa", "sha256"] {
            return Err(VerifyError::UnsupportedAlgorithm(algorithm));
        }
        let url =
            header(headers, "x-ms-certificate-url").ok_or(VerifyError::MissingCertificateUrl)?;
        Ok((signature, self.check_url(&url)?))
    }

    /// The chain against the trust anchors, the issuer organisation, then RSA-SHA256 over the
    /// raw body with the leaf's key.
    fn verify_chain_and_signature(
        &self,
        chain: &[Vec<u8>],
        signature: &[u8],
        body: &[u8],
    ) -> Result<(), VerifyError> {
        let leaf_der = CertificateDer::from(chain[0].as_slice());
        let leaf = webpki::EndEntityCert::try_from(&leaf_der)
            .map_err(|e| VerifyError::CertificateRejected(e.to_string()))?;
        let intermediates: Vec<CertificateDer<'_>> = chain[1..]
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &intermediates,
            UnixTime::now(),
            AnyUsage,
            None,
            None,
        )
        .map_err(|e| VerifyError::CertificateRejected(e.to_string()))?;
        let organisations = issuer_organizations(&chain[0]).unwrap_or_default();
        if !organisations
            .iter()
            .any(|o| o == &self.config.required_issuer_organization)
        {
            return Err(VerifyError::WrongIssuer(format!(
                "O={}",
                self.config.required_issuer_organization
            )));
        }
        leaf.verify_signature(webpki::ring::RSA_PKCS1_2048_8192_SHA256, body, signature)
            .map_err(|_| VerifyError::BadSignature)
    }

    fn check_url(&self, raw: &str) -> Result<reqwest::Url, VerifyError> {
        let url = reqwest::Url::parse(raw)
            .map_err(|e| VerifyError::CertificateUrlRefused(format!("{e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.config.allow_http_certificate_urls => {}
            other => {
                return Err(VerifyError::CertificateUrlRefused(format!(
                    "scheme {other} is not allowed"
                )));
            }
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !self
            .config
            .allowed_certificate_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&host))
        {
            return Err(VerifyError::CertificateUrlRefused(format!(
                "host {host} is not on the allow-list"
            )));
        }
        Ok(url)
    }

    async fn certificate(
        &self,
        url: &reqwest::Url,
    ) -> Result<std::sync::Arc<CachedCertificate>, VerifyError> {
        let key = url.as_str().to_owned();
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|c| c.fetched_at.elapsed() < self.config.certificate_cache_ttl)
            .cloned()
        {
            return Ok(hit);
        }
        let unavailable = |e: String| VerifyError::CertificateUnavailable(e);
        let mut response = self
            .http
            .get(url.clone())
            .timeout(self.config.fetch_timeout)
            .send()
            .await
            .map_err(|e| unavailable(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("HTTP {}", response.status())));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| unavailable(e.without_url().to_string()))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > self.config.max_certificate_bytes {
                return Err(unavailable("certificate too large".into()));
            }
        }
        let chain = certificates_from_pem_or_der(&bytes);
        if chain.is_empty() || chain[0].is_empty() {
            return Err(VerifyError::CertificateRejected("empty certificate".into()));
        }
        // Only a certificate whose chain verifies is cached (verification happens on every
        // use, so a cached entry cannot outlive its validity).
        let cached = std::sync::Arc::new(CachedCertificate {
            chain,
            fetched_at: Instant::now(),
        });
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 64 {
            cache.clear();
        }
        cache.insert(key, cached.clone());
        Ok(cached)
    }

    /// How many certificates are cached (for tests and metrics).
    pub fn cached_certificates(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn signature_from(headers: &HeaderMap) -> Result<Vec<u8>, VerifyError> {
    let raw = match header(headers, "authorization") {
        Some(auth) => {
            let (scheme, value) = auth.split_once(' ').ok_or(VerifyError::MissingSignature)?;
            if !scheme.eq_ignore_ascii_case("signature") {
                return Err(VerifyError::MissingSignature);
            }
            value.trim().to_owned()
        }
        None => {
            let value = header(headers, "x-ms-signature").ok_or(VerifyError::MissingSignature)?;
            // The flag moves the same `Signature <b64>` value; accept it with or without scheme.
            match value.split_once(' ') {
                Some((scheme, v)) if scheme.eq_ignore_ascii_case("signature") => {
                    v.trim().to_owned()
                }
                _ => value,
            }
        }
    };
    base64::engine::general_purpose::STANDARD
        .decode(raw.as_bytes())
        .map_err(|_| VerifyError::MalformedSignature)
}

/// The `O=` values of a certificate's issuer, read straight from the DER.
pub fn issuer_organizations(der: &[u8]) -> Option<Vec<String>> {
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xA0 {
        rest = after; // explicit version
    }
    let (_, _, rest) = tlv(rest)?; // serialNumber
    let (_, _, rest) = tlv(rest)?; // signature algorithm
    let (tag, issuer, _) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let mut out = Vec::new();
    let mut sets = issuer;
    while !sets.is_empty() {
        let (_, set, next) = tlv(sets)?;
        sets = next;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, attr, next) = tlv(attrs)?;
            attrs = next;
            let (tag, oid, value) = tlv(attr)?;
            if tag == 0x06 && oid == [0x55, 0x04, 0x0A] {
                let (_, text, _) = tlv(value)?;
                out.push(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    Some(out)
}

/// One DER tag-length-value: (tag, content, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let mut len = 0_usize;
        for &b in &rest[..count] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[count..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A Partner Center webhook payload (reference §4.3). Names are PascalCase on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    #[serde(default, deserialize_with = "lenient::string")]
    pub event_name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub resource_uri: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub resource_name: String,
    /// The table says `AuditUrl`, the JSON `AuditUri`.
    #[serde(default, alias = "auditUrl", deserialize_with = "lenient::string")]
    pub audit_uri: String,
    #[serde(default, deserialize_with = "lenient::opt_datetime")]
    pub resource_change_utc_date: Option<DateTime<Utc>>,
}

impl WebhookEvent {
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_slice(body)?;
        serde_json::from_value(lenient::camel_case_keys(value))
    }
}

pub const EVENT_FRAUD_DETECTED: &str = "azure-fraud-event-detected";
pub const EVENT_GDAP_EXPIRED: &str = "granular-admin-relationship-expired";
pub const EVENT_GDAP_TERMINATED: &str = "granular-admin-relationship-terminated";
pub const EVENT_DAP_TERMINATED_BY_MICROSOFT: &str =
    "dap-admin-relationship-terminated-by-microsoft";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_payload_parses() {
        let e = WebhookEvent::parse(br#"{"EventName":"azure-fraud-event-detected","ResourceUri":"https://api.partnercenter.microsoft.com/v1/fraudEvents?SubscriptionId=3f9a&EventStatus=Active","ResourceName":null,"AuditUri":null,"ResourceChangeUtcDate":"2025-03-04T09:13:00.1234567+00:00"}"#).unwrap();
        assert_eq!(e.event_name, EVENT_FRAUD_DETECTED);
        assert!(e.resource_uri.contains("SubscriptionId=3f9a"));
        assert_eq!(e.resource_name, "");
        assert!(e.resource_change_utc_date.is_some());
    }

    #[test]
    fn signatures_come_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(signature_from(&h), Err(VerifyError::MissingSignature));
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(signature_from(&h), Err(VerifyError::MissingSignature));
        h.insert("authorization", "Signature AAEC".parse().unwrap());
        assert_eq!(signature_from(&h).unwrap(), vec![0, 1, 2]);
        h.remove("authorization");
        h.insert("x-ms-signature", "AAEC".parse().unwrap());
        assert_eq!(signature_from(&h).unwrap(), vec![0, 1, 2]);
        h.insert("x-ms-signature", "Signature !!".parse().unwrap());
        assert_eq!(signature_from(&h), Err(VerifyError::MalformedSignature));
    }
}
