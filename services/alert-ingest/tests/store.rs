//! The store's contract, run on Postgres and on SQLite with the same bodies.

use palisade_alert_ingest::{
    model,
    store::{AlertStore, ListQuery, PollResult, SqlStore, WriteBackOutcome},
};
use palisade_contracts::{
    alerts::v1::{
        AlertFilter, AlertSortField, AlertSource, AlertStatus, IngestionSettings, Resolution,
        WriteBackState,
    },
    common::v1::{Severity, SortOrder},
    events::v1::{AlertResolved, AlertWriteBack, Envelope},
};
use palisade_storage::Database;
use palisade_testkit::{TestBackend, backend_conformance};
use prost::Message;
use sqlx::Row;

const P: &str = "partner-a";
const HOUR: i64 = 3_600_000;
const NOW: i64 = 1_750_000_000_000;

async fn store(backend: &TestBackend) -> SqlStore {
    let db = Database::connect(&backend.settings(), "alerts")
        .await
        .unwrap();
    let store = SqlStore::new(db);
    store.migrate().await.unwrap();
    store
}

fn graph(
    n: u32,
    status: &str,
    severity: &str,
    kind: &str,
    last_observed: i64,
) -> model::Observation {
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    model::from_graph(
        P,
        serde_json::json!({
            "id": format!("g-{n}"), "alertType": kind, "status": status, "severity": severity,
            "customerTenantId": format!("c-{}", n % 3), "subscriptionId": format!("s-{n}"),
            "detectedDateTime": iso(NOW - 30 * HOUR), "firstObservedDateTime": iso(NOW - 30 * HOUR - n as i64),
            "lastObservedDateTime": iso(last_observed), "isTest": "false",
            "resolvedReason": if status == "resolved" { "ignore" } else { "" },
            "resolvedOnDateTime": if status == "resolved" { iso(NOW - 2 * HOUR) } else { String::new() },
        }),
    )
    .unwrap()
}

async fn outbox(store: &SqlStore) -> Vec<(String, Envelope)> {
    sqlx::query("SELECT topic, envelope FROM outbox ORDER BY seq")
        .fetch_all(store.database().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<String, _>(0),
                Envelope::decode(r.get::<Vec<u8>, _>(1).as_slice()).unwrap(),
            )
        })
        .collect()
}

async fn ingest_is_idempotent_and_merges_sources_body(backend: TestBackend) {
    let store = store(&backend).await;
    let g = graph(
        1,
        "active",
        "high",
        "networkConnectionsToCryptoMiningPools",
        NOW - HOUR,
    );
    let first = store.ingest(std::slice::from_ref(&g), NOW).await.unwrap();
    assert_eq!((first.written, first.applied.len()), (1, 1));
    let again = store
        .ingest(std::slice::from_ref(&g), NOW + 1)
        .await
        .unwrap();
    assert_eq!(
        (again.written, again.applied.len()),
        (0, 0),
        "a replay writes nothing"
    );
    // The legacy shape of the same detection: same alert, more detail, one update event.
    let legacy = model::from_fraud_event(
        P,
        serde_json::json!({
            "eventId": "s-1_e", "eventType": "NetworkConnectionsToCryptoMiningPools", "eventStatus": "Active",
            "customerTenantId": "c-1", "subscriptionId": "s-1", "hitCount": "9",
            "firstObserved": chrono::DateTime::from_timestamp_millis(g.first_observed_at).unwrap().naive_utc().format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
            "lastObserved": "2020-01-01T00:00:00", "IsTest": "false", "customerFriendlyName": "Contoso"
        }),
    )
    .unwrap();
    assert_eq!(legacy.fingerprint, g.fingerprint);
    let merged = store.ingest(&[legacy], NOW + 2).await.unwrap();
    assert_eq!(merged.applied.len(), 1);
    let alert = store
        .get_alert(P, &merged.applied[0].alert.alert_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            alert.hit_count,
            alert.customer_name.as_str(),
            alert.fraud_event_id.as_str()
        ),
        (9, "Contoso", "s-1_e")
    );
    assert_eq!(
        alert.last_observed_at.unwrap().seconds * 1000,
        (NOW - HOUR) / 1000 * 1000,
        "times only move forward"
    );
    let kinds: Vec<_> = outbox(&store)
        .await
        .into_iter()
        .map(|(t, e)| (t, e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("alerts".to_owned(), "alert.raised".to_owned()),
            ("alerts".into(), "alert.updated".into())
        ]
    );
    assert!(
        store
            .get_alert("partner-b", &alert.alert_id)
            .await
            .unwrap()
            .is_none(),
        "partners are apart"
    );
    store
        .quarantine(P, AlertSource::Graph, "bad", "{", NOW)
        .await
        .unwrap();
    store
        .put_ingestion(
            P,
            &IngestionSettings {
                graph_enabled: true,
                poll_interval_seconds: 60,
                ..Default::default()
            },
            NOW,
        )
        .await
        .unwrap();
    let states = store.source_states(P).await.unwrap();
    assert_eq!(
        states
            .iter()
            .find(|s| s.source == AlertSource::Graph as i32)
            .unwrap()
            .quarantined,
        1
    );
}
backend_conformance!(
    ingest_is_idempotent_and_merges_sources,
    ingest_is_idempotent_and_merges_sources_body
);

