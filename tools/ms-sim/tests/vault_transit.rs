//! The HashiCorp Vault transit stand-in (not a Microsoft host): Vault's paths, envelope, errors
//! and ciphertext format, key versions across rotation, the token and the namespace.

mod support;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};
use support::*;

fn transit(sim: &ms_sim::MsSim, path: &str) -> url::Url {
    sim.vault_transit_url()
        .join(&format!("v1/transit/{path}"))
        .unwrap()
}

async fn call(sim: &ms_sim::MsSim, token: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let request = match body {
        Some(body) => http().post(transit(sim, path)).json(&body),
        None => http().get(transit(sim, path)),
    };
    let response = request.header("X-Vault-Token", token).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn encrypt(sim: &ms_sim::MsSim, token: &str, plain: &[u8]) -> (u16, Value) {
    call(
        sim,
        token,
        "encrypt/palisade-kek",
        Some(json!({"plaintext": STANDARD.encode(plain)})),
    )
    .await
}

async fn decrypt(sim: &ms_sim::MsSim, token: &str, ciphertext: &str) -> (u16, Value) {
    call(
        sim,
        token,
        "decrypt/palisade-kek",
        Some(json!({"ciphertext": ciphertext})),
    )
    .await
}

#[tokio::test]
async fn encrypt_and_decrypt_round_trip_in_vaults_envelope_and_format() {
    let sim = sim().await;
    let token = sim.vault_transit_token();
    let (status, body) = encrypt(&sim, &token, &[7; 32]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["request_id"].is_string());
    assert_eq!(body["lease_id"], "");
    let ciphertext = body["data"]["ciphertext"].as_str().unwrap().to_owned();
    assert!(ciphertext.starts_with("vault:v1:"), "{ciphertext}");
    assert_eq!(body["data"]["key_version"], 1);
    // Nonce (12) + data (32) + tag (16), standard base64.
    let blob = STANDARD
        .decode(ciphertext.trim_start_matches("vault:v1:"))
        .unwrap();
    assert_eq!(blob.len(), 60);
    let (again_status, again) = encrypt(&sim, &token, &[7; 32]).await;
    assert_eq!(again_status, 200);
    assert_ne!(
        again["data"]["ciphertext"], ciphertext,
        "a fresh nonce every time"
    );

    let (status, plain) = decrypt(&sim, &token, &ciphertext).await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(
        STANDARD
            .decode(plain["data"]["plaintext"].as_str().unwrap())
            .unwrap(),
        [7; 32]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn rotation_adds_a_version_and_old_ciphertexts_keep_decrypting() {
    let sim = sim().await;
    let token = sim.vault_transit_token();
    let (_, key) = call(&sim, &token, "keys/palisade-kek", None).await;
    assert_eq!(key["data"]["latest_version"], 1);
    assert_eq!(key["data"]["type"], "aes256-gcm96");
    let (_, v1) = encrypt(&sim, &token, b"data key one").await;
    let v1 = v1["data"]["ciphertext"].as_str().unwrap().to_owned();

    let (status, rotated) = call(&sim, &token, "keys/palisade-kek/rotate", Some(json!({}))).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["data"]["latest_version"], 2);
    assert_eq!(
        rotated["data"]["keys"].as_object().unwrap().len(),
        2,
        "{rotated}"
    );
    let (_, v2) = encrypt(&sim, &token, b"data key two").await;
    let v2 = v2["data"]["ciphertext"].as_str().unwrap().to_owned();
    assert!(v2.starts_with("vault:v2:"), "{v2}");
    for (ciphertext, expected) in [(&v1, &b"data key one"[..]), (&v2, &b"data key two"[..])] {
        let (status, plain) = decrypt(&sim, &token, ciphertext).await;
        assert_eq!(status, 200, "{plain}");
        assert_eq!(
            STANDARD
                .decode(plain["data"]["plaintext"].as_str().unwrap())
                .unwrap(),
            expected
        );
    }
    // A ciphertext claiming the other version does not open under it.
    let relabelled = v1.replacen("vault:v1:", "vault:v2:", 1);
    let (status, body) = decrypt(&sim, &token, &relabelled).await;
    assert_eq!(
        (status, &body),
        (
            400,
            &json!({"errors": ["cipher: message authentication failed"]})
        )
    );
    // Rotating a key that does not exist is Vault's 400.
    let (status, body) = call(&sim, &token, "keys/absent/rotate", Some(json!({}))).await;
    assert_eq!(
        (status, &body),
        (400, &json!({"errors": ["key not found"]}))
    );
    let (status, _) = call(&sim, &token, "keys/absent", None).await;
    assert_eq!(status, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_unknown_token_is_permission_denied() {
    let sim = sim().await;
    let denied = json!({"errors": ["permission denied"]});
    for token in ["", "hvs.not-a-token"] {
        let (status, body) = encrypt(&sim, token, b"x").await;
        assert_eq!((status, &body), (403, &denied), "token {token:?}");
    }
    let response = http()
        .get(transit(&sim, "keys/palisade-kek"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_ciphertexts_get_vaults_messages() {
    let sim = sim().await;
    let token = sim.vault_transit_token();
    let (_, body) = encrypt(&sim, &token, &[1; 32]).await;
    let good = body["data"]["ciphertext"].as_str().unwrap().to_owned();
    let mut blob = STANDARD
        .decode(good.trim_start_matches("vault:v1:"))
        .unwrap();
    blob[20] ^= 1;
    let tampered = format!("vault:v1:{}", STANDARD.encode(&blob));
    for (ciphertext, message) in [
        (tampered.as_str(), "cipher: message authentication failed"),
        (
            good.trim_start_matches("vault:v1:"),
            "invalid ciphertext: no prefix",
        ),
        ("vault:v1", "invalid ciphertext: wrong number of fields"),
        (
            "vault:vX:AAAA",
            "invalid ciphertext: version number could not be decoded",
        ),
        ("vault:v9:AAAA", "invalid ciphertext: version is too new"),
        (
            "vault:v1:!!!",
            "invalid ciphertext: could not decode base64",
        ),
    ] {
        let (status, body) = decrypt(&sim, &token, ciphertext).await;
        assert_eq!((status, &body), (400, &json!({"errors": [message]})));
    }
    let (status, body) = call(
        &sim,
        &token,
        "encrypt/palisade-kek",
        Some(json!({"plaintext": "not base64!"})),
    )
    .await;
    assert_eq!(
        (status, &body),
        (
            400,
            &json!({"errors": ["failed to base64-decode plaintext"]})
        )
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn mounts_and_namespaces_scope_keys() {
    let sim = sim().await;
    let token = sim.vault_transit_token();
    let unmounted = sim
        .vault_transit_url()
        .join("v1/other/encrypt/palisade-kek")
        .unwrap();
    let response = http()
        .post(unmounted)
        .header("X-Vault-Token", &token)
        .json(&json!({"plaintext": "AAAA"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("no handler for route"),
        "{body}"
    );

    // The same key name in another namespace is another key (created by the first encrypt).
    let namespaced = |path: &str, body: Value| {
        http()
            .post(transit(&sim, path))
            .header("X-Vault-Token", &token)
            .header("X-Vault-Namespace", "team-a/")
            .json(&body)
    };
    let (_, root_ns) = encrypt(&sim, &token, b"k").await;
    let root_ciphertext = root_ns["data"]["ciphertext"].as_str().unwrap().to_owned();
    let (status, body) = send(namespaced(
        "decrypt/palisade-kek",
        json!({"ciphertext": root_ciphertext}),
    ))
    .await;
    assert_eq!(
        (status, &body),
        (400, &json!({"errors": ["encryption key not found"]}))
    );
    let (status, body) = send(namespaced(
        "encrypt/team-key",
        json!({"plaintext": STANDARD.encode(b"k")}),
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = decrypt(&sim, &token, body["data"]["ciphertext"].as_str().unwrap()).await;
    assert_eq!(status, 400, "the root namespace has no team-key");
    sim.shutdown().await;
}

#[tokio::test]
async fn injected_faults_answer_in_vaults_error_shape() {
    let sim = sim().await;
    let token = sim.vault_transit_token();
    sim.control().inject_fault(
        ms_sim::Fault::new(ms_sim::FaultKind::Status { status: 503 })
            .on(ms_sim::Host::VaultTransit)
            .times(1),
    );
    let (status, body) = encrypt(&sim, &token, b"x").await;
    assert_eq!(status, 503);
    assert!(body["errors"][0].is_string(), "{body}");
    assert_eq!(encrypt(&sim, &token, b"x").await.0, 200);
    let logged = sim.control().requests(&ms_sim::RequestFilter {
        host: Some("vault_transit".into()),
        ..Default::default()
    });
    assert_eq!(
        logged.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 200]
    );
    sim.shutdown().await;
}
