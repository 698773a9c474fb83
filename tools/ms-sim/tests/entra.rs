//! Entra ID as the simulator serves it, over real HTTP: shapes, rotation, expiry and errors.

use std::{collections::HashMap, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ms_sim::{PARTNER_CENTER, SimConfig};
use rsa::{BigUint, RsaPublicKey, pkcs1v15::VerifyingKey, signature::Verifier};
use sha2::Sha256;

async fn sim() -> ms_sim::MsSim {
    ms_sim::start(SimConfig::default()).await.unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The non-interactive consent: GET /authorize with login_hint → 302 with code and state.
async fn consent(sim: &ms_sim::MsSim, upn: &str) -> String {
    let partner = &sim.scenario().partners[0];
    let url = format!(
        "{}common/oauth2/authorize?client_id={}&response_type=code&redirect_uri=https%3A%2F%2Fpanel.example%2Fcb&state=s1&login_hint={upn}&amr_values=mfa",
        sim.login_url(),
        partner.app.client_id
    );
    let response = http().get(url).send().await.unwrap();
    assert_eq!(response.status(), 303, "authorize redirects");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with("https://panel.example/cb?code="),
        "{location}"
    );
    assert!(location.ends_with("&state=s1"), "{location}");
    let url = url::Url::parse(&location).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned()
}

async fn token(
    sim: &ms_sim::MsSim,
    tenant: &str,
    v2: bool,
    form: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let partner = &sim.scenario().partners[0];
    let path = if v2 {
        "oauth2/v2.0/token"
    } else {
        "oauth2/token"
    };
    let mut body: Vec<(&str, &str)> = vec![
        ("client_id", &partner.app.client_id),
        ("client_secret", &partner.app.client_secret),
    ];
    body.extend_from_slice(form);
    let response = http()
        .post(format!("{}{tenant}/{path}", sim.login_url()))
        .form(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn v1_code_redemption_has_string_numbers_an_mfa_claim_and_a_jwks_verifiable_signature() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let code = consent(&sim, &partner.admin().upn).await;
    let (status, body) = token(
        &sim,
        &partner.tenant_id,
        false,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("resource", PARTNER_CENTER),
            ("redirect_uri", "https://panel.example/cb"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], "3599", "v1 numbers are strings");
    assert_eq!(body["token_type"], "Bearer");
    assert!(
        body["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("0.AAAA")
    );
    let access = body["access_token"].as_str().unwrap();
    let c = claims(access);
    assert_eq!(c["aud"], PARTNER_CENTER);
    assert_eq!(c["tid"], partner.tenant_id);
    assert_eq!(c["amr"], serde_json::json!(["pwd", "mfa"]));
    assert_eq!(c["upn"], partner.admin().upn);
    assert_eq!(c["ver"], "1.0");

    // The signature verifies with the published key.
    let jwks: serde_json::Value = http()
        .get(format!("{}common/discovery/keys", sim.login_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    let n = BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap());
    let e = BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(key["e"].as_str().unwrap()).unwrap());
    let verifier = VerifyingKey::<Sha256>::new(RsaPublicKey::new(n, e).unwrap());
    let (signed, signature) = access.rsplit_once('.').unwrap();
    let signature =
        rsa::pkcs1v15::Signature::try_from(URL_SAFE_NO_PAD.decode(signature).unwrap().as_slice())
            .unwrap();
    verifier
        .verify(signed.as_bytes(), &signature)
        .expect("RS256 signature verifies against the JWKS");

    // A code works once.
    let (status, body) = token(
        &sim,
        &partner.tenant_id,
        false,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("resource", PARTNER_CENTER),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error_codes"], serde_json::json!([54005]));
    sim.shutdown().await;
}

#[tokio::test]
async fn refresh_rotates_keeps_the_old_token_and_expires_after_90_idle_days() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let code = consent(&sim, &partner.admin().upn).await;
    let (_, first) = token(
        &sim,
        &partner.tenant_id,
        true,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            (
                "scope",
                "https://graph.microsoft.com/.default offline_access",
            ),
        ],
    )
    .await;
    assert_eq!(first["expires_in"], 3599, "v2 numbers are numbers");
    let rt1 = first["refresh_token"].as_str().unwrap().to_owned();
    let (status, second) = token(
        &sim,
        &partner.tenant_id,
        true,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt1),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let rt2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2, "every redemption rotates");
    assert!(
        sim.control().refresh_token_is_live(&rt1),
        "the old token stays valid"
    );

    // The doc sample's refresh answer has no refresh_token; clients must keep theirs.
    sim.control().omit_refresh_tokens(1);
    let (_, bare) = token(
        &sim,
        &partner.tenant_id,
        true,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt2),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await;
    assert!(bare.get("refresh_token").is_none());

    sim.control()
        .advance_clock(Duration::from_secs(91 * 24 * 3600));
    let (status, expired) = token(
        &sim,
        &partner.tenant_id,
        true,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt1),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(expired["error"], "invalid_grant");
    assert_eq!(expired["error_codes"], serde_json::json!([700082]));
    assert!(
        expired["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS700082: ")
    );
    for field in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(expired.get(field).is_some(), "{field}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn documented_failures_have_their_codes() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let redeem = |code: String| {
        let sim = &sim;
        let tenant = partner.tenant_id.clone();
        async move {
            let (_, body) = token(
                sim,
                &tenant,
                false,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("resource", PARTNER_CENTER),
                ],
            )
            .await;
            body["refresh_token"].as_str().unwrap().to_owned()
        }
    };
    let refresh = |rt: String, tenant: String| {
        let sim = &sim;
        async move {
            token(
                sim,
                &tenant,
                false,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("resource", "https://graph.microsoft.com"),
                ],
            )
            .await
        }
    };

    // A service account without MFA: its tokens lack the claim; once CA demands MFA, 50076.
    let svc_rt = redeem(consent(&sim, &partner.service_account().upn).await).await;
    let (status, ok) = refresh(svc_rt.clone(), partner.tenant_id.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        claims(ok["access_token"].as_str().unwrap())["amr"],
        serde_json::json!(["pwd"])
    );
    sim.control()
        .require_mfa(&partner.service_account().upn, true);
    let (_, body) = refresh(svc_rt, partner.tenant_id.clone()).await;
    assert_eq!(body["error_codes"], serde_json::json!([50076]));

    // Revoked: 50173. Consent removed: 65001.
    let admin_rt = redeem(consent(&sim, &partner.admin().upn).await).await;
    sim.control().set_consent(&partner.app.client_id, false);
    let (_, body) = refresh(admin_rt.clone(), partner.tenant_id.clone()).await;
    assert_eq!(body["error_codes"], serde_json::json!([65001]));
    sim.control().set_consent(&partner.app.client_id, true);
    sim.control().revoke_user_tokens(&partner.admin().upn);
    let (_, body) = refresh(admin_rt, partner.tenant_id.clone()).await;
    assert_eq!(body["error_codes"], serde_json::json!([50173]));

    // A bad secret: 401 invalid_client 7000215. An unknown resource: 500011.
    let response = http()
        .post(format!(
            "{}{}/oauth2/token",
            sim.login_url(),
            partner.tenant_id
        ))
        .form(&[
            ("client_id", partner.app.client_id.as_str()),
            ("client_secret", "wrong"),
            ("grant_type", "client_credentials"),
            ("resource", PARTNER_CENTER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        (body["error"].as_str(), body["error_codes"][0].as_u64()),
        (Some("invalid_client"), Some(7000215))
    );
    let (status, body) = token(
        &sim,
        &partner.tenant_id,
        false,
        &[
            ("grant_type", "client_credentials"),
            ("resource", "https://nothing.example"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(500011))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn customer_tokens_need_gdap_and_consent_and_the_log_counts_redemptions() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let code = consent(&sim, &partner.admin().upn).await;
    let (_, body) = token(
        &sim,
        &partner.tenant_id,
        false,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("resource", PARTNER_CENTER),
        ],
    )
    .await;
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    sim.control().clear_requests();
    let mut outcomes = HashMap::new();
    for customer in partner.customers() {
        let (status, body) = token(
            &sim,
            &customer.tenant_id,
            false,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt),
                ("resource", "https://graph.microsoft.com"),
            ],
        )
        .await;
        let expected = match (customer.gdap_usable(), customer.app_consent) {
            (true, true) => {
                assert_eq!(
                    claims(body["access_token"].as_str().unwrap())["tid"],
                    customer.tenant_id
                );
                200
            }
            (false, _) => {
                assert_eq!(body["error_codes"], serde_json::json!([50020]));
                400
            }
            (true, false) => {
                assert_eq!(body["error_codes"], serde_json::json!([65001]));
                400
            }
        };
        assert_eq!(status, expected, "{}", customer.display_name);
        *outcomes.entry(status).or_insert(0) += 1;
    }
    assert!(outcomes[&200] > 0 && outcomes[&400] > 0, "{outcomes:?}");
    let redemptions = sim.control().requests(&ms_sim::control_filter_refresh());
    assert_eq!(
        redemptions.len(),
        partner.customer_count,
        "exactly one logged redemption per call"
    );
    sim.shutdown().await;
}
