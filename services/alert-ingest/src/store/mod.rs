//! Everything alert-ingest persists, behind one trait with one SQL implementation that runs on
//! Postgres and SQLite (the platform's decision; see docs/ARCHITECTURE.md).
//!
//! Postgres is the truth. Every change to an alert is one transaction holding the row, its
//! history entry and the outbox rows of the events it implies, so an alert is never stored
//! without its event nor announced without being stored. Work queues that must survive a crash
//! (the webhook inbox, poll schedules, enrichment) are tables too, claimed with leases.

mod migrations;
mod sql;

pub use migrations::MIGRATIONS;
pub use sql::SqlStore;

use palisade_contracts::{
    alerts::v1::{
        Alert, AlertFilter, AlertSortField, AlertSource, AlertTypeSummary, IngestionSettings,
        Resolution,
    },
    common::v1::SortOrder,
    events::v1::Envelope,
};

use crate::{
    error::Result,
    model::{ChangeKind, Observation},
};

/// Topic of the alert lifecycle events.
pub const TOPIC_ALERTS: &str = "alerts";
/// Topic of the internal write-back commands (only alert-ingest reads it).
pub const TOPIC_WRITE_BACK: &str = "alert-write-back";
/// Topic of relationship events announced by Partner Center webhooks.
pub const TOPIC_PARTNER_CENTER: &str = "partner-center";

pub const KIND_WRITE_BACK: &str = "alert.write_back";

/// One alert that an ingest, a resolution or an enrichment changed, and the event it raised.
#[derive(Debug, Clone)]
pub struct Applied {
    pub alert: Alert,
    pub change: ChangeKind,
    pub changed_fields: Vec<String>,
}

/// What an ingest did.
#[derive(Debug, Clone, Default)]
pub struct IngestOutcome {
    pub applied: Vec<Applied>,
    /// Alerts written (new or changed), events or not.
    pub written: usize,
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub filter: AlertFilter,
    pub sort_field: AlertSortField,
    pub sort_order: SortOrder,
    pub page_size: usize,
    pub page_token: String,
    /// Only alerts last observed strictly before this (bulk resolve's "older than").
    pub last_observed_before: Option<i64>,
    /// Leave resolved alerts out regardless of the filter (bulk resolve).
    pub open_only: bool,
}

/// The outcome of a resolve.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub alert: Alert,
    /// False when the alert was already resolved the same way (an idempotent repeat).
    pub changed: bool,
}

/// A write-back attempt's result.
#[derive(Debug, Clone)]
pub enum WriteBackOutcome {
    Confirmed,
    /// Will be retried; the alert stays `PENDING` with the error visible.
    Retrying(String),
    /// Microsoft refused it for good (e.g. 404); the alert shows `FAILED`.
    Failed(String),
}

/// A poll this replica has leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollClaim {
    pub partner_tenant_id: String,
    pub source: AlertSource,
    pub cursor_ms: Option<i64>,
    pub interval_ms: i64,
}

#[derive(Debug, Clone)]
pub struct PollResult {
    pub next_poll_at: i64,
    pub cursor_ms: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct SourceState {
    pub source: i32,
    pub enabled: bool,
    pub cursor_ms: Option<i64>,
    pub last_attempt_at: Option<i64>,
    pub last_success_at: Option<i64>,
    pub last_error: String,
    pub polls: i64,
    pub quarantined: u64,
}

/// A received webhook, durably stored before it was answered.
#[derive(Debug, Clone)]
pub struct InboxItem {
    pub inbox_id: String,
    pub partner_tenant_id: String,
    pub event_name: String,
    pub body: Vec<u8>,
    pub attempts: i64,
}

/// Details fetched from Partner Center for an alert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enrichment {
    pub customer_name: String,
    pub customer_domain: String,
    pub reseller_tenant_id: String,
    pub reseller_name: String,
    pub reseller_mpn_id: String,
    pub subscription_name: String,
}

/// Response times over a window.
#[derive(Debug, Clone, Default)]
pub struct ResponseTimes {
    pub average_ms: f64,
    pub resolved: u64,
    pub breaching: Vec<Alert>,
    pub unresolved_over: u64,
}

#[async_trait::async_trait]
pub trait AlertStore: Send + Sync + std::fmt::Debug {
    async fn migrate(&self) -> Result<usize>;

