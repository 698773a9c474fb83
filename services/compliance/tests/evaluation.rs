//! Evaluations against ms-sim over real HTTP and the real token broker, notifier and
//! alert-ingest, on Postgres with the Redis queue: each check passes and fails for the right
//! reason, a policy change flips a check with exactly one event, one customer's failure stays
//! its own, and throttling is honoured.

mod support;

use std::{collections::HashMap, time::Duration};

use ms_sim::{Fault, FaultKind, Host, SimConfig, scenario::ScenarioConfig};
use palisade_contracts::{
    alerts::v1 as alerts,
    compliance::v1::{CheckKind, CheckStatus, ComplianceStatus, Finding},
    events::v1::ComplianceChanged,
    tokens::v1 as tokens,
};
use prost::Message;
use support::*;

fn check(status: &ComplianceStatus, kind: CheckKind) -> &Finding {
    status
        .checks
        .iter()
        .find(|c| c.check == kind as i32)
        .unwrap_or_else(|| panic!("{kind:?} evaluated"))
}

fn st(f: &Finding) -> CheckStatus {
    CheckStatus::try_from(f.status).unwrap()
}

/// Every `compliance.changed` event published so far, read by a test consumer group.
struct Events {
    consumer: Box<dyn palisade_queue::Consumer>,
}

impl Events {
    async fn new(h: &Harness) -> Self {
        let settings = support::settings(h, "unused");
        let queue = palisade_queue::connect(&settings.queue).await.unwrap();
        Self {
            consumer: queue.consumer("compliance", "test", "t1").await.unwrap(),
        }
    }

