//! The notifier's end-to-end latency, publication to webhook receipt, at 1,000 events/s:
//! every endpoint healthy, then 30 % of them failing or slow (the healthy ones' latency),
//! against the floor measured in the same run (the same events, published the same way, read
//! by a bare consumer and POSTed to the same receiver). The workload itself is
//! `palisade_notifier::bench`, which the notifier's own `cargo bench` runs too.

use std::time::Duration;

use palisade_notifier::bench::{Outcome, Workload, run_baseline, run_notifier};
use secrecy::SecretString;

use crate::report::Row;

/// The targets: p99 <= 250 ms healthy; with 30 % failing, healthy p99 <= 1.2x that.
const TARGET_P99_MS: f64 = 250.0;
const TARGET_RATIO: f64 = 1.2;

fn queue(redis_url: &str) -> palisade_queue::QueueSettings {
    palisade_queue::QueueSettings {
        backend: palisade_queue::Backend::Redis,
        redis_url: Some(SecretString::from(redis_url.to_owned())),
        key_prefix: format!("bench:{}", uuid::Uuid::new_v4().simple()),
        allow_unsafe_eviction_policy: true,
        ..Default::default()
    }
}

/// The notifier on a database of its own, dropped afterwards.
async fn on_own_database(
    database_url: &str,
    redis_url: &str,
    w: &Workload,
) -> anyhow::Result<Outcome> {
    let scratch = crate::scratch::ScratchDatabase::create(database_url, "notify").await?;
    let url = scratch.url.clone();
    let settings = palisade_storage::DatabaseSettings {
        url: SecretString::from(url),
        ..Default::default()
    };
    let outcome = run_notifier(settings, queue(redis_url), w).await;
    scratch.drop().await?;
    outcome
}

fn histogram(o: &Outcome) -> Vec<(f64, u64)> {
    let Ok(mut h) = hdrhistogram::Histogram::<u64>::new(3) else {
        return Vec::new();
    };
    for ms in &o.latencies_ms {
        let _ = h.record((ms * 1000.0).max(1.0) as u64);
    }
    crate::report::quantiles(&h)
}

fn note(o: &Outcome, w: &Workload) -> String {
    format!(
        "{} events at {:.0}/s offered over {:.0} s to {} partners ({} unhealthy); {} of {} healthy-endpoint events arrived; max {:.0} ms",
        o.events,
        o.achieved_publish_rate,
        w.duration.as_secs_f64(),
        w.partners,
        o.unhealthy_partners,
        o.delivered(),
        o.healthy_events,
        o.latencies_ms.last().copied().unwrap_or(f64::NAN),
    ) + &o
        .planned_to_sent_ms
        .map(|(p50, p99)| {
            format!(
                "; dispatch stage alone (planned row to answer) p50 {p50:.0} ms, p99 {p99:.0} ms"
            )
        })
        .unwrap_or_default()
}

/// The three rows: the floor, healthy, and 30 % failing or slow. A smoke run offers 200/s
/// for a second to 10 partners: it proves the path, its numbers mean nothing.
pub async fn rows(database_url: &str, redis_url: &str, smoke: bool) -> anyhow::Result<Vec<Row>> {
    let workload = |unhealthy_share| Workload {
        rate: if smoke { 200 } else { 1000 },
        duration: Duration::from_secs(if smoke { 1 } else { 10 }),
        partners: if smoke { 10 } else { 50 },
        unhealthy_share,
        drain: Duration::from_secs(if smoke { 15 } else { 60 }),
    };
    let w = workload(0.0);
    let floor = run_baseline(queue(redis_url), &w).await?;
    let healthy = on_own_database(database_url, redis_url, &w).await?;
    let wf = workload(0.3);
    let failing = on_own_database(database_url, redis_url, &wf).await?;

    let floor_p99 = floor.quantile_ms(0.99);
    let healthy_p99 = healthy.quantile_ms(0.99);
    let failing_p99 = failing.quantile_ms(0.99);
    let ratio = failing_p99 / healthy_p99;
    let complete = |o: &Outcome| o.delivered() == o.healthy_events;
    let row = |workload: &str, o: &Outcome, w: &Workload| Row {
        workload: workload.into(),
        throughput_per_s: Some(o.achieved_publish_rate),
        p50_ms: Some(o.quantile_ms(0.5)),
        p99_ms: Some(o.quantile_ms(0.99)),
        baseline: "-".into(),
        baseline_value: None,
        ratio: None,
        peak_rss_mib: crate::rss::current_process_peak_mib(),
        target: "-".into(),
        met: None,
        note: note(o, w),
        latency_quantiles_us: histogram(o),
    };
    let mut floor_row = row("baseline: XADD -> XREADGROUP -> POST", &floor, &w);
    floor_row.note = format!(
        "the same events and pacing, one bare consumer POSTing to the same receiver; {}",
        floor_row.note
    );
    floor_row.peak_rss_mib = None;
    let mut healthy_row = row("notifier: event -> webhook, healthy", &healthy, &w);
    healthy_row.baseline = "floor p99 ms".into();
    healthy_row.baseline_value = Some(floor_p99);
    healthy_row.ratio = Some(healthy_p99 / floor_p99);
    healthy_row.target = format!("p99 <= {TARGET_P99_MS:.0} ms");
    healthy_row.met = (!smoke).then_some(complete(&healthy) && healthy_p99 <= TARGET_P99_MS);
    healthy_row.note = format!("ratio = p99 / floor p99; {}", healthy_row.note);
    let mut failing_row = row(
        "notifier: event -> webhook, 30 % failing (healthy endpoints)",
        &failing,
        &wf,
    );
    failing_row.baseline = "healthy p99 ms".into();
    failing_row.baseline_value = Some(healthy_p99);
    failing_row.ratio = Some(ratio);
    failing_row.target = format!("p99 <= {TARGET_RATIO}x healthy p99");
    failing_row.met = (!smoke).then_some(complete(&failing) && ratio <= TARGET_RATIO);
    failing_row.note = format!(
        "ratio = p99 / healthy p99 (same run); half the unhealthy endpoints answer 500, half take 2 s; {}",
        failing_row.note
    );
    Ok(vec![floor_row, healthy_row, failing_row])
}
