//! Consumes the platform queue (`palisade-queue`) with the notifier's own consumer group on
//! every producer's topic.
//!
//! Messages are pulled in small batches and applied in one transaction per batch (the commit
//! is the cost that matters), then acked. The store dedups on the envelope's message id, so
//! a redelivery after a crash is harmless. A batch that fails is retried message by message,
//! so one malformed event is dead-lettered instead of holding back the others.

use std::{sync::Arc, time::Duration};

use palisade_queue::{Consumer, Delivery, Queue};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{engine::Notifier, error::NotifierError};

/// `[events]`: what the notifier reads. The connection itself is the platform `[queue]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    pub topics: Vec<String>,
    pub consumer_group: String,
    /// Unique per replica; the pod name in Kubernetes.
    pub consumer_name: String,
    /// Messages applied per transaction.
    pub batch: usize,
    /// Consumers per topic in this replica. Order between them is not kept; the store
    /// applies only what happened later (by the producer's time), so that is safe.
    pub consumers_per_topic: usize,
    /// The wait before a failed message is handed out again.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            topics: ["alerts", "tokens", "compliance", "partner-center"]
                .into_iter()
                .map(String::from)
                .collect(),
            consumer_group: "notifier".into(),
            consumer_name: std::env::var("HOSTNAME")
                .unwrap_or_else(|_| format!("notifier-{}", uuid::Uuid::new_v4().simple())),
            batch: 100,
            consumers_per_topic: 4,
            retry_delay: Duration::from_secs(5),
        }
    }
}

/// A batch handed to the applier, and where to say whether it applied.
type Applying = (
    Vec<palisade_contracts::events::v1::Envelope>,
    tokio::sync::oneshot::Sender<bool>,
);

/// Runs one consumer loop per topic until `shutdown`.
pub async fn consume(
    queue: Arc<dyn Queue>,
    settings: EventSettings,
    core: Arc<Notifier>,
    shutdown: CancellationToken,
) {
    // The consumers read concurrently but apply through one task, which takes every batch
    // waiting and applies them in one transaction. Applying them side by side made each
    // transaction wait for the others' group row locks (every batch touches the same busy
    // groups), and flushed and planned each group once per batch instead of once.
    let (applier, batches) = tokio::sync::mpsc::channel::<Applying>(64);
    let applying = tokio::spawn(apply_batches(batches, settings.batch, Arc::clone(&core)));
    let mut loops = tokio::task::JoinSet::new();
    for topic in settings.topics.clone() {
        for i in 0..settings.consumers_per_topic.max(1) {
            let mut own = settings.clone();
            own.consumer_name = format!("{}-{i}", settings.consumer_name);
            loops.spawn(consume_topic(
                Arc::clone(&queue),
                topic.clone(),
                own,
                Arc::clone(&core),
                applier.clone(),
                shutdown.clone(),
            ));
        }
    }
    drop(applier);
    while loops.join_next().await.is_some() {}
    let _ = applying.await;
}

/// Applies the batches waiting, together, until every consumer is gone. A merged batch that
/// fails is reported to each of its consumers, which then settle their messages one by one.
async fn apply_batches(
    mut batches: tokio::sync::mpsc::Receiver<Applying>,
    batch: usize,
    core: Arc<Notifier>,
) {
    let mut waiting = Vec::new();
    // Several consumers' batches per transaction, but not unboundedly many.
    while batches.recv_many(&mut waiting, 8).await > 0 {
        let mut envelopes = Vec::with_capacity(batch.max(1) * waiting.len());
        for (e, _) in &mut waiting {
            envelopes.append(e);
        }
        let applied = core.handle_envelopes(&envelopes).await.is_ok();
        for (_, done) in waiting.drain(..) {
            let _ = done.send(applied);
        }
    }
}

async fn consume_topic(
    queue: Arc<dyn Queue>,
    topic: String,
    settings: EventSettings,
    core: Arc<Notifier>,
    applier: tokio::sync::mpsc::Sender<Applying>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let consumer = queue
            .consumer(&topic, &settings.consumer_group, &settings.consumer_name)
            .await;
        let result = match consumer {
            Ok(mut consumer) => run(&mut *consumer, &settings, &core, &applier, &shutdown).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(topic = %topic, error = %e, "event consumer failed; reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

async fn run(
    consumer: &mut dyn Consumer,
    settings: &EventSettings,
    core: &Notifier,
    applier: &tokio::sync::mpsc::Sender<Applying>,
    shutdown: &CancellationToken,
) -> palisade_queue::Result<()> {
    while !shutdown.is_cancelled() {
        // One round trip takes whatever is waiting, up to a batch; nothing waits for a full one.
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = consumer.next_batch(settings.batch.max(1), Duration::from_millis(500)) => next?,
        };
        if batch.is_empty() {
            continue;
        }
        let envelopes: Vec<_> = batch.iter().map(|d| d.envelope.clone()).collect();
        let (done, applied) = tokio::sync::oneshot::channel();
        // Without an applier (it stopped), or when the batch it was in failed: one by one.
        let applied = applier.send((envelopes, done)).await.is_ok() && applied.await == Ok(true);
        if applied {
            consumer.ack_many(&batch).await?;
        } else {
            for d in &batch {
                settle_one(consumer, settings, core, d).await?;
            }
        }
    }
    Ok(())
}

async fn settle_one(
    consumer: &mut dyn Consumer,
    settings: &EventSettings,
    core: &Notifier,
    delivery: &Delivery,
) -> palisade_queue::Result<()> {
    match core.handle_envelope(&delivery.envelope).await {
        Ok(_) => consumer.ack(delivery).await,
        // A malformed event will never apply: park it instead of retrying forever.
        Err(NotifierError::InvalidArgument(why)) => consumer.dead_letter(delivery, &why).await,
        Err(e) => {
            tracing::warn!(
                message_id = %delivery.envelope.message_id,
                error = %e,
                "event not applied; it will be redelivered"
            );
            consumer.nack(delivery, settings.retry_delay).await
        }
    }
}
