//! The key-encryption-key providers, each against the real thing it talks to (a key file,
//! ms-sim's Key Vault, ms-sim's HashiCorp Vault transit stand-in): one conformance suite that
//! every provider passes, then what is particular to Vault transit (its token, its failures,
//! its namespace and mount, its configuration).

use std::sync::Arc;

use palisade_crypto::{Aad, CryptoError, EnvelopeCipher, KeyEncryptionKey};
use palisade_microsoft::entra::{EntraClient, EntraHosts};
use palisade_token_broker::{
    KekProvider, KekSettings, KeyVaultSettings, Settings, VaultTransitSettings,
    kek::{KeyVaultKek, LocalKeyring, RotatingKek, VaultTransitKek},
    key_vault_client, vault_transit_client,
};
use secrecy::SecretString;

/// What every provider promises: data keys round-trip under the current version and never
/// appear in what is stored; a damaged or relabelled wrapped key does not open and is not
/// reported as a passing outage; a rotation makes a new current version while every older
/// one keeps opening, and a re-wrap moves a record to it without touching its ciphertext.
async fn conformance(kek: Arc<dyn RotatingKek>) {
    let name = kek.provider();
    let cipher = EnvelopeCipher::new(kek.clone());
    let aad = Aad::new("refresh_token", "partner-a", "consent-1");
    let current = kek.current_version().await.unwrap();
    let sealed = cipher.seal(b"0.AAAA-refresh", &aad).await.unwrap();
    assert_eq!(sealed.key_version, current, "{name}");
    assert_eq!(
        &*cipher.open(&sealed, &aad).await.unwrap(),
        b"0.AAAA-refresh",
        "{name}"
    );

    let data_key = [9_u8; 32];
    let wrapped = kek.wrap(&data_key).await.unwrap();
    assert_eq!(wrapped.key_version, current, "{name}");
    assert!(
        !wrapped.wrapped.windows(32).any(|w| w == data_key),
        "{name}: the data key is not stored in the clear"
    );
    assert_eq!(
        *kek.unwrap(&wrapped.key_version, &wrapped.wrapped)
            .await
            .unwrap(),
        data_key,
        "{name}"
    );

    let mut damaged = wrapped.wrapped.clone();
    let at = damaged.len() - 3;
    damaged[at] ^= 0x01;
    let error = kek
        .unwrap(&wrapped.key_version, &damaged)
        .await
        .expect_err("a damaged wrapped key must not open");
    assert!(
        !matches!(error, CryptoError::Unavailable(_)),
        "{name}: a damaged key is not an outage: {error}"
    );
    let error = kek
        .unwrap("v999999", &wrapped.wrapped)
        .await
        .expect_err("a wrapped key under another version label must not open");
    assert!(
        !matches!(error, CryptoError::Unavailable(_)),
        "{name}: {error}"
    );

    let rotated = kek
        .rotate()
        .await
        .unwrap()
        .expect("this provider creates versions");
    assert_ne!(rotated, current, "{name}");
    assert_eq!(kek.current_version().await.unwrap(), rotated, "{name}");
    let newer = cipher.seal(b"0.BBBB-refresh", &aad).await.unwrap();
    assert_eq!(newer.key_version, rotated, "{name}");
    assert_eq!(
        &*cipher.open(&sealed, &aad).await.unwrap(),
        b"0.AAAA-refresh",
        "{name}: the old version keeps opening"
    );
    let rewrapped = cipher.rewrap(&sealed).await.unwrap();
    assert_eq!(rewrapped.key_version, rotated, "{name}");
    assert_eq!(rewrapped.ciphertext, sealed.ciphertext, "{name}");
    assert_eq!(
        &*cipher.open(&rewrapped, &aad).await.unwrap(),
        b"0.AAAA-refresh",
        "{name}"
    );
}

/// The error of a call that must fail (a wrapped key has no `Debug`: it is key material).
fn failed<T>(result: Result<T, CryptoError>) -> CryptoError {
    match result {
        Ok(_) => panic!("the call succeeded"),
        Err(e) => e,
    }
}

async fn sim() -> ms_sim::MsSim {
    ms_sim::start(ms_sim::SimConfig::default()).await.unwrap()
}

fn transit_settings(sim: &ms_sim::MsSim) -> VaultTransitSettings {
    VaultTransitSettings {
        address: Some(sim.vault_transit_url().to_string()),
        token: Some(SecretString::from(sim.vault_transit_token())),
        ..Default::default()
    }
}

fn transit_kek(settings: &VaultTransitSettings) -> Arc<VaultTransitKek> {
    Arc::new(VaultTransitKek::new(
        vault_transit_client(settings).unwrap(),
    ))
}

