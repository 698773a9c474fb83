//! `make bench`: every Palisade workload against a baseline measured in the same run, printed
//! as one table and written as JSON and a PNG chart under `bench-results/`.
//!
//! `--smoke` runs each workload for a moment, to prove the harness works (CI runs that);
//! the numbers of a smoke run mean nothing.

#![forbid(unsafe_code)]

mod alerts;
mod baselines;
mod compliance;
mod loadgen;
mod notifier;
mod platform;
mod processes;
mod refresh_race;
mod report;
mod rss;
mod scratch;
mod tokens;

mod echo {
    tonic::include_proto!("palisade.bench.v1");
}

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use report::Row;

#[derive(Debug, Parser)]
#[command(name = "palisade-bench")]
struct Args {
    /// One short iteration of everything: proves the harness, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Seconds each measured phase runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of the gRPC workloads, each with its own echo baseline right before it; the
    /// table shows the medians (the machine is shared, so one round can be unlucky).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Only workloads whose name contains this.
    #[arg(long)]
    only: Option<String>,
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    #[arg(
        long,
        env = "PALISADE_TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    #[arg(
        long,
        env = "PALISADE_TEST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
}

impl Args {
    fn wants(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| name.contains(o))
    }

    fn phase(&self) -> Duration {
        if self.smoke {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(self.seconds)
        }
    }
}

/// The middle value (the mean of the two middle ones); 0 for none.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One gRPC workload over the rounds: max throughput, and p50/p99 at half of it, per round.
#[derive(Default)]
struct Rounds {
    max: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    errors: u64,
    /// The latency distribution of the round with the median p99, for the chart.
    halves: Vec<hdrhistogram::Histogram<u64>>,
}

impl Rounds {
    fn push(&mut self, (max, half): (loadgen::Sample, loadgen::Sample)) {
        self.max.push(max.throughput());
        self.p50.push(half.quantile_ms(0.5));
        self.p99.push(half.quantile_ms(0.99));
        self.errors += max.errors + half.errors;
        self.halves.push(half.histogram);
    }

