//! The store's conformance suite: the same bodies on Postgres and on SQLite, proving the one
//! SQL implementation means the same on both.

use palisade_contracts::notify::v1::{
    AdminAgent, ComplianceContact, DeliveryStatus, EscalationStep, PartnerSettings, Route,
    SecurityContact,
};
use palisade_notifier::store::*;
use palisade_storage::Database;
use palisade_testkit::{TestBackend, backend_conformance};
use prost::Message;

const P: &str = "partner-1";
const T: i64 = 1_800_000_000_000;

async fn store(backend: &TestBackend) -> SqlStore {
    let db = Database::connect(&backend.settings(), "notify")
        .await
        .unwrap();
    let store = SqlStore::new(db);
    assert!(store.migrate().await.unwrap() > 0);
    assert_eq!(store.migrate().await.unwrap(), 0, "migrations apply once");
    store
}

fn delivery(id: &str, at: i64) -> NewDelivery {
    NewDelivery {
        delivery_id: id.into(),
        partner_tenant_id: P.into(),
        event_id: "ev".into(),
        event_kind: "alert.raised".into(),
        fingerprint: "fp".into(),
        channel_kind: 2,
        channel_id: "ch".into(),
        recipient: "channel:ch".into(),
        target: "https://example.com/h".into(),
        language: "en".into(),
        subject: "s".into(),
        body: "{}".into(),
        next_attempt_at: at,
        created_at: at,
    }
}

fn group_add(key: &str, fp: &str, firing: bool) -> GroupAdd {
    GroupAdd {
        group_key: key.into(),
        route_id: "r".into(),
        fingerprint: fp.into(),
        kind: "alert.raised".into(),
        firing,
        severity: 3,
        summary: "{}".into(),
        group_wait_ms: 30_000,
        group_interval_ms: 300_000,
        repeat_interval_ms: 3_600_000,
    }
}

