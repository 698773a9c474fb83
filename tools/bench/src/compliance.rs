//! Compliance over many customers: one partner with (by default) 10,000 customer tenants,
//! evaluated by the real compliance service with the real token broker serving its tokens
//! over gRPC (`GrpcPeers`, a service credential), against ms-sim.
//!
//! Production evaluates a partner every hour and the broker keeps its customers' tokens cached
//! (and refreshed ahead of expiry), so the measured evaluation is the second one, with the
//! broker's cache warm; the first, which redeems one refresh token per customer, is reported
//! beside it. The baseline is ms-sim's own ceiling in the same run: the exact Graph requests
//! of the measured evaluation (read back from ms-sim's request log), replayed bare with the
//! same tokens, the same number of customers at a time.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures::StreamExt;
use ms_sim::{RequestFilter, SimConfig, scenario::ScenarioConfig};
use palisade_auth::{AuthStore, BearerInterceptor, NewCredential, bootstrap_admin};
use palisade_contracts::{
    compliance::v1::CheckKind,
    tokens::v1::{self as pb, token_broker_service_client::TokenBrokerServiceClient},
};
use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct Outcome {
    pub customers: usize,
    pub evaluated: String,
    pub concurrency: usize,
    /// The first evaluation: one redemption per reachable customer.
    pub cold: Duration,
    pub cold_redemptions: usize,
    /// The measured evaluation, with the broker's cache warm.
    pub warm: Duration,
    pub warm_redemptions: usize,
    pub graph_requests: u64,
    pub graph_throttled: u64,
    pub partner_center_requests: u64,
    /// The same Graph requests, bare, at the same concurrency.
    pub baseline: Duration,
    pub baseline_errors: usize,
}

