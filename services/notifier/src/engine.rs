//! The notification engine: from an event to planned deliveries.
//!
//! Events are applied once (dedup on the envelope's message id) into persisted groups. One
//! scheduler task polls the due-time indexes (groups, escalations, digests) instead of
//! holding a task or timer per group, so a hundred thousand open groups cost rows, not
//! memory. Every decision is committed together with the deliveries it plans, with
//! deterministic delivery ids, so a crash and replay plan the same rows again and nothing is
//! lost or doubled.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Timelike;
use palisade_clock::SharedClock;
use palisade_contracts::{
    common::v1::Severity,
    events::v1::Envelope,
    notify::v1::{ChannelKind, EscalationStep, PartnerSettings, Recipient, Route},
};
use palisade_crypto::{Aad, EnvelopeCipher, Sealed};
use prost::Message;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::{
    channels::{self, ChannelSecrets, Senders, format},
    dispatch::Limits,
    error::{NotifierError, Result},
    events::{self, Category, ItemSummary},
    links::LinkSigner,
    routing::{self, Target},
    store::{
        AppliedBatch, AppliedEvent, ChannelRecord, DigestAdd, DueGroup, EscalationStart,
        FlushCommit, GroupAdd, GroupState, ItemUpdate, NewDelivery, NotifyStore,
    },
    templates::Templates,
    validate,
};

/// A pseudo channel id in escalation steps: an SMS to the security contact's 24x7 phone.
pub const SECURITY_CONTACT_PHONE: &str = "@security-contact-phone";

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// The notifier's public base URL, for one-click acknowledgement links.
    pub public_url: String,
    /// Signs acknowledgement links. When unset a random key is made at start, and links
    /// stop working at the next restart.
    #[serde(skip_serializing)]
    pub link_signing_key: Option<SecretString>,
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub default_group_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub default_group_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub default_repeat_interval: Duration,
    pub default_digest_hour: u32,
    pub default_time_zone: String,
    /// Delays before each retry (Svix's schedule by default); after the last, a dead letter.
    #[serde(
        deserialize_with = "duration_list",
        serialize_with = "duration_list_out"
    )]
    pub retry_schedule: Vec<Duration>,
    /// ±fraction of each delay, so retries of one outage do not arrive together.
    pub retry_jitter: f64,
    /// The least wait after a 429 or a timeout.
    #[serde(with = "humantime_serde")]
    pub throttle_min_delay: Duration,
    /// The most a `Retry-After` can make us wait.
    #[serde(with = "humantime_serde")]
    pub retry_after_max: Duration,
    /// An endpoint failing without a success for this long is disabled and its owner told.
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
    /// How long a sender holds a delivery before another may take it over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How long a replica reuses a partner's settings, routes and snoozes, the destinations
    /// its routes resolve to, and a channel's record with its decrypted signing secrets.
    /// Changes made through this replica apply at once; through another, within this time.
    #[serde(with = "humantime_serde")]
    pub partner_cache_ttl: Duration,
    pub batch_size: u32,
    /// Deliveries being sent at once by one replica, across all channels.
    pub max_in_flight: usize,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub limits: Limits,
}

impl Default for EngineSettings {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(n * 60);
        Self {
            public_url: "http://localhost:8089".into(),
            link_signing_key: None,
            link_ttl: Duration::from_secs(7 * 86_400),
            default_group_wait: Duration::from_secs(30),
            default_group_interval: m(5),
            default_repeat_interval: m(4 * 60),
            default_digest_hour: 8,
            default_time_zone: "UTC".into(),
            retry_schedule: vec![
                Duration::from_secs(5),
                m(5),
                m(30),
                m(120),
                m(300),
                m(600),
                m(600),
            ],
            retry_jitter: 0.2,
            throttle_min_delay: Duration::from_secs(60),
            retry_after_max: m(60),
            disable_after: Duration::from_secs(5 * 86_400),
            lease: Duration::from_secs(60),
            partner_cache_ttl: Duration::from_secs(1),
            batch_size: 64,
            max_in_flight: 256,
            poll_interval: Duration::from_secs(1),
            limits: Limits::default(),
        }
    }
}

impl std::fmt::Debug for EngineSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSettings")
            .field("public_url", &self.public_url)
            .field(
                "link_signing_key",
                &self.link_signing_key.as_ref().map(|_| "[redacted]"),
            )
            .field("retry_schedule", &self.retry_schedule)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl EngineSettings {
    pub fn validate(&self) -> std::result::Result<(), String> {
        url::Url::parse(&self.public_url)
            .map_err(|e| format!("notifier.engine.public_url: {e}"))?;
        if !(0.0..1.0).contains(&self.retry_jitter) {
            return Err("notifier.engine.retry_jitter: must be in [0, 1)".into());
        }
        if self.default_digest_hour > 23 {
            return Err("notifier.engine.default_digest_hour: must be 0 to 23".into());
        }
        if self.default_time_zone.parse::<chrono_tz::Tz>().is_err() {
            return Err("notifier.engine.default_time_zone: not an IANA zone".into());
        }
        if self.lease < Duration::from_secs(1) || self.batch_size == 0 {
            return Err("notifier.engine.lease and batch_size: must be positive".into());
        }
        Ok(())
    }
}

/// `["5s", "5m", ...]` in config files and environment.
fn duration_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Duration>, D::Error> {
    let raw: Vec<humantime_serde::Serde<Duration>> = Deserialize::deserialize(d)?;
    Ok(raw.into_iter().map(|s| s.into_inner()).collect())
}

fn duration_list_out<S: serde::Serializer>(
    list: &[Duration],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    let shown: Vec<humantime_serde::Serde<Duration>> = list.iter().map(|d| (*d).into()).collect();
    shown.serialize(s)
}

/// What routing an event needs about its partner, read once and shared for a short time.
#[derive(Debug, Clone)]
pub struct PartnerView {
    pub settings: PartnerSettings,
    pub routes: Vec<Route>,
    pub snoozes: HashMap<String, i64>,
}

/// One partner's cached destinations by (recipients, channels, language).
type DestinationsByTarget = HashMap<String, (std::time::Instant, Arc<Vec<Destination>>)>;

/// A resolved destination: one recipient on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub recipient: String,
    pub kind: ChannelKind,
    pub channel_id: String,
    pub target: String,
    pub language: &'static str,
}

