//! The production queue on Redis Streams.
//!
//! Keys of a topic all carry the hash tag `{<prefix>:<topic>}`, so they live in one Redis
//! Cluster slot and the Lua scripts below may touch them together:
//! - `…:stream`: the topic; every consumer group reads it (entries are trimmed by length,
//!   never deleted on ack, because other groups may not have read them yet);
//! - `…:retry:<group>`: redeliveries and retries of one group only, so one group's retry never
//!   duplicates a message for another group;
//! - `…:delayed` and `…:retry-delayed:<group>`: sorted sets of due times, with payloads in
//!   companion hashes, moved into their stream atomically by a Lua script;
//! - `…:dlq:<group>`: dead letters with their reason.

use std::time::Duration;

use palisade_contracts::events::v1::Envelope;
use prost::Message;
use redis::{AsyncCommands, aio::ConnectionManager};
use secrecy::ExposeSecret;

use crate::{
    Consumer, DeadLetter, Delivery, Queue, QueueError, QueueSettings, QueueStats, Result,
    decode_envelope,
};

/// Only `noeviction` guarantees Redis never drops a queue key under memory pressure.
pub fn eviction_policy_is_safe(policy: &str) -> bool {
    policy.eq_ignore_ascii_case("noeviction")
}

const MOVE_DUE: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  local payload = redis.call('HGET', KEYS[2], id)
  if payload then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'e', payload)
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return #ids
";

#[derive(Clone)]
pub struct RedisQueue {
    client: redis::Client,
    /// Shared by publishers and short commands; blocking reads get their own connection.
    conn: ConnectionManager,
    prefix: String,
    visibility_timeout: Duration,
    max_receives: u32,
    max_stream_length: usize,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

struct Keys {
    stream: String,
    delayed: String,
    delayed_payloads: String,
    retry: String,
    retry_delayed: String,
    retry_payloads: String,
    dlq: String,
}

impl RedisQueue {
    /// Connects (reconnecting by itself after a Redis restart) and refuses an eviction
    /// policy that could lose messages.
    pub async fn connect(settings: &QueueSettings) -> Result<Self> {
        let url = settings.redis_url.as_ref().ok_or_else(|| {
            QueueError::Config("queue.redis_url is required with the redis backend".into())
        })?;
        let client = redis::Client::open(url.expose_secret())?;
        let mut conn = ConnectionManager::new(client.clone()).await?;
        let policy: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await;
        match policy {
            Ok(pair) => {
                let value = pair.get(1).cloned().unwrap_or_default();
                if !eviction_policy_is_safe(&value) && !settings.allow_unsafe_eviction_policy {
                    return Err(QueueError::UnsafeEvictionPolicy(value));
                }
            }
            // Managed Redis often disables CONFIG; say so rather than refuse.
            Err(e) => {
                tracing::warn!(error = %e, "cannot read maxmemory-policy; make sure it is noeviction")
            }
        }
        Ok(Self {
            client,
            conn,
            prefix: settings.key_prefix.clone(),
            visibility_timeout: settings.visibility_timeout,
            max_receives: settings.max_receives.max(1),
            max_stream_length: settings.max_stream_length.max(1000),
        })
    }