fn transit_calls(sim: &ms_sim::MsSim) -> Vec<ms_sim::RequestRecord> {
    sim.control().requests(&ms_sim::RequestFilter {
        host: Some("vault_transit".into()),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_local_key_file_passes_the_conformance_suite() {
    let dir = std::env::temp_dir().join(format!("tb-kek-conformance-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    conformance(Arc::new(LocalKeyring::from_file(dir.join("kek")).unwrap())).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn azure_key_vault_passes_the_conformance_suite() {
    let sim = sim().await;
    let operator = sim.scenario().operator.clone();
    let entra = EntraClient::new(EntraHosts {
        public: sim.login_url(),
        china: sim.login_url(),
    })
    .unwrap();
    let client = key_vault_client(
        &KeyVaultSettings {
            vault_url: Some(sim.key_vault_url().to_string()),
            key_name: "palisade-kek".into(),
            tenant_id: operator.tenant_id.clone(),
            client_id: operator.client_id.clone(),
            client_secret: Some(operator.client_secret.clone().into()),
            china: false,
        },
        &entra,
    )
    .unwrap()
    .unwrap();
    conformance(Arc::new(KeyVaultKek::new(client))).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn vault_transit_passes_the_conformance_suite() {
    let sim = sim().await;
    let kek = transit_kek(&transit_settings(&sim));
    assert_eq!(kek.current_version().await.unwrap(), "v1");
    conformance(kek.clone()).await;
    // What is stored is Vault's own ciphertext, labelled with the version its prefix names.
    let wrapped = kek.wrap(&[1; 32]).await.unwrap();
    assert_eq!(wrapped.key_version, "v2");
    assert!(wrapped.wrapped.starts_with(b"vault:v2:"));
    // One refusal: the damaged key. The relabelled one is refused before reaching Vault.
    let calls = transit_calls(&sim);
    let refused: Vec<_> = calls.iter().filter(|r| r.status != 200).collect();
    assert_eq!(refused.len(), 1, "{calls:?}");
    assert_eq!(
        (refused[0].status, refused[0].path.as_str()),
        (400, "/v1/transit/decrypt/palisade-kek")
    );
    assert!(
        calls
            .iter()
            .any(|r| r.path == "/v1/transit/keys/palisade-kek/rotate")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_wrong_token_is_a_permission_error_that_names_the_path_and_not_the_token() {
    let sim = sim().await;
    let settings = VaultTransitSettings {
        token: Some(SecretString::from("hvs.wrong-token-0123456789")),
        ..transit_settings(&sim)
    };
    let kek = transit_kek(&settings);
    let error = failed(kek.wrap(&[1; 32]).await);
    let CryptoError::Provider(message) = &error else {
        panic!("not a provider refusal: {error:?}");
    };
    assert!(message.contains("permission denied"), "{message}");
    assert!(
        message.contains("transit/encrypt/palisade-kek"),
        "{message}"
    );
    for shown in [format!("{error}"), format!("{error:?}"), format!("{kek:?}")] {
        assert!(!shown.contains("wrong-token"), "{shown}");
    }
    // A refusal is not retried: one call.
    assert_eq!(transit_calls(&sim).len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_token_file_is_read_again_when_it_changes() {
    let sim = sim().await;
    let dir = std::env::temp_dir().join(format!("tb-vault-token-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "hvs.revoked-token\n").unwrap();
    let settings = VaultTransitSettings {
        token: None,
        token_file: Some(file.clone()),
        ..transit_settings(&sim)
    };
    let kek = transit_kek(&settings);
    let error = failed(kek.wrap(&[1; 32]).await);
    assert!(error.to_string().contains("permission denied"), "{error}");
    // The secret is renewed in place, as a Kubernetes secret mount or an agent would.
    std::fs::write(&file, format!("{}\n", sim.vault_transit_token())).unwrap();
    let wrapped = kek.wrap(&[1; 32]).await.unwrap();
    assert_eq!(wrapped.key_version, "v1");
    std::fs::remove_file(&file).unwrap();
    let error = failed(transit_kek(&settings).wrap(&[1; 32]).await);
    assert!(
        error.to_string().contains("vault token: reading"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

#[tokio::test]
async fn vault_failing_on_its_side_is_retried_then_reported_as_transient() {
    let logs = palisade_testkit::capture_logs();
    let sim = sim().await;
    let kek = transit_kek(&transit_settings(&sim));
    let fault = |count: Option<usize>| ms_sim::Fault {
        count,
        ..ms_sim::Fault::new(ms_sim::FaultKind::Status { status: 503 })
            .on(ms_sim::Host::VaultTransit)
            .path("/encrypt/")
    };
    // One 503 (a sealed or restarting node): the retry succeeds.
    sim.control().inject_fault(fault(Some(1)));
    let wrapped = kek.wrap(&[4; 32]).await.unwrap();
    assert_eq!(
        transit_calls(&sim)
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [503, 200]
    );
    // Down for good: three calls, then an error the gRPC layer reports as UNAVAILABLE.
    sim.control().clear_requests();
    sim.control().inject_fault(fault(None));
    let error = failed(kek.wrap(&[4; 32]).await);
    assert!(
        matches!(&error, CryptoError::Unavailable(m) if m.contains("http 503")),
        "{error:?}"
    );
    assert_eq!(
        palisade_token_broker::BrokerError::from(error).code(),
        tonic::Code::Unavailable
    );
    assert_eq!(transit_calls(&sim).len(), 3);
    // Each retry is logged, and the token is not in what was logged.
    assert!(
        logs.contents()
            .contains("vault transit call failed; retrying")
    );
    logs.assert_absent(&[&sim.vault_transit_token()]);
    // Decryption is not affected by a fault on encryption, and a dropped connection is
    // retried like a 503.
    sim.control().clear_faults();
    sim.control().inject_fault(ms_sim::Fault {
        count: Some(1),
        ..ms_sim::Fault::new(ms_sim::FaultKind::Reset).on(ms_sim::Host::VaultTransit)
    });
    assert_eq!(
        *kek.unwrap(&wrapped.key_version, &wrapped.wrapped)
            .await
            .unwrap(),
        [4; 32]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn the_namespace_and_the_mount_are_the_ones_configured() {
    let sim = sim().await;
    let team = transit_kek(&VaultTransitSettings {
        namespace: Some("team-a".into()),
        key_name: "broker-kek".into(),
        ..transit_settings(&sim)
    });
    let wrapped = team.wrap(&[5; 32]).await.unwrap();
    assert_eq!(team.current_version().await.unwrap(), "v1");
    // The root namespace has no such key: Vault cannot decrypt it there.
    let root = transit_kek(&VaultTransitSettings {
        key_name: "broker-kek".into(),
        ..transit_settings(&sim)
    });
    assert!(
        root.unwrap(&wrapped.key_version, &wrapped.wrapped)
            .await
            .is_err()
    );
    // A key that does not exist yet: the answer says how to create it.
    let missing = transit_kek(&VaultTransitSettings {
        key_name: "not-created".into(),
        ..transit_settings(&sim)
    });
    let error = missing.current_version().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("vault write -f transit/keys/not-created"),
        "{error}"
    );
    let elsewhere = transit_kek(&VaultTransitSettings {
        mount: "kms".into(),
        ..transit_settings(&sim)
    });
    let error = elsewhere.current_version().await.unwrap_err();
    assert!(
        matches!(&error, CryptoError::Provider(m) if m.contains("kms/keys/palisade-kek") && m.contains("http 404")),
        "{error:?}"
    );
    sim.shutdown().await;
}

#[test]
fn vault_transit_settings_are_checked_and_the_token_is_never_shown() {
    use palisade_config::Validate;
    let settings = |vault_transit: VaultTransitSettings| Settings {
        kek: KekSettings {
            provider: KekProvider::VaultTransit,
            vault_transit,
            ..Default::default()
        },
        ..Default::default()
    };
    let good = VaultTransitSettings {
        address: Some("https://vault.example:8200".into()),
        token: Some(SecretString::from("hvs.secret-token-value")),
        ..Default::default()
    };
    settings(good.clone()).validate().unwrap();
    for (bad, key) in [
        (
            VaultTransitSettings {
                address: None,
                ..good.clone()
            },
            "kek.vault_transit.address",
        ),
        (
            VaultTransitSettings {
                address: Some("vault.example:8200".into()),
                ..good.clone()
            },
            "kek.vault_transit.address",
        ),
        (
            VaultTransitSettings {
                token: None,
                ..good.clone()
            },
            "kek.vault_transit.token",
        ),
        (
            VaultTransitSettings {
                token_file: Some("/var/run/secrets/vault/token".into()),
                ..good.clone()
            },
            "kek.vault_transit.token_file",
        ),
        (
            VaultTransitSettings {
                key_name: "../sys/seal".into(),
                ..good.clone()
            },
            "kek.vault_transit.key_name",
        ),
        (
            VaultTransitSettings {
                mount: "transit/../sys".into(),
                ..good.clone()
            },
            "kek.vault_transit.mount",
        ),
    ] {
        let error = settings(bad).validate().unwrap_err().to_string();
        assert!(error.contains(key), "{key}: {error}");
    }
    let shown = format!("{:?}", settings(good).kek);
    assert!(!shown.contains("secret-token-value"), "{shown}");
    assert!(shown.contains("vault_transit"));
}

#[test]
fn the_provider_is_named_vault_transit_in_configuration() {
    let parsed: KekSettings = serde_json::from_value(serde_json::json!({
        "provider": "vault_transit",
        "vault_transit": {"address": "https://vault.example:8200", "token_file": "/vault/secrets/token", "namespace": "ops"},
    }))
    .unwrap();
    assert_eq!(parsed.provider, KekProvider::VaultTransit);
    assert_eq!(parsed.vault_transit.mount, "transit");
    assert_eq!(parsed.vault_transit.key_name, "palisade-kek");
}
