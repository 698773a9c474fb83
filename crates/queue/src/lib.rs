//! The queue between services: a contract with two implementations, Redis Streams
//! (production) and in-process (the embedded default), and the transactional outbox that feeds
//! it without ever losing an event.
//!
//! Semantics both implementations give, and the conformance suite proves:
//! - at-least-once delivery per consumer group; every group sees every message;
//! - a message held by a consumer that died is redelivered after the visibility timeout, with
//!   its `attempt` incremented;
//! - after `max_receives` receives it goes to the group's dead-letter queue, from which it can
//!   be redriven;
//! - delayed messages are delivered no earlier than asked;
//! - envelopes that do not decode are dead-lettered with a reason, never crash a consumer.
//!
//! Consumers must be idempotent on `Envelope.message_id`: at-least-once means duplicates.

mod in_process;
pub mod outbox;
mod redis_streams;
mod sampler;

use std::{sync::Arc, time::Duration};

use palisade_contracts::events::v1::Envelope;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use in_process::InProcessQueue;
pub use redis_streams::{RedisQueue, eviction_policy_is_safe};
pub use sampler::PlatformSampler;

/// The envelope version this build writes and understands.
pub const ENVELOPE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(
        "redis maxmemory-policy is {0:?}, which may evict queue keys and lose messages; set it to \
         noeviction (or set queue.allow_unsafe_eviction_policy if you accept the risk)"
    )]
    UnsafeEvictionPolicy(String),
    #[error("invalid queue configuration: {0}")]
    Config(String),
    #[error("unknown delivery {0}")]
    UnknownDelivery(String),
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    #[default]
    InProcess,
    Redis,
}

/// `[queue]` in every service's config.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    pub backend: Backend,
    #[serde(skip_serializing)]
    pub redis_url: Option<SecretString>,
    /// Every key starts with `{<prefix>:<topic>}`, so a topic's keys share one Redis Cluster slot.
    pub key_prefix: String,
    /// How long a consumer may hold a message before it is redelivered elsewhere.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// Receives before a message is dead-lettered.
    pub max_receives: u32,
    /// Approximate stream length kept for late consumer groups and inspection.
    pub max_stream_length: usize,
    pub allow_unsafe_eviction_policy: bool,
    /// How often `/metrics` re-reads queue depth, pending, lag, dead letters and outbox rows.
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            backend: Backend::InProcess,
            redis_url: None,
            key_prefix: "palisade".into(),
            visibility_timeout: Duration::from_secs(45),
            max_receives: 5,
            max_stream_length: 100_000,
            allow_unsafe_eviction_policy: false,
            sample_interval: Duration::from_secs(15),
        }
    }
}

impl std::fmt::Debug for QueueSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSettings")
            .field("backend", &self.backend)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "[redacted]"))
            .field("key_prefix", &self.key_prefix)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("max_receives", &self.max_receives)
            .field("sample_interval", &self.sample_interval)
            .finish_non_exhaustive()
    }
}

/// A received message. Settle it with the consumer that gave it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The backend's id for this receive (a stream entry id).
    pub delivery_id: String,
    pub envelope: Envelope,
}

