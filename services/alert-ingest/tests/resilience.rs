//! Crashes, replicas and an unwell Microsoft: nothing is lost, nothing is doubled, nobody
//! hammers a throttled API.

mod support;

use std::{collections::HashSet, time::Duration};

use palisade_contracts::{
    alerts::v1::{self as pb, Resolution, WriteBackState},
    events::v1::AlertRaised,
};
use prost::Message;
use support::*;

fn incremental_graph_polls(world: &World, partner: &str) -> Vec<ms_sim::RequestRecord> {
    let mut polls: Vec<_> = world
        .sim
        .control()
        .requests(&ms_sim::RequestFilter {
            host: Some("graph".into()),
            tenant: Some(partner.to_owned()),
            path_contains: Some("securityAlerts".into()),
            ..Default::default()
        })
        .into_iter()
        .filter(|r| {
            r.method == "GET"
                && r.query.contains("lastObservedDateTime")
                && !r.query.contains("status")
        })
        .collect();
    polls.sort_by_key(|r| r.at_ms);
    polls
}

/// Graph reads by the periodic resync: the lookback window, not the cursor's, so their
/// `lastObservedDateTime ge` lies more than a day back.
fn graph_resyncs(world: &World, partner: &str) -> Vec<ms_sim::RequestRecord> {
    let day_ago = world.sim.control().now_millis() - 86_400_000;
    incremental_graph_polls(world, partner)
        .into_iter()
        .filter(|r| {
            url::form_urlencoded::parse(r.query.as_bytes())
                .find(|(k, _)| k == "$filter")
                .and_then(|(_, f)| {
                    let since = f.strip_prefix("lastObservedDateTime ge ")?.to_owned();
                    chrono::DateTime::parse_from_rfc3339(&since).ok()
                })
                .is_some_and(|since| since.timestamp_millis() < day_ago)
        })
        .collect()
}

/// Microsoft computes some detections from delayed usage data, so an alert can first appear in
/// Graph hours after its `lastObservedDateTime`, far behind the incremental poll's cursor.
/// With Graph the only source, the resync must still store it, announce it once however often
/// it runs, and remember when it ran across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_reaching_graph_hours_late_is_stored_and_announced_once() {
    let world = World::new().await;
    let partner = world.partner(0);
    let mut events = world.consumer("alerts").await;
    let mut settings = world.settings("a");
    settings.ingest.graph_resync_interval = Duration::from_secs(1);
    let a = world.start(settings).await;
    let mut client_a = client(a.grpc, Some(&world.admin)).await;
    world
        .configure(&mut client_a, &partner, true, false, 1)
        .await;
    let control = world.sim.control();
    // A fresh alert takes the cursor to about now, so the incremental poll's window starts
    // ten minutes ago.
    let fresh = control
        .raise_alert(&partner, &ms_sim::AlertSpec::default())
        .unwrap();
    let stored_with = |graph_id: String| {
        let mut c = client_a.clone();
        let p = partner.clone();
        async move {
            all_alerts(&mut c, &p)
                .await
                .into_iter()
                .filter(|a| a.graph_alert_id == graph_id)
                .collect::<Vec<_>>()
        }
    };
    eventually("the fresh alert is stored", || {
        let stored = stored_with(fresh.clone());
        async move { !stored.await.is_empty() }
    })
    .await;
    // Polls of one partner do not overlap: the second to start after the store began after
    // the cursor moved.
    let cursor_polls =
        || incremental_graph_polls(&world, &partner).len() - graph_resyncs(&world, &partner).len();
    let polls_before = cursor_polls();
    eventually("an incremental poll from the new cursor", || async {
        cursor_polls() > polls_before + 1
    })
    .await;

    let late = control
        .raise_alert(
            &partner,
            &ms_sim::AlertSpec {
                observed_seconds_ago: Some(3 * 3600),
                ..Default::default()
            },
        )
        .unwrap();
    eventually("the late alert is stored", || {
        let stored = stored_with(late.clone());
        async move { !stored.await.is_empty() }
    })
    .await;
    let resyncs = graph_resyncs(&world, &partner).len();
    eventually("two more resyncs ran after it was stored", || async {
        graph_resyncs(&world, &partner).len() >= resyncs + 2
    })
    .await;
    let stored = stored_with(late.clone()).await;
    assert_eq!(stored.len(), 1, "stored once");
    let late_alert = stored[0].clone();
    assert!(
        late_alert.fraud_event_id.is_empty(),
        "Graph was the only source"
    );
    assert_eq!(
        all_alerts(&mut client_a, &partner).await.len(),
        control.alerts(&partner).len(),
        "every simulator alert once, nothing doubled by the resyncs"
    );

    let mut raised = 0;
    loop {
        let batch = events
            .next_batch(200, Duration::from_secs(2))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        for d in &batch {
            if d.envelope.kind == "alert.raised"
                && AlertRaised::decode(d.envelope.payload.as_slice())
                    .unwrap()
                    .alert
                    .unwrap()
                    .alert_id
                    == late_alert.alert_id
            {
                raised += 1;
            }
        }
        events.ack_many(&batch).await.unwrap();
    }
    assert_eq!(raised, 1, "alert.raised once for the late alert");

    // A restarted (or another) replica knows when the last resync ran: with a longer
    // interval, it polls without resyncing.
    a.running.stop().await;
    let resyncs = graph_resyncs(&world, &partner).len();
    let mut settings = world.settings("b");
    settings.ingest.graph_resync_interval = Duration::from_secs(3600);
    let b = world.start(settings).await;
    let polls_before = incremental_graph_polls(&world, &partner).len();
    eventually("the new replica polled a few times", || async {
        incremental_graph_polls(&world, &partner).len() >= polls_before + 3
    })
    .await;
    assert_eq!(
        graph_resyncs(&world, &partner).len(),
        resyncs,
        "no resync repeated after the restart"
    );
    b.running.stop().await;
}

