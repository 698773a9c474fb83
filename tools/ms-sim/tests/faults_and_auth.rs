//! Injected faults, certificate client assertions, forced AADSTS failures, and a world of
//! 100 partners × 10,000 customers served without materialising it.

mod support;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ms_sim::{Fault, FaultKind, GRAPH, Host, PARTNER_CENTER, ScenarioConfig, SimConfig};
use rsa::{
    pkcs1v15::SigningKey,
    pkcs8::DecodePrivateKey,
    signature::{SignatureEncoding, Signer},
};
use serde_json::{Value, json};
use support::*;

fn assertion(sim: &ms_sim::MsSim, tenant: &str, x5t: &str, exp_offset: i64) -> String {
    let partner = &sim.scenario().partners[0];
    let certificate = partner.app.certificate();
    let now = chrono::Utc::now().timestamp();
    let header = json!({"alg": "RS256", "typ": "JWT", "x5t": x5t});
    let claims = json!({
        "aud": format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"),
        "iss": partner.app.client_id, "sub": partner.app.client_id,
        "jti": uuid::Uuid::new_v4().to_string(), "nbf": now, "exp": now + exp_offset,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&certificate.private_key_pem).unwrap();
    let signature = SigningKey::<sha2::Sha256>::new(key)
        .sign(input.as_bytes())
        .to_vec();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

async fn v2_with_assertion(
    sim: &ms_sim::MsSim,
    assertion: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let partner = &sim.scenario().partners[0];
    let mut body = vec![
        ("client_id", partner.app.client_id.as_str()),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    body.extend_from_slice(form);
    send(
        http()
            .post(format!(
                "{}{}/oauth2/v2.0/token",
                sim.login_url(),
                partner.tenant_id
            ))
            .form(&body),
    )
    .await
}

#[tokio::test]
async fn certificate_client_assertions_authenticate_and_bad_ones_are_refused() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let rt = refresh_token(&sim, &partner, &partner.admin().upn).await;
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", rt.as_str()),
        (
            "scope",
            "https://api.partnercenter.microsoft.com/user_impersonation offline_access",
        ),
    ];
    let x5t = partner.app.certificate().x5t.clone();
    assert!(
        partner
            .app
            .certificate()
            .certificate_pem
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let (status, body) =
        v2_with_assertion(&sim, &assertion(&sim, &partner.tenant_id, &x5t, 600), &form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["aud"],
        PARTNER_CENTER
    );
    assert!(body["expires_in"].is_number(), "v2 numbers are numbers");

    let (status, body) = v2_with_assertion(
        &sim,
        &assertion(&sim, &partner.tenant_id, "bm90LXRoZS1jZXJ0", 600),
        &form,
    )
    .await;
    assert_eq!((status, &body["error_codes"]), (401, &json!([700027])));
    let (status, body) =
        v2_with_assertion(&sim, &assertion(&sim, &partner.tenant_id, &x5t, -60), &form).await;
    assert_eq!((status, &body["error_codes"]), (401, &json!([700024])));
    let (status, body) =
        v2_with_assertion(&sim, &assertion(&sim, "another-tenant", &x5t, 600), &form).await;
    assert_eq!(
        (status, &body["error"].as_str()),
        (401, &Some("invalid_client"))
    );
    let mut forged = assertion(&sim, &partner.tenant_id, &x5t, 600);
    let middle = forged.len() - 20;
    let flipped = if &forged[middle..=middle] == "A" {
        "B"
    } else {
        "A"
    };
    forged.replace_range(middle..=middle, flipped);
    assert_eq!(v2_with_assertion(&sim, &forged, &form).await.0, 401);
    sim.shutdown().await;
}

#[tokio::test]
async fn forced_failures_answer_with_their_documented_codes_then_clear() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let rt = refresh_token(&sim, &partner, &partner.admin().upn).await;
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", rt.as_str()),
        ("resource", PARTNER_CENTER),
    ];
    let redeem = || token_call(&sim, &partner, &partner.tenant_id, &form);
    for (code, error) in [
        (70043, "invalid_grant"),
        (53003, "invalid_grant"),
        (50079, "interaction_required"),
        (530034, "invalid_grant"),
    ] {
        sim.control()
            .fail_token_requests(&partner.admin().upn, code, Some(1));
        let body = redeem().await;
        assert_eq!(
            (body["error"].as_str(), &body["error_codes"]),
            (Some(error), &json!([code])),
            "{code}"
        );
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .starts_with(&format!("AADSTS{code}:"))
        );
        assert!(
            redeem().await["access_token"].is_string(),
            "only the next call fails"
        );
    }
    // An expired client secret fails every user of the app until cleared.
    sim.control()
        .fail_token_requests(&partner.app.client_id, 7000222, None);
    for _ in 0..3 {
        assert_eq!(redeem().await["error_codes"], json!([7000222]));
    }
    sim.control().clear_token_failures();
    assert!(redeem().await["access_token"].is_string());
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_throttle_fail_delay_reset_and_damage_answers_per_host_and_tenant() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let control = sim.control();
    let token = user_token(
        &sim,
        &partner,
        &partner.admin().upn,
        &partner.tenant_id,
        GRAPH,
    )
    .await;
    let alerts = sim
        .graph_url()
        .join("/beta/security/partner/securityAlerts")
        .unwrap();

    control.inject_fault(
        Fault::new(FaultKind::Throttle {
            retry_after_secs: 7,
        })
        .on(Host::Graph)
        .tenant(&partner.tenant_id)
        .times(2),
    );
    for _ in 0..2 {
        let (status, headers, body) = get(alerts.clone(), &token).await;
        assert_eq!(
            (status, headers["retry-after"].to_str().unwrap()),
            (429, "7")
        );
        assert_eq!(body["error"]["code"], "TooManyRequests");
    }
    assert_eq!(
        get(alerts.clone(), &token).await.0,
        200,
        "only the next two calls"
    );

    // Another tenant's calls are unaffected by a per-tenant fault.
    control.inject_fault(
        Fault::new(FaultKind::Status { status: 503 })
            .on(Host::Login)
            .tenant(&partner.tenant_id)
            .times(1),
    );
    let other = sim.scenario().partners[1].clone();
    assert!(
        refresh_token(&sim, &other, &other.admin().upn)
            .await
            .starts_with("0.")
    );
    let rt_body = token_call(
        &sim,
        &partner,
        &partner.tenant_id,
        &[("grant_type", "client_credentials"), ("resource", GRAPH)],
    )
    .await;
    assert_eq!(rt_body["error"], "server_error");

    control.inject_fault(Fault::new(FaultKind::Reset).on(Host::Graph).times(1));
    let reset = match http().get(alerts.clone()).bearer_auth(&token).send().await {
        Err(_) => true,
        Ok(response) => response.json::<Value>().await.is_err(),
    };
    assert!(reset, "the connection drops mid-answer");

    // A truncated answer still had its side effect: the refresh token rotated.
    let rt = refresh_token(&sim, &partner, &partner.admin().upn).await;
    let issued_before = control.issued_refresh_tokens().len();
    control.inject_fault(
        Fault::new(FaultKind::Truncate)
            .on(Host::Login)
            .path("/oauth2/token")
            .times(1),
    );
    let response = http()
        .post(format!(
            "{}{}/oauth2/token",
            sim.login_url(),
            partner.tenant_id
        ))
        .form(&[
            ("client_id", partner.app.client_id.as_str()),
            ("client_secret", partner.app.client_secret.as_str()),
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("resource", PARTNER_CENTER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.json::<Value>().await.is_err(),
        "the body does not parse"
    );
    assert_eq!(control.issued_refresh_tokens().len(), issued_before + 1);
    assert!(
        control.refresh_token_is_live(&rt),
        "the old token still works, so the chain survives"
    );

    control.inject_fault(
        Fault::new(FaultKind::Malformed)
            .on(Host::Graph)
            .fraction(1.0)
            .times(1),
    );
    assert!(
        http()
            .get(alerts.clone())
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .is_err()
    );
    control.inject_fault(
        Fault::new(FaultKind::Latency { ms: 150 })
            .on(Host::Graph)
            .times(1),
    );
    assert_eq!(get(alerts.clone(), &token).await.0, 200);
    assert!(control.faults().is_empty(), "counted faults are used up");
    // The log records what the client saw.
    let statuses: Vec<u16> = control
        .requests(&ms_sim::RequestFilter {
            host: Some("graph".into()),
            ..Default::default()
        })
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2);
    // A fraction of zero never fires.
    control.inject_fault(
        Fault::new(FaultKind::Status { status: 500 })
            .on(Host::Graph)
            .fraction(0.0),
    );
    for _ in 0..5 {
        assert_eq!(get(alerts.clone(), &token).await.0, 200);
    }
    control.clear_faults();
    tokio::time::sleep(Duration::from_millis(1)).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_million_customers_are_served_lazily() {
    let sim = sim_with(SimConfig {
        scenario: ScenarioConfig {
            partners: 100,
            customers_per_partner: 10_000,
            alerts_per_partner: 12,
        },
        ..SimConfig::default()
    })
    .await;
    let partner = sim.scenario().partners[99].clone();
    let last = partner.customer(9_999).unwrap();
    let (found_partner, found) = sim
        .scenario()
        .customer_by_tenant(&last.tenant_id.to_uppercase())
        .unwrap();
    assert_eq!((found_partner.index, found.index), (99, 9_999));
    assert!(partner.customer(10_000).is_none());
    let token = user_token(
        &sim,
        &partner,
        &partner.admin().upn,
        &partner.tenant_id,
        PARTNER_CENTER,
    )
    .await;
    let (status, _, customer) = get(
        sim.partner_center_url()
            .join(&format!("/v1/customers/{}", last.tenant_id))
            .unwrap(),
        &token,
    )
    .await;
    assert_eq!(
        (status, customer["companyProfile"]["companyName"].as_str()),
        (200, Some("Customer 9999 of partner 99"))
    );
    let (_, _, page) = get(
        sim.partner_center_url()
            .join("/v1/customers?size=500")
            .unwrap(),
        &token,
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 500);
    // A customer-tenant token for one of the last customers works through GDAP (9,999 has none).
    let rt = refresh_token(&sim, &partner, &partner.admin().upn).await;
    let last = partner.customer(9_998).unwrap();
    let body = token_call(
        &sim,
        &partner,
        &last.tenant_id,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("resource", GRAPH),
        ],
    )
    .await;
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["tid"],
        last.tenant_id.as_str()
    );
    sim.shutdown().await;
}
