//! The notifier's small public HTTP endpoint: the one-click acknowledgement link, and the
//! liveness probe.
//!
//! GET shows a confirmation button and changes nothing, because mail security scanners
//! (Safe Links and friends) fetch every URL in a message; only the POST it submits
//! acknowledges.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Query, State},
    http::StatusCode,
    response::{Html, IntoResponse},
    routing::get,
};
use serde::Deserialize;

use crate::engine::Notifier;

#[derive(Debug, Deserialize)]
pub struct AckQuery {
    p: String,
    f: String,
    e: i64,
    s: String,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

pub fn router(core: Arc<Notifier>) -> Router {
    Router::new()
        .route("/ack", get(confirm).post(acknowledge))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(core)
}

async fn confirm(
    State(core): State<Arc<Notifier>>,
    Query(q): Query<AckQuery>,
) -> impl IntoResponse {
    if core
        .links()
        .verify(&q.p, &q.f, q.e, &q.s, core.now())
        .is_none()
    {
        return (
            StatusCode::FORBIDDEN,
            Html("<p>This link is invalid or has expired.</p>".to_owned()),
        );
    }
    let page = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>Acknowledge alert</title>\
         <form method=\"post\" action=\"ack?p={p}&amp;f={f}&amp;e={e}&amp;s={s}\">\
         <p>Acknowledge alert <code>{fp}</code> and stop its escalation?</p>\
         <button type=\"submit\">Acknowledge</button></form>",
        p = escape(&urlencode(&q.p)),
        f = escape(&urlencode(&q.f)),
        e = q.e,
        s = escape(&q.s),
        fp = escape(&q.f),
    );
    (StatusCode::OK, Html(page))
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn acknowledge(
    State(core): State<Arc<Notifier>>,
    Query(q): Query<AckQuery>,
) -> impl IntoResponse {
    let now = core.now();
    let Some(claim) = core.links().verify(&q.p, &q.f, q.e, &q.s, now) else {
        return (
            StatusCode::FORBIDDEN,
            Html("<p>This link is invalid or has expired.</p>".to_owned()),
        );
    };
    match core
        .store()
        .acknowledge(
            &claim.partner_tenant_id,
            &claim.fingerprint,
            "acknowledged by link",
            now,
        )
        .await
    {
        Ok(cancelled) => {
            tracing::info!(fingerprint = %claim.fingerprint, cancelled, "alert acknowledged by link");
            (
                StatusCode::OK,
                Html("<p>Acknowledged. Escalation stopped.</p>".to_owned()),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "acknowledgement by link failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Html("<p>Please try again in a minute.</p>".to_owned()),
            )
        }
    }
}
