//! What the compliance service keeps: evaluations (history, with a lease so one replica runs a
//! partner's evaluation and a crashed one is resumed), their findings, every customer's latest
//! admin-MFA posture, the last known state of each check (to announce changes exactly once),
//! and schedules. One trait, one SQL implementation over both backends.

mod migrations;
mod sql;

use palisade_contracts::compliance::v1::{ComplianceStatus, Finding};

pub use migrations::MIGRATIONS;
pub use sql::SqlStore;

use crate::error::Result;
use crate::model::CustomerPostureRow;

pub const STATE_RUNNING: &str = "running";
pub const STATE_COMPLETE: &str = "complete";
pub const STATE_FAILED: &str = "failed";

/// The queue topic compliance publishes on.
pub const TOPIC: &str = "compliance";
pub const KIND_CHANGED: &str = "compliance.changed";

#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationRecord {
    pub evaluation_id: String,
    pub partner_tenant_id: String,
    pub state: String,
    /// `schedule`, `manual` or `resume`.
    pub trigger: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub lease_owner: String,
    pub lease_until: i64,
    pub customers_total: u64,
    pub customers_done: u64,
    pub customers_failed: u64,
    pub score: Option<f64>,
    pub microsoft_score: Option<f64>,
    pub microsoft_max_score: Option<f64>,
    pub passing: u32,
    pub failing: u32,
    pub warnings: u32,
    pub unknown: u32,
    /// The partner-level checks as the API shows them (complete evaluations only).
    pub status: Option<ComplianceStatus>,
    pub error: Option<String>,
}

/// The outcome of asking to evaluate a partner.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// A new evaluation, leased to the caller.
    Started(EvaluationRecord),
    /// A running evaluation whose owner stopped renewing its lease, now the caller's: the
    /// customers it already evaluated are kept.
    Resumed(EvaluationRecord),
    /// Someone else holds a live lease on the partner's running evaluation.
    Busy(EvaluationRecord),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunProgress {
    pub total: u64,
    pub done: u64,
    pub failed: u64,
}

/// Everything written when an evaluation completes, in one transaction.
#[derive(Debug, Clone)]
pub struct Completion {
    pub evaluation_id: String,
    pub owner: String,
    pub partner_tenant_id: String,
    pub finished_at: i64,
    pub status: ComplianceStatus,
    /// Partner-level findings, then per-customer findings, in report order.
    pub findings: Vec<Finding>,
    pub passing: u32,
    pub failing: u32,
    pub warnings: u32,
    pub unknown: u32,
    pub progress: RunProgress,
    /// Findings of older evaluations beyond this many per partner are pruned (history keeps
    /// the scores).
    pub keep_findings_of: u32,
}

#[derive(Debug, Clone, Default)]
pub struct FindingFilter {
    pub checks: Vec<i32>,
    pub statuses: Vec<i32>,
    pub customer_tenant_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub partner_tenant_id: String,
    pub interval_ms: i64,
    pub enabled: bool,
    pub next_run_at: i64,
    pub updated_at: i64,
}

#[async_trait::async_trait]
#[allow(clippy::too_many_arguments)]
pub trait ComplianceStore: Send + Sync + std::fmt::Debug {
    // --- evaluations
    async fn claim_evaluation(
        &self,
        partner: &str,
        owner: &str,
        trigger: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Claim>;
    /// Extends the lease and records progress; `LeaseLost` if another owner took it.
    async fn renew_lease(
        &self,
        evaluation_id: &str,
        owner: &str,
        progress: RunProgress,
        now: i64,
        lease_ms: i64,
    ) -> Result<()>;
    /// Upserts customers' posture under the evaluation, with the lease check, in one transaction.
    async fn save_customers(
        &self,
        evaluation_id: &str,
        owner: &str,
        partner: &str,
        rows: &[CustomerPostureRow],
        progress: RunProgress,
        now: i64,
        lease_ms: i64,
    ) -> Result<()>;
    /// The customers this evaluation already covered (for a resumed run, and the summary).
    async fn customers_of_evaluation(
        &self,
        partner: &str,
        evaluation_id: &str,
    ) -> Result<Vec<CustomerPostureRow>>;
    /// Every customer's stored posture (the previous evaluations' view, DAP reads included).
    async fn posture_of(&self, partner: &str) -> Result<Vec<CustomerPostureRow>>;
    /// Writes the result, the findings, check states and one `compliance.changed` event per
    /// check that changed, drops customers the partner no longer has, and prunes old findings.
    /// Returns the events enqueued.
    async fn complete_evaluation(
        &self,
        completion: &Completion,
    ) -> Result<Vec<palisade_contracts::events::v1::ComplianceChanged>>;
    async fn fail_evaluation(
        &self,
        evaluation_id: &str,
        owner: &str,
        error: &str,
        now: i64,
    ) -> Result<()>;
    async fn get_evaluation(&self, evaluation_id: &str) -> Result<Option<EvaluationRecord>>;
    async fn latest_complete(&self, partner: &str) -> Result<Option<EvaluationRecord>>;
    /// Running evaluations whose lease ended (their owner died), oldest first.
    async fn abandoned(&self, now: i64, limit: i64) -> Result<Vec<EvaluationRecord>>;

    // --- queries
    /// Findings of one evaluation in report order, after `after_seq`.
    async fn list_findings(
        &self,
        evaluation_id: &str,
        filter: &FindingFilter,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Finding)>>;
    /// Complete evaluations in `[start, end)`, newest first, before the `(finished_at, id)` cursor.
    async fn history(
        &self,
        partner: &str,
        start: Option<i64>,
        end: Option<i64>,
        before: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<EvaluationRecord>>;
    /// Customers' posture ordered by tenant id, after the cursor, and how many match in all.
    async fn list_posture(
        &self,
        partner: &str,
        statuses: &[i32],
        after: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<CustomerPostureRow>, u64)>;

    // --- schedules
    async fn set_schedule(
        &self,
        partner: &str,
        interval_ms: i64,
        enabled: bool,
        next_run_at: i64,
        now: i64,
    ) -> Result<Schedule>;
    /// Creates a schedule with these values unless the partner already has one.
    async fn ensure_schedule(
        &self,
        partner: &str,
        interval_ms: i64,
        next_run_at: i64,
        now: i64,
    ) -> Result<Schedule>;
    async fn get_schedule(&self, partner: &str) -> Result<Option<Schedule>>;
    async fn due_schedules(&self, now: i64, limit: i64) -> Result<Vec<Schedule>>;
    /// Moves `next_run_at` from `expected` to `next`; false if another replica got there first.
    async fn claim_schedule(&self, partner: &str, expected: i64, next: i64) -> Result<bool>;
    /// Brings the next run forward to `at` (an event says something changed).
    async fn run_soon(&self, partner: &str, at: i64) -> Result<()>;
}