async fn resolve_is_one_transaction_and_idempotent_body(backend: TestBackend) {
    let store = store(&backend).await;
    let applied = store
        .ingest(
            &[graph(1, "active", "high", "CryptoMining", NOW - HOUR)],
            NOW,
        )
        .await
        .unwrap();
    let id = applied.applied[0].alert.alert_id.clone();
    let before = outbox(&store).await.len();
    let r = store
        .resolve(
            P,
            &id,
            Resolution::Fraud,
            "miner",
            "palisade:ops",
            NOW + HOUR,
        )
        .await
        .unwrap();
    assert!(r.changed);
    assert_eq!(r.alert.write_back_state, WriteBackState::Pending as i32);
    let events = outbox(&store).await.split_off(before);
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.kind.as_str()),
        ("alerts", "alert.resolved")
    );
    assert_eq!(
        AlertResolved::decode(events[0].1.payload.as_slice())
            .unwrap()
            .alert
            .unwrap()
            .resolution,
        Resolution::Fraud as i32
    );
    assert_eq!(
        (events[1].0.as_str(), events[1].1.kind.as_str()),
        ("alert-write-back", "alert.write_back")
    );
    assert_eq!(
        AlertWriteBack::decode(events[1].1.payload.as_slice())
            .unwrap()
            .alert_id,
        id
    );
    let again = store
        .resolve(
            P,
            &id,
            Resolution::Fraud,
            "miner",
            "palisade:ops",
            NOW + 2 * HOUR,
        )
        .await
        .unwrap();
    assert!(!again.changed);
    assert_eq!(
        outbox(&store).await.len(),
        before + 2,
        "a repeat publishes nothing"
    );
    assert!(
        store
            .resolve(P, &id, Resolution::Ignore, "", "x", NOW)
            .await
            .is_err()
    );
    assert!(
        store
            .resolve("partner-b", &id, Resolution::Fraud, "", "x", NOW)
            .await
            .is_err()
    );
    // Microsoft lagging behind ("active") does not undo a pending resolution.
    store
        .ingest(
            &[graph(1, "active", "high", "CryptoMining", NOW + 3 * HOUR)],
            NOW + 3 * HOUR,
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_alert(P, &id).await.unwrap().unwrap().status,
        AlertStatus::Resolved as i32
    );
    let done = store
        .record_write_back(&id, &WriteBackOutcome::Retrying("503".into()), NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.write_back_state, done.write_back_attempts),
        (WriteBackState::Pending as i32, 1)
    );
    let done = store
        .record_write_back(&id, &WriteBackOutcome::Confirmed, NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.write_back_state, WriteBackState::Confirmed as i32);
    let history = store
        .get_alert_with_history(P, &id)
        .await
        .unwrap()
        .unwrap()
        .history;
    let reasons: Vec<_> = history.iter().map(|t| t.reason.as_str()).collect();
    assert!(
        reasons.contains(&"resolved as fraud: miner")
            && reasons.contains(&"write-back confirmed by Microsoft"),
        "{reasons:?}"
    );
    // Response times: detected 30 h before NOW, resolved at NOW + 1 h: late.
    let times = store
        .response_times(P, NOW - 30 * 24 * HOUR, NOW + 24 * HOUR, 24 * HOUR)
        .await
        .unwrap();
    assert_eq!(times.resolved, 1);
    assert_eq!(times.average_ms, (31 * HOUR) as f64);
    assert_eq!(times.breaching.len(), 1);
}
backend_conformance!(
    resolve_is_one_transaction_and_idempotent,
    resolve_is_one_transaction_and_idempotent_body
);

