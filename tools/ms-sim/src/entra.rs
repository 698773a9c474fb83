//! Entra ID for every tenant of the scenario: `/authorize`, the v1 (`resource=`) and v2
//! (`scope=`) token endpoints, the JWKS, refresh-token rotation and the documented AADSTS errors.
//!
//! Wire facts followed (see the shared reference, §1): v1 success bodies carry numbers as
//! strings, v2 as numbers; every redemption returns a new refresh token and the old one stays
//! valid; 90 days of inactivity expire a refresh token (700082); error bodies carry `error`,
//! `error_description` beginning `AADSTSnnnn:`, `error_codes`, `timestamp`, `trace_id`,
//! `correlation_id` and `error_uri`.
//!
//! Decision (UNVERIFIED upstream): a partner user without a GDAP relationship asking for a
//! customer-tenant token gets AADSTS50020 (`invalid_grant`); without app consent in the
//! customer, AADSTS65001.

use std::collections::HashMap;

use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;

use crate::Sim;

/// The resource identifiers tokens are minted for (the hosts actually called are local).
pub const PARTNER_CENTER: &str = "https://api.partnercenter.microsoft.com";
pub const GRAPH: &str = "https://graph.microsoft.com";
pub const ARM: &str = "https://management.azure.com/";
pub const KEY_VAULT: &str = "https://vault.azure.net";

const NINETY_DAYS_MS: i64 = 90 * 24 * 3600 * 1000;
const ACCESS_TOKEN_SECONDS: i64 = 3599;

#[derive(Debug, Clone)]
pub(crate) struct RefreshToken {
    pub partner_tenant: String,
    pub client_id: String,
    pub upn: String,
    pub mfa: bool,
    pub last_used_ms: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct AuthCode {
    partner_tenant: String,
    client_id: String,
    upn: String,
    mfa: bool,
    redirect_uri: String,
    used: bool,
}

#[derive(Debug, Default)]
pub(crate) struct EntraState {
    /// Subject (a user's UPN or an app's client id, lower case) → a failure to answer with,
    /// for the next N token requests (None: until cleared).
    pub forced: HashMap<String, (u32, Option<usize>)>,
    pub refresh_tokens: HashMap<String, RefreshToken>,
    codes: HashMap<String, AuthCode>,
    /// Users for whom Conditional Access now demands MFA on every token.
    pub mfa_required: std::collections::HashSet<String>,
    /// Apps whose consent was removed in their home tenant.
    pub consent_removed: std::collections::HashSet<String>,
    /// When a refresh is answered without a new refresh token (as the doc sample shows).
    pub omit_refresh_token_next: usize,
}

pub fn router(sim: Sim) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/authorize", get(authorize))
        .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
        .route("/{tenant}/oauth2/token", post(token_v1))
        .route("/{tenant}/oauth2/v2.0/token", post(token_v2))
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
        .route("/common/discovery/keys", get(jwks))
        .with_state(sim)
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0_u8; 48];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The documented error body.
fn aadsts(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let now = chrono_like_now();
    let trace = uuid::Uuid::new_v4();
    let body = serde_json::json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {trace} Timestamp: {now}"),
        "error_codes": [code],
        "timestamp": now,
        "trace_id": trace,
        "correlation_id": trace,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (status, Json(body)).into_response()
}

fn chrono_like_now() -> String {
    // The token endpoint's timestamp format: "2025-03-04 09:13:00Z".
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[derive(Debug, serde::Deserialize)]
struct AuthorizeQuery {
    client_id: String,
    redirect_uri: String,
    #[serde(default)]
    state: String,
    /// The simulator signs in the scenario user named here (no browser in tests).
    login_hint: Option<String>,
}

async fn authorize(
    State(sim): State<Sim>,
    Path(tenant): Path<String>,
    Query(q): Query<AuthorizeQuery>,
) -> Response {
    let _ = tenant;
    let scenario = sim.scenario();
    let Some(partner) = scenario.partner_by_client(&q.client_id) else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "Application with identifier was not found in the directory.",
        );
    };
    // The users as they are now (a test may have removed someone's MFA registration).
    let users = sim.tenant_users(&partner.tenant_id).unwrap_or_default();
    let user = match &q.login_hint {
        Some(hint) => users.iter().find(|u| u.upn.eq_ignore_ascii_case(hint)),
        None => users.first(),
    };
    let Some(user) = user else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50034,
            "The user account does not exist in the directory.",
        );
    };
    let code = random_token("0.AQ-code-");
    sim.with_entra(|e| {
        e.codes.insert(
            code.clone(),
            AuthCode {
                partner_tenant: partner.tenant_id.clone(),
                client_id: q.client_id.clone(),
                upn: user.upn.clone(),
                // A user registered for MFA performs it; one who is not cannot.
                mfa: user.has_mfa,
                redirect_uri: q.redirect_uri.clone(),
                used: false,
            },
        );
    });
    let separator = if q.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    Redirect::to(&format!(
        "{}{separator}code={}&state={}",
        q.redirect_uri,
        url::form_urlencoded::byte_serialize(code.as_bytes()).collect::<String>(),
        url::form_urlencoded::byte_serialize(q.state.as_bytes()).collect::<String>()
    ))
    .into_response()
}

