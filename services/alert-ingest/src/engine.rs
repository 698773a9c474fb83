//! The ingestor's core: normalise and persist what the sources bring, poll Graph and the
//! legacy fraudEvents API for one partner, act on a stored webhook, write a resolution back to
//! Microsoft, and enrich alerts from Partner Center.
//!
//! Loops that drive these live in `workers`; the gRPC API in `service`. Nothing here keeps
//! state that a crash could lose: every step starts from the store and ends in it.

use std::{sync::Arc, time::Duration};

use palisade_clock::SharedClock;
use palisade_contracts::{
    alerts::v1::{Alert, AlertChangeKind, AlertSource, Resolution, WriteBackState},
    events::v1::{DapRelationshipTerminated, Envelope, GdapRelationshipChanged},
    time::from_millis,
    tokens::v1::Resource,
};
use palisade_microsoft::{
    graph_alerts::{AlertQuery, GraphAlertsClient},
    http::HttpError,
    partner_center::{FraudEventQuery, PartnerCenterClient},
    webhook::{self, WebhookEvent},
};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use tokio::sync::broadcast;

use crate::{
    model::{self, ChangeKind, Observation},
    store::{
        AlertStore, Enrichment, InboxItem, IngestOutcome, PollClaim, PollResult,
        TOPIC_PARTNER_CENTER, WriteBackOutcome,
    },
    tokens::{AccessTokens, TokenError},
};

/// Tunables of the core (the `[ingest]` section).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Re-read this much before the cursor, so nothing observed between polls slips through.
    #[serde(with = "humantime_serde")]
    pub poll_overlap: Duration,
    /// How far back the first Graph poll of a partner reaches, and each Graph resync.
    #[serde(with = "humantime_serde")]
    pub initial_lookback: Duration,
    /// How often each partner's Graph alerts are re-read over the whole `initial_lookback`
    /// (0 s: never). The incremental poll only reads from its cursor minus `poll_overlap`, so
    /// an alert that first appears in Graph longer than that after its `lastObservedDateTime`
    /// is only found by this resync.
    #[serde(with = "humantime_serde")]
    pub graph_resync_interval: Duration,
    /// fraudEvents page size (`PageSize`), and how many pages one poll reads at most.
    pub fraud_page_size: u32,
    pub fraud_max_pages: u32,
    /// Fetch customer, reseller and subscription details from Partner Center.
    pub enrichment: bool,
    /// How long Partner Center details are reused.
    #[serde(with = "humantime_serde")]
    pub enrichment_ttl: Duration,
    /// The longest a webhook's `ResourceChangeUtcDate` may lie in the past; older is replay.
    #[serde(with = "humantime_serde")]
    pub webhook_max_age: Duration,
    pub webhook_max_body_bytes: usize,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            poll_overlap: Duration::from_secs(600),
            initial_lookback: Duration::from_secs(60 * 86_400),
            graph_resync_interval: Duration::from_secs(6 * 3600),
            fraud_page_size: 200,
            fraud_max_pages: 100,
            enrichment: true,
            enrichment_ttl: Duration::from_secs(6 * 3600),
            webhook_max_age: Duration::from_secs(24 * 3600),
            webhook_max_body_bytes: 64 * 1024,
        }
    }
}

/// One alert change, for `WatchAlerts`.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: AlertChangeKind,
    pub alert: Alert,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

/// `new`: an alert the store did not hold; `changed`: a stored alert whose change was missed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct MissedLabel {
    pub kind: String,
}

