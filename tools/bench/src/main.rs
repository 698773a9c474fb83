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
mod platform;
mod report;
mod rss;
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
    #[arg(long, default_value_t = 10)]
    seconds: u64,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows: Vec<Row> = Vec::new();

    let mut echo_throughput = None;
    let mut raw_streams = None;
    if args.wants("grpc") {
        let (max, half) = baselines::grpc_echo(args.phase()).await?;
        echo_throughput = Some(max.throughput());
        rows.push(Row {
            workload: "baseline: tonic unary echo".into(),
            throughput_per_s: Some(max.throughput()),
            p50_ms: Some(half.quantile_ms(0.5)),
            p99_ms: Some(half.quantile_ms(0.99)),
            baseline: "-".into(),
            baseline_value: None,
            ratio: None,
            peak_rss_mib: rss::current_process_peak_mib(),
            target: "-".into(),
            met: None,
            note: format!(
                "latency at half of the maximum throughput; {} errors",
                max.errors + half.errors
            ),
            latency_quantiles_us: report::quantiles(&half.histogram),
        });
    }
    if args.wants("raw-insert") {
        let rows_n = if args.smoke { 500 } else { 50_000 };
        let rate = baselines::raw_batched_insert(&args.database_url, rows_n, 500).await?;
        rows.push(Row {
            workload: "baseline: raw batched INSERT".into(),
            throughput_per_s: Some(rate),
            p50_ms: None,
            p99_ms: None,
            baseline: "-".into(),
            baseline_value: None,
            ratio: None,
            peak_rss_mib: None,
            target: "-".into(),
            met: None,
            note: format!("{rows_n} alert-sized rows, 500 per statement"),
            latency_quantiles_us: Vec::new(),
        });
    }
    if args.wants("grpc") {
        let (max, half) = platform::authenticated_unary(&args.database_url, args.phase()).await?;
        let ratio = echo_throughput.map(|echo| max.throughput() / echo);
        rows.push(Row {
            workload: "platform stack: authenticated unary (WhoAmI)".into(),
            throughput_per_s: Some(max.throughput()),
            p50_ms: Some(half.quantile_ms(0.5)),
            p99_ms: Some(half.quantile_ms(0.99)),
            baseline: "echo".into(),
            baseline_value: echo_throughput,
            ratio,
            peak_rss_mib: rss::current_process_peak_mib(),
            target: ">= 0.7x echo".into(),
            met: ratio.map(|r| r >= 0.7),
            note: format!(
                "trace+metrics, load shed, concurrency limit, cached credential check; {} errors",
                max.errors + half.errors
            ),
            latency_quantiles_us: report::quantiles(&half.histogram),
        });
    }
    if args.wants("grpc") || args.wants("tokens") {
        let (max, half) = tokens::cached_get_access_token(args.phase()).await?;
        let ratio = echo_throughput.map(|echo| max.throughput() / echo);
        let p99 = half.quantile_ms(0.99);
        rows.push(Row {
            workload: "token-broker: cached GetAccessToken".into(),
            throughput_per_s: Some(max.throughput()),
            p50_ms: Some(half.quantile_ms(0.5)),
            p99_ms: Some(p99),
            baseline: "echo".into(),
            baseline_value: echo_throughput,
            ratio,
            peak_rss_mib: rss::current_process_peak_mib(),
            target: ">= 0.7x echo, p99 <= 2 ms at half load".into(),
            met: ratio.map(|r| r >= 0.7 && p99 <= 2.0),
            note: format!(
                "full server stack + tokens:issue check + cache + usage count; {} errors",
                max.errors + half.errors
            ),
            latency_quantiles_us: report::quantiles(&half.histogram),
        });
    }
    if args.wants("alerts") {
        // The same number of alert-sized rows, raw, into the same Postgres, in the same run.
        let n = if args.smoke { 400 } else { 40_000 };
        let raw = baselines::raw_batched_insert(&args.database_url, n, 500).await?;
        for (path, name) in [
            (alerts::Path::Polling, "polling path (Graph pages of 500)"),
            (
                alerts::Path::Webhook,
                "webhook path (inbox + fraudEvents pages of 100)",
            ),
        ] {
            let rate = alerts::ingest(&args.database_url, &args.redis_url, n, 8, path).await?;
            let ratio = rate / raw;
            rows.push(Row {
                workload: format!("alert-ingest: {name}"),
                throughput_per_s: Some(rate),
                p50_ms: None,
                p99_ms: None,
                baseline: "raw batched INSERT".into(),
                baseline_value: Some(raw),
                ratio: Some(ratio),
                peak_rss_mib: rss::current_process_peak_mib(),
                target: ">= 5000/s and >= 0.5x raw insert".into(),
                met: Some(rate >= 5000.0 && ratio >= 0.5),
                note: format!(
                    "{n} alerts from 8 partners at once: normalised, row + history + outbox per page, published to Redis by the relay"
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

    report::print_table(&rows);
    let json = report::write_json(&args.out, &rows)?;
    println!("results: {}", json.display());
    if let Some(chart) = report::write_chart(&args.out, &rows)? {
        println!("chart:   {}", chart.display());
    }
    Ok(())
}
