//! Reading events from Redis Streams with the notifier's own consumer group.
//!
//! This is a deliberately small adapter: the platform queue crate (`palisade-queue`) was not
//! available while the notifier was written. It gives what the notifier relies on:
//! at-least-once delivery with a consumer group, redelivery of entries whose consumer died
//! (`XAUTOCLAIM` after a visibility timeout), a dead-letter stream after N receives, and
//! group re-creation on `NOGROUP`. Entries are acked only after the event's effects are
//! committed; the store dedups on the envelope's message id, so a redelivery is harmless.
//! Entries are never deleted here: other services read the same streams with their own
//! groups.

use std::{sync::Arc, time::Duration};

use palisade_contracts::events::v1::Envelope;
use prost::Message;
use redis::{
    AsyncConnectionConfig,
    aio::MultiplexedConnection,
    streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply},
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{engine::Notifier, error::NotifierError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Empty disables consumption (the gRPC API still works).
    pub redis_url: String,
    pub key_prefix: String,
    pub topics: Vec<String>,
    pub consumer_group: String,
    pub consumer_name: String,
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    pub max_receives: usize,
    pub batch: usize,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            key_prefix: "palisade:".into(),
            topics: ["alerts", "tokens", "compliance", "partner-center"]
                .into_iter()
                .map(String::from)
                .collect(),
            consumer_group: "notifier".into(),
            consumer_name: format!("notifier-{}", uuid::Uuid::new_v4().simple()),
            visibility_timeout: Duration::from_secs(45),
            max_receives: 5,
            batch: 100,
        }
    }
}

/// The stream key of a topic; the hash tag keeps a topic's keys in one Redis Cluster slot.
pub fn stream_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}{{{topic}}}")
}

pub fn dead_letter_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}{{{topic}}}:dlq")
}

async fn connect(
    url: &str,
    response_timeout: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_response_timeout(Some(response_timeout)),
        )
        .await
}

/// Publishes an envelope on a topic (used by tests, the benchmark and the local run).
pub async fn publish(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    topic: &str,
    envelope: &Envelope,
) -> redis::RedisResult<String> {
    redis::cmd("XADD")
        .arg(stream_key(prefix, topic))
        .arg("*")
        .arg("envelope")
        .arg(envelope.encode_to_vec())
        .query_async(conn)
        .await
}

pub struct Consumer {
    settings: QueueSettings,
    core: Arc<Notifier>,
}

impl Consumer {
    pub fn new(settings: QueueSettings, core: Arc<Notifier>) -> Self {
        Self { settings, core }
    }

