//! The whole webhook verifier, minus the download: attacker-chosen signature, algorithm and
//! certificate-URL headers, body and certificate bytes, against the simulator's root (the one
//! compose trusts). It must never panic, and whatever it accepts must stop verifying once the
//! body changes.
//!
//! Input framing: four fields, each a little-endian u16 length then its bytes (the
//! `Authorization: Signature` value, `X-MS-Signature-Algorithm`, `X-MS-Certificate-Url`, the
//! body), then the certificate (PEM or DER) as the rest.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_microsoft::webhook::{VerifierConfig, WebhookVerifier};
use reqwest::header::{HeaderMap, HeaderValue};

fn verifier() -> &'static WebhookVerifier {
    static VERIFIER: OnceLock<WebhookVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let config = VerifierConfig {
            allowed_certificate_hosts: vec!["ms-sim".into(), "127.0.0.1".into()],
            trust_anchors_pem: vec![include_str!("../../deploy/ms-sim/webhook-root-ca.pem").into()],
            allow_http_certificate_urls: true,
            ..VerifierConfig::default()
        };
        WebhookVerifier::new(config, reqwest::Client::new()).expect("the committed root parses")
    })
}

fn field<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = data.split_first_chunk::<2>()?;
    let len = u16::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return None;
    }
    let (value, rest) = rest.split_at(len);
    *data = rest;
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let (Some(signature), Some(algorithm), Some(url), Some(body)) = (
        field(&mut rest),
        field(&mut rest),
        field(&mut rest),
        field(&mut rest),
    ) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let mut authorization = b"Signature ".to_vec();
    authorization.extend_from_slice(signature);
    for (name, value) in [
        ("authorization", authorization.as_slice()),
        ("x-ms-signature-algorithm", algorithm),
        ("x-ms-certificate-url", url),
    ] {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    }
    if verifier().verify_with_certificate(&headers, body, rest).is_ok() && !body.is_empty() {
        let mut changed = body.to_vec();
        let last = changed.len() - 1;
        changed[last] ^= 0x01;
        assert!(
            verifier()
                .verify_with_certificate(&headers, &changed, rest)
                .is_err(),
            "a changed body still verified"
        );
    }
});
