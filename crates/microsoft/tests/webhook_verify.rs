//! The webhook verifier's checks without the certificate download
//! ([`WebhookVerifier::verify_with_certificate`], which the fuzz target drives): a body signed by
//! the simulator's dispatcher certificate passes, and every way of forging one fails with the
//! reason the receiver logs.

use palisade_microsoft::webhook::{VerifierConfig, VerifyError, WebhookVerifier};
use reqwest::header::HeaderMap;

const CERT_HOST: &str = "certificates.example.test";
const BODY: &[u8] = br#"{"EventName":"azure-fraud-event-detected","ResourceUri":"https://api.partnercenter.microsoft.com/v1/fraudEvents"}"#;

fn verifier(root_pem: &str) -> WebhookVerifier {
    let config = VerifierConfig {
        allowed_certificate_hosts: vec![CERT_HOST.into()],
        trust_anchors_pem: vec![root_pem.into()],
        ..VerifierConfig::default()
    };
    WebhookVerifier::new(config, reqwest::Client::new()).expect("the root parses")
}

fn headers(signature: &str, algorithm: &str, url: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        format!("Signature {signature}").parse().unwrap(),
    );
    h.insert("x-ms-signature-algorithm", algorithm.parse().unwrap());
    h.insert("x-ms-certificate-url", url.parse().unwrap());
    h
}

fn url() -> String {
    format!("https://{CERT_HOST}/cert.cer")
}

#[test]
fn a_signed_body_passes_and_every_forgery_fails() {
    let pki = ms_sim::WebhookPki::generate(7).unwrap();
    let verifier = verifier(&pki.root_pem);
    let good = headers(&pki.sign(BODY), "rsa-sha256", &url());

    verifier
        .verify_with_certificate(&good, BODY, &pki.signer_der)
        .expect("the dispatcher's signature verifies");

    let mut tampered = BODY.to_vec();
    tampered[3] ^= 1;
    assert_eq!(
        verifier.verify_with_certificate(&good, &tampered, &pki.signer_der),
        Err(VerifyError::BadSignature)
    );

    // A chain to a root we do not trust: another simulator's dispatcher.
    let stranger = ms_sim::WebhookPki::generate(8).unwrap();
    let signed_by_stranger = headers(&stranger.sign(BODY), "rsa-sha256", &url());
    assert!(matches!(
        verifier.verify_with_certificate(&signed_by_stranger, BODY, &stranger.signer_der),
        Err(VerifyError::CertificateRejected(_))
    ));

    let elsewhere = headers(
        &pki.sign(BODY),
        "rsa-sha256",
        "https://attacker.test/cert.cer",
    );
    assert!(matches!(
        verifier.verify_with_certificate(&elsewhere, BODY, &pki.signer_der),
        Err(VerifyError::CertificateUrlRefused(_))
    ));

    let plain_http = headers(
        &pki.sign(BODY),
        "rsa-sha256",
        &format!("http://{CERT_HOST}/c"),
    );
    assert!(matches!(
        verifier.verify_with_certificate(&plain_http, BODY, &pki.signer_der),
        Err(VerifyError::CertificateUrlRefused(_))
    ));

    let weak = headers(&pki.sign(BODY), "rsa-sha1", &url());
    assert_eq!(
        verifier.verify_with_certificate(&weak, BODY, &pki.signer_der),
        Err(VerifyError::UnsupportedAlgorithm("rsa-sha1".into()))
    );

    assert!(matches!(
        verifier.verify_with_certificate(&good, BODY, b"not a certificate"),
        Err(VerifyError::CertificateRejected(_))
    ));
    assert!(matches!(
        verifier.verify_with_certificate(&good, BODY, b""),
        Err(VerifyError::CertificateRejected(_))
    ));
    assert_eq!(
        verifier.verify_with_certificate(&HeaderMap::new(), BODY, &pki.signer_der),
        Err(VerifyError::MissingSignature)
    );
}

#[test]
fn the_issuer_must_be_the_configured_organisation() {
    let pki = ms_sim::WebhookPki::generate(7).unwrap();
    let config = VerifierConfig {
        allowed_certificate_hosts: vec![CERT_HOST.into()],
        trust_anchors_pem: vec![pki.root_pem.clone()],
        required_issuer_organization: "Contoso Ltd".into(),
        ..VerifierConfig::default()
    };
    let verifier = WebhookVerifier::new(config, reqwest::Client::new()).unwrap();
    let good = headers(&pki.sign(BODY), "rsa-sha256", &url());
    assert!(matches!(
        verifier.verify_with_certificate(&good, BODY, &pki.signer_der),
        Err(VerifyError::WrongIssuer(_))
    ));
}
