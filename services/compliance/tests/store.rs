//! The store's conformance suite: the same bodies on Postgres and on SQLite.

use palisade_compliance::{
    model::CustomerPostureRow,
    store::{Claim, Completion, ComplianceStore, FindingFilter, RunProgress, SqlStore},
};
use palisade_contracts::compliance::v1::{CheckKind, CheckStatus, ComplianceStatus, Finding};
use palisade_storage::Database;
use palisade_testkit::{TestBackend, backend_conformance};

const P: &str = "partner-1";
const T: i64 = 1_800_000_000_000;
const LEASE: i64 = 60_000;

async fn store(backend: &TestBackend) -> SqlStore {
    let db = Database::connect(&backend.settings(), "compliance")
        .await
        .unwrap();
    let store = SqlStore::new(db);
    assert!(store.migrate().await.unwrap() > 0);
    assert_eq!(store.migrate().await.unwrap(), 0, "migrations apply once");
    store
}

fn row(customer: &str, status: CheckStatus, dap: Option<bool>, at: i64) -> CustomerPostureRow {
    CustomerPostureRow {
        customer_tenant_id: customer.into(),
        display_name: format!("Customer {customer}"),
        status,
        mechanism: "none".into(),
        admins_total: 2,
        admins_with_mfa: 1,
        detail: "d".into(),
        admins_without_mfa: vec!["a@x".into(), "b@x".into()],
        evaluated_at: at,
        dap,
        dap_checked_at: dap.map(|_| at),
    }
}

fn finding(check: CheckKind, status: CheckStatus, customer: &str) -> Finding {
    Finding {
        finding_id: format!("{check:?}{customer}"),
        check: check as i32,
        status: status as i32,
        customer_tenant_id: customer.into(),
        ..Finding::default()
    }
}

fn completion(
    id: &str,
    owner: &str,
    checks: Vec<Finding>,
    extra: Vec<Finding>,
    score: f64,
    at: i64,
) -> Completion {
    let mut findings = checks.clone();
    findings.extend(extra);
    Completion {
        evaluation_id: id.into(),
        owner: owner.into(),
        partner_tenant_id: P.into(),
        finished_at: at,
        status: ComplianceStatus {
            partner_tenant_id: P.into(),
            evaluation_id: id.into(),
            score,
            max_score: 100.0,
            checks,
            ..ComplianceStatus::default()
        },
        findings,
        passing: 1,
        failing: 1,
        warnings: 0,
        unknown: 0,
        progress: RunProgress {
            total: 3,
            done: 3,
            failed: 0,
        },
        keep_findings_of: 2,
    }
}

async fn leases_resume_and_exclude(backend: TestBackend) {
    let s = store(&backend).await;
    let Claim::Started(first) = s
        .claim_evaluation(P, "a", "manual", T, LEASE)
        .await
        .unwrap()
    else {
        panic!("a new evaluation")
    };
    assert!(
        matches!(s.claim_evaluation(P, "b", "schedule", T + 1, LEASE).await.unwrap(), Claim::Busy(r) if r.evaluation_id == first.evaluation_id)
    );
    // Another partner is independent.
    assert!(matches!(
        s.claim_evaluation("partner-2", "b", "manual", T, LEASE)
            .await
            .unwrap(),
        Claim::Started(_)
    ));
    let p = RunProgress {
        total: 3,
        done: 2,
        failed: 1,
    };
    s.save_customers(
        &first.evaluation_id,
        "a",
        P,
        &[
            row("c1", CheckStatus::Pass, Some(true), T),
            row("c2", CheckStatus::Unknown, None, T),
        ],
        p,
        T,
        LEASE,
    )
    .await
    .unwrap();
    // "a" dies; after its lease "b" resumes the same evaluation, keeping the saved customers.
    let Claim::Resumed(resumed) = s
        .claim_evaluation(P, "b", "resume", T + LEASE + 1, LEASE)
        .await
        .unwrap()
    else {
        panic!("resumed")
    };
    assert_eq!(resumed.evaluation_id, first.evaluation_id);
    assert_eq!((resumed.customers_done, resumed.customers_failed), (2, 1));
    assert_eq!(
        s.abandoned(T + 2 * LEASE + 10, 10).await.unwrap().len(),
        2,
        "b's lease also ends unless renewed"
    );
    // The old owner can no longer write.
    let lost = s
        .renew_lease(&first.evaluation_id, "a", p, T + LEASE + 2, LEASE)
        .await
        .unwrap_err();
    assert!(matches!(
        lost,
        palisade_compliance::ComplianceError::LeaseLost(_)
    ));
    s.renew_lease(&first.evaluation_id, "b", p, T + LEASE + 2, LEASE)
        .await
        .unwrap();
    let rows = s
        .customers_of_evaluation(P, &first.evaluation_id)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].admins_without_mfa, vec!["a@x", "b@x"]);
    assert_eq!(rows[0].dap, Some(true));
    // A row that did not read DAP keeps the stored value.
    s.save_customers(
        &first.evaluation_id,
        "b",
        P,
        &[row("c1", CheckStatus::Fail, None, T + 5)],
        p,
        T + 5,
        LEASE,
    )
    .await
    .unwrap();
    let c1 = &s.posture_of(P).await.unwrap()[0];
    assert_eq!(
        (c1.status, c1.dap, c1.dap_checked_at),
        (CheckStatus::Fail, Some(true), Some(T))
    );
    s.fail_evaluation(&first.evaluation_id, "b", "boom", T + 6)
        .await
        .unwrap();
    assert_eq!(
        s.get_evaluation(&first.evaluation_id)
            .await
            .unwrap()
            .unwrap()
            .error
            .as_deref(),
        Some("boom")
    );
    assert!(matches!(
        s.claim_evaluation(P, "c", "manual", T + 7, LEASE)
            .await
            .unwrap(),
        Claim::Started(_)
    ));
}
backend_conformance!(leases, leases_resume_and_exclude);

