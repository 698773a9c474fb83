//! ms-sim's own request throughput, so that it is known never to be the bottleneck of
//! Palisade's benchmarks. Each workload is measured against a bare axum endpoint answering a
//! small JSON body, served and loaded the same way in the same run: the ratio is what to read on
//! a shared, noisy machine.
//!
//! `cargo bench -p ms-sim --bench throughput` (`MS_SIM_BENCH_SECONDS`, `MS_SIM_BENCH_CLIENTS`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ms_sim::{GRAPH, PARTNER_CENTER, SimConfig};
use serde_json::Value;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `clients` loops of `call` for `seconds`; returns successful calls per second.
async fn load<F, Fut>(clients: u64, seconds: u64, call: F) -> f64
where
    F: Fn(reqwest::Client) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (call, stop, done, http) = (call.clone(), stop.clone(), done.clone(), http.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if call(http.clone()).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn baseline_server() -> String {
    let app = axum::Router::new().route(
        "/echo",
        axum::routing::get(|| async {
            axum::Json(serde_json::json!({"value": [{"id": "x", "status": "active"}]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/echo", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn token(sim: &ms_sim::MsSim, tenant: &str, rt: &str, resource: &str) -> (String, String) {
    let partner = &sim.scenario().partners[0];
    let body: Value = reqwest::Client::new()
        .post(format!("{}{tenant}/oauth2/token", sim.login_url()))
        .form(&[
            ("client_id", partner.app.client_id.as_str()),
            ("client_secret", partner.app.client_secret.as_str()),
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("resource", resource),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn consent(sim: &ms_sim::MsSim) -> String {
    let partner = &sim.scenario().partners[0];
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let location = http
        .get(format!(
            "{}common/oauth2/authorize?client_id={}&response_type=code&redirect_uri=https%3A%2F%2Fpanel.example%2Fcb&state=s",
            sim.login_url(),
            partner.app.client_id
        ))
        .send()
        .await
        .unwrap()
        .headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let body: Value = reqwest::Client::new()
        .post(format!(
            "{}{}/oauth2/token",
            sim.login_url(),
            partner.tenant_id
        ))
        .form(&[
            ("client_id", partner.app.client_id.as_str()),
            ("client_secret", partner.app.client_secret.as_str()),
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("resource", PARTNER_CENTER),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["refresh_token"].as_str().unwrap().to_owned()
}

#[tokio::main]
async fn main() {
    let seconds = env("MS_SIM_BENCH_SECONDS", 5);
    let clients = env("MS_SIM_BENCH_CLIENTS", 32);
    let sim = ms_sim::start(SimConfig {
        realistic_throttles: false,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let partner = sim.scenario().partners[0].clone();
    let rt = consent(&sim).await;
    let (graph_token, rt) = token(&sim, &partner.tenant_id, &rt, GRAPH).await;
    let (pc_token, rt) = token(&sim, &partner.tenant_id, &rt, PARTNER_CENTER).await;
    let echo = baseline_server().await;

    let baseline = load(clients, seconds, move |http| {
        let url = echo.clone();
        async move {
            http.get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;

    let alerts_url = sim
        .graph_url()
        .join("/beta/security/partner/securityAlerts")
        .unwrap();
    let graph = load(clients, seconds, move |http| {
        let (url, token) = (alerts_url.clone(), graph_token.clone());
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;

    let customer = partner.customer(0).unwrap();
    let customer_url = sim
        .partner_center_url()
        .join(&format!("/v1/customers/{}", customer.tenant_id))
        .unwrap();
    let partner_center = load(clients, seconds, move |http| {
        let (url, token) = (customer_url.clone(), pc_token.clone());
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;

    // Each refresh signs a new RS256 token and rotates the refresh token: the costliest call.
    let token_url = format!("{}{}/oauth2/token", sim.login_url(), partner.tenant_id);
    let app = partner.app.clone();
    let refresh = load(clients, seconds, move |http| {
        let (url, app, rt) = (token_url.clone(), app.clone(), rt.clone());
        async move {
            http.post(url)
                .form(&[
                    ("client_id", app.client_id.as_str()),
                    ("client_secret", app.client_secret.as_str()),
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                    ("resource", GRAPH),
                ])
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;

    println!(
        "ms-sim throughput, {clients} clients × {seconds} s each, same machine, same load generator"
    );
    println!("{:<44} {:>12} {:>10}", "workload", "requests/s", "vs echo");
    for (name, rate) in [
        ("baseline: bare axum JSON echo", baseline),
        ("Graph securityAlerts list (12 alerts)", graph),
        ("Partner Center GET customer", partner_center),
        ("Entra refresh_token grant (RS256 sign)", refresh),
    ] {
        println!("{name:<44} {rate:>12.0} {:>9.2}×", rate / baseline);
    }
    sim.shutdown().await;
}
