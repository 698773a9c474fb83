//! [`AlertStore`] over sqlx's `Any` driver: one set of queries for Postgres and SQLite,
//! branching on the backend only for row locks (`FOR UPDATE SKIP LOCKED`, advisory locks).
//!
//! An alert row keeps the columns that are filtered, sorted or aggregated on, and the whole
//! `palisade.alerts.v1.Alert` as protobuf bytes, so the model can grow without a migration.

use std::collections::{BTreeSet, HashMap};

use palisade_contracts::{
    alerts::v1::{
        Alert, AlertSortField, AlertSource, AlertStatus, AlertTransition, AlertTypeSummary,
        IngestionSettings, Resolution, WriteBackState,
    },
    common::v1::SortOrder,
    events::v1::{
        AlertRaised, AlertReopened, AlertResolved, AlertUpdated, AlertWriteBack, Envelope,
    },
    time::{from_millis, to_millis},
};
use palisade_storage::{Backend, Database};
use prost::Message;
use sqlx::{Any, Row, any::AnyArguments, query::Query};

use super::*;
use crate::{
    error::IngestError,
    model::{self, ChangeKind, graph_reason},
};

const ENRICH_PENDING: i64 = 0;
const ENRICH_DONE: i64 = 1;

#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Database,
}

impl SqlStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    fn pool(&self) -> &sqlx::AnyPool {
        self.db.pool()
    }

    fn postgres(&self) -> bool {
        self.db.backend() == Backend::Postgres
    }

    fn skip_locked(&self) -> &'static str {
        if self.postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        }
    }

    fn for_update(&self) -> &'static str {
        if self.postgres() { " FOR UPDATE" } else { "" }
    }
}

/// A bind value for queries built at run time. The borrowed variants bind without a copy: the
/// ingest binds every alert's strings and raw payload (about a kilobyte), which are alive until
/// the statement ran.
#[derive(Debug, Clone)]
enum Arg<'a> {
    I(i64),
    OptI(Option<i64>),
    S(String),
    Str(&'a str),
    OptStr(Option<&'a str>),
    B(Vec<u8>),
}

fn bind_all<'q>(
    mut q: Query<'q, Any, AnyArguments<'q>>,
    args: Vec<Arg<'q>>,
) -> Query<'q, Any, AnyArguments<'q>> {
    for arg in args {
        q = match arg {
            Arg::I(v) => q.bind(v),
            Arg::OptI(v) => q.bind(v),
            Arg::S(v) => q.bind(v),
            Arg::Str(v) => q.bind(v),
            Arg::OptStr(v) => q.bind(v),
            Arg::B(v) => q.bind(v),
        };
    }
    q
}

/// Collects binds and hands out `$n` placeholders.
#[derive(Default)]
struct Binds<'a>(Vec<Arg<'a>>);

impl<'a> Binds<'a> {
    fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Appends one `($n, $n+1, …)` row of a multi-row VALUES to `sql` (with the comma before
    /// it unless it is the first), without a string per placeholder: a page of 500 alerts binds
    /// some 17,000 values, and their `format!`s were a tenth of the ingest's instructions.
    fn row(&mut self, sql: &mut String, args: impl IntoIterator<Item = Arg<'a>>) {
        use std::fmt::Write;
        if sql.ends_with(')') {
            sql.push_str(", ");
        }
        sql.push('(');
        for (i, arg) in args.into_iter().enumerate() {
            self.0.push(arg);
            if i > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "${}", self.0.len());
        }
        sql.push(')');
    }

    fn push(&mut self, arg: Arg<'a>) -> String {
        self.0.push(arg);
        format!("${}", self.0.len())
    }
}

fn ms(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().map(to_millis).unwrap_or(0)
}

/// When Microsoft detected the alert; its first observation or our first sight otherwise.
/// Response times are measured from here.
pub(crate) fn detected_ms(a: &Alert) -> i64 {
    [
        ms(&a.detected_at),
        ms(&a.first_observed_at),
        ms(&a.created_at),
    ]
    .into_iter()
    .find(|t| *t > 0)
    .unwrap_or(0)
}

fn opt_ms(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(to_millis)
}

fn decode(bytes: &[u8]) -> Result<Alert> {
    Ok(Alert::decode(bytes)?)
}

/// The alert as events carry it: without the (possibly long) history.
fn for_event(alert: &Alert) -> Alert {
    Alert {
        history: Vec::new(),
        ..alert.clone()
    }
}

pub(crate) fn event_for(applied: &Applied) -> Envelope {
    event_with(
        applied.change,
        &applied.changed_fields,
        for_event(&applied.alert),
    )
    .0
}

/// [`event_for`] without copying the alert: it moves into the event for encoding and back, its
/// history set aside meanwhile (events carry none).
fn event_for_owned(applied: &mut Applied) -> Envelope {
    let history = std::mem::take(&mut applied.alert.history);
    let (envelope, mut alert) = event_with(
        applied.change,
        &applied.changed_fields,
        std::mem::take(&mut applied.alert),
    );
    alert.history = history;
    applied.alert = alert;
    envelope
}

/// The event of a change, and the alert back.
fn event_with(change: ChangeKind, changed_fields: &[String], alert: Alert) -> (Envelope, Alert) {
    let partner = alert.partner_tenant_id.clone();
    let kind = change.event_kind();
    match change {
        ChangeKind::Raised => {
            let event = AlertRaised { alert: Some(alert) };
            let envelope = palisade_queue::envelope(kind, &partner, &event);
            (envelope, event.alert.unwrap_or_default())
        }
        ChangeKind::Updated => {
            let event = AlertUpdated {
                alert: Some(alert),
                changed_fields: changed_fields.to_vec(),
            };
            let envelope = palisade_queue::envelope(kind, &partner, &event);
            (envelope, event.alert.unwrap_or_default())
        }
        ChangeKind::Resolved => {
            let event = AlertResolved { alert: Some(alert) };
            let envelope = palisade_queue::envelope(kind, &partner, &event);
            (envelope, event.alert.unwrap_or_default())
        }
        ChangeKind::Reopened => {
            let event = AlertReopened { alert: Some(alert) };
            let envelope = palisade_queue::envelope(kind, &partner, &event);
            (envelope, event.alert.unwrap_or_default())
        }
    }
}