    /// Applies observations in one transaction: rows, history and the outbox rows of their
    /// events. Idempotent: applying the same observations again writes nothing.
    async fn ingest(&self, batch: &[Observation], now: i64) -> Result<IngestOutcome>;
    /// Keeps a payload that could not be normalised, for audit and a later fix.
    async fn quarantine(
        &self,
        partner_tenant_id: &str,
        source: AlertSource,
        reason: &str,
        payload: &str,
        now: i64,
    ) -> Result<()>;

    async fn get_alert(&self, partner_tenant_id: &str, alert_id: &str) -> Result<Option<Alert>>;
    /// With the history (Microsoft's activity log and our transitions, oldest first).
    async fn get_alert_with_history(
        &self,
        partner_tenant_id: &str,
        alert_id: &str,
    ) -> Result<Option<Alert>>;
    async fn list_alerts(
        &self,
        partner_tenant_id: &str,
        query: &ListQuery,
    ) -> Result<(Vec<Alert>, String)>;
    async fn count_alerts(&self, partner_tenant_id: &str, query: &ListQuery) -> Result<u64>;

    /// Resolves by us: row, history, `alert.resolved` and the write-back command in one
    /// transaction. Repeating the same resolution changes nothing.
    async fn resolve(
        &self,
        partner_tenant_id: &str,
        alert_id: &str,
        resolution: Resolution,
        note: &str,
        actor: &str,
        now: i64,
    ) -> Result<Resolved>;
    /// Any alert, by id, for the write-back worker.
    async fn alert_by_id(&self, alert_id: &str) -> Result<Option<Alert>>;
    async fn record_write_back(
        &self,
        alert_id: &str,
        outcome: &WriteBackOutcome,
        now: i64,
    ) -> Result<Option<Alert>>;

    async fn daily_summary(
        &self,
        partner_tenant_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<AlertTypeSummary>>;
    async fn response_times(
        &self,
        partner_tenant_id: &str,
        from: i64,
        to: i64,
        requirement_ms: i64,
    ) -> Result<ResponseTimes>;

    async fn put_ingestion(
        &self,
        partner_tenant_id: &str,
        settings: &IngestionSettings,
        now: i64,
    ) -> Result<()>;
    async fn get_ingestion(&self, partner_tenant_id: &str) -> Result<Option<IngestionSettings>>;
    /// Every partner with ingestion configured.
    async fn partners(&self) -> Result<Vec<String>>;
    async fn source_states(&self, partner_tenant_id: &str) -> Result<Vec<SourceState>>;
    /// Leases due polls for `owner` until `lease_until` (or one interval, if shorter); another
    /// replica sees them only when the lease has run out.
    async fn claim_due_polls(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<PollClaim>>;
    async fn extend_poll_lease(
        &self,
        claim: &PollClaim,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool>;
    async fn finish_poll(
        &self,
        claim: &PollClaim,
        owner: &str,
        result: &PollResult,
        now: i64,
    ) -> Result<bool>;
    /// The earliest `last_observed_at` of the partner's open alerts known to Graph.
    async fn oldest_open_graph_alert(&self, partner_tenant_id: &str) -> Result<Option<i64>>;

    /// Stores a verified webhook. False when the same body was already received (a replay).
    async fn insert_webhook(
        &self,
        partner_tenant_id: &str,
        body_sha256: &str,
        event_name: &str,
        body: &[u8],
        now: i64,
    ) -> Result<bool>;
    async fn claim_webhooks(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<InboxItem>>;
    /// Marks the item done, publishing `events` in the same transaction.
    async fn finish_webhook(&self, inbox_id: &str, events: &[(&str, Envelope)]) -> Result<()>;
    async fn retry_webhook(&self, inbox_id: &str, error: &str, next_attempt_at: i64) -> Result<()>;
    async fn last_webhook_at(&self, partner_tenant_id: &str) -> Result<Option<i64>>;
    async fn pending_webhooks(&self) -> Result<u64>;

    async fn claim_enrichment(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<Alert>>;
    async fn apply_enrichment(
        &self,
        alert_id: &str,
        enrichment: &Enrichment,
        now: i64,
    ) -> Result<Option<Applied>>;
    async fn enrichment_failed(&self, alert_id: &str, retry_at: i64) -> Result<()>;
    /// A persisted key → (value, time) table: Partner Center details for enrichment, and when
    /// each partner's Graph resync last ran (`graph-resync:{partner}`).
    async fn cache_get(&self, key: &str, fresh_after: i64) -> Result<Option<String>>;
    async fn cache_put(&self, key: &str, value: &str, now: i64) -> Result<()>;
}