async fn completion_announces_each_change_once(backend: TestBackend) {
    let s = store(&backend).await;
    let s = &s;
    let run = |n: i64| async move {
        match s
            .claim_evaluation(P, "o", "manual", T + n, LEASE)
            .await
            .unwrap()
        {
            Claim::Started(r) => r.evaluation_id,
            other => panic!("{other:?}"),
        }
    };
    // First evaluation: a failure is news, a pass is not.
    let e1 = run(0).await;
    s.save_customers(
        &e1,
        "o",
        P,
        &[
            row("c1", CheckStatus::Fail, Some(false), T),
            row("c2", CheckStatus::Pass, Some(false), T),
        ],
        RunProgress::default(),
        T,
        LEASE,
    )
    .await
    .unwrap();
    let events = s
        .complete_evaluation(&completion(
            &e1,
            "o",
            vec![
                finding(CheckKind::MfaAllUsers, CheckStatus::Fail, ""),
                finding(CheckKind::EntraIdP2, CheckStatus::Pass, ""),
            ],
            vec![finding(
                CheckKind::CustomerAdminMfa,
                CheckStatus::Fail,
                "c1",
            )],
            40.0,
            T + 10,
        ))
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].check, events[0].previous_status, events[0].status),
        (CheckKind::MfaAllUsers as i32, 0, CheckStatus::Fail as i32)
    );
    // Second: MFA passes (news), P2 unknown (not news, and not remembered).
    let e2 = run(20).await;
    s.save_customers(
        &e2,
        "o",
        P,
        &[row("c1", CheckStatus::Pass, None, T + 20)],
        RunProgress::default(),
        T + 20,
        LEASE,
    )
    .await
    .unwrap();
    let events = s
        .complete_evaluation(&completion(
            &e2,
            "o",
            vec![
                finding(CheckKind::MfaAllUsers, CheckStatus::Pass, ""),
                finding(CheckKind::EntraIdP2, CheckStatus::Unknown, ""),
            ],
            vec![],
            90.0,
            T + 30,
        ))
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].previous_status, CheckStatus::Fail as i32);
    assert_eq!((events[0].previous_score, events[0].score), (40.0, 90.0));
    // c2 was not seen this time: the partner no longer has it.
    let (rows, total) = s.list_posture(P, &[], None, 10).await.unwrap();
    assert_eq!((rows.len(), total), (1, 1));
    // Third: P2 fails after being unknown: compared with its last known state (pass).
    let e3 = run(40).await;
    let events = s
        .complete_evaluation(&completion(
            &e3,
            "o",
            vec![
                finding(CheckKind::MfaAllUsers, CheckStatus::Pass, ""),
                finding(CheckKind::EntraIdP2, CheckStatus::Fail, ""),
            ],
            vec![],
            80.0,
            T + 50,
        ))
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].check, events[0].previous_status),
        (CheckKind::EntraIdP2 as i32, CheckStatus::Pass as i32)
    );
    // The outbox holds exactly the three events, with deterministic ids.
    let db = Database::connect(&backend.settings(), "compliance")
        .await
        .unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT message_id FROM outbox ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(
        ids,
        vec![format!("{e1}:1"), format!("{e2}:1"), format!("{e3}:7")]
    );
    // Findings of the oldest evaluation are pruned (keep 2); its score stays in the history.
    assert!(
        s.list_findings(&e1, &FindingFilter::default(), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.list_findings(&e3, &FindingFilter::default(), 0, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    let history = s.history(P, None, None, None, 10).await.unwrap();
    assert_eq!(
        history.iter().map(|h| h.score.unwrap()).collect::<Vec<_>>(),
        vec![80.0, 90.0, 40.0]
    );
    let page2 = s
        .history(
            P,
            None,
            None,
            Some((
                history[0].finished_at.unwrap(),
                history[0].evaluation_id.clone(),
            )),
            1,
        )
        .await
        .unwrap();
    assert_eq!(page2[0].evaluation_id, e2);
    let ranged = s
        .history(P, Some(T + 25), Some(T + 45), None, 10)
        .await
        .unwrap();
    assert_eq!(ranged.len(), 1);
    assert_eq!(
        s.latest_complete(P).await.unwrap().unwrap().evaluation_id,
        e3
    );
    // A completion by someone who no longer holds the lease is refused.
    let e4 = run(60).await;
    assert!(
        s.complete_evaluation(&completion(&e4, "intruder", vec![], vec![], 1.0, T + 70))
            .await
            .is_err()
    );
}
backend_conformance!(completion, completion_announces_each_change_once);

async fn findings_filter_and_page(backend: TestBackend) {
    let s = store(&backend).await;
    let Claim::Started(e) = s
        .claim_evaluation(P, "o", "manual", T, LEASE)
        .await
        .unwrap()
    else {
        panic!()
    };
    let extra: Vec<Finding> = (0..5)
        .map(|i| {
            finding(
                CheckKind::CustomerAdminMfa,
                if i % 2 == 0 {
                    CheckStatus::Fail
                } else {
                    CheckStatus::Unknown
                },
                &format!("c{i}"),
            )
        })
        .collect();
    s.complete_evaluation(&completion(
        &e.evaluation_id,
        "o",
        vec![finding(CheckKind::MfaAllUsers, CheckStatus::Pass, "")],
        extra,
        50.0,
        T + 1,
    ))
    .await
    .unwrap();
    let f = |checks: Vec<i32>, statuses: Vec<i32>, customer: Option<&str>| FindingFilter {
        checks,
        statuses,
        customer_tenant_id: customer.map(str::to_owned),
    };
    let all = s
        .list_findings(&e.evaluation_id, &f(vec![], vec![], None), 0, 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    let page = s
        .list_findings(&e.evaluation_id, &f(vec![], vec![], None), all[1].0, 2)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![all[2].0, all[3].0]
    );
    let failing = s
        .list_findings(
            &e.evaluation_id,
            &f(
                vec![CheckKind::CustomerAdminMfa as i32],
                vec![CheckStatus::Fail as i32],
                None,
            ),
            0,
            100,
        )
        .await
        .unwrap();
    assert_eq!(failing.len(), 3);
    let one = s
        .list_findings(&e.evaluation_id, &f(vec![], vec![], Some("c3")), 0, 100)
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].1.status, CheckStatus::Unknown as i32);
}
backend_conformance!(findings, findings_filter_and_page);

