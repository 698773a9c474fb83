//! alert-ingest end to end: ms-sim over real HTTP, the real token broker, Postgres and Redis.

mod support;

use std::collections::{HashMap, HashSet};

use palisade_auth::Scope;
use palisade_contracts::{
    alerts::v1::{self as pb, AlertStatus, Resolution, WriteBackState},
    events::v1::AlertRaised,
};
use prost::Message;
use support::*;

fn by_graph_id(alerts: &[pb::Alert]) -> HashMap<String, pb::Alert> {
    alerts
        .iter()
        .map(|a| (a.graph_alert_id.clone(), a.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poll_webhook_and_legacy_collapse_to_one_alert_each_with_every_quirk_parsed() {
    let world = World::new().await;
    let instance = world.start(world.settings("r1")).await;
    let partner = world.partner(0);
    let mut client = client(instance.grpc, Some(&world.admin)).await;
    let mut events = world.consumer("alerts").await;
    // Palisade registers its own receiver with Partner Center.
    client
        .configure_ingestion(pb::ConfigureIngestionRequest {
            partner_tenant_id: partner.clone(),
            settings: Some(pb::IngestionSettings {
                graph_enabled: true,
                fraud_events_enabled: true,
                poll_interval_seconds: 1,
                webhook_url: instance.webhook_url(&partner),
            }),
        })
        .await
        .unwrap();

    // A new alert arrives through all three doors: the webhook, the Graph poll and fraudEvents.
    let raised = world
        .sim
        .control()
        .raise_alert(
            &partner,
            &ms_sim::AlertSpec {
                alert_type: Some("BrandNewType_Preview".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let expected = world.sim.control().alerts(&partner);
    eventually("every simulator alert is stored with both its ids", || {
        let mut client = client.clone();
        let (partner, expected) = (partner.clone(), expected.clone());
        async move {
            let stored = all_alerts(&mut client, &partner).await;
            stored.len() == expected.len()
                && stored
                    .iter()
                    .all(|a| !a.graph_alert_id.is_empty() && !a.fraud_event_id.is_empty())
        }
    })
    .await;
    eventually("the webhook was delivered", || async {
        world
            .sim
            .control()
            .webhook_deliveries()
            .iter()
            .any(|d| d.delivered)
    })
    .await;

    let stored = all_alerts(&mut client, &partner).await;
    assert_eq!(
        stored.len(),
        expected.len(),
        "one alert per detection, whatever the doors"
    );
    let fingerprints: HashSet<_> = stored.iter().map(|a| a.fingerprint.clone()).collect();
    assert_eq!(fingerprints.len(), stored.len());
    let stored = by_graph_id(&stored);
    for e in &expected {
        let a = &stored[e["id"].as_str().unwrap()];
        // Verbatim type; Graph's exact times (7 digits, Z) equal fraudEvents' zoneless ones.
        assert_eq!(a.alert_type, e["alertType"].as_str().unwrap());
        let is_test = match &e["isTest"] {
            serde_json::Value::String(s) => s == "true",
            v => v.as_bool().unwrap(),
        };
        assert_eq!(a.is_test, is_test);
        // hitCount only comes from fraudEvents, as a string.
        assert!(a.hit_count >= 1, "{a:?}");
        assert_eq!(
            a.status == AlertStatus::Resolved as i32,
            e["status"] == "resolved",
            "{}",
            e["id"]
        );
        if e["status"] == "resolved" {
            assert_eq!(
                a.resolution,
                match e["resolvedReason"].as_str().unwrap() {
                    "fraud" => Resolution::Fraud as i32,
                    "ignore" => Resolution::Ignore as i32,
                    _ => Resolution::Legitimate as i32,
                }
            );
            assert_eq!(a.write_back_state, WriteBackState::NotNeeded as i32);
        }
    }
    let newest = &stored[&raised];
    assert_eq!(newest.alert_type, "BrandNewType_Preview");
    let listed = client
        .list_alerts(pb::ListAlertsRequest {
            partner_tenant_id: partner.clone(),
            filter: Some(pb::AlertFilter {
                alert_types: vec!["brandnewtype_preview".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.alerts.len(), 1, "types compare case-insensitively");

    // History: Microsoft's activity log (fraudEvents' JSON-in-a-string) and our transitions.
    let resolved_seed = stored
        .values()
        .find(|a| a.status == AlertStatus::Resolved as i32)
        .unwrap();
    let full = client
        .get_alert(pb::GetAlertRequest {
            partner_tenant_id: partner.clone(),
            alert_id: resolved_seed.alert_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    assert!(
        full.history
            .iter()
            .any(|t| t.reason == "microsoft activity log"),
        "{:?}",
        full.history
    );
    assert!(
        full.history
            .iter()
            .any(|t| t.reason.starts_with("first seen through"))
    );

    // Every alert was announced at least once.
    let mut raised_ids = HashSet::new();
    while raised_ids.len() < expected.len() {
        let batch = events
            .next_batch(100, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            !batch.is_empty(),
            "missing alert.raised events: {} of {}",
            raised_ids.len(),
            expected.len()
        );
        for d in &batch {
            if d.envelope.kind == "alert.raised" {
                let alert = AlertRaised::decode(d.envelope.payload.as_slice())
                    .unwrap()
                    .alert
                    .unwrap();
                assert!(!alert.fingerprint.is_empty());
                raised_ids.insert(alert.alert_id);
            }
        }
        events.ack_many(&batch).await.unwrap();
    }

    // Status and the daily summary agree with what is stored.
    let status = client
        .get_ingestion_status(pb::GetIngestionStatusRequest {
            partner_tenant_id: partner.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.last_webhook_at.is_some());
    assert!(
        status
            .sources
            .iter()
            .all(|s| s.last_success_at.is_some() && s.last_error.is_empty()),
        "{status:?}"
    );
    let summary = client
        .get_daily_summary(pb::GetDailySummaryRequest {
            partner_tenant_id: partner.clone(),
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    let open = expected
        .iter()
        .filter(|e| {
            e["status"] != "resolved" && !matches!(&e["isTest"], serde_json::Value::Bool(true))
        })
        .count() as u64;
    assert_eq!(summary.unresolved_alerts, open);
    instance.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resolution_is_written_back_through_faults_and_is_idempotent() {
    let world = World::new().await;
    let instance = world.start(world.settings("r1")).await;
    let partner = world.partner(0);
    let mut client = client(instance.grpc, Some(&world.admin)).await;
    world.configure(&mut client, &partner, true, false, 1).await;
    let id = world
        .sim
        .control()
        .raise_alert(&partner, &ms_sim::AlertSpec::default())
        .unwrap();
    eventually("the raised alert is polled", || {
        let mut client = client.clone();
        let (partner, id) = (partner.clone(), id.clone());
        async move {
            all_alerts(&mut client, &partner)
                .await
                .iter()
                .any(|a| a.graph_alert_id == id)
        }
    })
    .await;
    let alert = by_graph_id(&all_alerts(&mut client, &partner).await)[&id].clone();

    // Graph fails twice with 503, then throttles once: the write-back must still land.
    let control = world.sim.control();
    control.inject_fault(
        ms_sim::Fault::new(ms_sim::FaultKind::Status { status: 503 })
            .path(&id)
            .times(2),
    );
    control.inject_fault(
        ms_sim::Fault::new(ms_sim::FaultKind::Throttle {
            retry_after_secs: 1,
        })
        .path(&id)
        .times(1),
    );
    control.clear_requests();
    let resolve = || pb::ResolveAlertRequest {
        partner_tenant_id: partner.clone(),
        alert_id: alert.alert_id.clone(),
        resolution: Resolution::Fraud as i32,
        note: "crypto miner confirmed".into(),
    };
    let first = client
        .resolve_alert(resolve())
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    assert_eq!(first.write_back_state, WriteBackState::Pending as i32);
    eventually("Microsoft confirms the write-back", || {
        let mut client = client.clone();
        let (partner, alert_id) = (partner.clone(), alert.alert_id.clone());
        async move {
            client
                .get_alert(pb::GetAlertRequest {
                    partner_tenant_id: partner,
                    alert_id,
                })
                .await
                .unwrap()
                .into_inner()
                .alert
                .unwrap()
                .write_back_state
                == WriteBackState::Confirmed as i32
        }
    })
    .await;
    let at_microsoft = control
        .alerts(&partner)
        .into_iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap();
    assert_eq!(at_microsoft["status"], "resolved");
    assert_eq!(at_microsoft["resolvedReason"], "fraud");
    let patches: Vec<_> = control
        .requests(&ms_sim::RequestFilter {
            host: Some("graph".into()),
            path_contains: Some(id.clone()),
            ..Default::default()
        })
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert!(
        patches.len() >= 4,
        "two 503s, one 429, then success: {patches:?}"
    );
    assert_eq!(patches.last().unwrap().status, 200);

    // Idempotent: the same resolution again changes nothing and writes nothing back.
    let again = client
        .resolve_alert(resolve())
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    assert_eq!(again.write_back_state, WriteBackState::Confirmed as i32);
    let other = client
        .resolve_alert(pb::ResolveAlertRequest {
            resolution: Resolution::Legitimate as i32,
            ..resolve()
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::FailedPrecondition);
    // Polling afterwards does not reopen it: Microsoft says resolved too.
    let times = client
        .get_response_times(pb::GetResponseTimesRequest {
            partner_tenant_id: partner.clone(),
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(times.resolved_in_window >= 1);
    assert_eq!(times.requirement_seconds, 86_400.0);
    // The same numbers on /metrics, for the dashboard and alert rules.
    let core = &instance.running.core;
    core.refresh_gauges().await.unwrap();
    let label = palisade_alert_ingest::engine::PartnerLabel {
        partner_tenant_id: partner.clone(),
    };
    assert_eq!(
        core.metrics.response_avg30d.get_or_create(&label).get(),
        times.average_response_seconds
    );
    assert_eq!(
        core.metrics.unresolved_over_24h.get_or_create(&label).get() as u64,
        times.unresolved_older_than_requirement
    );
    instance.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_of_another_partner_is_denied_on_every_rpc() {
    let world = World::new().await;
    let instance = world.start(world.settings("r1")).await;
    let (mine, theirs) = (world.partner(0), world.partner(1));
    let other = world
        .credential(&[&theirs], &[Scope::AlertsRead, Scope::AlertsWrite])
        .await;
    for (secret, code) in [
        (Some(other.as_str()), tonic::Code::PermissionDenied),
        (None, tonic::Code::Unauthenticated),
    ] {
        let mut c = client(instance.grpc, secret).await;
        let p = mine.clone();
        let codes = vec![
            c.list_alerts(pb::ListAlertsRequest {
                partner_tenant_id: p.clone(),
                ..Default::default()
            })
            .await
            .err(),
            c.get_alert(pb::GetAlertRequest {
                partner_tenant_id: p.clone(),
                alert_id: "x".into(),
            })
            .await
            .err(),
            c.resolve_alert(pb::ResolveAlertRequest {
                partner_tenant_id: p.clone(),
                alert_id: "x".into(),
                resolution: 1,
                note: String::new(),
            })
            .await
            .err(),
            c.bulk_resolve(pb::BulkResolveRequest {
                partner_tenant_id: p.clone(),
                resolution: 3,
                ..Default::default()
            })
            .await
            .err(),
            c.get_daily_summary(pb::GetDailySummaryRequest {
                partner_tenant_id: p.clone(),
                as_of: None,
            })
            .await
            .err(),
            c.get_response_times(pb::GetResponseTimesRequest {
                partner_tenant_id: p.clone(),
                as_of: None,
            })
            .await
            .err(),
            c.watch_alerts(pb::WatchAlertsRequest {
                partner_tenant_id: p.clone(),
                filter: None,
            })
            .await
            .err(),
            c.configure_ingestion(pb::ConfigureIngestionRequest {
                partner_tenant_id: p.clone(),
                settings: None,
            })
            .await
            .err(),
            c.get_ingestion_status(pb::GetIngestionStatusRequest {
                partner_tenant_id: p.clone(),
            })
            .await
            .err(),
        ];
        for (i, status) in codes.into_iter().enumerate() {
            assert_eq!(status.expect("denied").code(), code, "rpc #{i}");
        }
    }
    // A read-only credential of the right partner may read but not resolve.
    let reader = world.credential(&[&mine], &[Scope::AlertsRead]).await;
    let mut c = client(instance.grpc, Some(&reader)).await;
    c.list_alerts(pb::ListAlertsRequest {
        partner_tenant_id: mine.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let denied = c
        .resolve_alert(pb::ResolveAlertRequest {
            partner_tenant_id: mine,
            alert_id: "x".into(),
            resolution: 1,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    instance.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_resolve_streams_progress_and_watchers_see_every_change() {
    let world = World::new().await;
    let instance = world.start(world.settings("r1")).await;
    let partner = world.partner(0);
    let mut client = client(instance.grpc, Some(&world.admin)).await;
    world.configure(&mut client, &partner, true, false, 1).await;
    let expected = world.sim.control().alerts(&partner).len();
    eventually("the seeded alerts are in", || {
        let mut c = client.clone();
        let p = partner.clone();
        async move { all_alerts(&mut c, &p).await.len() == expected }
    })
    .await;
    let day_ago = chrono::Utc::now().timestamp() - 86_400;
    let old_open: HashSet<String> = all_alerts(&mut client, &partner)
        .await
        .into_iter()
        .filter(|a| {
            a.status != AlertStatus::Resolved as i32
                && a.last_observed_at.unwrap().seconds < day_ago
        })
        .map(|a| a.alert_id)
        .collect();
    assert!(!old_open.is_empty());
    let mut watch = client
        .watch_alerts(pb::WatchAlertsRequest {
            partner_tenant_id: partner.clone(),
            filter: Some(pb::AlertFilter {
                statuses: vec![AlertStatus::Resolved as i32],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let request = |dry_run| pb::BulkResolveRequest {
        partner_tenant_id: partner.clone(),
        filter: None,
        older_than_seconds: 86_400,
        resolution: Resolution::Ignore as i32,
        note: "stale".into(),
        dry_run,
    };
    let mut dry = client
        .bulk_resolve(request(true))
        .await
        .unwrap()
        .into_inner();
    let only = dry.message().await.unwrap().unwrap();
    assert_eq!(only.progress.unwrap().total, old_open.len() as u64);
    assert!(dry.message().await.unwrap().is_none());

    let mut stream = client
        .bulk_resolve(request(false))
        .await
        .unwrap()
        .into_inner();
    let mut resolved = HashSet::new();
    let mut last = None;
    while let Some(progress) = stream.message().await.unwrap() {
        resolved.extend(progress.resolved_alert_ids.clone());
        last = progress.progress;
    }
    let last = last.unwrap();
    assert_eq!(
        (last.done, last.total, last.failed),
        (old_open.len() as u64, old_open.len() as u64, 0)
    );
    assert_eq!(resolved, old_open);
    let mut watched = HashSet::new();
    while watched.len() < old_open.len() {
        let change = watch.message().await.unwrap().unwrap();
        if change.change == pb::AlertChangeKind::Resolved as i32 {
            watched.insert(change.alert.unwrap().alert_id);
        }
    }
    assert_eq!(watched, old_open);
    eventually("every bulk resolution is confirmed by Microsoft", || {
        let mut c = client.clone();
        let (p, ids) = (partner.clone(), old_open.clone());
        async move {
            all_alerts(&mut c, &p)
                .await
                .iter()
                .filter(|a| ids.contains(&a.alert_id))
                .all(|a| a.write_back_state == WriteBackState::Confirmed as i32)
        }
    })
    .await;
    let ignored_at_microsoft = world
        .sim
        .control()
        .alerts(&partner)
        .iter()
        .filter(|a| a["resolvedReason"] == "ignore")
        .count();
    assert!(ignored_at_microsoft >= old_open.len());
    instance.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_legacy_only_alert_is_written_back_with_the_fraud_events_post_and_one_request_id() {
    let world = World::new().await;
    let instance = world.start(world.settings("r1")).await;
    let partner = world.partner(1);
    let mut client = client(instance.grpc, Some(&world.admin)).await;
    world.configure(&mut client, &partner, false, true, 1).await;
    let id = world
        .sim
        .control()
        .raise_alert(&partner, &ms_sim::AlertSpec::default())
        .unwrap();
    let expected = world.sim.control().alerts(&partner);
    let raised = expected
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap()
        .clone();
    eventually("the legacy poll stored every alert", || {
        let mut c = client.clone();
        let p = partner.clone();
        let n = expected.len();
        async move { all_alerts(&mut c, &p).await.len() == n }
    })
    .await;
    let subscription = raised["subscriptionId"].as_str().unwrap().to_owned();
    let alert = all_alerts(&mut client, &partner)
        .await
        .into_iter()
        .find(|a| {
            a.subscription_id == subscription
                && a.status == AlertStatus::Active as i32
                && a.graph_alert_id.is_empty()
        })
        .expect("the raised alert, known only to fraudEvents");
    let control = world.sim.control();
    control.inject_fault(
        ms_sim::Fault::new(ms_sim::FaultKind::Status { status: 503 })
            .path(&format!("subscription/{subscription}/status"))
            .times(1),
    );
    client
        .resolve_alert(pb::ResolveAlertRequest {
            partner_tenant_id: partner.clone(),
            alert_id: alert.alert_id.clone(),
            resolution: Resolution::Legitimate as i32,
            note: "our own load test".into(),
        })
        .await
        .unwrap();
    eventually("confirmed", || {
        let mut c = client.clone();
        let (p, a) = (partner.clone(), alert.alert_id.clone());
        async move {
            c.get_alert(pb::GetAlertRequest {
                partner_tenant_id: p,
                alert_id: a,
            })
            .await
            .unwrap()
            .into_inner()
            .alert
            .unwrap()
            .write_back_state
                == WriteBackState::Confirmed as i32
        }
    })
    .await;
    let posts: Vec<_> = control
        .requests(&ms_sim::RequestFilter {
            path_contains: Some(format!("subscription/{subscription}/status")),
            ..Default::default()
        })
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(
        posts.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 200]
    );
    assert!(posts[0].ms_request_id.is_some());
    assert_eq!(
        posts[0].ms_request_id, posts[1].ms_request_id,
        "MS-RequestId is kept across a retry"
    );
    let at_microsoft = control
        .alerts(&partner)
        .into_iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap();
    assert_eq!(
        (
            at_microsoft["status"].as_str(),
            at_microsoft["resolvedReason"].as_str()
        ),
        (Some("resolved"), Some("legitimate"))
    );
    instance.running.stop().await;
}
