//! [`ComplianceStore`] over sqlx's `Any` driver: one set of queries for Postgres and SQLite.

use std::collections::HashMap;

use palisade_contracts::compliance::v1::{CheckStatus, ComplianceStatus, Finding};
use palisade_contracts::events::v1::ComplianceChanged;
use palisade_storage::Database;
use prost::Message;
use sqlx::{Row, any::AnyRow};

use super::*;
use crate::error::ComplianceError;

#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Database,
}

impl SqlStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn migrate(&self) -> Result<usize> {
        Ok(self.db.migrate(MIGRATIONS).await?)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    fn pool(&self) -> &sqlx::AnyPool {
        self.db.pool()
    }
}

const EVALUATION_COLUMNS: &str = "evaluation_id, partner_tenant_id, state, trigger, started_at, \
    finished_at, lease_owner, lease_until, customers_total, customers_done, customers_failed, \
    score, microsoft_score, microsoft_max_score, passing, failing, warnings, unknown, status, error";

fn evaluation_from_row(r: &AnyRow) -> Result<EvaluationRecord> {
    let status: Option<Vec<u8>> = r.get("status");
    Ok(EvaluationRecord {
        evaluation_id: r.get("evaluation_id"),
        partner_tenant_id: r.get("partner_tenant_id"),
        state: r.get("state"),
        trigger: r.get("trigger"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
        lease_owner: r.get("lease_owner"),
        lease_until: r.get("lease_until"),
        customers_total: r.get::<i64, _>("customers_total") as u64,
        customers_done: r.get::<i64, _>("customers_done") as u64,
        customers_failed: r.get::<i64, _>("customers_failed") as u64,
        score: r.get("score"),
        microsoft_score: r.get("microsoft_score"),
        microsoft_max_score: r.get("microsoft_max_score"),
        passing: r.get::<i64, _>("passing") as u32,
        failing: r.get::<i64, _>("failing") as u32,
        warnings: r.get::<i64, _>("warnings") as u32,
        unknown: r.get::<i64, _>("unknown") as u32,
        status: status
            .map(|b| ComplianceStatus::decode(b.as_slice()))
            .transpose()?,
        error: r.get("error"),
    })
}

fn posture_from_row(r: &AnyRow) -> CustomerPostureRow {
    let without: String = r.get("admins_without_mfa");
    CustomerPostureRow {
        customer_tenant_id: r.get("customer_tenant_id"),
        display_name: r.get("display_name"),
        status: CheckStatus::try_from(r.get::<i64, _>("status") as i32)
            .unwrap_or(CheckStatus::Unknown),
        mechanism: r.get("mechanism"),
        admins_total: r.get::<i64, _>("admins_total") as u32,
        admins_with_mfa: r.get::<i64, _>("admins_with_mfa") as u32,
        detail: r.get("detail"),
        admins_without_mfa: without
            .split('\n')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        evaluated_at: r.get("evaluated_at"),
        dap: match r.get::<i64, _>("dap") {
            1 => Some(true),
            0 => Some(false),
            _ => None,
        },
        dap_checked_at: r.get("dap_checked_at"),
    }
}

fn schedule_from_row(r: &AnyRow) -> Schedule {
    Schedule {
        partner_tenant_id: r.get("partner_tenant_id"),
        interval_ms: r.get("interval_ms"),
        enabled: r.get::<i64, _>("enabled") != 0,
        next_run_at: r.get("next_run_at"),
        updated_at: r.get("updated_at"),
    }
}

/// `($1,$2,…),($n+1,…)` for `rows` rows of `cols` placeholders.
fn placeholders(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let cells: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
            format!("({})", cells.join(","))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a check moving from `previous` to `new` is news: the first sight of a failure is,
/// the first sight of a pass is not, and `unknown` (absence of evidence) never is, nor does it
/// overwrite the last known state.
pub fn is_change(previous: Option<CheckStatus>, new: CheckStatus) -> bool {
    match (previous, new) {
        (_, CheckStatus::Unknown | CheckStatus::Unspecified) => false,
        (None, CheckStatus::Pass) => false,
        (None, _) => true,
        (Some(p), n) => p != n,
    }
}

const POSTURE_CHUNK: usize = 200;
const FINDING_CHUNK: usize = 300;

#[async_trait::async_trait]
impl ComplianceStore for SqlStore {
    async fn claim_evaluation(
        &self,
        partner: &str,
        owner: &str,
        trigger: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Claim> {
        let running = sqlx::query(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE partner_tenant_id = $1 AND state = $2"
        ))
        .bind(partner)
        .bind(STATE_RUNNING)
        .fetch_optional(self.pool())
        .await?;
        if let Some(row) = running {
            let mut record = evaluation_from_row(&row)?;
            if record.lease_until > now && record.lease_owner != owner {
                return Ok(Claim::Busy(record));
            }
            // Compare-and-set on the old lease: of two replicas resuming at once, one wins.
            let taken = sqlx::query(
                "UPDATE evaluations SET lease_owner = $1, lease_until = $2 \
                 WHERE evaluation_id = $3 AND lease_owner = $4 AND lease_until = $5 AND state = $6",
            )
            .bind(owner)
            .bind(now + lease_ms)
            .bind(&record.evaluation_id)
            .bind(&record.lease_owner)
            .bind(record.lease_until)
            .bind(STATE_RUNNING)
            .execute(self.pool())
            .await?
            .rows_affected();
            if taken == 0 {
                return Ok(Claim::Busy(record));
            }
            record.lease_owner = owner.to_owned();
            record.lease_until = now + lease_ms;
            return Ok(Claim::Resumed(record));
        }
        let evaluation_id = uuid::Uuid::now_v7().to_string();
        let inserted = sqlx::query(
            "INSERT INTO evaluations (evaluation_id, partner_tenant_id, state, trigger, started_at, \
             lease_owner, lease_until) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(&evaluation_id)
        .bind(partner)
        .bind(STATE_RUNNING)
        .bind(trigger)
        .bind(now)
        .bind(owner)
        .bind(now + lease_ms)
        .execute(self.pool())
        .await;
        match inserted {
            Ok(_) => {}
            // The one-running-per-partner index: another replica started first.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return match self.claim_evaluation_busy(partner).await? {
                    Some(r) => Ok(Claim::Busy(r)),
                    None => Err(ComplianceError::Busy(partner.to_owned())),
                };
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Claim::Started(
            self.get_evaluation(&evaluation_id)
                .await?
                .ok_or_else(|| ComplianceError::NotFound("evaluation".into()))?,
        ))
    }

    async fn renew_lease(
        &self,
        evaluation_id: &str,
        owner: &str,
        progress: RunProgress,
        now: i64,
        lease_ms: i64,
    ) -> Result<()> {
        let n = sqlx::query(
            "UPDATE evaluations SET lease_until = $1, customers_total = $2, customers_done = $3, \
             customers_failed = $4 WHERE evaluation_id = $5 AND lease_owner = $6 AND state = $7",
        )
        .bind(now + lease_ms)
        .bind(progress.total as i64)
        .bind(progress.done as i64)
        .bind(progress.failed as i64)
        .bind(evaluation_id)
        .bind(owner)
        .bind(STATE_RUNNING)
        .execute(self.pool())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(ComplianceError::LeaseLost(evaluation_id.to_owned()));
        }
        Ok(())
    }

    async fn save_customers(
        &self,
        evaluation_id: &str,
        owner: &str,
        partner: &str,
        rows: &[CustomerPostureRow],
        progress: RunProgress,
        now: i64,
        lease_ms: i64,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query(
            "UPDATE evaluations SET lease_until = $1, customers_total = $2, customers_done = $3, \
             customers_failed = $4 WHERE evaluation_id = $5 AND lease_owner = $6 AND state = $7",
        )
        .bind(now + lease_ms)
        .bind(progress.total as i64)
        .bind(progress.done as i64)
        .bind(progress.failed as i64)
        .bind(evaluation_id)
        .bind(owner)
        .bind(STATE_RUNNING)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(ComplianceError::LeaseLost(evaluation_id.to_owned()));
        }
        for chunk in rows.chunks(POSTURE_CHUNK) {
            let sql = format!(
                "INSERT INTO customer_posture (partner_tenant_id, customer_tenant_id, evaluation_id, \
                 display_name, status, mechanism, admins_total, admins_with_mfa, detail, \
                 admins_without_mfa, evaluated_at, dap, dap_checked_at) VALUES {} \
                 ON CONFLICT (partner_tenant_id, customer_tenant_id) DO UPDATE SET \
                 dap = CASE WHEN excluded.dap_checked_at IS NULL THEN customer_posture.dap ELSE excluded.dap END, \
                 dap_checked_at = COALESCE(excluded.dap_checked_at, customer_posture.dap_checked_at), \
                 evaluation_id = excluded.evaluation_id, display_name = excluded.display_name, \
                 status = excluded.status, mechanism = excluded.mechanism, \
                 admins_total = excluded.admins_total, admins_with_mfa = excluded.admins_with_mfa, \
                 detail = excluded.detail, admins_without_mfa = excluded.admins_without_mfa, \
                 evaluated_at = excluded.evaluated_at",
                placeholders(chunk.len(), 13)
            );
            let mut q = sqlx::query(&sql);
            for row in chunk {
                q = q
                    .bind(partner)
                    .bind(&row.customer_tenant_id)
                    .bind(evaluation_id)
                    .bind(&row.display_name)
                    .bind(row.status as i64)
                    .bind(&row.mechanism)
                    .bind(i64::from(row.admins_total))
                    .bind(i64::from(row.admins_with_mfa))
                    .bind(&row.detail)
                    .bind(row.admins_without_mfa.join("\n"))
                    .bind(row.evaluated_at)
                    .bind(row.dap.map_or(-1_i64, i64::from))
                    .bind(row.dap_checked_at);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn customers_of_evaluation(
        &self,
        partner: &str,
        evaluation_id: &str,
    ) -> Result<Vec<CustomerPostureRow>> {
        let rows = sqlx::query(
            "SELECT * FROM customer_posture WHERE partner_tenant_id = $1 AND evaluation_id = $2 \
             ORDER BY customer_tenant_id",
        )
        .bind(partner)
        .bind(evaluation_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(posture_from_row).collect())
    }

    async fn posture_of(&self, partner: &str) -> Result<Vec<CustomerPostureRow>> {
        let rows = sqlx::query(
            "SELECT * FROM customer_posture WHERE partner_tenant_id = $1 ORDER BY customer_tenant_id",
        )
        .bind(partner)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(posture_from_row).collect())
    }

    async fn complete_evaluation(&self, c: &Completion) -> Result<Vec<ComplianceChanged>> {
        let mut tx = self.pool().begin().await?;
        let previous_score: Option<f64> = sqlx::query(
            "SELECT score FROM evaluations WHERE partner_tenant_id = $1 AND state = $2 \
             ORDER BY finished_at DESC LIMIT 1",
        )
        .bind(&c.partner_tenant_id)
        .bind(STATE_COMPLETE)
        .fetch_optional(&mut *tx)
        .await?
        .and_then(|r| r.get::<Option<f64>, _>(0));
        let n = sqlx::query(
            "UPDATE evaluations SET state = $1, finished_at = $2, score = $3, microsoft_score = $4, \
             microsoft_max_score = $5, passing = $6, failing = $7, warnings = $8, unknown = $9, \
             status = $10, customers_total = $11, customers_done = $12, customers_failed = $13 \
             WHERE evaluation_id = $14 AND lease_owner = $15 AND state = $16",
        )
        .bind(STATE_COMPLETE)
        .bind(c.finished_at)
        .bind(c.status.score)
        .bind(c.status.microsoft_score)
        .bind(c.status.microsoft_max_score)
        .bind(i64::from(c.passing))
        .bind(i64::from(c.failing))
        .bind(i64::from(c.warnings))
        .bind(i64::from(c.unknown))
        .bind(c.status.encode_to_vec())
        .bind(c.progress.total as i64)
        .bind(c.progress.done as i64)
        .bind(c.progress.failed as i64)
        .bind(&c.evaluation_id)
        .bind(&c.owner)
        .bind(STATE_RUNNING)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(ComplianceError::LeaseLost(c.evaluation_id.clone()));
        }
        for (i, chunk) in c.findings.chunks(FINDING_CHUNK).enumerate() {
            let sql = format!(
                "INSERT INTO findings (evaluation_id, seq, partner_tenant_id, check_kind, status, \
                 customer_tenant_id, finding) VALUES {}",
                placeholders(chunk.len(), 7)
            );
            let mut q = sqlx::query(&sql);
            for (j, f) in chunk.iter().enumerate() {
                q = q
                    .bind(&c.evaluation_id)
                    .bind((i * FINDING_CHUNK + j + 1) as i64)
                    .bind(&c.partner_tenant_id)
                    .bind(i64::from(f.check))
                    .bind(i64::from(f.status))
                    .bind(&f.customer_tenant_id)
                    .bind(f.encode_to_vec());
            }
            q.execute(&mut *tx).await?;
        }

        // Change detection against the last known state of each partner-level check.
        let known: HashMap<i64, i64> =
            sqlx::query("SELECT check_kind, status FROM check_state WHERE partner_tenant_id = $1")
                .bind(&c.partner_tenant_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
                .collect();
        let mut events = Vec::new();
        for finding in &c.status.checks {
            let new = CheckStatus::try_from(finding.status).unwrap_or(CheckStatus::Unknown);
            let previous = known
                .get(&i64::from(finding.check))
                .and_then(|s| CheckStatus::try_from(*s as i32).ok());
            if matches!(new, CheckStatus::Unknown | CheckStatus::Unspecified) {
                continue;
            }
            if previous != Some(new) {
                sqlx::query(
                    "INSERT INTO check_state (partner_tenant_id, check_kind, status, evaluation_id, \
                     changed_at) VALUES ($1,$2,$3,$4,$5) ON CONFLICT (partner_tenant_id, check_kind) \
                     DO UPDATE SET status = excluded.status, evaluation_id = excluded.evaluation_id, \
                     changed_at = excluded.changed_at",
                )
                .bind(&c.partner_tenant_id)
                .bind(i64::from(finding.check))
                .bind(i64::from(finding.status))
                .bind(&c.evaluation_id)
                .bind(c.finished_at)
                .execute(&mut *tx)
                .await?;
            }
            if is_change(previous, new) {
                let event = ComplianceChanged {
                    partner_tenant_id: c.partner_tenant_id.clone(),
                    evaluation_id: c.evaluation_id.clone(),
                    check: finding.check,
                    previous_status: previous.map_or(0, |p| p as i32),
                    status: finding.status,
                    finding: Some(finding.clone()),
                    score: c.status.score,
                    previous_score: previous_score.unwrap_or(0.0),
                };
                let mut envelope =
                    palisade_queue::envelope(KIND_CHANGED, &c.partner_tenant_id, &event);
                // Deterministic: a replayed completion cannot announce the same change twice.
                envelope.message_id = format!("{}:{}", c.evaluation_id, finding.check);
                palisade_queue::outbox::enqueue(&mut tx, TOPIC, &envelope).await?;
                events.push(event);
            }
        }

        // Customers the partner no longer has were not evaluated this time.
        sqlx::query(
            "DELETE FROM customer_posture WHERE partner_tenant_id = $1 AND evaluation_id <> $2",
        )
        .bind(&c.partner_tenant_id)
        .bind(&c.evaluation_id)
        .execute(&mut *tx)
        .await?;
        // Findings of old evaluations go; their scores stay in the history.
        let keep: Vec<String> = sqlx::query(
            "SELECT evaluation_id FROM evaluations WHERE partner_tenant_id = $1 AND state = $2 \
             ORDER BY finished_at DESC LIMIT $3",
        )
        .bind(&c.partner_tenant_id)
        .bind(STATE_COMPLETE)
        .bind(i64::from(c.keep_findings_of.max(1)))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
        if let Some(oldest_kept) = keep.last() {
            sqlx::query(
                "DELETE FROM findings WHERE partner_tenant_id = $1 AND evaluation_id IN \
                 (SELECT evaluation_id FROM evaluations WHERE partner_tenant_id = $1 \
                  AND evaluation_id < $2)",
            )
            .bind(&c.partner_tenant_id)
            .bind(oldest_kept)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(events)
    }

    async fn fail_evaluation(
        &self,
        evaluation_id: &str,
        owner: &str,
        error: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE evaluations SET state = $1, finished_at = $2, error = $3 \
             WHERE evaluation_id = $4 AND lease_owner = $5 AND state = $6",
        )
        .bind(STATE_FAILED)
        .bind(now)
        .bind(error)
        .bind(evaluation_id)
        .bind(owner)
        .bind(STATE_RUNNING)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn get_evaluation(&self, evaluation_id: &str) -> Result<Option<EvaluationRecord>> {
        sqlx::query(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE evaluation_id = $1"
        ))
        .bind(evaluation_id)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(evaluation_from_row)
        .transpose()
    }

    async fn latest_complete(&self, partner: &str) -> Result<Option<EvaluationRecord>> {
        sqlx::query(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE partner_tenant_id = $1 AND state = $2 \
             ORDER BY finished_at DESC, evaluation_id DESC LIMIT 1"
        ))
        .bind(partner)
        .bind(STATE_COMPLETE)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(evaluation_from_row)
        .transpose()
    }

    async fn abandoned(&self, now: i64, limit: i64) -> Result<Vec<EvaluationRecord>> {
        sqlx::query(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE state = $1 AND lease_until < $2 \
             ORDER BY lease_until LIMIT $3"
        ))
        .bind(STATE_RUNNING)
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(evaluation_from_row)
        .collect()
    }

    async fn list_findings(
        &self,
        evaluation_id: &str,
        filter: &FindingFilter,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Finding)>> {
        let mut sql =
            "SELECT seq, finding FROM findings WHERE evaluation_id = $1 AND seq > $2".to_owned();
        let mut n = 2;
        let mut list = |values: &[i32], column: &str, sql: &mut String| {
            if !values.is_empty() {
                let cells: Vec<String> = values
                    .iter()
                    .map(|_| {
                        n += 1;
                        format!("${n}")
                    })
                    .collect();
                sql.push_str(&format!(" AND {column} IN ({})", cells.join(",")));
            }
        };
        list(&filter.checks, "check_kind", &mut sql);
        list(&filter.statuses, "status", &mut sql);
        if filter.customer_tenant_id.is_some() {
            n += 1;
            sql.push_str(&format!(" AND customer_tenant_id = ${n}"));
        }
        n += 1;
        sql.push_str(&format!(" ORDER BY seq LIMIT ${n}"));
        let mut q = sqlx::query(&sql).bind(evaluation_id).bind(after_seq);
        for v in filter.checks.iter().chain(&filter.statuses) {
            q = q.bind(i64::from(*v));
        }
        if let Some(customer) = &filter.customer_tenant_id {
            q = q.bind(customer);
        }
        let rows = q.bind(limit).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                let bytes: Vec<u8> = r.get(1);
                Ok((r.get::<i64, _>(0), Finding::decode(bytes.as_slice())?))
            })
            .collect()
    }

    async fn history(
        &self,
        partner: &str,
        start: Option<i64>,
        end: Option<i64>,
        before: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<EvaluationRecord>> {
        let (before_at, before_id) = before.unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE partner_tenant_id = $1 AND state = $2 \
             AND finished_at >= $3 AND finished_at < $4 \
             AND (finished_at < $5 OR (finished_at = $5 AND evaluation_id < $6)) \
             ORDER BY finished_at DESC, evaluation_id DESC LIMIT $7"
        ))
        .bind(partner)
        .bind(STATE_COMPLETE)
        .bind(start.unwrap_or(i64::MIN))
        .bind(end.unwrap_or(i64::MAX))
        .bind(before_at)
        .bind(before_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(evaluation_from_row).collect()
    }

    async fn list_posture(
        &self,
        partner: &str,
        statuses: &[i32],
        after: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<CustomerPostureRow>, u64)> {
        let status_clause = if statuses.is_empty() {
            String::new()
        } else {
            let cells: Vec<String> = (0..statuses.len()).map(|i| format!("${}", i + 2)).collect();
            format!(" AND status IN ({})", cells.join(","))
        };
        let count_sql = format!(
            "SELECT count(*) FROM customer_posture WHERE partner_tenant_id = $1{status_clause}"
        );
        let mut count = sqlx::query(&count_sql).bind(partner);
        for s in statuses {
            count = count.bind(i64::from(*s));
        }
        let total: i64 = count.fetch_one(self.pool()).await?.get(0);
        let k = statuses.len() + 2;
        let sql = format!(
            "SELECT * FROM customer_posture WHERE partner_tenant_id = $1{status_clause} \
             AND customer_tenant_id > ${k} ORDER BY customer_tenant_id LIMIT ${}",
            k + 1
        );
        let mut q = sqlx::query(&sql).bind(partner);
        for s in statuses {
            q = q.bind(i64::from(*s));
        }
        let rows = q
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        Ok((rows.iter().map(posture_from_row).collect(), total as u64))
    }

    async fn set_schedule(
        &self,
        partner: &str,
        interval_ms: i64,
        enabled: bool,
        next_run_at: i64,
        now: i64,
    ) -> Result<Schedule> {
        sqlx::query(
            "INSERT INTO schedules (partner_tenant_id, interval_ms, enabled, next_run_at, updated_at) \
             VALUES ($1,$2,$3,$4,$5) ON CONFLICT (partner_tenant_id) DO UPDATE SET \
             interval_ms = excluded.interval_ms, enabled = excluded.enabled, \
             next_run_at = excluded.next_run_at, updated_at = excluded.updated_at",
        )
        .bind(partner)
        .bind(interval_ms)
        .bind(i64::from(enabled))
        .bind(next_run_at)
        .bind(now)
        .execute(self.pool())
        .await?;
        self.get_schedule(partner)
            .await?
            .ok_or_else(|| ComplianceError::NotFound("schedule".into()))
    }

    async fn ensure_schedule(
        &self,
        partner: &str,
        interval_ms: i64,
        next_run_at: i64,
        now: i64,
    ) -> Result<Schedule> {
        sqlx::query(
            "INSERT INTO schedules (partner_tenant_id, interval_ms, enabled, next_run_at, updated_at) \
             VALUES ($1,$2,1,$3,$4) ON CONFLICT (partner_tenant_id) DO NOTHING",
        )
        .bind(partner)
        .bind(interval_ms)
        .bind(next_run_at)
        .bind(now)
        .execute(self.pool())
        .await?;
        self.get_schedule(partner)
            .await?
            .ok_or_else(|| ComplianceError::NotFound("schedule".into()))
    }

    async fn get_schedule(&self, partner: &str) -> Result<Option<Schedule>> {
        Ok(
            sqlx::query("SELECT * FROM schedules WHERE partner_tenant_id = $1")
                .bind(partner)
                .fetch_optional(self.pool())
                .await?
                .as_ref()
                .map(schedule_from_row),
        )
    }

    async fn due_schedules(&self, now: i64, limit: i64) -> Result<Vec<Schedule>> {
        Ok(sqlx::query(
            "SELECT * FROM schedules WHERE enabled = 1 AND next_run_at <= $1 \
             ORDER BY next_run_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(schedule_from_row)
        .collect())
    }

    async fn claim_schedule(&self, partner: &str, expected: i64, next: i64) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE schedules SET next_run_at = $1 WHERE partner_tenant_id = $2 AND next_run_at = $3",
        )
        .bind(next)
        .bind(partner)
        .bind(expected)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1)
    }

    async fn run_soon(&self, partner: &str, at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE schedules SET next_run_at = $1 WHERE partner_tenant_id = $2 AND next_run_at > $1",
        )
        .bind(at)
        .bind(partner)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

impl SqlStore {
    async fn claim_evaluation_busy(&self, partner: &str) -> Result<Option<EvaluationRecord>> {
        sqlx::query(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE partner_tenant_id = $1 AND state = $2"
        ))
        .bind(partner)
        .bind(STATE_RUNNING)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(evaluation_from_row)
        .transpose()
    }
}
