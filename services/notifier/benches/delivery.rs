//! End-to-end delivery latency: from publishing an event on Redis Streams to the signed
//! webhook arriving at a receiver on loopback, through the whole notifier (consumer,
//! grouping with zero waits, planning, dispatch) over real Postgres and Redis. The workload
//! is `palisade_notifier::bench`, which `make bench` (tools/bench) runs too.
//!
//! Three runs: the floor (the same events read by a bare consumer and POSTed to the same
//! receiver), every endpoint healthy, then 30 % of the partners' endpoints failing (500) or
//! slow (2 s), reporting the healthy endpoints' latency. Prints one JSON document.
//!
//! `cargo bench -p palisade-notifier --bench delivery` (needs the test Postgres and Redis).
//! `NOTIFIER_BENCH_RATE` (events/s, default 1000) and `NOTIFIER_BENCH_SECONDS` (default 10).

use std::time::Duration;

use palisade_notifier::bench::{Workload, run_baseline, run_notifier};
use palisade_testkit::{TestDatabase, TestRedis};

fn queue_settings(redis: &TestRedis) -> palisade_queue::QueueSettings {
    palisade_queue::QueueSettings {
        backend: palisade_queue::Backend::Redis,
        redis_url: Some(secrecy::SecretString::from(redis.url().to_owned())),
        key_prefix: redis.prefix().trim_end_matches(':').to_owned(),
        ..Default::default()
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let workload = |unhealthy_share| Workload {
        rate: env("NOTIFIER_BENCH_RATE", 1000),
        duration: Duration::from_secs(env("NOTIFIER_BENCH_SECONDS", 10)),
        partners: 50,
        unhealthy_share,
        drain: Duration::from_secs(60),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let floor = {
            let redis = TestRedis::create().await;
            let w = workload(0.0);
            run_baseline(queue_settings(&redis), &w)
                .await
                .unwrap()
                .to_json("baseline: bare consumer POSTs to the receiver", &w)
        };
        let mut runs = vec![floor];
        for (name, share) in [
            ("all endpoints healthy", 0.0),
            ("30% of endpoints failing or slow", 0.3),
        ] {
            let db = TestDatabase::create().await;
            let redis = TestRedis::create().await;
            let w = workload(share);
            let outcome = run_notifier(db.settings(), queue_settings(&redis), &w)
                .await
                .unwrap();
            runs.push(outcome.to_json(name, &w));
        }
        let ratio = runs[2]["p99_ms"].as_f64().unwrap_or(f64::NAN)
            / runs[1]["p99_ms"].as_f64().unwrap_or(f64::NAN);
        let report = serde_json::json!({
            "benchmark": "notifier end-to-end delivery latency (publish to webhook receipt)",
            "runs": runs,
            "healthy_p99_ratio_degraded_over_baseline": (ratio * 100.0).round() / 100.0,
        });
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    });
}
