//! Sends planned deliveries: leases due rows, respects per-channel concurrency and rate
//! limits, and records every attempt with its outcome.
//!
//! Retries are new due times on the same row (Svix's schedule with jitter), not sleeps, so a
//! restart loses nothing: a delivery whose sender died is leased again once its lease runs
//! out and is re-sent with the same id, which receivers see as the same `webhook-id`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use palisade_contracts::notify::v1::{ChannelKind, Recipient};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::{
    channels::{ChannelSecrets, SendOutcome},
    engine::{LiveChannel, Notifier, stable_id},
    error::Result,
    metrics::Outcome,
    store::{AttemptRecord, AttemptResult, ChannelRecord, DeliveryRow, EndpointRoom},
};

/// A number per channel kind.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PerKind {
    pub email: f64,
    pub webhook: f64,
    pub teams: f64,
    pub slack: f64,
    pub sms: f64,
    pub pagerduty: f64,
}

impl PerKind {
    fn get(&self, kind: ChannelKind) -> f64 {
        match kind {
            ChannelKind::Email | ChannelKind::Unspecified => self.email,
            ChannelKind::Webhook => self.webhook,
            ChannelKind::Teams => self.teams,
            ChannelKind::Slack => self.slack,
            ChannelKind::Sms => self.sms,
            ChannelKind::Pagerduty => self.pagerduty,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Requests in flight per channel kind, across all endpoints.
    pub concurrency: PerKind,
    /// Requests per second per endpoint (a URL, an address, a phone, a routing key); zero
    /// means unlimited.
    pub rate_per_endpoint: PerKind,
    /// Requests in flight per endpoint, so a slow endpoint cannot take every slot of its
    /// kind and hold back the healthy ones.
    pub concurrency_per_endpoint: usize,
    /// Consecutive failed attempts (5xx, other refusals, timeouts, no answer; not 429) after
    /// which an endpoint's circuit breaker opens: its deliveries stay planned, unattempted,
    /// until one probe attempt at the end of `breaker_open` decides. Zero turns it off.
    pub breaker_failures: u32,
    /// How long a breaker stays open before its first probe; doubled after each failed probe.
    #[serde(with = "humantime_serde")]
    pub breaker_open: Duration,
    /// The longest a breaker stays open between probes.
    #[serde(with = "humantime_serde")]
    pub breaker_open_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            concurrency: PerKind {
                email: 8.0,
                webhook: 64.0,
                teams: 16.0,
                slack: 16.0,
                sms: 4.0,
                pagerduty: 8.0,
            },
            // Published limits: Slack about 1 message/s per incoming webhook, Teams Workflows
            // a few per second, PagerDuty 120 events/min per integration key.
            rate_per_endpoint: PerKind {
                email: 10.0,
                webhook: 100.0,
                teams: 4.0,
                slack: 1.0,
                sms: 1.0,
                pagerduty: 2.0,
            },
            concurrency_per_endpoint: 4,
            // Svix's first retry is 5 s later; its schedule reaches minutes soon after.
            breaker_failures: 5,
            breaker_open: Duration::from_secs(5),
            breaker_open_max: Duration::from_secs(300),
        }
    }
}

/// How often the dispatcher looks again while what is due waits for busy endpoints.
const BUSY_POLL: Duration = Duration::from_millis(20);

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One endpoint's circuit breaker, in this replica's memory only: the rows it holds back
/// stay in the store, so a restart or another replica merely probes sooner.
#[derive(Debug, Default)]
struct Breaker {
    /// Consecutive failures while closed.
    failures: u32,
    /// While set the breaker is open: nothing but a probe is attempted, and not before this
    /// time (milliseconds, the notifier's clock).
    open_until: Option<i64>,
    /// The current open period, doubled by each failed probe.
    open_ms: i64,
}

/// What the breaker lets a delivery do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Send,
    /// The one attempt that decides whether an open breaker closes.
    Probe,
    /// Not attempted: back in the store, due, and left out of claims while the breaker is
    /// open (or its probe in flight), so a successful probe lets it go at once.
    Hold,
}

