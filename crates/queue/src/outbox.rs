//! The transactional outbox: a service writes its row and the event in one transaction, and a
//! relay publishes committed events to the queue, deleting them only after the publish
//! succeeded. A crash between commit and publish therefore re-publishes (consumers dedup on
//! `message_id`) and never loses an event, which is where Svix-style "commit, then enqueue"
//! loses messages.

use std::{sync::Arc, time::Duration};

use palisade_contracts::events::v1::Envelope;
use palisade_storage::{Backend, Database, Migration, StorageError, now_millis};
use prost::Message;
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::Queue;

/// Add to the service's own migration list (its version number is the service's choice of
/// slot; 1000 keeps it apart from the service's own migrations).
pub const MIGRATION: Migration = Migration {
    version: 1000,
    description: "outbox",
    postgres: "CREATE TABLE outbox (
        seq BIGSERIAL PRIMARY KEY,
        topic TEXT NOT NULL,
        message_id TEXT NOT NULL,
        envelope BYTEA NOT NULL,
        created_at BIGINT NOT NULL
    )",
    sqlite: "CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        message_id TEXT NOT NULL,
        envelope BLOB NOT NULL,
        created_at BIGINT NOT NULL
    )",
};

/// Inserts an event inside the caller's transaction.
pub async fn enqueue(
    tx: &mut sqlx::AnyConnection,
    topic: &str,
    envelope: &Envelope,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO outbox (topic, message_id, envelope, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(topic)
    .bind(&envelope.message_id)
    .bind(envelope.encode_to_vec())
    .bind(now_millis())
    .execute(tx)
    .await?;
    Ok(())
}

/// Publishes committed outbox rows in order. One per service replica; on Postgres, replicas
/// share the work through `FOR UPDATE SKIP LOCKED`.
#[derive(Clone)]
pub struct OutboxRelay {
    db: Database,
    queue: Arc<dyn Queue>,
    wake: Arc<Notify>,
    batch: i64,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl OutboxRelay {
    pub fn new(db: Database, queue: Arc<dyn Queue>) -> Self {
        Self {
            db,
            queue,
            wake: Arc::new(Notify::new()),
            batch: 200,
        }
    }

    /// Call after committing a transaction that enqueued events: publishes now instead of at
    /// the next poll.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Publishes one batch; returns how many events went out.
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        let mut tx = self.db.pool().begin().await?;
        let select = match self.db.backend() {
            Backend::Postgres => {
                "SELECT seq, topic, envelope FROM outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
            }
            Backend::Sqlite => "SELECT seq, topic, envelope FROM outbox ORDER BY seq LIMIT $1",
        };
        let rows = sqlx::query(select)
            .bind(self.batch)
            .fetch_all(&mut *tx)
            .await?;
        let mut published = 0;
        for row in &rows {
            let seq: i64 = row.get(0);
            let topic: String = row.get(1);
            let bytes: Vec<u8> = row.get(2);
            let envelope = Envelope::decode(bytes.as_slice())?;
            // Publish before delete: if this fails the transaction rolls back and the row stays.
            self.queue.publish(&topic, &envelope).await?;
            sqlx::query("DELETE FROM outbox WHERE seq = $1")
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            published += 1;
        }
        tx.commit().await?;
        Ok(published)
    }

    /// Runs until `shutdown`, polling every `interval` and whenever poked.
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

    /// Rows waiting to be published, for metrics.
    pub async fn pending(&self) -> anyhow::Result<i64> {
        Ok(pending(&self.db).await?)
    }
}

/// Committed rows of `database`'s outbox not yet published (the same SQL on both backends).
/// A growing number means the relay is failing or cannot keep up.
pub async fn pending(database: &Database) -> Result<i64, StorageError> {
    Ok(sqlx::query("SELECT count(*) FROM outbox")
        .fetch_one(database.pool())
        .await?
        .get::<i64, _>(0))
}
