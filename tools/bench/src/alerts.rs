//! alert-ingest's sustained ingest throughput: alerts normalised, persisted (row + history +
//! outbox in one transaction) and published to Redis by the outbox relay, per second, on the
//! polling path (Graph pages) and on the webhook-triggered path (inbox row, fetched fraudEvents
//! page, inbox closed). Microsoft's own latency is left out: this measures Palisade.
//!
//! The verdict compares it with the raw batched INSERT of the same rows, which
//! `baselines::raw_batched_insert_ingest_rows` builds from the same items, partners and pages
//! (`Path::items`, `pages`, `webhook_notification`), so the two cannot drift apart.

use std::{sync::Arc, time::Instant};

use palisade_alert_ingest::{
    Ingestor,
    engine::IngestMetrics,
    store::{AlertStore, SqlStore},
    tokens::{AccessTokens, TokenError},
};
use palisade_contracts::{alerts::v1::AlertSource, tokens::v1::Resource};
use palisade_microsoft::{
    graph_alerts::GraphAlertsClient,
    http::{RetryPolicy, Throttle},
    partner_center::PartnerCenterClient,
};
use secrecy::SecretString;

/// Outbox relays, as alert-ingest runs them by default (`workers.outbox_relays`).
const RELAYS: usize = 2;

#[derive(Debug)]
struct NoTokens;

#[async_trait::async_trait]
impl AccessTokens for NoTokens {
    async fn access_token(&self, partner: &str, _: Resource) -> Result<String, TokenError> {
        Err(TokenError {
            partner_tenant_id: partner.to_owned(),
            reason: "the benchmark calls no Microsoft API".into(),
            needs_person: false,
        })
    }
    fn invalidate(&self, _: &str, _: Resource) {}
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6f0Z")
        .to_string()
}

fn graph_item(partner: usize, n: usize, now: i64) -> serde_json::Value {
    serde_json::json!({
        "id": format!("g-{partner}-{n}"), "displayName": "Action Required: CryptoMining detected",
        "description": "A virtual machine in this subscription connected repeatedly to a known mining pool.",
        "alertType": "CryptoMining", "status": "active", "severity": "high", "confidenceLevel": "medium",
        "customerTenantId": format!("c-{}", n % 500), "subscriptionId": format!("s-{n}"),
        "valueAddedResellerTenantId": "r-1", "catalogOfferId": "MS-AZR-0017G",
        "detectedDateTime": iso(now), "firstObservedDateTime": iso(now - 1_200_000 - n as i64),
        "lastObservedDateTime": iso(now - 60_000), "isTest": "false",
        "affectedResources": [{"resourceId": format!("/subscriptions/s-{n}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1"), "resourceType": "AzureResource"}],
        "activityLogs": [],
        "additionalDetails": {"VM_IP": "[\"20.1.2.3\"]", "MiningPool_IP": "[\"45.9.148.21\"]", "ConnectionCount": "12"}
    })
}

fn fraud_item(partner: usize, n: usize, now: i64) -> serde_json::Value {
    let zoneless = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.3f")
            .to_string()
    };
    serde_json::json!({
        "eventTime": zoneless(now), "eventId": format!("s-{n}_e-{partner}-{n}"),
        "partnerTenantId": format!("partner-{partner}"), "customerTenantId": format!("c-{}", n % 500),
        "customerFriendlyName": "Contoso", "subscriptionId": format!("s-{n}"), "subscriptionType": "modern",
        "entityId": format!("e-{partner}-{n}"), "hitCount": "3", "catalogOfferId": "MS-AZR-0017G",
        "eventStatus": "Active", "firstObserved": zoneless(now - 1_200_000 - n as i64),
        "lastObserved": zoneless(now - 60_000), "resolvedReason": "None", "resolvedOn": "9999-12-31T23:59:59.997",
        "eventType": "NetworkConnectionsToCryptoMiningPools", "severity": "High", "IsTest": "false",
        "affectedResources": [{"azureResourceId": format!("/subscriptions/s-{n}/vm-1"), "type": "VirtualMachine"}],
        "activityLogs": "[]", "additionalDetails": {"MiningPool_IP": "45.9.148.21"}
    })
}

/// Which door the alerts come through.
#[derive(Debug, Clone, Copy)]
pub enum Path {
    Polling,
    Webhook,
}

impl Path {
    /// Alerts per page, and so per ingest transaction: a Graph page, or the fraudEvents page one
    /// webhook's fetch returns.
    pub(crate) fn page(self) -> usize {
        match self {
            Self::Polling => 500,
            Self::Webhook => 100,
        }
    }

    /// The items of one page of `partner`'s alerts, as Microsoft sends them.
    pub(crate) fn items(self, partner: usize, ns: &[usize], now: i64) -> Vec<serde_json::Value> {
        ns.iter()
            .map(|n| match self {
                Self::Polling => graph_item(partner, *n, now),
                Self::Webhook => fraud_item(partner, *n, now),
            })
            .collect()
    }
}

