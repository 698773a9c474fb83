//! Everything the notifier persists, behind one trait with one SQL implementation that runs
//! on Postgres and SQLite.
//!
//! The store is the source of truth for what must still be sent: grouping state and the
//! notification log, escalation chains, and a planned row per recipient × channel. Every
//! operation that changes more than one table is one transaction, so a crash at any point
//! leaves either the old state or the new one, never half of a fan-out.

mod migrations;
mod sql;

pub use migrations::MIGRATIONS;
pub use sql::SqlStore;

use palisade_contracts::notify::v1::{
    AdminAgent, ComplianceContact, PartnerSettings, Route, SecurityContact,
};

use crate::error::Result;

/// A channel as stored. The secret stays sealed until the sender needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelRecord {
    pub channel_id: String,
    pub partner_tenant_id: String,
    pub display_name: String,
    pub kind: i32,
    pub target: String,
    pub language: String,
    pub enabled: bool,
    pub disabled_reason: String,
    /// `palisade_crypto::Sealed::to_bytes` of the secret(s), newline-separated when rotating.
    pub secret_sealed: Option<Vec<u8>>,
    pub secret_count: u32,
    /// When the endpoint started failing without a success since; `None` when healthy.
    pub failing_since: Option<i64>,
    pub created_at: i64,
}

impl std::fmt::Debug for ChannelRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelRecord")
            .field("channel_id", &self.channel_id)
            .field("partner_tenant_id", &self.partner_tenant_id)
            .field("kind", &self.kind)
            .field("enabled", &self.enabled)
            .field("secret_count", &self.secret_count)
            .finish_non_exhaustive()
    }
}

/// The latest known state of one alert or finding, for the daily digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemUpdate {
    pub fingerprint: String,
    pub kind: String,
    pub open: bool,
    pub severity: i32,
    pub alert_type: String,
    pub customer_tenant_id: String,
    pub subscription_id: String,
    pub title: String,
}

/// One item joining (or changing inside) a notification group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupAdd {
    pub group_key: String,
    pub route_id: String,
    pub fingerprint: String,
    pub kind: String,
    pub firing: bool,
    pub severity: i32,
    /// JSON of [`crate::events::ItemSummary`].
    pub summary: String,
    pub group_wait_ms: i64,
    pub group_interval_ms: i64,
    pub repeat_interval_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestAdd {
    pub route_id: String,
    pub fingerprint: String,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalationStart {
    pub escalation_id: String,
    pub fingerprint: String,
    /// The frozen chain: an encoded `PartnerSettings` holding only `escalation`.
    pub chain_proto: Vec<u8>,
    pub first_due_at: i64,
    pub context: String,
}

/// Everything one event changes, applied atomically together with its dedup record.
#[derive(Debug, Clone, Default)]
pub struct AppliedEvent {
    pub message_id: String,
    pub partner_tenant_id: String,
    pub now: i64,
    /// When the producer says it happened; 0 when unknown (then `now`).
    pub occurred_at: i64,
    pub item: Option<ItemUpdate>,
    pub groups: Vec<GroupAdd>,
    pub digests: Vec<DigestAdd>,
    pub escalation: Option<EscalationStart>,
    /// The alert closed: any running escalation for this fingerprint ends.
    pub stop_escalation_for: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupItem {
    pub fingerprint: String,
    pub kind: String,
    pub firing: bool,
    pub severity: i32,
    pub summary: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub group_key: String,
    pub partner_tenant_id: String,
    pub route_id: String,
    pub version: i64,
    pub flush_seq: i64,
    pub created_at: i64,
    pub next_flush_at: i64,
    pub last_notified_at: Option<i64>,
    pub last_notified_hash: String,
    pub group_interval_ms: i64,
    pub repeat_interval_ms: i64,
    pub items: Vec<GroupItem>,
}

/// What a group's timer decided, from the group as it stood under its row lock.
#[derive(Debug, Clone)]
pub struct FlushCommit {
    pub now: i64,
    pub deliveries: Vec<NewDelivery>,
    /// Set when a notification went out: the notification log entry.
    pub notified_hash: Option<String>,
    pub firing: i64,
    pub resolved: i64,
    /// `None` closes the group (nothing firing any more).
    pub next_flush_at: Option<i64>,
}

/// Plans a flush from the locked group: `None` writes nothing. It runs inside the store's
/// transaction, so it must not call the store (SQLite has one connection).
pub type FlushDecider<'a> = dyn Fn(&GroupState) -> Result<Option<FlushCommit>> + Send + Sync + 'a;

/// A group that is due, with what planning needs to know before it locks the group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DueGroup {
    pub group_key: String,
    pub partner_tenant_id: String,
    pub route_id: String,
}

/// What a batch of events changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedBatch {
    /// One flag per event, as for `apply_event`: `false` for a message already processed.
    pub fresh: Vec<bool>,
    /// The groups the batch touched that are due at its latest `now` (a zero group wait or
    /// group interval) and were not flushed with it, in key order: the consumer flushes
    /// them at once.
    pub due: Vec<DueGroup>,
    /// Whether it touched groups that are due later: the timer task must look again.
    pub due_later: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalationRow {
    pub escalation_id: String,
    pub partner_tenant_id: String,
    pub fingerprint: String,
    pub chain_proto: Vec<u8>,
    pub started_at: i64,
    pub next_step: u32,
    pub next_due_at: i64,
    pub state: String,
    pub context: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// Deterministic: replaying the same plan inserts nothing new, and it is the outbound
    /// `webhook-id`, so a receiver can dedup a redelivery.
    pub delivery_id: String,
    pub partner_tenant_id: String,
    pub event_id: String,
    pub event_kind: String,
    pub fingerprint: String,
    pub channel_kind: i32,
    pub channel_id: String,
    pub recipient: String,
    pub target: String,
    pub language: String,
    pub subject: String,
    pub body: String,
    pub next_attempt_at: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub delivery: NewDelivery,
    pub status: i32,
    pub attempts: u32,
    /// Attempts made before the last redrive: the retry schedule restarts from here.
    pub retry_base: u32,
    pub last_error: String,
    pub updated_at: i64,
}

/// How many deliveries a claim may take per endpoint (a channel id, or the target of a
/// channel-less delivery), so that what one endpoint cannot take now (it is slow, or its
/// circuit breaker is open) is neither claimed nor put back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointRoom {
    /// For an endpoint not in `listed`; `None` is no limit.
    pub each: Option<u32>,
    /// Endpoints with a room of their own (zero: none of theirs this time).
    pub listed: Vec<(String, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub delivery_id: String,
    pub attempt: u32,
    pub at: i64,
    pub http_status: u32,
    pub error: String,
    pub duration_ms: u32,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered,
    RetryAt(i64),
    Dead,
    Suppressed,
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub statuses: Vec<i32>,
    pub fingerprint: Option<String>,
    pub channel_id: Option<String>,
    pub after: Option<String>,
    pub limit: u32,
}

/// The numbers of Microsoft's daily summary, from the items this service has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestStats {
    pub open_alerts: i64,
    pub customers: i64,
    pub subscriptions: i64,
    pub per_alert_type: Vec<(String, i64)>,
    /// Open alerts first seen more than 24 hours ago: the response-time requirement is missed.
    pub overdue_alerts: i64,
    pub oldest_open_alert_at: Option<i64>,
    pub open_compliance_failures: Vec<String>,
}