    /// Reads until `n` events arrived (the relay publishes right after commit), then checks
    /// that nothing else follows.
    async fn take(&mut self, n: usize) -> Vec<ComplianceChanged> {
        let mut out = Vec::new();
        for _ in 0..100 {
            if out.len() >= n {
                break;
            }
            let batch = self
                .consumer
                .next_batch(100, Duration::from_millis(200))
                .await
                .unwrap();
            for d in &batch {
                assert_eq!(d.envelope.kind, "compliance.changed");
                out.push(ComplianceChanged::decode(d.envelope.payload.as_slice()).unwrap());
            }
            self.consumer.ack_many(&batch).await.unwrap();
        }
        let extra = self
            .consumer
            .next_batch(100, Duration::from_millis(700))
            .await
            .unwrap();
        assert!(extra.is_empty(), "unexpected extra events: {}", extra.len());
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_check_reads_the_simulated_partner_for_the_right_reason() {
    // No seeded alert history: the one alert of this test is raised, ingested and resolved.
    let config = SimConfig {
        scenario: ScenarioConfig {
            alerts_per_partner: 0,
            ..ScenarioConfig::default()
        },
        ..SimConfig::default()
    };
    let h = start(config, |_| {}).await;
    let p = &h.partner;
    let raised = h
        .sim
        .control()
        .raise_alert(&p.tenant_id, &ms_sim::AlertSpec::default())
        .unwrap();
    let ingested = h.ingest_alerts(&p.tenant_id, 1).await;
    assert_eq!(ingested.len(), 1);
    assert_eq!(ingested[0].provider_alert_id, raised);
    h.alerts_client()
        .await
        .resolve_alert(alerts::ResolveAlertRequest {
            partner_tenant_id: p.tenant_id.clone(),
            alert_id: ingested[0].alert_id.clone(),
            resolution: alerts::Resolution::Legitimate as i32,
            note: "expected sign-in".into(),
        })
        .await
        .unwrap();
    let mut events = Events::new(&h).await;
    let status = h.evaluate().await;

    // 1. The service account has no MFA, and the CA policy excludes the break-glass account.
    let mfa = check(&status, CheckKind::MfaAllUsers);
    assert_eq!(st(mfa), CheckStatus::Fail, "{}", mfa.summary);
    assert!(
        mfa.subjects.contains(&p.service_account().upn),
        "{:?}",
        mfa.subjects
    );
    assert!(
        mfa.summary.contains("excludes 1 user(s)"),
        "{}",
        mfa.summary
    );
    assert_eq!(mfa.evidence["security_defaults"], "off");
    assert!(!mfa.remediation.is_empty() && mfa.doc_url.starts_with("https://learn.microsoft.com"));
    // 2. Every Partner Center call of this evaluation carried MFA, and so did the tokens.
    let requests = check(&status, CheckKind::MfaOnRequests);
    assert_eq!(st(requests), CheckStatus::Pass, "{}", requests.summary);
    assert_ne!(requests.evidence["partner_center_requests"], "0");
    //    The broker minted every token of this evaluation from the admin agent's MFA consent.
    let stats = h
        .broker_client()
        .await
        .get_mfa_statistics(tokens::GetMfaStatisticsRequest {
            partner_tenant_id: p.tenant_id.clone(),
            time_range: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.tokens_minted > 0);
    assert_eq!(stats.tokens_minted_with_mfa, stats.tokens_minted);
    // 3–5 come from the Palisade side: the broker's consent, the notifier's contacts and
    //    alert-ingest's response times, each in order.
    let sam = check(&status, CheckKind::SecureApplicationModel);
    assert_eq!(st(sam), CheckStatus::Pass, "{}", sam.summary);
    assert_eq!(sam.evidence["apps"], "1");
    assert_eq!(sam.evidence["apps_with_healthy_consent"], "1");
    assert_eq!(sam.evidence["tokens_minted_without_mfa"], "0");
    let contact = check(&status, CheckKind::SecurityContact);
    assert_eq!(st(contact), CheckStatus::Pass, "{}", contact.summary);
    assert_eq!(
        contact.evidence["microsoft_security_contact_provided"],
        "true"
    );
    let alerts = check(&status, CheckKind::AlertResponse);
    assert_eq!(st(alerts), CheckStatus::Pass, "{}", alerts.summary);
    assert_eq!(alerts.evidence["resolved_in_window"], "1");
    assert_eq!(alerts.evidence["unresolved_older_than_24h"], "0");
    // 6. Global Administrator in relationships of customers 0, 3 and 6; DAP left at 1 and 7;
    //    customer 3's relationship ends within 30 days.
    let gdap = check(&status, CheckKind::GdapLeastPrivilege);
    assert_eq!(st(gdap), CheckStatus::Fail, "{}", gdap.summary);
    assert_eq!(gdap.evidence["relationships_with_global_admin"], "3");
    assert_eq!(gdap.evidence["dap_customers"], "2");
    assert_eq!(
        gdap.evidence["relationships_expiring_30d_without_auto_extend"],
        "1"
    );
    let c = |i: usize| p.customer(i).unwrap().tenant_id;
    assert!(
        gdap.subjects.iter().any(|s| s.contains(&c(1)))
            && gdap.subjects.iter().any(|s| s.contains(&c(7)))
    );
    // 7. Five P2 units for three admin agents.
    let p2 = check(&status, CheckKind::EntraIdP2);
    assert_eq!(st(p2), CheckStatus::Pass, "{}", p2.summary);
    assert_eq!(p2.evidence["p2_units"], "5");
    // 8. Microsoft's own score is mirrored.
    let ms = check(&status, CheckKind::MicrosoftSecurityScore);
    assert_eq!(st(ms), CheckStatus::Fail);
    assert!(ms.subjects.contains(&"mfaEnforcedForAdmins".to_owned()));
    assert!(
        ms.evidence
            .contains_key("requirement.securityContactProvided")
    );
    assert!(status.microsoft_max_score > 0.0);
    // 9. Customers: 3 enforces nothing and its IT admin never registered; 4, 6 and 9 give no
    //    access (no GDAP, no consent, expired GDAP); 5 has no premium licence for the report.
    let customers = check(&status, CheckKind::CustomerAdminMfa);
    assert_eq!(st(customers), CheckStatus::Fail);
    assert_eq!(customers.subjects, vec![c(3)]);
    assert_eq!(customers.evidence["compliant"], "5");
    assert_eq!(customers.evidence["unknown"], "4");

    let rows = h
        .engine()
        .store
        .customers_of_evaluation(&p.tenant_id, &status.evaluation_id)
        .await
        .unwrap();
    assert_eq!(rows.len(), 10);
    let by_id: HashMap<_, _> = rows
        .iter()
        .map(|r| (r.customer_tenant_id.clone(), r))
        .collect();
    let expect = [
        (0, CheckStatus::Pass, "security_defaults"),
        (1, CheckStatus::Pass, "conditional_access"),
        (2, CheckStatus::Pass, "security_defaults"),
        (3, CheckStatus::Fail, "none"),
        (4, CheckStatus::Unknown, "none"),
        (5, CheckStatus::Unknown, "none"),
        (6, CheckStatus::Unknown, "none"),
        (7, CheckStatus::Pass, "registration"),
        (8, CheckStatus::Pass, "security_defaults"),
        (9, CheckStatus::Unknown, "none"),
    ];
    for (i, status, mechanism) in expect {
        let row = by_id[&c(i)];
        assert_eq!(
            (row.status, row.mechanism.as_str()),
            (status, mechanism),
            "customer {i}: {}",
            row.detail
        );
    }
    assert_eq!(
        by_id[&c(3)].admins_without_mfa,
        vec![format!("it-admin@customer3p0.onmicrosoft.com")]
    );
    assert!(
        by_id[&c(4)].detail.contains("no access"),
        "{}",
        by_id[&c(4)].detail
    );
    assert_eq!(by_id[&c(1)].dap, Some(true));
    assert_eq!(by_id[&c(0)].dap, Some(false));

    // One event per check that is not passing (first sight of a failure is news).
    let failing: Vec<i32> = status
        .checks
        .iter()
        .filter(|f| matches!(st(f), CheckStatus::Fail | CheckStatus::Warn))
        .map(|f| f.check)
        .collect();
    let got = events.take(failing.len()).await;
    let mut kinds: Vec<i32> = got.iter().map(|e| e.check).collect();
    kinds.sort();
    let mut want = failing.clone();
    want.sort();
    assert_eq!(kinds, want);
    assert!(
        got.iter()
            .all(|e| e.previous_status == 0 && e.evaluation_id == status.evaluation_id)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_changes_flip_checks_with_exactly_one_event_each() {
    // The notifier has no contact yet, and alert-ingest does not yet read the partner's alerts
    // (ms-sim holds twelve, some open for days).
    let h = start_with(SimConfig::default(), Palisade { contacts: false }, |_| {}).await;
    let mut events = Events::new(&h).await;
    let first = h.evaluate().await;
    let contact = check(&first, CheckKind::SecurityContact);
    assert_eq!(st(contact), CheckStatus::Fail, "{}", contact.summary);
    assert_eq!(
        contact.subjects,
        vec!["first_name", "last_name", "email", "phone"]
    );
    assert_eq!(
        st(check(&first, CheckKind::AlertResponse)),
        CheckStatus::Pass
    );
    let p2 = check(&first, CheckKind::EntraIdP2);
    assert_eq!(st(p2), CheckStatus::Pass, "{}", p2.summary);
    let non_passing = first
        .checks
        .iter()
        .filter(|f| matches!(st(f), CheckStatus::Fail | CheckStatus::Warn))
        .count();
    events.take(non_passing).await;

    // Security defaults on and the service account registered: MFA for everyone. The partner
    // drops to Entra ID P1: no P2 for its admin agents.
    let p = &h.partner;
    let control = h.sim.control();
    control.set_security_defaults(&p.tenant_id, true);
    control.set_user_mfa(&p.tenant_id, &p.service_account().upn, true);
    control.set_tenant_premium(&p.tenant_id, 1);
    // On the Palisade side: the contacts are recorded, and alert-ingest now reads the alerts.
    h.record_contacts(&p.tenant_id).await;
    let ingested = h.ingest_alerts(&p.tenant_id, 12).await;
    let day_ago = chrono::Utc::now().timestamp_millis() - 86_400_000;
    let mut stale: Vec<String> = ingested
        .iter()
        .filter(|a| {
            a.status != alerts::AlertStatus::Resolved as i32
                && !a.is_test
                && a.detected_at
                    .as_ref()
                    .is_some_and(|t| palisade_contracts::time::to_millis(t) < day_ago)
        })
        .map(|a| a.alert_id.clone())
        .collect();
    stale.sort();
    assert!(!stale.is_empty(), "ms-sim seeds alerts open for days");
    let second = h.evaluate().await;
    let mfa = check(&second, CheckKind::MfaAllUsers);
    assert_eq!(st(mfa), CheckStatus::Pass, "{}", mfa.summary);
    assert_eq!(mfa.evidence["enforced_by"], "security defaults");
    let alerts_check = check(&second, CheckKind::AlertResponse);
    assert_eq!(
        st(alerts_check),
        CheckStatus::Fail,
        "{}",
        alerts_check.summary
    );
    let mut subjects = alerts_check.subjects.clone();
    subjects.sort();
    assert_eq!(subjects, stale, "the stale alerts are listed");
    assert_eq!(
        alerts_check.evidence["unresolved_older_than_24h"],
        stale.len().to_string()
    );
    let contact = check(&second, CheckKind::SecurityContact);
    assert_eq!(st(contact), CheckStatus::Pass, "{}", contact.summary);
    let p2 = check(&second, CheckKind::EntraIdP2);
    assert_eq!(st(p2), CheckStatus::Fail, "{}", p2.summary);
    assert_eq!(p2.evidence["p2_units"], "0");
    assert_eq!(p2.evidence["admin_agents"], "3");
    assert!(p2.subjects.contains(&p.admin().upn), "{:?}", p2.subjects);

    let changed: Vec<(i32, i32)> = first
        .checks
        .iter()
        .zip(&second.checks)
        .filter(|(a, b)| a.status != b.status && st(b) != CheckStatus::Unknown)
        .map(|(a, b)| (a.status, b.status))
        .collect();
    let got = events.take(changed.len()).await;
    assert_eq!(got.len(), changed.len());
    let mfa_events: Vec<_> = got
        .iter()
        .filter(|e| e.check == CheckKind::MfaAllUsers as i32)
        .collect();
    assert_eq!(mfa_events.len(), 1, "exactly one event for the MFA check");
    assert_eq!(mfa_events[0].previous_status, CheckStatus::Fail as i32);
    assert_eq!(mfa_events[0].status, CheckStatus::Pass as i32);
    assert_eq!(mfa_events[0].previous_score, first.score);
    assert_eq!(mfa_events[0].score, second.score);
    for (kind, from, to) in [
        (
            CheckKind::AlertResponse,
            CheckStatus::Pass,
            CheckStatus::Fail,
        ),
        (CheckKind::EntraIdP2, CheckStatus::Pass, CheckStatus::Fail),
        (
            CheckKind::SecurityContact,
            CheckStatus::Fail,
            CheckStatus::Pass,
        ),
    ] {
        let of_kind: Vec<_> = got.iter().filter(|e| e.check == kind as i32).collect();
        assert_eq!(of_kind.len(), 1, "exactly one event for {kind:?}");
        assert_eq!(
            (of_kind[0].previous_status, of_kind[0].status),
            (from as i32, to as i32)
        );
    }

    // Nothing changed: nothing announced.
    let third = h.evaluate().await;
    assert_eq!(
        third.checks.iter().map(|c| c.status).collect::<Vec<_>>(),
        second.checks.iter().map(|c| c.status).collect::<Vec<_>>()
    );
    assert!(events.take(0).await.is_empty());

    // A relationship loses Global Administrator, DAP is removed: only the expiring one is left.
    for i in [0, 3, 6] {
        control.set_gdap_roles(
            &p.customer(i).unwrap().tenant_id,
            vec![ms_sim::scenario::ROLE_HELPDESK_ADMIN.to_owned()],
        );
    }
    for i in [1, 7] {
        assert!(control.terminate_dap(&p.customer(i).unwrap().tenant_id));
    }
    // DAP is re-read when stale; make every row stale by re-reading now.
    let fourth = {
        let engine = h.engine();
        let settings = &engine.settings;
        assert!(settings.dap_reads_per_run >= 10);
        // Force the DAP re-read: the recheck interval is long, so clear the stored reads.
        sqlx_clear_dap(&h).await;
        h.evaluate().await
    };
    let gdap = check(&fourth, CheckKind::GdapLeastPrivilege);
    assert_eq!(st(gdap), CheckStatus::Warn, "{}", gdap.summary);
    assert_eq!(gdap.evidence["dap_customers"], "0");
    let got = events.take(1).await;
    assert_eq!(got[0].check, CheckKind::GdapLeastPrivilege as i32);
    assert_eq!(got[0].status, CheckStatus::Warn as i32);
    h.stop().await;
}

async fn sqlx_clear_dap(h: &Harness) {
    let db = palisade_storage::Database::connect(&h.db.settings(), "compliance")
        .await
        .unwrap();
    sqlx::query("UPDATE customer_posture SET dap_checked_at = NULL")
        .execute(db.pool())
        .await
        .unwrap();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_customer_tenant_does_not_break_the_others() {
    let h = start(SimConfig::default(), |_| {}).await;
    let broken = h.partner.customer(0).unwrap().tenant_id;
    h.sim.control().inject_fault(
        Fault::new(FaultKind::Status { status: 500 })
            .on(Host::Graph)
            .tenant(&broken),
    );
    let status = h.evaluate().await;
    let rows = h
        .engine()
        .store
        .customers_of_evaluation(&h.partner.tenant_id, &status.evaluation_id)
        .await
        .unwrap();
    assert_eq!(rows.len(), 10, "every customer evaluated");
    let row = rows
        .iter()
        .find(|r| r.customer_tenant_id == broken)
        .unwrap();
    assert_eq!(row.status, CheckStatus::Unknown);
    assert!(row.detail.contains("500"), "{}", row.detail);
    let passing = rows
        .iter()
        .filter(|r| r.status == CheckStatus::Pass)
        .count();
    assert_eq!(passing, 4, "customers 1, 2, 7 and 8 still pass");
    let customers = check(&status, CheckKind::CustomerAdminMfa);
    assert_eq!(customers.evidence["unknown"], "5");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_is_honoured_and_the_budget_never_exceeded() {
    // A tight per-tenant budget: 10 requests per second, burst 2.
    let h = start(SimConfig::default(), |s| {
        s.microsoft.graph_tenant_requests_per_second = 10.0;
        s.microsoft.graph_tenant_burst = 2;
    })
    .await;
    let control = h.sim.control();
    // Graph answers the partner's licence read with 429 twice.
    control.inject_fault(
        Fault::new(FaultKind::Throttle {
            retry_after_secs: 1,
        })
        .on(Host::Graph)
        .tenant(&h.partner.tenant_id)
        .path("subscribedskus")
        .times(2),
    );
    control.clear_requests();
    let status = h.evaluate().await;
    assert_eq!(
        st(check(&status, CheckKind::EntraIdP2)),
        CheckStatus::Pass,
        "the 429s were waited out"
    );
    let requests = control.requests(&ms_sim::RequestFilter {
        host: Some(Host::Graph.name().into()),
        ..Default::default()
    });
    let skus: Vec<_> = requests
        .iter()
        .filter(|r| {
            r.path.to_ascii_lowercase().contains("subscribedskus")
                && r.tenant.eq_ignore_ascii_case(&h.partner.tenant_id)
        })
        .collect();
    assert_eq!(
        skus.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![429, 429, 200]
    );
    assert!(
        skus[2].at_ms - skus[1].at_ms >= 1000,
        "Retry-After respected"
    );
    // Per tenant, no second-long window holds more than rate + burst requests.
    let mut by_tenant: HashMap<String, Vec<i64>> = HashMap::new();
    for r in &requests {
        by_tenant
            .entry(r.tenant.to_ascii_lowercase())
            .or_default()
            .push(r.at_ms);
    }
    for (tenant, mut times) in by_tenant {
        times.sort();
        for (i, start) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|t| **t < start + 1000).count();
            assert!(
                in_window <= 12,
                "tenant {tenant}: {in_window} requests within one second"
            );
        }
    }
    h.stop().await;
}
