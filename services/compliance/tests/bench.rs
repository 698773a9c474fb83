//! The benchmark, run on demand (it is not a test of behaviour):
//! `cargo nextest run -p palisade-compliance --run-ignored only -E 'test(ten_thousand)' --no-capture`
//! Evaluates one partner with 10,000 customer tenants against ms-sim and prints the wall time,
//! requests per second and the share of the configured Graph budget used, next to a baseline
//! measured in the same run: the same number of bare Graph GETs at the same concurrency.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use ms_sim::{SimConfig, scenario::ScenarioConfig};
use palisade_contracts::compliance::v1::CheckKind;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run on demand"]
async fn ten_thousand_customers() {
    let customers = std::env::var("BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let config = SimConfig {
        scenario: ScenarioConfig {
            partners: 1,
            customers_per_partner: customers,
            ..ScenarioConfig::default()
        },
        ..SimConfig::default()
    };
    let h = start(config, |s| {
        s.evaluation.customer_concurrency = 64;
        s.microsoft.partner_center_requests_per_minute = 450.0;
    })
    .await;
    let graph_budget = h.engine().microsoft().settings().graph_requests_per_second;

    let started = Instant::now();
    let status = h.evaluate().await;
    let wall = started.elapsed();
    let (graph, graph_429) = h.engine().microsoft().graph_usage();
    let (pc, pc_429) = h.engine().microsoft().partner_center_usage();
    let customers_check = status
        .checks
        .iter()
        .find(|c| c.check == CheckKind::CustomerAdminMfa as i32)
        .unwrap();

    // Baseline: bare GETs of one tenant's security defaults, same count, same concurrency.
    let token = {
        use palisade_compliance::Peers;
        let c = h.partner.customer(0).unwrap().tenant_id;
        h.peers
            .access_token(
                &h.partner.tenant_id,
                &c,
                palisade_contracts::tokens::v1::Resource::Graph,
            )
            .await
            .unwrap()
    };
    let url = format!(
        "{}v1.0/policies/identitySecurityDefaultsEnforcementPolicy",
        h.sim.graph_url()
    );
    let client = http();
    let base_started = Instant::now();
    futures::stream::iter(0..graph)
        .map(|_| {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            async move {
                client
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
    let base_wall = base_started.elapsed();

    let secs = wall.as_secs_f64();
    println!("\n== compliance: one partner, {customers} customer tenants, against ms-sim ==");
    println!("evaluation wall time           {secs:.1} s (target ≤ 60 s)");
    println!(
        "customers evaluated            {} ({})",
        customers_check.evidence["customers_evaluated"], customers_check.summary
    );
    println!(
        "Graph requests                 {graph} ({:.0}/s), 429s {graph_429}",
        graph as f64 / secs
    );
    println!(
        "Partner Center requests        {pc} ({:.1}/min), 429s {pc_429}",
        pc as f64 / secs * 60.0
    );
    println!(
        "Graph budget used              {:.1}% of {graph_budget}/s",
        graph as f64 / secs / graph_budget * 100.0
    );
    println!(
        "Partner Center budget used     {:.1}% of 450/min",
        pc as f64 / (secs / 60.0) / 450.0 * 100.0
    );
    println!(
        "baseline: {graph} bare Graph GETs {:.1} s ({:.0}/s)",
        base_wall.as_secs_f64(),
        graph as f64 / base_wall.as_secs_f64()
    );
    assert!(wall < Duration::from_secs(600));
    h.running.stop().await;
}
