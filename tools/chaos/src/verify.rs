//! The end of a run: what must hold after the chaos, read from the outcomes themselves (rows
//! in the alerts table, webhooks the receiver recorded, ms-sim's request log, Redis consumer
//! groups), never from the services' own word about them.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use palisade_contracts::tokens::v1::{
    GetAccessTokenRequest, ListConsentsRequest, Resource,
    token_broker_service_client::TokenBrokerServiceClient,
};
use secrecy::SecretString;
use sqlx::Row;

use crate::receiver::Received;

/// What the run observed about one condition.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Findings {
    /// Alerts the harness asked ms-sim to raise.
    pub alerts_raised: usize,
    /// Of those, stored exactly once in `alerts.alerts`.
    pub alerts_stored_once: usize,
    /// Raised but never stored.
    pub alerts_missing: Vec<String>,
    /// Rows whose fingerprint is no alert ms-sim knows: a second row for one alert.
    pub alerts_extra_rows: usize,
    /// Rows in `alerts.alerts` in all.
    pub alert_rows: usize,
    /// Raised alerts that appeared in at least one delivered webhook.
    pub alerts_notified: usize,
    pub alerts_not_notified: Vec<String>,
    /// POSTs the receiver recorded, distinct `webhook-id`s among them, and repeats.
    pub webhooks_received: usize,
    pub webhook_ids: usize,
    pub webhook_repeats: usize,
    /// A `webhook-id` that arrived with two different bodies.
    pub webhook_id_conflicts: Vec<String>,
    /// Distinct `webhook-id`s with byte-identical bodies: a duplicate under a new id.
    pub duplicate_bodies_under_new_ids: usize,
    /// ms-sim's Partner Center webhooks to alert-ingest: fired, accepted (perhaps after
    /// retries), retried at least once, and given up on. Polling catches what was given up
    /// on, so these inform rather than decide.
    pub pc_webhooks: usize,
    pub pc_webhooks_delivered: usize,
    pub pc_webhooks_retried: usize,
    pub pc_webhooks_given_up: usize,
    /// Forced refreshes the harness asked for during the chaos: (minted, failed). Failures are
    /// expected while the broker or Postgres is down; the chain must survive them.
    pub forced_refreshes_during_chaos: (usize, usize),
    /// Why they failed, with counts.
    pub forced_refresh_errors: BTreeMap<String, usize>,
    /// Per partner: whether a forced refresh minted a token after the run.
    pub token_mints: BTreeMap<String, String>,
    /// Consents and their health state, as the broker reports them.
    pub consents: BTreeMap<String, String>,
    /// Refresh-token grants at the partners' own tenants ms-sim answered, and those it refused
    /// (a broken chain).
    pub refresh_grants: usize,
    pub refresh_grants_refused: usize,
    /// Per stream and group: entries delivered and never acknowledged.
    pub pending: BTreeMap<String, u64>,
    /// Per dead-letter stream: its length.
    pub dead_letters: BTreeMap<String, u64>,
    /// Per service schema: outbox rows not yet published.
    pub outbox_rows: BTreeMap<String, i64>,
}

impl Findings {
    /// Everything that breaks a promise, one line each. Empty means the run passed.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.alerts_missing.is_empty() {
            v.push(format!(
                "{} raised alerts were never stored (first: {})",
                self.alerts_missing.len(),
                self.alerts_missing[0]
            ));
        }
        if self.alerts_extra_rows > 0 {
            v.push(format!(
                "{} alert rows match no alert ms-sim raised (stored twice under another fingerprint)",
                self.alerts_extra_rows
            ));
        }
        if !self.alerts_not_notified.is_empty() {
            v.push(format!(
                "{} stored alerts were never delivered to the webhook channel (first: {})",
                self.alerts_not_notified.len(),
                self.alerts_not_notified[0]
            ));
        }
        if !self.webhook_id_conflicts.is_empty() {
            v.push(format!(
                "{} webhook-ids arrived with different bodies (first: {})",
                self.webhook_id_conflicts.len(),
                self.webhook_id_conflicts[0]
            ));
        }
        if self.duplicate_bodies_under_new_ids > 0 {
            v.push(format!(
                "{} notifications were delivered again under a new webhook-id",
                self.duplicate_bodies_under_new_ids
            ));
        }
        for (partner, outcome) in &self.token_mints {
            if outcome != "ok" {
                v.push(format!("the broker cannot mint for {partner}: {outcome}"));
            }
        }
        if self.refresh_grants_refused > 0 {
            v.push(format!(
                "ms-sim refused {} of {} refresh-token grants (a broken chain)",
                self.refresh_grants_refused, self.refresh_grants
            ));
        }
        for (key, n) in &self.pending {
            if *n > 0 {
                v.push(format!("{n} messages stuck pending in {key}"));
            }
        }
        for (key, n) in &self.dead_letters {
            if *n > 0 {
                v.push(format!("{n} messages dead-lettered in {key}"));
            }
        }
        for (schema, n) in &self.outbox_rows {
            if *n > 0 {
                v.push(format!("{n} rows never left the {schema} outbox"));
            }
        }
        v
    }

    /// Whether the services look drained: nothing missing, nothing pending.
    pub fn drained(&self) -> bool {
        self.alerts_missing.is_empty()
            && self.alerts_not_notified.is_empty()
            && self.pending.values().all(|n| *n == 0)
            && self.outbox_rows.values().all(|n| *n == 0)
    }
}

