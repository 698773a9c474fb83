//! The Partner Center webhook receiver: `POST /webhooks/partner-center/{partner_tenant_id}`.
//!
//! It answers fast and does the work after a durable write: verify the signature (401 for
//! anything unsigned, forged or stale, and nothing is stored), refuse oversized bodies (413),
//! store the raw body in the inbox (a replayed body is recognised by its SHA-256 and stored
//! once), answer 200, and wake the inbox worker.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use palisade_microsoft::webhook::{WebhookEvent, WebhookVerifier};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::engine::Ingestor;

#[derive(Clone)]
struct Receiver {
    core: Arc<Ingestor>,
    verifier: Option<Arc<WebhookVerifier>>,
    wake: Arc<Notify>,
}

pub fn router(
    core: Arc<Ingestor>,
    verifier: Option<Arc<WebhookVerifier>>,
    wake: Arc<Notify>,
) -> Router {
    let limit = core.settings.webhook_max_body_bytes;
    Router::new()
        .route(
            "/webhooks/partner-center/{partner_tenant_id}",
            post(receive),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Receiver {
            core,
            verifier,
            wake,
        })
}

async fn receive(
    State(r): State<Receiver>,
    Path(partner): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let refuse = |why: &str| {
        r.core.metrics.webhooks_rejected.inc();
        tracing::warn!(partner_tenant_id = %partner, reason = why, "webhook refused");
        (StatusCode::UNAUTHORIZED, "unauthorized")
    };
    let Some(verifier) = &r.verifier else {
        return refuse("no webhook trust anchors are configured");
    };
    if let Err(e) = verifier.verify(&headers, &body).await {
        return refuse(&e.to_string());
    }
    let Ok(event) = WebhookEvent::parse(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "body is not a Partner Center event",
        );
    };
    let now = r.core.now();
    let max_age = r.core.settings.webhook_max_age.as_millis() as i64;
    match event.resource_change_utc_date.map(|t| t.timestamp_millis()) {
        None => return refuse("event has no ResourceChangeUtcDate"),
        Some(at) if at < now - max_age => return refuse("stale event (replay?)"),
        Some(at) if at > now + 300_000 => return refuse("event dated in the future"),
        Some(_) => {}
    }
    match r.core.store.get_ingestion(&partner).await {
        Ok(Some(_)) => {}
        Ok(None) => return (StatusCode::NOT_FOUND, "unknown partner"),
        Err(e) => {
            tracing::error!(error = %e, "webhook not stored");
            return (StatusCode::SERVICE_UNAVAILABLE, "try again");
        }
    }
    let sha = hex::encode(Sha256::digest(&body));
    match r
        .core
        .store
        .insert_webhook(&partner, &sha, &event.event_name, &body, now)
        .await
    {
        Ok(fresh) => {
            if fresh {
                r.wake.notify_one();
            }
            (StatusCode::OK, if fresh { "accepted" } else { "duplicate" })
        }
        Err(e) => {
            // Partner Center retries: a 503 is better than a 200 for something not stored.
            tracing::error!(error = %e, "webhook not stored");
            (StatusCode::SERVICE_UNAVAILABLE, "try again")
        }
    }
}
