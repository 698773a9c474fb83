//! Shared helpers for the simulator's own tests: consents and tokens over real HTTP.
#![allow(dead_code)]

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ms_sim::{MsSim, SimConfig, scenario::Partner};
use serde_json::Value;

pub async fn sim() -> MsSim {
    ms_sim::start(SimConfig::default()).await.unwrap()
}

pub async fn sim_with(config: SimConfig) -> MsSim {
    ms_sim::start(config).await.unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The consent flow for `upn`, then a v1 code redemption: the user's refresh token.
pub async fn refresh_token(sim: &MsSim, partner: &Partner, upn: &str) -> String {
    let url = format!(
        "{}common/oauth2/authorize?client_id={}&response_type=code&redirect_uri=https%3A%2F%2Fpanel.example%2Fcb&state=s&login_hint={upn}",
        sim.login_url(),
        partner.app.client_id
    );
    let response = http().get(url).send().await.unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let body = token_call(
        sim,
        partner,
        &partner.tenant_id,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("resource", ms_sim::PARTNER_CENTER),
        ],
    )
    .await;
    body["refresh_token"].as_str().unwrap().to_owned()
}

pub async fn token_call(
    sim: &MsSim,
    partner: &Partner,
    tenant: &str,
    form: &[(&str, &str)],
) -> Value {
    let mut body = vec![
        ("client_id", partner.app.client_id.as_str()),
        ("client_secret", partner.app.client_secret.as_str()),
    ];
    body.extend_from_slice(form);
    http()
        .post(format!("{}{tenant}/oauth2/token", sim.login_url()))
        .form(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An App+User access token for `resource` in `tenant` (the partner or a customer).
pub async fn user_token(
    sim: &MsSim,
    partner: &Partner,
    upn: &str,
    tenant: &str,
    resource: &str,
) -> String {
    let rt = refresh_token(sim, partner, upn).await;
    let body = token_call(
        sim,
        partner,
        tenant,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("resource", resource),
        ],
    )
    .await;
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned()
}

/// The partner admin (with MFA): a Partner Center token.
pub async fn admin_pc_token(sim: &MsSim) -> String {
    let partner = sim.scenario().partners[0].clone();
    user_token(
        sim,
        &partner,
        &partner.admin().upn,
        &partner.tenant_id,
        ms_sim::PARTNER_CENTER,
    )
    .await
}

/// An app-only token (client credentials).
pub async fn app_token(sim: &MsSim, partner: &Partner, resource: &str) -> String {
    let body = token_call(
        sim,
        partner,
        &partner.tenant_id,
        &[("grant_type", "client_credentials"), ("resource", resource)],
    )
    .await;
    body["access_token"].as_str().unwrap().to_owned()
}

pub async fn get(url: url::Url, token: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = http().get(url).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