async fn people_round_trip(backend: TestBackend) {
    let s = store(&backend).await;
    assert!(s.get_security_contact(P).await.unwrap().is_none());
    let contact = SecurityContact {
        first_name: "Sécurité".into(),
        middle_name: String::new(),
        last_name: "チーム".into(),
        email: "soc@example.com".into(),
        phone: "+33123456789".into(),
        is_group: true,
        language: "fr".into(),
        updated_at: None,
    };
    s.set_security_contact(P, &contact, T).await.unwrap();
    s.set_security_contact(P, &contact, T + 1).await.unwrap();
    let got = s.get_security_contact(P).await.unwrap().unwrap();
    assert_eq!(got.last_name, "チーム");
    assert!(got.is_group);
    assert_eq!(
        palisade_contracts::time::to_millis(got.updated_at.as_ref().unwrap()),
        T + 1
    );
    assert!(
        s.get_security_contact("other").await.unwrap().is_none(),
        "scoped by partner"
    );

    let cc = ComplianceContact {
        name: "C".into(),
        email: "c@example.com".into(),
        phone: String::new(),
        language: "ja".into(),
    };
    s.set_compliance_contact(P, &cc, T).await.unwrap();
    assert_eq!(s.get_compliance_contact(P).await.unwrap().unwrap(), cc);

    for i in 0..5 {
        let agent = AdminAgent {
            agent_id: format!("a{i}"),
            display_name: format!("A{i}"),
            email: format!("a{i}@example.com"),
            language: "en".into(),
            time_zone: "UTC".into(),
            phone: String::new(),
        };
        s.upsert_admin_agent(P, &agent, T).await.unwrap();
    }
    let page1 = s.list_admin_agents(P, None, 2).await.unwrap();
    let page2 = s
        .list_admin_agents(P, Some(&page1[1].agent_id), 2)
        .await
        .unwrap();
    let page3 = s
        .list_admin_agents(P, Some(&page2[1].agent_id), 2)
        .await
        .unwrap();
    let ids: Vec<_> = page1
        .iter()
        .chain(&page2)
        .chain(&page3)
        .map(|a| a.agent_id.clone())
        .collect();
    assert_eq!(ids, vec!["a0", "a1", "a2", "a3", "a4"]);
    assert!(s.delete_admin_agent(P, "a0").await.unwrap());
    assert!(!s.delete_admin_agent(P, "a0").await.unwrap());
    assert!(
        s.list_admin_agents("other", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
backend_conformance!(people_round_trip, people_round_trip);

async fn channels_routes_and_settings(backend: TestBackend) {
    let s = store(&backend).await;
    let ch = ChannelRecord {
        channel_id: "ch1".into(),
        partner_tenant_id: P.into(),
        display_name: "hook".into(),
        kind: 2,
        target: "https://example.com/h".into(),
        language: "ja".into(),
        enabled: true,
        disabled_reason: String::new(),
        secret_sealed: Some(vec![1, 0, 255, 7]),
        secret_count: 1,
        failing_since: None,
        created_at: T,
    };
    s.insert_channel(&ch).await.unwrap();
    assert_eq!(s.get_channel(P, "ch1").await.unwrap().unwrap(), ch);
    assert!(
        s.get_channel("other", "ch1").await.unwrap().is_none(),
        "another partner's channel is invisible"
    );
    assert_eq!(
        s.record_channel_failure("ch1", T + 10).await.unwrap(),
        T + 10
    );
    assert_eq!(
        s.record_channel_failure("ch1", T + 20).await.unwrap(),
        T + 10,
        "failing since the first failure"
    );
    s.record_channel_success("ch1").await.unwrap();
    assert_eq!(
        s.record_channel_failure("ch1", T + 30).await.unwrap(),
        T + 30
    );
    s.disable_channel("ch1", "gone").await.unwrap();
    let disabled = s.get_channel(P, "ch1").await.unwrap().unwrap();
    assert!(!disabled.enabled);
    assert_eq!(disabled.disabled_reason, "gone");
    assert_eq!(s.list_channels(P, None, 10).await.unwrap().len(), 1);
    assert!(s.delete_channel(P, "ch1").await.unwrap());

    for (id, priority) in [("r2", 2), ("r1", 1), ("r3", 1)] {
        let route = Route {
            route_id: id.into(),
            display_name: id.into(),
            priority,
            ..Default::default()
        };
        s.insert_route(P, &route, T).await.unwrap();
    }
    let order: Vec<_> = s
        .list_routes(P)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.route_id)
        .collect();
    assert_eq!(order, vec!["r1", "r3", "r2"]);
    assert!(s.delete_route(P, "r1").await.unwrap());
    assert!(!s.delete_route("other", "r2").await.unwrap());

    let settings = PartnerSettings {
        time_zone: "Asia/Tokyo".into(),
        digest_hour: 9,
        group_wait_seconds: 10,
        group_interval_seconds: 60,
        repeat_interval_seconds: 600,
        escalation: vec![EscalationStep {
            after_minutes: 5,
            recipients: vec![1],
            channel_ids: vec!["x".into()],
        }],
        default_language: "ja".into(),
    };
    s.set_settings(P, &settings, T).await.unwrap();
    assert_eq!(s.get_settings(P).await.unwrap().unwrap(), settings);
    assert_eq!(s.list_digest_partners().await.unwrap(), vec![P.to_owned()]);
}
backend_conformance!(channels_routes_and_settings, channels_routes_and_settings);

/// A decider that plans `deliveries` and records the items it was shown.
fn planner(
    now: i64,
    deliveries: Vec<NewDelivery>,
    next_flush_at: Option<i64>,
    seen: &std::sync::Mutex<Vec<String>>,
) -> impl Fn(&GroupState) -> palisade_notifier::error::Result<Option<FlushCommit>> + Send + Sync + '_
{
    move |g: &GroupState| {
        *seen.lock().unwrap() = g.items.iter().map(|i| i.fingerprint.clone()).collect();
        Ok(Some(FlushCommit {
            now,
            deliveries: deliveries.clone(),
            notified_hash: Some(format!("h{}", g.flush_seq + 1)),
            firing: g.items.iter().filter(|i| i.firing).count() as i64,
            resolved: g.items.iter().filter(|i| !i.firing).count() as i64,
            next_flush_at,
        }))
    }
}

async fn events_apply_once_and_groups_flush_under_their_lock(backend: TestBackend) {
    let s = store(&backend).await;
    let key = format!("{P}/r");
    let due_group = DueGroup {
        group_key: key.clone(),
        partner_tenant_id: P.into(),
        route_id: "r".into(),
    };
    let event = |id: &str, fp: &str, firing: bool, now: i64| AppliedEvent {
        message_id: id.into(),
        partner_tenant_id: P.into(),
        now,
        item: Some(ItemUpdate {
            fingerprint: fp.into(),
            kind: "alert.raised".into(),
            open: firing,
            severity: 3,
            alert_type: "t".into(),
            customer_tenant_id: "c".into(),
            subscription_id: "s".into(),
            title: fp.into(),
        }),
        groups: vec![group_add(&key, fp, firing)],
        ..Default::default()
    };
    assert!(s.apply_event(&event("m1", "a", true, T)).await.unwrap());
    assert!(
        !s.apply_event(&event("m1", "a", true, T)).await.unwrap(),
        "a redelivered message applies once"
    );
    assert!(
        s.due_groups(T + 29_999, 10).await.unwrap().is_empty(),
        "group_wait"
    );
    assert_eq!(
        s.due_groups(T + 30_000, 10).await.unwrap(),
        vec![due_group.clone()]
    );
    let seen = std::sync::Mutex::new(Vec::new());
    assert!(
        !s.flush_group(
            &key,
            T + 29_999,
            &planner(T + 29_999, vec![delivery("d-early", T)], Some(T + 1), &seen)
        )
        .await
        .unwrap(),
        "not due yet"
    );
    assert!(seen.lock().unwrap().is_empty(), "nothing planned early");
    assert!(s.get_delivery("d-early").await.unwrap().is_none());

    // A batch reports which of its groups are due at its time: this one is, once waited.
    let late = s
        .apply_events(&[event("m2", "b", true, T + 30_000)], None)
        .await
        .unwrap();
    assert_eq!(
        (late.fresh, late.due, late.due_later),
        (vec![true], vec![due_group.clone()], false)
    );

    // The flush plans from the group as it stands under the lock: every item so far.
    let flushed = planner(
        T + 30_000,
        vec![delivery("d1", T)],
        Some(T + 3_630_000),
        &seen,
    );
    assert!(s.flush_group(&key, T + 30_000, &flushed).await.unwrap());
    assert_eq!(*seen.lock().unwrap(), vec!["a".to_owned(), "b".to_owned()]);
    assert!(s.get_delivery("d1").await.unwrap().is_some());
    // A second flusher (another replica) finds the group no longer due and plans nothing.
    seen.lock().unwrap().clear();
    let again = planner(T + 30_000, vec![delivery("d-again", T)], None, &seen);
    assert!(!s.flush_group(&key, T + 30_000, &again).await.unwrap());
    assert!(seen.lock().unwrap().is_empty());
    assert!(s.get_delivery("d-again").await.unwrap().is_none());
    let g = s.load_group(&key).await.unwrap().unwrap();
    assert_eq!(
        (
            g.flush_seq,
            g.last_notified_at,
            g.last_notified_hash.as_str(),
            g.next_flush_at
        ),
        (1, Some(T + 30_000), "h1", T + 3_630_000)
    );

    // A change after a notification is due group_interval after it, not repeat_interval.
    let change = s
        .apply_events(&[event("m3", "a", false, T + 40_000)], None)
        .await
        .unwrap();
    assert!(change.due.is_empty() && change.due_later);
    let g = s.load_group(&key).await.unwrap().unwrap();
    assert_eq!(g.next_flush_at, T + 330_000);

    // A decider that declines, or fails, writes nothing: the group stays due.
    let declined =
        |_: &GroupState| -> palisade_notifier::error::Result<Option<FlushCommit>> { Ok(None) };
    assert!(!s.flush_group(&key, T + 330_000, &declined).await.unwrap());
    let failing = |_: &GroupState| -> palisade_notifier::error::Result<Option<FlushCommit>> {
        Err(palisade_notifier::NotifierError::Corrupt(
            "planning failed".into(),
        ))
    };
    assert!(s.flush_group(&key, T + 330_000, &failing).await.is_err());
    assert_eq!(s.load_group(&key).await.unwrap().unwrap(), g);

    // An event racing a flush is never lost: either the flush saw it, or the group is left
    // due for the next one with the event in it.
    let seen_race = std::sync::Mutex::new(Vec::new());
    let slow = |g: &GroupState| {
        // Holds the group's lock a while, so that the event's batch meets it.
        std::thread::sleep(std::time::Duration::from_millis(200));
        planner(T + 330_000, Vec::new(), Some(T + 3_930_000), &seen_race)(g)
    };
    let racer = {
        let s = s.clone();
        let e = event("m-race", "c", true, T + 330_000);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            s.apply_events(&[e], None).await.unwrap()
        })
    };
    assert!(s.flush_group(&key, T + 330_000, &slow).await.unwrap());
    let raced = racer.await.unwrap();
    assert!(raced.fresh[0]);
    let g = s.load_group(&key).await.unwrap().unwrap();
    let told = seen_race.lock().unwrap().contains(&"c".to_owned());
    assert!(
        told || (g.items.iter().any(|i| i.fingerprint == "c")
            && g.next_flush_at <= T + 330_000 + 300_000),
        "the racing event was told or is still due: {g:?}"
    );
    if !told {
        // It landed after the flush: the flush ran on what it had, the event waits one
        // group_interval.
        assert_eq!(raced.due_later, raced.due.is_empty());
        let seen_next = std::sync::Mutex::new(Vec::new());
        let next = planner(g.next_flush_at, Vec::new(), Some(T + 9_999_999), &seen_next);
        assert!(s.flush_group(&key, g.next_flush_at, &next).await.unwrap());
        assert!(seen_next.lock().unwrap().contains(&"c".to_owned()));
    }

    // Closing keeps the sequence, so a reopened group never reuses a log entry.
    let g = s.load_group(&key).await.unwrap().unwrap();
    let seen_close = std::sync::Mutex::new(Vec::new());
    let close = planner(g.next_flush_at, vec![], None, &seen_close);
    let closed_seq = g.flush_seq + 1;
    // Due now: the close runs at the group's own due time.
    let at = g.next_flush_at.min(T + 9_999_999);
    assert!(s.flush_group(&key, at, &close).await.unwrap());
    let g = s.load_group(&key).await.unwrap().unwrap();
    assert!(g.items.is_empty() && g.last_notified_at.is_none() && g.next_flush_at == i64::MAX);
    assert_eq!(g.flush_seq, closed_seq);
    assert!(
        s.apply_event(&event("m4", "d", true, T + 10_000_000))
            .await
            .unwrap()
    );
    let g = s.load_group(&key).await.unwrap().unwrap();
    assert_eq!(
        (g.flush_seq, g.next_flush_at),
        (closed_seq, T + 10_030_000),
        "reopened: group_wait again"
    );
}
backend_conformance!(
    events_apply_once_and_groups_flush_under_their_lock,
    events_apply_once_and_groups_flush_under_their_lock
);

