//! The loops that drive the core: the poll scheduler (leases per partner and source, so N
//! replicas poll each partner once per interval), the webhook inbox, the write-back consumer
//! and the enrichment sweep. Each ends when `shutdown` is cancelled and leaves whatever it
//! held to expire into another replica's hands.

use std::{sync::Arc, time::Duration};

use palisade_contracts::events::v1::AlertWriteBack;
use palisade_queue::{Consumer, Delivery, Queue};
use prost::Message;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
    engine::Ingestor,
    store::{TOPIC_WRITE_BACK, WriteBackOutcome},
};

/// `[workers]`: pacing of the background loops.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Run the loops at all (off for an API-only replica).
    pub enabled: bool,
    /// This replica's name in leases and consumer groups (the pod name in Kubernetes).
    pub replica: String,
    /// How often due polls, webhooks and enrichments are looked for.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// A poll lease; renewed while the poll runs, so only a dead replica's lease runs out.
    /// Webhook inbox and enrichment claims use it too: a dead replica's work returns after it.
    #[serde(with = "humantime_serde")]
    pub poll_lease: Duration,
    pub max_concurrent_polls: usize,
    /// First retry of a failed write-back; doubles up to `write_back_max_delay`.
    #[serde(with = "humantime_serde")]
    pub write_back_base_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub write_back_max_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub outbox_interval: Duration,
    /// Outbox relays in this replica. Each publishes one batch at a time; on Postgres they take
    /// disjoint batches (`SKIP LOCKED`), so publishing scales past one Redis round trip per
    /// event. Order across relays is not kept: consumers order by the producer's time.
    pub outbox_relays: usize,
    /// Events one relay publishes at once (concurrently; see `outbox`).
    pub outbox_batch: usize,
    /// The wait before a failed enrichment is tried again (Microsoft's `Retry-After` wins).
    #[serde(with = "humantime_serde")]
    pub enrichment_retry: Duration,
    /// How often the per-partner response-time gauges are recomputed from the store.
    #[serde(with = "humantime_serde")]
    pub gauge_interval: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            replica: std::env::var("HOSTNAME")
                .unwrap_or_else(|_| format!("alert-ingest-{}", uuid::Uuid::new_v4().simple())),
            tick: Duration::from_secs(1),
            poll_lease: Duration::from_secs(60),
            max_concurrent_polls: 8,
            write_back_base_delay: Duration::from_secs(5),
            write_back_max_delay: Duration::from_secs(600),
            outbox_interval: Duration::from_millis(500),
            outbox_relays: 2,
            outbox_batch: 500,
            enrichment_retry: Duration::from_secs(300),
            gauge_interval: Duration::from_secs(60),
        }
    }
}

fn lease_ms(settings: &WorkerSettings) -> i64 {
    settings.poll_lease.as_millis() as i64
}

fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    base.saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1).min(20)))
        .min(max)
}

