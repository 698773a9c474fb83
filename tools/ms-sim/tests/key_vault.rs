//! Key Vault as the simulator serves it: the challenge, wrap/unwrap across key versions, and
//! versioned secrets.

mod support;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::*;

async fn operator_token(sim: &ms_sim::MsSim) -> String {
    let operator = &sim.scenario().operator;
    let body: Value = http()
        .post(format!(
            "{}{}/oauth2/v2.0/token",
            sim.login_url(),
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
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned()
}

fn kv(sim: &ms_sim::MsSim, path: &str) -> url::Url {
    sim.key_vault_url()
        .join(&format!("{path}?api-version=7.4"))
        .unwrap()
}

#[tokio::test]
async fn unauthenticated_calls_get_the_challenge_and_api_version_is_required() {
    let sim = sim().await;
    let response = http()
        .get(kv(&sim, "/keys/palisade-kek"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer authorization=\""),
        "{challenge}"
    );
    assert!(challenge.contains(&sim.scenario().operator.tenant_id));
    assert!(challenge.contains("resource=\"https://vault.azure.net\""));
    let token = operator_token(&sim).await;
    let no_version = sim.key_vault_url().join("/keys/palisade-kek").unwrap();
    assert_eq!(get(no_version, &token).await.0, 400);
    // A Partner Center token is for another audience.
    assert_eq!(
        get(kv(&sim, "/keys/palisade-kek"), &admin_pc_token(&sim).await)
            .await
            .0,
        401
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn wrapped_keys_name_their_version_and_old_versions_unwrap_after_rotation() {
    let sim = sim().await;
    let token = operator_token(&sim).await;
    let data_key = [7_u8; 32];
    let wrap =
        |token: String, path: String| {
            let url = kv(&sim, &path);
            async move {
                send(http().post(url).bearer_auth(token).json(
                    &json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode(data_key)}),
                ))
                .await
            }
        };
    let (status, wrapped) = wrap(token.clone(), "/keys/palisade-kek/wrapkey".into()).await;
    assert_eq!(status, 200, "{wrapped}");
    let kid_v1 = wrapped["kid"].as_str().unwrap().to_owned();
    assert!(kid_v1.starts_with(&format!("{}keys/palisade-kek/", sim.key_vault_url())));
    assert_ne!(
        wrapped["value"].as_str().unwrap(),
        URL_SAFE_NO_PAD.encode(data_key)
    );

    let (status, rotated) = send(
        http()
            .post(kv(&sim, "/keys/palisade-kek/rotate"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, 200);
    let kid_v2 = rotated["key"]["kid"].as_str().unwrap().to_owned();
    assert_ne!(kid_v1, kid_v2);
    let (_, rewrapped) = wrap(token.clone(), "/keys/palisade-kek/wrapkey".into()).await;
    assert_eq!(
        rewrapped["kid"],
        kid_v2.as_str(),
        "new wraps use the new version"
    );

    // The old version still unwraps what it wrapped; the new one cannot.
    let version_v1 = kid_v1.rsplit('/').next().unwrap();
    let unwrap = |path: String, value: Value| {
        let url = kv(&sim, &path);
        let token = token.clone();
        async move {
            send(
                http()
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({"alg": "RSA-OAEP-256", "value": value})),
            )
            .await
        }
    };
    let (status, plain) = unwrap(
        format!("/keys/palisade-kek/{version_v1}/unwrapkey"),
        wrapped["value"].clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(plain["value"].as_str().unwrap())
            .unwrap(),
        data_key
    );
    let version_v2 = kid_v2.rsplit('/').next().unwrap();
    assert_eq!(
        unwrap(
            format!("/keys/palisade-kek/{version_v2}/unwrapkey"),
            wrapped["value"].clone()
        )
        .await
        .0,
        400
    );
    assert_eq!(
        unwrap("/keys/missing/unwrapkey".into(), wrapped["value"].clone())
            .await
            .0,
        404
    );
    let (status, _) = send(
        http()
            .post(kv(&sim, "/keys/palisade-kek/wrapkey"))
            .bearer_auth(&token)
            .json(&json!({"alg": "A256KW", "value": "AAAA"})),
    )
    .await;
    assert_eq!(status, 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn secrets_keep_every_version() {
    let sim = sim().await;
    let token = operator_token(&sim).await;
    let set = |value: &str| {
        http()
            .put(kv(&sim, "/secrets/partner-rt"))
            .bearer_auth(&token)
            .json(&json!({"value": value}))
    };
    let (_, first) = send(set("0.AAAA-one")).await;
    let (status, second) = send(set("0.AAAA-two")).await;
    assert_eq!(status, 200);
    assert_ne!(first["id"], second["id"]);
    let (_, _, latest) = get(kv(&sim, "/secrets/partner-rt"), &token).await;
    assert_eq!(latest["value"], "0.AAAA-two");
    let version = first["id"].as_str().unwrap().rsplit('/').next().unwrap();
    let (_, _, old) = get(kv(&sim, &format!("/secrets/partner-rt/{version}")), &token).await;
    assert_eq!(old["value"], "0.AAAA-one");
    assert_eq!(
        send(
            http()
                .put(kv(&sim, "/secrets/bad_name"))
                .bearer_auth(&token)
                .json(&json!({"value": "x"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(get(kv(&sim, "/secrets/absent"), &token).await.0, 404);
    sim.shutdown().await;
}