    fn keys(&self, topic: &str, group: &str) -> Keys {
        let tag = format!("{{{}:{}}}", self.prefix, topic);
        Keys {
            stream: format!("{tag}:stream"),
            delayed: format!("{tag}:delayed"),
            delayed_payloads: format!("{tag}:delayed:payloads"),
            retry: format!("{tag}:retry:{group}"),
            retry_delayed: format!("{tag}:retry-delayed:{group}"),
            retry_payloads: format!("{tag}:retry-delayed:{group}:payloads"),
            dlq: format!("{tag}:dlq:{group}"),
        }
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        // From "0": messages published before the group existed are still delivered.
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn schedule(
        &self,
        zset: &str,
        payloads: &str,
        envelope: &Envelope,
        delay: Duration,
    ) -> Result<()> {
        let mut conn = self.conn.clone();
        let id = uuid::Uuid::new_v4().to_string();
        let due = now_millis() + delay.as_millis() as i64;
        redis::pipe()
            .atomic()
            .hset(payloads, &id, envelope.encode_to_vec())
            .ignore()
            .zadd(zset, &id, due)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn move_due(&self, zset: &str, payloads: &str, stream: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let moved: u64 = redis::Script::new(MOVE_DUE)
            .key(zset)
            .key(payloads)
            .key(stream)
            .arg(now_millis())
            .arg(100)
            .arg(self.max_stream_length)
            .invoke_async(&mut conn)
            .await?;
        Ok(moved)
    }
}

fn now_millis() -> i64 {
    palisade_storage::now_millis()
}

#[async_trait::async_trait]
impl Queue for RedisQueue {
    async fn publish(&self, topic: &str, envelope: &Envelope) -> Result<()> {
        self.publish_batch(&[(topic, envelope)]).await
    }

    /// One pipeline (no MULTI: the events are independent), so a batch costs one round trip
    /// and one request on the multiplexed connection instead of one per event.
    async fn publish_batch(&self, events: &[(&str, &Envelope)]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        // A batch is usually one topic: its key is built once, not per event.
        let mut stream: Option<(&str, String)> = None;
        for (topic, envelope) in events {
            if stream.as_ref().is_none_or(|(t, _)| t != topic) {
                stream = Some((topic, self.keys(topic, "").stream));
            }
            let key = stream.as_ref().map(|(_, k)| k.as_str()).unwrap_or_default();
            pipe.cmd("XADD")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_stream_length)
                .arg("*")
                .arg("e")
                .arg(envelope.encode_to_vec())
                .ignore();
        }
        let mut conn = self.conn.clone();
        let () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    async fn publish_delayed(
        &self,
        topic: &str,
        envelope: &Envelope,
        delay: Duration,
    ) -> Result<()> {
        let keys = self.keys(topic, "");
        self.schedule(&keys.delayed, &keys.delayed_payloads, envelope, delay)
            .await
    }

    async fn consumer(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
    ) -> Result<Box<dyn Consumer>> {
        let keys = self.keys(topic, group);
        self.ensure_group(&keys.stream, group).await?;
        self.ensure_group(&keys.retry, group).await?;
        // XREADGROUP BLOCK holds its connection: on the shared multiplexed connection it
        // would stall every other command, so each consumer reads on its own.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)));
        let reader = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        Ok(Box::new(RedisConsumer {
            buffered: std::collections::VecDeque::new(),
            reader,
            queue: self.clone(),
            keys,
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            last_maintenance: None,
        }))
    }

    async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let keys = self.keys(topic, group);
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply =
            conn.xrange_count(&keys.dlq, "-", "+", limit).await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| {
                let payload: Option<Vec<u8>> = entry.get("e");
                let reason: Option<String> = entry.get("reason");
                DeadLetter {
                    delivery_id: entry.id,
                    reason: reason.unwrap_or_default(),
                    envelope: payload.and_then(|p| decode_envelope(&p).ok()),
                }
            })
            .collect())
    }

    async fn redrive(&self, topic: &str, group: &str) -> Result<u64> {
        let keys = self.keys(topic, group);
        let mut conn = self.conn.clone();
        let mut moved = 0;
        loop {
            let reply: redis::streams::StreamRangeReply =
                conn.xrange_count(&keys.dlq, "-", "+", 100).await?;
            if reply.ids.is_empty() {
                return Ok(moved);
            }
            for entry in reply.ids {
                let payload: Option<Vec<u8>> = entry.get("e");
                let mut pipe = redis::pipe();
                pipe.atomic();
                if let Some(payload) = payload {
                    // A fresh attempt count: redrive means "try again from the start".
                    let bytes = match decode_envelope(&payload) {
                        Ok(mut envelope) => {
                            envelope.attempt = 1;
                            envelope.encode_to_vec()
                        }
                        Err(_) => payload,
                    };
                    pipe.cmd("XADD")
                        .arg(&keys.retry)
                        .arg("*")
                        .arg("e")
                        .arg(bytes)
                        .ignore();
                }
                pipe.cmd("XDEL").arg(&keys.dlq).arg(&entry.id).ignore();
                pipe.query_async::<()>(&mut conn).await?;
                moved += 1;
            }
        }
    }

    async fn stats(&self, topic: &str, group: &str) -> Result<QueueStats> {
        let keys = self.keys(topic, group);
        let mut conn = self.conn.clone();
        let depth: u64 = conn.xlen(&keys.stream).await?;
        let dead_letters: u64 = conn.xlen(&keys.dlq).await?;
        let delayed: u64 = conn.zcard(&keys.delayed).await?;
        let retry_delayed: u64 = conn.zcard(&keys.retry_delayed).await?;
        let mut pending = 0;
        let mut lag = 0;
        for stream in [&keys.stream, &keys.retry] {
            let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
                conn.xinfo_groups(stream).await;
            if let Ok(groups) = groups {
                for g in groups.groups.iter().filter(|g| g.name == group) {
                    pending += g.pending as u64;
                    lag += g.lag.unwrap_or(0) as u64;
                }
            }
        }
        Ok(QueueStats {
            depth,
            pending,
            lag,
            dead_letters,
            delayed: delayed + retry_delayed,
        })
    }
}

struct RedisConsumer {
    /// COUNT applies per stream, so one read over the retry and topic streams may return more
    /// than asked; the surplus is delivered by the next call, never dropped.
    buffered: std::collections::VecDeque<Delivery>,
    reader: ConnectionManager,
    queue: RedisQueue,
    keys: Keys,
    group: String,
    consumer: String,
    last_maintenance: Option<std::time::Instant>,
}

