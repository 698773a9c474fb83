//! [`NotifyStore`] over sqlx's `Any` driver: one set of queries for Postgres and SQLite,
//! branching on the backend only for row locking.

use palisade_contracts::notify::v1::{
    AdminAgent, ComplianceContact, DeliveryStatus, PartnerSettings, Route, SecurityContact,
};
use palisade_storage::{Backend, Database};
use prost::Message;
use sqlx::{Row, any::AnyRow};

use super::*;

const STATE_ACTIVE: &str = "active";
const STATE_ACKNOWLEDGED: &str = "acknowledged";
const STATE_CLOSED: &str = "closed";
const STATE_DONE: &str = "done";

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

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn channel_from_row(r: &AnyRow) -> ChannelRecord {
    ChannelRecord {
        channel_id: r.get("channel_id"),
        partner_tenant_id: r.get("partner_tenant_id"),
        display_name: r.get("display_name"),
        kind: r.get::<i64, _>("kind") as i32,
        target: r.get("target"),
        language: r.get("language"),
        enabled: r.get::<i64, _>("enabled") != 0,
        disabled_reason: r.get("disabled_reason"),
        secret_sealed: r.get("secret_sealed"),
        secret_count: r.get::<i64, _>("secret_count") as u32,
        failing_since: r.get("failing_since"),
        created_at: r.get("created_at"),
    }
}

const DELIVERY_COLUMNS: &str = "delivery_id, partner_tenant_id, event_id, event_kind, fingerprint, \
    channel_kind, channel_id, recipient, target, language, subject, body, status, attempts, \
    retry_base, next_attempt_at, last_error, created_at, updated_at";

fn delivery_from_row(r: &AnyRow) -> DeliveryRow {
    DeliveryRow {
        delivery: NewDelivery {
            delivery_id: r.get("delivery_id"),
            partner_tenant_id: r.get("partner_tenant_id"),
            event_id: r.get("event_id"),
            event_kind: r.get("event_kind"),
            fingerprint: r.get("fingerprint"),
            channel_kind: r.get::<i64, _>("channel_kind") as i32,
            channel_id: r.get("channel_id"),
            recipient: r.get("recipient"),
            target: r.get("target"),
            language: r.get("language"),
            subject: r.get("subject"),
            body: r.get("body"),
            next_attempt_at: r.get("next_attempt_at"),
            created_at: r.get("created_at"),
        },
        status: r.get::<i64, _>("status") as i32,
        attempts: r.get::<i64, _>("attempts") as u32,
        retry_base: r.get::<i64, _>("retry_base") as u32,
        last_error: r.get("last_error"),
        updated_at: r.get("updated_at"),
    }
}

fn escalation_from_row(r: &AnyRow) -> EscalationRow {
    EscalationRow {
        escalation_id: r.get("escalation_id"),
        partner_tenant_id: r.get("partner_tenant_id"),
        fingerprint: r.get("fingerprint"),
        chain_proto: r.get("chain_proto"),
        started_at: r.get("started_at"),
        next_step: r.get::<i64, _>("next_step") as u32,
        next_due_at: r.get("next_due_at"),
        state: r.get("state"),
        context: r.get("context"),
    }
}