pub(crate) const WEBHOOK_EVENT: &str = "azure-fraud-event-detected";

pub(crate) fn partner_id(partner: usize) -> String {
    format!("partner-{partner}")
}

/// Each partner's alert numbers, page by page.
pub(crate) fn pages(path: Path, per_partner: usize) -> Vec<Vec<usize>> {
    (0..per_partner)
        .collect::<Vec<_>>()
        .chunks(path.page())
        .map(<[usize]>::to_vec)
        .collect()
}

/// The signed notification that announces a page on the webhook path: (body digest, body).
pub(crate) fn webhook_notification(partner: usize, first: usize) -> (String, String) {
    let body = format!(
        "{{\"EventName\":\"{WEBHOOK_EVENT}\",\"ResourceUri\":\"/v1/fraudEvents?SubscriptionId=s-{first}\",\"n\":{first}}}"
    );
    (format!("{partner}-{first}"), body)
}

/// Returns alerts persisted and published per second, with `partners` ingesting concurrently.
pub async fn ingest(
    database_url: &str,
    redis_url: &str,
    alerts: usize,
    partners: usize,
    path: Path,
) -> anyhow::Result<f64> {
    // A database of its own, dropped afterwards.
    let scratch = crate::scratch::ScratchDatabase::create(database_url, "alerts").await?;
    let url = scratch.url.clone();
    let settings = palisade_storage::DatabaseSettings {
        url: SecretString::from(url),
        max_connections: (partners + RELAYS) as u32 + 2,
        ..Default::default()
    };
    let db = palisade_storage::Database::connect(&settings, "alerts").await?;
    let store = SqlStore::new(db.clone());
    store.migrate().await?;
    let queue = palisade_queue::connect(&palisade_queue::QueueSettings {
        backend: palisade_queue::Backend::Redis,
        redis_url: Some(SecretString::from(redis_url.to_owned())),
        key_prefix: format!("bench:{}", uuid::Uuid::new_v4().simple()),
        allow_unsafe_eviction_policy: true,
        ..Default::default()
    })
    .await?;
    let relay = palisade_alert_ingest::outbox::BatchRelay::new(db.clone(), queue, 500);
    let http = reqwest::Client::new();
    let throttle = Arc::new(Throttle::unlimited());
    let nowhere = url::Url::parse("http://127.0.0.1:9")?;
    let (changes, _) = tokio::sync::broadcast::channel(16);
    let store: Arc<dyn AlertStore> = Arc::new(store);
    let core = Arc::new(Ingestor {
        store: Arc::clone(&store),
        graph: GraphAlertsClient::new(
            http.clone(),
            nowhere.clone(),
            RetryPolicy::default(),
            Arc::clone(&throttle),
        ),
        partner_center: PartnerCenterClient::new(http, nowhere, RetryPolicy::default(), throttle),
        tokens: Arc::new(NoTokens),
        clock: palisade_clock::system(),
        settings: Default::default(),
        changes,
        relay: Some(relay.clone()),
        metrics: IngestMetrics::default(),
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let mut relays = tokio::task::JoinSet::new();
    for _ in 0..RELAYS {
        relays.spawn(
            relay
                .clone()
                .run(std::time::Duration::from_millis(20), stop.clone()),
        );
    }

    let now = chrono::Utc::now().timestamp_millis();
    let per_partner = alerts / partners.max(1);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..partners.max(1) {
        let core = Arc::clone(&core);
        tasks.spawn(async move {
            let partner = partner_id(p);
            for chunk in pages(path, per_partner) {
                let items = path.items(p, &chunk, now);
                match path {
                    Path::Polling => {
                        core.ingest_raw(&partner, AlertSource::Graph, items).await?;
                    }
                    Path::Webhook => {
                        // The receiver's durable write, then the inbox worker's fetch result.
                        let (sha, body) = webhook_notification(p, chunk[0]);
                        core.store
                            .insert_webhook(&partner, &sha, WEBHOOK_EVENT, body.as_bytes(), now)
                            .await?;
                        let item = core.store.claim_webhooks(now + 1, now + 60_000, 1).await?;
                        core.ingest_raw(&partner, AlertSource::FraudEvents, items)
                            .await?;
                        if let Some(item) = item.first() {
                            core.store.finish_webhook(&item.inbox_id, &[]).await?;
                        }
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let persisted = start.elapsed();
    // Published: the relay has emptied the outbox.
    while relay.pending().await? > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let total = (per_partner * partners.max(1)) as f64;
    let rate = total / start.elapsed().as_secs_f64();
    eprintln!(
        "alert-ingest {path:?}: {total} alerts persisted in {persisted:?} ({:.0}/s), published after {:?}",
        total / persisted.as_secs_f64(),
        start.elapsed()
    );
    stop.cancel();
    while relays.join_next().await.is_some() {}
    db.close().await;
    scratch.drop().await?;
    Ok(rate)
}