    async fn ensure_groups(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        for topic in &self.settings.topics {
            // From "0": events published before the notifier's first start are still told.
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream_key(&self.settings.key_prefix, topic))
                .arg(&self.settings.consumer_group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(conn)
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Consumes until `shutdown`; transient Redis failures are retried with a pause.
    pub async fn run(self, shutdown: CancellationToken) {
        let s = &self.settings;
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            let result = self.run_connected(&shutdown).await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "event consumer: redis error, reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        tracing::info!(consumer = %s.consumer_name, "event consumer stopped");
    }

    async fn run_connected(&self, shutdown: &CancellationToken) -> redis::RedisResult<()> {
        let s = &self.settings;
        let block = Duration::from_millis(500);
        // Reads block, so they get their own connection; acks and claims use the other.
        let mut reader = connect(&s.redis_url, block + Duration::from_secs(5)).await?;
        let mut control = connect(&s.redis_url, Duration::from_secs(5)).await?;
        self.ensure_groups(&mut control).await?;
        let keys: Vec<String> = s
            .topics
            .iter()
            .map(|t| stream_key(&s.key_prefix, t))
            .collect();
        let mut last_claim = tokio::time::Instant::now() - s.visibility_timeout;
        while !shutdown.is_cancelled() {
            if last_claim.elapsed() >= s.visibility_timeout / 3 {
                for key in &keys {
                    self.reclaim(&mut control, key).await?;
                }
                last_claim = tokio::time::Instant::now();
            }
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&s.consumer_group)
                .arg(&s.consumer_name)
                .arg("COUNT")
                .arg(s.batch)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS");
            for key in &keys {
                cmd.arg(key);
            }
            for _ in &keys {
                cmd.arg(">");
            }
            let reply: redis::RedisResult<Option<StreamReadReply>> =
                cmd.query_async(&mut reader).await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) if e.code() == Some("NOGROUP") => {
                    // Redis restarted or was flushed: the groups are gone, make them again.
                    self.ensure_groups(&mut control).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(reply) = reply else { continue };
            // The whole read applies in one transaction, in stream order (a resolve never
            // overtakes its raise), then is acked with one XACK per stream.
            let mut envelopes = Vec::new();
            let mut ids: Vec<(String, String)> = Vec::new();
            let mut entries = Vec::new();
            for stream in reply.keys {
                for entry in stream.ids {
                    let bytes: Option<Vec<u8>> = entry.get("envelope");
                    match bytes.map(|b| Envelope::decode(b.as_slice())) {
                        Some(Ok(e)) => {
                            envelopes.push(e);
                            ids.push((stream.key.clone(), entry.id.clone()));
                            entries.push((stream.key.clone(), entry));
                        }
                        _ => {
                            self.dead_letter(&mut control, &stream.key, &entry, "not an envelope")
                                .await?
                        }
                    }
                }
            }
            if envelopes.is_empty() {
                continue;
            }
            // Partners are independent: their events apply in a few concurrent
            // transactions, each partner's events in one of them and in stream order.
            let mut per_partner: std::collections::BTreeMap<&str, Vec<Envelope>> =
                Default::default();
            for e in &envelopes {
                per_partner
                    .entry(e.partner_tenant_id.as_str())
                    .or_default()
                    .push(e.clone());
            }
            let lanes = 8.min(per_partner.len()).max(1);
            let mut chunks: Vec<Vec<Envelope>> = vec![Vec::new(); lanes];
            for (i, (_, events)) in per_partner.into_iter().enumerate() {
                chunks[i % lanes].extend(events);
            }
            let applied =
                futures::future::join_all(chunks.iter().map(|c| self.core.handle_envelopes(c)))
                    .await;
            let outcome = applied.into_iter().collect::<Result<Vec<_>, _>>();
            match outcome {
                Ok(_) => {
                    let mut by_stream: std::collections::BTreeMap<&str, Vec<&str>> =
                        Default::default();
                    for (key, id) in &ids {
                        by_stream.entry(key).or_default().push(id);
                    }
                    for (key, ids) in by_stream {
                        let _: () = redis::cmd("XACK")
                            .arg(key)
                            .arg(&s.consumer_group)
                            .arg(ids)
                            .query_async(&mut control)
                            .await?;
                    }
                }
                // One bad or failing event must not hold back the rest: one at a time.
                Err(_) => {
                    for (key, entry) in &entries {
                        self.handle(&mut control, key, entry).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn reclaim(&self, conn: &mut MultiplexedConnection, key: &str) -> redis::RedisResult<()> {
        let s = &self.settings;
        let reply: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
            .arg(key)
            .arg(&s.consumer_group)
            .arg(&s.consumer_name)
            .arg(s.visibility_timeout.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(s.batch)
            .query_async(conn)
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) if e.code() == Some("NOGROUP") => return self.ensure_groups(conn).await,
            Err(e) => return Err(e),
        };
        for entry in reply.claimed {
            let pending: StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(key)
                .arg(&s.consumer_group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1)
                .query_async(conn)
                .await?;
            let receives = pending.ids.first().map(|p| p.times_delivered).unwrap_or(1);
            if receives > s.max_receives {
                self.dead_letter(conn, key, &entry, "too many receives")
                    .await?;
                continue;
            }
            self.handle(conn, key, &entry).await?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        entry: &StreamId,
    ) -> redis::RedisResult<()> {
        let bytes: Option<Vec<u8>> = entry.get("envelope");
        let envelope = match bytes.map(|b| Envelope::decode(b.as_slice())) {
            Some(Ok(e)) => e,
            _ => return self.dead_letter(conn, key, entry, "not an envelope").await,
        };
        match self.core.handle_envelope(&envelope).await {
            Ok(_) => self.ack(conn, key, &entry.id).await,
            // A malformed event will never apply: park it instead of retrying forever.
            Err(NotifierError::InvalidArgument(why)) => {
                self.dead_letter(conn, key, entry, &why).await
            }
            Err(e) => {
                // Left pending: XAUTOCLAIM hands it out again after the visibility timeout.
                tracing::warn!(message_id = %envelope.message_id, error = %e, "event not applied; will be redelivered");
                Ok(())
            }
        }
    }

    async fn ack(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        id: &str,
    ) -> redis::RedisResult<()> {
        redis::cmd("XACK")
            .arg(key)
            .arg(&self.settings.consumer_group)
            .arg(id)
            .query_async(conn)
            .await
    }

    async fn dead_letter(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        entry: &StreamId,
        why: &str,
    ) -> redis::RedisResult<()> {
        tracing::warn!(stream = key, id = %entry.id, reason = why, "event dead-lettered");
        let topic = key
            .trim_start_matches(&self.settings.key_prefix)
            .trim_matches(['{', '}']);
        let bytes: Option<Vec<u8>> = entry.get("envelope");
        let _: String = redis::cmd("XADD")
            .arg(dead_letter_key(&self.settings.key_prefix, topic))
            .arg("*")
            .arg("envelope")
            .arg(bytes.unwrap_or_default())
            .arg("reason")
            .arg(why)
            .arg("group")
            .arg(&self.settings.consumer_group)
            .query_async(conn)
            .await?;
        self.ack(conn, key, &entry.id).await
    }
}