impl Delivery {
    /// A span for handling this message, a child of the producer's trace.
    pub fn span(&self, name: &'static str) -> tracing::Span {
        let span = tracing::info_span!("queue.consume", handler = name, kind = %self.envelope.kind, message_id = %self.envelope.message_id, attempt = self.envelope.attempt);
        palisade_telemetry::set_parent_from_map(
            &span,
            &self.envelope.traceparent,
            &self.envelope.tracestate,
        );
        span
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub delivery_id: String,
    pub reason: String,
    pub envelope: Option<Envelope>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages in the topic's stream (including delivered history within the retention).
    pub depth: u64,
    /// Delivered to the group and not yet settled.
    pub pending: u64,
    /// Not yet delivered to the group.
    pub lag: u64,
    pub dead_letters: u64,
    pub delayed: u64,
}

#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    async fn publish(&self, topic: &str, envelope: &Envelope) -> Result<()>;
    /// Publishes several events, as `publish` would one by one; on an error some of them may
    /// have been published (at-least-once, as with any failed publish). Outbox relays use it to
    /// send a batch in one round trip.
    async fn publish_batch(&self, events: &[(&str, &Envelope)]) -> Result<()> {
        for (topic, envelope) in events {
            self.publish(topic, envelope).await?;
        }
        Ok(())
    }
    /// Delivered no earlier than `delay` from now (business retries).
    async fn publish_delayed(
        &self,
        topic: &str,
        envelope: &Envelope,
        delay: Duration,
    ) -> Result<()>;
    /// Joins `group` as `consumer`, creating the group if needed.
    async fn consumer(&self, topic: &str, group: &str, consumer: &str)
    -> Result<Box<dyn Consumer>>;
    async fn dead_letters(&self, topic: &str, group: &str, limit: usize)
    -> Result<Vec<DeadLetter>>;
    /// Moves every dead letter of the group back to the topic, with a fresh attempt count.
    async fn redrive(&self, topic: &str, group: &str) -> Result<u64>;
    async fn stats(&self, topic: &str, group: &str) -> Result<QueueStats>;
}

#[async_trait::async_trait]
pub trait Consumer: Send {
    /// The next message for this group, waiting up to `wait`.
    async fn next(&mut self, wait: Duration) -> Result<Option<Delivery>> {
        Ok(self.next_batch(1, wait).await?.pop())
    }
    /// Up to `max` messages: waits up to `wait` for the first, then takes whatever else is
    /// already there, in one round trip. Consumers that can apply a batch at once should.
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;
    async fn ack(&mut self, delivery: &Delivery) -> Result<()>;
    /// Acknowledges several messages in one round trip.
    async fn ack_many(&mut self, deliveries: &[Delivery]) -> Result<()> {
        for delivery in deliveries {
            self.ack(delivery).await?;
        }
        Ok(())
    }
    /// Gives the message back, to be redelivered after `delay` with attempt + 1.
    async fn nack(&mut self, delivery: &Delivery, delay: Duration) -> Result<()>;
    async fn dead_letter(&mut self, delivery: &Delivery, reason: &str) -> Result<()>;
}

/// Connects the configured backend. In-process queues are shared per key prefix within the
/// process, so the four services of `palisade dev` talk to each other.
pub async fn connect(settings: &QueueSettings) -> Result<Arc<dyn Queue>> {
    match settings.backend {
        Backend::InProcess => Ok(InProcessQueue::shared(settings)),
        Backend::Redis => Ok(Arc::new(RedisQueue::connect(settings).await?)),
    }
}

/// A new envelope for `kind`, carrying the current trace context.
pub fn envelope(kind: &str, partner_tenant_id: &str, payload: &impl prost::Message) -> Envelope {
    let (traceparent, tracestate) = palisade_telemetry::trace_context_map();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Envelope {
        version: ENVELOPE_VERSION,
        message_id: uuid::Uuid::now_v7().to_string(),
        kind: kind.to_owned(),
        attempt: 1,
        traceparent,
        tracestate,
        partner_tenant_id: partner_tenant_id.to_owned(),
        occurred_at: Some(palisade_contracts::time::from_millis(now.as_millis() as i64)),
        payload: payload.encode_to_vec(),
    }
}

/// Decodes bytes read from a queue; anything else is a reason to dead-letter.
pub fn decode_envelope(bytes: &[u8]) -> std::result::Result<Envelope, String> {
    let envelope = <Envelope as prost::Message>::decode(bytes)
        .map_err(|e| format!("undecodable envelope: {e}"))?;
    if envelope.version != ENVELOPE_VERSION {
        return Err(format!("unsupported envelope version {}", envelope.version));
    }
    if envelope.message_id.is_empty() || envelope.kind.is_empty() {
        return Err("envelope without message_id or kind".into());
    }
    Ok(envelope)
}
