//! TLS and mTLS on the gRPC port, with certificates minted for the test.

use std::time::Duration;

use palisade_auth::{AuthStore, Authenticator};
use palisade_server::{Listeners, ServeOptions, ServerSettings, TlsSettings, always_ready, serve};
use palisade_testkit::TestSqlite;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        server: leaf("localhost"),
        client: leaf("panel.example"),
    }
}

#[tokio::test]
async fn mtls_admits_only_clients_with_a_certificate_from_the_ca() {
    let pki = pki();
    let dir = TestSqlite::create();
    let write = |name: &str, contents: &str| {
        let path = dir.dir().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    };
    let tls = TlsSettings {
        cert_path: write("server.pem", &pki.server.0),
        key_path: write("server.key", &pki.server.1),
        client_ca_path: Some(write("ca.pem", &pki.ca_pem)),
    };
    let shutdown = CancellationToken::new();
    let store = AuthStore::open(&dir.settings()).await.unwrap();
    let authenticator = Authenticator::start(store, Duration::from_secs(1), shutdown.clone())
        .await
        .unwrap();
    let settings = ServerSettings {
        tls: Some(tls),
        ..ServerSettings::ephemeral()
    };
    let listeners = Listeners::bind(&settings).await.unwrap();
    let addr = listeners.grpc.local_addr().unwrap();
    let server = tokio::spawn(serve(ServeOptions {
        service_name: "tls-test",
        health_names: vec![],
        settings,
        listeners,
        routes: tonic::service::RoutesBuilder::default().routes(),
        authenticator,
        metrics: palisade_telemetry::Metrics::new(),
        readiness: always_ready(),
        shutdown: shutdown.clone(),
    }));

    let health = |channel: Channel| async move {
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
    };
    let endpoint = || Channel::from_shared(format!("https://localhost:{}", addr.port())).unwrap();
    let with_cert = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    let channel = endpoint()
        .tls_config(with_cert)
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health(channel).await.unwrap().into_inner().status, 1);

    // No client certificate: the handshake or the first call fails.
    let without_cert = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    let refused = match endpoint().tls_config(without_cert).unwrap().connect().await {
        Err(_) => true,
        Ok(channel) => health(channel).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // Plaintext to a TLS port fails too.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", addr.port())).unwrap();
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(channel) => health(channel).await.is_err(),
    };
    assert!(refused, "plaintext was served on the TLS port");

    shutdown.cancel();
    server.await.unwrap().unwrap();
}