async fn jwks(State(sim): State<Sim>) -> Response {
    Json(sim.signer().jwks()).into_response()
}

async fn token_v1(
    State(sim): State<Sim>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    token(sim, tenant, form, false).await
}

async fn token_v2(
    State(sim): State<Sim>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    token(sim, tenant, form, true).await
}

/// v1 names a resource; v2 names scopes, which must all belong to one resource.
fn resource_of(form: &HashMap<String, String>, v2: bool) -> Result<(String, String), Response> {
    let known = [PARTNER_CENTER, GRAPH, ARM, KEY_VAULT];
    if v2 {
        let scope = form.get("scope").cloned().unwrap_or_default();
        let resource_scope = scope
            .split(' ')
            .find(|s| s.starts_with("https://"))
            .unwrap_or("");
        let (resource, permission) = resource_scope.rsplit_once('/').unwrap_or(("", ""));
        let resource = if resource == "https://management.azure.com"
            || resource == "https://management.azure.com/"
        {
            ARM.to_owned()
        } else {
            resource.to_owned()
        };
        if !known.contains(&resource.as_str()) {
            return Err(aadsts(
                StatusCode::BAD_REQUEST,
                "invalid_resource",
                500011,
                "The resource principal was not found in the tenant.",
            ));
        }
        Ok((resource, permission.to_owned()))
    } else {
        let resource = form.get("resource").cloned().unwrap_or_default();
        let normalized = if resource == "https://management.azure.com" {
            ARM.to_owned()
        } else {
            resource
        };
        if !known.contains(&normalized.as_str()) {
            return Err(aadsts(
                StatusCode::BAD_REQUEST,
                "invalid_resource",
                500011,
                "The resource principal was not found in the tenant.",
            ));
        }
        Ok((normalized, "user_impersonation".to_owned()))
    }
}

async fn token(sim: Sim, tenant: String, form: HashMap<String, String>, v2: bool) -> Response {
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    token_inner(&sim, &tenant, &form, v2, &grant).await
}

