//! The notifier's series in the service's `palisade_telemetry::Metrics` registry, served on
//! the admin port's `/metrics`. The names are the metrics contract in `docs/ARCHITECTURE.md`
//! that the dashboard and alert rules in `deploy/` read.
//!
//! Counters and the latency histogram count what this replica did. The two gauges are the
//! store's truth (disabled channels, dead letters), read again after every change this
//! replica makes and every `GAUGE_REFRESH`, so every replica reports the same numbers.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

/// How often the gauges are read from the store when nothing changed them here.
pub const GAUGE_REFRESH: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub channel_kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub channel_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DisabledLabels {
    pub partner_tenant_id: String,
    pub channel_kind: String,
}

/// What happened to one delivery attempt, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver accepted it.
    Delivered,
    /// It failed and another attempt is scheduled.
    Failed,
    /// It failed for good (retries exhausted, permanent error, 410, endpoint disabled).
    Dead,
    /// Not sent: the channel was deleted or disabled after planning.
    Suppressed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Suppressed => "suppressed",
        }
    }
}

/// `webhook`, `email`, …: the label value for a stored channel kind.
pub fn kind_label(kind: i32) -> String {
    crate::channels::kind_of(kind)
        .as_str_name()
        .trim_start_matches("CHANNEL_KIND_")
        .to_lowercase()
}

#[derive(Debug)]
pub struct NotifyMetrics {
    deliveries: Family<OutcomeLabels, Counter>,
    delivery_seconds: Family<KindLabel, Histogram, fn() -> Histogram>,
    channels_disabled: Family<DisabledLabels, Gauge>,
    dead_letters: Gauge<i64, std::sync::atomic::AtomicI64>,
    breaker_opens: Family<KindLabel, Counter>,
    breakers_open: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Every disabled-channel series ever set, so one that empties reads 0 instead of
    /// keeping its last value.
    disabled_seen: Mutex<HashSet<DisabledLabels>>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
    ])
}

impl NotifyMetrics {
    /// Registers the notifier's series; without a registry (unit tests, tools) they are kept
    /// but never exported.
    pub fn register(registry: Option<&palisade_telemetry::Metrics>) -> Self {
        let m = Self {
            deliveries: Family::default(),
            delivery_seconds: Family::new_with_constructor(latency_histogram),
            channels_disabled: Family::default(),
            dead_letters: Gauge::default(),
            breaker_opens: Family::default(),
            breakers_open: Gauge::default(),
            disabled_seen: Mutex::new(HashSet::new()),
        };
        if let Some(r) = registry {
            r.register(
                "notify_deliveries",
                "Delivery attempts by channel kind and outcome (delivered, failed, dead, suppressed)",
                m.deliveries.clone(),
            );
            r.register(
                "notify_delivery_seconds",
                "Seconds from a delivery being planned to its receiver accepting it",
                m.delivery_seconds.clone(),
            );
            r.register(
                "notify_channels_disabled",
                "Channels disabled after a 410 or continuous failures, by partner and kind",
                m.channels_disabled.clone(),
            );
            r.register(
                "notify_dead_letters",
                "Deliveries dead-lettered and not redriven",
                m.dead_letters.clone(),
            );
            r.register(
                "notify_breaker_opens",
                "Endpoint circuit breakers opened, or kept open by a failed probe, by channel kind",
                m.breaker_opens.clone(),
            );
            r.register(
                "notify_breakers_open",
                "Endpoints whose circuit breaker is open in this replica (their deliveries wait)",
                m.breakers_open.clone(),
            );
        }
        m
    }

    pub fn attempt(&self, channel_kind: i32, outcome: Outcome) {
        self.deliveries
            .get_or_create(&OutcomeLabels {
                channel_kind: kind_label(channel_kind),
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
    }

    pub fn delivered_after(&self, channel_kind: i32, seconds: f64) {
        self.delivery_seconds
            .get_or_create(&KindLabel {
                channel_kind: kind_label(channel_kind),
            })
            .observe(seconds.max(0.0));
    }

    /// A breaker opened (or stayed open after a failed probe); `open` is how many are now.
    pub fn breaker_opened(&self, channel_kind: &str, open: i64) {
        self.breaker_opens
            .get_or_create(&KindLabel {
                channel_kind: channel_kind.to_owned(),
            })
            .inc();
        self.breakers_open.set(open);
    }

    pub fn breaker_closed(&self, open: i64) {
        self.breakers_open.set(open);
    }

    /// Sets the gauges from the store's counts.
    pub fn set_gauges(&self, disabled: &[(String, i32, i64)], dead_letters: i64) {
        self.dead_letters.set(dead_letters);
        let mut seen = self.disabled_seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut now = HashSet::new();
        for (partner, kind, n) in disabled {
            let labels = DisabledLabels {
                partner_tenant_id: partner.clone(),
                channel_kind: kind_label(*kind),
            };
            self.channels_disabled.get_or_create(&labels).set(*n);
            now.insert(labels);
        }
        for gone in seen.difference(&now) {
            self.channels_disabled.get_or_create(gone).set(0);
        }
        seen.extend(now);
    }
}