#[async_trait::async_trait]
pub trait NotifyStore: Send + Sync + 'static {
    // People.
    async fn set_security_contact(
        &self,
        partner: &str,
        contact: &SecurityContact,
        now: i64,
    ) -> Result<()>;
    async fn get_security_contact(&self, partner: &str) -> Result<Option<SecurityContact>>;
    async fn set_compliance_contact(
        &self,
        partner: &str,
        contact: &ComplianceContact,
        now: i64,
    ) -> Result<()>;
    async fn get_compliance_contact(&self, partner: &str) -> Result<Option<ComplianceContact>>;
    async fn upsert_admin_agent(&self, partner: &str, agent: &AdminAgent, now: i64) -> Result<()>;
    async fn list_admin_agents(
        &self,
        partner: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AdminAgent>>;
    async fn delete_admin_agent(&self, partner: &str, agent_id: &str) -> Result<bool>;

    // Channels.
    async fn insert_channel(&self, channel: &ChannelRecord) -> Result<()>;
    async fn get_channel(&self, partner: &str, channel_id: &str) -> Result<Option<ChannelRecord>>;
    async fn list_channels(
        &self,
        partner: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ChannelRecord>>;
    async fn delete_channel(&self, partner: &str, channel_id: &str) -> Result<bool>;
    async fn disable_channel(&self, channel_id: &str, reason: &str) -> Result<()>;
    async fn update_channel_secret(
        &self,
        channel_id: &str,
        sealed: &[u8],
        count: u32,
    ) -> Result<()>;
    /// Records a failure; returns since when the endpoint has been failing continuously.
    async fn record_channel_failure(&self, channel_id: &str, now: i64) -> Result<i64>;
    async fn record_channel_success(&self, channel_id: &str) -> Result<()>;

    // Routes and settings.
    async fn insert_route(&self, partner: &str, route: &Route, now: i64) -> Result<()>;
    async fn list_routes(&self, partner: &str) -> Result<Vec<Route>>;
    async fn delete_route(&self, partner: &str, route_id: &str) -> Result<bool>;
    async fn set_settings(&self, partner: &str, settings: &PartnerSettings, now: i64)
    -> Result<()>;
    async fn get_settings(&self, partner: &str) -> Result<Option<PartnerSettings>>;
    /// Partners that have settings or have ever had an item: the digest's audience.
    async fn list_digest_partners(&self) -> Result<Vec<String>>;

    // Events, grouping, digest.
    /// Applies an event once: `false` when its message id was already processed.
    async fn apply_event(&self, event: &AppliedEvent) -> Result<bool>;
    /// Applies a batch in one transaction, in order. With `decide`, the groups the batch
    /// made due at its latest `now` are flushed in the same transaction, as
    /// [`NotifyStore::flush_group`] would (the batch already holds their locks); those
    /// `decide` declines are left in [`AppliedBatch::due`].
    async fn apply_events(
        &self,
        events: &[AppliedEvent],
        decide: Option<&FlushDecider<'_>>,
    ) -> Result<AppliedBatch>;
    async fn due_groups(&self, now: i64, limit: u32) -> Result<Vec<DueGroup>>;
    async fn next_group_due(&self) -> Result<Option<i64>>;
    async fn load_group(&self, group_key: &str) -> Result<Option<GroupState>>;
    /// Flushes a group under its row lock: locks and loads it, hands it to `decide` if it is
    /// due at `now`, and commits the decision (flush sequence, notification log, resolved
    /// items leaving, next timer, deliveries) in the same transaction. No event can land
    /// between the read and the commit, so nothing is retried; a second flusher (another
    /// replica, or the timer and a consumer) waits for the lock and then finds the group no
    /// longer due. `true` when a decision was committed.
    async fn flush_group(
        &self,
        group_key: &str,
        now: i64,
        decide: &FlushDecider<'_>,
    ) -> Result<bool>;
    async fn list_digest_items(&self, partner: &str) -> Result<Vec<DigestAdd>>;
    async fn digest_stats(&self, partner: &str, now: i64) -> Result<DigestStats>;
    /// Records the day's digest and plans its deliveries; `false` if that day already ran.
    async fn commit_digest(
        &self,
        partner: &str,
        local_date: &str,
        now: i64,
        deliveries: &[NewDelivery],
    ) -> Result<bool>;

    // Snooze and acknowledgement.
    async fn snooze(&self, partner: &str, fingerprint: &str, until: i64) -> Result<()>;
    async fn snoozed_until(&self, partner: &str, fingerprint: &str) -> Result<Option<i64>>;
    /// The partner's snoozes still running at `now`.
    async fn list_snoozes(&self, partner: &str, now: i64) -> Result<Vec<(String, i64)>>;
    /// Acknowledges and stops escalation; returns how many planned steps were cancelled.
    async fn acknowledge(
        &self,
        partner: &str,
        fingerprint: &str,
        note: &str,
        now: i64,
    ) -> Result<u32>;
    async fn is_acknowledged(&self, partner: &str, fingerprint: &str) -> Result<bool>;

    // Escalation.
    async fn due_escalations(&self, now: i64, limit: u32) -> Result<Vec<EscalationRow>>;
    /// Runs a step only if the chain is still active at `expected_step`; plans its deliveries
    /// and moves the chain on (`next` = `None` ends it).
    async fn commit_escalation_step(
        &self,
        escalation_id: &str,
        expected_step: u32,
        next: Option<(u32, i64)>,
        deliveries: &[NewDelivery],
    ) -> Result<bool>;
    async fn get_escalation(
        &self,
        partner: &str,
        fingerprint: &str,
    ) -> Result<Option<EscalationRow>>;

    // Deliveries.
    async fn insert_deliveries(&self, deliveries: &[NewDelivery]) -> Result<u64>;
    /// Leases up to `limit` due deliveries (including ones whose previous lease expired,
    /// which is how a crashed sender's work is taken over), oldest first, at most as many
    /// per endpoint as `room` allows; the rest are left for a later claim.
    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
        room: &EndpointRoom,
    ) -> Result<Vec<DeliveryRow>>;
    async fn next_delivery_due(&self) -> Result<Option<i64>>;
    async fn record_attempt(
        &self,
        attempt: &AttemptRecord,
        result: AttemptResult,
        now: i64,
    ) -> Result<()>;
    /// Records successful attempts in one transaction (the dispatcher's hot path).
    async fn record_delivered(&self, attempts: &[AttemptRecord], now: i64) -> Result<()>;
    /// Records failed attempts to retry at the given times in one transaction, and marks
    /// `failing_channels` as failing since `now` unless they already were (the dispatcher's
    /// batched path for endpoints that fail).
    async fn record_retrying(
        &self,
        attempts: &[(AttemptRecord, i64)],
        failing_channels: &[String],
        now: i64,
    ) -> Result<()>;
    /// Puts leased deliveries back without counting an attempt (rate limit, a busy endpoint,
    /// an open circuit breaker), each due again at its own time.
    async fn release(&self, rows: &[(&str, i64)], now: i64) -> Result<()>;
    async fn get_delivery(&self, delivery_id: &str) -> Result<Option<DeliveryRow>>;
    async fn list_deliveries(
        &self,
        partner: &str,
        filter: &DeliveryFilter,
    ) -> Result<Vec<(DeliveryRow, Vec<AttemptRecord>)>>;
    async fn redrive(&self, partner: &str, delivery_ids: &[String], now: i64) -> Result<u64>;

    // Metrics.
    /// Disabled channels per (partner, kind), and dead-lettered deliveries, for the gauges.
    async fn metric_counts(&self) -> Result<(Vec<(String, i32, i64)>, i64)>;
}
