//! The Entra token client against ms-sim over real HTTP: both endpoint versions, both
//! credential kinds, typed errors and throttling.

use std::time::Duration;

use ms_sim::{Fault, FaultKind, Host};
use palisade_microsoft::entra::{
    AadstsKind, AppIdentity, CertificateCredential, ClientCredential, Cloud, EntraClient,
    EntraError, EntraHosts, Grant, RetryPolicy, TokenTarget, TokenVersion,
};
use secrecy::{ExposeSecret, SecretString};

fn app(partner: &ms_sim::scenario::Partner, credential: ClientCredential) -> AppIdentity {
    AppIdentity {
        client_id: partner.app.client_id.clone(),
        credential,
        cloud: Cloud::China,
    }
}

#[tokio::test]
async fn client_credentials_with_a_secret_and_a_certificate_on_v1_and_v2() {
    let sim = ms_sim::start(ms_sim::SimConfig::default()).await.unwrap();
    let client = EntraClient::new(EntraHosts::single(sim.login_url())).unwrap();
    let partner = sim.scenario().partners[0].clone();
    let certificate = partner.app.certificate();
    let cert =
        CertificateCredential::from_pem(&certificate.certificate_pem, &certificate.private_key_pem)
            .unwrap();
    assert_eq!(cert.x5t(), certificate.x5t);
    let credentials = [
        ClientCredential::Secret(SecretString::from(partner.app.client_secret.clone())),
        ClientCredential::Certificate(std::sync::Arc::new(cert)),
    ];
    for credential in credentials {
        for version in [TokenVersion::V1, TokenVersion::V2] {
            let token = client
                .redeem(
                    &app(&partner, credential.clone()),
                    &partner.tenant_id,
                    version,
                    &TokenTarget::graph(),
                    Grant::ClientCredentials,
                )
                .await
                .unwrap();
            assert_eq!(token.expires_in, 3599, "string (v1) or number (v2)");
            assert!(token.access_token.expose_secret().starts_with("eyJ"));
            assert_eq!(token.expires_on.is_some(), version == TokenVersion::V1);
        }
    }
}

#[tokio::test]
async fn errors_are_typed_and_throttling_is_retried() {
    let sim = ms_sim::start(ms_sim::SimConfig::default()).await.unwrap();
    let client = EntraClient::new(EntraHosts::single(sim.login_url())).unwrap();
    let partner = sim.scenario().partners[0].clone();
    let wrong = app(
        &partner,
        ClientCredential::Secret(SecretString::from("nope")),
    );
    let err = client
        .redeem(
            &wrong,
            &partner.tenant_id,
            TokenVersion::V1,
            &TokenTarget::graph(),
            Grant::ClientCredentials,
        )
        .await
        .unwrap_err();
    let aadsts = err.aadsts().unwrap();
    assert_eq!(
        (aadsts.status, aadsts.error.as_str()),
        (401, "invalid_client")
    );
    assert_eq!(aadsts.kind(), AadstsKind::ClientCredentialInvalid);
    assert!(!err.is_transient());

    let good = app(
        &partner,
        ClientCredential::Secret(SecretString::from(partner.app.client_secret.clone())),
    );
    let rt = SecretString::from("0.AAAA-unknown".to_owned());
    let err = client
        .redeem(
            &good,
            &partner.tenant_id,
            TokenVersion::V2,
            &TokenTarget::partner_center(),
            Grant::RefreshToken(&rt),
        )
        .await
        .unwrap_err();
    assert_eq!(err.aadsts().unwrap().kind(), AadstsKind::GrantExpired);

    sim.control().inject_fault(
        Fault::new(FaultKind::Throttle {
            retry_after_secs: 1,
        })
        .on(Host::Login)
        .times(1),
    );
    let err = client
        .redeem(
            &good,
            &partner.tenant_id,
            TokenVersion::V1,
            &TokenTarget::graph(),
            Grant::ClientCredentials,
        )
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    sim.control().inject_fault(
        Fault::new(FaultKind::Status { status: 503 })
            .on(Host::Login)
            .times(2),
    );
    let policy = RetryPolicy {
        base_delay: Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    client
        .redeem_with_retry(
            &good,
            &partner.tenant_id,
            TokenVersion::V1,
            &TokenTarget::graph(),
            Grant::ClientCredentials,
            policy,
        )
        .await
        .unwrap();
    assert!(matches!(
        EntraError::Network("x".into()),
        e if e.is_transient()
    ));
}