/// A stable 63-bit key for an advisory lock on a partner's alerts.
fn lock_key(partner_tenant_id: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in partner_tenant_id.to_ascii_lowercase().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash >> 1) as i64
}

async fn insert_outbox(
    conn: &mut sqlx::AnyConnection,
    events: &[(&str, Envelope)],
    now: i64,
) -> Result<()> {
    for chunk in events.chunks(500) {
        let mut binds = Binds::with_capacity(chunk.len() * 4);
        let mut sql = String::with_capacity(80 + chunk.len() * 32);
        sql.push_str("INSERT INTO outbox (topic, message_id, envelope, created_at) VALUES ");
        for (topic, envelope) in chunk {
            binds.row(
                &mut sql,
                [
                    Arg::Str(topic),
                    Arg::Str(&envelope.message_id),
                    Arg::B(envelope.encode_to_vec()),
                    Arg::I(now),
                ],
            );
        }
        bind_all(sqlx::query(&sql), binds.0)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn insert_transitions(
    conn: &mut sqlx::AnyConnection,
    rows: &[(String, String, AlertTransition)],
) -> Result<()> {
    for chunk in rows.chunks(500) {
        let mut binds = Binds::with_capacity(chunk.len() * 7);
        let mut sql = String::with_capacity(120 + chunk.len() * 56);
        sql.push_str(
            "INSERT INTO alert_transitions (alert_id, partner_tenant_id, from_status, to_status, actor, reason, at) VALUES ",
        );
        for (alert_id, partner, t) in chunk {
            binds.row(
                &mut sql,
                [
                    Arg::Str(alert_id),
                    Arg::Str(partner),
                    Arg::I(i64::from(t.from_status)),
                    Arg::I(i64::from(t.to_status)),
                    Arg::Str(&t.actor),
                    Arg::Str(&t.reason),
                    Arg::I(ms(&t.at)),
                ],
            );
        }
        bind_all(sqlx::query(&sql), binds.0)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

struct RowWrite<'a> {
    alert: Alert,
    raw_graph: Option<&'a str>,
    raw_fraud: Option<&'a str>,
}

const UPSERT_COLUMNS: &str = "alert_id, partner_tenant_id, fingerprint, status, severity, alert_type, \
    alert_type_key, customer_tenant_id, subscription_id, reseller_tenant_id, is_test, detected_at, \
    last_observed_at, resolved_at, write_back_state, enrich_state, enrich_after, alert_proto, raw_graph, \
    raw_fraud, created_at, updated_at";

/// Writes alert rows: `stored` ones (read under the partner's lock in this transaction) as an
/// upsert that keeps their enrichment and earlier raw payloads, new ones as a plain INSERT.
///
/// A plain INSERT is cheaper for Postgres than `ON CONFLICT` (no speculative insertion: no
/// probe of the key before the write and no confirmation record after it). It is still safe:
/// every writer of new rows holds the partner's lock, so no other transaction can have
/// inserted one of them since it was read as absent, and if one had, the primary key would
/// fail this transaction rather than store the alert twice.
async fn upsert_alerts(
    conn: &mut sqlx::AnyConnection,
    rows: &[RowWrite<'_>],
    stored: bool,
    now: i64,
) -> Result<()> {
    for chunk in rows.chunks(200) {
        let mut binds = Binds::with_capacity(chunk.len() * 22);
        let mut sql = String::with_capacity(1200 + chunk.len() * 150);
        sql.push_str("INSERT INTO alerts (");
        sql.push_str(UPSERT_COLUMNS);
        sql.push_str(") VALUES ");
        for row in chunk {
            let a = &row.alert;
            binds.row(
                &mut sql,
                [
                    Arg::Str(&a.alert_id),
                    Arg::Str(&a.partner_tenant_id),
                    Arg::Str(&a.fingerprint),
                    Arg::I(i64::from(a.status)),
                    Arg::I(i64::from(a.severity)),
                    Arg::Str(&a.alert_type),
                    Arg::S(a.alert_type.to_ascii_lowercase()),
                    Arg::Str(&a.customer_tenant_id),
                    Arg::Str(&a.subscription_id),
                    Arg::Str(&a.reseller_tenant_id),
                    Arg::I(i64::from(a.is_test)),
                    Arg::I(detected_ms(a)),
                    Arg::I(ms(&a.last_observed_at)),
                    Arg::OptI(opt_ms(&a.resolved_at)),
                    Arg::I(i64::from(a.write_back_state)),
                    Arg::I(if a.enriched {
                        ENRICH_DONE
                    } else {
                        ENRICH_PENDING
                    }),
                    Arg::I(now),
                    Arg::B(a.encode_to_vec()),
                    Arg::OptStr(row.raw_graph),
                    Arg::OptStr(row.raw_fraud),
                    Arg::I(if ms(&a.created_at) > 0 {
                        ms(&a.created_at)
                    } else {
                        now
                    }),
                    Arg::I(now),
                ],
            );
        }
        // The detected time used for response times: Microsoft's detection, else first
        // observation. Enrichment state is never reset by an update.
        if stored {
            sql.push_str(
            " ON CONFLICT (alert_id) DO UPDATE SET \
             status = excluded.status, severity = excluded.severity, alert_type = excluded.alert_type, \
             alert_type_key = excluded.alert_type_key, customer_tenant_id = excluded.customer_tenant_id, \
             subscription_id = excluded.subscription_id, reseller_tenant_id = excluded.reseller_tenant_id, \
             is_test = excluded.is_test, detected_at = excluded.detected_at, \
             last_observed_at = excluded.last_observed_at, resolved_at = excluded.resolved_at, \
             write_back_state = excluded.write_back_state, alert_proto = excluded.alert_proto, \
             raw_graph = COALESCE(excluded.raw_graph, alerts.raw_graph), \
             raw_fraud = COALESCE(excluded.raw_fraud, alerts.raw_fraud), updated_at = excluded.updated_at",
            );
        }
        bind_all(sqlx::query(&sql), binds.0)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Rewrites one alert's stored proto and derived columns (resolution, write-back, enrichment).
async fn update_alert(conn: &mut sqlx::AnyConnection, a: &Alert, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE alerts SET status = $1, severity = $2, resolved_at = $3, write_back_state = $4, \
         reseller_tenant_id = $5, enrich_state = $6, alert_proto = $7, updated_at = $8 WHERE alert_id = $9",
    )
    .bind(i64::from(a.status))
    .bind(i64::from(a.severity))
    .bind(opt_ms(&a.resolved_at))
    .bind(i64::from(a.write_back_state))
    .bind(a.reseller_tenant_id.clone())
    .bind(if a.enriched { ENRICH_DONE } else { ENRICH_PENDING })
    .bind(a.encode_to_vec())
    .bind(now)
    .bind(a.alert_id.clone())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl SqlStore {
    async fn lock_partners(
        &self,
        conn: &mut sqlx::AnyConnection,
        partners: &BTreeSet<String>,
    ) -> Result<()> {
        if self.postgres() {
            // Sorted, so two transactions never wait on each other in opposite orders.
            for partner in partners {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(lock_key(partner))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }

    async fn load_alerts(
        &self,
        conn: &mut sqlx::AnyConnection,
        ids: &[String],
    ) -> Result<HashMap<String, Alert>> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut binds = Binds::with_capacity(chunk.len());
            let mut sql = String::with_capacity(60 + chunk.len() * 6);
            sql.push_str("SELECT alert_proto FROM alerts WHERE alert_id IN ");
            binds.row(&mut sql, chunk.iter().map(|id| Arg::Str(id)));
            for row in bind_all(sqlx::query(&sql), binds.0)
                .fetch_all(&mut *conn)
                .await?
            {
                let bytes: Vec<u8> = row.get(0);
                let alert = decode(&bytes)?;
                out.insert(alert.alert_id.clone(), alert);
            }
        }
        Ok(out)
    }

    /// The stored alerts a batch may land in: per fingerprint, slot 0, then further slots while
    /// an observation has not met its own alert (see `model::slot_fingerprint`). Slots are filled
    /// in order under the partner lock, so the first missing slot ends a fingerprint's chain.
    async fn load_slots(
        &self,
        conn: &mut sqlx::AnyConnection,
        batch: &[Observation],
    ) -> Result<HashMap<String, Alert>> {
        let mut state = HashMap::new();
        let mut searching: HashMap<&str, Vec<&Observation>> = HashMap::new();
        for obs in batch {
            searching
                .entry(obs.fingerprint.as_str())
                .or_default()
                .push(obs);
        }
        let mut slot = 0;
        while !searching.is_empty() {
            let wanted: Vec<(&str, String)> = searching
                .keys()
                .map(|f| (*f, model::alert_id_for(&model::slot_fingerprint(f, slot))))
                .collect();
            let mut ids: Vec<String> = wanted.iter().map(|(_, id)| id.clone()).collect();
            ids.sort();
            let loaded = self.load_alerts(conn, &ids).await?;
            for (fingerprint, id) in wanted {
                let done = match loaded.get(&id) {
                    None => true,
                    Some(alert) => {
                        let open = searching.get_mut(fingerprint).expect("a searched key");
                        open.retain(|obs| model::affinity(alert, obs) != model::Affinity::Same);
                        open.is_empty()
                    }
                };
                if done {
                    searching.remove(fingerprint);
                }
            }
            state.extend(loaded);
            slot += 1;
        }
        Ok(state)
    }

    /// WHERE clauses of a list query, after `partner_tenant_id = $1`.
    fn filter_sql(query: &ListQuery, binds: &mut Binds) -> String {
        let mut sql = String::new();
        let f = &query.filter;
        if !f.customer_tenant_id.is_empty() {
            sql += &format!(
                " AND customer_tenant_id = {}",
                binds.push(Arg::S(f.customer_tenant_id.clone()))
            );
        }
        if !f.reseller_tenant_id.is_empty() {
            sql += &format!(
                " AND reseller_tenant_id = {}",
                binds.push(Arg::S(f.reseller_tenant_id.clone()))
            );
        }
        if !f.statuses.is_empty() {
            let list: Vec<String> = f
                .statuses
                .iter()
                .map(|s| binds.push(Arg::I(i64::from(*s))))
                .collect();
            sql += &format!(" AND status IN ({})", list.join(", "));
        }
        if query.open_only {
            sql += &format!(" AND status <> {}", AlertStatus::Resolved as i32);
        }
        if !f.severities.is_empty() {
            let list: Vec<String> = f
                .severities
                .iter()
                .map(|s| binds.push(Arg::I(i64::from(*s))))
                .collect();
            sql += &format!(" AND severity IN ({})", list.join(", "));
        }
        if !f.alert_types.is_empty() {
            let list: Vec<String> = f
                .alert_types
                .iter()
                .map(|t| binds.push(Arg::S(t.to_ascii_lowercase())))
                .collect();
            sql += &format!(" AND alert_type_key IN ({})", list.join(", "));
        }
        if let Some(range) = &f.last_observed {
            if let Some(start) = &range.start {
                sql += &format!(
                    " AND last_observed_at >= {}",
                    binds.push(Arg::I(to_millis(start)))
                );
            }
            if let Some(end) = &range.end {
                sql += &format!(
                    " AND last_observed_at < {}",
                    binds.push(Arg::I(to_millis(end)))
                );
            }
        }
        if let Some(before) = query.last_observed_before {
            sql += &format!(" AND last_observed_at < {}", binds.push(Arg::I(before)));
        }
        sql
    }
}

fn sort_column(field: AlertSortField) -> &'static str {
    match field {
        AlertSortField::Detected => "detected_at",
        AlertSortField::Severity => "severity",
        AlertSortField::LastObserved | AlertSortField::Unspecified => "last_observed_at",
    }
}

/// `<sort value>:<alert id>`, base64url: opaque to callers, checked on the way back in.
fn encode_token(field: AlertSortField, order: SortOrder, value: i64, alert_id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}:{}:{value}:{alert_id}",
        field as i32, order as i32
    ))
}

fn decode_token(
    token: &str,
    field: AlertSortField,
    order: SortOrder,
) -> Result<Option<(i64, String)>> {
    use base64::Engine;
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || IngestError::invalid("page_token is not one this service issued for this query");
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let mut parts = text.splitn(4, ':');
    let (Some(f), Some(o), Some(v), Some(id)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if f != (field as i32).to_string() || o != (order as i32).to_string() {
        return Err(bad());
    }
    Ok(Some((v.parse().map_err(|_| bad())?, id.to_owned())))
}

fn sort_value(alert: &Alert, field: AlertSortField) -> i64 {
    match field {
        AlertSortField::Detected => detected_ms(alert),
        AlertSortField::Severity => i64::from(alert.severity),
        _ => ms(&alert.last_observed_at),
    }
}

/// The slot (alert id, fingerprint) an observation goes to, among the alerts `state` holds for
/// its fingerprint: its own alert, else the best fitting row that lacks this source's id, else
/// the next free slot. Never a row that another alert of the same source holds.
fn pick_slot(state: &HashMap<String, Alert>, obs: &Observation) -> (String, String) {
    let mut best: Option<(model::Affinity, String, String)> = None;
    let mut slot = 0;
    loop {
        let fingerprint = model::slot_fingerprint(&obs.fingerprint, slot);
        let id = model::alert_id_for(&fingerprint);
        let Some(alert) = state.get(&id) else {
            return best.map_or((id, fingerprint), |(_, id, f)| (id, f));
        };
        let fit = model::affinity(alert, obs);
        if fit == model::Affinity::Same {
            return (id, fingerprint);
        }
        if fit > model::Affinity::Taken && best.as_ref().is_none_or(|(b, _, _)| fit > *b) {
            best = Some((fit, id, fingerprint));
        }
        slot += 1;
    }
}

fn settings_from_row(r: &sqlx::any::AnyRow) -> IngestionSettings {
    IngestionSettings {
        graph_enabled: r.get::<i64, _>("graph_enabled") != 0,
        fraud_events_enabled: r.get::<i64, _>("fraud_events_enabled") != 0,
        poll_interval_seconds: (r.get::<i64, _>("poll_interval_ms") / 1000) as u32,
        webhook_url: r.get("webhook_url"),
    }
}

#[async_trait::async_trait]
impl AlertStore for SqlStore {
    async fn migrate(&self) -> Result<usize> {
        Ok(self.db.migrate(MIGRATIONS).await?)
    }

    async fn ingest(&self, batch: &[Observation], now: i64) -> Result<IngestOutcome> {
        if batch.is_empty() {
            return Ok(IngestOutcome::default());
        }
        let mut tx = self.pool().begin().await?;
        let partners: BTreeSet<String> =
            batch.iter().map(|o| o.partner_tenant_id.clone()).collect();
        self.lock_partners(&mut tx, &partners).await?;
        let mut state = self.load_slots(&mut tx, batch).await?;
        let stored: std::collections::HashSet<String> = state.keys().cloned().collect();
        // Written rows in first-change order; the set keeps a page's membership test O(1).
        let mut dirty: Vec<String> = Vec::new();
        let mut dirty_set: std::collections::HashSet<String> = std::collections::HashSet::new();
        // The latest raw payload per alert and source, borrowed from the batch.
        let mut raws: HashMap<String, (Option<&str>, Option<&str>)> = HashMap::new();
        let mut applied = Vec::new();
        let mut transitions = Vec::new();
        for obs in batch {
            let (id, slot_fingerprint) = pick_slot(&state, obs);
            let merged = model::merge_into_slot(state.get(&id), obs, &slot_fingerprint, now);
            if !merged.dirty {
                continue;
            }
            if dirty_set.insert(id.clone()) {
                dirty.push(id.clone());
            }
            let raw = raws.entry(id.clone()).or_default();
            match obs.source {
                AlertSource::Graph => raw.0 = Some(obs.raw.as_str()),
                _ => raw.1 = Some(obs.raw.as_str()),
            }
            if let Some(t) = merged.transition.clone() {
                transitions.push((id.clone(), obs.partner_tenant_id.clone(), t));
            }
            if let Some(change) = merged.change {
                applied.push(Applied {
                    alert: merged.alert.clone(),
                    change,
                    changed_fields: merged.changed_fields.clone(),
                });
            }
            state.insert(id, merged.alert);
        }
        let (updates, inserts): (Vec<RowWrite>, Vec<RowWrite>) = dirty
            .iter()
            .filter_map(|id| {
                let (raw_graph, raw_fraud) = raws.remove(id).unwrap_or_default();
                state.remove(id).map(|alert| RowWrite {
                    alert,
                    raw_graph,
                    raw_fraud,
                })
            })
            .partition(|row| stored.contains(&row.alert.alert_id));
        upsert_alerts(&mut tx, &updates, true, now).await?;
        upsert_alerts(&mut tx, &inserts, false, now).await?;
        insert_transitions(&mut tx, &transitions).await?;
        let events: Vec<(&str, Envelope)> = applied
            .iter_mut()
            .map(|a| (TOPIC_ALERTS, event_for_owned(a)))
            .collect();
        insert_outbox(&mut tx, &events, now).await?;
        tx.commit().await?;
        Ok(IngestOutcome {
            applied,
            written: updates.len() + inserts.len(),
        })
    }

    async fn quarantine(
        &self,
        partner_tenant_id: &str,
        source: AlertSource,
        reason: &str,
        payload: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO quarantine (quarantine_id, partner_tenant_id, source, reason, payload, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(partner_tenant_id.to_owned())
        .bind(source as i64)
        .bind(reason.chars().take(1000).collect::<String>())
        .bind(payload.chars().take(256 * 1024).collect::<String>())
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn get_alert(&self, partner_tenant_id: &str, alert_id: &str) -> Result<Option<Alert>> {
        let row = sqlx::query(
            "SELECT alert_proto FROM alerts WHERE alert_id = $1 AND partner_tenant_id = $2",
        )
        .bind(alert_id.to_owned())
        .bind(partner_tenant_id.to_owned())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| decode(&r.get::<Vec<u8>, _>(0))).transpose()
    }

    async fn get_alert_with_history(
        &self,
        partner_tenant_id: &str,
        alert_id: &str,
    ) -> Result<Option<Alert>> {
        let Some(mut alert) = self.get_alert(partner_tenant_id, alert_id).await? else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT from_status, to_status, actor, reason, at FROM alert_transitions WHERE alert_id = $1 ORDER BY seq",
        )
        .bind(alert_id.to_owned())
        .fetch_all(self.pool())
        .await?;
        let mut history = std::mem::take(&mut alert.history);
        history.extend(rows.iter().map(|r| AlertTransition {
            from_status: r.get::<i64, _>(0) as i32,
            to_status: r.get::<i64, _>(1) as i32,
            actor: r.get(2),
            reason: r.get(3),
            at: Some(from_millis(r.get::<i64, _>(4))),
        }));
        // Stable: Microsoft's log and ours interleave by time, ties keep their order.
        history.sort_by_key(|t| ms(&t.at));
        alert.history = history;
        Ok(Some(alert))
    }

    async fn list_alerts(
        &self,
        partner_tenant_id: &str,
        query: &ListQuery,
    ) -> Result<(Vec<Alert>, String)> {
        let field = query.sort_field;
        let order = if query.sort_order == SortOrder::Ascending {
            SortOrder::Ascending
        } else {
            SortOrder::Descending
        };
        let column = sort_column(field);
        let mut binds = Binds::default();
        let mut sql = format!(
            "SELECT alert_proto FROM alerts WHERE partner_tenant_id = {}",
            binds.push(Arg::S(partner_tenant_id.to_owned()))
        );
        sql += &Self::filter_sql(query, &mut binds);
        let (cmp, dir) = if order == SortOrder::Ascending {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        if let Some((value, id)) = decode_token(&query.page_token, field, order)? {
            let v1 = binds.push(Arg::I(value));
            let v2 = binds.push(Arg::I(value));
            let i = binds.push(Arg::S(id));
            sql +=
                &format!(" AND ({column} {cmp} {v1} OR ({column} = {v2} AND alert_id {cmp} {i}))");
        }
        let size = query.page_size.clamp(1, 1000);
        sql += &format!(
            " ORDER BY {column} {dir}, alert_id {dir} LIMIT {}",
            binds.push(Arg::I(size as i64 + 1))
        );
        let rows = bind_all(sqlx::query(&sql), binds.0)
            .fetch_all(self.pool())
            .await?;
        let mut alerts = rows
            .iter()
            .map(|r| decode(&r.get::<Vec<u8>, _>(0)))
            .collect::<Result<Vec<_>>>()?;
        let mut token = String::new();
        if alerts.len() > size {
            alerts.truncate(size);
            if let Some(last) = alerts.last() {
                token = encode_token(field, order, sort_value(last, field), &last.alert_id);
            }
        }
        for a in &mut alerts {
            a.history.clear();
        }
        Ok((alerts, token))
    }

    async fn count_alerts(&self, partner_tenant_id: &str, query: &ListQuery) -> Result<u64> {
        let mut binds = Binds::default();
        let mut sql = format!(
            "SELECT COUNT(*) FROM alerts WHERE partner_tenant_id = {}",
            binds.push(Arg::S(partner_tenant_id.to_owned()))
        );
        sql += &Self::filter_sql(query, &mut binds);
        let row = bind_all(sqlx::query(&sql), binds.0)
            .fetch_one(self.pool())
            .await?;
        Ok(row.get::<i64, _>(0) as u64)
    }

    async fn resolve(
        &self,
        partner_tenant_id: &str,
        alert_id: &str,
        resolution: Resolution,
        note: &str,
        actor: &str,
        now: i64,
    ) -> Result<Resolved> {
        if resolution == Resolution::Unspecified {
            return Err(IngestError::invalid(
                "resolution must be legitimate, fraud or ignore",
            ));
        }
        let mut tx = self.pool().begin().await?;
        let sql = format!(
            "SELECT alert_proto FROM alerts WHERE alert_id = $1 AND partner_tenant_id = $2{}",
            self.for_update()
        );
        let row = sqlx::query(&sql)
            .bind(alert_id.to_owned())
            .bind(partner_tenant_id.to_owned())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(IngestError::NotFound("alert"))?;
        let mut alert = decode(&row.get::<Vec<u8>, _>(0))?;
        if alert.status == AlertStatus::Resolved as i32 {
            if alert.resolution == resolution as i32 {
                tx.rollback().await?;
                return Ok(Resolved {
                    alert,
                    changed: false,
                });
            }
            return Err(IngestError::FailedPrecondition(format!(
                "alert is already resolved as {}",
                graph_reason(
                    Resolution::try_from(alert.resolution).unwrap_or(Resolution::Unspecified)
                )
                .unwrap_or("unspecified")
            )));
        }
        let from = alert.status;
        alert.status = AlertStatus::Resolved as i32;
        alert.resolution = resolution as i32;
        alert.resolved_at = Some(from_millis(now));
        alert.resolved_by = actor.to_owned();
        alert.resolution_note = note.to_owned();
        alert.write_back_state = WriteBackState::Pending as i32;
        alert.write_back_error.clear();
        alert.write_back_attempts = 0;
        alert.updated_at = Some(from_millis(now));
        update_alert(&mut tx, &alert, now).await?;
        insert_transitions(
            &mut tx,
            &[(
                alert.alert_id.clone(),
                partner_tenant_id.to_owned(),
                AlertTransition {
                    from_status: from,
                    to_status: AlertStatus::Resolved as i32,
                    actor: actor.to_owned(),
                    reason: format!(
                        "resolved as {}{}",
                        graph_reason(resolution).unwrap_or("?"),
                        if note.is_empty() {
                            String::new()
                        } else {
                            format!(": {note}")
                        }
                    ),
                    at: Some(from_millis(now)),
                },
            )],
        )
        .await?;
        let applied = Applied {
            alert: alert.clone(),
            change: ChangeKind::Resolved,
            changed_fields: Vec::new(),
        };
        let command = palisade_queue::envelope(
            KIND_WRITE_BACK,
            partner_tenant_id,
            &AlertWriteBack {
                partner_tenant_id: partner_tenant_id.to_owned(),
                alert_id: alert.alert_id.clone(),
            },
        );
        insert_outbox(
            &mut tx,
            &[
                (TOPIC_ALERTS, event_for(&applied)),
                (TOPIC_WRITE_BACK, command),
            ],
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Resolved {
            alert,
            changed: true,
        })
    }

    async fn alert_by_id(&self, alert_id: &str) -> Result<Option<Alert>> {
        let row = sqlx::query("SELECT alert_proto FROM alerts WHERE alert_id = $1")
            .bind(alert_id.to_owned())
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| decode(&r.get::<Vec<u8>, _>(0))).transpose()
    }

    async fn record_write_back(
        &self,
        alert_id: &str,
        outcome: &WriteBackOutcome,
        now: i64,
    ) -> Result<Option<Alert>> {
        let mut tx = self.pool().begin().await?;
        let sql = format!(
            "SELECT alert_proto FROM alerts WHERE alert_id = $1{}",
            self.for_update()
        );
        let Some(row) = sqlx::query(&sql)
            .bind(alert_id.to_owned())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let mut alert = decode(&row.get::<Vec<u8>, _>(0))?;
        if alert.write_back_state != WriteBackState::Pending as i32
            && alert.write_back_state != WriteBackState::Failed as i32
        {
            // Confirmed already, or reopened since: nothing to record.
            return Ok(Some(alert));
        }
        alert.write_back_attempts += 1;
        let mut transition = None;
        match outcome {
            WriteBackOutcome::Confirmed => {
                alert.write_back_state = WriteBackState::Confirmed as i32;
                alert.write_back_error.clear();
                alert.write_back_confirmed_at = Some(from_millis(now));
                transition = Some(AlertTransition {
                    from_status: AlertStatus::Resolved as i32,
                    to_status: AlertStatus::Resolved as i32,
                    actor: model::ACTOR_MICROSOFT.to_owned(),
                    reason: "write-back confirmed by Microsoft".to_owned(),
                    at: Some(from_millis(now)),
                });
            }
            WriteBackOutcome::Retrying(e) => {
                alert.write_back_state = WriteBackState::Pending as i32;
                alert.write_back_error = e.chars().take(500).collect();
            }
            WriteBackOutcome::Failed(e) => {
                alert.write_back_state = WriteBackState::Failed as i32;
                alert.write_back_error = e.chars().take(500).collect();
            }
        }
        alert.updated_at = Some(from_millis(now));
        update_alert(&mut tx, &alert, now).await?;
        if let Some(t) = transition {
            insert_transitions(
                &mut tx,
                &[(alert.alert_id.clone(), alert.partner_tenant_id.clone(), t)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(alert))
    }

    async fn daily_summary(
        &self,
        partner_tenant_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<AlertTypeSummary>> {
        let rows = sqlx::query(
            "SELECT alert_type_key, MIN(alert_type), COUNT(DISTINCT partner_tenant_id), \
             COUNT(DISTINCT customer_tenant_id), COUNT(DISTINCT subscription_id), COUNT(*) \
             FROM alerts WHERE partner_tenant_id = $1 AND status <> $2 AND is_test = 0 \
             AND last_observed_at >= $3 AND last_observed_at < $4 \
             GROUP BY alert_type_key ORDER BY alert_type_key",
        )
        .bind(partner_tenant_id.to_owned())
        .bind(AlertStatus::Resolved as i64)
        .bind(from)
        .bind(to)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| AlertTypeSummary {
                alert_type: r.get(1),
                affected_partners: r.get::<i64, _>(2) as u64,
                affected_customers: r.get::<i64, _>(3) as u64,
                affected_subscriptions: r.get::<i64, _>(4) as u64,
                unresolved_alerts: r.get::<i64, _>(5) as u64,
            })
            .collect())
    }

    async fn response_times(
        &self,
        partner_tenant_id: &str,
        from: i64,
        to: i64,
        requirement_ms: i64,
    ) -> Result<ResponseTimes> {
        let resolved = sqlx::query(
            "SELECT detected_at, resolved_at, alert_proto FROM alerts WHERE partner_tenant_id = $1 \
             AND resolved_at >= $2 AND resolved_at < $3 AND is_test = 0",
        )
        .bind(partner_tenant_id.to_owned())
        .bind(from)
        .bind(to)
        .fetch_all(self.pool())
        .await?;
        let mut out = ResponseTimes::default();
        let mut total = 0.0_f64;
        for r in &resolved {
            let took = (r.get::<i64, _>(1) - r.get::<i64, _>(0)).max(0);
            total += took as f64;
            out.resolved += 1;
            if took > requirement_ms && out.breaching.len() < 500 {
                let mut a = decode(&r.get::<Vec<u8>, _>(2))?;
                a.history.clear();
                out.breaching.push(a);
            }
        }
        if out.resolved > 0 {
            out.average_ms = total / out.resolved as f64;
        }
        let open = sqlx::query(
            "SELECT alert_proto FROM alerts WHERE partner_tenant_id = $1 AND status <> $2 \
             AND is_test = 0 AND detected_at < $3 ORDER BY detected_at",
        )
        .bind(partner_tenant_id.to_owned())
        .bind(AlertStatus::Resolved as i64)
        .bind(to - requirement_ms)
        .fetch_all(self.pool())
        .await?;
        out.unresolved_over = open.len() as u64;
        for r in open
            .iter()
            .take(500usize.saturating_sub(out.breaching.len()))
        {
            let mut a = decode(&r.get::<Vec<u8>, _>(0))?;
            a.history.clear();
            out.breaching.push(a);
        }
        Ok(out)
    }

    async fn put_ingestion(
        &self,
        partner_tenant_id: &str,
        s: &IngestionSettings,
        now: i64,
    ) -> Result<()> {
        let interval_ms = i64::from(s.poll_interval_seconds.max(1)) * 1000;
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO ingestion (partner_tenant_id, graph_enabled, fraud_events_enabled, poll_interval_ms, webhook_url, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (partner_tenant_id) DO UPDATE SET \
             graph_enabled = excluded.graph_enabled, fraud_events_enabled = excluded.fraud_events_enabled, \
             poll_interval_ms = excluded.poll_interval_ms, webhook_url = excluded.webhook_url, updated_at = excluded.updated_at",
        )
        .bind(partner_tenant_id.to_owned())
        .bind(i64::from(s.graph_enabled))
        .bind(i64::from(s.fraud_events_enabled))
        .bind(interval_ms)
        .bind(s.webhook_url.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for (source, enabled) in [
            (AlertSource::Graph, s.graph_enabled),
            (AlertSource::FraudEvents, s.fraud_events_enabled),
        ] {
            // A new or re-enabled source is due at once; the cursor survives reconfiguration.
            sqlx::query(
                "INSERT INTO poll_state (partner_tenant_id, source, enabled, interval_ms, cursor_ms, next_poll_at, \
                 lease_owner, lease_until, last_error) VALUES ($1, $2, $3, $4, NULL, $5, '', 0, '') \
                 ON CONFLICT (partner_tenant_id, source) DO UPDATE SET enabled = excluded.enabled, \
                 interval_ms = excluded.interval_ms, next_poll_at = CASE WHEN poll_state.enabled = 0 \
                 THEN excluded.next_poll_at ELSE poll_state.next_poll_at END",
            )
            .bind(partner_tenant_id.to_owned())
            .bind(source as i64)
            .bind(i64::from(enabled))
            .bind(interval_ms)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_ingestion(&self, partner_tenant_id: &str) -> Result<Option<IngestionSettings>> {
        let row = sqlx::query(
            "SELECT graph_enabled, fraud_events_enabled, poll_interval_ms, webhook_url FROM ingestion WHERE partner_tenant_id = $1",
        )
        .bind(partner_tenant_id.to_owned())
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(settings_from_row))
    }

    async fn partners(&self) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT partner_tenant_id FROM ingestion ORDER BY partner_tenant_id")
                .fetch_all(self.pool())
                .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn source_states(&self, partner_tenant_id: &str) -> Result<Vec<SourceState>> {
        let rows = sqlx::query(
            "SELECT source, enabled, cursor_ms, last_attempt_at, last_success_at, last_error, polls FROM poll_state \
             WHERE partner_tenant_id = $1 ORDER BY source",
        )
        .bind(partner_tenant_id.to_owned())
        .fetch_all(self.pool())
        .await?;
        let quarantined = sqlx::query(
            "SELECT source, COUNT(*) FROM quarantine WHERE partner_tenant_id = $1 GROUP BY source",
        )
        .bind(partner_tenant_id.to_owned())
        .fetch_all(self.pool())
        .await?;
        let counts: HashMap<i64, i64> = quarantined
            .iter()
            .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
            .collect();
        Ok(rows
            .iter()
            .map(|r| {
                let source: i64 = r.get(0);
                SourceState {
                    source: source as i32,
                    enabled: r.get::<i64, _>(1) != 0,
                    cursor_ms: r.get(2),
                    last_attempt_at: r.get(3),
                    last_success_at: r.get(4),
                    last_error: r.get(5),
                    polls: r.get(6),
                    quarantined: counts.get(&source).copied().unwrap_or(0) as u64,
                }
            })
            .collect())
    }

    async fn claim_due_polls(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<PollClaim>> {
        let sql = format!(
            // A lease never outlasts the partner's interval, so a dead replica's partners are
            // taken over within two intervals, however short.
            "UPDATE poll_state SET lease_owner = $1, last_attempt_at = $3, \
             lease_until = CASE WHEN $3 + interval_ms < $2 THEN $3 + interval_ms ELSE $2 END \
             WHERE (partner_tenant_id, source) IN (SELECT partner_tenant_id, source FROM poll_state \
             WHERE enabled = 1 AND next_poll_at <= $3 AND lease_until < $3 ORDER BY next_poll_at LIMIT $4{}) \
             RETURNING partner_tenant_id, source, cursor_ms, interval_ms",
            self.skip_locked()
        );
        let rows = sqlx::query(&sql)
            .bind(owner.to_owned())
            .bind(lease_until)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .iter()
            .map(|r| PollClaim {
                partner_tenant_id: r.get(0),
                source: AlertSource::try_from(r.get::<i64, _>(1) as i32)
                    .unwrap_or(AlertSource::Unspecified),
                cursor_ms: r.get(2),
                interval_ms: r.get(3),
            })
            .collect())
    }

    async fn extend_poll_lease(
        &self,
        claim: &PollClaim,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE poll_state SET lease_until = $1 WHERE partner_tenant_id = $2 AND source = $3 AND lease_owner = $4",
        )
        .bind(lease_until)
        .bind(claim.partner_tenant_id.clone())
        .bind(claim.source as i64)
        .bind(owner.to_owned())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_poll(
        &self,
        claim: &PollClaim,
        owner: &str,
        result: &PollResult,
        now: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE poll_state SET lease_owner = '', lease_until = 0, next_poll_at = $1, \
             cursor_ms = COALESCE($2, cursor_ms), last_success_at = CASE WHEN $3 = '' THEN $4 ELSE last_success_at END, \
             last_error = $5, polls = polls + 1 WHERE partner_tenant_id = $6 AND source = $7 AND lease_owner = $8",
        )
        .bind(result.next_poll_at)
        .bind(result.cursor_ms)
        .bind(result.error.clone().unwrap_or_default())
        .bind(now)
        .bind(result.error.clone().unwrap_or_default())
        .bind(claim.partner_tenant_id.clone())
        .bind(claim.source as i64)
        .bind(owner.to_owned())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn oldest_open_graph_alert(&self, partner_tenant_id: &str) -> Result<Option<i64>> {
        // Alerts first seen through fraudEvents may also be Graph alerts; the proto says, the
        // columns do not, so the open set is read whole (it is small: open alerts only).
        let rows = sqlx::query(
            "SELECT alert_proto FROM alerts WHERE partner_tenant_id = $1 AND status <> $2",
        )
        .bind(partner_tenant_id.to_owned())
        .bind(AlertStatus::Resolved as i64)
        .fetch_all(self.pool())
        .await?;
        let mut oldest: Option<i64> = None;
        for r in rows {
            let a = decode(&r.get::<Vec<u8>, _>(0))?;
            if !a.graph_alert_id.is_empty() {
                let at = ms(&a.last_observed_at);
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
        }
        Ok(oldest)
    }

    async fn insert_webhook(
        &self,
        partner_tenant_id: &str,
        body_sha256: &str,
        event_name: &str,
        body: &[u8],
        now: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO webhook_inbox (inbox_id, partner_tenant_id, body_sha256, event_name, body, received_at, state, \
             attempts, next_attempt_at, last_error) VALUES ($1, $2, $3, $4, $5, $6, 0, 0, $6, '') \
             ON CONFLICT (body_sha256) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(partner_tenant_id.to_owned())
        .bind(body_sha256.to_owned())
        .bind(event_name.to_owned())
        .bind(body.to_vec())
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_webhooks(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<InboxItem>> {
        let sql = format!(
            "UPDATE webhook_inbox SET next_attempt_at = $1, attempts = attempts + 1 WHERE inbox_id IN \
             (SELECT inbox_id FROM webhook_inbox WHERE state = 0 AND next_attempt_at <= $2 ORDER BY received_at LIMIT $3{}) \
             RETURNING inbox_id, partner_tenant_id, event_name, body, attempts",
            self.skip_locked()
        );
        let rows = sqlx::query(&sql)
            .bind(lease_until)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .iter()
            .map(|r| InboxItem {
                inbox_id: r.get(0),
                partner_tenant_id: r.get(1),
                event_name: r.get(2),
                body: r.get(3),
                attempts: r.get(4),
            })
            .collect())
    }

    async fn finish_webhook(&self, inbox_id: &str, events: &[(&str, Envelope)]) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE webhook_inbox SET state = 1, last_error = '' WHERE inbox_id = $1")
            .bind(inbox_id.to_owned())
            .execute(&mut *tx)
            .await?;
        insert_outbox(&mut tx, events, palisade_storage::now_millis()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn retry_webhook(&self, inbox_id: &str, error: &str, next_attempt_at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_inbox SET next_attempt_at = $1, last_error = $2 WHERE inbox_id = $3",
        )
        .bind(next_attempt_at)
        .bind(error.chars().take(500).collect::<String>())
        .bind(inbox_id.to_owned())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn last_webhook_at(&self, partner_tenant_id: &str) -> Result<Option<i64>> {
        let row =
            sqlx::query("SELECT MAX(received_at) FROM webhook_inbox WHERE partner_tenant_id = $1")
                .bind(partner_tenant_id.to_owned())
                .fetch_one(self.pool())
                .await?;
        Ok(row.get::<Option<i64>, _>(0))
    }

    async fn pending_webhooks(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) FROM webhook_inbox WHERE state = 0")
            .fetch_one(self.pool())
            .await?;
        Ok(row.get::<i64, _>(0) as u64)
    }

    async fn claim_enrichment(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<Alert>> {
        let sql = format!(
            "UPDATE alerts SET enrich_after = $1, enrich_attempts = enrich_attempts + 1 WHERE alert_id IN \
             (SELECT alert_id FROM alerts WHERE enrich_state = 0 AND enrich_after <= $2 ORDER BY enrich_after LIMIT $3{}) \
             RETURNING alert_proto",
            self.skip_locked()
        );
        let rows = sqlx::query(&sql)
            .bind(lease_until)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| decode(&r.get::<Vec<u8>, _>(0)))
            .collect()
    }

    async fn apply_enrichment(
        &self,
        alert_id: &str,
        e: &Enrichment,
        now: i64,
    ) -> Result<Option<Applied>> {
        let mut tx = self.pool().begin().await?;
        let sql = format!(
            "SELECT alert_proto FROM alerts WHERE alert_id = $1{}",
            self.for_update()
        );
        let Some(row) = sqlx::query(&sql)
            .bind(alert_id.to_owned())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let mut alert = decode(&row.get::<Vec<u8>, _>(0))?;
        let mut changed = Vec::new();
        for (target, value, field) in [
            (&mut alert.customer_name, &e.customer_name, "customer_name"),
            (
                &mut alert.customer_domain,
                &e.customer_domain,
                "customer_domain",
            ),
            (
                &mut alert.reseller_tenant_id,
                &e.reseller_tenant_id,
                "reseller_tenant_id",
            ),
            (&mut alert.reseller_name, &e.reseller_name, "reseller_name"),
            (
                &mut alert.reseller_mpn_id,
                &e.reseller_mpn_id,
                "reseller_mpn_id",
            ),
            (
                &mut alert.subscription_name,
                &e.subscription_name,
                "subscription_name",
            ),
        ] {
            if !value.is_empty() && target != value {
                *target = value.clone();
                changed.push(field.to_owned());
            }
        }
        alert.enriched = true;
        if !changed.is_empty() {
            alert.updated_at = Some(from_millis(now));
        }
        update_alert(&mut tx, &alert, now).await?;
        let applied = (!changed.is_empty()).then(|| Applied {
            alert: alert.clone(),
            change: ChangeKind::Updated,
            changed_fields: changed,
        });
        if let Some(a) = &applied {
            insert_outbox(&mut tx, &[(TOPIC_ALERTS, event_for(a))], now).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    async fn enrichment_failed(&self, alert_id: &str, retry_at: i64) -> Result<()> {
        sqlx::query("UPDATE alerts SET enrich_after = $1 WHERE alert_id = $2")
            .bind(retry_at)
            .bind(alert_id.to_owned())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn cache_get(&self, key: &str, fresh_after: i64) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT value FROM enrichment_cache WHERE cache_key = $1 AND fetched_at >= $2",
        )
        .bind(key.to_owned())
        .bind(fresh_after)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn cache_put(&self, key: &str, value: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrichment_cache (cache_key, value, fetched_at) VALUES ($1, $2, $3) \
             ON CONFLICT (cache_key) DO UPDATE SET value = excluded.value, fetched_at = excluded.fetched_at",
        )
        .bind(key.to_owned())
        .bind(value.to_owned())
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