pub async fn evaluate_many(database_url: &str, customers: usize) -> anyhow::Result<Outcome> {
    // A database of its own, dropped afterwards.
    let scratch = crate::scratch::ScratchDatabase::create(database_url, "compliance").await?;
    let url = scratch.url.clone();
    let dir = std::env::temp_dir().join(format!(
        "palisade-bench-compliance-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let outcome = run(&url, &dir, customers).await;
    let _ = std::fs::remove_dir_all(&dir);
    scratch.drop().await?;
    outcome
}

async fn run(url: &str, dir: &std::path::Path, customers: usize) -> anyhow::Result<Outcome> {
    let sim = ms_sim::start(SimConfig {
        scenario: ScenarioConfig {
            partners: 1,
            customers_per_partner: customers,
            alerts_per_partner: 0,
        },
        ..SimConfig::default()
    })
    .await?;
    let partner = sim.scenario().partners[0].clone();
    let database = |max: u32| palisade_storage::DatabaseSettings {
        url: SecretString::from(url.to_owned()),
        max_connections: max,
        ..Default::default()
    };
    let auth = AuthStore::open(&database(2)).await?;
    let admin = SecretString::from(bootstrap_admin(&auth, "bench").await?);
    let (id, service_secret, hash) = palisade_auth::generate_secret();
    auth.insert(
        &id,
        &hash,
        &NewCredential {
            display_name: "service compliance".into(),
            service: true,
            all_partners: true,
            partners: Default::default(),
            scopes: palisade_compliance::SERVICE_SCOPES.to_vec(),
            expires_at: None,
        },
    )
    .await?;

    // The token broker, consented by the partner's admin agent.
    let mut broker_settings = palisade_token_broker::Settings {
        server: palisade_server::ServerSettings::ephemeral(),
        database: database(16),
        ..Default::default()
    };
    broker_settings.kek.key_file = Some(dir.join("kek"));
    broker_settings.entra.public_login_url = sim.login_url().to_string();
    broker_settings.entra.china_login_url = sim.login_url().to_string();
    let listeners = palisade_server::Listeners::bind(&broker_settings.server).await?;
    let broker_addr = listeners.grpc.local_addr()?;
    let broker = palisade_token_broker::start(
        broker_settings,
        listeners,
        palisade_token_broker::Options::default(),
    )
    .await?;
    let channel = tonic::transport::Channel::from_shared(format!("http://{broker_addr}"))?
        .connect()
        .await?;
    let mut tb = TokenBrokerServiceClient::with_interceptor(
        channel.clone(),
        BearerInterceptor::new(Some(&admin)),
    );
    let app = palisade_cli::dev::provision::ensure_sam_app(&mut tb, &partner, "bench").await?;
    palisade_cli::dev::provision::consent_with_mfa(&mut tb, &partner, &app.app_id).await?;

    // Compliance as in production: peers over gRPC, the configured budgets. The notifier and
    // alert-ingest are one call each per evaluation and are not started: those two checks
    // come out unknown, which costs nothing.
    let mut settings = palisade_compliance::Settings {
        database: database(8),
        server: palisade_server::ServerSettings::ephemeral(),
        workers: Some(false),
        ..Default::default()
    };
    settings.auth.service_credential = Some(SecretString::from(service_secret));
    settings.peers.token_broker = format!("http://{broker_addr}");
    settings.peers.notifier = "http://127.0.0.1:9".into();
    settings.peers.alert_ingest = "http://127.0.0.1:9".into();
    settings.peers.timeout = Duration::from_secs(60);
    settings.microsoft.graph_url = sim.graph_url().to_string();
    settings.microsoft.partner_center_url = sim.partner_center_url().to_string();
    settings.events.enabled = false;
    let concurrency = settings.evaluation.customer_concurrency;
    let listeners = palisade_server::Listeners::bind(&settings.server).await?;
    let compliance =
        palisade_compliance::start(settings, listeners, palisade_clock::system()).await?;
    let engine = compliance.engine.clone();
    let evaluate = || {
        let engine = engine.clone();
        let partner = partner.tenant_id.clone();
        async move {
            let (tx, _rx) = tokio::sync::watch::channel(palisade_compliance::RunState::Progress(
                Default::default(),
            ));
            let started = Instant::now();
            let status = engine
                .evaluate(&partner, "bench", &tx)
                .await
                .map_err(|e| anyhow::anyhow!("evaluation failed: {e}"))?;
            anyhow::Ok((started.elapsed(), status))
        }
    };
    let control = sim.control();
    let redemptions = || {
        control
            .requests(&RequestFilter {
                grant_type: Some("refresh_token".into()),
                ..Default::default()
            })
            .len()
    };

    control.clear_requests();
    let (cold, _) = evaluate().await?;
    let cold_redemptions = redemptions();

    control.clear_requests();
    let (graph_before, _) = engine.microsoft().graph_usage();
    let (pc_before, _) = engine.microsoft().partner_center_usage();
    let (warm, status) = evaluate().await?;
    let (graph_after, graph_throttled) = engine.microsoft().graph_usage();
    let (pc_after, _) = engine.microsoft().partner_center_usage();
    let warm_redemptions = redemptions();
    let evaluated = status
        .checks
        .iter()
        .find(|c| c.check == CheckKind::CustomerAdminMfa as i32)
        .map(|c| c.summary.clone())
        .unwrap_or_default();
    let graph_log = control.requests(&RequestFilter {
        host: Some(ms_sim::Host::Graph.name().into()),
        ..Default::default()
    });

    // Baseline: the same Graph requests, grouped by tenant as the evaluation sends them, the
    // same number of tenants at a time, with the broker's cached tokens fetched beforehand.
    let mut by_tenant: HashMap<String, Vec<String>> = HashMap::new();
    let graph_root = sim.graph_url().to_string();
    for r in &graph_log {
        let mut url = format!("{}{}", graph_root.trim_end_matches('/'), r.path);
        if !r.query.is_empty() {
            url.push('?');
            url.push_str(&r.query);
        }
        by_tenant
            .entry(r.tenant.to_ascii_lowercase())
            .or_default()
            .push(url);
    }
    let tokens: HashMap<String, String> = futures::stream::iter(by_tenant.keys().cloned())
        .map(|tenant| {
            let mut tb = tb.clone();
            let partner = partner.tenant_id.clone();
            async move {
                let token = tb
                    .get_access_token(pb::GetAccessTokenRequest {
                        partner_tenant_id: partner,
                        target_tenant_id: tenant.clone(),
                        resource: pb::Resource::Graph as i32,
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .access_token;
                anyhow::Ok((tenant, token))
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let started = Instant::now();
    let errors: usize = futures::stream::iter(by_tenant)
        .map(|(tenant, urls)| {
            let (http, token) = (http.clone(), tokens[&tenant].clone());
            async move {
                let sent = urls.into_iter().map(|url| {
                    let (http, token) = (http.clone(), token.clone());
                    async move {
                        match http.get(url).bearer_auth(token).send().await {
                            Ok(r) => {
                                let ok = r.status().is_success() || r.status().as_u16() == 403;
                                let _ = r.bytes().await;
                                usize::from(!ok)
                            }
                            Err(_) => 1,
                        }
                    }
                });
                futures::future::join_all(sent)
                    .await
                    .into_iter()
                    .sum::<usize>()
            }
        })
        .buffer_unordered(concurrency)
        .fold(0, |a, b| async move { a + b })
        .await;
    let baseline = started.elapsed();

    compliance.stop().await;
    broker.stop().await;
    sim.shutdown().await;
    Ok(Outcome {
        customers,
        evaluated,
        concurrency,
        cold,
        cold_redemptions,
        warm,
        warm_redemptions,
        graph_requests: graph_after - graph_before,
        graph_throttled,
        partner_center_requests: pc_after - pc_before,
        baseline,
        baseline_errors: errors,
    })
}