/// The counters the metrics contract names.
#[derive(Clone, Debug, Default)]
pub struct IngestMetrics {
    pub ingested: Family<SourceLabel, Counter>,
    pub quarantined: Family<SourceLabel, Counter>,
    pub webhooks_rejected: Counter,
    pub response_avg30d: Family<PartnerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub unresolved_over_24h: Family<PartnerLabel, Gauge>,
    /// What the Graph resync wrote: what the incremental poll had missed. Above zero, alerts
    /// reach Graph late (or the cursor skipped something); without the resync they were lost.
    pub resync_missed: Family<MissedLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct PartnerLabel {
    pub partner_tenant_id: String,
}

impl IngestMetrics {
    pub fn register(metrics: &palisade_telemetry::Metrics) -> Self {
        let m = Self::default();
        metrics.register(
            "alert_response_seconds_avg30d",
            "Average seconds from detection to resolution over 30 days",
            m.response_avg30d.clone(),
        );
        metrics.register(
            "alert_unresolved_over_24h",
            "Open alerts detected more than 24 hours ago",
            m.unresolved_over_24h.clone(),
        );
        metrics.register(
            "alerts_ingested",
            "Alert observations persisted, by source",
            m.ingested.clone(),
        );
        metrics.register(
            "alerts_quarantined",
            "Payloads that could not be normalised",
            m.quarantined.clone(),
        );
        metrics.register(
            "alert_webhooks_rejected",
            "Webhooks refused as unsigned, forged or stale",
            m.webhooks_rejected.clone(),
        );
        metrics.register(
            "alerts_resync_missed",
            "Graph alerts the periodic resync stored (new) or updated (changed) that the incremental poll had missed",
            m.resync_missed.clone(),
        );
        m
    }
}

/// Why a piece of work did not finish; the caller decides when to try again.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Microsoft(#[from] HttpError),
    #[error(transparent)]
    Store(#[from] crate::error::IngestError),
}

impl WorkError {
    /// Microsoft asked us to wait this long.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Microsoft(e) => e.retry_after(),
            _ => None,
        }
    }
}

pub struct Ingestor {
    pub store: Arc<dyn AlertStore>,
    pub graph: GraphAlertsClient,
    pub partner_center: PartnerCenterClient,
    pub tokens: Arc<dyn AccessTokens>,
    pub clock: SharedClock,
    pub settings: IngestSettings,
    pub changes: broadcast::Sender<Change>,
    pub relay: Option<crate::outbox::BatchRelay>,
    pub metrics: IngestMetrics,
}

impl std::fmt::Debug for Ingestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingestor").finish_non_exhaustive()
    }
}

fn watch_kind(change: ChangeKind) -> AlertChangeKind {
    match change {
        ChangeKind::Raised => AlertChangeKind::Raised,
        ChangeKind::Updated => AlertChangeKind::Updated,
        ChangeKind::Resolved => AlertChangeKind::Resolved,
        ChangeKind::Reopened => AlertChangeKind::Reopened,
    }
}

impl Ingestor {
    pub fn now(&self) -> i64 {
        self.clock.now_millis()
    }

    /// After a commit that wrote events: publish now, and tell the watchers.
    pub fn committed(&self, changes: impl IntoIterator<Item = (ChangeKind, Alert)>) {
        if let Some(relay) = &self.relay {
            relay.poke();
        }
        // Without a watcher the alerts are not even cloned for the channel (a page of 500
        // alerts would copy half a megabyte for nobody).
        if self.changes.receiver_count() == 0 {
            return;
        }
        for (kind, alert) in changes {
            let _ = self.changes.send(Change {
                kind: watch_kind(kind),
                alert,
            });
        }
    }

    /// Normalises raw items of one source, quarantines what does not parse, and persists the
    /// rest in one transaction.
    pub async fn ingest_raw(
        &self,
        partner_tenant_id: &str,
        source: AlertSource,
        items: Vec<serde_json::Value>,
    ) -> Result<IngestOutcome, crate::error::IngestError> {
        let now = self.now();
        let label = SourceLabel {
            source: model::source_name(source).to_owned(),
        };
        let mut batch = Vec::with_capacity(items.len());
        for item in items {
            let raw = raw_text(&item);
            let parsed = match source {
                AlertSource::Graph => model::from_graph_with_text(partner_tenant_id, item, raw),
                _ => model::from_fraud_event_with_text(partner_tenant_id, item, raw),
            };
            match parsed {
                Ok(obs) => batch.push(obs),
                Err((reason, raw)) => {
                    tracing::warn!(partner_tenant_id, %reason, "alert payload quarantined");
                    self.metrics.quarantined.get_or_create(&label).inc();
                    self.store
                        .quarantine(partner_tenant_id, source, &reason, &raw, now)
                        .await?;
                }
            }
        }
        self.ingest(&batch, now, &label).await
    }

