//! alert-ingest's outbox relay: the platform's contract (`palisade_queue::outbox`: publish
//! committed rows, delete them only after the publish returned, share the work between replicas
//! with `SKIP LOCKED`), tuned for alert volume.
//!
//! `palisade_queue::outbox::OutboxRelay` publishes one event at a time, in order: two round
//! trips per event (XADD, then DELETE), which caps a replica at a few thousand events per
//! second. Here a batch is taken and deleted by one statement and published as one pipeline
//! (`Queue::publish_batch`), committed after the publish returned. Consumers do not rely on
//! order across batches: every consumer already applies events by the producer's time and
//! dedups on `message_id` (several replicas' relays never kept a global order either). A failed
//! publish rolls the batch back; events already published are published again later, which
//! at-least-once delivery allows.

use std::{sync::Arc, time::Duration};

use palisade_contracts::events::v1::Envelope;
use palisade_queue::Queue;
use palisade_storage::{Backend, Database};
use prost::Message;
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct BatchRelay {
    db: Database,
    queue: Arc<dyn Queue>,
    wake: Arc<Notify>,
    batch: i64,
}

impl std::fmt::Debug for BatchRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchRelay")
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl BatchRelay {
    pub fn new(db: Database, queue: Arc<dyn Queue>, batch: usize) -> Self {
        Self {
            db,
            queue,
            wake: Arc::new(Notify::new()),
            batch: batch.max(1) as i64,
        }
    }

    /// After a commit that enqueued events: publish now rather than at the next tick.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Publishes one batch; returns how many events went out.
    ///
    /// The batch is taken and deleted by one statement, in a transaction that commits only
    /// after the publish returned: a failed publish (or a crash before the commit) rolls the
    /// delete back and the rows stay for the next round, so "publish before delete" holds for
    /// what is committed. One statement instead of a SELECT and a DELETE by a list of seqs
    /// saves a round trip and a second lookup of every row.
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        let mut tx = self.db.pool().begin().await?;
        let take = match self.db.backend() {
            Backend::Postgres => {
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING seq, topic, envelope"
            }
            Backend::Sqlite => {
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT $1) \
                 RETURNING seq, topic, envelope"
            }
        };
        let rows = sqlx::query(take)
            .bind(self.batch)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let topic: String = row.get(1);
            let bytes: Vec<u8> = row.get(2);
            events.push((
                row.get::<i64, _>(0),
                topic,
                Envelope::decode(bytes.as_slice())?,
            ));
        }
        // RETURNING has no order; the batch goes out in the order it was written.
        events.sort_unstable_by_key(|(seq, _, _)| *seq);
        let batch: Vec<(&str, &Envelope)> = events
            .iter()
            .map(|(_, topic, envelope)| (topic.as_str(), envelope))
            .collect();
        self.queue.publish_batch(&batch).await?;
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Runs until `shutdown`, every `interval` and whenever poked; a full batch goes again at once.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut backoff = interval;
        loop {
            match self.relay_once().await {
                Ok(n) if n as i64 >= self.batch => continue,
                Ok(_) => backoff = interval,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay failed; events stay in the outbox and are retried");
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// Events waiting to be published.
    pub async fn pending(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query("SELECT count(*) FROM outbox")
            .fetch_one(self.db.pool())
            .await?
            .get::<i64, _>(0))
    }
}