/// A batch flushes the groups it made due (a zero group wait or interval) in its own
/// transaction, through the same decider a lone flush uses; what the decider declines is left
/// due and reported.
async fn a_batch_flushes_the_groups_it_made_due(backend: TestBackend) {
    let s = store(&backend).await;
    let now_key = format!("{P}/now");
    let later_key = format!("{P}/later");
    let event = |id: &str, key: &str, wait: i64, now: i64| {
        let mut add = group_add(key, id, true);
        add.group_wait_ms = wait;
        add.group_interval_ms = wait;
        AppliedEvent {
            message_id: id.into(),
            partner_tenant_id: P.into(),
            now,
            groups: vec![add],
            ..Default::default()
        }
    };
    let seen = std::sync::Mutex::new(Vec::new());
    let plan = planner(T, vec![delivery("d-now", T)], Some(T + 3_600_000), &seen);
    let batch = s
        .apply_events(
            &[
                event("a", &now_key, 0, T),
                event("b", &later_key, 30_000, T),
            ],
            Some(&plan),
        )
        .await
        .unwrap();
    assert_eq!(batch.fresh, vec![true, true]);
    assert!(batch.due.is_empty(), "flushed with the batch");
    assert!(batch.due_later, "the other group waits");
    assert_eq!(*seen.lock().unwrap(), vec!["a".to_owned()]);
    assert!(s.get_delivery("d-now").await.unwrap().is_some());
    let g = s.load_group(&now_key).await.unwrap().unwrap();
    assert_eq!(
        (
            g.flush_seq,
            g.last_notified_at,
            g.last_notified_hash.as_str(),
            g.next_flush_at
        ),
        (1, Some(T), "h1", T + 3_600_000)
    );
    let later = s.load_group(&later_key).await.unwrap().unwrap();
    assert_eq!((later.flush_seq, later.next_flush_at), (0, T + 30_000));

    // Declined: nothing is written and the group is reported due.
    let declined =
        |_: &GroupState| -> palisade_notifier::error::Result<Option<FlushCommit>> { Ok(None) };
    let batch = s
        .apply_events(&[event("c", &now_key, 0, T + 1)], Some(&declined))
        .await
        .unwrap();
    assert_eq!(
        batch.due,
        vec![DueGroup {
            group_key: now_key.clone(),
            partner_tenant_id: P.into(),
            route_id: "r".into(),
        }]
    );
    let g = s.load_group(&now_key).await.unwrap().unwrap();
    assert_eq!((g.flush_seq, g.next_flush_at), (1, T));
    // Its own flush then tells both items.
    let next = planner(
        T + 1,
        vec![delivery("d-next", T)],
        Some(T + 3_600_001),
        &seen,
    );
    assert!(s.flush_group(&now_key, T + 1, &next).await.unwrap());
    assert_eq!(*seen.lock().unwrap(), vec!["a".to_owned(), "c".to_owned()]);
    assert_eq!(s.load_group(&now_key).await.unwrap().unwrap().flush_seq, 2);
}
backend_conformance!(
    a_batch_flushes_the_groups_it_made_due,
    a_batch_flushes_the_groups_it_made_due
);