/// What an attempt says about the endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    Up,
    Down,
    /// Says nothing either way (a 429 is the endpoint alive and pacing us).
    Unknown,
}

pub struct Limiter {
    limits: Limits,
    semaphores: HashMap<i32, Arc<Semaphore>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    endpoints: Mutex<HashMap<String, Arc<Semaphore>>>,
    breakers: Mutex<HashMap<String, Breaker>>,
}

impl Limiter {
    pub fn new(limits: &Limits) -> Self {
        let kinds = [
            ChannelKind::Email,
            ChannelKind::Webhook,
            ChannelKind::Teams,
            ChannelKind::Slack,
            ChannelKind::Sms,
            ChannelKind::Pagerduty,
        ];
        let semaphores = kinds
            .iter()
            .map(|k| {
                (
                    *k as i32,
                    Arc::new(Semaphore::new(limits.concurrency.get(*k).max(1.0) as usize)),
                )
            })
            .collect();
        Self {
            limits: limits.clone(),
            semaphores,
            buckets: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(HashMap::new()),
            breakers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a delivery to `endpoint` may be attempted at `now`. When an open breaker's
    /// time is up, the first caller gets the probe and the breaker stays open for another
    /// period meanwhile, so a probe that never reports (a crash, a deleted channel) is
    /// followed by another, not by the whole backlog.
    pub(crate) fn admit(&self, endpoint: &str, now: i64) -> Admission {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(b) = breakers.get_mut(endpoint) else {
            return Admission::Send;
        };
        match b.open_until {
            None => Admission::Send,
            Some(until) if now < until => Admission::Hold,
            Some(_) => {
                b.open_until = Some(now + b.open_ms);
                Admission::Probe
            }
        }
    }

    /// Whether an open breaker holds `endpoint`'s deliveries at `now` (before its probe is
    /// due, or while the probe is in flight), without taking the probe.
    fn holds(&self, endpoint: &str, now: i64) -> bool {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        breakers
            .get(endpoint)
            .and_then(|b| b.open_until)
            .is_some_and(|until| now < until)
    }

    /// Counts an attempt's outcome. Returns the time the breaker opened until when this
    /// outcome opened it (or kept it open after a failed probe).
    pub(crate) fn report(
        &self,
        endpoint: &str,
        health: Health,
        probe: bool,
        now: i64,
    ) -> Option<i64> {
        let threshold = self.limits.breaker_failures;
        if threshold == 0 {
            return None;
        }
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        match health {
            Health::Unknown => None,
            Health::Up => {
                // Closed again: the held backlog is claimed as usual.
                breakers.remove(endpoint);
                None
            }
            Health::Down => {
                if breakers.len() > 50_000 {
                    breakers.retain(|_, b| b.open_until.is_some());
                }
                let b = breakers.entry(endpoint.to_owned()).or_default();
                let first = self.limits.breaker_open.as_millis() as i64;
                let max = (self.limits.breaker_open_max.as_millis() as i64).max(first);
                if b.open_until.is_some() {
                    // Attempts already in flight when it opened say nothing new; only the
                    // probe's failure lengthens the wait.
                    if !probe {
                        return None;
                    }
                    b.open_ms = (b.open_ms * 2).clamp(first, max);
                } else {
                    b.failures += 1;
                    if b.failures < threshold {
                        return None;
                    }
                    b.open_ms = first;
                }
                let until = now + b.open_ms;
                b.open_until = Some(until);
                Some(until)
            }
        }
    }

    /// Forgets an endpoint's breaker (its channel was disabled: what it holds is suppressed).
    pub(crate) fn close_breaker(&self, endpoint: &str) {
        self.breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(endpoint);
    }

    /// Endpoints whose breaker is open (held, or waiting for its probe's answer).
    pub(crate) fn open_breakers(&self) -> i64 {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        breakers.values().filter(|b| b.open_until.is_some()).count() as i64
    }

    /// Endpoints whose breaker holds their deliveries at `now`: left out of claims.
    fn open_endpoints(&self, now: i64, at_most: usize) -> Vec<String> {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        breakers
            .iter()
            .filter(|(_, b)| b.open_until.is_some_and(|until| now < until))
            .map(|(endpoint, _)| endpoint.clone())
            .take(at_most)
            .collect()
    }

    fn semaphore(&self, kind: ChannelKind) -> Arc<Semaphore> {
        self.semaphores
            .get(&(kind as i32))
            .or_else(|| self.semaphores.get(&(ChannelKind::Email as i32)))
            .cloned()
            .expect("email semaphore exists")
    }

    /// A slot for one request to `endpoint`, or `None` when it already has its share in
    /// flight.
    fn endpoint_slot(&self, endpoint: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let semaphore = {
            let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            // Idle entries (all permits free) are dropped now and then to bound the map.
            if map.len() > 50_000 {
                let cap = self.limits.concurrency_per_endpoint.max(1);
                map.retain(|_, s| s.available_permits() < cap);
            }
            Arc::clone(map.entry(endpoint.to_owned()).or_insert_with(|| {
                Arc::new(Semaphore::new(self.limits.concurrency_per_endpoint.max(1)))
            }))
        };
        semaphore.try_acquire_owned().ok()
    }

    /// What the next claim may take per endpoint: for one with sends in flight, the slots
    /// it has left (none for a slow one with all its slots taken), so its backlog waits in
    /// the store instead of being claimed and put back; none for an open breaker's. With
    /// `all`, every other endpoint may take its full share; otherwise they are unlimited.
    fn room(&self, now: i64, all: bool) -> EndpointRoom {
        // Enough for every busy endpoint in practice; an endpoint left out may be claimed
        // for beyond its room, and that excess is put back.
        const LISTED: usize = 256;
        let cap = self.limits.concurrency_per_endpoint.max(1);
        let mut listed: Vec<(String, u32)> = self
            .open_endpoints(now, LISTED)
            .into_iter()
            .map(|e| (e, 0))
            .collect();
        if all {
            let map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            let mut in_flight: Vec<(String, u32)> = map
                .iter()
                .filter(|(e, s)| {
                    s.available_permits() < cap && !listed.iter().any(|(l, _)| l == *e)
                })
                .map(|(e, s)| (e.clone(), s.available_permits() as u32))
                .collect();
            // The busiest first, should there be more than fit.
            in_flight.sort_by_key(|(_, free)| *free);
            listed.extend(
                in_flight
                    .into_iter()
                    .take(LISTED.saturating_sub(listed.len())),
            );
        }
        EndpointRoom {
            each: all.then_some(cap as u32),
            listed,
        }
    }

    /// Takes a token for the endpoint, or says how long until one is free. The burst is one
    /// second's worth of tokens.
    fn take(&self, kind: ChannelKind, endpoint: &str) -> Option<Duration> {
        let rate = self.limits.rate_per_endpoint.get(kind);
        if rate <= 0.0 {
            return None;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let key = format!("{}|{endpoint}", kind as i32);
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: rate.max(1.0),
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(rate.max(1.0));
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

impl Notifier {
    /// Leases and sends one batch of due deliveries concurrently; returns how many were
    /// attempted.
    pub async fn dispatch_once(self: &Arc<Self>) -> Result<usize> {
        let now = self.now();
        let lease_until = now + self.settings.lease.as_millis() as i64;
        let room = self.limits.room(now, false);
        let batch = self
            .store
            .claim_due(now, lease_until, self.settings.batch_size, &room)
            .await?;
        let n = batch.len();
        let mut tasks = tokio::task::JoinSet::new();
        for delivery in batch {
            let this = Arc::clone(self);
            tasks.spawn(async move {
                let id = delivery.delivery.delivery_id.clone();
                if let Err(e) = this.deliver(delivery, None).await {
                    // The lease runs out and another pass takes the delivery over.
                    tracing::error!(delivery_id = %id, error = %e, "delivery failed internally");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(n)
    }

    /// Sends one delivery; `slot` is its endpoint's, when the caller took it already.
    async fn deliver(
        &self,
        d: DeliveryRow,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<()> {
        let kind = crate::channels::kind_of(d.delivery.channel_kind);
        let endpoint = endpoint_of(&d).to_owned();
        if let Some(wait) = self.limits.take(kind, &endpoint) {
            // Over the endpoint's rate: back in line, no attempt spent.
            let now = self.now();
            self.store
                .release(
                    &[(&d.delivery.delivery_id, now + wait.as_millis() as i64 + 1)],
                    now,
                )
                .await?;
            return Ok(());
        }
        let channel = if d.delivery.channel_id.is_empty() {
            None
        } else {
            match self
                .live_channel(&d.delivery.partner_tenant_id, &d.delivery.channel_id)
                .await?
            {
                Some(c) if c.record.enabled => Some(c),
                // Deleted or disabled since planning: nobody wants these bytes any more.
                _ => {
                    let attempt = self.attempt_record(&d, 0, "channel deleted or disabled", 0);
                    self.store
                        .record_attempt(&attempt, AttemptResult::Suppressed, self.now())
                        .await?;
                    self.metrics
                        .attempt(d.delivery.channel_kind, Outcome::Suppressed);
                    return Ok(());
                }
            }
        };
        let secrets = match &channel {
            Some(c) => c.secrets(self.now()),
            None => ChannelSecrets(Vec::new()),
        };
        let Some(endpoint_slot) = slot.or_else(|| self.limits.endpoint_slot(&endpoint)) else {
            // The endpoint is busy (slow): step aside briefly instead of holding a slot.
            let now = self.now();
            self.store
                .release(&[(&d.delivery.delivery_id, now + 1_000)], now)
                .await?;
            return Ok(());
        };
        let now = self.now();
        let probe = match self.limits.admit(&endpoint, now) {
            Admission::Send => false,
            Admission::Probe => true,
            Admission::Hold => {
                // The breaker is open: planned, not attempted, no attempt spent.
                self.store
                    .release(&[(&d.delivery.delivery_id, now)], now)
                    .await?;
                return Ok(());
            }
        };
        let permit = self
            .limits
            .semaphore(kind)
            .acquire_owned()
            .await
            .map_err(anyhow::Error::from)?;
        let started = Instant::now();
        let outcome = self.senders.send(&d, &secrets).await;
        drop(permit);
        drop(endpoint_slot);
        drop(secrets);
        let elapsed = started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
        self.judge_endpoint(&d, &endpoint, &outcome, probe);
        self.settle(&d, channel.as_deref(), &outcome, elapsed).await
    }

    /// Feeds an attempt's outcome to the endpoint's circuit breaker. The log lines name the
    /// endpoint by partner, kind and channel id, never by its address: a channel-less
    /// delivery's endpoint is a person's email address or phone number, and the delivery id
    /// finds it for whoever may see it.
    fn judge_endpoint(&self, d: &DeliveryRow, endpoint: &str, outcome: &SendOutcome, probe: bool) {
        let health = if outcome.success {
            Health::Up
        } else if outcome.throttled() {
            Health::Unknown
        } else {
            Health::Down
        };
        let kind = crate::metrics::kind_label(d.delivery.channel_kind);
        match self.limits.report(endpoint, health, probe, self.now()) {
            Some(until) => {
                self.metrics
                    .breaker_opened(&kind, self.limits.open_breakers());
                tracing::warn!(
                    partner_tenant_id = %d.delivery.partner_tenant_id,
                    channel_kind = %kind,
                    channel_id = %d.delivery.channel_id,
                    delivery_id = %d.delivery.delivery_id,
                    retry_in_ms = until - self.now(),
                    "endpoint failing: circuit breaker open, its deliveries wait for a probe"
                );
            }
            None if probe && health == Health::Up => {
                self.metrics.breaker_closed(self.limits.open_breakers());
                tracing::info!(
                    partner_tenant_id = %d.delivery.partner_tenant_id,
                    channel_kind = %kind,
                    channel_id = %d.delivery.channel_id,
                    delivery_id = %d.delivery.delivery_id,
                    "endpoint answering again: circuit breaker closed"
                );
                // What the breaker held is due now.
                self.wake_dispatch.notify_one();
            }
            None => {}
        }
    }

    fn attempt_record(
        &self,
        d: &DeliveryRow,
        status: u32,
        error: &str,
        duration_ms: u32,
    ) -> AttemptRecord {
        AttemptRecord {
            delivery_id: d.delivery.delivery_id.clone(),
            attempt: d.attempts + 1,
            at: self.now(),
            http_status: status,
            error: error.to_owned(),
            duration_ms,
        }
    }

    /// Decides what an outcome means for the delivery and the channel.
    async fn settle(
        &self,
        d: &DeliveryRow,
        channel: Option<&LiveChannel>,
        outcome: &SendOutcome,
        duration_ms: u32,
    ) -> Result<()> {
        let now = self.now();
        let attempt = self.attempt_record(d, outcome.status, &outcome.detail, duration_ms);
        let channel_kind = d.delivery.channel_kind;
        if outcome.success {
            self.metrics.attempt(channel_kind, Outcome::Delivered);
            self.metrics
                .delivered_after(channel_kind, (now - d.delivery.created_at) as f64 / 1000.0);
            if let Some(c) = channel {
                let was_failing = c
                    .failing_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .is_some();
                if was_failing {
                    self.store
                        .record_channel_success(&c.record.channel_id)
                        .await?;
                }
            }
            // Batched with other outcomes; if the process dies first, the lease runs out and
            // the delivery is sent again with the same id (at least once).
            let Some(attempt) = self.write_batched(attempt, None).await else {
                return Ok(());
            };
            self.store
                .record_attempt(&attempt, AttemptResult::Delivered, now)
                .await?;
            return Ok(());
        }
        tracing::warn!(
            delivery_id = %d.delivery.delivery_id,
            status = outcome.status,
            detail = %outcome.detail,
            "delivery attempt failed"
        );
        let kind = crate::channels::kind_of(d.delivery.channel_kind);
        let http_channel = matches!(
            kind,
            ChannelKind::Webhook | ChannelKind::Teams | ChannelKind::Slack
        );
        if let Some(live) = channel {
            let c = &live.record;
            if outcome.gone() && http_channel {
                self.store
                    .record_attempt(&attempt, AttemptResult::Dead, now)
                    .await?;
                self.metrics.attempt(channel_kind, Outcome::Dead);
                self.disable_and_tell(c, "the endpoint answered 410 Gone")
                    .await?;
                return Ok(());
            }
            let disable_after = self.settings.disable_after.as_millis() as i64;
            let known = *live.failing_since.lock().unwrap_or_else(|e| e.into_inner());
            // A retry far from the disabling threshold (as this replica last saw the
            // endpoint) is bookkept in the background with the others: a failing endpoint
            // then costs the store a share of one batch, not five round trips per attempt,
            // on the path healthy endpoints share. Near it, the store's record decides.
            if !outcome.permanent
                && now - known.unwrap_or(now) < disable_after
                && let Some(delay) = self.retry_delay(d, outcome)
            {
                *live.failing_since.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(known.unwrap_or(now));
                let retry = (now + delay.as_millis() as i64, c.channel_id.clone());
                let Some(attempt) = self.write_batched(attempt, Some(retry)).await else {
                    self.metrics.attempt(channel_kind, Outcome::Failed);
                    return Ok(());
                };
                // No writer (a one-off `dispatch_once`): in the foreground, as below.
                return self.settle_failure(d, Some(live), attempt, outcome).await;
            }
            return self.settle_failure(d, Some(live), attempt, outcome).await;
        }
        self.settle_failure(d, None, attempt, outcome).await
    }

    /// Hands an outcome to the batch writer; gives the attempt back when none runs.
    async fn write_batched(
        &self,
        attempt: AttemptRecord,
        retry: Option<(i64, String)>,
    ) -> Option<AttemptRecord> {
        let writer = self.attempt_writer.lock().ok().and_then(|w| w.clone());
        let Some(writer) = writer else {
            return Some(attempt);
        };
        match writer.send(Settled { attempt, retry }).await {
            Ok(()) => None,
            Err(e) => Some(e.0.attempt),
        }
    }

    /// A failed attempt recorded in the foreground: the channel's failure, then a retry, a
    /// dead letter, or the channel disabled.
    async fn settle_failure(
        &self,
        d: &DeliveryRow,
        channel: Option<&LiveChannel>,
        attempt: AttemptRecord,
        outcome: &SendOutcome,
    ) -> Result<()> {
        let now = self.now();
        let channel_kind = d.delivery.channel_kind;
        if let Some(live) = channel {
            let c = &live.record;
            let since = self
                .store
                .record_channel_failure(&c.channel_id, now)
                .await?;
            *live.failing_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(since);
            if now - since >= self.settings.disable_after.as_millis() as i64 {
                self.store
                    .record_attempt(&attempt, AttemptResult::Dead, now)
                    .await?;
                self.metrics.attempt(channel_kind, Outcome::Dead);
                let days = self.settings.disable_after.as_secs() / 86_400;
                self.disable_and_tell(c, &format!("it failed continuously for {days} days"))
                    .await?;
                return Ok(());
            }
        }
        if outcome.permanent {
            self.store
                .record_attempt(&attempt, AttemptResult::Dead, now)
                .await?;
            self.metrics.attempt(channel_kind, Outcome::Dead);
            self.refresh_gauges().await;
            return Ok(());
        }
        let result = match self.retry_delay(d, outcome) {
            Some(delay) => AttemptResult::RetryAt(now + delay.as_millis() as i64),
            None => AttemptResult::Dead,
        };
        self.store.record_attempt(&attempt, result, now).await?;
        if result == AttemptResult::Dead {
            self.metrics.attempt(channel_kind, Outcome::Dead);
            self.refresh_gauges().await;
        } else {
            self.metrics.attempt(channel_kind, Outcome::Failed);
        }
        Ok(())
    }

    /// The wait before the next attempt, or `None` when the schedule is exhausted.
    pub(crate) fn retry_delay(&self, d: &DeliveryRow, outcome: &SendOutcome) -> Option<Duration> {
        let made = (d.attempts + 1).saturating_sub(d.retry_base) as usize;
        let base = *self.settings.retry_schedule.get(made.checked_sub(1)?)?;
        let jitter = self.settings.retry_jitter;
        let factor = if jitter > 0.0 {
            rand::thread_rng().gen_range(1.0 - jitter..=1.0 + jitter)
        } else {
            1.0
        };
        let mut delay = base.mul_f64(factor);
        // Throttled or timed out: the receiver is overloaded, so give it at least a minute,
        // longer if it asked, but never so long that an alert goes stale.
        let timed_out = outcome.status == 0 && outcome.detail.contains("timed out");
        if outcome.throttled() || outcome.status == 503 || timed_out {
            let asked = outcome
                .retry_after
                .map(Duration::from_secs)
                .unwrap_or_default();
            delay = delay
                .max(self.settings.throttle_min_delay)
                .max(asked.min(self.settings.retry_after_max));
        }
        Some(delay)
    }

    /// Disables a failing endpoint and tells the partner's owners (security contact and
    /// admin agents) by email, which does not depend on the endpoint that broke.
    async fn disable_and_tell(&self, channel: &ChannelRecord, reason: &str) -> Result<()> {
        self.store
            .disable_channel(&channel.channel_id, reason)
            .await?;
        self.invalidate_channel(&channel.partner_tenant_id, &channel.channel_id);
        // What its breaker held is suppressed now rather than held for a probe.
        self.limits.close_breaker(&channel.channel_id);
        self.metrics.breaker_closed(self.limits.open_breakers());
        tracing::warn!(channel_id = %channel.channel_id, reason, "channel disabled");
        self.refresh_gauges().await;
        let partner = &channel.partner_tenant_id;
        let settings = self.effective_settings(partner).await?;
        let destinations = self
            .destinations(
                partner,
                &[Recipient::SecurityContact, Recipient::AdminAgents],
                &[],
                &settings.default_language,
            )
            .await?;
        let ctx = serde_json::json!({"channel_name": channel.display_name, "reason": reason});
        let event_id = stable_id("disabled", &[&channel.channel_id]);
        let deliveries = self.plan_for(
            partner,
            &destinations,
            &event_id,
            "notification.channel_disabled",
            "",
            "endpoint_disabled",
            &ctx,
            &[],
            None,
            self.now(),
        )?;
        self.store.insert_deliveries(&deliveries).await?;
        self.wake_dispatch.notify_one();
        Ok(())
    }
}

/// What the per-endpoint limits and breaker key on: the channel, or the target of a
/// channel-less delivery (the same key `claim_due`'s skip list uses).
fn endpoint_of(d: &DeliveryRow) -> &str {
    if d.delivery.channel_id.is_empty() {
        &d.delivery.target
    } else {
        &d.delivery.channel_id
    }
}

/// An attempt's outcome for the batch writer.
pub(crate) struct Settled {
    attempt: AttemptRecord,
    /// `None`: delivered. Otherwise it failed: when to retry, and the channel now failing.
    retry: Option<(i64, String)>,
}

impl Notifier {
    /// Records a batch of outcomes: the successes, then the retries with their channels'
    /// failures. If it fails the leases run out and the deliveries are sent again with the
    /// same ids (at least once).
    async fn write_settled(&self, batch: &[Settled]) {
        let now = self.now();
        let delivered: Vec<AttemptRecord> = batch
            .iter()
            .filter(|s| s.retry.is_none())
            .map(|s| s.attempt.clone())
            .collect();
        if !delivered.is_empty()
            && let Err(e) = self.store.record_delivered(&delivered, now).await
        {
            tracing::error!(error = %e, count = delivered.len(), "recording deliveries failed; they will be re-sent");
        }
        let mut failing: Vec<String> = Vec::new();
        let retrying: Vec<(AttemptRecord, i64)> = batch
            .iter()
            .filter_map(|s| {
                let (at, channel_id) = s.retry.as_ref()?;
                if !failing.contains(channel_id) {
                    failing.push(channel_id.clone());
                }
                Some((s.attempt.clone(), *at))
            })
            .collect();
        // One order for every writer's row locks.
        failing.sort();
        if !retrying.is_empty()
            && let Err(e) = self.store.record_retrying(&retrying, &failing, now).await
        {
            tracing::error!(error = %e, count = retrying.len(), "recording failed attempts failed; they will be re-sent");
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Notifier {
    /// The long-running sender: keeps up to `max_in_flight` deliveries in flight, claiming
    /// more as slots free up, so one slow endpoint never holds back the others.
    pub async fn dispatch_loop(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let max_in_flight = self.settings.max_in_flight.max(1);
        let slots = Arc::new(Semaphore::new(max_in_flight));
        let mut tasks = tokio::task::JoinSet::new();
        // Successes and retries are the hot path: one transaction for many of them.
        let (writer, mut settled) = tokio::sync::mpsc::channel(1024);
        if let Ok(mut w) = self.attempt_writer.lock() {
            *w = Some(writer);
        }
        let writer_core = Arc::clone(&self);
        let writer_task = tokio::spawn(async move {
            let mut batch: Vec<Settled> = Vec::with_capacity(256);
            while settled.recv_many(&mut batch, 256).await > 0 {
                writer_core.write_settled(&batch).await;
                batch.clear();
            }
        });
        // Aborting this loop (a crash, in tests) must take the writer with it.
        let abort_writer = AbortOnDrop(writer_task.abort_handle());
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let free = slots
                .available_permits()
                .min(self.settings.batch_size as usize);
            if free == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tasks.join_next() => {}
                }
                continue;
            }
            let now = self.now();
            let lease_until = now + self.settings.lease.as_millis() as i64;
            let room = self.limits.room(now, true);
            let claimed = match self
                .store
                .claim_due(now, lease_until, free as u32, &room)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "claiming deliveries failed");
                    tokio::time::sleep(self.settings.poll_interval).await;
                    continue;
                }
            };
            let n = claimed.len();
            // The endpoint's slot is taken here, before the next claim counts what is free.
            // What cannot go now (its breaker opened since, or a slot was not free after
            // all) goes back in one statement, not a task and a round trip each.
            let now = self.now();
            let mut back: Vec<(String, i64)> = Vec::new();
            for delivery in claimed {
                let endpoint = endpoint_of(&delivery);
                if self.limits.holds(endpoint, now) {
                    back.push((delivery.delivery.delivery_id, now));
                    continue;
                }
                let Some(slot) = self.limits.endpoint_slot(endpoint) else {
                    back.push((delivery.delivery.delivery_id, now + 1_000));
                    continue;
                };
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                    break;
                };
                let this = Arc::clone(&self);
                tasks.spawn(async move {
                    let id = delivery.delivery.delivery_id.clone();
                    if let Err(e) = this.deliver(delivery, Some(slot)).await {
                        tracing::error!(delivery_id = %id, error = %e, "delivery failed internally");
                    }
                    drop(permit);
                });
            }
            if !back.is_empty() {
                let rows: Vec<(&str, i64)> =
                    back.iter().map(|(id, at)| (id.as_str(), *at)).collect();
                if let Err(e) = self.store.release(&rows, now).await {
                    // Their leases run out and a later claim takes them again.
                    tracing::error!(error = %e, "putting deliveries back failed");
                }
            }
            if n == free {
                continue;
            }
            // New work was signalled meanwhile (a commit that planned deliveries, a breaker
            // closing): claim again now, without first asking the store when work is due.
            if futures::FutureExt::now_or_never(self.wake_dispatch.notified()).is_some() {
                continue;
            }
            let mut wait = match self.store.next_delivery_due().await {
                Ok(Some(at)) => Duration::from_millis((at - self.now()).clamp(0, i64::MAX) as u64),
                _ => self.settings.poll_interval,
            }
            .min(self.settings.poll_interval);
            // Everything claimable was claimed, so work due now belongs to busy endpoints:
            // look again shortly (or on new work), not in a tight loop of empty claims for as
            // long as a slow endpoint takes to answer.
            if wait.is_zero() && !room.listed.is_empty() {
                wait = BUSY_POLL.min(self.settings.poll_interval);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake_dispatch.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Let sends in progress finish briefly; whatever is cut off is leased again later.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if let Ok(mut w) = self.attempt_writer.lock() {
            *w = None;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
        drop(abort_writer);
    }

    /// The long-running timer task: one poller over the due-time indexes.
    pub async fn timer_loop(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut gauges_read = Instant::now();
        while !shutdown.is_cancelled() {
            // Other replicas disable channels and dead-letter deliveries too.
            if gauges_read.elapsed() >= crate::metrics::GAUGE_REFRESH {
                self.refresh_gauges().await;
                gauges_read = Instant::now();
            }
            if let Err(e) = self.run_timers().await {
                tracing::error!(error = %e, "timers failed");
            }
            let wait = match self.store.next_group_due().await {
                Ok(Some(at)) => Duration::from_millis((at - self.now()).clamp(0, i64::MAX) as u64),
                _ => self.settings.poll_interval,
            }
            .min(self.settings.poll_interval);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake_scheduler.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_are_per_endpoint_and_refill() {
        let limits = Limits {
            rate_per_endpoint: PerKind {
                email: 0.0,
                webhook: 2.0,
                teams: 1.0,
                slack: 1.0,
                sms: 1.0,
                pagerduty: 2.0,
            },
            ..Default::default()
        };
        let limiter = Limiter::new(&limits);
        assert!(limiter.take(ChannelKind::Webhook, "a").is_none());
        assert!(limiter.take(ChannelKind::Webhook, "a").is_none());
        let wait = limiter
            .take(ChannelKind::Webhook, "a")
            .expect("third in the same second waits");
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        assert!(
            limiter.take(ChannelKind::Webhook, "b").is_none(),
            "another endpoint has its own bucket"
        );
        assert!(limiter.take(ChannelKind::Slack, "a").is_none());
        assert!(
            limiter.take(ChannelKind::Slack, "a").is_some(),
            "slack: one a second"
        );
        for _ in 0..100 {
            assert!(
                limiter.take(ChannelKind::Email, "x").is_none(),
                "zero is unlimited"
            );
        }
        std::thread::sleep(Duration::from_millis(600));
        assert!(
            limiter.take(ChannelKind::Webhook, "a").is_none(),
            "refilled"
        );
    }
}