pub struct Notifier {
    pub(crate) store: Arc<dyn NotifyStore>,
    pub(crate) cipher: EnvelopeCipher,
    pub(crate) clock: SharedClock,
    pub(crate) templates: Templates,
    pub(crate) senders: Senders,
    pub(crate) links: LinkSigner,
    pub(crate) settings: EngineSettings,
    pub(crate) wake_dispatch: Notify,
    pub(crate) wake_scheduler: Notify,
    pub(crate) limits: crate::dispatch::Limiter,
    digest_done: Mutex<HashMap<String, String>>,
    last_digest_minute: std::sync::atomic::AtomicI64,
    partner_cache: Mutex<HashMap<String, (std::time::Instant, Arc<PartnerView>)>>,
    /// Resolved destinations per partner, then per (recipients, channels, language).
    destination_cache: Mutex<HashMap<String, DestinationsByTarget>>,
    /// Channels as the dispatcher needs them, with their secrets already decrypted.
    channel_cache: Mutex<HashMap<String, (std::time::Instant, Arc<LiveChannel>)>>,
    /// The notifier's series on `/metrics` (unregistered unless [`Notifier::with_metrics`]).
    pub(crate) metrics: crate::metrics::NotifyMetrics,
    /// Set while `dispatch_loop` runs: successful attempts and retries are written in batches.
    pub(crate) attempt_writer: Mutex<Option<tokio::sync::mpsc::Sender<crate::dispatch::Settled>>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

pub(crate) fn stable_id(prefix: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u32).to_be_bytes());
        h.update(p.as_bytes());
    }
    format!("{prefix}_{}", &hex::encode(h.finalize())[..32])
}

impl Notifier {
    pub fn new(
        store: Arc<dyn NotifyStore>,
        cipher: EnvelopeCipher,
        clock: SharedClock,
        senders: Senders,
        settings: EngineSettings,
    ) -> Self {
        let key = settings.link_signing_key.clone().unwrap_or_else(|| {
            tracing::warn!(
                "notifier.engine.link_signing_key is not set: acknowledgement links will \
                 stop working at the next restart"
            );
            SecretString::from(hex::encode(rand::random::<[u8; 32]>()))
        });
        let links = LinkSigner::new(
            key,
            &settings.public_url,
            settings.link_ttl.as_secs() as i64,
        );
        let limits = crate::dispatch::Limiter::new(&settings.limits);
        Self {
            store,
            cipher,
            clock,
            templates: Templates::new(),
            senders,
            links,
            settings,
            wake_dispatch: Notify::new(),
            wake_scheduler: Notify::new(),
            limits,
            digest_done: Mutex::new(HashMap::new()),
            last_digest_minute: std::sync::atomic::AtomicI64::new(i64::MIN),
            attempt_writer: Mutex::new(None),
            partner_cache: Mutex::new(HashMap::new()),
            destination_cache: Mutex::new(HashMap::new()),
            channel_cache: Mutex::new(HashMap::new()),
            metrics: crate::metrics::NotifyMetrics::register(None),
        }
    }

    /// Exports the notifier's series through the service's registry.
    pub fn with_metrics(mut self, registry: &palisade_telemetry::Metrics) -> Self {
        self.metrics = crate::metrics::NotifyMetrics::register(Some(registry));
        self
    }

    /// Reads the gauges (disabled channels, dead letters) from the store again.
    pub async fn refresh_gauges(&self) {
        match self.store.metric_counts().await {
            Ok((disabled, dead)) => self.metrics.set_gauges(&disabled, dead),
            Err(e) => tracing::warn!(error = %e, "reading the metric gauges failed"),
        }
    }

    pub fn store(&self) -> &Arc<dyn NotifyStore> {
        &self.store
    }

    pub fn links(&self) -> &LinkSigner {
        &self.links
    }

    pub fn now(&self) -> i64 {
        self.clock.now_millis()
    }

    /// The partner's settings, or the operator defaults when the partner has none.
    pub async fn effective_settings(&self, partner: &str) -> Result<PartnerSettings> {
        let s = &self.settings;
        let mut settings =
            self.store
                .get_settings(partner)
                .await?
                .unwrap_or_else(|| PartnerSettings {
                    time_zone: s.default_time_zone.clone(),
                    digest_hour: s.default_digest_hour,
                    group_wait_seconds: s.default_group_wait.as_secs() as u32,
                    group_interval_seconds: s.default_group_interval.as_secs() as u32,
                    repeat_interval_seconds: s.default_repeat_interval.as_secs() as u32,
                    escalation: Vec::new(),
                    default_language: "en".into(),
                });
        // Zero would repeat an unchanged group on every tick.
        if settings.repeat_interval_seconds == 0 {
            settings.repeat_interval_seconds = s.default_repeat_interval.as_secs() as u32;
        }
        Ok(settings)
    }