    fn max(&self) -> f64 {
        median(&self.max)
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        workload: &str,
        baseline: &str,
        baseline_value: Option<f64>,
        ratio: Option<f64>,
        target: &str,
        met: Option<bool>,
        note: String,
    ) -> Row {
        let p99 = median(&self.p99);
        let chart = self
            .p99
            .iter()
            .zip(&self.halves)
            .min_by(|a, b| (a.0 - p99).abs().total_cmp(&(b.0 - p99).abs()))
            .map(|(_, h)| report::quantiles(h))
            .unwrap_or_default();
        Row {
            workload: workload.into(),
            throughput_per_s: Some(self.max()),
            p50_ms: Some(median(&self.p50)),
            p99_ms: Some(p99),
            baseline: baseline.into(),
            baseline_value,
            ratio,
            peak_rss_mib: rss::current_process_peak_mib(),
            target: target.into(),
            met,
            note: format!(
                "median of {} rounds; latency at half of each round's maximum; {note}; {} errors",
                self.max.len(),
                self.errors
            ),
            latency_quantiles_us: chart,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows: Vec<Row> = Vec::new();

    // The services' own subscriber and settings (JSON logs at info, no OTLP), written to a
    // sink: every RPC pays for its telemetry as it does in production.
    let _telemetry = palisade_telemetry::init_with_writer(
        "bench",
        &palisade_telemetry::TelemetrySettings::default(),
        std::io::sink,
    )?;

    let mut raw_streams = None;
    let grpc = args.wants("grpc");
    let tokens_wanted = grpc || args.wants("tokens");
    if grpc || tokens_wanted {
        // Rounds: an echo baseline, then each workload right after it, with the same load
        // generator; every ratio compares a workload with the echo of its own round, and the
        // table shows medians over the rounds.
        let rounds = if args.smoke { 1 } else { args.rounds.max(1) };
        let tokens = match tokens_wanted {
            true => Some(tokens::cached_get_access_token().await?),
            false => None,
        };
        let (mut echo, mut sized, mut whoami, mut cached) = (
            Rounds::default(),
            Rounds::default(),
            Rounds::default(),
            Rounds::default(),
        );
        let (mut whoami_ratio, mut cached_ratio, mut sized_ratio) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
            let e = baselines::grpc_echo(args.phase(), 0).await?;
            let echo_max = e.0.throughput();
            Rounds::push(&mut echo, e);
            if grpc {
                let w = platform::authenticated_unary(&args.database_url, args.phase()).await?;
                whoami_ratio.push(w.0.throughput() / echo_max);
                Rounds::push(&mut whoami, w);
            }
            if let Some(t) = &tokens {
                let s = baselines::grpc_echo(args.phase(), t.token_len).await?;
                let sized_max = s.0.throughput();
                Rounds::push(&mut sized, s);
                let c = t.measure(args.phase()).await;
                cached_ratio.push(c.0.throughput() / echo_max);
                sized_ratio.push(c.0.throughput() / sized_max);
                Rounds::push(&mut cached, c);
            }
        }
        let echo_median = echo.max();
        rows.push(echo.row(
            "baseline: tonic unary echo",
            "-",
            None,
            None,
            "-",
            None,
            "64-byte request and reply".into(),
        ));
        if let Some(t) = tokens {
            rows.push(sized.row(
                "baseline: tonic unary echo, token-sized reply",
                "echo",
                Some(echo_median),
                Some(median(&sized.max) / echo_median),
                "-",
                None,
                format!(
                    "the same echo answering with {} bytes, the size of the access token",
                    t.token_len
                ),
            ));
            // The verdict comes from a paired run: the echo and the cached call alternate in
            // short slices (closed loop at 64, then open loop at half of the broker's paired
            // maximum), so a busy moment of the shared machine lands on both. The rounds above
            // stay in the note for comparison.
            let (slice, slices) = match args.smoke {
                true => (Duration::from_millis(200), 1),
                false => (Duration::from_secs(1), 10),
            };
            let echo_op = baselines::echo_op(0).await?;
            let throughput = loadgen::paired(
                slices,
                || loadgen::closed_loop(64, slice, echo_op.clone()),
                || loadgen::closed_loop(64, slice, t.op()),
            )
            .await;
            let half_rate = (throughput.b.throughput() / 2.0).max(1.0);
            let (waited_before, started) = (loadgen::run_queue_wait(), std::time::Instant::now());
            let latency = loadgen::paired(
                slices,
                || loadgen::fixed_rate(half_rate, slice, 64, echo_op.clone()),
                || loadgen::fixed_rate(half_rate, slice, 64, t.op()),
            )
            .await;
            // The p99 target is 2 ms; a thread that waits for a CPU for longer than that
            // misses it whatever it serves, so the note says how much the bench waited.
            let waited = match (waited_before, loadgen::run_queue_wait()) {
                (Some(before), Some(after)) => format!(
                    "; meanwhile the bench's threads, summed, waited {:.0} ms per second for a CPU",
                    after.saturating_sub(before).as_secs_f64() * 1000.0
                        / started.elapsed().as_secs_f64()
                ),
                _ => String::new(),
            };
            let ratio = median(&throughput.ratios);
            let p99 = latency.b.quantile_ms(0.99);
            let mut row = cached.row(
                "token-broker: cached GetAccessToken",
                "echo",
                Some(throughput.a.throughput()),
                Some(ratio),
                ">= 0.7x echo, p99 <= 2 ms at half load",
                Some(ratio >= 0.7 && p99 <= 2.0),
                format!(
                    "paired with the echo in {slices} alternating {slice:?} slices: ratio = median of the slice pairs ({}), latency at {half_rate:.0}/s (half the broker's paired maximum), where the echo's own p50/p99 were {:.2}/{:.2} ms{waited}; full server stack + tokens:issue check + cache + usage count; separate rounds gave ratios {} and {:.2}x the token-sized echo",
                    list(&throughput.ratios),
                    latency.a.quantile_ms(0.5),
                    latency.a.quantile_ms(0.99),
                    list(&cached_ratio),
                    median(&sized_ratio)
                ),
            );
            row.throughput_per_s = Some(throughput.b.throughput());
            row.p50_ms = Some(latency.b.quantile_ms(0.5));
            row.p99_ms = Some(p99);
            row.latency_quantiles_us = report::quantiles(&latency.b.histogram);
            rows.push(row);
            t.stop().await;
        }
        if grpc {
            let ratio = median(&whoami_ratio);
            rows.push(whoami.row(
                "platform stack: authenticated unary (WhoAmI)",
                "echo",
                Some(echo_median),
                Some(ratio),
                ">= 0.7x echo",
                Some(ratio >= 0.7),
                format!(
                    "trace+metrics, load shed, concurrency limit, cached credential check; ratio per round {}",
                    list(&whoami_ratio)
                ),
            ));
        }
    }
    if args.wants("raw-insert") {
        let rows_n = if args.smoke { 500 } else { 50_000 };
        let rate = baselines::raw_batched_insert(&args.database_url, rows_n, 500).await?;
        rows.push(Row::info(
            "baseline: raw batched INSERT",
            rate,
            format!("{rows_n} alert-sized rows, 500 per statement"),
        ));
    }
    if args.wants("alerts") {
        // The verdict's baseline is the issue's: "a raw batched INSERT of the same rows into the
        // same Postgres in the same run", i.e. of exactly the rows each path persists per alert
        // (see `baselines::raw_batched_insert_ingest_rows` and docs/ARCHITECTURE.md,
        // Benchmarks). The one-row synthetic INSERT stays in the table for information only.
        let n = if args.smoke { 400 } else { 40_000 };
        let partners = 8;
        let raw = baselines::raw_batched_insert(&args.database_url, n, 500).await?;
        rows.push(Row::info("info only: raw batched INSERT of one synthetic row per alert", raw, format!(
                "{n} rows of 1.5 KB with one index, 500 per statement, one writer; not the verdict's baseline: the path persists three rows per alert (four tables on the webhook path)"
            )));
        for (path, name) in [
            (alerts::Path::Polling, "polling path (Graph pages of 500)"),
            (
                alerts::Path::Webhook,
                "webhook path (inbox + fraudEvents pages of 100)",
            ),
        ] {
            let floor =
                baselines::raw_batched_insert_ingest_rows(&args.database_url, path, n, partners)
                    .await?;
            rows.push(Row::info(format!("baseline: raw batched INSERT of the {name}'s rows"), floor.rate, format!(
                    "alerts/s; the rows the path persists for {n} alerts (alert row with its indexes and raw payload, history entry, outbox event{}), one transaction per page of {}, fastest of: {}",
                    match path {
                        alerts::Path::Polling => "",
                        alerts::Path::Webhook => ", one inbox row per page",
                    },
                    path.page(),
                    floor.describe()
                )));
            let rate =
                alerts::ingest(&args.database_url, &args.redis_url, n, partners, path).await?;
            let ratio = rate / floor.rate;
            rows.push(Row {
                workload: format!("alert-ingest: {name}"),
                throughput_per_s: Some(rate),
                p50_ms: None,
                p99_ms: None,
                baseline: "raw batched INSERT of the same rows".into(),
                baseline_value: Some(floor.rate),
                ratio: Some(ratio),
                peak_rss_mib: rss::current_process_peak_mib(),
                target: ">= 5000/s and >= 0.5x raw insert of the same rows".into(),
                met: Some(rate >= 5000.0 && ratio >= 0.5),
                note: format!(
                    "{n} alerts from {partners} partners at once: normalised, row + history + outbox per page, published to Redis by the relay; {:.2}x the one-row synthetic INSERT (info only)",
                    rate / raw
                ),
                latency_quantiles_us: Vec::new(),
            });
        }
    }
    if args.wants("streams") {
        let n = if args.smoke { 1_000 } else { 100_000 };
        let (produce, consume) = baselines::raw_streams(&args.redis_url, n).await?;
        raw_streams = Some((produce, consume));
        rows.push(Row {
            workload: "baseline: raw XADD / XREADGROUP+XACK".into(),
            throughput_per_s: Some(produce),
            p50_ms: None,
            p99_ms: None,
            baseline: "consume".into(),
            baseline_value: Some(consume),
            ratio: None,
            peak_rss_mib: None,
            target: "-".into(),
            met: None,
            note: format!("{n} messages of 512 bytes, pipelined by 500"),
            latency_quantiles_us: Vec::new(),
        });
    }

    if args.wants("streams") {
        let n = if args.smoke { 200 } else { 20_000 };
        let (publish, consume) = platform::queue_round_trip(&args.redis_url, n).await?;
        let baseline = raw_streams.map(|(_, consume)| consume);
        rows.push(Row {
            workload: "palisade-queue on Redis: consume + ack".into(),
            throughput_per_s: Some(consume),
            p50_ms: None,
            p99_ms: None,
            baseline: "raw XREADGROUP+XACK".into(),
            baseline_value: baseline,
            ratio: baseline.map(|b| consume / b),
            peak_rss_mib: None,
            target: "-".into(),
            met: None,
            note: format!(
                "{n} envelopes, one consumer, batches of up to 500 (next_batch + ack_many); publish {publish:.0}/s unpipelined"
            ),
            latency_quantiles_us: Vec::new(),
        });
    }

    if args.wants("compliance") {
        let customers = if args.smoke { 40 } else { 10_000 };
        let o = compliance::evaluate_many(&args.database_url, customers).await?;
        let secs = o.warm.as_secs_f64();
        let rate = o.customers as f64 / secs;
        let ceiling = o.customers as f64 / o.baseline.as_secs_f64();
        rows.push(Row {
            workload: format!("compliance: {} customers, broker cache warm", o.customers),
            throughput_per_s: Some(rate),
            p50_ms: None,
            p99_ms: None,
            baseline: "ms-sim: same Graph requests, same concurrency".into(),
            baseline_value: Some(ceiling),
            ratio: Some(rate / ceiling),
            peak_rss_mib: rss::current_process_peak_mib(),
            target: "10,000 customers <= 60 s".into(),
            met: (!args.smoke).then_some(secs <= 60.0),
            note: format!(
                "{secs:.1} s (baseline {:.1} s, {} errors); {} Graph requests ({:.0}/s, {} 429s), {} Partner Center; {} customers at a time; {} redemptions (first run: {:.1} s, {} redemptions); {}",
                o.baseline.as_secs_f64(),
                o.baseline_errors,
                o.graph_requests,
                o.graph_requests as f64 / secs,
                o.graph_throttled,
                o.partner_center_requests,
                o.concurrency,
                o.warm_redemptions,
                o.cold.as_secs_f64(),
                o.cold_redemptions,
                o.evaluated,
            ),
            latency_quantiles_us: Vec::new(),
        });
    }

    if args.wants("notifier") {
        rows.extend(notifier::rows(&args.database_url, &args.redis_url, args.smoke).await?);
    }
    if args.wants("refresh race") {
        rows.push(refresh_race_row(&args).await?);
    }
    if args.wants("rss") {
        let load = (!args.smoke).then(|| args.phase());
        rows.extend(
            processes::measure(&args.database_url, &args.redis_url, &args.out, load).await?,
        );
    }

    report::print_table(&rows);
    let json = report::write_json(&args.out, &rows)?;
    println!("results: {}", json.display());
    if let Some(chart) = report::write_chart(&args.out, &rows)? {
        println!("chart:   {}", chart.display());
    }
    Ok(())
}

/// The 20-replica refresh race as one row: redemptions per window against the target of one.
async fn refresh_race_row(args: &Args) -> anyhow::Result<Row> {
    let windows = if args.smoke { 2 } else { 5 };
    let o = refresh_race::run(&args.database_url, &args.redis_url, windows).await?;
    let exact = o.redemptions.iter().all(|&n| n == 1)
        && o.distinct_tokens.iter().all(|&n| n == 1)
        && o.failures == 0;
    let refresh = median(&o.refresh_ms);
    let cached = median(&o.cached_ms);
    let worst = o.refresh_ms.iter().copied().fold(0.0, f64::max);
    Ok(Row {
        workload: format!(
            "token-broker: {}-replica refresh race, {} callers",
            refresh_race::REPLICAS,
            refresh_race::CALLERS
        ),
        throughput_per_s: Some(refresh_race::CALLERS as f64 / (refresh / 1e3)),
        p50_ms: Some(refresh),
        p99_ms: Some(worst),
        baseline: "same callers, cached (ms)".into(),
        baseline_value: Some(cached),
        ratio: Some(refresh / cached),
        peak_rss_mib: rss::current_process_peak_mib(),
        target: "exactly 1 IdP redemption per window".into(),
        met: Some(exact),
        note: format!(
            "{windows} windows (expiry forced by moving the brokers' and ms-sim's clocks 1 h); redemptions per window {:?}; distinct tokens per window {:?}; {} failed calls; p50/p99 columns: median / worst time to serve all callers (ms), per window {}; cached {}",
            o.redemptions,
            o.distinct_tokens,
            o.failures,
            list(&o.refresh_ms),
            list(&o.cached_ms),
        ),
        latency_quantiles_us: Vec::new(),
    })
}
