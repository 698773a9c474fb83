//! Envelope encryption: online key rotation under live traffic loses nothing, with a local key
//! file, with Azure Key Vault (ms-sim's vault) and with HashiCorp Vault transit (ms-sim's
//! stand-in) as the key-encryption key.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use palisade_auth::Scope;
use palisade_contracts::tokens::v1::{self as pb};
use palisade_token_broker::{
    KekProvider, KekSettings, KeyVaultSettings, Settings, VaultTransitSettings,
};
use support::*;

async fn rotate(c: &mut Client) -> (String, Vec<pb::RotateKeyProgress>) {
    let mut stream = c
        .rotate_key(pb::RotateKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(progress) = stream.message().await.unwrap() {
        seen.push(progress);
    }
    let last = seen.last().unwrap().new_key_version.clone();
    (last, seen)
}

async fn key_status(c: &mut Client) -> pb::GetKeyStatusResponse {
    c.get_key_status(pb::GetKeyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Consents, then keeps minting (forced refreshes rotate refresh tokens and rewrite access
/// tokens) for the partner and two customers until told to stop. Returns (ok, failed).
fn traffic(
    c: Client,
    partner: &ms_sim::scenario::Partner,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    let mut targets = vec![String::new()];
    targets.extend(
        partner
            .customers()
            .filter(|c| c.gdap_usable() && c.app_consent)
            .take(2)
            .map(|c| c.tenant_id),
    );
    let partner = partner.tenant_id.clone();
    tokio::spawn(async move {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for target in targets {
            let (mut c, partner, stop, ok, failed) = (
                c.clone(),
                partner.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
            );
            workers.push(tokio::spawn(async move {
                // At least a few rounds, and on until the rotation is over.
                let mut rounds = 0;
                while rounds < 5 || !stop.load(Ordering::SeqCst) {
                    rounds += 1;
                    let result = c
                        .get_access_token(pb::GetAccessTokenRequest {
                            partner_tenant_id: partner.clone(),
                            target_tenant_id: target.clone(),
                            resource: pb::Resource::Graph as i32,
                            custom_scope: String::new(),
                            force_refresh: true,
                        })
                        .await;
                    match result {
                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            eprintln!("traffic error: {e:?}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
    })
}

async fn rotation_under_traffic(world: &World, settings: Settings, expected_provider: &str) {
    let partner = world.partner(0).clone();
    let broker = world.start(settings.clone()).await;
    let operator = world
        .credential(
            &[&partner.tenant_id],
            &[Scope::TokensAdmin, Scope::TokensIssue],
        )
        .await;
    let mut c = client(broker.addr, &operator).await;
    let app = register_secret_app(&mut c, &partner, pb::TokenEndpoint::V1).await;
    consent(
        &mut c,
        &partner.tenant_id,
        &app.app_id,
        &partner.admin().upn,
    )
    .await
    .unwrap();
    // Key management needs a credential bound to every partner.
    let mut keys = client(broker.addr, &world.admin).await;
    let before = key_status(&mut keys).await;
    assert_eq!(before.provider, expected_provider);
    let first_version = before.current_key_version.clone();

    for _ in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        let load = traffic(c.clone(), &partner, stop.clone());
        // Let the traffic get going, then rotate under it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (version, progress) = rotate(&mut keys).await;
        stop.store(true, Ordering::SeqCst);
        let (ok, failed) = load.await.unwrap();
        assert_eq!(failed, 0, "no call failed during the rotation");
        assert!(ok >= 15);
        assert!(
            progress
                .iter()
                .all(|p| p.progress.as_ref().unwrap().failed == 0)
        );
        let status = key_status(&mut keys).await;
        assert_eq!(status.current_key_version, version);
        assert_ne!(version, first_version);
        // Every record is under the new version: nothing left behind, nothing lost.
        assert_eq!(
            status.records_by_key_version.keys().collect::<Vec<_>>(),
            vec![&version],
            "{:?}",
            status.records_by_key_version
        );
        assert!(status.records_by_key_version[&version] >= 5);
    }
    // A restart reads everything back (the app secret, the refresh token, cached tokens).
    broker.running.stop().await;
    let again = world.start(settings).await;
    let mut c = client(again.addr, &operator).await;
    let t = token(&mut c, &partner.tenant_id, "", pb::Resource::Graph)
        .await
        .unwrap();
    assert!(
        t.from_cache,
        "the shared cached token decrypts after the restart"
    );
    c.get_access_token(pb::GetAccessTokenRequest {
        partner_tenant_id: partner.tenant_id.clone(),
        resource: pb::Resource::PartnerCenter as i32,
        force_refresh: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let audit = c
        .list_audit_events(pb::ListAuditEventsRequest {
            partner_tenant_id: "*".into(),
            ..Default::default()
        })
        .await;
    // Key changes are audited under the deployment ("*"), which a partner credential cannot read.
    assert_eq!(audit.unwrap_err().code(), tonic::Code::PermissionDenied);
    let mut admin = client(again.addr, &world.admin).await;
    let audit = admin
        .list_audit_events(pb::ListAuditEventsRequest {
            partner_tenant_id: "*".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        audit
            .events
            .iter()
            .filter(|e| e.kind == "key.rotated")
            .count(),
        2
    );
    assert_eq!(
        audit
            .events
            .iter()
            .filter(|e| e.kind == "key.rewrapped")
            .count(),
        2
    );
    again.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_key_rotation_under_live_traffic_loses_nothing() {
    let world = World::new().await;
    let dir = palisade_testkit::TestSqlite::create();
    let mut settings = world.settings();
    settings.kek = KekSettings {
        key_file: Some(dir.dir().join("kek")),
        ..Default::default()
    };
    rotation_under_traffic(&world, settings, "local").await;
    let file = std::fs::read_to_string(dir.dir().join("kek")).unwrap();
    assert_eq!(file.split(',').count(), 3, "v1, v2 and v3 are kept on disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_vault_rotation_under_live_traffic_loses_nothing() {
    let world = World::new().await;
    let operator = world.sim.scenario().operator.clone();
    let mut settings = world.settings();
    settings.kek = KekSettings {
        provider: KekProvider::AzureKeyVault,
        keys: None,
        key_file: None,
        key_vault: KeyVaultSettings {
            vault_url: Some(world.sim.key_vault_url().to_string()),
            key_name: "palisade-kek".into(),
            tenant_id: operator.tenant_id.clone(),
            client_id: operator.client_id.clone(),
            client_secret: Some(operator.client_secret.clone().into()),
            china: false,
        },
        vault_transit: VaultTransitSettings::default(),
    };
    rotation_under_traffic(&world, settings, "azure-key-vault").await;
    let vault_calls = world.sim.control().requests(&ms_sim::RequestFilter {
        host: Some("key_vault".into()),
        ..Default::default()
    });
    assert!(vault_calls.iter().any(|r| r.path.ends_with("/wrapkey")));
    assert!(vault_calls.iter().any(|r| r.path.ends_with("/unwrapkey")));
    assert!(vault_calls.iter().any(|r| r.path.ends_with("/rotate")));
    assert!(
        vault_calls
            .iter()
            .all(|r| r.status < 400 || r.status == 401),
        "{vault_calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_transit_rotation_under_live_traffic_loses_nothing() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.kek = KekSettings {
        provider: KekProvider::VaultTransit,
        vault_transit: VaultTransitSettings {
            address: Some(world.sim.vault_transit_url().to_string()),
            token: Some(world.sim.vault_transit_token().into()),
            ..Default::default()
        },
        ..Default::default()
    };
    rotation_under_traffic(&world, settings, "vault-transit").await;
    let vault_calls = world.sim.control().requests(&ms_sim::RequestFilter {
        host: Some("vault_transit".into()),
        ..Default::default()
    });
    for operation in ["/encrypt/", "/decrypt/", "/rotate"] {
        assert!(
            vault_calls.iter().any(|r| r.path.contains(operation)),
            "no {operation} call"
        );
    }
    assert!(
        vault_calls.iter().all(|r| r.status == 200),
        "{vault_calls:?}"
    );
    world
        .logs
        .assert_absent(&[&world.sim.vault_transit_token()]);
    let dump = dump_tokens_schema(&world.db).await;
    // Sealed records are bytea, which the dump shows in hex.
    let marker: String = b"vault:v".iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        dump.contains(&marker),
        "the stored wrapped keys are Vault's ciphertexts"
    );
    assert!(!dump.contains(&world.sim.vault_transit_token()));
}

/// App secrets referenced from a mounted Kubernetes secret and from a Key Vault secret, instead
/// of stored: both are read at use and never copied into the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_secrets_can_be_referenced_from_kubernetes_and_key_vault() {
    let world = World::new().await;
    let partner = world.partner(0).clone();
    let operator = world.sim.scenario().operator.clone();
    let mounted = palisade_testkit::TestSqlite::create();
    let dir = mounted.dir().join("palisade").join("sam");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("client-secret"),
        format!("{}\n", partner.app.client_secret),
    )
    .unwrap();
    let mut settings = world.settings();
    settings.broker.kubernetes_secrets_dir = mounted.dir().to_owned();
    settings.kek.key_vault = KeyVaultSettings {
        vault_url: Some(world.sim.key_vault_url().to_string()),
        key_name: "palisade-kek".into(),
        tenant_id: operator.tenant_id.clone(),
        client_id: operator.client_id.clone(),
        client_secret: Some(operator.client_secret.clone().into()),
        china: false,
    };
    let broker = world.start(settings).await;
    let secret = world
        .credential(
            &[&partner.tenant_id],
            &[Scope::TokensAdmin, Scope::TokensIssue],
        )
        .await;
    let mut c = client(broker.addr, &secret).await;
    let reference = |kind: pb::AppCredentialKind, reference: &str| pb::AppCredential {
        credential: Some(pb::app_credential::Credential::SecretReference(
            pb::SecretReference {
                kind: kind as i32,
                reference: reference.into(),
            },
        )),
    };
    let app = c
        .register_app(pb::RegisterAppRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            client_id: partner.app.client_id.clone(),
            credential: Some(reference(
                pb::AppCredentialKind::KubernetesSecret,
                "palisade/sam/client-secret",
            )),
            redirect_uri: "https://panel.example/consent".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .app
        .unwrap();
    assert_eq!(
        app.credential_kind,
        pb::AppCredentialKind::KubernetesSecret as i32
    );
    consent(
        &mut c,
        &partner.tenant_id,
        &app.app_id,
        &partner.admin().upn,
    )
    .await
    .unwrap();
    token(&mut c, &partner.tenant_id, "", pb::Resource::Graph)
        .await
        .unwrap();
    // A path out of the mount is refused at registration.
    let refused = c
        .update_app_credential(pb::UpdateAppCredentialRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            app_id: app.app_id.clone(),
            credential: Some(reference(
                pb::AppCredentialKind::KubernetesSecret,
                "../etc/passwd",
            )),
            credential_expires_at: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // The same secret, now in Key Vault (put there as an operator would).
    let http = reqwest::Client::new();
    let vault_token: serde_json::Value = http
        .post(format!(
            "{}{}/oauth2/v2.0/token",
            world.sim.login_url(),
            operator.tenant_id
        ))
        .form(&[
            ("client_id", operator.client_id.as_str()),
            ("client_secret", operator.client_secret.as_str()),
            ("grant_type", "client_credentials"),
            ("scope", "https://vault.azure.net/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let put = http
        .put(format!(
            "{}secrets/sam-secret?api-version=7.4",
            world.sim.key_vault_url()
        ))
        .bearer_auth(vault_token["access_token"].as_str().unwrap())
        .json(&serde_json::json!({"value": partner.app.client_secret}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    c.update_app_credential(pb::UpdateAppCredentialRequest {
        partner_tenant_id: partner.tenant_id.clone(),
        app_id: app.app_id.clone(),
        credential: Some(reference(
            pb::AppCredentialKind::KeyVaultSecret,
            &format!("{}secrets/sam-secret", world.sim.key_vault_url()),
        )),
        credential_expires_at: None,
    })
    .await
    .unwrap();
    world.sim.control().clear_requests();
    c.get_access_token(pb::GetAccessTokenRequest {
        partner_tenant_id: partner.tenant_id.clone(),
        resource: pb::Resource::PartnerCenter as i32,
        force_refresh: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let reads = world.sim.control().requests(&ms_sim::RequestFilter {
        host: Some("key_vault".into()),
        path_contains: Some("/secrets/sam-secret".into()),
        ..Default::default()
    });
    assert_eq!(reads.len(), 1);
    let dump = dump_tokens_schema(&world.db).await;
    assert!(!dump.contains(&partner.app.client_secret));
    broker.running.stop().await;
}