/// Leases due polls and runs them, at most `max_concurrent_polls` at a time.
pub async fn poll_loop(core: Arc<Ingestor>, settings: WorkerSettings, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(settings.max_concurrent_polls.max(1)));
    let lease = settings.poll_lease.as_millis() as i64;
    let mut running = tokio::task::JoinSet::new();
    while !shutdown.is_cancelled() {
        let free = slots.available_permits();
        if free > 0 {
            let now = core.now();
            match core
                .store
                .claim_due_polls(&settings.replica, now, now + lease, free)
                .await
            {
                Ok(claims) => {
                    for claim in claims {
                        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                            break;
                        };
                        let core = Arc::clone(&core);
                        let owner = settings.replica.clone();
                        // Renewed well inside the lease the claim got (at most one interval).
                        let claim_lease = lease.min(claim.interval_ms.max(300));
                        let renew = Duration::from_millis((claim_lease / 3).max(100) as u64);
                        running.spawn(async move {
                            let _permit = permit;
                            let poll = core.poll(&claim);
                            tokio::pin!(poll);
                            let result = loop {
                                tokio::select! {
                                    result = &mut poll => break result,
                                    () = tokio::time::sleep(renew) => {
                                        let until = core.now() + claim_lease;
                                        if !core.store.extend_poll_lease(&claim, &owner, until).await.unwrap_or(true) {
                                            tracing::warn!(partner_tenant_id = %claim.partner_tenant_id, "poll lease lost; another replica took over");
                                        }
                                    }
                                }
                            };
                            if let Err(e) = core.store.finish_poll(&claim, &owner, &result, core.now()).await {
                                tracing::warn!(error = %e, "cannot record a poll; its lease will expire");
                            }
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim polls"),
            }
        }
        while running.try_join_next().is_some() {}
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(settings.tick) => {}
        }
    }
    running.abort_all();
}

/// Works through stored webhooks. The receiver wakes it after each durable write.
pub async fn inbox_loop(
    core: Arc<Ingestor>,
    wake: Arc<Notify>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let now = core.now();
        match core
            .store
            .claim_webhooks(now, now + lease_ms(&settings), 32)
            .await
        {
            Ok(items) if !items.is_empty() => {
                for item in items {
                    if let Err(e) = core.process_webhook(&item).await {
                        let wait = e.retry_after().unwrap_or(backoff(
                            Duration::from_secs(2),
                            Duration::from_secs(600),
                            item.attempts as u32,
                        ));
                        tracing::warn!(inbox_id = %item.inbox_id, error = %e, "webhook not processed yet; will retry");
                        let _ = core
                            .store
                            .retry_webhook(
                                &item.inbox_id,
                                &e.to_string(),
                                core.now() + wait.as_millis() as i64,
                            )
                            .await;
                    }
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot claim webhooks"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep(settings.tick) => {}
        }
    }
}

/// Keeps `palisade_alert_response_seconds_avg30d` and `palisade_alert_unresolved_over_24h` current.
pub async fn gauge_loop(core: Arc<Ingestor>, interval: Duration, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Err(e) = core.refresh_gauges().await {
            tracing::warn!(error = %e, "cannot refresh the response-time gauges");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Enriches new alerts; a failure never blocks ingestion, it is retried later.
pub async fn enrichment_loop(
    core: Arc<Ingestor>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let now = core.now();
        match core
            .store
            .claim_enrichment(now, now + lease_ms(&settings), 50)
            .await
        {
            Ok(alerts) if !alerts.is_empty() => {
                for alert in alerts {
                    if let Err(e) = core.enrich(&alert).await {
                        tracing::debug!(alert_id = %alert.alert_id, error = %e, "enrichment failed; will retry");
                        let wait = e.retry_after().unwrap_or(settings.enrichment_retry);
                        let _ = core
                            .store
                            .enrichment_failed(
                                &alert.alert_id,
                                core.now() + wait.as_millis() as i64,
                            )
                            .await;
                    }
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot claim enrichment"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(settings.tick) => {}
        }
    }
}

/// Consumes write-back commands until Microsoft confirms each. A failed attempt is re-queued
/// with a delay (before the original is acked, so a crash in between duplicates rather than
/// loses it; the handler is idempotent).
pub async fn write_back_loop(
    core: Arc<Ingestor>,
    queue: Arc<dyn Queue>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) {
    let mut pause = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let consumer = queue
            .consumer(TOPIC_WRITE_BACK, "alert-ingest", &settings.replica)
            .await;
        let result = match consumer {
            Ok(mut consumer) => {
                write_back_consume(&core, &*queue, &mut *consumer, &settings, &shutdown).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "write-back consumer failed; reconnecting");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

async fn write_back_consume(
    core: &Ingestor,
    queue: &dyn Queue,
    consumer: &mut dyn Consumer,
    settings: &WorkerSettings,
    shutdown: &CancellationToken,
) -> palisade_queue::Result<()> {
    while !shutdown.is_cancelled() {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = consumer.next_batch(16, Duration::from_millis(500)) => next?,
        };
        for delivery in batch {
            handle_write_back(core, queue, consumer, settings, &delivery).await?;
        }
    }
    Ok(())
}

async fn handle_write_back(
    core: &Ingestor,
    queue: &dyn Queue,
    consumer: &mut dyn Consumer,
    settings: &WorkerSettings,
    delivery: &Delivery,
) -> palisade_queue::Result<()> {
    let Ok(command) = AlertWriteBack::decode(delivery.envelope.payload.as_slice()) else {
        return consumer
            .dead_letter(delivery, "not an AlertWriteBack")
            .await;
    };
    match core.write_back(&command.alert_id).await {
        Ok(WriteBackOutcome::Retrying(reason)) => {
            let mut again = delivery.envelope.clone();
            again.attempt += 1;
            let wait = backoff(
                settings.write_back_base_delay,
                settings.write_back_max_delay,
                again.attempt,
            );
            tracing::info!(alert_id = %command.alert_id, attempt = again.attempt, %reason, wait_ms = wait.as_millis() as u64, "write-back will be retried");
            queue
                .publish_delayed(TOPIC_WRITE_BACK, &again, wait)
                .await?;
            consumer.ack(delivery).await
        }
        Ok(_) => consumer.ack(delivery).await,
        Err(e) => {
            tracing::warn!(alert_id = %command.alert_id, error = %e, "write-back not recorded; redelivering");
            consumer
                .nack(delivery, settings.write_back_base_delay)
                .await
        }
    }
}
