//! Partner Center webhooks: events for registered URLs, signed as documented (reference §4):
//! RSA-SHA256 over the raw body, `Authorization: Signature <base64>`,
//! `X-MS-Certificate-Url` and `X-MS-Signature-Algorithm: rsa-sha256`, up to 10 attempts.
//!
//! Each delivery runs on its own task, so a slow receiver delays nobody else. Every attempt is
//! recorded (status or network error), for validation-event status and for tests.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{Sim, scenario::Partner};

/// The event names the registration API accepts (reference §4.2).
pub const EVENT_NAMES: &[&str] = &[
    "azure-fraud-event-detected",
    "dap-admin-relationship-approved",
    "dap-admin-relationship-terminated",
    "dap-admin-relationship-terminated-by-microsoft",
    "reseller-relationship-accepted-by-customer",
    "indirect-reseller-relationship-accepted-by-customer",
    "granular-admin-access-assignment-activated",
    "granular-admin-access-assignment-created",
    "granular-admin-access-assignment-deleted",
    "granular-admin-access-assignment-updated",
    "granular-admin-relationship-activated",
    "granular-admin-relationship-approved",
    "granular-admin-relationship-expired",
    "granular-admin-relationship-terminated",
    "invoice-ready",
    "new-commerce-migration-completed",
    "new-commerce-migration-created",
    "new-commerce-migration-failed",
    "new-commerce-migration-schedule-failed",
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
    "subscription-updated",
    "test-created",
    "usagerecords-thresholdExceeded",
];

const MAX_ATTEMPTS: usize = 10;
const CERTIFICATE_PATH: &str = "/cert/pcnotifications-dispatch.microsoft.com.cer";

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryAttempt {
    pub at_ms: i64,
    /// The receiver's status, or None when the request failed on the network.
    pub status: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WebhookDelivery {
    pub id: u64,
    pub partner_tenant: String,
    pub event_name: String,
    pub url: String,
    /// The exact bytes that were signed and sent.
    pub body: String,
    pub attempts: Vec<DeliveryAttempt>,
    /// No more attempts will be made.
    pub finished: bool,
    pub delivered: bool,
}

pub struct Outbox {
    sender: mpsc::UnboundedSender<u64>,
    deliveries: Arc<Mutex<Vec<WebhookDelivery>>>,
}

impl Outbox {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<u64>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (
            Self {
                sender,
                deliveries: Arc::default(),
            },
            receiver,
        )
    }
}

fn deliveries(sim: &Sim) -> std::sync::MutexGuard<'_, Vec<WebhookDelivery>> {
    sim.0
        .webhooks
        .deliveries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

pub fn certificate_url(sim: &Sim) -> url::Url {
    sim.urls()
        .certificates
        .join(CERTIFICATE_PATH)
        .expect("a constant path joins")
}

/// Queues one event for `url`; returns the delivery id.
pub(crate) fn enqueue(
    sim: &Sim,
    partner: &Partner,
    url: &str,
    event_name: &str,
    resource_uri: Option<&str>,
    resource_name: Option<&str>,
) -> u64 {
    let changed = crate::alerts::seven_digits(sim.now_millis()) + "+00:00";
    let body = serde_json::json!({
        "EventName": event_name,
        "ResourceUri": resource_uri,
        "ResourceName": resource_name,
        "AuditUri": null,
        "ResourceChangeUtcDate": changed,
    })
    .to_string();
    let mut list = deliveries(sim);
    let id = list.len() as u64;
    list.push(WebhookDelivery {
        id,
        partner_tenant: partner.tenant_id.clone(),
        event_name: event_name.to_owned(),
        url: url.to_owned(),
        body,
        attempts: Vec::new(),
        finished: false,
        delivered: false,
    });
    drop(list);
    let _ = sim.0.webhooks.sender.send(id);
    id
}

/// Sends `event_name` to the partner's registered URL, if it registered for that event.
pub(crate) fn emit(
    sim: &Sim,
    partner: &Partner,
    event_name: &str,
    resource_uri: Option<&str>,
    resource_name: Option<&str>,
) -> Option<u64> {
    let registration = sim.with_world(|w| w.registrations.get(&partner.tenant_id).cloned())?;
    registration
        .events
        .iter()
        .any(|e| e == event_name)
        .then(|| {
            enqueue(
                sim,
                partner,
                &registration.url,
                event_name,
                resource_uri,
                resource_name,
            )
        })
}

pub(crate) fn delivery(sim: &Sim, id: u64) -> Option<WebhookDelivery> {
    deliveries(sim).get(id as usize).cloned()
}

pub(crate) fn all_deliveries(sim: &Sim) -> Vec<WebhookDelivery> {
    deliveries(sim).clone()
}

/// The delivery loop: one task per delivery, each with its own retries.
pub(crate) async fn deliver(
    sim: Sim,
    mut queue: mpsc::UnboundedReceiver<u64>,
    shutdown: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("a client without custom TLS builds");
    loop {
        let id = tokio::select! {
            () = shutdown.cancelled() => return,
            next = queue.recv() => match next { Some(id) => id, None => return },
        };
        let (sim, client, stop) = (sim.clone(), client.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = attempt_all(&sim, &client, id) => {}
            }
        });
    }
}

async fn attempt_all(sim: &Sim, client: &reqwest::Client, id: u64) {
    let Some(delivery) = delivery(sim, id) else {
        return;
    };
    let signature = sim.webhook_pki().sign(delivery.body.as_bytes());
    let certificate_url = certificate_url(sim).to_string();
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            let backoff = sim.0.webhook_retry_base * 2_u32.pow(attempt as u32 - 1);
            tokio::time::sleep(backoff.min(Duration::from_secs(30))).await;
        }
        let outcome = client
            .post(&delivery.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Signature {signature}"))
            .header("X-MS-Certificate-Url", &certificate_url)
            .header("X-MS-Signature-Algorithm", "rsa-sha256")
            .body(delivery.body.clone())
            .send()
            .await;
        let record = match &outcome {
            Ok(response) => DeliveryAttempt {
                at_ms: sim.now_millis(),
                status: Some(response.status().as_u16()),
                error: None,
            },
            Err(e) => DeliveryAttempt {
                at_ms: sim.now_millis(),
                status: None,
                error: Some(e.to_string()),
            },
        };
        let delivered = record.status.is_some_and(|s| (200..300).contains(&s));
        let last = delivered || attempt + 1 == MAX_ATTEMPTS;
        if let Some(d) = deliveries(sim).get_mut(id as usize) {
            d.attempts.push(record);
            d.delivered = delivered;
            d.finished = last;
        }
        if last {
            return;
        }
    }
}

/// The storage host that serves the signing certificate (DER), and the root for humans.
pub fn certificate_router(sim: Sim) -> Router {
    Router::new()
        .route(
            CERTIFICATE_PATH,
            get(
                |axum::extract::State(sim): axum::extract::State<Sim>| async move {
                    (
                        [(header::CONTENT_TYPE, "application/pkix-cert")],
                        sim.webhook_pki().signer_der.clone(),
                    )
                        .into_response()
                },
            ),
        )
        .route(
            "/cert/ms-sim-root.pem",
            get(
                |axum::extract::State(sim): axum::extract::State<Sim>| async move {
                    (
                        [(header::CONTENT_TYPE, "application/x-pem-file")],
                        sim.webhook_pki().root_pem.clone(),
                    )
                        .into_response()
                },
            ),
        )
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(sim)
}