/// Where to look.
pub struct Sources<'a> {
    pub http: &'a reqwest::Client,
    pub control_url: &'a str,
    pub partners: &'a [String],
    /// Graph ids of the alerts the harness raised.
    pub raised: &'a BTreeSet<String>,
    pub database_url: &'a str,
    pub redis_url: &'a str,
    pub received: &'a [Received],
}

/// Alerts, notifications and queues (cheap enough to poll while waiting for the drain).
pub async fn observe(src: &Sources<'_>) -> anyhow::Result<Findings> {
    let mut f = Findings {
        alerts_raised: src.raised.len(),
        ..Default::default()
    };

    // ms-sim's alerts, fingerprinted by alert-ingest's own parser.
    let mut known = BTreeSet::new();
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for partner in src.partners {
        let alerts: Vec<serde_json::Value> = src
            .http
            .get(format!(
                "{}/_sim/partners/{partner}/alerts",
                src.control_url
            ))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for alert in alerts {
            let id = alert["id"].as_str().unwrap_or_default().to_owned();
            let observation = palisade_alert_ingest::model::from_graph(partner, alert)
                .map_err(|e| anyhow::anyhow!("ms-sim alert {id}: {e}"))?;
            known.insert(observation.fingerprint.clone());
            if src.raised.contains(&id) {
                expected.insert(observation.fingerprint, id);
            }
        }
    }

    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(src.database_url)
        .await
        .context("connecting to the chaos Postgres")?;
    let rows = sqlx::query("SELECT fingerprint FROM alerts.alerts")
        .fetch_all(&db)
        .await
        .unwrap_or_default();
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    for row in &rows {
        *stored.entry(row.try_get::<String, _>(0)?).or_default() += 1;
    }
    f.alert_rows = rows.len();
    f.alerts_extra_rows = stored.keys().filter(|fp| !known.contains(*fp)).count();
    for (fp, id) in &expected {
        match stored.get(fp) {
            Some(1) => f.alerts_stored_once += 1,
            Some(_) => f.alerts_extra_rows += 1,
            None => f.alerts_missing.push(id.clone()),
        }
    }
    // Raised alerts ms-sim no longer lists would be a harness bug; count them as missing.
    let listed: BTreeSet<&String> = expected.values().collect();
    f.alerts_missing
        .extend(src.raised.iter().filter(|id| !listed.contains(id)).cloned());

    for schema in ["alerts", "tokens", "compliance", "notify"] {
        let sql = format!("SELECT count(*) FROM {schema}.outbox");
        if let Ok(row) = sqlx::query(&sql).fetch_one(&db).await {
            f.outbox_rows
                .insert(schema.to_owned(), row.try_get::<i64, _>(0)?);
        }
    }
    db.close().await;

    // Notifications: every stored raised alert in some delivered body; a webhook-id always
    // with the same bytes.
    let mut notified = BTreeSet::new();
    let mut by_id: BTreeMap<&str, &str> = BTreeMap::new();
    let mut bodies: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    f.webhooks_received = src.received.len();
    for r in src.received {
        match by_id.get(r.webhook_id.as_str()) {
            Some(body) if *body != r.body => f.webhook_id_conflicts.push(r.webhook_id.clone()),
            Some(_) => f.webhook_repeats += 1,
            None => {
                by_id.insert(&r.webhook_id, &r.body);
                bodies.entry(&r.body).or_default().insert(&r.webhook_id);
            }
        }
        if let Ok(body) = serde_json::from_str::<serde_json::Value>(&r.body)
            && let Some(items) = body["data"]["items"].as_array()
        {
            for item in items {
                if let Some(fp) = item["fingerprint"].as_str() {
                    notified.insert(fp.to_owned());
                }
            }
        }
    }
    f.webhook_ids = by_id.len();
    f.duplicate_bodies_under_new_ids = bodies.values().map(|ids| ids.len() - 1).sum();
    for (fp, id) in &expected {
        if !stored.contains_key(fp) {
            continue;
        }
        if notified.contains(fp) {
            f.alerts_notified += 1;
        } else {
            f.alerts_not_notified.push(id.clone());
        }
    }

    let deliveries: Vec<serde_json::Value> = src
        .http
        .get(format!("{}/_sim/webhooks/deliveries", src.control_url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    f.pc_webhooks = deliveries.len();
    for d in &deliveries {
        let delivered = d["delivered"].as_bool().unwrap_or(false);
        f.pc_webhooks_delivered += usize::from(delivered);
        f.pc_webhooks_given_up +=
            usize::from(!delivered && d["finished"].as_bool().unwrap_or(false));
        f.pc_webhooks_retried += usize::from(d["attempts"].as_array().is_some_and(|a| a.len() > 1));
    }

    queues(src.redis_url, &mut f).await?;
    Ok(f)
}

/// XPENDING of every consumer group on every stream, and the length of every dead-letter
/// stream.
async fn queues(redis_url: &str, f: &mut Findings) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to the chaos Redis")?;
    let mut cursor: u64 = 0;
    let mut streams = BTreeSet::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("stream")
            .query_async(&mut conn)
            .await?;
        streams.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    for stream in streams {
        if stream.contains(":dlq:") {
            let len: u64 = redis::cmd("XLEN")
                .arg(&stream)
                .query_async(&mut conn)
                .await?;
            f.dead_letters.insert(stream, len);
            continue;
        }
        let groups: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn)
            .await?;
        for group in groups {
            let fields: BTreeMap<String, redis::Value> =
                match redis::FromRedisValue::from_redis_value(group) {
                    Ok(map) => map,
                    Err(_) => continue,
                };
            let name: String = fields
                .get("name")
                .and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok())
                .unwrap_or_default();
            let pending: u64 = fields
                .get("pending")
                .and_then(|v| redis::FromRedisValue::from_redis_value(v.clone()).ok())
                .unwrap_or_default();
            f.pending.insert(format!("{stream} group {name}"), pending);
        }
    }
    Ok(())
}

