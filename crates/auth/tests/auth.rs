//! Credentials against the real registry (Postgres and SQLite) and a real tonic server.

use std::{sync::Arc, time::Duration};

use palisade_auth::{
    AuthLayer, AuthStore, Authenticator, BearerInterceptor, CredentialServiceImpl, NewCredential,
    Scope, bootstrap_admin, generate_secret,
};
use palisade_contracts::auth::v1::{
    self as pb, credential_service_client::CredentialServiceClient,
};
use palisade_testkit::{TestBackend, backend_conformance, capture_logs};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

async fn authenticator(store: AuthStore, shutdown: &CancellationToken) -> Arc<Authenticator> {
    Authenticator::start(store, Duration::from_millis(200), shutdown.clone())
        .await
        .unwrap()
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

async fn revocation_reaches_other_replicas(backend: TestBackend) {
    let shutdown = CancellationToken::new();
    let store = AuthStore::open(&backend.settings()).await.unwrap();
    // Two services, each with its own cache over the same registry.
    let a = authenticator(store.clone(), &shutdown).await;
    let b = authenticator(
        AuthStore::open(&backend.settings()).await.unwrap(),
        &shutdown,
    )
    .await;
    let (id, secret, hash) = generate_secret();
    store
        .insert(
            &id,
            &hash,
            &NewCredential {
                display_name: "panel".into(),
                partners: vec!["p1".into()],
                scopes: vec![Scope::AlertsRead],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let principal = b.authenticate(Some(&bearer(&secret))).await.unwrap();
    assert!(principal.check("p1", Scope::AlertsRead).is_ok());
    assert_eq!(
        principal.check("p2", Scope::AlertsRead).unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        principal
            .check("p1", Scope::AlertsWrite)
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );

    store.revoke(&id).await.unwrap();
    let _ = a.refresh().await;
    assert_eq!(
        a.authenticate(Some(&bearer(&secret)))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );
    // The other replica learns within seconds, from its own refresh loop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match b.authenticate(Some(&bearer(&secret))).await {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated);
                break;
            }
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(_) => panic!("the revoked credential is still accepted after 3 s"),
        }
    }
    shutdown.cancel();
}
backend_conformance!(
    revocation_reaches_other_replicas,
    revocation_reaches_other_replicas
);

async fn bad_and_expired_credentials_are_refused(backend: TestBackend) {
    let shutdown = CancellationToken::new();
    let store = AuthStore::open(&backend.settings()).await.unwrap();
    let auth = authenticator(store.clone(), &shutdown).await;
    let (id, secret, hash) = generate_secret();
    store
        .insert(
            &id,
            &hash,
            &NewCredential {
                display_name: "old".into(),
                all_partners: true,
                scopes: vec![Scope::Admin],
                expires_at: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for header in [
        None,
        Some("Basic abc".to_owned()),
        Some(bearer(
            "pal_0123456789abcdef_wrongwrongwrongwrongwrongwrongwrong",
        )),
        Some(bearer(&secret)),
    ] {
        let status = auth.authenticate(header.as_deref()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header:?}");
    }
    // The registry holds the hash, never the secret.
    let secret_part = secret.rsplit('_').next().unwrap();
    let rows = sqlx::query("SELECT * FROM credentials")
        .fetch_all(store.database().pool())
        .await
        .unwrap();
    for row in rows {
        for i in 0..row.len() {
            if let Ok(Some(text)) = row.try_get::<Option<String>, _>(i) {
                assert!(
                    !text.contains(secret_part),
                    "plaintext secret in column {i}"
                );
            }
        }
    }
    shutdown.cancel();
}
backend_conformance!(
    bad_and_expired_credentials_are_refused,
    bad_and_expired_credentials_are_refused
);

async fn serve(auth: Arc<Authenticator>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = CredentialServiceImpl::new(auth.clone()).into_server();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(AuthLayer::new(auth))
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

async fn client(
    addr: std::net::SocketAddr,
    secret: Option<&str>,
) -> CredentialServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerInterceptor>,
> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let secret = secret.map(|s| secrecy::SecretString::from(s.to_owned()));
    CredentialServiceClient::with_interceptor(channel, BearerInterceptor::new(secret.as_ref()))
}

#[tokio::test]
async fn credential_service_over_grpc_denies_and_never_leaks() {
    let logs = capture_logs();
    let backend = TestBackend::postgres().await;
    let shutdown = CancellationToken::new();
    let store = AuthStore::open(&backend.settings()).await.unwrap();
    let admin = bootstrap_admin(&store, "bootstrap").await.unwrap();
    let auth = authenticator(store.clone(), &shutdown).await;
    let addr = serve(auth).await;

    let status = client(addr, None)
        .await
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let mut admin_client = client(addr, Some(&admin)).await;
    let created = admin_client
        .create_credential(pb::CreateCredentialRequest {
            display_name: "control panel".into(),
            kind: pb::CredentialKind::Client as i32,
            partner_tenant_ids: vec!["partner-a".into()],
            all_partners: false,
            scopes: vec!["alerts:read".into()],
            expires_at: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.secret.starts_with("pal_"));
    assert!(!format!("{created:?}").contains(&created.secret));

    // A non-admin credential may not mint or list credentials…
    let mut panel = client(addr, Some(&created.secret)).await;
    let denied = panel
        .list_credentials(pb::ListCredentialsRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied.message().contains("lacks admin"),
        "{}",
        denied.message()
    );
    // …but can see who it is.
    let me = panel
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(me.partner_tenant_ids, vec!["partner-a".to_owned()]);

    // Unknown scopes are refused clearly, and nothing is created.
    let bad = admin_client
        .create_credential(pb::CreateCredentialRequest {
            display_name: "x".into(),
            all_partners: true,
            scopes: vec!["alerts:everything".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let listed = admin_client
        .list_credentials(pb::ListCredentialsRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.credentials.len(), 2);

    // Revocation through the API takes effect at once on this replica.
    admin_client
        .revoke_credential(pb::RevokeCredentialRequest {
            credential_id: me.credential_id.clone(),
        })
        .await
        .unwrap();
    let revoked = panel.who_am_i(pb::WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(revoked.code(), tonic::Code::Unauthenticated);

    logs.assert_absent(&[&admin, &created.secret]);
    shutdown.cancel();
}

#[test]
fn authorize_reads_the_principal_and_checks_partner_first() {
    let mut request = tonic::Request::new(());
    assert_eq!(
        palisade_auth::authorize(&request, "p1", Scope::AlertsRead)
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );
    request.extensions_mut().insert(palisade_auth::Principal {
        credential_id: "c".into(),
        display_name: "d".into(),
        service: false,
        all_partners: false,
        partners: ["p1".to_owned()].into(),
        scopes: [Scope::AlertsRead].into(),
    });
    assert!(palisade_auth::authorize(&request, "p1", Scope::AlertsRead).is_ok());
    assert_eq!(
        palisade_auth::authorize(&request, "p2", Scope::AlertsRead)
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        palisade_auth::authorize(&request, "", Scope::AlertsRead)
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
}
