//! The platform's queue and outbox gauges on every service's `/metrics`: what the dashboard and
//! the alert rules read to see a backlog, a stuck consumer or a growing dead-letter queue.
//!
//! Gauges are sampled (every `queue.sample_interval`) rather than updated on each publish or
//! ack, because the numbers live in Redis and the database and are shared by every replica; a
//! per-message update would cost a round trip on the hot path and still be wrong across
//! replicas. Every replica of a service reports the same values, so the dashboard takes `max`
//! over replicas, never `sum`.
//!
//! Labels are the topic and consumer group (a handful per service) and the service name; never
//! a partner, message or replica, so the series stay few.

use std::{sync::Arc, time::Duration};

use palisade_storage::Database;
use palisade_telemetry::Metrics;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
};
use tokio_util::sync::CancellationToken;

use crate::Queue;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    topic: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboxLabels {
    service: String,
}

/// What one service samples: the consumer groups it reads and the outbox it writes.
#[derive(Clone)]
pub struct PlatformSampler {
    service: &'static str,
    queue: Option<Arc<dyn Queue>>,
    /// (topic, consumer group)
    groups: Vec<(String, String)>,
    outbox: Option<Database>,
    depth: Family<QueueLabels, Gauge>,
    pending: Family<QueueLabels, Gauge>,
    lag: Family<QueueLabels, Gauge>,
    dead_letters: Family<QueueLabels, Gauge>,
    outbox_pending: Family<OutboxLabels, Gauge>,
}

impl std::fmt::Debug for PlatformSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformSampler")
            .field("service", &self.service)
            .field("groups", &self.groups)
            .field("outbox", &self.outbox.is_some())
            .finish_non_exhaustive()
    }
}

impl PlatformSampler {
    /// Registers `palisade_queue_depth|pending|lag|dead_letters{topic,group}` and
    /// `palisade_outbox_pending{service}` in `metrics`. Call once per registry.
    pub fn register(metrics: &Metrics, service: &'static str) -> Self {
        let sampler = Self {
            service,
            queue: None,
            groups: Vec::new(),
            outbox: None,
            depth: Family::default(),
            pending: Family::default(),
            lag: Family::default(),
            dead_letters: Family::default(),
            outbox_pending: Family::default(),
        };
        metrics.register(
            "queue_depth",
            "Entries in the topic's stream (retained history included)",
            sampler.depth.clone(),
        );
        metrics.register(
            "queue_pending",
            "Entries delivered to the consumer group and not yet acknowledged",
            sampler.pending.clone(),
        );
        metrics.register(
            "queue_lag",
            "Entries not yet delivered to the consumer group",
            sampler.lag.clone(),
        );
        metrics.register(
            "queue_dead_letters",
            "Entries in the consumer group's dead-letter queue",
            sampler.dead_letters.clone(),
        );
        metrics.register(
            "outbox_pending",
            "Committed outbox rows not yet published to the queue",
            sampler.outbox_pending.clone(),
        );
        sampler
    }

    /// Samples `group`'s view of `topic` on `queue` (the queue every watched group shares).
    #[must_use]
    pub fn watch(mut self, queue: &Arc<dyn Queue>, topic: &str, group: &str) -> Self {
        self.queue = Some(Arc::clone(queue));
        self.groups.push((topic.to_owned(), group.to_owned()));
        self
    }

    /// Samples the rows waiting in this service's outbox table.
    #[must_use]
    pub fn outbox(mut self, database: Database) -> Self {
        self.outbox = Some(database);
        self
    }

    /// Reads every gauge once. A source that fails keeps its last value (and is logged), so a
    /// Redis restart shows as a flat line rather than a drop to zero that would look healthy.
    pub async fn sample_once(&self) {
        if let Some(queue) = &self.queue {
            for (topic, group) in &self.groups {
                match queue.stats(topic, group).await {
                    Ok(stats) => {
                        let labels = QueueLabels {
                            topic: topic.clone(),
                            group: group.clone(),
                        };
                        self.depth.get_or_create(&labels).set(gauge(stats.depth));
                        self.pending
                            .get_or_create(&labels)
                            .set(gauge(stats.pending));
                        self.lag.get_or_create(&labels).set(gauge(stats.lag));
                        self.dead_letters
                            .get_or_create(&labels)
                            .set(gauge(stats.dead_letters));
                    }
                    Err(e) => {
                        tracing::debug!(%topic, %group, error = %e, "queue stats not sampled");
                    }
                }
            }
        }
        if let Some(database) = &self.outbox {
            match crate::outbox::pending(database).await {
                Ok(rows) => {
                    self.outbox_pending
                        .get_or_create(&OutboxLabels {
                            service: self.service.to_owned(),
                        })
                        .set(rows);
                }
                Err(e) => tracing::debug!(error = %e, "outbox rows not sampled"),
            }
        }
    }

    /// Samples at once (so the series exist from start-up), then every `interval` until
    /// `shutdown`.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(100)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => self.sample_once().await,
            }
        }
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
