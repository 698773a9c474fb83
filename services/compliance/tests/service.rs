//! ComplianceService over gRPC: EvaluateNow with progress, status, findings with filters and
//! pages, history and trend, customer posture, exports, schedules; and denial on every RPC.

mod support;

use ms_sim::SimConfig;
use palisade_auth::{AuthStore, NewCredential, Scope};
use palisade_contracts::compliance::v1::{
    self as pb, CheckKind, CheckStatus, compliance_service_client::ComplianceServiceClient,
};
use support::*;
use tokio_stream::StreamExt;

async fn credential(h: &Harness, partners: &[&str], scopes: Vec<Scope>) -> String {
    let store = AuthStore::open(&h.db.settings()).await.unwrap();
    let (id, full, sha) = palisade_auth::generate_secret();
    store
        .insert(
            &id,
            &sha,
            &NewCredential {
                display_name: "test".into(),
                partners: partners.iter().map(|p| p.to_string()).collect(),
                scopes,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    full
}

async fn evaluate_now(
    client: &mut ComplianceServiceClient<tonic::transport::Channel>,
    credential: &str,
    partner: &str,
) -> (Vec<pb::EvaluateNowProgress>, pb::ComplianceStatus) {
    let mut stream = client
        .evaluate_now(bearer(
            credential,
            pb::EvaluateNowRequest {
                partner_tenant_id: partner.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut messages = Vec::new();
    while let Some(m) = stream.next().await {
        messages.push(m.unwrap());
    }
    let status = messages
        .last()
        .and_then(|m| m.status.clone())
        .expect("last message has the status");
    (messages, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_evaluates_reports_pages_and_exports() {
    let h = start(SimConfig::default(), |_| {}).await;
    let partner = h.partner.tenant_id.clone();
    let mut client = ComplianceServiceClient::new(h.channel().await);
    let cred = credential(&h, &[&partner], vec![Scope::ComplianceWrite]).await;

    // Nothing evaluated yet.
    let missing = client
        .get_compliance_status(bearer(
            &cred,
            pb::GetComplianceStatusRequest {
                partner_tenant_id: partner.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let (messages, status) = evaluate_now(&mut client, &cred, &partner).await;
    assert!(
        messages
            .iter()
            .any(|m| m.progress.as_ref().is_some_and(|p| p.total == 10))
    );
    let last = messages.last().unwrap().progress.clone().unwrap();
    assert_eq!(
        (last.done, last.total, last.failed, last.message.as_str()),
        (10, 10, 4, "done")
    );
    assert_eq!(status.checks.len(), 9);
    assert!(status.score > 0.0 && status.score < 100.0);

    let got = client
        .get_compliance_status(bearer(
            &cred,
            pb::GetComplianceStatusRequest {
                partner_tenant_id: partner.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(got, status);

    // Findings: 9 partner-level, then per customer; filtered and paged.
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_findings(bearer(
                &cred,
                pb::ListFindingsRequest {
                    partner_tenant_id: partner.clone(),
                    page_size: 4,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.findings.len() <= 4);
        all.extend(page.findings);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // 9 checks + 5 customers not passing + 2 DAP + 3 relationships with Global Administrator.
    assert_eq!(all.len(), 9 + 5 + 2 + 3);
    let customer3 = h.partner.customer(3).unwrap().tenant_id;
    let failing_mfa = client
        .list_findings(bearer(
            &cred,
            pb::ListFindingsRequest {
                partner_tenant_id: partner.clone(),
                checks: vec![CheckKind::CustomerAdminMfa as i32],
                statuses: vec![CheckStatus::Fail as i32],
                customer_tenant_id: customer3.to_uppercase(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failing_mfa.findings.len(), 1);
    assert_eq!(failing_mfa.findings[0].customer_tenant_id, customer3);
    assert_eq!(
        failing_mfa.findings[0].subjects,
        vec!["it-admin@customer3p0.onmicrosoft.com"]
    );

    // Customer posture, filtered by status, with the total.
    let unknown = client
        .list_customer_posture(bearer(
            &cred,
            pb::ListCustomerPostureRequest {
                partner_tenant_id: partner.clone(),
                statuses: vec![CheckStatus::Unknown as i32],
                page_size: 3,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.total, 4);
    assert_eq!(unknown.customers.len(), 3);
    assert!(!unknown.next_page_token.is_empty());

    // History after a second run, newest first, with the trend.
    h.sim.control().set_security_defaults(&partner, true);
    h.sim
        .control()
        .set_user_mfa(&partner, &h.partner.service_account().upn, true);
    let (_, second) = evaluate_now(&mut client, &cred, &partner).await;
    let history = client
        .get_history(bearer(
            &cred,
            pb::GetHistoryRequest {
                partner_tenant_id: partner.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.points.len(), 2);
    assert_eq!(history.points[0].evaluation_id, second.evaluation_id);
    assert_eq!(history.points[1].evaluation_id, status.evaluation_id);
    assert!((history.trend - (second.score - status.score)).abs() < 0.11);

    // Exports: CSV, JSON and HTML bytes.
    let export = |format: pb::ReportFormat| {
        let mut client = client.clone();
        let (cred, partner) = (cred.clone(), partner.clone());
        async move {
            let mut stream = client
                .export_report(bearer(
                    &cred,
                    pb::ExportReportRequest {
                        partner_tenant_id: partner,
                        format: format as i32,
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            let mut bytes = Vec::new();
            let mut content_type = String::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.unwrap();
                content_type = chunk.content_type;
                bytes.extend(chunk.data);
            }
            (content_type, String::from_utf8(bytes).unwrap())
        }
    };
    let (ct, csv) = export(pb::ReportFormat::Csv).await;
    assert_eq!(ct, "text/csv; charset=utf-8");
    assert!(csv.starts_with("partner_tenant_id,evaluation_id,evaluated_at,check,status,"));
    assert!(csv.contains("\"customer_admin_mfa\",\"fail\""));
    assert_eq!(
        csv.lines().count(),
        1 + 9 + 5 + 2 + 3,
        "header, checks, findings"
    );
    let (ct, json) = export(pb::ReportFormat::Json).await;
    assert_eq!(ct, "application/json");
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["evaluation_id"], second.evaluation_id);
    assert_eq!(parsed["checks"].as_array().unwrap().len(), 9);
    let (ct, html) = export(pb::ReportFormat::Html).await;
    assert!(ct.starts_with("text/html"));
    assert!(html.contains("Partner security compliance") && html.contains(&customer3));

    // Schedules.
    let schedule = client
        .set_evaluation_schedule(bearer(
            &cred,
            pb::SetEvaluationScheduleRequest {
                partner_tenant_id: partner.clone(),
                interval_seconds: 900,
                enabled: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((schedule.interval_seconds, schedule.enabled), (900, true));
    assert!(schedule.next_run_at.is_some());
    let too_often = client
        .set_evaluation_schedule(bearer(
            &cred,
            pb::SetEvaluationScheduleRequest {
                partner_tenant_id: partner.clone(),
                interval_seconds: 5,
                enabled: true,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(too_often.code(), tonic::Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_denies_other_partners_missing_scopes_and_no_credential() {
    let h = start(SimConfig::default(), |_| {}).await;
    let partner = h.partner.tenant_id.clone();
    let other = h.sim.scenario().partners[1].tenant_id.clone();
    let mut client = ComplianceServiceClient::new(h.channel().await);
    // Data exists for the partner, so a leak would show.
    let owner = credential(&h, &[&partner], vec![Scope::ComplianceWrite]).await;
    evaluate_now(&mut client, &owner, &partner).await;

    let cross = credential(
        &h,
        &[&other],
        vec![Scope::ComplianceWrite, Scope::ComplianceRead],
    )
    .await;
    let reader = credential(&h, &[&partner], vec![Scope::ComplianceRead]).await;
    let unrelated = credential(&h, &[&partner], vec![Scope::NotifyAdmin]).await;

    async fn all(
        client: &mut ComplianceServiceClient<tonic::transport::Channel>,
        cred: Option<&str>,
        partner: &str,
    ) -> Vec<(&'static str, tonic::Code)> {
        fn with<T>(cred: Option<&str>, m: T) -> tonic::Request<T> {
            match cred {
                Some(c) => bearer(c, m),
                None => tonic::Request::new(m),
            }
        }
        let p = partner.to_owned();
        let code = |r: Result<_, tonic::Status>| r.err().map_or(tonic::Code::Ok, |s| s.code());
        vec![
            (
                "GetComplianceStatus",
                code(
                    client
                        .get_compliance_status(with(
                            cred,
                            pb::GetComplianceStatusRequest {
                                partner_tenant_id: p.clone(),
                            },
                        ))
                        .await
                        .map(|_| ()),
                ),
            ),
            (
                "ListFindings",
                code(
                    client
                        .list_findings(with(
                            cred,
                            pb::ListFindingsRequest {
                                partner_tenant_id: p.clone(),
                                ..Default::default()
                            },
                        ))
                        .await
                        .map(|_| ()),
                ),
            ),
            (
                "GetHistory",
                code(
                    client
                        .get_history(with(
                            cred,
                            pb::GetHistoryRequest {
                                partner_tenant_id: p.clone(),
                                ..Default::default()
                            },
                        ))
                        .await
                        .map(|_| ()),
                ),
            ),
            (
                "ListCustomerPosture",
                code(
                    client
                        .list_customer_posture(with(
                            cred,
                            pb::ListCustomerPostureRequest {
                                partner_tenant_id: p.clone(),
                                ..Default::default()
                            },
                        ))
                        .await
                        .map(|_| ()),
                ),
            ),
            (
                "ExportReport",
                code(
                    client
                        .export_report(with(
                            cred,
                            pb::ExportReportRequest {
                                partner_tenant_id: p.clone(),
                                format: pb::ReportFormat::Csv as i32,
                            },
                        ))
                        .await
                        .map(|_| ()),
                ),
            ),
            (
                "EvaluateNow",
                code(
                    client
                        .evaluate_now(with(
                            cred,
                            pb::EvaluateNowRequest {
                                partner_tenant_id: p.clone(),
                            },
                        ))
                        .await
                        .map(|_| ()),
                ),
            ),
            (
                "SetEvaluationSchedule",
                code(
                    client
                        .set_evaluation_schedule(with(
                            cred,
                            pb::SetEvaluationScheduleRequest {
                                partner_tenant_id: p.clone(),
                                interval_seconds: 3600,
                                enabled: true,
                            },
                        ))
                        .await
                        .map(|_| ()),
                ),
            ),
        ]
    }

    for (rpc, code) in all(&mut client, Some(&cross), &partner).await {
        assert_eq!(
            code,
            tonic::Code::PermissionDenied,
            "{rpc} with another partner's credential"
        );
    }
    for (rpc, code) in all(&mut client, Some(&unrelated), &partner).await {
        assert_eq!(
            code,
            tonic::Code::PermissionDenied,
            "{rpc} without a compliance scope"
        );
    }
    for (rpc, code) in all(&mut client, None, &partner).await {
        assert_eq!(
            code,
            tonic::Code::Unauthenticated,
            "{rpc} without a credential"
        );
    }
    // Read scope: reads work, writes are denied.
    for (rpc, code) in all(&mut client, Some(&reader), &partner).await {
        let write = matches!(rpc, "EvaluateNow" | "SetEvaluationSchedule");
        let expected = if write {
            tonic::Code::PermissionDenied
        } else {
            tonic::Code::Ok
        };
        assert_eq!(code, expected, "{rpc} with compliance:read");
    }
    h.stop().await;
}