/// The token chains: a forced refresh per partner, the broker's consent states, and every
/// refresh grant ms-sim answered.
pub async fn tokens(
    f: &mut Findings,
    http: &reqwest::Client,
    control_url: &str,
    broker: &str,
    admin: &SecretString,
    partners: &[String],
) -> anyhow::Result<()> {
    let mut client = TokenBrokerServiceClient::new(crate::seed::channel(broker, admin).await?);
    for partner in partners {
        let minted = client
            .get_access_token(GetAccessTokenRequest {
                partner_tenant_id: partner.clone(),
                resource: Resource::Graph as i32,
                force_refresh: true,
                ..Default::default()
            })
            .await;
        f.token_mints.insert(
            partner.clone(),
            match minted {
                Ok(_) => "ok".to_owned(),
                Err(status) => format!("{:?}: {}", status.code(), status.message()),
            },
        );
        let consents = client
            .list_consents(ListConsentsRequest {
                partner_tenant_id: partner.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .consents;
        for c in consents {
            f.consents.insert(
                format!("{partner}/{}", c.consent_id),
                format!("state {} rotations {}", c.state, c.rotation_count),
            );
        }
    }
    let grants: Vec<serde_json::Value> = http
        .get(format!("{control_url}/_sim/requests"))
        .query(&[("grant_type", "refresh_token")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    // At a partner's own tenant. Grants at customer tenants are refused by design where the
    // scenario gives a customer no usable GDAP relationship or no consent.
    let own: Vec<&serde_json::Value> = grants
        .iter()
        .filter(|g| {
            g["tenant"]
                .as_str()
                .is_some_and(|t| partners.iter().any(|p| p.eq_ignore_ascii_case(t)))
        })
        .collect();
    f.refresh_grants = own.len();
    f.refresh_grants_refused = own
        .iter()
        .filter(|g| g["status"].as_u64().is_some_and(|s| s >= 400))
        .count();
    Ok(())
}