async fn token_inner(
    sim: &Sim,
    tenant: &str,
    form: &HashMap<String, String>,
    v2: bool,
    grant: &str,
) -> Response {
    let scenario = sim.scenario();
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let now = sim.now_millis();
    if client_id == scenario.operator.client_id {
        return operator_token(sim, tenant, form, v2, grant, now);
    }
    let Some(partner) = scenario.partner_by_client(&client_id) else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "Application with identifier was not found in the directory.",
        );
    };
    if let Err(response) = authenticate_client(sim, partner, tenant, form, v2, now) {
        return response;
    }
    if let Some(response) = forced_failure(sim, &client_id) {
        return response;
    }
    let (resource, permission) = match resource_of(form, v2) {
        Ok(r) => r,
        Err(response) => return response,
    };
    // Which tenant the token is for: the partner, or one of its customers.
    let target_tenant = if tenant.eq_ignore_ascii_case(&partner.tenant_id)
        || tenant.eq_ignore_ascii_case(&partner.domain)
        || tenant == "common"
        || tenant == "organizations"
    {
        partner.tenant_id.clone()
    } else if let Some(customer) = sim.customer_of(partner, tenant) {
        if !customer.gdap_usable() {
            return aadsts(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                50020,
                "User account from identity provider does not exist in tenant and cannot access the application in that tenant.",
            );
        }
        if !customer.app_consent {
            return aadsts(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                65001,
                "The user or administrator has not consented to use the application.",
            );
        }
        customer.tenant_id
    } else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            "Tenant not found.",
        );
    };

    let (upn, mfa, partner_tenant) = match grant {
        "authorization_code" => {
            let code = form.get("code").cloned().unwrap_or_default();
            let outcome = sim.with_entra(|e| match e.codes.get_mut(&code) {
                None => Err(aadsts(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70000,
                    "The provided authorization code is invalid or has expired.",
                )),
                Some(c) if c.used => Err(aadsts(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed.",
                )),
                Some(c) if c.client_id != client_id => Err(aadsts(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70000,
                    "The code was issued to another client.",
                )),
                Some(c) => {
                    if form
                        .get("redirect_uri")
                        .is_some_and(|r| *r != c.redirect_uri)
                    {
                        return Err(aadsts(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            50011,
                            "The redirect URI does not match the one in the authorization request.",
                        ));
                    }
                    c.used = true;
                    Ok((c.upn.clone(), c.mfa, c.partner_tenant.clone()))
                }
            });
            match outcome {
                Ok(v) => v,
                Err(r) => return r,
            }
        }
        "refresh_token" => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let outcome = sim.with_entra(|e| {
                let mfa_required = e.mfa_required.clone();
                let consent_removed = e.consent_removed.contains(&client_id);
                match e.refresh_tokens.get_mut(&presented) {
                    None => Err(aadsts(StatusCode::BAD_REQUEST, "invalid_grant", 70008, "The provided authorization code or refresh token has expired due to inactivity.")),
                    Some(rt) if rt.client_id != client_id => Err(aadsts(StatusCode::BAD_REQUEST, "invalid_grant", 70000, "The refresh token was issued to a different client.")),
                    Some(rt) if rt.revoked => Err(aadsts(StatusCode::BAD_REQUEST, "invalid_grant", 50173, "The provided grant has expired due to it being revoked, a fresh auth token is needed.")),
                    Some(rt) if now - rt.last_used_ms > NINETY_DAYS_MS => Err(aadsts(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        700082,
                        "The refresh token has expired due to inactivity. The token was issued on an earlier date and was inactive for 90.00:00:00.",
                    )),
                    Some(rt) if consent_removed => {
                        let _ = rt;
                        Err(aadsts(StatusCode::BAD_REQUEST, "invalid_grant", 65001, "The user or administrator has not consented to use the application."))
                    }
                    Some(rt) if !rt.mfa && mfa_required.contains(&rt.upn) => Err(aadsts(
                        StatusCode::BAD_REQUEST,
                        "interaction_required",
                        50076,
                        "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access the resource.",
                    )),
                    Some(rt) => {
                        rt.last_used_ms = now;
                        Ok((rt.upn.clone(), rt.mfa, rt.partner_tenant.clone()))
                    }
                }
            });
            match outcome {
                Ok(v) => v,
                Err(r) => return r,
            }
        }
        "client_credentials" => {
            // App-only tokens carry application roles and no user.
            let claims = serde_json::json!({
                "aud": resource, "iss": format!("https://sts.windows.net/{target_tenant}/"),
                "tid": target_tenant, "appid": client_id, "roles": ["PartnerSecurity.Read.All"],
                "iat": now / 1000, "nbf": now / 1000, "exp": now / 1000 + ACCESS_TOKEN_SECONDS, "ver": if v2 { "2.0" } else { "1.0" },
            });
            return success(sim, &claims, None, v2, &resource, &permission, now);
        }
        other => {
            return aadsts(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{other}'."),
            );
        }
    };
    if let Some(response) = forced_failure(sim, &upn) {
        return response;
    }
    let scp = scope_claim(sim, &resource, &permission, &client_id);
    let user = scenario
        .partner_by_tenant(&partner_tenant)
        .and_then(|p| p.users.iter().find(|u| u.upn == upn))
        .cloned();
    let object_id = user.map(|u| u.object_id).unwrap_or_default();
    let amr: Vec<&str> = if mfa { vec!["pwd", "mfa"] } else { vec!["pwd"] };
    let claims = serde_json::json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{target_tenant}/"),
        "tid": target_tenant,
        "amr": amr,
        "scp": scp,
        "appid": client_id,
        "upn": upn,
        "oid": object_id,
        "iat": now / 1000, "nbf": now / 1000, "exp": now / 1000 + ACCESS_TOKEN_SECONDS,
        "ver": if v2 { "2.0" } else { "1.0" },
    });
    // Every redemption rotates: a new refresh token, and the old one stays valid.
    let omit = sim.with_entra(|e| {
        if grant == "refresh_token" && e.omit_refresh_token_next > 0 {
            e.omit_refresh_token_next -= 1;
            true
        } else {
            false
        }
    });
    let new_rt = if omit {
        None
    } else {
        let rt = random_token("0.AAAA");
        sim.with_entra(|e| {
            e.refresh_tokens.insert(
                rt.clone(),
                RefreshToken {
                    partner_tenant: partner_tenant.clone(),
                    client_id: client_id.clone(),
                    upn: upn.clone(),
                    mfa,
                    last_used_ms: now,
                    revoked: false,
                },
            );
        });
        Some(rt)
    };
    success(sim, &claims, new_rt, v2, &resource, &permission, now)
}