/// `($1,$2,…),(…)`: placeholders for `rows` rows of `cols` values each.
/// One attempt row per attempt, in one multi-row statement (idempotent on a retry).
async fn insert_attempts<'a>(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    attempts: impl ExactSizeIterator<Item = &'a AttemptRecord>,
) -> Result<()> {
    let sql = format!(
        "INSERT INTO delivery_attempts (delivery_id, attempt, at, http_status, error, \
         duration_ms) VALUES {} ON CONFLICT (delivery_id, attempt) DO NOTHING",
        placeholders(attempts.len(), 6)
    );
    let mut q = sqlx::query(&sql);
    for a in attempts {
        q = q
            .bind(&a.delivery_id)
            .bind(i64::from(a.attempt))
            .bind(a.at)
            .bind(i64::from(a.http_status))
            .bind(&a.error)
            .bind(i64::from(a.duration_ms));
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Per-row values in one UPDATE through `CASE <key> WHEN .. THEN ..`: plain SQL both backends
/// run. Rows are bound `width` values each (the key first), from bind `$first`.
struct PerRow {
    rows: usize,
    width: usize,
    first: usize,
}

impl PerRow {
    fn new(rows: usize, width: usize, first: usize) -> Self {
        Self { rows, width, first }
    }

    /// `WHEN $id THEN $value ..` for the row's `col`-th value (0 is the id).
    fn case(&self, col: usize) -> String {
        (0..self.rows)
            .map(|r| {
                let id = self.first + r * self.width;
                format!("WHEN ${id} THEN ${}", id + col)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `$id, $id, ..`, for `WHERE <key> IN (..)`.
    fn ids(&self) -> String {
        (0..self.rows)
            .map(|r| format!("${}", self.first + r * self.width))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn placeholders(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            out.push(',');
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push(',');
            }
            out.push('$');
            out.push_str(&(r * cols + c + 1).to_string());
        }
        out.push(')');
    }
    out
}

/// Rows per multi-row statement: well under SQLite's 32,766 and Postgres's 65,535 binds.
const ROWS_PER_STATEMENT: usize = 500;

async fn insert_deliveries_in(
    conn: &mut sqlx::AnyConnection,
    deliveries: &[NewDelivery],
) -> Result<u64> {
    // One statement per chunk: a fan-out is one round trip, not one per recipient.
    let mut inserted = 0;
    for chunk in deliveries.chunks(ROWS_PER_STATEMENT / 2) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|r| {
                let p = |c: usize| format!("${}", r * 15 + c);
                format!(
                    "({},0,0,{},NULL,'',{},{})",
                    (1..=13).map(p).collect::<Vec<_>>().join(","),
                    p(14),
                    p(15),
                    p(15)
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO deliveries (delivery_id, partner_tenant_id, event_id, event_kind, \
             fingerprint, channel_kind, channel_id, recipient, target, language, subject, body, \
             status, attempts, retry_base, next_attempt_at, lease_until, last_error, created_at, \
             updated_at) VALUES {} ON CONFLICT (delivery_id) DO NOTHING",
            rows.join(",")
        );
        let mut q = sqlx::query(&sql);
        for d in chunk {
            q = q
                .bind(&d.delivery_id)
                .bind(&d.partner_tenant_id)
                .bind(&d.event_id)
                .bind(&d.event_kind)
                .bind(&d.fingerprint)
                .bind(i64::from(d.channel_kind))
                .bind(&d.channel_id)
                .bind(&d.recipient)
                .bind(&d.target)
                .bind(&d.language)
                .bind(&d.subject)
                .bind(&d.body)
                .bind(DeliveryStatus::Planned as i32 as i64)
                .bind(d.next_attempt_at)
                .bind(d.created_at);
        }
        inserted += q.execute(&mut *conn).await?.rows_affected();
    }
    Ok(inserted)
}

/// One event's effects inside the caller's transaction; `false` if already applied.
async fn apply_event_in(
    tx: &mut sqlx::AnyConnection,
    e: &AppliedEvent,
    touched: &mut Touched,
) -> Result<bool> {
    let first = sqlx::query(
        "INSERT INTO processed_events (message_id, partner_tenant_id, processed_at) \
         VALUES ($1,$2,$3) ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(&e.message_id)
    .bind(&e.partner_tenant_id)
    .bind(e.now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if first == 0 {
        return Ok(false);
    }
    apply_effects_in(tx, e, touched).await?;
    Ok(true)
}

/// The groups a transaction touched, as they stand after it (without their items).
type Touched = std::collections::BTreeMap<String, GroupState>;

fn group_from_row(g: &AnyRow) -> GroupState {
    GroupState {
        group_key: g.get("group_key"),
        partner_tenant_id: g.get("partner_tenant_id"),
        route_id: g.get("route_id"),
        version: g.get("version"),
        flush_seq: g.get("flush_seq"),
        created_at: g.get("created_at"),
        next_flush_at: g.get("next_flush_at"),
        last_notified_at: g.get("last_notified_at"),
        last_notified_hash: g.get("last_notified_hash"),
        group_interval_ms: g.get("group_interval_ms"),
        repeat_interval_ms: g.get("repeat_interval_ms"),
        items: Vec::new(),
    }
}

fn group_item_from_row(r: &AnyRow) -> GroupItem {
    GroupItem {
        fingerprint: r.get("fingerprint"),
        kind: r.get("kind"),
        firing: r.get::<i64, _>("firing") != 0,
        severity: r.get::<i64, _>("severity") as i32,
        summary: r.get("summary"),
        updated_at: r.get("updated_at"),
    }
}

/// Reads the `RETURNING *` rows of a group upsert: a later row of the same group wins.
fn note_touched(rows: &[AnyRow], touched: &mut Touched) {
    for r in rows {
        let g = group_from_row(r);
        touched.insert(g.group_key.clone(), g);
    }
}

/// Loads the items of the given groups (already locked by the caller's transaction).
async fn load_items_in(conn: &mut sqlx::AnyConnection, groups: &mut [GroupState]) -> Result<()> {
    let by_key: std::collections::HashMap<String, usize> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.group_key.clone(), i))
        .collect();
    let keys: Vec<String> = groups.iter().map(|g| g.group_key.clone()).collect();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let list = (1..=chunk.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT group_key, fingerprint, kind, firing, severity, summary, updated_at \
             FROM group_items WHERE group_key IN ({list}) ORDER BY group_key, fingerprint"
        );
        let mut q = sqlx::query(&sql);
        for key in chunk {
            q = q.bind(key);
        }
        for r in q.fetch_all(&mut *conn).await? {
            if let Some(i) = by_key.get(&r.get::<String, _>("group_key")) {
                groups[*i].items.push(group_item_from_row(&r));
            }
        }
    }
    Ok(())
}

/// Commits flush decisions of groups the caller's transaction holds: the flush sequence,
/// the next timer and the notification log, resolved items leaving (all items of a closed
/// group), and the deliveries, a handful of multi-row statements for any number of groups.
async fn write_flushes_in(
    conn: &mut sqlx::AnyConnection,
    flushes: &[(GroupState, FlushCommit)],
    unstored: &std::collections::HashSet<(String, String)>,
) -> Result<()> {
    // Rows per statement: 5 binds each in the update.
    for chunk in flushes.chunks(ROWS_PER_STATEMENT / 5) {
        let rows = PerRow::new(chunk.len(), 5, 1);
        let keys = rows.ids();
        let sql = format!(
            "UPDATE notify_groups SET flush_seq = CASE group_key {} END, \
             next_flush_at = CASE group_key {} END, last_notified_at = CASE group_key {} END, \
             last_notified_hash = CASE group_key {} END WHERE group_key IN ({keys})",
            rows.case(1),
            rows.case(2),
            rows.case(3),
            rows.case(4)
        );
        let mut q = sqlx::query(&sql);
        for (group, c) in chunk {
            // Closed, not deleted: the row keeps its flush sequence, so a group that reopens
            // later never reuses a notification-log entry or a delivery id.
            let (last_at, last_hash) = match (&c.notified_hash, c.next_flush_at) {
                (_, None) => (None, String::new()),
                (Some(hash), Some(_)) => (Some(c.now), hash.clone()),
                (None, Some(_)) => (group.last_notified_at, group.last_notified_hash.clone()),
            };
            q = q
                .bind(&group.group_key)
                .bind(group.flush_seq + 1)
                .bind(c.next_flush_at.unwrap_or(i64::MAX))
                .bind(last_at)
                .bind(last_hash);
        }
        q.execute(&mut *conn).await?;
    }
    let logged: Vec<_> = flushes
        .iter()
        .filter_map(|(g, c)| Some((g, c, c.notified_hash.as_ref()?)))
        .collect();
    for chunk in logged.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO notification_log (group_key, flush_seq, partner_tenant_id, \
             notified_at, content_hash, firing, resolved) VALUES {}",
            placeholders(chunk.len(), 7)
        );
        let mut q = sqlx::query(&sql);
        for (g, c, hash) in chunk {
            q = q
                .bind(&g.group_key)
                .bind(g.flush_seq + 1)
                .bind(&g.partner_tenant_id)
                .bind(c.now)
                .bind(*hash)
                .bind(c.firing)
                .bind(c.resolved);
        }
        q.execute(&mut *conn).await?;
    }
    // A closed group loses all its items; a notified one its resolved items, which have
    // been told (those of them in the store: `unstored` ones were never written).
    let closing: Vec<&str> = flushes
        .iter()
        .filter(|(_, c)| c.next_flush_at.is_none())
        .map(|(g, _)| g.group_key.as_str())
        .collect();
    for chunk in closing.chunks(ROWS_PER_STATEMENT) {
        let list = (1..=chunk.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!("DELETE FROM group_items WHERE group_key IN ({list})");
        let mut q = sqlx::query(&sql);
        for key in chunk {
            q = q.bind(*key);
        }
        q.execute(&mut *conn).await?;
    }
    let told: Vec<(&str, &str)> = flushes
        .iter()
        .filter(|(_, c)| c.next_flush_at.is_some() && c.notified_hash.is_some())
        .flat_map(|(g, _)| {
            g.items
                .iter()
                .filter(|i| !i.firing)
                .map(|i| (g.group_key.as_str(), i.fingerprint.as_str()))
        })
        .filter(|(g, f)| !unstored.contains(&((*g).to_owned(), (*f).to_owned())))
        .collect();
    for chunk in told.chunks(ROWS_PER_STATEMENT / 2) {
        let pairs = (0..chunk.len())
            .map(|i| {
                format!(
                    "(group_key = ${} AND fingerprint = ${})",
                    2 * i + 1,
                    2 * i + 2
                )
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        let sql = format!("DELETE FROM group_items WHERE {pairs}");
        let mut q = sqlx::query(&sql);
        for (group_key, fingerprint) in chunk {
            q = q.bind(*group_key).bind(*fingerprint);
        }
        q.execute(&mut *conn).await?;
    }
    let deliveries: Vec<NewDelivery> = flushes
        .iter()
        .flat_map(|(_, c)| c.deliveries.iter().cloned())
        .collect();
    insert_deliveries_in(conn, &deliveries).await?;
    Ok(())
}

/// Upserts group items; per row the latest `updated_at` wins, as if written one by one.
async fn write_group_items_in(
    conn: &mut sqlx::AnyConnection,
    items: &[(String, GroupItem)],
) -> Result<()> {
    // One row per key: a statement may not upsert the same row twice.
    let mut latest: std::collections::BTreeMap<(&str, &str), &GroupItem> =
        std::collections::BTreeMap::new();
    for (group_key, item) in items {
        latest
            .entry((group_key, &item.fingerprint))
            .and_modify(|w| {
                if item.updated_at >= w.updated_at {
                    *w = item;
                }
            })
            .or_insert(item);
    }
    let items: Vec<_> = latest.into_iter().collect();
    for chunk in items.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO group_items (group_key, fingerprint, kind, firing, severity, summary, \
             updated_at) VALUES {} \
             ON CONFLICT (group_key, fingerprint) DO UPDATE SET kind = excluded.kind, \
             firing = excluded.firing, severity = excluded.severity, \
             summary = excluded.summary, updated_at = excluded.updated_at \
             WHERE group_items.updated_at <= excluded.updated_at",
            placeholders(chunk.len(), 7)
        );
        let mut q = sqlx::query(&sql);
        for ((group_key, _), i) in chunk {
            q = q
                .bind(*group_key)
                .bind(&i.fingerprint)
                .bind(&i.kind)
                .bind(flag(i.firing))
                .bind(i64::from(i.severity))
                .bind(&i.summary)
                .bind(i.updated_at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A batch's unwritten items merged into the groups loaded from the store.
#[derive(Default)]
struct Merged {
    /// (group, fingerprint) of items that exist only in memory.
    unstored: std::collections::HashSet<(String, String)>,
    /// (group, fingerprint) of items whose merged value came from the batch.
    won: std::collections::HashSet<(String, String)>,
}

/// Adds a batch's unwritten items to the groups loaded from the store, the latest
/// `updated_at` winning as in `write_group_items_in`, in fingerprint order.
fn merge_pending(groups: &mut [GroupState], pending: &[(String, GroupItem)]) -> Merged {
    let mut merged = Merged::default();
    // By group, once: a batch can hold hundreds of groups and of items.
    let mut by_group: std::collections::HashMap<&str, Vec<&GroupItem>> =
        std::collections::HashMap::new();
    for (key, item) in pending {
        by_group.entry(key).or_default().push(item);
    }
    for group in groups.iter_mut() {
        let Some(items) = by_group.get(group.group_key.as_str()) else {
            continue;
        };
        for item in items {
            let key = (group.group_key.clone(), item.fingerprint.clone());
            match group
                .items
                .iter_mut()
                .find(|i| i.fingerprint == item.fingerprint)
            {
                Some(stored) if stored.updated_at <= item.updated_at => {
                    *stored = (*item).clone();
                    merged.won.insert(key);
                }
                Some(_) => {}
                None => {
                    group.items.push((*item).clone());
                    merged.unstored.insert(key.clone());
                    merged.won.insert(key);
                }
            }
        }
        group
            .items
            .sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    }
    merged
}

/// Records a batch's message ids in one statement; `true` for each event seen for the first
/// time (a repeat inside the batch counts once, at its first position).
async fn claim_message_ids(
    tx: &mut sqlx::AnyConnection,
    events: &[AppliedEvent],
) -> Result<Vec<bool>> {
    let mut inserted = std::collections::HashSet::new();
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO processed_events (message_id, partner_tenant_id, processed_at) \
             VALUES {} ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
            placeholders(chunk.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q.bind(&e.message_id).bind(&e.partner_tenant_id).bind(e.now);
        }
        for row in q.fetch_all(&mut *tx).await? {
            inserted.insert(row.get::<String, _>(0));
        }
    }
    Ok(events
        .iter()
        .map(|e| inserted.remove(&e.message_id))
        .collect())
}

/// Whether an event touches escalations, whose checks read what earlier events wrote and
/// so are applied one statement at a time.
fn needs_sequential(e: &AppliedEvent) -> bool {
    e.escalation.is_some() || e.stop_escalation_for.is_some()
}

/// The effects of a run of consecutive fresh events without escalation effects, in one
/// multi-row statement per table, with the same end state as applying them one by one:
/// per row, the latest by the producer's time wins (later in the batch on a tie). Rows are
/// written in key order, so concurrent batches lock shared group rows in the same order
/// and queue behind each other instead of deadlocking.
async fn apply_run_in(
    tx: &mut sqlx::AnyConnection,
    run: &[&AppliedEvent],
    touched: &mut Touched,
    pending: &mut Vec<(String, GroupItem)>,
) -> Result<()> {
    use std::collections::BTreeMap;
    if run.is_empty() {
        return Ok(());
    }
    let occurred = |e: &AppliedEvent| {
        if e.occurred_at > 0 {
            e.occurred_at
        } else {
            e.now
        }
    };
    // items: (partner, fingerprint) -> (first seen, winning event)
    let mut items: BTreeMap<(&str, &str), (i64, &AppliedEvent)> = BTreeMap::new();
    // groups: key -> (first event, count, earliest due, last event's timers)
    let mut groups: BTreeMap<&str, (&AppliedEvent, &GroupAdd, i64, i64, &GroupAdd)> =
        BTreeMap::new();
    let mut group_items: BTreeMap<(&str, &str), (i64, &GroupAdd)> = BTreeMap::new();
    let mut digests: BTreeMap<(&str, &str, &str), (&AppliedEvent, &DigestAdd)> = BTreeMap::new();
    for e in run {
        let at = occurred(e);
        if let Some(item) = &e.item {
            items
                .entry((&e.partner_tenant_id, &item.fingerprint))
                .and_modify(|(_, w)| {
                    if at >= occurred(w) {
                        *w = e;
                    }
                })
                .or_insert((at, e));
        }
        for g in &e.groups {
            let due = e.now + g.group_wait_ms;
            groups
                .entry(&g.group_key)
                .and_modify(|(_, _, n, earliest, last)| {
                    *n += 1;
                    *earliest = (*earliest).min(due);
                    *last = g;
                })
                .or_insert((e, g, 1, due, g));
            group_items
                .entry((&g.group_key, &g.fingerprint))
                .and_modify(|(w_at, w)| {
                    if at >= *w_at {
                        *w_at = at;
                        *w = g;
                    }
                })
                .or_insert((at, g));
        }
        for d in &e.digests {
            digests.insert((&e.partner_tenant_id, &d.route_id, &d.fingerprint), (e, d));
        }
    }
    let items: Vec<_> = items.into_iter().collect();
    for chunk in items.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO items (partner_tenant_id, fingerprint, kind, open, severity, \
             alert_type, customer_tenant_id, subscription_id, title, first_seen_at, \
             last_seen_at) VALUES {} \
             ON CONFLICT (partner_tenant_id, fingerprint) DO UPDATE SET \
             open = excluded.open, severity = excluded.severity, \
             alert_type = excluded.alert_type, title = excluded.title, \
             last_seen_at = excluded.last_seen_at \
             WHERE items.last_seen_at <= excluded.last_seen_at",
            placeholders(chunk.len(), 11)
        );
        let mut q = sqlx::query(&sql);
        for (_, (first_seen, e)) in chunk {
            let item = e.item.as_ref().expect("keyed by its item");
            q = q
                .bind(&e.partner_tenant_id)
                .bind(&item.fingerprint)
                .bind(&item.kind)
                .bind(flag(item.open))
                .bind(i64::from(item.severity))
                .bind(&item.alert_type)
                .bind(&item.customer_tenant_id)
                .bind(&item.subscription_id)
                .bind(&item.title)
                .bind(*first_seen)
                .bind(occurred(e));
        }
        q.execute(&mut *tx).await?;
    }
    let groups: Vec<_> = groups.into_values().collect();
    for chunk in groups.chunks(ROWS_PER_STATEMENT) {
        // `version` carries how many events touched the group: a new row starts there, an
        // existing one moves on by it, as it would one event at a time.
        let sql = format!(
            "INSERT INTO notify_groups (group_key, partner_tenant_id, route_id, version, \
             created_at, next_flush_at, group_interval_ms, repeat_interval_ms, flush_seq, \
             last_notified_at, last_notified_hash) VALUES {} \
             ON CONFLICT (group_key) DO UPDATE SET \
             version = notify_groups.version + excluded.version, \
             group_interval_ms = excluded.group_interval_ms, \
             repeat_interval_ms = excluded.repeat_interval_ms, \
             next_flush_at = CASE WHEN notify_groups.last_notified_at IS NULL \
               THEN (CASE WHEN excluded.next_flush_at < notify_groups.next_flush_at \
                     THEN excluded.next_flush_at ELSE notify_groups.next_flush_at END) \
               WHEN notify_groups.last_notified_at + excluded.group_interval_ms \
                    < notify_groups.next_flush_at \
               THEN notify_groups.last_notified_at + excluded.group_interval_ms \
               ELSE notify_groups.next_flush_at END \
             RETURNING *",
            (0..chunk.len())
                .map(|r| {
                    let p = |c: usize| format!("${}", r * 8 + c);
                    format!(
                        "({},0,NULL,'')",
                        (1..=8).map(p).collect::<Vec<_>>().join(",")
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut q = sqlx::query(&sql);
        for (first, g, n, earliest, last) in chunk {
            q = q
                .bind(&g.group_key)
                .bind(&first.partner_tenant_id)
                .bind(&g.route_id)
                .bind(*n)
                .bind(first.now)
                .bind(*earliest)
                .bind(last.group_interval_ms)
                .bind(last.repeat_interval_ms);
        }
        note_touched(&q.fetch_all(&mut *tx).await?, touched);
    }
    // Written by the caller once it knows which of them a flush in this batch consumes.
    pending.extend(group_items.into_values().map(|(at, g)| {
        (
            g.group_key.clone(),
            GroupItem {
                fingerprint: g.fingerprint.clone(),
                kind: g.kind.clone(),
                firing: g.firing,
                severity: g.severity,
                summary: g.summary.clone(),
                updated_at: at,
            },
        )
    }));
    let digests: Vec<_> = digests.into_values().collect();
    for chunk in digests.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO digest_items (partner_tenant_id, route_id, fingerprint, summary, \
             added_at) VALUES {} \
             ON CONFLICT (partner_tenant_id, route_id, fingerprint) DO UPDATE SET \
             summary = excluded.summary, added_at = excluded.added_at",
            placeholders(chunk.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for (e, d) in chunk {
            q = q
                .bind(&e.partner_tenant_id)
                .bind(&d.route_id)
                .bind(&d.fingerprint)
                .bind(&d.summary)
                .bind(e.now);
        }
        q.execute(&mut *tx).await?;
    }
    Ok(())
}

/// One fresh event's effects, one statement at a time.
async fn apply_effects_in(
    tx: &mut sqlx::AnyConnection,
    e: &AppliedEvent,
    touched: &mut Touched,
) -> Result<()> {
    // Events can arrive out of order (a redelivery, a retried message); state only moves to
    // what happened later, judged by the producer's time.
    let occurred = if e.occurred_at > 0 {
        e.occurred_at
    } else {
        e.now
    };
    if let Some(item) = &e.item {
        sqlx::query(
            "INSERT INTO items (partner_tenant_id, fingerprint, kind, open, severity, \
             alert_type, customer_tenant_id, subscription_id, title, first_seen_at, \
             last_seen_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$10) \
             ON CONFLICT (partner_tenant_id, fingerprint) DO UPDATE SET \
             open = excluded.open, severity = excluded.severity, \
             alert_type = excluded.alert_type, title = excluded.title, \
             last_seen_at = excluded.last_seen_at \
             WHERE items.last_seen_at <= excluded.last_seen_at",
        )
        .bind(&e.partner_tenant_id)
        .bind(&item.fingerprint)
        .bind(&item.kind)
        .bind(flag(item.open))
        .bind(i64::from(item.severity))
        .bind(&item.alert_type)
        .bind(&item.customer_tenant_id)
        .bind(&item.subscription_id)
        .bind(&item.title)
        .bind(occurred)
        .execute(&mut *tx)
        .await?;
    }
    for g in &e.groups {
        // A new (or closed and now reopened) group waits group_wait; one that has
        // already notified waits at most until group_interval after its last notification.
        let row = sqlx::query(
            "INSERT INTO notify_groups (group_key, partner_tenant_id, route_id, version, \
             flush_seq, created_at, next_flush_at, last_notified_at, last_notified_hash, \
             group_interval_ms, repeat_interval_ms) \
             VALUES ($1,$2,$3,1,0,$4,$5,NULL,'',$6,$7) \
             ON CONFLICT (group_key) DO UPDATE SET version = notify_groups.version + 1, \
             group_interval_ms = excluded.group_interval_ms, \
             repeat_interval_ms = excluded.repeat_interval_ms, \
             next_flush_at = CASE WHEN notify_groups.last_notified_at IS NULL \
               THEN (CASE WHEN excluded.next_flush_at < notify_groups.next_flush_at \
                     THEN excluded.next_flush_at ELSE notify_groups.next_flush_at END) \
               WHEN notify_groups.last_notified_at + excluded.group_interval_ms \
                    < notify_groups.next_flush_at \
               THEN notify_groups.last_notified_at + excluded.group_interval_ms \
               ELSE notify_groups.next_flush_at END \
             RETURNING *",
        )
        .bind(&g.group_key)
        .bind(&e.partner_tenant_id)
        .bind(&g.route_id)
        .bind(e.now)
        .bind(e.now + g.group_wait_ms)
        .bind(g.group_interval_ms)
        .bind(g.repeat_interval_ms)
        .fetch_all(&mut *tx)
        .await?;
        note_touched(&row, touched);
        sqlx::query(
            "INSERT INTO group_items (group_key, fingerprint, kind, firing, severity, summary, \
             updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7) \
             ON CONFLICT (group_key, fingerprint) DO UPDATE SET kind = excluded.kind, \
             firing = excluded.firing, severity = excluded.severity, \
             summary = excluded.summary, updated_at = excluded.updated_at \
             WHERE group_items.updated_at <= excluded.updated_at",
        )
        .bind(&g.group_key)
        .bind(&g.fingerprint)
        .bind(&g.kind)
        .bind(flag(g.firing))
        .bind(i64::from(g.severity))
        .bind(&g.summary)
        .bind(occurred)
        .execute(&mut *tx)
        .await?;
    }
    for d in &e.digests {
        sqlx::query(
            "INSERT INTO digest_items (partner_tenant_id, route_id, fingerprint, summary, \
             added_at) VALUES ($1,$2,$3,$4,$5) \
             ON CONFLICT (partner_tenant_id, route_id, fingerprint) DO UPDATE SET \
             summary = excluded.summary, added_at = excluded.added_at",
        )
        .bind(&e.partner_tenant_id)
        .bind(&d.route_id)
        .bind(&d.fingerprint)
        .bind(&d.summary)
        .bind(e.now)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(fingerprint) = &e.stop_escalation_for {
        sqlx::query(
            "UPDATE escalations SET state = $3 WHERE partner_tenant_id = $1 \
             AND fingerprint = $2 AND state = $4 AND raised_at <= $5",
        )
        .bind(&e.partner_tenant_id)
        .bind(fingerprint)
        .bind(STATE_CLOSED)
        .bind(STATE_ACTIVE)
        .bind(occurred)
        .execute(&mut *tx)
        .await?;
    }
    // A stale raise (something newer about this alert was already applied) starts nothing.
    let stale = match &e.item {
        Some(item) => sqlx::query(
            "SELECT last_seen_at FROM items WHERE partner_tenant_id = $1 AND fingerprint = $2",
        )
        .bind(&e.partner_tenant_id)
        .bind(&item.fingerprint)
        .fetch_optional(&mut *tx)
        .await?
        .is_some_and(|r| r.get::<i64, _>(0) > occurred),
        None => false,
    };
    if let Some(esc) = e.escalation.as_ref().filter(|_| !stale) {
        // One running chain per alert: a re-raise while one runs does not start another.
        let running = sqlx::query(
            "SELECT escalation_id FROM escalations WHERE partner_tenant_id = $1 \
             AND fingerprint = $2 AND state = $3",
        )
        .bind(&e.partner_tenant_id)
        .bind(&esc.fingerprint)
        .bind(STATE_ACTIVE)
        .fetch_optional(&mut *tx)
        .await?;
        if running.is_none() {
            // A reopened alert needs a fresh acknowledgement.
            sqlx::query("DELETE FROM acks WHERE partner_tenant_id = $1 AND fingerprint = $2")
                .bind(&e.partner_tenant_id)
                .bind(&esc.fingerprint)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO escalations (escalation_id, partner_tenant_id, fingerprint, \
                 chain_proto, started_at, next_step, next_due_at, state, context, raised_at) \
                 VALUES ($1,$2,$3,$4,$5,0,$6,$7,$8,$9) ON CONFLICT (escalation_id) DO NOTHING",
            )
            .bind(&esc.escalation_id)
            .bind(&e.partner_tenant_id)
            .bind(&esc.fingerprint)
            .bind(esc.chain_proto.clone())
            .bind(e.now)
            .bind(esc.first_due_at)
            .bind(STATE_ACTIVE)
            .bind(&esc.context)
            .bind(occurred)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

async fn record_attempt_in(
    tx: &mut sqlx::AnyConnection,
    a: &AttemptRecord,
    result: AttemptResult,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO delivery_attempts (delivery_id, attempt, at, http_status, error, \
         duration_ms) VALUES ($1,$2,$3,$4,$5,$6) \
         ON CONFLICT (delivery_id, attempt) DO NOTHING",
    )
    .bind(&a.delivery_id)
    .bind(i64::from(a.attempt))
    .bind(a.at)
    .bind(i64::from(a.http_status))
    .bind(&a.error)
    .bind(i64::from(a.duration_ms))
    .execute(&mut *tx)
    .await?;
    let (status, next_at) = match result {
        AttemptResult::Delivered => (DeliveryStatus::Delivered, now),
        AttemptResult::RetryAt(at) => (DeliveryStatus::Retrying, at),
        AttemptResult::Dead => (DeliveryStatus::Dead, now),
        AttemptResult::Suppressed => (DeliveryStatus::Suppressed, now),
    };
    sqlx::query(
        "UPDATE deliveries SET status = $2, attempts = $3, next_attempt_at = $4, \
         lease_until = NULL, last_error = $5, updated_at = $6 WHERE delivery_id = $1",
    )
    .bind(&a.delivery_id)
    .bind(status as i32 as i64)
    .bind(i64::from(a.attempt))
    .bind(next_at)
    .bind(&a.error)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A group and its items; `lock` is appended to the group's SELECT (a row lock on Postgres).
async fn load_group_in(
    conn: &mut sqlx::AnyConnection,
    group_key: &str,
    lock: &str,
) -> Result<Option<GroupState>> {
    let Some(g) = sqlx::query(&format!(
        "SELECT * FROM notify_groups WHERE group_key = $1{lock}"
    ))
    .bind(group_key)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let items = sqlx::query(
        "SELECT fingerprint, kind, firing, severity, summary, updated_at FROM group_items \
         WHERE group_key = $1 ORDER BY fingerprint",
    )
    .bind(group_key)
    .fetch_all(&mut *conn)
    .await?;
    let mut group = group_from_row(&g);
    group.items = items.iter().map(group_item_from_row).collect();
    Ok(Some(group))
}

#[async_trait::async_trait]
impl NotifyStore for SqlStore {
    async fn set_security_contact(
        &self,
        partner: &str,
        c: &SecurityContact,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO security_contacts (partner_tenant_id, first_name, middle_name, last_name, \
             email, phone, is_group, language, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) \
             ON CONFLICT (partner_tenant_id) DO UPDATE SET first_name = excluded.first_name, \
             middle_name = excluded.middle_name, last_name = excluded.last_name, \
             email = excluded.email, phone = excluded.phone, is_group = excluded.is_group, \
             language = excluded.language, updated_at = excluded.updated_at",
        )
        .bind(partner)
        .bind(&c.first_name)
        .bind(&c.middle_name)
        .bind(&c.last_name)
        .bind(&c.email)
        .bind(&c.phone)
        .bind(flag(c.is_group))
        .bind(&c.language)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn get_security_contact(&self, partner: &str) -> Result<Option<SecurityContact>> {
        let row = sqlx::query(
            "SELECT first_name, middle_name, last_name, email, phone, is_group, language, \
             updated_at FROM security_contacts WHERE partner_tenant_id = $1",
        )
        .bind(partner)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| SecurityContact {
            first_name: r.get("first_name"),
            middle_name: r.get("middle_name"),
            last_name: r.get("last_name"),
            email: r.get("email"),
            phone: r.get("phone"),
            is_group: r.get::<i64, _>("is_group") != 0,
            language: r.get("language"),
            updated_at: Some(palisade_contracts::time::from_millis(r.get("updated_at"))),
        }))
    }

    async fn set_compliance_contact(
        &self,
        partner: &str,
        c: &ComplianceContact,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO compliance_contacts (partner_tenant_id, name, email, phone, language, \
             updated_at) VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (partner_tenant_id) DO UPDATE \
             SET name = excluded.name, email = excluded.email, phone = excluded.phone, \
             language = excluded.language, updated_at = excluded.updated_at",
        )
        .bind(partner)
        .bind(&c.name)
        .bind(&c.email)
        .bind(&c.phone)
        .bind(&c.language)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn get_compliance_contact(&self, partner: &str) -> Result<Option<ComplianceContact>> {
        let row = sqlx::query(
            "SELECT name, email, phone, language FROM compliance_contacts \
             WHERE partner_tenant_id = $1",
        )
        .bind(partner)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| ComplianceContact {
            name: r.get("name"),
            email: r.get("email"),
            phone: r.get("phone"),
            language: r.get("language"),
        }))
    }

    async fn upsert_admin_agent(&self, partner: &str, a: &AdminAgent, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO admin_agents (partner_tenant_id, agent_id, display_name, email, language, \
             time_zone, phone, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) \
             ON CONFLICT (partner_tenant_id, agent_id) DO UPDATE SET \
             display_name = excluded.display_name, email = excluded.email, \
             language = excluded.language, time_zone = excluded.time_zone, \
             phone = excluded.phone, updated_at = excluded.updated_at",
        )
        .bind(partner)
        .bind(&a.agent_id)
        .bind(&a.display_name)
        .bind(&a.email)
        .bind(&a.language)
        .bind(&a.time_zone)
        .bind(&a.phone)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn list_admin_agents(
        &self,
        partner: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AdminAgent>> {
        let rows = sqlx::query(
            "SELECT agent_id, display_name, email, language, time_zone, phone FROM admin_agents \
             WHERE partner_tenant_id = $1 AND agent_id > $2 ORDER BY agent_id LIMIT $3",
        )
        .bind(partner)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| AdminAgent {
                agent_id: r.get("agent_id"),
                display_name: r.get("display_name"),
                email: r.get("email"),
                language: r.get("language"),
                time_zone: r.get("time_zone"),
                phone: r.get("phone"),
            })
            .collect())
    }

    async fn delete_admin_agent(&self, partner: &str, agent_id: &str) -> Result<bool> {
        let res =
            sqlx::query("DELETE FROM admin_agents WHERE partner_tenant_id = $1 AND agent_id = $2")
                .bind(partner)
                .bind(agent_id)
                .execute(self.pool())
                .await?;
        Ok(res.rows_affected() > 0)
    }

    async fn insert_channel(&self, c: &ChannelRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO channels (channel_id, partner_tenant_id, display_name, kind, target, \
             language, enabled, disabled_reason, secret_sealed, secret_count, failing_since, \
             created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
        )
        .bind(&c.channel_id)
        .bind(&c.partner_tenant_id)
        .bind(&c.display_name)
        .bind(i64::from(c.kind))
        .bind(&c.target)
        .bind(&c.language)
        .bind(flag(c.enabled))
        .bind(&c.disabled_reason)
        .bind(c.secret_sealed.clone())
        .bind(i64::from(c.secret_count))
        .bind(c.failing_since)
        .bind(c.created_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn get_channel(&self, partner: &str, channel_id: &str) -> Result<Option<ChannelRecord>> {
        let row =
            sqlx::query("SELECT * FROM channels WHERE partner_tenant_id = $1 AND channel_id = $2")
                .bind(partner)
                .bind(channel_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.as_ref().map(channel_from_row))
    }

    async fn list_channels(
        &self,
        partner: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ChannelRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM channels WHERE partner_tenant_id = $1 AND channel_id > $2 \
             ORDER BY channel_id LIMIT $3",
        )
        .bind(partner)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(channel_from_row).collect())
    }

    async fn delete_channel(&self, partner: &str, channel_id: &str) -> Result<bool> {
        let res =
            sqlx::query("DELETE FROM channels WHERE partner_tenant_id = $1 AND channel_id = $2")
                .bind(partner)
                .bind(channel_id)
                .execute(self.pool())
                .await?;
        Ok(res.rows_affected() > 0)
    }

    async fn disable_channel(&self, channel_id: &str, reason: &str) -> Result<()> {
        sqlx::query("UPDATE channels SET enabled = 0, disabled_reason = $2 WHERE channel_id = $1")
            .bind(channel_id)
            .bind(reason)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn update_channel_secret(
        &self,
        channel_id: &str,
        sealed: &[u8],
        count: u32,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE channels SET secret_sealed = $2, secret_count = $3 WHERE channel_id = $1",
        )
        .bind(channel_id)
        .bind(sealed.to_vec())
        .bind(i64::from(count))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn record_channel_failure(&self, channel_id: &str, now: i64) -> Result<i64> {
        let row = sqlx::query(
            "UPDATE channels SET failing_since = COALESCE(failing_since, $2) \
             WHERE channel_id = $1 RETURNING failing_since",
        )
        .bind(channel_id)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        Ok(row
            .and_then(|r| r.get::<Option<i64>, _>("failing_since"))
            .unwrap_or(now))
    }

    async fn record_channel_success(&self, channel_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE channels SET failing_since = NULL \
             WHERE channel_id = $1 AND failing_since IS NOT NULL",
        )
        .bind(channel_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn insert_route(&self, partner: &str, route: &Route, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO routes (route_id, partner_tenant_id, priority, route_proto, created_at) \
             VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(&route.route_id)
        .bind(partner)
        .bind(i64::from(route.priority))
        .bind(route.encode_to_vec())
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn list_routes(&self, partner: &str) -> Result<Vec<Route>> {
        let rows = sqlx::query(
            "SELECT route_proto FROM routes WHERE partner_tenant_id = $1 \
             ORDER BY priority, route_id",
        )
        .bind(partner)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Route::decode(
                    r.get::<Vec<u8>, _>("route_proto").as_slice(),
                )?)
            })
            .collect()
    }

    async fn delete_route(&self, partner: &str, route_id: &str) -> Result<bool> {
        let res = sqlx::query("DELETE FROM routes WHERE partner_tenant_id = $1 AND route_id = $2")
            .bind(partner)
            .bind(route_id)
            .execute(self.pool())
            .await?;
        Ok(res.rows_affected() > 0)
    }

    async fn set_settings(&self, partner: &str, s: &PartnerSettings, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO partner_settings (partner_tenant_id, settings_proto, updated_at) \
             VALUES ($1,$2,$3) ON CONFLICT (partner_tenant_id) DO UPDATE SET \
             settings_proto = excluded.settings_proto, updated_at = excluded.updated_at",
        )
        .bind(partner)
        .bind(s.encode_to_vec())
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn get_settings(&self, partner: &str) -> Result<Option<PartnerSettings>> {
        let row =
            sqlx::query("SELECT settings_proto FROM partner_settings WHERE partner_tenant_id = $1")
                .bind(partner)
                .fetch_optional(self.pool())
                .await?;
        row.map(|r| {
            Ok(PartnerSettings::decode(
                r.get::<Vec<u8>, _>("settings_proto").as_slice(),
            )?)
        })
        .transpose()
    }

    async fn list_digest_partners(&self) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT partner_tenant_id FROM partner_settings \
             UNION SELECT DISTINCT partner_tenant_id FROM items",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    async fn apply_event(&self, e: &AppliedEvent) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let fresh = apply_event_in(&mut tx, e, &mut Touched::new()).await?;
        tx.commit().await?;
        Ok(fresh)
    }

    async fn apply_events(
        &self,
        events: &[AppliedEvent],
        decide: Option<&FlushDecider<'_>>,
    ) -> Result<AppliedBatch> {
        // One commit for a whole batch: the commit (a WAL flush) is the cost that matters.
        // A handful of multi-row statements per batch, so the transaction (and the group rows
        // it locks) is held for a few round trips, not several per event.
        let mut tx = self.pool().begin().await?;
        let fresh = claim_message_ids(&mut tx, events).await?;
        let mut touched = Touched::new();
        let mut run: Vec<&AppliedEvent> = Vec::new();
        // The runs' group items, written at the end: those a flush in this batch tells and
        // drops at once (a zero group wait) are never written at all.
        let mut pending: Vec<(String, GroupItem)> = Vec::new();
        for (e, _) in events.iter().zip(&fresh).filter(|(_, f)| **f) {
            if needs_sequential(e) {
                apply_run_in(&mut tx, &run, &mut touched, &mut pending).await?;
                run.clear();
                // In event order: what this event writes comes after what the run wrote.
                write_group_items_in(&mut tx, &pending).await?;
                pending.clear();
                apply_effects_in(&mut tx, e, &mut touched).await?;
            } else {
                run.push(e);
            }
        }
        apply_run_in(&mut tx, &run, &mut touched, &mut pending).await?;
        let now = events.iter().map(|e| e.now).max().unwrap_or(i64::MIN);
        let due_later = touched.values().any(|g| g.next_flush_at > now);
        let mut due: Vec<GroupState> = touched
            .into_values()
            .filter(|g| g.next_flush_at <= now)
            .collect();
        let mut left = Vec::new();
        if let Some(decide) = decide.filter(|_| !due.is_empty()) {
            // The batch holds these groups' row locks already: flushing them here costs a
            // few statements for all of them, instead of a locked transaction each.
            load_items_in(&mut tx, &mut due).await?;
            let merged = merge_pending(&mut due, &pending);
            let mut flushes = Vec::with_capacity(due.len());
            for group in due {
                match decide(&group)? {
                    Some(commit) => flushes.push((group, commit)),
                    None => left.push(group),
                }
            }
            write_flushes_in(&mut tx, &flushes, &merged.unstored).await?;
            // A flushed group's batch items are written as the flush left them: none when it
            // closed, the firing ones when it told them, all of them otherwise. The rest of
            // the batch's items are written as they came (an older one loses in the upsert).
            let mut keep: Vec<(String, GroupItem)> = Vec::new();
            for (group, commit) in &flushes {
                let told = commit.notified_hash.is_some();
                if commit.next_flush_at.is_none() {
                    continue;
                }
                keep.extend(
                    group
                        .items
                        .iter()
                        .filter(|i| {
                            merged
                                .won
                                .contains(&(group.group_key.clone(), i.fingerprint.clone()))
                                && (i.firing || !told)
                        })
                        .map(|i| (group.group_key.clone(), i.clone())),
                );
            }
            let flushed: std::collections::HashSet<&str> =
                flushes.iter().map(|(g, _)| g.group_key.as_str()).collect();
            pending.retain(|(key, _)| !flushed.contains(key.as_str()));
            pending.extend(keep);
        } else {
            left = due;
        }
        write_group_items_in(&mut tx, &pending).await?;
        tx.commit().await?;
        Ok(AppliedBatch {
            fresh,
            due: left
                .into_iter()
                .map(|g| DueGroup {
                    group_key: g.group_key,
                    partner_tenant_id: g.partner_tenant_id,
                    route_id: g.route_id,
                })
                .collect(),
            due_later,
        })
    }

    async fn due_groups(&self, now: i64, limit: u32) -> Result<Vec<DueGroup>> {
        let rows = sqlx::query(
            "SELECT group_key, partner_tenant_id, route_id FROM notify_groups \
             WHERE next_flush_at <= $1 ORDER BY next_flush_at LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| DueGroup {
                group_key: r.get(0),
                partner_tenant_id: r.get(1),
                route_id: r.get(2),
            })
            .collect())
    }

    async fn next_group_due(&self) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT MIN(next_flush_at) FROM notify_groups")
            .fetch_one(self.pool())
            .await?;
        Ok(row.get::<Option<i64>, _>(0))
    }

    async fn load_group(&self, group_key: &str) -> Result<Option<GroupState>> {
        let mut conn = self.pool().acquire().await?;
        load_group_in(&mut conn, group_key, "").await
    }

    async fn flush_group(
        &self,
        group_key: &str,
        now: i64,
        decide: &FlushDecider<'_>,
    ) -> Result<bool> {
        let lock = match self.db.backend() {
            // Events touching the group and other flushers queue behind this flush: what it
            // reads is what it commits.
            Backend::Postgres => " FOR UPDATE",
            // One connection, one writer: the transaction is already exclusive.
            Backend::Sqlite => "",
        };
        let mut tx = self.pool().begin().await?;
        let Some(group) = load_group_in(&mut tx, group_key, lock).await? else {
            return Ok(false);
        };
        // Another flusher got here first, or an event moved the timer on.
        if group.next_flush_at > now {
            return Ok(false);
        }
        let Some(c) = decide(&group)? else {
            return Ok(false);
        };
        write_flushes_in(&mut tx, &[(group, c)], &Default::default()).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_digest_items(&self, partner: &str) -> Result<Vec<DigestAdd>> {
        let rows = sqlx::query(
            "SELECT route_id, fingerprint, summary FROM digest_items \
             WHERE partner_tenant_id = $1 ORDER BY added_at, fingerprint",
        )
        .bind(partner)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| DigestAdd {
                route_id: r.get("route_id"),
                fingerprint: r.get("fingerprint"),
                summary: r.get("summary"),
            })
            .collect())
    }

    async fn digest_stats(&self, partner: &str, now: i64) -> Result<DigestStats> {
        // Microsoft's daily summary covers alerts active in the last 60 days.
        let window_start = now - 60 * 24 * 3_600_000;
        let alert_filter = "partner_tenant_id = $1 AND open = 1 AND kind LIKE 'alert.%' \
                            AND last_seen_at >= $2";
        let totals = sqlx::query(&format!(
            "SELECT COUNT(*), COUNT(DISTINCT customer_tenant_id), \
             COUNT(DISTINCT subscription_id), MIN(first_seen_at) FROM items WHERE {alert_filter}"
        ))
        .bind(partner)
        .bind(window_start)
        .fetch_one(self.pool())
        .await?;
        let per_type = sqlx::query(&format!(
            "SELECT alert_type, COUNT(*) FROM items WHERE {alert_filter} \
             GROUP BY alert_type ORDER BY alert_type"
        ))
        .bind(partner)
        .bind(window_start)
        .fetch_all(self.pool())
        .await?;
        let overdue = sqlx::query(&format!(
            "SELECT COUNT(*) FROM items WHERE {alert_filter} AND first_seen_at < $3"
        ))
        .bind(partner)
        .bind(window_start)
        .bind(now - 24 * 3_600_000)
        .fetch_one(self.pool())
        .await?;
        let failures = sqlx::query(
            "SELECT title FROM items WHERE partner_tenant_id = $1 AND open = 1 \
             AND kind = 'compliance.changed' ORDER BY title",
        )
        .bind(partner)
        .fetch_all(self.pool())
        .await?;
        Ok(DigestStats {
            open_alerts: totals.get(0),
            customers: totals.get(1),
            subscriptions: totals.get(2),
            oldest_open_alert_at: totals.get(3),
            per_alert_type: per_type
                .iter()
                .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
                .collect(),
            overdue_alerts: overdue.get(0),
            open_compliance_failures: failures.iter().map(|r| r.get::<String, _>(0)).collect(),
        })
    }

    async fn commit_digest(
        &self,
        partner: &str,
        local_date: &str,
        now: i64,
        deliveries: &[NewDelivery],
    ) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let first = sqlx::query(
            "INSERT INTO digest_runs (partner_tenant_id, local_date, ran_at) VALUES ($1,$2,$3) \
             ON CONFLICT (partner_tenant_id, local_date) DO NOTHING",
        )
        .bind(partner)
        .bind(local_date)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if first == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM digest_items WHERE partner_tenant_id = $1 AND added_at <= $2")
            .bind(partner)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        insert_deliveries_in(&mut tx, deliveries).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn snooze(&self, partner: &str, fingerprint: &str, until: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO snoozes (partner_tenant_id, fingerprint, until_at) VALUES ($1,$2,$3) \
             ON CONFLICT (partner_tenant_id, fingerprint) DO UPDATE SET until_at = excluded.until_at",
        )
        .bind(partner)
        .bind(fingerprint)
        .bind(until)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn snoozed_until(&self, partner: &str, fingerprint: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT until_at FROM snoozes WHERE partner_tenant_id = $1 AND fingerprint = $2",
        )
        .bind(partner)
        .bind(fingerprint)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| r.get::<i64, _>(0)))
    }

    async fn list_snoozes(&self, partner: &str, now: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT fingerprint, until_at FROM snoozes WHERE partner_tenant_id = $1 AND until_at > $2",
        )
        .bind(partner)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect())
    }

    async fn acknowledge(
        &self,
        partner: &str,
        fingerprint: &str,
        note: &str,
        now: i64,
    ) -> Result<u32> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO acks (partner_tenant_id, fingerprint, acknowledged_at, note) \
             VALUES ($1,$2,$3,$4) ON CONFLICT (partner_tenant_id, fingerprint) DO NOTHING",
        )
        .bind(partner)
        .bind(fingerprint)
        .bind(now)
        .bind(note)
        .execute(&mut *tx)
        .await?;
        let running = sqlx::query(
            "SELECT escalation_id, chain_proto, next_step FROM escalations \
             WHERE partner_tenant_id = $1 AND fingerprint = $2 AND state = $3",
        )
        .bind(partner)
        .bind(fingerprint)
        .bind(STATE_ACTIVE)
        .fetch_all(&mut *tx)
        .await?;
        let mut cancelled = 0_u32;
        for r in &running {
            let chain = PartnerSettings::decode(r.get::<Vec<u8>, _>("chain_proto").as_slice())?;
            let next = r.get::<i64, _>("next_step") as usize;
            cancelled += chain.escalation.len().saturating_sub(next) as u32;
            sqlx::query("UPDATE escalations SET state = $2 WHERE escalation_id = $1")
                .bind(r.get::<String, _>("escalation_id"))
                .bind(STATE_ACKNOWLEDGED)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(cancelled)
    }

    async fn is_acknowledged(&self, partner: &str, fingerprint: &str) -> Result<bool> {
        let row =
            sqlx::query("SELECT 1 FROM acks WHERE partner_tenant_id = $1 AND fingerprint = $2")
                .bind(partner)
                .bind(fingerprint)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.is_some())
    }

    async fn due_escalations(&self, now: i64, limit: u32) -> Result<Vec<EscalationRow>> {
        let rows = sqlx::query(
            "SELECT * FROM escalations WHERE state = $1 AND next_due_at <= $2 \
             ORDER BY next_due_at LIMIT $3",
        )
        .bind(STATE_ACTIVE)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(escalation_from_row).collect())
    }

    async fn commit_escalation_step(
        &self,
        escalation_id: &str,
        expected_step: u32,
        next: Option<(u32, i64)>,
        deliveries: &[NewDelivery],
    ) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let (next_step, next_due, state) = match next {
            Some((step, due)) => (i64::from(step), due, STATE_ACTIVE),
            None => (i64::from(expected_step) + 1, i64::MAX, STATE_DONE),
        };
        // Only the holder of the expected step moves the chain: a stale or duplicate timer
        // (another replica, a restart) finds the step already taken and does nothing.
        let moved = sqlx::query(
            "UPDATE escalations SET next_step = $3, next_due_at = $4, state = $5 \
             WHERE escalation_id = $1 AND next_step = $2 AND state = $6",
        )
        .bind(escalation_id)
        .bind(i64::from(expected_step))
        .bind(next_step)
        .bind(next_due)
        .bind(state)
        .bind(STATE_ACTIVE)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        insert_deliveries_in(&mut tx, deliveries).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get_escalation(
        &self,
        partner: &str,
        fingerprint: &str,
    ) -> Result<Option<EscalationRow>> {
        let row = sqlx::query(
            "SELECT * FROM escalations WHERE partner_tenant_id = $1 AND fingerprint = $2 \
             ORDER BY started_at DESC LIMIT 1",
        )
        .bind(partner)
        .bind(fingerprint)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(escalation_from_row))
    }

    async fn insert_deliveries(&self, deliveries: &[NewDelivery]) -> Result<u64> {
        let mut tx = self.pool().begin().await?;
        let n = insert_deliveries_in(&mut tx, deliveries).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
        room: &EndpointRoom,
    ) -> Result<Vec<DeliveryRow>> {
        let lock = match self.db.backend() {
            // Replicas claim disjoint rows instead of queueing behind each other's locks.
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            // One connection, one writer: the statement is already exclusive.
            Backend::Sqlite => "",
        };
        // Binds: $1 sending, $2 lease, $3 now, $4 planned, $5 retrying, $6 limit, then the
        // room: $7 for unlisted endpoints, (endpoint, room) per listed one from $8.
        let due = "((status IN ($4, $5) AND next_attempt_at <= $3) \
                   OR (status = $1 AND lease_until <= $3))";
        let endpoint = "(CASE WHEN channel_id = '' THEN target ELSE channel_id END)";
        let unlimited = room.each.is_none() && room.listed.is_empty();
        let candidates = if unlimited {
            format!("SELECT delivery_id FROM deliveries WHERE {due}")
        } else {
            // Each endpoint's oldest rows, as many as it has room for. The window runs a
            // level below the row locks (Postgres allows no window beside FOR UPDATE), and
            // the outer level checks `due` again on the row it locks.
            let listed = PerRow::new(room.listed.len(), 2, 8);
            let cap = if room.listed.is_empty() {
                "$7".to_owned()
            } else {
                format!("CASE endpoint {} ELSE $7 END", listed.case(1))
            };
            format!(
                "SELECT delivery_id FROM deliveries WHERE {due} AND delivery_id IN ( \
                   SELECT delivery_id FROM ( \
                     SELECT delivery_id, {endpoint} AS endpoint, ROW_NUMBER() OVER ( \
                       PARTITION BY {endpoint} ORDER BY next_attempt_at, delivery_id) AS nth \
                     FROM deliveries WHERE {due}) ranked \
                   WHERE nth <= {cap})"
            )
        };
        let sql = format!(
            "UPDATE deliveries SET status = $1, lease_until = $2, updated_at = $3 \
             WHERE delivery_id IN ({candidates} ORDER BY next_attempt_at LIMIT $6 {lock}) \
             RETURNING {DELIVERY_COLUMNS}"
        );
        let mut q = sqlx::query(&sql)
            .bind(DeliveryStatus::Sending as i32 as i64)
            .bind(lease_until)
            .bind(now)
            .bind(DeliveryStatus::Planned as i32 as i64)
            .bind(DeliveryStatus::Retrying as i32 as i64)
            .bind(i64::from(limit));
        if !unlimited {
            q = q.bind(i64::from(room.each.unwrap_or(limit)));
            for (endpoint, n) in &room.listed {
                q = q.bind(endpoint).bind(i64::from(*n));
            }
        }
        let rows = q.fetch_all(self.pool()).await?;
        let mut claimed: Vec<DeliveryRow> = rows.iter().map(delivery_from_row).collect();
        claimed.sort_by_key(|d| d.delivery.next_attempt_at);
        Ok(claimed)
    }

    async fn next_delivery_due(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(CASE WHEN status = $1 THEN lease_until ELSE next_attempt_at END) \
             FROM deliveries WHERE status IN ($1, $2, $3)",
        )
        .bind(DeliveryStatus::Sending as i32 as i64)
        .bind(DeliveryStatus::Planned as i32 as i64)
        .bind(DeliveryStatus::Retrying as i32 as i64)
        .fetch_one(self.pool())
        .await?;
        Ok(row.get::<Option<i64>, _>(0))
    }

    async fn record_attempt(
        &self,
        a: &AttemptRecord,
        result: AttemptResult,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        record_attempt_in(&mut tx, a, result, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_delivered(&self, attempts: &[AttemptRecord], now: i64) -> Result<()> {
        // Two multi-row statements per chunk instead of two statements per attempt: at a
        // thousand deliveries a second the single writer was spending its time on round trips.
        let mut tx = self.pool().begin().await?;
        for chunk in attempts.chunks(ROWS_PER_STATEMENT / 2) {
            insert_attempts(&mut tx, chunk.iter()).await?;
            // Per-row values through CASE on the id: plain SQL that both backends run. Binds:
            // $1 status, $2 now, then (id, attempt, error) per row from $3.
            let rows = PerRow::new(chunk.len(), 3, 3);
            let ids = rows.ids();
            let sql = format!(
                "UPDATE deliveries SET status = $1, next_attempt_at = $2, lease_until = NULL, \
                 updated_at = $2, attempts = CASE delivery_id {} END, \
                 last_error = CASE delivery_id {} END WHERE delivery_id IN ({ids})",
                rows.case(1),
                rows.case(2)
            );
            let mut q = sqlx::query(&sql)
                .bind(DeliveryStatus::Delivered as i32 as i64)
                .bind(now);
            for a in chunk {
                q = q
                    .bind(&a.delivery_id)
                    .bind(i64::from(a.attempt))
                    .bind(&a.error);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn record_retrying(
        &self,
        attempts: &[(AttemptRecord, i64)],
        failing_channels: &[String],
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        for chunk in attempts.chunks(ROWS_PER_STATEMENT / 2) {
            insert_attempts(&mut tx, chunk.iter().map(|(a, _)| a)).await?;
            // As in `record_delivered`: per-row values through CASE on the id. Binds: $1
            // status, $2 now, then (id, attempt, error, retry at) per row from $3.
            let rows = PerRow::new(chunk.len(), 4, 3);
            let ids = rows.ids();
            let sql = format!(
                "UPDATE deliveries SET status = $1, lease_until = NULL, updated_at = $2, \
                 attempts = CASE delivery_id {} END, last_error = CASE delivery_id {} END, \
                 next_attempt_at = CASE delivery_id {} END WHERE delivery_id IN ({ids})",
                rows.case(1),
                rows.case(2),
                rows.case(3)
            );
            let mut q = sqlx::query(&sql)
                .bind(DeliveryStatus::Retrying as i32 as i64)
                .bind(now);
            for (a, retry_at) in chunk {
                q = q
                    .bind(&a.delivery_id)
                    .bind(i64::from(a.attempt))
                    .bind(&a.error)
                    .bind(*retry_at);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in failing_channels.chunks(ROWS_PER_STATEMENT) {
            let ids = (0..chunk.len())
                .map(|r| format!("${}", r + 2))
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "UPDATE channels SET failing_since = $1 \
                 WHERE failing_since IS NULL AND channel_id IN ({ids})"
            );
            let mut q = sqlx::query(&sql).bind(now);
            for id in chunk {
                q = q.bind(id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release(&self, rows: &[(&str, i64)], now: i64) -> Result<()> {
        // One statement for a claim's worth of rows held back (busy endpoints, open
        // breakers), not one round trip each. Binds: $1 planned, $2 retrying, $3 now, $4
        // sending, then (id, at) per row from $5.
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let per_row = PerRow::new(chunk.len(), 2, 5);
            let sql = format!(
                "UPDATE deliveries SET status = CASE WHEN attempts = 0 THEN $1 ELSE $2 END, \
                 next_attempt_at = CASE delivery_id {} END, lease_until = NULL, updated_at = $3 \
                 WHERE status = $4 AND delivery_id IN ({})",
                per_row.case(1),
                per_row.ids()
            );
            let mut q = sqlx::query(&sql)
                .bind(DeliveryStatus::Planned as i32 as i64)
                .bind(DeliveryStatus::Retrying as i32 as i64)
                .bind(now)
                .bind(DeliveryStatus::Sending as i32 as i64);
            for (id, at) in chunk {
                q = q.bind(*id).bind(*at);
            }
            q.execute(self.pool()).await?;
        }
        Ok(())
    }

    async fn get_delivery(&self, delivery_id: &str) -> Result<Option<DeliveryRow>> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE delivery_id = $1"
        ))
        .bind(delivery_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(delivery_from_row))
    }

    async fn list_deliveries(
        &self,
        partner: &str,
        f: &DeliveryFilter,
    ) -> Result<Vec<(DeliveryRow, Vec<AttemptRecord>)>> {
        // Filters are optional; binding '' and testing for it keeps one static statement.
        let statuses: Vec<i64> = f.statuses.iter().map(|s| i64::from(*s)).collect();
        let status_sql = if statuses.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
            format!("AND status IN ({})", list.join(","))
        };
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE partner_tenant_id = $1 \
             AND delivery_id > $2 AND ($3 = '' OR fingerprint = $3) \
             AND ($4 = '' OR channel_id = $4) {status_sql} ORDER BY delivery_id LIMIT $5"
        );
        let rows = sqlx::query(&sql)
            .bind(partner)
            .bind(f.after.clone().unwrap_or_default())
            .bind(f.fingerprint.clone().unwrap_or_default())
            .bind(f.channel_id.clone().unwrap_or_default())
            .bind(i64::from(f.limit.max(1)))
            .fetch_all(self.pool())
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let d = delivery_from_row(r);
            let attempts = sqlx::query(
                "SELECT attempt, at, http_status, error, duration_ms FROM delivery_attempts \
                 WHERE delivery_id = $1 ORDER BY attempt",
            )
            .bind(&d.delivery.delivery_id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|a| AttemptRecord {
                delivery_id: d.delivery.delivery_id.clone(),
                attempt: a.get::<i64, _>("attempt") as u32,
                at: a.get("at"),
                http_status: a.get::<i64, _>("http_status") as u32,
                error: a.get("error"),
                duration_ms: a.get::<i64, _>("duration_ms") as u32,
            })
            .collect();
            out.push((d, attempts));
        }
        Ok(out)
    }

    async fn metric_counts(&self) -> Result<(Vec<(String, i32, i64)>, i64)> {
        let disabled = sqlx::query(
            "SELECT partner_tenant_id, kind, COUNT(*) FROM channels WHERE enabled = 0 \
             GROUP BY partner_tenant_id, kind",
        )
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| {
            (
                r.get::<String, _>(0),
                r.get::<i64, _>(1) as i32,
                r.get::<i64, _>(2),
            )
        })
        .collect();
        let dead = sqlx::query("SELECT COUNT(*) FROM deliveries WHERE status = $1")
            .bind(DeliveryStatus::Dead as i32 as i64)
            .fetch_one(self.pool())
            .await?
            .get::<i64, _>(0);
        Ok((disabled, dead))
    }

    async fn redrive(&self, partner: &str, delivery_ids: &[String], now: i64) -> Result<u64> {
        // A redriven delivery starts a fresh retry budget; its attempt log is kept, so the
        // attempt counter continues and the log stays one row per real attempt.
        let base = "UPDATE deliveries SET status = $2, next_attempt_at = $3, updated_at = $3, \
                    retry_base = attempts, lease_until = NULL WHERE partner_tenant_id = $1 AND status = $4";
        let mut total = 0;
        if delivery_ids.is_empty() {
            total += sqlx::query(base)
                .bind(partner)
                .bind(DeliveryStatus::Retrying as i32 as i64)
                .bind(now)
                .bind(DeliveryStatus::Dead as i32 as i64)
                .execute(self.pool())
                .await?
                .rows_affected();
        } else {
            let sql = format!("{base} AND delivery_id = $5");
            for id in delivery_ids {
                total += sqlx::query(&sql)
                    .bind(partner)
                    .bind(DeliveryStatus::Retrying as i32 as i64)
                    .bind(now)
                    .bind(DeliveryStatus::Dead as i32 as i64)
                    .bind(id)
                    .execute(self.pool())
                    .await?
                    .rows_affected();
            }
        }
        Ok(total)
    }
}