async fn list_pages_filters_and_summarises_body(backend: TestBackend) {
    let store = store(&backend).await;
    let mut batch = Vec::new();
    for n in 0..25 {
        let (severity, kind) = if n % 2 == 0 {
            ("high", "CryptoMining")
        } else {
            ("low", "VM_AnomalousDeployment")
        };
        let status = if n % 5 == 0 { "resolved" } else { "active" };
        batch.push(graph(n, status, severity, kind, NOW - (n as i64) * HOUR));
    }
    store.ingest(&batch, NOW).await.unwrap();
    for order in [SortOrder::Descending, SortOrder::Ascending] {
        let mut seen = Vec::new();
        let mut query = ListQuery {
            page_size: 10,
            sort_field: AlertSortField::LastObserved,
            sort_order: order,
            ..Default::default()
        };
        loop {
            let (page, next) = store.list_alerts(P, &query).await.unwrap();
            seen.extend(page.iter().map(|a| a.last_observed_at.unwrap().seconds));
            if next.is_empty() {
                break;
            }
            query.page_token = next;
        }
        assert_eq!(seen.len(), 25);
        let mut sorted = seen.clone();
        sorted.sort();
        if order == SortOrder::Descending {
            sorted.reverse();
        }
        assert_eq!(seen, sorted);
    }
    let filtered = ListQuery {
        filter: AlertFilter {
            severities: vec![Severity::High as i32],
            alert_types: vec!["cryptomining".into()],
            statuses: vec![AlertStatus::Active as i32],
            ..Default::default()
        },
        page_size: 100,
        ..Default::default()
    };
    let (page, _) = store.list_alerts(P, &filtered).await.unwrap();
    assert_eq!(page.len(), 10, "13 high, 3 of them resolved");
    assert_eq!(store.count_alerts(P, &filtered).await.unwrap(), 10);
    let bad = ListQuery {
        page_token: "garbage".into(),
        ..Default::default()
    };
    assert!(store.list_alerts(P, &bad).await.is_err());
    let summary = store
        .daily_summary(P, NOW - 60 * 24 * HOUR, NOW)
        .await
        .unwrap();
    let crypto = summary
        .iter()
        .find(|s| s.alert_type == "CryptoMining")
        .unwrap();
    assert_eq!(
        (
            crypto.unresolved_alerts,
            crypto.affected_customers,
            crypto.affected_subscriptions,
            crypto.affected_partners
        ),
        (10, 3, 10, 1)
    );
}
backend_conformance!(
    list_pages_filters_and_summarises,
    list_pages_filters_and_summarises_body
);