fn success(
    sim: &Sim,
    claims: &serde_json::Value,
    refresh_token: Option<String>,
    v2: bool,
    resource: &str,
    permission: &str,
    now: i64,
) -> Response {
    let access_token = sim.signer().sign(claims);
    let expires_on = now / 1000 + ACCESS_TOKEN_SECONDS;
    let mut body = if v2 {
        serde_json::json!({
            "token_type": "Bearer", "scope": format!("{resource}/{permission}"),
            "expires_in": ACCESS_TOKEN_SECONDS, "ext_expires_in": ACCESS_TOKEN_SECONDS,
            "access_token": access_token,
        })
    } else {
        // v1 carries its numbers as strings, as the documented samples do.
        serde_json::json!({
            "token_type": "Bearer", "scope": permission,
            "expires_in": ACCESS_TOKEN_SECONDS.to_string(), "ext_expires_in": ACCESS_TOKEN_SECONDS.to_string(),
            "expires_on": expires_on.to_string(), "not_before": (now / 1000).to_string(),
            "resource": resource, "access_token": access_token,
        })
    };
    if let Some(rt) = refresh_token {
        body["refresh_token"] = serde_json::Value::String(rt);
    }
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// The `scp` claim: Graph's `.default` (and v1's resource) stand for every delegated
/// permission the app is consented for; other resources carry the requested permission.
fn scope_claim(sim: &Sim, resource: &str, permission: &str, client_id: &str) -> String {
    if resource == GRAPH && matches!(permission, ".default" | "user_impersonation") {
        sim.graph_permissions(client_id).join(" ")
    } else if permission == ".default" {
        "user_impersonation".to_owned()
    } else {
        permission.to_owned()
    }
}

/// The documented answer for each AADSTS code a test can force.
pub(crate) fn forced_response(code: u32) -> Response {
    let (status, error, description) = match code {
        70043 => (
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The refresh token has expired or is invalid due to sign-in frequency checks by conditional access.",
        ),
        53003 => (
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.",
        ),
        50076 => (
            StatusCode::BAD_REQUEST,
            "interaction_required",
            "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access the resource.",
        ),
        50079 => (
            StatusCode::BAD_REQUEST,
            "interaction_required",
            "Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multi-factor authentication to access the resource.",
        ),
        50173 => (
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
        ),
        700082 => (
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The refresh token has expired due to inactivity. The token was issued on an earlier date and was inactive for 90.00:00:00.",
        ),
        65001 => (
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The user or administrator has not consented to use the application.",
        ),
        530034 => (
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Delegated admin access is blocked due to suspicious activity in the partner tenant.",
        ),
        500011 => (
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            "The resource principal was not found in the tenant.",
        ),
        7000215 => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client secret provided.",
        ),
        7000222 => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The provided client secret keys for the app are expired.",
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The request failed.",
        ),
    };
    aadsts(status, error, code, description)
}