    pub async fn ingest(
        &self,
        batch: &[Observation],
        now: i64,
        label: &SourceLabel,
    ) -> Result<IngestOutcome, crate::error::IngestError> {
        let outcome = self.store.ingest(batch, now).await?;
        self.metrics
            .ingested
            .get_or_create(label)
            .inc_by(batch.len() as u64);
        self.committed(outcome.applied.iter().map(|a| (a.change, a.alert.clone())));
        Ok(outcome)
    }

    async fn token(
        &self,
        partner_tenant_id: &str,
        resource: Resource,
    ) -> Result<String, WorkError> {
        Ok(self
            .tokens
            .access_token(partner_tenant_id, resource)
            .await?)
    }

    /// A Microsoft 401 means the cached token is no good: forget it.
    fn on_error(&self, partner_tenant_id: &str, resource: Resource, error: &HttpError) {
        if error.status() == Some(401) {
            self.tokens.invalidate(partner_tenant_id, resource);
        }
    }

    /// One poll of one source for one partner. The cursor only moves after what it covers is
    /// persisted, so a crash re-reads (idempotently) rather than skips.
    pub async fn poll(&self, claim: &PollClaim) -> PollResult {
        let started = self.now();
        let (cursor, error) = match claim.source {
            // A failed resync keeps the cursor the incremental poll earned; the resync is
            // still due, so the next poll tries it again.
            AlertSource::Graph => match self.poll_graph(claim).await {
                Ok(cursor) => (
                    cursor,
                    self.resync_graph_if_due(claim)
                        .await
                        .err()
                        .map(|e| ("graph resync: ", e)),
                ),
                Err(error) => (None, Some(("", error))),
            },
            AlertSource::FraudEvents => (
                None,
                self.poll_fraud_events(claim).await.err().map(|e| ("", e)),
            ),
            AlertSource::Unspecified => (None, None),
        };
        let interval = claim.interval_ms.max(1000);
        match error {
            None => PollResult {
                next_poll_at: (started + interval).max(self.now() + 1000),
                cursor_ms: cursor,
                error: None,
            },
            Some((prefix, error)) => {
                let wait = error
                    .retry_after()
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0)
                    .max(interval);
                let error = format!("{prefix}{error}");
                tracing::warn!(partner_tenant_id = %claim.partner_tenant_id, source = ?claim.source, %error, "poll failed");
                PollResult {
                    next_poll_at: self.now() + wait,
                    cursor_ms: cursor,
                    error: Some(error),
                }
            }
        }
    }

    async fn poll_graph(&self, claim: &PollClaim) -> Result<Option<i64>, WorkError> {
        let partner = claim.partner_tenant_id.as_str();
        let overlap = self.settings.poll_overlap.as_millis() as i64;
        let now = self.now();
        let since = match claim.cursor_ms {
            Some(cursor) => cursor - overlap,
            None => now - self.settings.initial_lookback.as_millis() as i64,
        };
        let token = self.token(partner, Resource::Graph).await?;
        let mut max_seen = claim.cursor_ms.unwrap_or(since);
        let query = AlertQuery {
            status: None,
            last_observed_since: chrono::DateTime::from_timestamp_millis(since),
        };
        max_seen = max_seen.max(self.read_graph(partner, &token, &query).await?.max_seen);
        // Microsoft (or the partner, in the portal) may resolve an alert without new activity,
        // so its lastObservedDateTime does not move: look for resolutions since our oldest
        // open alert.
        if let Some(oldest) = self.store.oldest_open_graph_alert(partner).await?
            && oldest - overlap < since
        {
            let query = AlertQuery {
                status: Some("resolved".into()),
                last_observed_since: chrono::DateTime::from_timestamp_millis(oldest - overlap),
            };
            self.read_graph(partner, &token, &query).await?;
        }
        Ok(Some(max_seen.min(now)))
    }

    /// The periodic reconciliation of one partner's Graph alerts (`graph_resync_interval`).
    ///
    /// The incremental poll reads from its cursor minus `poll_overlap`. An alert that first
    /// appears in Graph longer than that after its `lastObservedDateTime` (a detection
    /// computed from delayed usage data) never falls in that window; with Graph the only
    /// source it would be lost. The resync reads what a partner's first poll reads, every
    /// alert observed within `initial_lookback`, through the same idempotent ingest, so it
    /// writes nothing for what is stored already, and what it does write is what the
    /// incremental poll missed (counted and logged: a health signal).
    ///
    /// It runs inside the Graph poll, so under that poll's per-partner lease and the shared
    /// throttle. It asks with the filter the incremental poll already uses
    /// (`lastObservedDateTime ge`), and nothing the reference does not list for this endpoint
    /// (no `status ne`, `$orderby` or `$top`), following `@odata.nextLink`. When it last ran is persisted in
    /// the store's key/time table (`cache_put`, one row per partner, no migration), so
    /// replicas and restarts do not repeat it; a failed resync is not recorded and stays due.
    async fn resync_graph_if_due(&self, claim: &PollClaim) -> Result<(), WorkError> {
        let every = self.settings.graph_resync_interval.as_millis() as i64;
        if every == 0 {
            return Ok(());
        }
        let partner = claim.partner_tenant_id.as_str();
        let key = format!("graph-resync:{partner}");
        let now = self.now();
        if claim.cursor_ms.is_none() {
            // The partner's first poll has just read the whole lookback: that was a resync.
            self.store.cache_put(&key, &now.to_string(), now).await?;
            return Ok(());
        }
        if self.store.cache_get(&key, now - every).await?.is_some() {
            return Ok(());
        }
        let token = self.token(partner, Resource::Graph).await?;
        let query = AlertQuery {
            status: None,
            last_observed_since: chrono::DateTime::from_timestamp_millis(
                now - self.settings.initial_lookback.as_millis() as i64,
            ),
        };
        let read = self.read_graph(partner, &token, &query).await?;
        self.store.cache_put(&key, &now.to_string(), now).await?;
        for (kind, count) in [("new", read.raised), ("changed", read.changed)] {
            self.metrics
                .resync_missed
                .get_or_create(&MissedLabel { kind: kind.into() })
                .inc_by(count as u64);
        }
        if read.raised + read.changed > 0 {
            tracing::warn!(
                partner_tenant_id = partner,
                read = read.read,
                missed_new = read.raised,
                missed_changed = read.changed,
                "graph resync found alerts the incremental poll had missed"
            );
        } else {
            tracing::info!(
                partner_tenant_id = partner,
                read = read.read,
                "graph resync found nothing missed"
            );
        }
        Ok(())
    }

    /// Reads every page of a query, persisting page by page.
    async fn read_graph(
        &self,
        partner: &str,
        token: &str,
        query: &AlertQuery,
    ) -> Result<GraphRead, WorkError> {
        let mut page = self
            .graph
            .list(token, query)
            .await
            .inspect_err(|e| self.on_error(partner, Resource::Graph, e))?;
        let mut read = GraphRead::default();
        loop {
            for item in &page.items {
                if let Some(t) = item
                    .get("lastObservedDateTime")
                    .and_then(|v| v.as_str())
                    .and_then(palisade_microsoft::graph_alerts::lenient::parse_datetime)
                {
                    read.max_seen = read.max_seen.max(t.timestamp_millis());
                }
            }
            let next = page.next_link.take();
            read.read += page.items.len();
            let outcome = self
                .ingest_raw(partner, AlertSource::Graph, std::mem::take(&mut page.items))
                .await?;
            let raised = outcome
                .applied
                .iter()
                .filter(|a| a.change == ChangeKind::Raised)
                .count();
            read.raised += raised;
            read.changed += outcome.written.saturating_sub(raised);
            let Some(link) = next else { break };
            page = self
                .graph
                .next_page(token, &link)
                .await
                .inspect_err(|e| self.on_error(partner, Resource::Graph, e))?;
        }
        Ok(read)
    }

    async fn poll_fraud_events(&self, claim: &PollClaim) -> Result<(), WorkError> {
        let partner = claim.partner_tenant_id.as_str();
        let token = self.token(partner, Resource::PartnerCenter).await?;
        let size = self.settings.fraud_page_size.max(1);
        for number in 1..=self.settings.fraud_max_pages.max(1) {
            let items = self
                .partner_center
                .list_fraud_events(
                    &token,
                    &FraudEventQuery {
                        page_size: Some(size),
                        page_number: Some(number),
                        ..Default::default()
                    },
                )
                .await
                .inspect_err(|e| self.on_error(partner, Resource::PartnerCenter, e))?;
            let full = items.len() as u32 >= size;
            self.ingest_raw(partner, AlertSource::FraudEvents, items)
                .await?;
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Acts on one stored webhook. `Ok` means done (the inbox row is closed, with any events
    /// in the same transaction); `Err` means try again later.
    pub async fn process_webhook(&self, item: &InboxItem) -> Result<(), WorkError> {
        let event = match WebhookEvent::parse(&item.body) {
            Ok(e) => e,
            Err(e) => {
                // Verified but unreadable: keep it for audit, never retry it.
                self.store
                    .quarantine(
                        &item.partner_tenant_id,
                        AlertSource::FraudEvents,
                        &format!("webhook body: {e}"),
                        &String::from_utf8_lossy(&item.body),
                        self.now(),
                    )
                    .await?;
                self.store.finish_webhook(&item.inbox_id, &[]).await?;
                return Ok(());
            }
        };
        let partner = item.partner_tenant_id.as_str();
        let changed_at = event
            .resource_change_utc_date
            .map(|t| from_millis(t.timestamp_millis()));
        let mut events: Vec<(&str, Envelope)> = Vec::new();
        match event.event_name.to_ascii_lowercase().as_str() {
            webhook::EVENT_FRAUD_DETECTED => {
                let token = self.token(partner, Resource::PartnerCenter).await?;
                let uri = if event.resource_uri.is_empty() {
                    "/v1/fraudEvents?EventStatus=Active".to_owned()
                } else {
                    event.resource_uri.clone()
                };
                let items = self
                    .partner_center
                    .list_fraud_events_by_uri(&token, &uri)
                    .await
                    .inspect_err(|e| self.on_error(partner, Resource::PartnerCenter, e))?;
                self.ingest_raw(partner, AlertSource::FraudEvents, items)
                    .await?;
            }
            webhook::EVENT_GDAP_EXPIRED | webhook::EVENT_GDAP_TERMINATED => {
                let relationship_id = event
                    .resource_uri
                    .split("granularAdminRelationships/")
                    .nth(1)
                    .and_then(|rest| rest.split(['/', '?']).next())
                    .unwrap_or_default()
                    .to_owned();
                events.push((
                    TOPIC_PARTNER_CENTER,
                    palisade_queue::envelope(
                        "gdap.relationship_changed",
                        partner,
                        &GdapRelationshipChanged {
                            partner_tenant_id: partner.to_owned(),
                            event_name: event.event_name.clone(),
                            relationship_id,
                            resource_uri: event.resource_uri.clone(),
                            changed_at,
                        },
                    ),
                ));
            }
            webhook::EVENT_DAP_TERMINATED_BY_MICROSOFT => {
                events.push((
                    TOPIC_PARTNER_CENTER,
                    palisade_queue::envelope(
                        "dap.relationship_terminated",
                        partner,
                        &DapRelationshipTerminated {
                            partner_tenant_id: partner.to_owned(),
                            event_name: event.event_name.clone(),
                            changed_at,
                        },
                    ),
                ));
            }
            other => tracing::debug!(event = other, "webhook event not used by alert-ingest"),
        }
        let publishes = !events.is_empty();
        self.store.finish_webhook(&item.inbox_id, &events).await?;
        if publishes {
            self.committed([]);
        }
        Ok(())
    }

    /// Sends one resolution to Microsoft: Graph PATCH when Graph knows the alert, else the
    /// fraudEvents status POST. Records the outcome; returns it so the caller can schedule
    /// a retry.
    pub async fn write_back(
        &self,
        alert_id: &str,
    ) -> Result<WriteBackOutcome, crate::error::IngestError> {
        let Some(alert) = self.store.alert_by_id(alert_id).await? else {
            return Ok(WriteBackOutcome::Failed("alert no longer exists".into()));
        };
        if alert.write_back_state != WriteBackState::Pending as i32 {
            return Ok(match WriteBackState::try_from(alert.write_back_state) {
                Ok(WriteBackState::Failed) => WriteBackOutcome::Failed(alert.write_back_error),
                _ => WriteBackOutcome::Confirmed,
            });
        }
        let resolution = Resolution::try_from(alert.resolution).unwrap_or(Resolution::Unspecified);
        let partner = alert.partner_tenant_id.as_str();
        let result: Result<(), WorkError> = async {
            if !alert.graph_alert_id.is_empty() {
                let token = self.token(partner, Resource::Graph).await?;
                self.graph
                    .update(
                        &token,
                        &alert.graph_alert_id,
                        "resolved",
                        model::graph_reason(resolution),
                    )
                    .await
                    .inspect_err(|e| self.on_error(partner, Resource::Graph, e))?;
            } else {
                let token = self.token(partner, Resource::PartnerCenter).await?;
                self.partner_center
                    .update_fraud_event_status(
                        &token,
                        &alert.subscription_id,
                        std::slice::from_ref(&alert.fraud_event_id),
                        "Resolved",
                        model::partner_center_reason(resolution).unwrap_or("Ignore"),
                    )
                    .await
                    .inspect_err(|e| self.on_error(partner, Resource::PartnerCenter, e))?;
            }
            Ok(())
        }
        .await;
        let outcome = match result {
            Ok(()) => WriteBackOutcome::Confirmed,
            // Gone or refused as malformed: repeating cannot help; show it to a person.
            Err(WorkError::Microsoft(e))
                if matches!(e.status(), Some(400 | 404 | 405 | 410 | 422)) =>
            {
                WriteBackOutcome::Failed(e.to_string())
            }
            Err(e) => WriteBackOutcome::Retrying(e.to_string()),
        };
        if let Some(updated) = self
            .store
            .record_write_back(alert_id, &outcome, self.now())
            .await?
        {
            let _ = self.changes.send(Change {
                kind: AlertChangeKind::Updated,
                alert: updated,
            });
        }
        Ok(outcome)
    }

    /// Registers the receiver's URL for the events alert-ingest acts on.
    pub async fn register_webhook(
        &self,
        partner_tenant_id: &str,
        url: &str,
    ) -> Result<(), WorkError> {
        let token = self
            .token(partner_tenant_id, Resource::PartnerCenter)
            .await?;
        self.partner_center
            .register_webhook(
                &token,
                url,
                &[
                    webhook::EVENT_FRAUD_DETECTED,
                    webhook::EVENT_GDAP_EXPIRED,
                    webhook::EVENT_GDAP_TERMINATED,
                    webhook::EVENT_DAP_TERMINATED_BY_MICROSOFT,
                ],
            )
            .await
            .inspect_err(|e| self.on_error(partner_tenant_id, Resource::PartnerCenter, e))?;
        Ok(())
    }

    /// Refreshes the response-time gauges of every configured partner.
    pub async fn refresh_gauges(&self) -> Result<(), crate::error::IngestError> {
        const DAY_MS: i64 = 86_400_000;
        let now = self.now();
        for partner in self.store.partners().await? {
            let times = self
                .store
                .response_times(&partner, now - 30 * DAY_MS, now + 1, DAY_MS)
                .await?;
            let label = PartnerLabel {
                partner_tenant_id: partner,
            };
            self.metrics
                .response_avg30d
                .get_or_create(&label)
                .set(times.average_ms / 1000.0);
            self.metrics
                .unresolved_over_24h
                .get_or_create(&label)
                .set(times.unresolved_over as i64);
        }
        Ok(())
    }

    /// Enriches one alert from Partner Center, through the TTL cache.
    pub async fn enrich(&self, alert: &Alert) -> Result<(), WorkError> {
        let partner = alert.partner_tenant_id.as_str();
        let mut e = Enrichment::default();
        if !alert.customer_tenant_id.is_empty() {
            let customer = self
                .cached(&format!("customer:{partner}:{}", alert.customer_tenant_id), || async {
                    let token = self.token(partner, Resource::PartnerCenter).await?;
                    let c = self.partner_center.get_customer(&token, &alert.customer_tenant_id).await?;
                    Ok(serde_json::json!({
                        "name": c.company_profile.company_name, "domain": c.company_profile.domain,
                        "associated_partner_id": c.associated_partner_id,
                    }))
                })
                .await?;
            e.customer_name = text(&customer, "name");
            e.customer_domain = text(&customer, "domain");
            let resellers = self
                .cached(&format!("resellers:{partner}:{}", alert.customer_tenant_id), || async {
                    let token = self.token(partner, Resource::PartnerCenter).await?;
                    let r = self
                        .partner_center
                        .list_customer_relationships(&token, &alert.customer_tenant_id)
                        .await?;
                    Ok(serde_json::Value::Array(
                        r.into_iter()
                            .map(|r| serde_json::json!({"id": r.id, "name": r.name, "mpn_id": r.mpn_id}))
                            .collect(),
                    ))
                })
                .await?;
            let wanted = if alert.reseller_tenant_id.is_empty() {
                text(&customer, "associated_partner_id")
            } else {
                alert.reseller_tenant_id.clone()
            };
            let reseller = resellers.as_array().and_then(|list| {
                list.iter()
                    .find(|r| !wanted.is_empty() && text(r, "id").eq_ignore_ascii_case(&wanted))
                    .or_else(|| (list.len() == 1).then(|| &list[0]))
            });
            if let Some(r) = reseller {
                e.reseller_tenant_id = text(r, "id");
                e.reseller_name = text(r, "name");
                e.reseller_mpn_id = text(r, "mpn_id");
            }
            if !alert.subscription_id.is_empty() {
                // The alert names the Azure subscription. An Azure plan's Partner Center
                // subscription carries it as `entitlementId`; a legacy one as its `id`.
                let subscriptions = self
                    .cached(&format!("subscriptions:{partner}:{}", alert.customer_tenant_id), || async {
                        let token = self.token(partner, Resource::PartnerCenter).await?;
                        let list = self
                            .partner_center
                            .list_subscriptions(&token, &alert.customer_tenant_id)
                            .await?;
                        Ok(serde_json::Value::Array(
                            list.into_iter()
                                .map(|s| serde_json::json!({
                                    "id": s.id, "entitlement_id": s.entitlement_id,
                                    "name": if s.friendly_name.is_empty() { s.offer_name } else { s.friendly_name },
                                }))
                                .collect(),
                        ))
                    })
                    .await?;
                if let Some(found) = subscriptions.as_array().and_then(|list| {
                    list.iter().find(|s| {
                        text(s, "entitlement_id").eq_ignore_ascii_case(&alert.subscription_id)
                            || text(s, "id").eq_ignore_ascii_case(&alert.subscription_id)
                    })
                }) {
                    e.subscription_name = text(found, "name");
                }
            }
        }
        if let Some(applied) = self
            .store
            .apply_enrichment(&alert.alert_id, &e, self.now())
            .await?
        {
            self.committed([(applied.change, applied.alert)]);
        }
        Ok(())
    }

    async fn cached<F, Fut>(&self, key: &str, fetch: F) -> Result<serde_json::Value, WorkError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, WorkError>>,
    {
        let now = self.now();
        let fresh_after = now - self.settings.enrichment_ttl.as_millis() as i64;
        if let Some(hit) = self.store.cache_get(key, fresh_after).await?
            && let Ok(value) = serde_json::from_str(&hit)
        {
            return Ok(value);
        }
        let value = fetch().await?;
        self.store.cache_put(key, &value.to_string(), now).await?;
        Ok(value)
    }
}

/// What reading one Graph query did.
#[derive(Debug, Clone, Copy, Default)]
struct GraphRead {
    /// Items Graph returned.
    read: usize,
    /// The latest `lastObservedDateTime` among them (0 when none).
    max_seen: i64,
    /// Alerts stored for the first time.
    raised: usize,
    /// Stored alerts that changed.
    changed: usize,
}

fn text(value: &serde_json::Value, key: &str) -> String {
    value
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

/// The payload's JSON text, kept as the audit copy. Written straight into a buffer sized for
/// a typical alert: `Value::to_string` goes through `fmt::Display` and grows its string from
/// nothing, which was a tenth of the ingesting process's CPU in the benchmark's profile.
fn raw_text(item: &serde_json::Value) -> String {
    let mut buf = Vec::with_capacity(2048);
    // Writing a `Value` into a `Vec` cannot fail: its map keys are strings.
    if serde_json::to_writer(&mut buf, item).is_err() {
        return item.to_string();
    }
    // serde_json writes UTF-8 only.
    String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