async fn polls_and_webhooks_are_leased_to_one_owner_body(backend: TestBackend) {
    let store = store(&backend).await;
    store
        .put_ingestion(
            P,
            &IngestionSettings {
                graph_enabled: true,
                fraud_events_enabled: true,
                poll_interval_seconds: 60,
                webhook_url: String::new(),
            },
            NOW,
        )
        .await
        .unwrap();
    let a = store
        .claim_due_polls("a", NOW, NOW + 5_000, 10)
        .await
        .unwrap();
    assert_eq!(a.len(), 2);
    assert!(
        store
            .claim_due_polls("b", NOW + 1, NOW + 5_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased to a"
    );
    // a dies holding the fraudEvents lease; finishes the Graph poll.
    let graph = a.iter().find(|c| c.source == AlertSource::Graph).unwrap();
    assert!(
        store
            .finish_poll(
                graph,
                "a",
                &PollResult {
                    next_poll_at: NOW + 60_000,
                    cursor_ms: Some(NOW - 5),
                    error: None
                },
                NOW + 2
            )
            .await
            .unwrap()
    );
    let b = store
        .claim_due_polls("b", NOW + 5_001, NOW + 10_000, 10)
        .await
        .unwrap();
    assert_eq!(b.len(), 1, "only the expired lease moves");
    assert_eq!(b[0].source, AlertSource::FraudEvents);
    assert!(
        !store
            .finish_poll(
                &b[0],
                "a",
                &PollResult {
                    next_poll_at: 0,
                    cursor_ms: None,
                    error: None
                },
                NOW
            )
            .await
            .unwrap(),
        "a lost its lease"
    );
    let again = store
        .claim_due_polls("b", NOW + 60_000, NOW + 65_000, 10)
        .await
        .unwrap();
    assert_eq!(
        again
            .iter()
            .find(|c| c.source == AlertSource::Graph)
            .unwrap()
            .cursor_ms,
        Some(NOW - 5)
    );
    // A partner polled every second: its lease lasts one interval, not the configured 60 s,
    // so a dead replica's partner is taken over within two intervals.
    store
        .put_ingestion(
            "fast",
            &IngestionSettings {
                graph_enabled: true,
                poll_interval_seconds: 1,
                ..Default::default()
            },
            NOW,
        )
        .await
        .unwrap();
    let dead = store
        .claim_due_polls("dead", NOW, NOW + 60_000, 10)
        .await
        .unwrap();
    assert!(dead.iter().any(|c| c.partner_tenant_id == "fast"));
    let taken = store
        .claim_due_polls("alive", NOW + 1_001, NOW + 61_001, 10)
        .await
        .unwrap();
    assert!(
        taken.iter().any(|c| c.partner_tenant_id == "fast"),
        "{taken:?}"
    );

    assert!(
        store
            .insert_webhook(P, "sha", "azure-fraud-event-detected", b"{}", NOW)
            .await
            .unwrap()
    );
    assert!(
        !store
            .insert_webhook(P, "sha", "azure-fraud-event-detected", b"{}", NOW)
            .await
            .unwrap(),
        "replay"
    );
    let items = store.claim_webhooks(NOW, NOW + 1000, 10).await.unwrap();
    assert_eq!(items.len(), 1);
    assert!(
        store
            .claim_webhooks(NOW + 10, NOW + 1000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .claim_webhooks(NOW + 1001, NOW + 2000, 10)
            .await
            .unwrap()
            .len(),
        1,
        "an expired claim returns"
    );
    store.finish_webhook(&items[0].inbox_id, &[]).await.unwrap();
    assert_eq!(store.pending_webhooks().await.unwrap(), 0);
    assert_eq!(store.last_webhook_at(P).await.unwrap(), Some(NOW));
}
backend_conformance!(
    polls_and_webhooks_are_leased_to_one_owner,
    polls_and_webhooks_are_leased_to_one_owner_body
);

async fn the_relay_publishes_every_committed_event_once_body(backend: TestBackend) {
    let store = store(&backend).await;
    let batch: Vec<_> = (0..7)
        .map(|n| graph(n, "active", "high", "CryptoMining", NOW - HOUR))
        .collect();
    store.ingest(&batch, NOW).await.unwrap();
    let queue = palisade_queue::connect(&palisade_queue::QueueSettings {
        key_prefix: format!("relay-{}", uuid::Uuid::new_v4().simple()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut consumer = queue.consumer("alerts", "g", "c").await.unwrap();
    // Batches of 3: three rounds, in which a crash would leave the rest for the next relay.
    let relay = palisade_alert_ingest::outbox::BatchRelay::new(store.database().clone(), queue, 3);
    assert_eq!(relay.relay_once().await.unwrap(), 3);
    assert_eq!(relay.relay_once().await.unwrap(), 3);
    assert_eq!(relay.relay_once().await.unwrap(), 1);
    assert_eq!(relay.relay_once().await.unwrap(), 0);
    assert_eq!(relay.pending().await.unwrap(), 0);
    let got = consumer
        .next_batch(100, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    let ids: std::collections::HashSet<_> =
        got.iter().map(|d| d.envelope.message_id.clone()).collect();
    assert_eq!((got.len(), ids.len()), (7, 7));
}
backend_conformance!(
    the_relay_publishes_every_committed_event_once,
    the_relay_publishes_every_committed_event_once_body
);

/// The relay deletes its batch in the statement that takes it: a publish that fails must roll
/// that delete back. Redis refuses the XADDs for real here (the stream's key holds a string).
async fn a_failed_publish_leaves_the_batch_in_the_outbox_body(backend: TestBackend) {
    let store = store(&backend).await;
    let batch: Vec<_> = (0..5)
        .map(|n| graph(n, "active", "high", "CryptoMining", NOW - HOUR))
        .collect();
    store.ingest(&batch, NOW).await.unwrap();
    let redis = palisade_testkit::TestRedis::create().await;
    let prefix = redis.prefix().trim_end_matches(':').to_owned();
    let queue = palisade_queue::connect(&palisade_queue::QueueSettings {
        backend: palisade_queue::Backend::Redis,
        redis_url: Some(redis.url().to_owned().into()),
        key_prefix: prefix.clone(),
        allow_unsafe_eviction_policy: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let stream = format!("{{{prefix}:alerts}}:stream");
    let mut conn = redis.connection().await;
    let () = redis::cmd("SET")
        .arg(&stream)
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    let relay = palisade_alert_ingest::outbox::BatchRelay::new(store.database().clone(), queue, 3);
    assert!(relay.relay_once().await.is_err(), "the publish fails");
    assert_eq!(relay.pending().await.unwrap(), 5, "nothing was deleted");
    let () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(relay.relay_once().await.unwrap(), 3);
    assert_eq!(relay.relay_once().await.unwrap(), 2);
    assert_eq!(relay.pending().await.unwrap(), 0);
    let len: i64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 5);
}
backend_conformance!(
    a_failed_publish_leaves_the_batch_in_the_outbox,
    a_failed_publish_leaves_the_batch_in_the_outbox_body
);

/// Everything an ingest leaves behind, in a form two stores can be compared by: the rows (the
/// stored proto decoded, since protobuf maps encode in no fixed order), the history entries and
/// the outbox events (their payloads decoded; message ids and producer times differ by nature).
async fn footprint(store: &SqlStore) -> (Vec<String>, Vec<String>, Vec<String>) {
    use palisade_contracts::{alerts::v1::Alert, events::v1::AlertUpdated};
    let pool = store.database().pool();
    let rows = sqlx::query(
        "SELECT alert_id, status, severity, last_observed_at, resolved_at, write_back_state, enrich_state, \
         raw_graph, raw_fraud, created_at, updated_at, alert_proto FROM alerts ORDER BY alert_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let alert = Alert::decode(r.get::<Vec<u8>, _>(11).as_slice()).unwrap();
        let mut details: Vec<_> = alert.additional_details.iter().collect();
        details.sort();
        format!(
            "{} {} {} {} {:?} {} {} {:?} {:?} {} {} | {:?} {details:?}",
            r.get::<String, _>(0),
            r.get::<i64, _>(1),
            r.get::<i64, _>(2),
            r.get::<i64, _>(3),
            r.get::<Option<i64>, _>(4),
            r.get::<i64, _>(5),
            r.get::<i64, _>(6),
            r.get::<Option<String>, _>(7),
            r.get::<Option<String>, _>(8),
            r.get::<i64, _>(9),
            r.get::<i64, _>(10),
            Alert {
                additional_details: Default::default(),
                ..alert
            },
        )
    })
    .collect();
    let history = sqlx::query(
        "SELECT alert_id, from_status, to_status, actor, reason, at FROM alert_transitions ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        format!(
            "{} {}->{} {} {} {}",
            r.get::<String, _>(0),
            r.get::<i64, _>(1),
            r.get::<i64, _>(2),
            r.get::<String, _>(3),
            r.get::<String, _>(4),
            r.get::<i64, _>(5)
        )
    })
    .collect();
    let events = outbox(store)
        .await
        .into_iter()
        .map(|(topic, e)| {
            // Every alert event carries the alert as field 1; only updates add field 2.
            let payload = AlertUpdated::decode(e.payload.as_slice()).unwrap();
            let alert = payload.alert.unwrap();
            let mut details: Vec<_> = alert.additional_details.iter().collect();
            details.sort();
            format!(
                "{topic} {} {} {:?} {:?} {details:?}",
                e.kind,
                e.partner_tenant_id,
                payload.changed_fields,
                Alert {
                    additional_details: Default::default(),
                    ..alert.clone()
                },
            )
        })
        .collect();
    (rows, history, events)
}

async fn a_batch_ends_where_its_alerts_one_by_one_end_body(backend: TestBackend) {
    let connect = |schema: &'static str| {
        let settings = backend.settings();
        async move {
            let store = SqlStore::new(Database::connect(&settings, schema).await.unwrap());
            store.migrate().await.unwrap();
            store
        }
    };
    let batched = connect("alerts_batched").await;
    let single = connect("alerts_single").await;
    let kind = "networkConnectionsToCryptoMiningPools";
    let seed: Vec<_> = (1..=4)
        .map(|n| graph(n, "active", "high", kind, NOW - 3 * HOUR))
        .collect();
    for store in [&batched, &single] {
        store.ingest(&seed, NOW - 2 * HOUR).await.unwrap();
    }
    // The legacy shape of alert 4: merges into it (hit count, customer name, fraud id).
    let legacy_4 = model::from_fraud_event(
        P,
        serde_json::json!({
            "eventId": "s-4_e", "eventType": "NetworkConnectionsToCryptoMiningPools", "eventStatus": "Active",
            "customerTenantId": "c-1", "subscriptionId": "s-4", "hitCount": "7",
            "firstObserved": chrono::DateTime::from_timestamp_millis(seed[3].first_observed_at).unwrap()
                .naive_utc().format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
            "lastObserved": "2020-01-01T00:00:00", "IsTest": "false", "customerFriendlyName": "Contoso"
        }),
    )
    .unwrap();
    assert_eq!(legacy_4.fingerprint, seed[3].fingerprint);
    let batch = vec![
        // An update of a stored alert.
        graph(1, "active", "low", kind, NOW - HOUR),
        // A new alert, then the same alert again with more: duplicates within one batch.
        graph(5, "active", "high", kind, NOW - HOUR),
        graph(5, "active", "medium", kind, NOW - HOUR / 2),
        graph(5, "active", "medium", kind, NOW - HOUR / 2),
        // Resolved at Microsoft, then new activity after the resolution: reopened.
        graph(2, "resolved", "high", kind, NOW - 3 * HOUR),
        graph(2, "active", "high", kind, NOW - HOUR),
        // Nothing new.
        graph(3, "active", "high", kind, NOW - 3 * HOUR),
        legacy_4,
        // A second update of alert 1 in the same batch.
        graph(1, "active", "high", kind, NOW - HOUR / 4),
    ];
    let together = batched.ingest(&batch, NOW).await.unwrap();
    let mut one_by_one = Vec::new();
    for obs in &batch {
        let outcome = single.ingest(std::slice::from_ref(obs), NOW).await.unwrap();
        one_by_one.extend(outcome.applied);
    }
    let changes = |applied: &[palisade_alert_ingest::store::Applied]| {
        applied
            .iter()
            .map(|a| (a.alert.alert_id.clone(), a.change, a.changed_fields.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(changes(&together.applied), changes(&one_by_one));
    assert_eq!(
        together
            .applied
            .iter()
            .map(|a| a.change)
            .collect::<Vec<_>>(),
        [
            model::ChangeKind::Updated,
            model::ChangeKind::Raised,
            model::ChangeKind::Updated,
            model::ChangeKind::Resolved,
            model::ChangeKind::Reopened,
            model::ChangeKind::Updated,
            model::ChangeKind::Updated,
        ],
        "the repeat of alert 5 and the unchanged alert 3 raise nothing"
    );
    assert_eq!(
        together.written, 4,
        "alerts 1, 2, 4 and 5 are written once each"
    );
    let (rows, history, events) = footprint(&batched).await;
    assert_eq!((rows.len(), history.len(), events.len()), (5, 4 + 3, 4 + 7));
    assert_eq!(footprint(&single).await, (rows, history, events));
    // A replay of the batch (a re-read page) goes the same way on both sides: alerts 1, 2 and 5
    // change again, as their disagreeing observations within the page say; 3 and 4 stay put.
    let again = batched.ingest(&batch, NOW + 1).await.unwrap();
    let mut again_one_by_one = Vec::new();
    for obs in &batch {
        let outcome = single
            .ingest(std::slice::from_ref(obs), NOW + 1)
            .await
            .unwrap();
        again_one_by_one.extend(outcome.applied);
    }
    assert_eq!(changes(&again.applied), changes(&again_one_by_one));
    let moved: std::collections::BTreeSet<_> = again
        .applied
        .iter()
        .map(|a| a.alert.alert_id.clone())
        .collect();
    let expected: std::collections::BTreeSet<_> = [0, 1, 3]
        .iter()
        .map(|i: &usize| together.applied[*i].alert.alert_id.clone())
        .collect();
    assert_eq!(moved, expected, "only alerts 1, 2 and 5 change on a replay");
    assert_eq!(footprint(&batched).await, footprint(&single).await);
}
backend_conformance!(
    a_batch_ends_where_its_alerts_one_by_one_end,
    a_batch_ends_where_its_alerts_one_by_one_end_body
);

async fn alerts(store: &SqlStore) -> Vec<palisade_contracts::alerts::v1::Alert> {
    sqlx::query("SELECT alert_proto FROM alerts ORDER BY alert_id")
        .fetch_all(store.database().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            palisade_contracts::alerts::v1::Alert::decode(r.get::<Vec<u8>, _>(0).as_slice())
                .unwrap()
        })
        .collect()
}

/// Alerts of one type on one subscription, first observed at the same moment, on different
/// virtual machines: what the fingerprint covers is the same, Microsoft's ids are not.
fn twin(source: AlertSource, id: &str, vm: &str) -> model::Observation {
    let resource = format!(
        "/subscriptions/s-9/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{vm}"
    );
    match source {
        AlertSource::Graph => model::from_graph(
            P,
            serde_json::json!({
                "id": id, "alertType": "CryptoMining", "status": "active", "severity": "high",
                "customerTenantId": "c-9", "subscriptionId": "s-9",
                "firstObservedDateTime": "2025-06-15T10:00:00Z",
                "lastObservedDateTime": "2025-06-15T10:20:00Z",
                "affectedResources": [{"resourceId": resource, "resourceType": "AzureResource"}],
            }),
        ),
        _ => model::from_fraud_event(
            P,
            serde_json::json!({
                "eventId": format!("s-9_{id}"), "eventType": "CryptoMining", "eventStatus": "Active",
                "customerTenantId": "c-9", "subscriptionId": "s-9",
                "firstObserved": "2025-06-15T10:00:00", "lastObserved": "2025-06-15T10:20:00",
                // Partner Center's spelling of the same resource differs in case.
                "affectedResources": [{"azureResourceId": resource.to_uppercase(), "type": "Microsoft.Compute/virtualMachines"}],
            }),
        ),
    }
    .unwrap()
}

async fn alerts_alike_in_every_shared_field_are_all_kept_body(backend: TestBackend) {
    let store = store(&backend).await;
    let (g_a, g_b) = (
        twin(AlertSource::Graph, "g-a", "vm-a"),
        twin(AlertSource::Graph, "g-b", "vm-b"),
    );
    assert_eq!(g_a.fingerprint, g_b.fingerprint);
    // Two Graph alerts in one page are two alerts, not one whose Graph id flips between them.
    let raised = store
        .ingest(&[g_a.clone(), g_b.clone()], NOW)
        .await
        .unwrap();
    assert_eq!(
        raised
            .applied
            .iter()
            .map(|a| (a.change, a.alert.graph_alert_id.as_str()))
            .collect::<Vec<_>>(),
        [
            (model::ChangeKind::Raised, "g-a"),
            (model::ChangeKind::Raised, "g-b")
        ]
    );
    // The legacy shapes arrive in the other order, in polls of their own: each joins the alert
    // on its own virtual machine, not the first one that lacks a fraud event id.
    let (f_a, f_b) = (
        twin(AlertSource::FraudEvents, "e-a", "vm-a"),
        twin(AlertSource::FraudEvents, "e-b", "vm-b"),
    );
    store
        .ingest(std::slice::from_ref(&f_b), NOW + 1)
        .await
        .unwrap();
    store
        .ingest(std::slice::from_ref(&f_a), NOW + 2)
        .await
        .unwrap();
    // A third alike, seen through the legacy API first, then through Graph.
    let (f_c, g_c) = (
        twin(AlertSource::FraudEvents, "e-c", "vm-c"),
        twin(AlertSource::Graph, "g-c", "vm-c"),
    );
    store
        .ingest(std::slice::from_ref(&f_c), NOW + 3)
        .await
        .unwrap();
    store
        .ingest(std::slice::from_ref(&g_c), NOW + 4)
        .await
        .unwrap();
    let pairs = |alerts: Vec<palisade_contracts::alerts::v1::Alert>| {
        let mut pairs: Vec<_> = alerts
            .into_iter()
            .map(|a| (a.graph_alert_id, a.fraud_event_id))
            .collect();
        pairs.sort();
        pairs
    };
    let expected = [
        ("g-a".to_owned(), "s-9_e-a".to_owned()),
        ("g-b".into(), "s-9_e-b".into()),
        ("g-c".into(), "s-9_e-c".into()),
    ];
    assert_eq!(pairs(alerts(&store).await), expected);
    // Re-read pages, in any order and in one batch, find every alert where it is.
    let replay = store
        .ingest(&[f_c, g_b, f_a, g_c, f_b, g_a], NOW + 5)
        .await
        .unwrap();
    assert_eq!((replay.written, replay.applied.len()), (0, 0));
    assert_eq!(pairs(alerts(&store).await), expected);
}
backend_conformance!(
    alerts_alike_in_every_shared_field_are_all_kept,
    alerts_alike_in_every_shared_field_are_all_kept_body
);

/// A page of 1,200 alerts: more than one statement's worth on SQLite (200 alert rows, 500
/// history or outbox rows per statement) and one array statement per table on Postgres. Every
/// alert is stored once, with its raw payload, history entry and event; a second page that
/// updates half of them and resolves a quarter writes exactly those, keeping the raw payload of
/// the other source.
async fn a_page_larger_than_a_statement_is_stored_whole_body(backend: TestBackend) {
    let store = store(&backend).await;
    let kind = "networkConnectionsToCryptoMiningPools";
    let page: Vec<_> = (0..1_200)
        .map(|n| graph(n, "active", "high", kind, NOW - 2 * HOUR))
        .collect();
    let first = store.ingest(&page, NOW).await.unwrap();
    assert_eq!((first.written, first.applied.len()), (1_200, 1_200));
    let pool = store.database().pool().clone();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get::<i64, _>(0)
        }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM alerts WHERE raw_graph IS NOT NULL AND raw_fraud IS NULL")
            .await,
        1_200
    );
    assert_eq!(count("SELECT COUNT(*) FROM alert_transitions").await, 1_200);
    let events = outbox(&store).await;
    assert_eq!(events.len(), 1_200);
    assert!(
        events
            .iter()
            .all(|(t, e)| t == "alerts" && e.kind == "alert.raised")
    );
    let ids: std::collections::BTreeSet<_> = events.iter().map(|(_, e)| &e.message_id).collect();
    assert_eq!(
        ids.len(),
        1_200,
        "one event per alert, each its own message id"
    );

    // Half of them again: every other one with a lower severity, every fourth one resolved.
    let second: Vec<_> = (0..1_200)
        .filter(|n| n % 2 == 0)
        .map(|n| match n % 4 {
            0 => graph(n, "resolved", "high", kind, NOW - HOUR),
            _ => graph(n, "active", "low", kind, NOW - HOUR),
        })
        .collect();
    let updated = store.ingest(&second, NOW + 1).await.unwrap();
    assert_eq!(updated.written, 600);
    assert_eq!(
        updated
            .applied
            .iter()
            .filter(|a| a.change == model::ChangeKind::Resolved)
            .count(),
        300
    );
    assert_eq!(count("SELECT COUNT(*) FROM alerts").await, 1_200);
    assert_eq!(
        count("SELECT COUNT(*) FROM alerts WHERE resolved_at IS NOT NULL").await,
        300
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM alerts WHERE severity = 2 AND resolved_at IS NULL").await,
        300,
        "the updated alerts' columns follow their protos"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM alert_transitions").await,
        1_500,
        "one history entry per resolution"
    );
    assert_eq!(outbox(&store).await.len(), 1_800);
    // The legacy shape of alert 1: merged into the stored row, which keeps its Graph payload.
    let stored = store
        .get_alert(P, &first.applied[1].alert.alert_id)
        .await
        .unwrap()
        .unwrap();
    let legacy = model::from_fraud_event(
        P,
        serde_json::json!({
            "eventId": "s-1_e", "eventType": "NetworkConnectionsToCryptoMiningPools", "eventStatus": "Active",
            "customerTenantId": "c-1", "subscriptionId": "s-1", "hitCount": "9",
            "firstObserved": chrono::DateTime::from_timestamp_millis(page[1].first_observed_at).unwrap()
                .naive_utc().format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
            "lastObserved": "2020-01-01T00:00:00", "IsTest": "false", "customerFriendlyName": "Contoso"
        }),
    )
    .unwrap();
    store.ingest(&[legacy], NOW + 2).await.unwrap();
    let row = sqlx::query("SELECT raw_graph, raw_fraud FROM alerts WHERE alert_id = $1")
        .bind(stored.alert_id.clone())
        .fetch_one(store.database().pool())
        .await
        .unwrap();
    assert!(row.get::<Option<String>, _>(0).unwrap().contains("\"g-1\""));
    assert!(row.get::<Option<String>, _>(1).unwrap().contains("s-1_e"));
}
backend_conformance!(
    a_page_larger_than_a_statement_is_stored_whole,
    a_page_larger_than_a_statement_is_stored_whole_body
);