fn forced_failure(sim: &Sim, subject: &str) -> Option<Response> {
    let code = sim.with_entra(|e| {
        let key = subject.to_ascii_lowercase();
        let (code, remaining) = e.forced.get_mut(&key)?;
        let code = *code;
        if let Some(n) = remaining {
            *n = n.saturating_sub(1);
            if *n == 0 {
                e.forced.remove(&key);
            }
        }
        Some(code)
    })?;
    Some(forced_response(code))
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A client secret, or a certificate-signed `client_assertion` (RS256, `x5t` naming the
/// registered certificate, `aud` the token endpoint of this tenant, `iss` = `sub` = client id).
/// Assertion times are checked against the wall clock: they come from the client's clock, not
/// from the simulated one.
fn authenticate_client(
    sim: &Sim,
    partner: &crate::scenario::Partner,
    tenant: &str,
    form: &HashMap<String, String>,
    v2: bool,
    _now: i64,
) -> Result<(), Response> {
    let invalid = |code: u32, description: &str| {
        aadsts(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            code,
            description,
        )
    };
    if let Some(secret) = form.get("client_secret") {
        return if *secret == partner.app.client_secret {
            Ok(())
        } else {
            Err(invalid(7000215, "Invalid client secret provided."))
        };
    }
    let Some(assertion) = form.get("client_assertion") else {
        return Err(invalid(
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };
    if form.get("client_assertion_type").map(String::as_str) != Some(ASSERTION_TYPE) {
        return Err(invalid(
            700027,
            "The client_assertion_type is not supported.",
        ));
    }
    let certificate = partner.app.certificate();
    let mut parts = assertion.split('.');
    let header: serde_json::Value = parts
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|h| serde_json::from_slice(&h).ok())
        .unwrap_or_default();
    if header["alg"] != "RS256" || header["x5t"].as_str() != Some(certificate.x5t.as_str()) {
        return Err(invalid(
            700027,
            "Client assertion contains an invalid signature. The key was not found.",
        ));
    }
    let Some((signing_input, signature)) = assertion.rsplit_once('.') else {
        return Err(invalid(700027, "Client assertion is not a JWT."));
    };
    let verified = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|s| rsa::pkcs1v15::Signature::try_from(s.as_slice()).ok())
        .is_some_and(|signature| {
            use rsa::signature::Verifier;
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(certificate.public_key.clone())
                .verify(signing_input.as_bytes(), &signature)
                .is_ok()
        });
    if !verified {
        return Err(invalid(
            700027,
            "Client assertion failed signature validation.",
        ));
    }
    let claims = crate::jwt::decode_unverified(assertion).unwrap_or_default();
    let client_id = partner.app.client_id.as_str();
    if claims["iss"] != client_id
        || claims["sub"] != client_id
        || claims["jti"].as_str().is_none_or(str::is_empty)
    {
        return Err(invalid(
            700027,
            "Client assertion must carry iss and sub equal to the client id, and a jti.",
        ));
    }
    let endpoint = if v2 {
        "oauth2/v2.0/token"
    } else {
        "oauth2/token"
    };
    let audience_ok = claims["aud"]
        .as_str()
        .and_then(|a| url::Url::parse(a).ok())
        .is_some_and(|aud| {
            let path = aud.path().trim_start_matches('/').to_owned();
            path.eq_ignore_ascii_case(&format!("{tenant}/{endpoint}"))
        });
    if !audience_ok {
        return Err(invalid(
            700021,
            "Client assertion audience claim does not match the token endpoint.",
        ));
    }
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if claims["exp"].as_i64().is_none_or(|exp| exp < wall)
        || claims["nbf"].as_i64().is_some_and(|nbf| nbf > wall + 300)
    {
        return Err(invalid(
            700024,
            "Client assertion is not within its valid time range.",
        ));
    }
    let _ = sim;
    Ok(())
}

/// The operator's own app: client credentials for Key Vault in the operator tenant.
fn operator_token(
    sim: &Sim,
    tenant: &str,
    form: &HashMap<String, String>,
    v2: bool,
    grant: &str,
    now: i64,
) -> Response {
    let operator = &sim.scenario().operator;
    if form.get("client_secret") != Some(&operator.client_secret) {
        return aadsts(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        );
    }
    if grant != "client_credentials" {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700025,
            "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
        );
    }
    if !tenant.eq_ignore_ascii_case(&operator.tenant_id) {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            700016,
            "Application with identifier was not found in the directory.",
        );
    }
    let (resource, permission) = match resource_of(form, v2) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let claims = serde_json::json!({
        "aud": resource, "iss": format!("https://sts.windows.net/{}/", operator.tenant_id),
        "tid": operator.tenant_id, "appid": operator.client_id, "oid": operator.client_id, "roles": [],
        "iat": now / 1000, "nbf": now / 1000, "exp": now / 1000 + ACCESS_TOKEN_SECONDS, "ver": if v2 { "2.0" } else { "1.0" },
    });
    success(sim, &claims, None, v2, &resource, &permission, now)
}