async fn escalation_steps_move_once_and_acknowledgement_cancels(backend: TestBackend) {
    let s = store(&backend).await;
    let chain = PartnerSettings {
        escalation: vec![
            EscalationStep {
                after_minutes: 15,
                recipients: vec![3],
                channel_ids: vec![],
            },
            EscalationStep {
                after_minutes: 30,
                recipients: vec![],
                channel_ids: vec!["@phone".into()],
            },
        ],
        ..Default::default()
    };
    let start = AppliedEvent {
        message_id: "m1".into(),
        partner_tenant_id: P.into(),
        now: T,
        escalation: Some(EscalationStart {
            escalation_id: "e1".into(),
            fingerprint: "fp".into(),
            chain_proto: chain.encode_to_vec(),
            first_due_at: T + 900_000,
            context: "{}".into(),
        }),
        ..Default::default()
    };
    s.apply_event(&start).await.unwrap();
    // A second raise while the chain runs does not start another.
    let again = AppliedEvent {
        message_id: "m2".into(),
        escalation: Some(EscalationStart {
            escalation_id: "e2".into(),
            ..start.escalation.clone().unwrap()
        }),
        ..start.clone()
    };
    s.apply_event(&again).await.unwrap();
    assert!(s.due_escalations(T + 899_999, 10).await.unwrap().is_empty());
    let due = s.due_escalations(T + 900_000, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].escalation_id, "e1");
    assert!(
        s.commit_escalation_step("e1", 0, Some((1, T + 1_800_000)), &[delivery("step1", T)])
            .await
            .unwrap()
    );
    assert!(
        !s.commit_escalation_step("e1", 0, Some((1, T + 1_800_000)), &[delivery("dup", T)])
            .await
            .unwrap(),
        "a stale timer for step 0 does nothing"
    );
    assert!(s.get_delivery("dup").await.unwrap().is_none());
    assert!(!s.is_acknowledged(P, "fp").await.unwrap());
    assert_eq!(
        s.acknowledge(P, "fp", "mine", T + 1_000_000).await.unwrap(),
        1
    );
    assert!(s.is_acknowledged(P, "fp").await.unwrap());
    assert!(
        s.due_escalations(T + 9_999_999, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.get_escalation(P, "fp").await.unwrap().unwrap().state,
        "acknowledged"
    );

    // A resolve closes a running chain.
    let other = AppliedEvent {
        message_id: "m3".into(),
        escalation: Some(EscalationStart {
            escalation_id: "e3".into(),
            fingerprint: "fp2".into(),
            ..start.escalation.clone().unwrap()
        }),
        ..start.clone()
    };
    s.apply_event(&other).await.unwrap();
    s.apply_event(&AppliedEvent {
        message_id: "m4".into(),
        partner_tenant_id: P.into(),
        now: T,
        stop_escalation_for: Some("fp2".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        s.due_escalations(T + 9_999_999, 10)
            .await
            .unwrap()
            .is_empty()
    );

    s.snooze(P, "fp", T + 7 * 86_400_000).await.unwrap();
    assert_eq!(
        s.snoozed_until(P, "fp").await.unwrap(),
        Some(T + 7 * 86_400_000)
    );
    assert_eq!(s.snoozed_until("other", "fp").await.unwrap(), None);
}
backend_conformance!(
    escalation_steps_move_once_and_acknowledgement_cancels,
    escalation_steps_move_once_and_acknowledgement_cancels
);

async fn deliveries_lease_retry_dead_letter_and_redrive(backend: TestBackend) {
    let s = store(&backend).await;
    assert_eq!(
        s.insert_deliveries(&[delivery("d1", T), delivery("d2", T + 5_000)])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.insert_deliveries(&[delivery("d1", T)]).await.unwrap(),
        0,
        "planning is idempotent"
    );
    let claimed = s
        .claim_due(T, T + 60_000, 10, &EndpointRoom::default())
        .await
        .unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|d| d.delivery.delivery_id.as_str())
            .collect::<Vec<_>>(),
        vec!["d1"]
    );
    assert_eq!(claimed[0].status, DeliveryStatus::Sending as i32);
    assert!(
        s.claim_due(T + 1_000, T + 61_000, 10, &EndpointRoom::default())
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    // The sender died: after the lease the delivery is taken over.
    let retaken = s
        .claim_due(T + 60_000, T + 120_000, 10, &EndpointRoom::default())
        .await
        .unwrap();
    assert_eq!(retaken.len(), 2);
    let attempt = |n: u32, status: u32| AttemptRecord {
        delivery_id: "d1".into(),
        attempt: n,
        at: T + 60_000,
        http_status: status,
        error: format!("http {status}"),
        duration_ms: 12,
    };
    s.record_attempt(
        &attempt(1, 500),
        AttemptResult::RetryAt(T + 65_000),
        T + 60_000,
    )
    .await
    .unwrap();
    s.release(&[("d2", T + 70_000)], T + 60_000).await.unwrap();
    let d2 = s.get_delivery("d2").await.unwrap().unwrap();
    assert_eq!(
        (d2.status, d2.attempts, d2.delivery.next_attempt_at),
        (DeliveryStatus::Planned as i32, 0, T + 70_000)
    );
    let d1 = s.get_delivery("d1").await.unwrap().unwrap();
    assert_eq!(
        (d1.status, d1.attempts),
        (DeliveryStatus::Retrying as i32, 1)
    );
    assert_eq!(s.next_delivery_due().await.unwrap(), Some(T + 65_000));

    s.claim_due(T + 65_000, T + 125_000, 1, &EndpointRoom::default())
        .await
        .unwrap();
    s.record_attempt(&attempt(2, 503), AttemptResult::Dead, T + 65_000)
        .await
        .unwrap();
    let dead = s
        .list_deliveries(
            P,
            &DeliveryFilter {
                statuses: vec![DeliveryStatus::Dead as i32],
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].1.iter().map(|a| a.http_status).collect::<Vec<_>>(),
        vec![500, 503]
    );
    assert!(
        s.list_deliveries(
            "other",
            &DeliveryFilter {
                limit: 10,
                ..Default::default()
            }
        )
        .await
        .unwrap()
        .is_empty()
    );
    assert_eq!(
        s.redrive("other", &[], T + 70_000).await.unwrap(),
        0,
        "another partner cannot redrive"
    );
    assert_eq!(s.redrive(P, &[], T + 70_000).await.unwrap(), 1);
    let d1 = s.get_delivery("d1").await.unwrap().unwrap();
    assert_eq!(
        (d1.status, d1.attempts, d1.retry_base),
        (DeliveryStatus::Retrying as i32, 2, 2)
    );
    let filtered = s
        .list_deliveries(
            P,
            &DeliveryFilter {
                fingerprint: Some("fp".into()),
                channel_id: Some("ch".into()),
                after: Some("d1".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1, "keyset pagination after d1");
}
backend_conformance!(
    deliveries_lease_retry_dead_letter_and_redrive,
    deliveries_lease_retry_dead_letter_and_redrive
);

async fn digest_runs_once_per_local_day_with_microsofts_numbers(backend: TestBackend) {
    let s = store(&backend).await;
    for (i, (fp, customer, kind, open)) in [
        ("a1", "c1", "alert.raised", true),
        ("a2", "c1", "alert.raised", true),
        ("a3", "c2", "alert.updated", true),
        ("a4", "c3", "alert.resolved", false),
        ("compliance:mfa", "", "compliance.changed", true),
    ]
    .into_iter()
    .enumerate()
    {
        let e = AppliedEvent {
            message_id: format!("m{i}"),
            partner_tenant_id: P.into(),
            now: T,
            item: Some(ItemUpdate {
                fingerprint: fp.into(),
                kind: kind.into(),
                open,
                severity: 3,
                alert_type: "cryptoMining".into(),
                customer_tenant_id: customer.into(),
                subscription_id: format!("sub-{customer}"),
                title: format!("title {fp}"),
            }),
            digests: vec![DigestAdd {
                route_id: "r".into(),
                fingerprint: fp.into(),
                summary: "{}".into(),
            }],
            ..Default::default()
        };
        s.apply_event(&e).await.unwrap();
    }
    let stats = s.digest_stats(P, T + 25 * 3_600_000).await.unwrap();
    assert_eq!(
        (
            stats.open_alerts,
            stats.customers,
            stats.subscriptions,
            stats.overdue_alerts
        ),
        (3, 2, 2, 3)
    );
    assert_eq!(stats.per_alert_type, vec![("cryptoMining".to_owned(), 3)]);
    assert_eq!(
        stats.open_compliance_failures,
        vec!["title compliance:mfa".to_owned()]
    );
    let old = s.digest_stats(P, T + 61 * 86_400_000).await.unwrap();
    assert_eq!(old.open_alerts, 0, "only alerts active in the last 60 days");
    assert_eq!(s.list_digest_items(P).await.unwrap().len(), 5);
    assert!(
        s.commit_digest(P, "2027-01-15", T + 1, &[delivery("dg", T)])
            .await
            .unwrap()
    );
    assert!(
        !s.commit_digest(P, "2027-01-15", T + 2, &[delivery("dg2", T)])
            .await
            .unwrap(),
        "once per day"
    );
    assert!(s.get_delivery("dg2").await.unwrap().is_none());
    assert!(
        s.list_digest_items(P).await.unwrap().is_empty(),
        "collected items are consumed"
    );
}
backend_conformance!(
    digest_runs_once_per_local_day_with_microsofts_numbers,
    digest_runs_once_per_local_day_with_microsofts_numbers
);

async fn out_of_order_events_never_move_state_backwards(backend: TestBackend) {
    let s = store(&backend).await;
    let key = format!("{P}/r");
    let chain = PartnerSettings {
        escalation: vec![EscalationStep {
            after_minutes: 15,
            recipients: vec![1],
            channel_ids: vec![],
        }],
        ..Default::default()
    };
    let event = |id: &str, firing: bool, occurred: i64, escalate: bool| AppliedEvent {
        message_id: id.into(),
        partner_tenant_id: P.into(),
        now: T + 100_000,
        occurred_at: occurred,
        item: Some(ItemUpdate {
            fingerprint: "fp".into(),
            kind: "alert.raised".into(),
            open: firing,
            severity: 4,
            alert_type: "t".into(),
            customer_tenant_id: "c".into(),
            subscription_id: "s".into(),
            title: "x".into(),
        }),
        groups: vec![group_add(&key, "fp", firing)],
        escalation: escalate.then(|| EscalationStart {
            escalation_id: format!("e-{id}"),
            fingerprint: "fp".into(),
            chain_proto: chain.encode_to_vec(),
            first_due_at: T,
            context: "{}".into(),
        }),
        stop_escalation_for: (!firing).then(|| "fp".to_owned()),
        ..Default::default()
    };
    // The resolve (at T+10) is applied before the raise it follows (at T+5).
    s.apply_event(&event("resolve", false, T + 10, false))
        .await
        .unwrap();
    s.apply_event(&event("raise", true, T + 5, true))
        .await
        .unwrap();
    let g = s.load_group(&key).await.unwrap().unwrap();
    assert!(
        !g.items[0].firing,
        "the stale raise does not reopen the alert"
    );
    assert_eq!(s.digest_stats(P, T + 1000).await.unwrap().open_alerts, 0);
    assert!(
        s.due_escalations(T + 9_999_999, 10)
            .await
            .unwrap()
            .is_empty(),
        "nor start an escalation"
    );

    // In order, a raise then its resolve: the resolve wins and closes the chain.
    s.apply_event(&event("raise-2", true, T + 20, true))
        .await
        .unwrap();
    assert_eq!(s.due_escalations(T + 9_999_999, 10).await.unwrap().len(), 1);
    s.apply_event(&event("resolve-2", false, T + 30, false))
        .await
        .unwrap();
    assert!(
        s.due_escalations(T + 9_999_999, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A stale resolve does not close a chain started by a later raise.
    s.apply_event(&event("raise-3", true, T + 40, true))
        .await
        .unwrap();
    s.apply_event(&event("stale-resolve", false, T + 35, false))
        .await
        .unwrap();
    assert_eq!(s.due_escalations(T + 9_999_999, 10).await.unwrap().len(), 1);
    assert!(s.load_group(&key).await.unwrap().unwrap().items[0].firing);
}
backend_conformance!(
    out_of_order_events_never_move_state_backwards,
    out_of_order_events_never_move_state_backwards
);

async fn a_batch_ends_where_its_events_one_by_one_end(backend: TestBackend) {
    let s = store(&backend).await;
    let chain = PartnerSettings {
        escalation: vec![EscalationStep {
            after_minutes: 15,
            recipients: vec![1],
            channel_ids: vec![],
        }],
        ..Default::default()
    };
    // Duplicates, out-of-order times, two groups, a digest item and an escalation in the
    // middle (applied one statement at a time inside the batch).
    let events = |partner: &str| {
        let key = |g: &str| format!("{partner}/{g}");
        let event = |id: &str, fp: &str, g: &str, firing: bool, occurred: i64, now: i64| {
            let mut add = group_add(&key(g), fp, firing);
            add.summary = format!("{{\"id\":\"{id}\"}}");
            add.group_wait_ms = 30_000 - now % 1000;
            AppliedEvent {
                message_id: format!("{partner}-{id}"),
                partner_tenant_id: partner.into(),
                now,
                occurred_at: occurred,
                item: Some(ItemUpdate {
                    fingerprint: fp.into(),
                    kind: "alert.raised".into(),
                    open: firing,
                    severity: 3,
                    alert_type: format!("type-{id}"),
                    customer_tenant_id: "c".into(),
                    subscription_id: "s".into(),
                    title: id.into(),
                }),
                groups: vec![add],
                digests: vec![DigestAdd {
                    route_id: "d".into(),
                    fingerprint: fp.into(),
                    summary: id.into(),
                }],
                ..Default::default()
            }
        };
        let mut escalating = event("e", "fp-e", "g1", true, T + 7, T + 7);
        escalating.escalation = Some(EscalationStart {
            escalation_id: format!("esc-{partner}"),
            fingerprint: "fp-e".into(),
            chain_proto: chain.encode_to_vec(),
            first_due_at: T + 60_000,
            context: "{}".into(),
        });
        vec![
            event("a", "fp-1", "g1", true, T + 5, T + 1),
            event("b", "fp-1", "g1", false, T + 3, T + 2),
            event("a", "fp-1", "g1", true, T + 5, T + 3),
            event("c", "fp-2", "g2", true, T + 4, T + 4),
            escalating,
            event("d", "fp-1", "g1", false, T + 5, T + 8),
            event("f", "fp-2", "g1", true, T + 9, T + 9),
        ]
    };
    let mut one_by_one = Vec::new();
    for e in events("one") {
        one_by_one.push(s.apply_event(&e).await.unwrap());
    }
    let batched = s.apply_events(&events("all"), None).await.unwrap();
    assert_eq!(batched.fresh, one_by_one);
    assert_eq!(batched.fresh, [true, true, false, true, true, true, true]);
    assert!(
        batched.due.is_empty() && batched.due_later,
        "both groups wait about 30 s"
    );
    // And again: nothing is fresh twice, and nothing is touched.
    let again = s.apply_events(&events("all"), None).await.unwrap();
    assert!(again.fresh.iter().all(|f| !f));
    assert!(again.due.is_empty() && !again.due_later);
    for g in ["g1", "g2"] {
        let mut a = s.load_group(&format!("one/{g}")).await.unwrap().unwrap();
        let mut b = s.load_group(&format!("all/{g}")).await.unwrap().unwrap();
        a.group_key.clear();
        a.partner_tenant_id.clear();
        b.group_key.clear();
        b.partner_tenant_id.clear();
        assert_eq!(a, b, "group {g}");
    }
    assert_eq!(
        s.digest_stats("one", T + 10).await.unwrap(),
        s.digest_stats("all", T + 10).await.unwrap()
    );
    assert_eq!(
        s.list_digest_items("one").await.unwrap(),
        s.list_digest_items("all").await.unwrap()
    );
    let escalations = s.due_escalations(T + 9_999_999, 10).await.unwrap();
    assert_eq!(escalations.len(), 2, "one chain each: {escalations:?}");
}
backend_conformance!(
    a_batch_ends_where_its_events_one_by_one_end,
    a_batch_ends_where_its_events_one_by_one_end
);

/// A batch that flushes its groups at once (a zero group wait) keeps its items in memory until
/// the flush has decided, and writes only what the flush leaves. It must end exactly where
/// applying the same events and then flushing the group on its own ends: the decider sees the
/// same items, and the group keeps the same items (a resolved one told and gone, a notice told
/// and gone, a new firing one kept, an older event losing to a newer stored one).
async fn a_batch_that_flushes_ends_where_a_lone_flush_ends(backend: TestBackend) {
    let s = store(&backend).await;
    let event = |partner: &str, id: &str, fp: &str, firing: bool, occurred: i64| {
        let mut add = group_add(&format!("{partner}/g"), fp, firing);
        add.summary = format!("{{\"id\":\"{id}\"}}");
        add.group_wait_ms = 0;
        add.group_interval_ms = 0;
        AppliedEvent {
            message_id: format!("{partner}-{id}"),
            partner_tenant_id: partner.into(),
            now: T + 100,
            occurred_at: occurred,
            groups: vec![add],
            ..Default::default()
        }
    };
    // Told while open, with what it holds: the decider tells and keeps the group open while
    // anything fires, and closes it otherwise.
    let seen = std::sync::Mutex::new(Vec::new());
    let tell = |g: &GroupState| -> palisade_notifier::error::Result<Option<FlushCommit>> {
        seen.lock().unwrap().push(
            g.items
                .iter()
                .map(|i| format!("{}:{}:{}", i.fingerprint, i.firing, i.summary))
                .collect::<Vec<_>>(),
        );
        let firing = g.items.iter().filter(|i| i.firing).count() as i64;
        Ok(Some(FlushCommit {
            now: T + 100,
            deliveries: vec![],
            notified_hash: Some(format!("h{}", g.flush_seq + 1)),
            firing,
            resolved: g.items.len() as i64 - firing,
            next_flush_at: (firing > 0).then_some(T + 3_600_000),
        }))
    };
    let stored = |partner: &str| {
        vec![
            event(partner, "a1", "fp-1", true, T + 1),
            event(partner, "a2", "fp-4", true, T + 1),
        ]
    };
    let batch = |partner: &str| {
        vec![
            event(partner, "b", "fp-1", false, T + 5),
            event(partner, "c", "fp-2", false, T + 6),
            event(partner, "d", "fp-3", true, T + 7),
            event(partner, "e", "fp-4", false, T),
        ]
    };
    for partner in ["lone", "batch"] {
        for e in stored(partner) {
            assert!(s.apply_event(&e).await.unwrap());
        }
        assert!(
            s.flush_group(&format!("{partner}/g"), T + 100, &tell)
                .await
                .unwrap()
        );
    }
    for e in batch("lone") {
        assert!(s.apply_event(&e).await.unwrap());
    }
    assert!(s.flush_group("lone/g", T + 100, &tell).await.unwrap());
    let applied = s.apply_events(&batch("batch"), Some(&tell)).await.unwrap();
    assert!(applied.due.is_empty(), "flushed with the batch");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0], seen[1], "the first flushes");
    assert_eq!(
        seen[2], seen[3],
        "the batch's flush saw what a lone flush sees"
    );
    assert_eq!(
        seen[3],
        [
            "fp-1:false:{\"id\":\"b\"}",
            "fp-2:false:{\"id\":\"c\"}",
            "fp-3:true:{\"id\":\"d\"}",
            "fp-4:true:{\"id\":\"a2\"}",
        ]
    );
    let mut lone = s.load_group("lone/g").await.unwrap().unwrap();
    let mut batched = s.load_group("batch/g").await.unwrap().unwrap();
    for g in [&mut lone, &mut batched] {
        g.group_key.clear();
        g.partner_tenant_id.clear();
    }
    assert_eq!(lone, batched);
    let kept: Vec<_> = batched
        .items
        .iter()
        .map(|i| i.fingerprint.as_str())
        .collect();
    assert_eq!(kept, ["fp-3", "fp-4"], "the told resolved items are gone");

    // Nothing left firing: the group closes and keeps no item.
    let resolve = |partner: &str| {
        vec![
            event(partner, "f", "fp-3", false, T + 8),
            event(partner, "g", "fp-4", false, T + 8),
        ]
    };
    for e in resolve("lone") {
        assert!(s.apply_event(&e).await.unwrap());
    }
    assert!(s.flush_group("lone/g", T + 100, &tell).await.unwrap());
    s.apply_events(&resolve("batch"), Some(&tell))
        .await
        .unwrap();
    for partner in ["lone", "batch"] {
        let g = s
            .load_group(&format!("{partner}/g"))
            .await
            .unwrap()
            .unwrap();
        assert!(g.items.is_empty(), "{partner}: {g:?}");
        assert_eq!((g.flush_seq, g.next_flush_at), (3, i64::MAX), "{partner}");
    }
}
backend_conformance!(
    a_batch_that_flushes_ends_where_a_lone_flush_ends,
    a_batch_that_flushes_ends_where_a_lone_flush_ends
);

/// The dispatcher's batched success writer: each delivery gets its own attempt row, count and
/// text, and a delivery outside the batch is left alone.
async fn delivered_in_one_batch_keeps_each_rows_own_attempt(backend: TestBackend) {
    let s = store(&backend).await;
    let ids = ["b1", "b2", "b3", "untouched"];
    let planned: Vec<_> = ids.iter().map(|id| delivery(id, T)).collect();
    s.insert_deliveries(&planned).await.unwrap();
    assert_eq!(
        s.claim_due(T, T + 60_000, 10, &EndpointRoom::default())
            .await
            .unwrap()
            .len(),
        4
    );
    let attempt = |id: &str, n: u32| AttemptRecord {
        delivery_id: id.into(),
        attempt: n,
        at: T + 10,
        http_status: 200,
        error: format!("{id} accepted"),
        duration_ms: 3,
    };
    let batch = [attempt("b1", 1), attempt("b2", 2), attempt("b3", 1)];
    s.record_delivered(&batch, T + 20).await.unwrap();
    for a in &batch {
        let d = s.get_delivery(&a.delivery_id).await.unwrap().unwrap();
        assert_eq!(
            (d.status, d.attempts, d.last_error.as_str()),
            (
                DeliveryStatus::Delivered as i32,
                a.attempt,
                a.error.as_str()
            ),
            "{}",
            a.delivery_id
        );
    }
    let rest = s.get_delivery("untouched").await.unwrap().unwrap();
    assert_eq!(
        (rest.status, rest.attempts),
        (DeliveryStatus::Sending as i32, 0)
    );
    let logged = s
        .list_deliveries(
            P,
            &DeliveryFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let attempts: Vec<_> = logged
        .iter()
        .flat_map(|(_, a)| a.iter().map(|a| (a.delivery_id.clone(), a.attempt)))
        .collect();
    for a in &batch {
        assert!(
            attempts.contains(&(a.delivery_id.clone(), a.attempt)),
            "{} logged",
            a.delivery_id
        );
    }
    // A replayed batch (the writer retried after a lost commit) changes nothing.
    s.record_delivered(&batch, T + 30).await.unwrap();
    assert_eq!(
        s.list_deliveries(
            P,
            &DeliveryFilter {
                limit: 100,
                ..Default::default()
            }
        )
        .await
        .unwrap()
        .iter()
        .map(|(_, a)| a.len())
        .sum::<usize>(),
        3
    );
}
backend_conformance!(
    delivered_in_one_batch_keeps_each_rows_own_attempt,
    delivered_in_one_batch_keeps_each_rows_own_attempt
);

/// The dispatcher's batched retry writer: each failed delivery gets its own attempt row,
/// count, text and retry time; each channel is failing since its first failure; a delivery
/// outside the batch is left alone.
async fn retries_in_one_batch_keep_each_rows_own_time(backend: TestBackend) {
    let s = store(&backend).await;
    let channel = |id: &str, failing_since: Option<i64>| ChannelRecord {
        channel_id: id.into(),
        partner_tenant_id: P.into(),
        display_name: id.into(),
        kind: 2,
        target: format!("https://example.com/{id}"),
        language: "en".into(),
        enabled: true,
        disabled_reason: String::new(),
        secret_sealed: None,
        secret_count: 0,
        failing_since,
        created_at: T,
    };
    s.insert_channel(&channel("ch-new", None)).await.unwrap();
    s.insert_channel(&channel("ch-old", Some(T - 5_000)))
        .await
        .unwrap();
    s.insert_channel(&channel("ch-fine", None)).await.unwrap();
    let ids = ["r1", "r2", "untouched"];
    let planned: Vec<_> = ids.iter().map(|id| delivery(id, T)).collect();
    s.insert_deliveries(&planned).await.unwrap();
    assert_eq!(
        s.claim_due(T, T + 60_000, 10, &EndpointRoom::default())
            .await
            .unwrap()
            .len(),
        3
    );
    let attempt = |id: &str, n: u32, status: u32| AttemptRecord {
        delivery_id: id.into(),
        attempt: n,
        at: T + 10,
        http_status: status,
        error: format!("{id} answered {status}"),
        duration_ms: 3,
    };
    let batch = [
        (attempt("r1", 1, 500), T + 5_000),
        (attempt("r2", 2, 503), T + 9_000),
    ];
    let failing = ["ch-new".to_owned(), "ch-old".to_owned()];
    s.record_retrying(&batch, &failing, T + 20).await.unwrap();
    for (a, at) in &batch {
        let d = s.get_delivery(&a.delivery_id).await.unwrap().unwrap();
        assert_eq!(
            (
                d.status,
                d.attempts,
                d.last_error.as_str(),
                d.delivery.next_attempt_at
            ),
            (
                DeliveryStatus::Retrying as i32,
                a.attempt,
                a.error.as_str(),
                *at
            )
        );
    }
    let untouched = s.get_delivery("untouched").await.unwrap().unwrap();
    assert_eq!(
        (untouched.status, untouched.attempts),
        (DeliveryStatus::Sending as i32, 0)
    );
    assert_eq!(s.next_delivery_due().await.unwrap(), Some(T + 5_000));
    let since = |id: &'static str| {
        let s = s.clone();
        async move { s.get_channel(P, id).await.unwrap().unwrap().failing_since }
    };
    assert_eq!(since("ch-new").await, Some(T + 20));
    assert_eq!(
        since("ch-old").await,
        Some(T - 5_000),
        "failing since the first failure"
    );
    assert_eq!(since("ch-fine").await, None);
    // A replayed batch changes nothing: still one attempt row each.
    s.record_retrying(&batch, &failing, T + 30).await.unwrap();
    let logged: usize = s
        .list_deliveries(
            P,
            &DeliveryFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .iter()
        .map(|(_, a)| a.len())
        .sum();
    assert_eq!(logged, 2);
    assert_eq!(since("ch-new").await, Some(T + 20));
}
backend_conformance!(
    retries_in_one_batch_keep_each_rows_own_time,
    retries_in_one_batch_keep_each_rows_own_time
);

/// Held-back deliveries (a busy endpoint, an open circuit breaker) go back in one statement:
/// each due again at its own time, with no attempt spent, a retried one still retrying; a
/// delivery no longer leased (another sender settled it) is left alone.
async fn released_in_one_batch_keep_each_rows_own_time(backend: TestBackend) {
    let s = store(&backend).await;
    // r1 failed once before: it is retrying when claimed again.
    s.insert_deliveries(&[delivery("r1", T)]).await.unwrap();
    assert_eq!(
        s.claim_due(T, T + 60_000, 10, &EndpointRoom::default())
            .await
            .unwrap()
            .len(),
        1
    );
    let failed = AttemptRecord {
        delivery_id: "r1".into(),
        attempt: 1,
        at: T,
        http_status: 500,
        error: "http 500".into(),
        duration_ms: 3,
    };
    s.record_attempt(&failed, AttemptResult::RetryAt(T + 5), T)
        .await
        .unwrap();
    let rows: Vec<NewDelivery> = ["r2", "r3", "r4"]
        .iter()
        .map(|id| delivery(id, T))
        .collect();
    s.insert_deliveries(&rows).await.unwrap();
    let claimed = s
        .claim_due(T + 10, T + 60_000, 10, &EndpointRoom::default())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    s.record_delivered(
        &[AttemptRecord {
            delivery_id: "r4".into(),
            attempt: 1,
            at: T + 11,
            http_status: 200,
            error: String::new(),
            duration_ms: 3,
        }],
        T + 11,
    )
    .await
    .unwrap();
    s.release(
        &[("r1", T + 5_000), ("r2", T + 7_000), ("r4", T + 9_000)],
        T + 12,
    )
    .await
    .unwrap();
    let got = |id: &'static str| {
        let s = &s;
        async move {
            let d = s.get_delivery(id).await.unwrap().unwrap();
            (d.status, d.attempts, d.delivery.next_attempt_at)
        }
    };
    assert_eq!(
        got("r1").await,
        (DeliveryStatus::Retrying as i32, 1, T + 5_000),
        "a retried delivery stays retrying"
    );
    assert_eq!(
        got("r2").await,
        (DeliveryStatus::Planned as i32, 0, T + 7_000)
    );
    assert_eq!(
        got("r3").await.0,
        DeliveryStatus::Sending as i32,
        "not released"
    );
    assert_eq!(
        got("r4").await.0,
        DeliveryStatus::Delivered as i32,
        "a settled delivery is not put back"
    );
    // Released rows are claimed again when due, not before.
    assert!(
        s.claim_due(T + 4_999, T + 60_000, 10, &EndpointRoom::default())
            .await
            .unwrap()
            .is_empty()
    );
    let again: Vec<String> = s
        .claim_due(T + 7_000, T + 60_000, 10, &EndpointRoom::default())
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.delivery.delivery_id)
        .collect();
    assert_eq!(again, vec!["r1".to_owned(), "r2".to_owned()]);
}
backend_conformance!(
    released_in_one_batch_keep_each_rows_own_time,
    released_in_one_batch_keep_each_rows_own_time
);

/// A claim takes at most each endpoint's room, its oldest rows first: none of an endpoint
/// with no room (a slow one with every slot in flight, an open circuit breaker), and a
/// channel-less delivery counts against its target. What is left is claimed later.
async fn a_claim_takes_each_endpoints_room_oldest_first(backend: TestBackend) {
    let s = store(&backend).await;
    let row = |id: &str, at: i64, channel: &str, target: &str| NewDelivery {
        channel_id: channel.into(),
        target: target.into(),
        ..delivery(id, at)
    };
    let mut rows = Vec::new();
    for i in 0..5 {
        rows.push(row(&format!("a{i}"), T + i, "ch-a", "https://a.example/h"));
    }
    for i in 0..3 {
        rows.push(row(
            &format!("b{i}"),
            T - 10 + i,
            "ch-b",
            "https://b.example/h",
        ));
    }
    for i in 0..2 {
        rows.push(row(&format!("t{i}"), T + 20 + i, "", "sms:+15550100"));
    }
    s.insert_deliveries(&rows).await.unwrap();
    let ids = |claimed: Vec<DeliveryRow>| {
        let mut ids: Vec<String> = claimed
            .into_iter()
            .map(|d| d.delivery.delivery_id)
            .collect();
        ids.sort();
        ids
    };
    let room = EndpointRoom {
        each: Some(2),
        listed: vec![("ch-b".into(), 0), ("sms:+15550100".into(), 1)],
    };
    let first = s.claim_due(T + 100, T + 60_000, 10, &room).await.unwrap();
    assert_eq!(ids(first), vec!["a0", "a1", "t0"]);
    // The limit still counts oldest first across endpoints.
    let room = EndpointRoom {
        each: Some(3),
        listed: vec![],
    };
    let second = s.claim_due(T + 100, T + 60_000, 4, &room).await.unwrap();
    assert_eq!(ids(second), vec!["a2", "b0", "b1", "b2"]);
    let rest = s
        .claim_due(T + 100, T + 60_000, 10, &EndpointRoom::default())
        .await
        .unwrap();
    assert_eq!(ids(rest), vec!["a3", "a4", "t1"]);
}
backend_conformance!(
    a_claim_takes_each_endpoints_room_oldest_first,
    a_claim_takes_each_endpoints_room_oldest_first
);