    /// The partner's settings, routes and snoozes, from a short-lived cache.
    pub async fn partner_view(&self, partner: &str) -> Result<Arc<PartnerView>> {
        let ttl = self.settings.partner_cache_ttl;
        if !ttl.is_zero() {
            let cache = self.partner_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, view)) = cache.get(partner).filter(|(at, _)| at.elapsed() < ttl) {
                return Ok(Arc::clone(view));
            }
        }
        let view = Arc::new(PartnerView {
            settings: self.effective_settings(partner).await?,
            routes: self.store.list_routes(partner).await?,
            snoozes: self
                .store
                .list_snoozes(partner, self.now())
                .await?
                .into_iter()
                .collect(),
        });
        if !ttl.is_zero() {
            let mut cache = self.partner_cache.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: a replica serving many partners keeps only recent ones.
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(
                partner.to_owned(),
                (std::time::Instant::now(), Arc::clone(&view)),
            );
        }
        Ok(view)
    }

    /// Forgets a partner's cached view and destinations after a change made through this
    /// replica (settings, routes, snoozes, contacts, admin agents, channels).
    pub fn invalidate(&self, partner: &str) {
        if let Ok(mut cache) = self.partner_cache.lock() {
            cache.remove(partner);
        }
        if let Ok(mut cache) = self.destination_cache.lock() {
            cache.remove(partner);
        }
    }

    /// Forgets a channel's cached record and secrets (deleted, disabled, secret rotated) and
    /// its partner's destinations.
    pub fn invalidate_channel(&self, partner: &str, channel_id: &str) {
        if let Ok(mut cache) = self.channel_cache.lock() {
            cache.remove(channel_id);
        }
        self.invalidate(partner);
    }

    /// [`Notifier::destinations`] through a short-lived cache: every flush of a group asks
    /// for the same ones.
    async fn destinations_cached(
        &self,
        partner: &str,
        target: &Target,
        default_language: &str,
    ) -> Result<Arc<Vec<Destination>>> {
        let ttl = self.settings.partner_cache_ttl;
        let key = format!(
            "{:?}|{:?}|{default_language}",
            target.recipients, target.channel_ids
        );
        if !ttl.is_zero() {
            let cache = self
                .destination_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some((_, found)) = cache
                .get(partner)
                .and_then(|m| m.get(&key))
                .filter(|(at, _)| at.elapsed() < ttl)
            {
                return Ok(Arc::clone(found));
            }
        }
        let found = Arc::new(
            self.destinations(
                partner,
                &target.recipients,
                &target.channel_ids,
                default_language,
            )
            .await?,
        );
        if !ttl.is_zero() {
            let mut cache = self
                .destination_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache
                .entry(partner.to_owned())
                .or_default()
                .insert(key, (std::time::Instant::now(), Arc::clone(&found)));
        }
        Ok(found)
    }

    /// A channel and its decrypted secrets for sending, through a short-lived cache: without
    /// it every delivery costs a read and a decryption. `None` when deleted.
    pub(crate) async fn live_channel(
        &self,
        partner: &str,
        channel_id: &str,
    ) -> Result<Option<Arc<LiveChannel>>> {
        let ttl = self.settings.partner_cache_ttl;
        if !ttl.is_zero() {
            let cache = self.channel_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, live)) = cache
                .get(channel_id)
                .filter(|(at, live)| at.elapsed() < ttl && live.record.partner_tenant_id == partner)
            {
                return Ok(Some(Arc::clone(live)));
            }
        }
        let Some(record) = self.store.get_channel(partner, channel_id).await? else {
            return Ok(None);
        };
        let secrets = if record.enabled {
            self.open_secret_entries(&record).await?
        } else {
            Vec::new()
        };
        let live = Arc::new(LiveChannel {
            failing_since: Mutex::new(record.failing_since),
            record,
            secrets,
        });
        if !ttl.is_zero() {
            let mut cache = self.channel_cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() > 50_000 {
                cache.clear();
            }
            cache.insert(
                channel_id.to_owned(),
                (std::time::Instant::now(), Arc::clone(&live)),
            );
        }
        Ok(Some(live))
    }

    // ---------------------------------------------------------------- events

    /// Applies one queue message. `Ok(false)` when it was a duplicate or not for us; either
    /// way the caller acks it. An error means "try again later" (nack).
    // The producer's W3C trace context rides in the envelope; recording it on this span ties
    // the notification to the trace that started at the webhook or poll.
    #[tracing::instrument(skip_all, fields(
        message_id = %envelope.message_id,
        kind = %envelope.kind,
        partner_tenant_id = %envelope.partner_tenant_id,
        traceparent = %envelope.traceparent,
    ))]
    pub async fn handle_envelope(&self, envelope: &Envelope) -> Result<bool> {
        let Some(applied) = self.prepare(envelope).await? else {
            return Ok(false);
        };
        Ok(self.apply_and_flush(std::slice::from_ref(&applied)).await? > 0)
    }

    /// Applies a batch of envelopes (in order) in one transaction. A malformed envelope
    /// fails the batch with `InvalidArgument`; the caller then handles them one by one.
    pub async fn handle_envelopes(&self, envelopes: &[Envelope]) -> Result<usize> {
        let mut batch = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            if let Some(applied) = self.prepare(envelope).await? {
                batch.push(applied);
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        self.apply_and_flush(&batch).await
    }

    /// Applies prepared events in one transaction and flushes, in the same transaction, the
    /// groups they made due now (a zero group wait or interval): the batch holds those
    /// groups' row locks already, so this costs a few statements for all of them, and an
    /// event does not wait for the timer task's next pass. Returns how many were fresh.
    async fn apply_and_flush(&self, batch: &[AppliedEvent]) -> Result<usize> {
        // Destinations need the store, which cannot be called inside the transaction
        // (SQLite has one connection): they are resolved first, from the short-lived caches,
        // for the groups that can be due at once.
        let mut plans: HashMap<&str, GroupPlan> = HashMap::new();
        for e in batch {
            for g in &e.groups {
                if (g.group_wait_ms > 0 && g.group_interval_ms > 0)
                    || plans.contains_key(g.group_key.as_str())
                {
                    continue;
                }
                let view = self.partner_view(&e.partner_tenant_id).await?;
                let Some(target) = route_target(&view.routes, &g.route_id) else {
                    continue;
                };
                let destinations = self
                    .destinations_cached(
                        &e.partner_tenant_id,
                        &target,
                        &view.settings.default_language,
                    )
                    .await?;
                plans.insert(
                    &g.group_key,
                    GroupPlan {
                        view,
                        target,
                        destinations,
                    },
                );
            }
        }
        let now = batch
            .iter()
            .map(|e| e.now)
            .max()
            .unwrap_or_else(|| self.now());
        let notified = std::sync::atomic::AtomicBool::new(false);
        let decide = |group: &GroupState| -> Result<Option<FlushCommit>> {
            let Some(plan) = plans.get(group.group_key.as_str()) else {
                return Ok(None);
            };
            let planned = Some((&plan.target, plan.destinations.as_slice()));
            match self.decide_flush(group, now, &plan.view, planned) {
                Ok(FlushDecision::Commit(commit)) => {
                    if commit.notified_hash.is_some() {
                        notified.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(Some(commit))
                }
                // Flushed on its own right after, with the target it asks for.
                Ok(FlushDecision::NeedsTarget(_)) => Ok(None),
                Err(e) => {
                    // The events must still apply: the group stays due, and its own flush
                    // (right after, or the timer's) reports the failure again.
                    tracing::warn!(group_key = %group.group_key, error = %e, "planning a group with its events failed");
                    Ok(None)
                }
            }
        };
        let applied = self.store.apply_events(batch, Some(&decide)).await?;
        if notified.into_inner() {
            self.wake_dispatch.notify_one();
        }
        let fresh = applied.fresh.iter().filter(|f| **f).count();
        self.after_apply(applied).await;
        Ok(fresh)
    }

    /// Flushes the groups a batch made due now but did not flush itself, at once rather than
    /// at the timer task's next pass. The events are committed either way; a group this
    /// fails to flush stays due for the timer.
    async fn after_apply(&self, applied: AppliedBatch) {
        let mut wake_timer = applied.due_later;
        if !applied.due.is_empty()
            && let Err(e) = self.flush_groups(applied.due).await
        {
            tracing::warn!(error = %e, "flushing due groups after applying events failed; the timer task will");
            wake_timer = true;
        }
        if wake_timer {
            self.wake_scheduler.notify_one();
        }
    }

    /// Reads what an event needs (routes, settings, snooze) and decides its effects, without
    /// writing anything.
    async fn prepare(&self, envelope: &Envelope) -> Result<Option<AppliedEvent>> {
        let Some(item) = events::item_from_envelope(envelope)? else {
            return Ok(None);
        };
        let partner = envelope.partner_tenant_id.as_str();
        if partner.is_empty() || envelope.message_id.is_empty() {
            return Err(NotifierError::invalid(
                "envelope without partner or message id",
            ));
        }
        let now = self.now();
        let view = self.partner_view(partner).await?;
        let settings = &view.settings;
        let routes = &view.routes;
        let snoozed = view
            .snoozes
            .get(&item.fingerprint)
            .is_some_and(|until| *until > now);
        let summary = serde_json::to_string(&item).map_err(anyhow::Error::from)?;
        let mut applied = AppliedEvent {
            message_id: envelope.message_id.clone(),
            partner_tenant_id: partner.to_owned(),
            now,
            occurred_at: envelope
                .occurred_at
                .as_ref()
                .map(palisade_contracts::time::to_millis)
                .unwrap_or(now),
            item: Some(ItemUpdate {
                fingerprint: item.fingerprint.clone(),
                kind: item.kind.clone(),
                open: item.firing && !item.one_shot,
                severity: item.severity,
                alert_type: item.alert_type.clone(),
                customer_tenant_id: item.customer_tenant_id.clone(),
                subscription_id: item.subscription_id.clone(),
                title: item.title.clone(),
            }),
            ..Default::default()
        };
        // A snoozed fingerprint still counts in the digest, but nobody is told about it.
        if !snoozed {
            for target in routing::route(routes, &item) {
                if target.digest {
                    applied.digests.push(DigestAdd {
                        route_id: target.route_id,
                        fingerprint: item.fingerprint.clone(),
                        summary: summary.clone(),
                    });
                    continue;
                }
                applied.groups.push(GroupAdd {
                    group_key: format!("{partner}/{}", target.route_id),
                    route_id: target.route_id,
                    fingerprint: item.fingerprint.clone(),
                    kind: item.kind.clone(),
                    firing: item.firing && !item.one_shot,
                    severity: item.severity,
                    summary: summary.clone(),
                    group_wait_ms: i64::from(settings.group_wait_seconds) * 1000,
                    group_interval_ms: i64::from(settings.group_interval_seconds) * 1000,
                    repeat_interval_ms: i64::from(settings.repeat_interval_seconds) * 1000,
                });
            }
            if should_escalate(&item) {
                let chain = frozen_chain(settings);
                let first_due = now + i64::from(chain[0].after_minutes) * 60_000;
                applied.escalation = Some(EscalationStart {
                    escalation_id: stable_id(
                        "esc",
                        &[partner, &item.fingerprint, &envelope.message_id],
                    ),
                    fingerprint: item.fingerprint.clone(),
                    chain_proto: PartnerSettings {
                        escalation: chain,
                        ..Default::default()
                    }
                    .encode_to_vec(),
                    first_due_at: first_due,
                    context: summary.clone(),
                });
            }
        }
        if !item.firing {
            applied.stop_escalation_for = Some(item.fingerprint.clone());
        }
        Ok(Some(applied))
    }

    // ---------------------------------------------------------------- scheduling

    /// Runs every due timer once: group flushes, escalation steps and daily digests.
    /// Returns how many notifications were planned.
    pub async fn run_timers(&self) -> Result<usize> {
        let mut planned = 0;
        planned += self.flush_due_groups().await?;
        planned += self.run_escalations().await?;
        // Digests are due at most once an hour per partner; checking once a minute is enough.
        let minute = self.now() / 60_000;
        if self
            .last_digest_minute
            .swap(minute, std::sync::atomic::Ordering::Relaxed)
            != minute
        {
            planned += self.run_digests().await?;
        }
        if planned > 0 {
            self.wake_dispatch.notify_one();
        }
        Ok(planned)
    }

    pub async fn flush_due_groups(&self) -> Result<usize> {
        let mut notified = 0;
        // Bounded, so groups that keep coming due cannot hold the timer task forever.
        for _ in 0..100 {
            let due = self.store.due_groups(self.now(), 256).await?;
            let batch = due.len();
            notified += self.flush_groups(due).await?;
            if batch < 256 {
                break;
            }
        }
        Ok(notified)
    }

    /// Flushes groups concurrently: each under its own row lock, so one slow partner does not
    /// delay the others. Returns how many notified.
    async fn flush_groups(&self, due: Vec<DueGroup>) -> Result<usize> {
        use futures::{StreamExt, TryStreamExt};
        let results: Vec<bool> = futures::stream::iter(due)
            .map(|group| async move { self.flush_group(&group).await })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        Ok(results.into_iter().filter(|n| *n).count())
    }

    /// Flushes one group: decides and plans from the group as it stands under its row lock,
    /// and commits in the same transaction (see [`NotifyStore::flush_group`]).
    async fn flush_group(&self, due: &DueGroup) -> Result<bool> {
        let partner = due.partner_tenant_id.as_str();
        let view = self.partner_view(partner).await?;
        // Resolving destinations reads the store, which planning under the lock cannot do;
        // they are resolved first for the route the group is keyed by. Only a group whose
        // partner route was deleted (the defaults then pick by its first item) needs a
        // second pass with the target the locked group asked for.
        let mut target = route_target(&view.routes, &due.route_id);
        for _ in 0..3 {
            let destinations = match &target {
                Some(t) => Some(
                    self.destinations_cached(partner, t, &view.settings.default_language)
                        .await?,
                ),
                None => None,
            };
            let now = self.now();
            let asked: Mutex<Option<Target>> = Mutex::new(None);
            let notified = std::sync::atomic::AtomicBool::new(false);
            let decide = |group: &GroupState| {
                let decision = self.decide_flush(
                    group,
                    now,
                    &view,
                    target
                        .as_ref()
                        .zip(destinations.as_deref().map(Vec::as_slice)),
                )?;
                Ok(match decision {
                    FlushDecision::Commit(commit) => {
                        notified.store(
                            commit.notified_hash.is_some(),
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        Some(commit)
                    }
                    FlushDecision::NeedsTarget(t) => {
                        *asked.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
                        None
                    }
                })
            };
            let committed = self.store.flush_group(&due.group_key, now, &decide).await?;
            if let Some(t) = asked.into_inner().unwrap_or_else(|e| e.into_inner()) {
                target = Some(t);
                continue;
            }
            let notified = committed && notified.into_inner();
            if notified {
                self.wake_dispatch.notify_one();
            }
            return Ok(notified);
        }
        Ok(false)
    }

    /// Alertmanager's decision for a due group, and the plan when it notifies. Pure: it runs
    /// under the group's lock. `planned` is the target resolved before the lock, with its
    /// destinations.
    fn decide_flush(
        &self,
        group: &GroupState,
        now: i64,
        view: &PartnerView,
        planned: Option<(&Target, &[Destination])>,
    ) -> Result<FlushDecision> {
        let mut firing: Vec<_> = group.items.iter().filter(|i| i.firing).collect();
        let resolved = group.items.len() - firing.len();
        // In byte order whatever order the items came in (the database's collation, or a
        // batch's items merged in memory), so an unchanged group always hashes the same.
        firing.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        let mut hasher = Sha256::new();
        for i in &firing {
            hasher.update(format!("{}|{}\n", i.fingerprint, i.severity));
        }
        let hash = hex::encode(hasher.finalize());
        let never_notified = group.last_notified_at.is_none();
        let changed = hash != group.last_notified_hash || resolved > 0;
        let repeat_due = group
            .last_notified_at
            .is_some_and(|t| now >= t + group.repeat_interval_ms);
        // Notices (relationship changes) are told once; they are stored as not firing.
        let notices = group
            .items
            .iter()
            .filter(|i| !i.firing)
            .filter(|i| serde_json::from_str::<ItemSummary>(&i.summary).is_ok_and(|s| s.one_shot))
            .count();
        // Nothing is said about alerts that came and went before anyone was told.
        let has_news = !firing.is_empty() || notices > 0 || !never_notified;
        let notify = has_news && (changed || (repeat_due && !firing.is_empty()));
        let deliveries = if notify {
            match self.plan_group(group, now, view, planned)? {
                Ok(deliveries) => deliveries,
                Err(target) => return Ok(FlushDecision::NeedsTarget(target)),
            }
        } else {
            Vec::new()
        };
        let base = if notify {
            now
        } else {
            group.last_notified_at.unwrap_or(now)
        };
        Ok(FlushDecision::Commit(FlushCommit {
            now,
            deliveries,
            notified_hash: notify.then_some(hash),
            firing: firing.len() as i64,
            resolved: resolved as i64,
            next_flush_at: (!firing.is_empty()).then_some(base + group.repeat_interval_ms),
        }))
    }

    /// The group's message for each destination; `Err(target)` when the group needs another
    /// target than the one resolved before the lock.
    fn plan_group(
        &self,
        group: &GroupState,
        now: i64,
        view: &PartnerView,
        planned: Option<(&Target, &[Destination])>,
    ) -> Result<std::result::Result<Vec<NewDelivery>, Target>> {
        let mut items = Vec::with_capacity(group.items.len());
        for gi in &group.items {
            let item: ItemSummary = serde_json::from_str(&gi.summary)
                .map_err(|e| NotifierError::Corrupt(format!("group item summary: {e}")))?;
            // A group's first message leaves out alerts that resolved before anyone heard
            // of them.
            if group.last_notified_at.is_none() && !item.firing {
                continue;
            }
            items.push(item);
        }
        let Some(first) = items.first().cloned() else {
            return Ok(Ok(Vec::new()));
        };
        let partner = &group.partner_tenant_id;
        let target = partner_route_target(&view.routes, &group.route_id)
            // A default route, or a partner route deleted since: the defaults never drop it.
            .unwrap_or_else(|| routing::default_target(&first));
        let destinations = match planned {
            Some((t, destinations)) if *t == target => destinations,
            _ => return Ok(Err(target)),
        };
        let event_id = format!("{}#{}", group.group_key, group.flush_seq + 1);
        let single = items.len() == 1;
        let (template, event_kind, fingerprint) = if single {
            (
                first.category.template(),
                first.kind.clone(),
                first.fingerprint.clone(),
            )
        } else {
            ("group", "notification.group".to_owned(), String::new())
        };
        let ack_url = (single && first.firing && escalates_on_ack(&first))
            .then(|| self.links.ack_url(partner, &first.fingerprint, now));
        let firing_count = items.iter().filter(|i| i.firing && !i.one_shot).count();
        let ctx = serde_json::json!({
            "item": first,
            "items": items,
            "firing_count": firing_count,
            "resolved_count": items.iter().filter(|i| !i.firing).count(),
            "ack_url": ack_url,
        });
        self.plan_for(
            partner,
            destinations,
            &event_id,
            &event_kind,
            &fingerprint,
            template,
            &ctx,
            &items,
            ack_url.as_deref(),
            now,
        )
        .map(Ok)
    }

    /// Renders and formats one message for every destination, in each one's language.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn plan_for(
        &self,
        partner: &str,
        destinations: &[Destination],
        event_id: &str,
        event_kind: &str,
        fingerprint: &str,
        template: &str,
        ctx: &serde_json::Value,
        items: &[ItemSummary],
        ack_url: Option<&str>,
        now: i64,
    ) -> Result<Vec<NewDelivery>> {
        let mut rendered_by_lang = BTreeMap::new();
        let mut out = Vec::new();
        for dest in destinations {
            let rendered = match rendered_by_lang.get(dest.language) {
                Some(r) => r,
                None => {
                    let r = self.templates.render(template, dest.language, ctx)?;
                    rendered_by_lang.entry(dest.language).or_insert(r)
                }
            };
            // PagerDuty keys incidents by alert: one event per item, deduped on its fingerprint.
            let per_item: Vec<&[ItemSummary]> =
                if dest.kind == ChannelKind::Pagerduty && items.len() > 1 {
                    items.chunks(1).collect()
                } else {
                    vec![items]
                };
            for chunk in per_item {
                let item_rendered;
                let rendered = if chunk.len() == 1 && items.len() > 1 {
                    let item_ctx = serde_json::json!({"item": chunk[0], "ack_url": ack_url});
                    item_rendered = self.templates.render(
                        chunk[0].category.template(),
                        dest.language,
                        &item_ctx,
                    )?;
                    &item_rendered
                } else {
                    rendered
                };
                let msg = format::Message {
                    partner_tenant_id: partner,
                    event_kind,
                    rendered,
                    items: chunk,
                    ack_url,
                    language: dest.language,
                    occurred_at: now,
                };
                let (subject, body) = format::format(dest.kind, &msg);
                let fp = if chunk.len() == 1 {
                    chunk[0].fingerprint.as_str()
                } else {
                    fingerprint
                };
                out.push(NewDelivery {
                    delivery_id: stable_id(
                        "msg",
                        &[
                            event_id,
                            dest.kind.as_str_name(),
                            &dest.channel_id,
                            &dest.target,
                            fp,
                        ],
                    ),
                    partner_tenant_id: partner.to_owned(),
                    event_id: event_id.to_owned(),
                    event_kind: event_kind.to_owned(),
                    fingerprint: fp.to_owned(),
                    channel_kind: dest.kind as i32,
                    channel_id: dest.channel_id.clone(),
                    recipient: dest.recipient.clone(),
                    target: dest.target.clone(),
                    language: dest.language.to_owned(),
                    subject,
                    body,
                    next_attempt_at: now,
                    created_at: now,
                });
            }
        }
        Ok(out)
    }

    /// Resolves recipients and channels into concrete destinations, deduplicated. When a
    /// route names nobody reachable, the security contact is the fallback: a notification
    /// with no recipient is a lost notification.
    pub async fn destinations(
        &self,
        partner: &str,
        recipients: &[Recipient],
        channel_ids: &[String],
        default_language: &str,
    ) -> Result<Vec<Destination>> {
        let mut out: Vec<Destination> = Vec::new();
        let needs_security = recipients.contains(&Recipient::SecurityContact)
            || channel_ids.iter().any(|c| c == SECURITY_CONTACT_PHONE);
        let mut security = if needs_security {
            self.store.get_security_contact(partner).await?
        } else {
            None
        };
        let mut push = |d: Destination| {
            if !out
                .iter()
                .any(|o| o.kind == d.kind && o.target == d.target && o.channel_id == d.channel_id)
            {
                out.push(d);
            }
        };
        for r in recipients {
            match r {
                Recipient::SecurityContact => {
                    if let Some(c) = security.as_ref().filter(|c| !c.email.is_empty()) {
                        push(Destination {
                            recipient: "security_contact".into(),
                            kind: ChannelKind::Email,
                            channel_id: String::new(),
                            target: c.email.clone(),
                            language: validate::pick_language(&c.language, default_language),
                        });
                    }
                }
                Recipient::ComplianceContact => {
                    if let Some(c) = self.store.get_compliance_contact(partner).await? {
                        push(Destination {
                            recipient: "compliance_contact".into(),
                            kind: ChannelKind::Email,
                            channel_id: String::new(),
                            target: c.email.clone(),
                            language: validate::pick_language(&c.language, default_language),
                        });
                    }
                }
                Recipient::AdminAgents => {
                    let mut after: Option<String> = None;
                    loop {
                        let page = self
                            .store
                            .list_admin_agents(partner, after.as_deref(), 500)
                            .await?;
                        let n = page.len();
                        for a in page {
                            after = Some(a.agent_id.clone());
                            if a.email.is_empty() {
                                continue;
                            }
                            push(Destination {
                                recipient: format!("admin_agent:{}", a.agent_id),
                                kind: ChannelKind::Email,
                                channel_id: String::new(),
                                target: a.email.clone(),
                                language: validate::pick_language(&a.language, default_language),
                            });
                        }
                        if n < 500 {
                            break;
                        }
                    }
                }
                Recipient::Unspecified => {}
            }
        }
        for id in channel_ids {
            if id == SECURITY_CONTACT_PHONE {
                if let Some(c) = security.as_ref().filter(|c| !c.phone.is_empty()) {
                    push(Destination {
                        recipient: "security_contact_phone".into(),
                        kind: ChannelKind::Sms,
                        channel_id: String::new(),
                        target: c.phone.clone(),
                        language: validate::pick_language(&c.language, default_language),
                    });
                }
                continue;
            }
            match self.store.get_channel(partner, id).await? {
                Some(ch) if ch.enabled => push(Destination {
                    recipient: format!("channel:{}", ch.channel_id),
                    kind: channels::kind_of(ch.kind),
                    channel_id: ch.channel_id.clone(),
                    target: ch.target.clone(),
                    language: validate::pick_language(&ch.language, default_language),
                }),
                Some(_) => tracing::debug!(channel_id = %id, "channel disabled: skipped"),
                None => tracing::warn!(channel_id = %id, "route names a missing channel"),
            }
        }
        if out.is_empty() {
            if !needs_security {
                security = self.store.get_security_contact(partner).await?;
            }
            if let Some(c) = security.as_ref().filter(|c| !c.email.is_empty()) {
                out.push(Destination {
                    recipient: "security_contact".into(),
                    kind: ChannelKind::Email,
                    channel_id: String::new(),
                    target: c.email.clone(),
                    language: validate::pick_language(&c.language, default_language),
                });
            } else {
                tracing::warn!(partner_tenant_id = %partner, "no recipient configured: notification not planned");
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- escalation

    pub async fn run_escalations(&self) -> Result<usize> {
        let now = self.now();
        let mut ran = 0;
        for row in self.store.due_escalations(now, 100).await? {
            let chain = PartnerSettings::decode(row.chain_proto.as_slice())?.escalation;
            let item: ItemSummary = serde_json::from_str(&row.context)
                .map_err(|e| NotifierError::Corrupt(format!("escalation context: {e}")))?;
            let due_at = |i: usize| row.started_at + i64::from(chain[i].after_minutes) * 60_000;
            let start = row.next_step as usize;
            if start >= chain.len() {
                self.store
                    .commit_escalation_step(&row.escalation_id, row.next_step, None, &[])
                    .await?;
                continue;
            }
            // When several steps are overdue (the notifier was down), only the latest runs:
            // paging the first rung an hour late helps nobody, and the stale ones are dropped.
            let mut run = start;
            while run + 1 < chain.len() && due_at(run + 1) <= now {
                run += 1;
            }
            if run > start {
                tracing::info!(escalation_id = %row.escalation_id, dropped = run - start, "stale escalation steps dropped");
            }
            let step = &chain[run];
            let settings = self.effective_settings(&row.partner_tenant_id).await?;
            let destinations = self
                .destinations(
                    &row.partner_tenant_id,
                    &step.recipients().collect::<Vec<_>>(),
                    &step.channel_ids,
                    &settings.default_language,
                )
                .await?;
            let ack_url = self
                .links
                .ack_url(&row.partner_tenant_id, &row.fingerprint, now);
            let ctx = serde_json::json!({"item": item, "step": run + 1, "ack_url": ack_url});
            let event_id = format!("{}#step{}", row.escalation_id, run + 1);
            let deliveries = self.plan_for(
                &row.partner_tenant_id,
                &destinations,
                &event_id,
                "notification.escalation",
                &row.fingerprint,
                "escalation",
                &ctx,
                std::slice::from_ref(&item),
                Some(&ack_url),
                now,
            )?;
            let next = (run + 1 < chain.len()).then(|| ((run + 1) as u32, due_at(run + 1)));
            if self
                .store
                .commit_escalation_step(&row.escalation_id, row.next_step, next, &deliveries)
                .await?
            {
                ran += 1;
            }
        }
        Ok(ran)
    }

    // ---------------------------------------------------------------- digest

    pub async fn run_digests(&self) -> Result<usize> {
        let now = self.now();
        let mut sent = 0;
        for partner in self.store.list_digest_partners().await? {
            let settings = self.effective_settings(&partner).await?;
            let tz: chrono_tz::Tz = settings.time_zone.parse().unwrap_or(chrono_tz::UTC);
            let local = self.clock.now().with_timezone(&tz);
            if local.hour() < settings.digest_hour {
                continue;
            }
            let date = local.date_naive().to_string();
            if self
                .digest_done
                .lock()
                .map(|m| m.get(&partner) == Some(&date))
                .unwrap_or(false)
            {
                continue;
            }
            let stats = self.store.digest_stats(&partner, now).await?;
            let items: Vec<ItemSummary> = self
                .store
                .list_digest_items(&partner)
                .await?
                .iter()
                .filter_map(|d| serde_json::from_str(&d.summary).ok())
                .collect();
            let quiet = stats.open_alerts == 0
                && stats.open_compliance_failures.is_empty()
                && items.is_empty();
            let deliveries = if quiet {
                // Like Microsoft's summary: no unresolved alerts, no mail.
                Vec::new()
            } else {
                let routes = self.store.list_routes(&partner).await?;
                let mut recipients = vec![Recipient::AdminAgents, Recipient::SecurityContact];
                let mut channel_ids = Vec::new();
                for r in routes
                    .iter()
                    .filter(|r| r.mode() == palisade_contracts::notify::v1::DeliveryMode::Digest)
                {
                    recipients.extend(r.recipients());
                    channel_ids.extend(r.channel_ids.iter().cloned());
                }
                recipients.dedup();
                let destinations = self
                    .destinations(
                        &partner,
                        &recipients,
                        &channel_ids,
                        &settings.default_language,
                    )
                    .await?;
                let per_type: Vec<_> = stats
                    .per_alert_type
                    .iter()
                    .map(|(t, n)| serde_json::json!({"alert_type": t, "count": n}))
                    .collect();
                let ctx = serde_json::json!({
                    "date": date,
                    "stats": {
                        "open_alerts": stats.open_alerts,
                        "customers": stats.customers,
                        "subscriptions": stats.subscriptions,
                        "per_alert_type": per_type,
                        "overdue_alerts": stats.overdue_alerts,
                        "compliance_failures": stats.open_compliance_failures,
                    },
                    "items": items,
                });
                let event_id = format!("digest:{partner}:{date}");
                self.plan_for(
                    &partner,
                    &destinations,
                    &event_id,
                    "notification.digest",
                    "",
                    "digest",
                    &ctx,
                    &[],
                    None,
                    now,
                )?
            };
            if self
                .store
                .commit_digest(&partner, &date, now, &deliveries)
                .await?
                && !deliveries.is_empty()
            {
                sent += 1;
            }
            if let Ok(mut m) = self.digest_done.lock() {
                m.insert(partner.clone(), date);
            }
        }
        Ok(sent)
    }

    // ---------------------------------------------------------------- secrets

    pub(crate) fn secret_aad(partner: &str, channel_id: &str) -> Aad {
        Aad::new("notify_channel_secret", partner, channel_id)
    }

    /// Seals a channel's secrets (newest first) as one record.
    pub async fn seal_secrets(
        &self,
        partner: &str,
        channel_id: &str,
        secrets: &[SecretString],
    ) -> Result<Vec<u8>> {
        let joined = zeroize::Zeroizing::new(
            secrets
                .iter()
                .map(|s| s.expose_secret())
                .collect::<Vec<_>>()
                .join(" "),
        );
        let sealed = self
            .cipher
            .seal(joined.as_bytes(), &Self::secret_aad(partner, channel_id))
            .await?;
        Ok(sealed.to_bytes())
    }

    /// Puts `new` first and keeps the channel's current secrets signing for `keep_ms` more.
    pub async fn rotate_secret(
        &self,
        channel: &ChannelRecord,
        new: SecretString,
        keep_ms: i64,
    ) -> Result<u32> {
        let now = self.now();
        let mut entries = vec![new];
        if let Some(bytes) = &channel.secret_sealed {
            let sealed = Sealed::from_bytes(bytes)?;
            let plain = self
                .cipher
                .open(
                    &sealed,
                    &Self::secret_aad(&channel.partner_tenant_id, &channel.channel_id),
                )
                .await?;
            let text = std::str::from_utf8(&plain)
                .map_err(|_| NotifierError::Corrupt("channel secret is not utf-8".into()))?;
            for entry in text.split(' ').filter(|s| !s.is_empty()) {
                let (secret, expires) = match entry.split_once('|') {
                    Some((s, e)) => (s, e.parse::<i64>().unwrap_or(0).min(now + keep_ms)),
                    None => (entry, now + keep_ms),
                };
                if expires > now {
                    entries.push(SecretString::from(format!("{secret}|{expires}")));
                }
            }
        }
        let sealed = self
            .seal_secrets(&channel.partner_tenant_id, &channel.channel_id, &entries)
            .await?;
        let count = entries.len() as u32;
        self.store
            .update_channel_secret(&channel.channel_id, &sealed, count)
            .await?;
        self.invalidate_channel(&channel.partner_tenant_id, &channel.channel_id);
        Ok(count)
    }

    pub async fn open_secrets(&self, channel: &ChannelRecord) -> Result<ChannelSecrets> {
        let now = self.now();
        Ok(ChannelSecrets(
            self.open_secret_entries(channel)
                .await?
                .into_iter()
                .filter(|(_, expires)| *expires > now)
                .map(|(s, _)| s)
                .collect(),
        ))
    }

    /// Every sealed secret with when it stops signing (`i64::MAX` for the current ones).
    async fn open_secret_entries(
        &self,
        channel: &ChannelRecord,
    ) -> Result<Vec<(SecretString, i64)>> {
        let Some(bytes) = &channel.secret_sealed else {
            return Ok(Vec::new());
        };
        let sealed = Sealed::from_bytes(bytes)?;
        let plain = self
            .cipher
            .open(
                &sealed,
                &Self::secret_aad(&channel.partner_tenant_id, &channel.channel_id),
            )
            .await?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| NotifierError::Corrupt("channel secret is not utf-8".into()))?;
        // Entries are "secret" or "secret|expires_at_millis" (a previous secret during a
        // rotation); expired ones no longer sign.
        Ok(text
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(|entry| match entry.split_once('|') {
                None => (entry, i64::MAX),
                Some((secret, expires)) => (secret, expires.parse::<i64>().unwrap_or(0)),
            })
            .map(|(s, expires)| (SecretString::from(s.to_owned()), expires))
            .collect())
    }
}

/// High-severity alerts and incidents escalate until acknowledged.
fn should_escalate(item: &ItemSummary) -> bool {
    item.firing
        && !item.one_shot
        && item.severity >= Severity::High as i32
        && escalates_on_ack(item)
        && (item.category != Category::FraudAlert
            || item.kind == events::ALERT_RAISED
            || item.kind == events::ALERT_REOPENED)
}

fn escalates_on_ack(item: &ItemSummary) -> bool {
    item.category == Category::FraudAlert || item.incident
}

/// The chain as it will run, fixed when escalation starts: the partner's steps (or the
/// default: admin agents and the security contact after 15 minutes), always ending with an
/// SMS to the security contact's 24x7 phone.
pub fn frozen_chain(settings: &PartnerSettings) -> Vec<EscalationStep> {
    let mut chain = if settings.escalation.is_empty() {
        vec![EscalationStep {
            after_minutes: 15,
            recipients: vec![
                Recipient::AdminAgents as i32,
                Recipient::SecurityContact as i32,
            ],
            channel_ids: Vec::new(),
        }]
    } else {
        let mut steps = settings.escalation.clone();
        steps.sort_by_key(|s| s.after_minutes);
        steps
    };
    let ends_with_phone = chain
        .last()
        .is_some_and(|s| s.channel_ids.iter().any(|c| c == SECURITY_CONTACT_PHONE));
    if !ends_with_phone {
        let last = chain.last().map(|s| s.after_minutes).unwrap_or(0);
        chain.push(EscalationStep {
            after_minutes: last + 15,
            recipients: Vec::new(),
            channel_ids: vec![SECURITY_CONTACT_PHONE.to_owned()],
        });
    }
    chain
}

/// What planning a group needs, resolved before its lock is taken.
struct GroupPlan {
    view: Arc<PartnerView>,
    target: Target,
    destinations: Arc<Vec<Destination>>,
}

/// What a flush under the group's lock decided.
enum FlushDecision {
    Commit(FlushCommit),
    /// The locked group needs another target than the one resolved before the lock.
    NeedsTarget(Target),
}

fn partner_route_target(routes: &[Route], route_id: &str) -> Option<Target> {
    routes
        .iter()
        .find(|r| r.route_id == route_id)
        .map(|r| Target {
            route_id: r.route_id.clone(),
            recipients: r.recipients().collect(),
            channel_ids: r.channel_ids.clone(),
            digest: false,
        })
}

/// The target a group's route stands for, when its id says it: a partner route that still
/// exists, or one of the defaults. `None` for a partner route deleted since (the defaults
/// then pick by the group's first item).
fn route_target(routes: &[Route], route_id: &str) -> Option<Target> {
    if let Some(t) = partner_route_target(routes, route_id) {
        return Some(t);
    }
    let recipient = match route_id {
        routing::DEFAULT_ADMINS => Recipient::AdminAgents,
        routing::DEFAULT_SECURITY => Recipient::SecurityContact,
        routing::DEFAULT_COMPLIANCE => Recipient::ComplianceContact,
        _ => return None,
    };
    Some(Target {
        route_id: route_id.to_owned(),
        recipients: vec![recipient],
        channel_ids: Vec::new(),
        digest: false,
    })
}

/// A channel as the dispatcher sends on it: the stored record and its decrypted signing
/// secrets (with when each stops signing), shared for a short time.
pub(crate) struct LiveChannel {
    pub(crate) record: ChannelRecord,
    secrets: Vec<(SecretString, i64)>,
    /// Since when the endpoint has been failing, as this replica last saw or recorded it.
    pub(crate) failing_since: Mutex<Option<i64>>,
}

impl LiveChannel {
    /// The secrets that still sign at `now`, newest first.
    pub(crate) fn secrets(&self, now: i64) -> ChannelSecrets {
        ChannelSecrets(
            self.secrets
                .iter()
                .filter(|(_, expires)| *expires > now)
                .map(|(s, _)| s.clone())
                .collect(),
        )
    }
}

impl std::fmt::Debug for LiveChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveChannel")
            .field("record", &self.record)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .finish_non_exhaustive()
    }
}
