//! Events that make a partner worth evaluating again soon: a GDAP relationship or DAP changed
//! (Partner Center webhooks through alert-ingest), a token's health changed (the broker), an
//! alert was resolved. Each brings the partner's next scheduled run forward to a short
//! debounce, so a burst of events costs one evaluation. Handling is idempotent, so
//! at-least-once delivery is harmless.

use std::{sync::Arc, time::Duration};

use palisade_queue::Queue;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    pub enabled: bool,
    pub topics: Vec<String>,
    pub consumer_group: String,
    pub consumer_name: String,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            topics: ["partner-center", "tokens", "alerts"]
                .into_iter()
                .map(String::from)
                .collect(),
            consumer_group: "compliance".into(),
            consumer_name: std::env::var("HOSTNAME")
                .unwrap_or_else(|_| format!("compliance-{}", uuid::Uuid::new_v4().simple())),
        }
    }
}

/// The event kinds that trigger a re-evaluation.
pub const TRIGGERS: &[&str] = &[
    "gdap.relationship_changed",
    "dap.relationship_terminated",
    "token.health_changed",
    "alert.resolved",
];

pub async fn consume(
    queue: Arc<dyn Queue>,
    settings: EventSettings,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
) {
    let mut loops = tokio::task::JoinSet::new();
    for topic in settings.topics.clone() {
        let (queue, settings, engine, shutdown) = (
            Arc::clone(&queue),
            settings.clone(),
            Arc::clone(&engine),
            shutdown.clone(),
        );
        loops.spawn(async move {
            let mut backoff = Duration::from_millis(200);
            while !shutdown.is_cancelled() {
                let result = async {
                    let mut consumer = queue
                        .consumer(&topic, &settings.consumer_group, &settings.consumer_name)
                        .await?;
                    while !shutdown.is_cancelled() {
                        let batch = tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            next = consumer.next_batch(100, Duration::from_millis(500)) => next?,
                        };
                        let debounce = engine.settings.event_debounce.as_millis() as i64;
                        for delivery in &batch {
                            let e = &delivery.envelope;
                            if TRIGGERS.contains(&e.kind.as_str()) && !e.partner_tenant_id.is_empty()
                                && let Err(err) = engine.store.run_soon(&e.partner_tenant_id, engine.now() + debounce).await
                            {
                                tracing::warn!(error = %err, "could not bring an evaluation forward");
                                consumer.nack(delivery, Duration::from_secs(5)).await?;
                                continue;
                            }
                            consumer.ack(delivery).await?;
                        }
                    }
                    Ok::<(), palisade_queue::QueueError>(())
                }
                .await;
                if let Err(e) = result {
                    tracing::warn!(topic = %topic, error = %e, "event consumer failed; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        });
    }
    while loops.join_next().await.is_some() {}
}