async fn schedules_are_claimed_once(backend: TestBackend) {
    let s = store(&backend).await;
    assert!(s.get_schedule(P).await.unwrap().is_none());
    let created = s.ensure_schedule(P, 3_600_000, T + 100, T).await.unwrap();
    assert_eq!(
        s.ensure_schedule(P, 60_000, T, T).await.unwrap(),
        created,
        "ensure keeps an existing schedule"
    );
    assert!(s.due_schedules(T + 99, 10).await.unwrap().is_empty());
    let due = s.due_schedules(T + 100, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(
        s.claim_schedule(P, due[0].next_run_at, T + 3_600_100)
            .await
            .unwrap()
    );
    assert!(
        !s.claim_schedule(P, due[0].next_run_at, T + 3_600_100)
            .await
            .unwrap(),
        "the second replica loses"
    );
    s.run_soon(P, T + 200).await.unwrap();
    assert_eq!(
        s.get_schedule(P).await.unwrap().unwrap().next_run_at,
        T + 200
    );
    s.run_soon(P, T + 900).await.unwrap();
    assert_eq!(
        s.get_schedule(P).await.unwrap().unwrap().next_run_at,
        T + 200,
        "never pushed later"
    );
    let disabled = s.set_schedule(P, 900_000, false, T + 300, T).await.unwrap();
    assert!(!disabled.enabled);
    assert!(
        s.due_schedules(T + 10_000_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
backend_conformance!(schedules, schedules_are_claimed_once);

async fn posture_filters_by_status_and_pages(backend: TestBackend) {
    let s = store(&backend).await;
    let Claim::Started(e) = s
        .claim_evaluation(P, "o", "manual", T, LEASE)
        .await
        .unwrap()
    else {
        panic!()
    };
    let rows: Vec<_> = (0..450)
        .map(|i| {
            row(
                &format!("c{i:04}"),
                if i % 3 == 0 {
                    CheckStatus::Fail
                } else {
                    CheckStatus::Pass
                },
                None,
                T,
            )
        })
        .collect();
    s.save_customers(
        &e.evaluation_id,
        "o",
        P,
        &rows,
        RunProgress::default(),
        T,
        LEASE,
    )
    .await
    .unwrap();
    let (page, total) = s
        .list_posture(P, &[CheckStatus::Fail as i32], None, 100)
        .await
        .unwrap();
    assert_eq!((page.len(), total), (100, 150));
    let (rest, _) = s
        .list_posture(
            P,
            &[CheckStatus::Fail as i32],
            Some(&page[99].customer_tenant_id),
            100,
        )
        .await
        .unwrap();
    assert_eq!(rest.len(), 50);
    assert!(rest.iter().all(|r| r.status == CheckStatus::Fail));
    let (_, all) = s.list_posture(P, &[], None, 1).await.unwrap();
    assert_eq!(all, 450);
}
backend_conformance!(posture, posture_filters_by_status_and_pages);
