//! What every host shares: the request log, fault injection, bearer-token checks, and each
//! host's own error body.
//!
//! Every request is read whole before routing (bodies here are small), so the log can name the
//! grant type and the token's tenant, app, user and MFA even when the handler rejects the call.

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{Host, RequestRecord, Sim, faults::FaultKind};

const BODY_LIMIT: usize = 4 << 20;

#[derive(Clone)]
struct Observed {
    sim: Sim,
    host: Host,
}

/// Wraps a host's router with the request log and fault injection.
pub fn observed(sim: Sim, host: Host, router: Router) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        Observed { sim, host },
        observe,
    ))
}

async fn observe(State(ctx): State<Observed>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return error(
            ctx.host,
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLarge",
            "the body is too large",
        );
    };
    let mut record = RequestRecord {
        at_ms: 0,
        host: ctx.host.name().into(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        tenant: String::new(),
        grant_type: None,
        app_id: None,
        upn: None,
        mfa: None,
        ms_request_id: header_text(&parts.headers, "ms-requestid"),
        status: 0,
    };
    if ctx.host == Host::Login {
        record.tenant = record.path.split('/').nth(1).unwrap_or_default().to_owned();
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
        record.grant_type = form
            .iter()
            .find(|(k, _)| k == "grant_type")
            .map(|(_, v)| v.clone());
        record.app_id = form
            .iter()
            .find(|(k, _)| k == "client_id")
            .map(|(_, v)| v.clone());
    } else if let Some(claims) = bearer(&parts.headers).and_then(crate::jwt::decode_unverified) {
        record.tenant = claims["tid"].as_str().unwrap_or_default().to_owned();
        record.app_id = claims["appid"].as_str().map(str::to_owned);
        record.upn = claims["upn"].as_str().map(str::to_owned);
        record.mfa = claims.get("scp").map(|_| has_mfa(&claims));
    }

    let fault = ctx
        .sim
        .0
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(ctx.host, &record.path, &record.tenant);
    let response = match fault {
        Some(FaultKind::Latency { ms }) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Some(FaultKind::Status { status }) => error(
            ctx.host,
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "ServiceUnavailable",
            "the service is temporarily unavailable (injected fault)",
        ),
        Some(FaultKind::Throttle { retry_after_secs }) => throttled(ctx.host, retry_after_secs),
        Some(FaultKind::Reset) => reset(),
        Some(kind @ (FaultKind::Truncate | FaultKind::Malformed)) => {
            // The handler runs (side effects happen), but its answer arrives damaged.
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            damage(response, &kind).await
        }
        None => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    };
    record.status = response.status().as_u16();
    ctx.sim.log(record);
    response
}

/// A response whose body fails mid-stream: the client sees the connection drop.
fn reset() -> Response {
    let stream = futures::stream::iter([
        Ok(Bytes::from_static(b"{\"val")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected reset",
        )),
    ]);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

async fn damage(response: Response, kind: &FaultKind) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let damaged = match kind {
        FaultKind::Truncate => bytes.slice(..bytes.len() / 2),
        _ => Bytes::from_static(b"{\"value\": [{\"id\": \"7c1e0f2a\", \"status\": active}"),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(damaged))
}

pub fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

pub fn has_mfa(claims: &Value) -> bool {
    claims["amr"]
        .as_array()
        .is_some_and(|amr| amr.iter().any(|m| m == "mfa" || m == "multipleauthn"))
}

/// A token the simulator issued, for this audience, not expired on the simulator's clock.
pub fn verify(sim: &Sim, headers: &HeaderMap, audiences: &[&str]) -> Result<Value, &'static str> {
    let token = bearer(headers).ok_or("no bearer token")?;
    let claims = sim
        .signer()
        .verify(token)
        .ok_or("the token signature is invalid")?;
    let aud = claims["aud"].as_str().unwrap_or_default();
    if !audiences
        .iter()
        .any(|a| a.trim_end_matches('/') == aud.trim_end_matches('/'))
    {
        return Err("the token is for another audience");
    }
    if claims["exp"].as_i64().unwrap_or(0) * 1000 <= sim.now_millis() {
        return Err("the token has expired");
    }
    Ok(claims)
}

/// Whether a user token (`scp`) or an app token (`roles`) grants one of `permissions`.
pub fn grants(claims: &Value, permissions: &[&str]) -> bool {
    let scp = claims["scp"].as_str().unwrap_or_default();
    let roles: Vec<&str> = claims["roles"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    permissions.iter().any(|p| {
        scp.split(' ').any(|s| s.eq_ignore_ascii_case(p))
            || roles.iter().any(|r| r.eq_ignore_ascii_case(p))
    })
}

/// The host's documented error body.
pub fn error(host: Host, status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = match host {
        Host::Login => json!({
            "error": if status == StatusCode::TOO_MANY_REQUESTS { "temporarily_unavailable" } else { "server_error" },
            "error_description": format!("AADSTS90033: {message}"),
            "error_codes": [90033],
            "trace_id": request_id, "correlation_id": request_id,
        }),
        Host::PartnerCenter => json!({
            "code": code, "description": message, "data": [], "source": "PartnerFD",
        }),
        // Vault's error body is a list of messages and nothing else.
        Host::VaultTransit => json!({"errors": [message]}),
        Host::Graph | Host::KeyVault | Host::Certificates => json!({"error": {
            "code": code, "message": message,
            "innerError": {"date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(), "request-id": request_id, "client-request-id": request_id},
        }}),
    };
    let mut response = (status, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

pub fn throttled(host: Host, retry_after_secs: u64) -> Response {
    let mut response = error(
        host,
        StatusCode::TOO_MANY_REQUESTS,
        if host == Host::PartnerCenter {
            "429"
        } else {
            "TooManyRequests"
        },
        "Too many requests. Retry after the interval in the Retry-After header.",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}