/// Which stream a delivery came from, encoded in its id: "t:<id>" topic, "r:<id>" retry.
fn split_delivery(delivery_id: &str) -> Option<(bool, &str)> {
    let (kind, id) = delivery_id.split_once(':')?;
    Some((kind == "r", id))
}

impl RedisConsumer {
    fn stream_of(&self, retry: bool) -> &str {
        if retry {
            &self.keys.retry
        } else {
            &self.keys.stream
        }
    }

    /// Moves due delayed messages, and reclaims messages whose consumer died.
    async fn maintain(&mut self) -> Result<()> {
        let interval = (self.queue.visibility_timeout / 4).max(Duration::from_millis(50));
        if self
            .last_maintenance
            .is_some_and(|t| t.elapsed() < interval)
        {
            return Ok(());
        }
        self.last_maintenance = Some(std::time::Instant::now());
        self.queue
            .move_due(
                &self.keys.delayed,
                &self.keys.delayed_payloads,
                &self.keys.stream,
            )
            .await?;
        self.queue
            .move_due(
                &self.keys.retry_delayed,
                &self.keys.retry_payloads,
                &self.keys.retry,
            )
            .await?;
        for retry in [false, true] {
            self.reclaim(retry).await?;
        }
        Ok(())
    }

    /// XAUTOCLAIM entries idle longer than the visibility timeout. Each is re-added to this
    /// group's retry stream with attempt + 1 (or dead-lettered), then acknowledged, atomically.
    async fn reclaim(&mut self, retry: bool) -> Result<()> {
        let stream = self.stream_of(retry).to_owned();
        let mut conn = self.queue.conn.clone();
        let min_idle = self.queue.visibility_timeout.as_millis() as u64;
        let result: redis::RedisResult<redis::streams::StreamAutoClaimReply> =
            redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(min_idle)
                .arg("0-0")
                .arg("COUNT")
                .arg(50)
                .query_async(&mut conn)
                .await;
        let claimed = match result {
            Ok(reply) => reply.claimed,
            Err(e) if e.code() == Some("NOGROUP") => {
                self.queue.ensure_group(&stream, &self.group).await?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        for entry in claimed {
            let payload: Option<Vec<u8>> = entry.get("e");
            let mut pipe = redis::pipe();
            pipe.atomic();
            match payload.as_deref().map(decode_envelope) {
                Some(Ok(mut envelope)) if envelope.attempt < self.queue.max_receives => {
                    envelope.attempt += 1;
                    pipe.cmd("XADD")
                        .arg(&self.keys.retry)
                        .arg("*")
                        .arg("e")
                        .arg(envelope.encode_to_vec())
                        .ignore();
                }
                Some(Ok(envelope)) => {
                    let reason = format!(
                        "not acknowledged after {} receives",
                        self.queue.max_receives
                    );
                    pipe.cmd("XADD")
                        .arg(&self.keys.dlq)
                        .arg("*")
                        .arg("e")
                        .arg(envelope.encode_to_vec())
                        .arg("reason")
                        .arg(reason)
                        .ignore();
                }
                Some(Err(reason)) => {
                    pipe.cmd("XADD")
                        .arg(&self.keys.dlq)
                        .arg("*")
                        .arg("e")
                        .arg(payload.clone().unwrap_or_default())
                        .arg("reason")
                        .arg(reason)
                        .ignore();
                }
                None => {}
            }
            pipe.cmd("XACK")
                .arg(&stream)
                .arg(&self.group)
                .arg(&entry.id)
                .ignore();
            if retry {
                pipe.cmd("XDEL").arg(&stream).arg(&entry.id).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
            tracing::debug!(stream = %stream, id = %entry.id, "reclaimed a message from a dead consumer");
        }
        Ok(())
    }

    /// Up to `count` entries (retry stream first), dead-lettering any that do not decode.
    async fn read(&mut self, block: Duration, count: usize) -> Result<Vec<Delivery>> {
        let mut conn = self.reader.clone();
        let result: redis::RedisResult<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.keys.retry)
            .arg(&self.keys.stream)
            .arg(">")
            .arg(">")
            .query_async(&mut conn)
            .await;
        let reply = match result {
            Ok(reply) => reply,
            // After a Redis restart without persistence, or a FLUSH, the groups are gone.
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!(group = %self.group, "consumer group missing (Redis restarted or flushed); recreating");
                self.queue
                    .ensure_group(&self.keys.stream, &self.group)
                    .await?;
                self.queue
                    .ensure_group(&self.keys.retry, &self.group)
                    .await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let mut batch = Vec::new();
        for key in reply.keys {
            let retry = key.key == self.keys.retry;
            for entry in key.ids {
                let delivery_id = format!("{}:{}", if retry { "r" } else { "t" }, entry.id);
                let payload: Option<Vec<u8>> = entry.get("e");
                match payload.as_deref().map(decode_envelope) {
                    Some(Ok(envelope)) => batch.push(Delivery {
                        delivery_id,
                        envelope,
                    }),
                    other => {
                        let reason = match other {
                            Some(Err(reason)) => reason,
                            _ => "entry without an envelope".to_owned(),
                        };
                        tracing::warn!(%reason, "dead-lettering an undecodable message");
                        let mut pipe = redis::pipe();
                        pipe.atomic()
                            .cmd("XADD")
                            .arg(&self.keys.dlq)
                            .arg("*")
                            .arg("e")
                            .arg(payload.unwrap_or_default())
                            .arg("reason")
                            .arg(reason)
                            .ignore()
                            .cmd("XACK")
                            .arg(self.stream_of(retry))
                            .arg(&self.group)
                            .arg(&entry.id)
                            .ignore();
                        pipe.query_async::<()>(&mut conn).await?;
                    }
                }
            }
        }
        Ok(batch)
    }

    async fn settle(
        &mut self,
        delivery: &Delivery,
        also: impl FnOnce(&mut redis::Pipeline),
    ) -> Result<()> {
        let (retry, id) = split_delivery(&delivery.delivery_id)
            .ok_or_else(|| QueueError::UnknownDelivery(delivery.delivery_id.clone()))?;
        let stream = self.stream_of(retry).to_owned();
        let mut conn = self.queue.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic();
        also(&mut pipe);
        pipe.cmd("XACK")
            .arg(&stream)
            .arg(&self.group)
            .arg(id)
            .ignore();
        if retry {
            // Retry streams belong to this group alone, so their entries can go at once.
            pipe.cmd("XDEL").arg(&stream).arg(id).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Consumer for RedisConsumer {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let max = max.max(1);
        if !self.buffered.is_empty() {
            let take = max.min(self.buffered.len());
            return Ok(self.buffered.drain(..take).collect());
        }
        let deadline = std::time::Instant::now() + wait;
        loop {
            self.maintain().await?;
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            // Short blocks, so delayed and reclaimed messages are picked up while waiting.
            let block = remaining.min(Duration::from_millis(250));
            let mut batch = self.read(block, max).await?;
            if batch.len() > max {
                self.buffered.extend(batch.drain(max..));
            }
            if !batch.is_empty() || std::time::Instant::now() >= deadline {
                return Ok(batch);
            }
        }
    }

    async fn ack_many(&mut self, deliveries: &[Delivery]) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut conn = self.queue.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for delivery in deliveries {
            let (retry, id) = split_delivery(&delivery.delivery_id)
                .ok_or_else(|| QueueError::UnknownDelivery(delivery.delivery_id.clone()))?;
            pipe.cmd("XACK")
                .arg(self.stream_of(retry))
                .arg(&self.group)
                .arg(id)
                .ignore();
            if retry {
                pipe.cmd("XDEL").arg(self.stream_of(retry)).arg(id).ignore();
            }
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<()> {
        self.settle(delivery, |_| {}).await
    }

    async fn nack(&mut self, delivery: &Delivery, delay: Duration) -> Result<()> {
        let mut envelope = delivery.envelope.clone();
        envelope.attempt += 1;
        if envelope.attempt > self.queue.max_receives {
            return self.dead_letter(delivery, "retries exhausted").await;
        }
        // Schedule first, then settle: a crash in between leaves a duplicate, never a loss.
        self.queue
            .schedule(
                &self.keys.retry_delayed,
                &self.keys.retry_payloads,
                &envelope,
                delay,
            )
            .await?;
        self.settle(delivery, |_| {}).await
    }

    async fn dead_letter(&mut self, delivery: &Delivery, reason: &str) -> Result<()> {
        let dlq = self.keys.dlq.clone();
        let payload = delivery.envelope.encode_to_vec();
        let reason = reason.to_owned();
        self.settle(delivery, move |pipe| {
            pipe.cmd("XADD")
                .arg(dlq)
                .arg("*")
                .arg("e")
                .arg(payload)
                .arg("reason")
                .arg(reason)
                .ignore();
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_noeviction_is_safe() {
        assert!(eviction_policy_is_safe("noeviction"));
        for policy in [
            "allkeys-lru",
            "volatile-lru",
            "allkeys-random",
            "volatile-ttl",
            "allkeys-lfu",
            "volatile-lfu",
            "",
        ] {
            assert!(!eviction_policy_is_safe(policy), "{policy}");
        }
    }

    #[test]
    fn settings_debug_hides_the_redis_url() {
        let settings = QueueSettings {
            redis_url: Some("redis://:hunter2@r:6379".to_owned().into()),
            ..Default::default()
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