// The bursts below raise alerts of one type for one customer within the same millisecond, so
// several agree on everything the fingerprint covers; each must still be stored on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_mid_load_and_restarted_every_alert_is_there_once_and_announced() {
    let world = World::new().await;
    let partner = world.partner(0);
    let mut events = world.consumer("alerts").await;
    let a = world.start(world.settings("a")).await;
    let mut client_a = client(a.grpc, Some(&world.admin)).await;
    world
        .register_webhook(&partner, &a.webhook_url(&partner))
        .await;
    world
        .configure(&mut client_a, &partner, true, true, 1)
        .await;
    // Slow Graph and Partner Center down, so the kill lands between fetches and persists.
    let control = world.sim.control();
    control.inject_fault(ms_sim::Fault::new(ms_sim::FaultKind::Latency { ms: 150 }).fraction(0.5));
    for _ in 0..30 {
        control
            .raise_alert(&partner, &ms_sim::AlertSpec::default())
            .unwrap();
    }
    eventually("some alerts are in", || {
        let mut c = client_a.clone();
        let p = partner.clone();
        async move { all_alerts(&mut c, &p).await.len() >= 3 }
    })
    .await;
    // The crash: every task aborted where it stands (mid-poll, mid-webhook, mid-relay).
    a.running.kill().await;
    for _ in 0..10 {
        control
            .raise_alert(&partner, &ms_sim::AlertSpec::default())
            .unwrap();
    }

    let b = world.start(world.settings("b")).await;
    world
        .register_webhook(&partner, &b.webhook_url(&partner))
        .await;
    let mut client_b = client(b.grpc, Some(&world.admin)).await;
    let expected = control.alerts(&partner);
    eventually("every alert is stored with both ids", || {
        let mut c = client_b.clone();
        let (p, n) = (partner.clone(), expected.len());
        async move {
            let all = all_alerts(&mut c, &p).await;
            all.len() == n
                && all
                    .iter()
                    .all(|a| !a.graph_alert_id.is_empty() && !a.fraud_event_id.is_empty())
        }
    })
    .await;
    let stored = all_alerts(&mut client_b, &partner).await;
    let graph_ids: HashSet<_> = stored.iter().map(|a| a.graph_alert_id.clone()).collect();
    let expected_ids: HashSet<_> = expected
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(graph_ids, expected_ids, "every alert exactly once");
    let alert_ids: HashSet<_> = stored.iter().map(|a| a.alert_id.clone()).collect();
    let mut announced = HashSet::new();
    while !alert_ids.is_subset(&announced) {
        let batch = events
            .next_batch(200, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            !batch.is_empty(),
            "{} of {} alerts never announced",
            alert_ids.difference(&announced).count(),
            alert_ids.len()
        );
        for d in &batch {
            if d.envelope.kind == "alert.raised" {
                announced.insert(
                    AlertRaised::decode(d.envelope.payload.as_slice())
                        .unwrap()
                        .alert
                        .unwrap()
                        .alert_id,
                );
            }
        }
        events.ack_many(&batch).await.unwrap();
    }

    // A resolution survives a crash too: Microsoft is down, the replica dies, another
    // replica finishes the write-back once Microsoft is back.
    control.clear_faults();
    let target = stored
        .iter()
        .find(|a| a.status == pb::AlertStatus::Active as i32)
        .unwrap()
        .clone();
    control.inject_fault(
        ms_sim::Fault::new(ms_sim::FaultKind::Status { status: 503 }).path(&target.graph_alert_id),
    );
    client_b
        .resolve_alert(pb::ResolveAlertRequest {
            partner_tenant_id: partner.clone(),
            alert_id: target.alert_id.clone(),
            resolution: Resolution::Legitimate as i32,
            note: "planned load test".into(),
        })
        .await
        .unwrap();
    eventually("Microsoft refused at least once", || async {
        world
            .sim
            .control()
            .requests(&ms_sim::RequestFilter {
                path_contains: Some(target.graph_alert_id.clone()),
                ..Default::default()
            })
            .iter()
            .any(|r| r.method == "PATCH" && r.status == 503)
    })
    .await;
    b.running.kill().await;
    control.clear_faults();
    let c = world.start(world.settings("c")).await;
    let mut client_c = client(c.grpc, Some(&world.admin)).await;
    eventually("the write-back is confirmed after the crash", || {
        let mut cl = client_c.clone();
        let (p, id) = (partner.clone(), target.alert_id.clone());
        async move {
            cl.get_alert(pb::GetAlertRequest {
                partner_tenant_id: p,
                alert_id: id,
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
        .find(|a| a["id"] == target.graph_alert_id.as_str())
        .unwrap();
    assert_eq!(at_microsoft["resolvedReason"], "legitimate");
    assert_eq!(
        all_alerts(&mut client_c, &partner).await.len(),
        expected.len()
    );
    c.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_poll_each_partner_once_per_interval() {
    let world = World::new().await;
    let a = world.start(world.settings("a")).await;
    let b = world.start(world.settings("b")).await;
    let mut client = client(a.grpc, Some(&world.admin)).await;
    let partners = [world.partner(0), world.partner(1)];
    for p in &partners {
        world.configure(&mut client, p, true, false, 2).await;
    }
    eventually("each partner was polled several times", || async {
        partners
            .iter()
            .all(|p| incremental_graph_polls(&world, p).len() >= 4)
    })
    .await;
    a.running.stop().await;
    b.running.stop().await;
    for p in &partners {
        let polls = incremental_graph_polls(&world, p);
        for pair in polls.windows(2) {
            let gap = pair[1].at_ms - pair[0].at_ms;
            assert!(
                gap >= 1500,
                "partner {p} polled twice within one 2 s interval ({gap} ms apart)"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_and_server_errors_are_waited_out_without_tight_loops() {
    let world = World::new().await;
    let partner = world.partner(0);
    let control = world.sim.control();
    control.inject_fault(
        ms_sim::Fault::new(ms_sim::FaultKind::Throttle {
            retry_after_secs: 2,
        })
        .on(ms_sim::Host::Graph)
        .tenant(&partner)
        .times(2),
    );
    control.inject_fault(
        ms_sim::Fault::new(ms_sim::FaultKind::Status { status: 500 })
            .on(ms_sim::Host::PartnerCenter)
            .path("fraudEvents")
            .times(2),
    );
    control.inject_fault(
        ms_sim::Fault::new(ms_sim::FaultKind::Malformed)
            .on(ms_sim::Host::PartnerCenter)
            .path("fraudEvents")
            .times(1),
    );
    let a = world.start(world.settings("a")).await;
    let mut client = client(a.grpc, Some(&world.admin)).await;
    world.configure(&mut client, &partner, true, true, 1).await;
    let expected = control.alerts(&partner).len();
    eventually("ingestion completes despite the faults", || {
        let mut c = client.clone();
        let p = partner.clone();
        async move {
            let all = all_alerts(&mut c, &p).await;
            all.len() == expected
                && all
                    .iter()
                    .all(|a| !a.fraud_event_id.is_empty() && !a.graph_alert_id.is_empty())
        }
    })
    .await;
    a.running.stop().await;
    for host in ["graph", "partner_center"] {
        let mut requests = control.requests(&ms_sim::RequestFilter {
            host: Some(host.into()),
            tenant: Some(partner.clone()),
            ..Default::default()
        });
        // A retry repeats the same path; other calls to the host (enrichment lookups) run
        // concurrently and may follow a failure at once, so pairs are taken per path.
        requests.sort_by(|a, b| a.path.cmp(&b.path).then(a.at_ms.cmp(&b.at_ms)));
        for pair in requests.windows(2).filter(|p| p[0].path == p[1].path) {
            let gap = pair[1].at_ms - pair[0].at_ms;
            match pair[0].status {
                429 => assert!(
                    gap >= 1900,
                    "{host}: retried {gap} ms after a 429 with Retry-After: 2"
                ),
                500..=599 => assert!(
                    gap >= 80,
                    "{host}: retried {gap} ms after a {}",
                    pair[0].status
                ),
                _ => {}
            }
        }
        assert!(
            requests.iter().any(|r| r.status == 429 || r.status >= 500),
            "{host}: the faults fired"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enrichment_fills_customer_reseller_and_subscription_and_its_failures_never_block_ingestion()
 {
    let world = World::new().await;
    let partner = world.partner(0);
    let control = world.sim.control();
    // Partner Center's customer API is down: alerts must still be ingested.
    control.inject_fault(
        ms_sim::Fault::new(ms_sim::FaultKind::Status { status: 500 })
            .on(ms_sim::Host::PartnerCenter)
            .path("/customers"),
    );
    let a = world.start(world.settings("a")).await;
    let mut client = client(a.grpc, Some(&world.admin)).await;
    world.configure(&mut client, &partner, true, false, 1).await;
    let expected = control.alerts(&partner).len();
    eventually("ingested without enrichment", || {
        let mut c = client.clone();
        let p = partner.clone();
        async move { all_alerts(&mut c, &p).await.len() == expected }
    })
    .await;
    assert!(
        all_alerts(&mut client, &partner)
            .await
            .iter()
            .all(|a| !a.enriched && a.customer_domain.is_empty())
    );
    control.clear_faults();
    eventually("every alert enriched once Partner Center is back", || {
        let mut c = client.clone();
        let p = partner.clone();
        async move { all_alerts(&mut c, &p).await.iter().all(|a| a.enriched) }
    })
    .await;
    let scenario = world.sim.scenario().partners[0].clone();
    for alert in all_alerts(&mut client, &partner).await {
        assert!(
            !alert.customer_name.is_empty() && !alert.customer_domain.is_empty(),
            "{alert:?}"
        );
        assert!(
            !alert.subscription_name.is_empty(),
            "the Azure plan is found by its entitlementId: {alert:?}"
        );
        let index = (0..scenario.customer_count).find(|i| {
            scenario
                .customer(*i)
                .is_some_and(|c| c.tenant_id == alert.customer_tenant_id)
        });
        let customer = scenario.customer(index.unwrap()).unwrap();
        assert_eq!(alert.customer_name, customer.display_name);
        if let Some(reseller) = &customer.reseller {
            assert_eq!(
                (
                    alert.reseller_tenant_id.as_str(),
                    alert.reseller_name.as_str()
                ),
                (reseller.tenant_id.as_str(), reseller.name.as_str())
            );
            assert!(!alert.reseller_mpn_id.is_empty());
        }
    }
    a.running.stop().await;
}
