//! Microsoft Graph as the simulator serves it: partner security alerts and score, and the
//! compliance reads in partner and customer tenants, with permissions enforced.

mod support;

use ms_sim::{GRAPH, ScenarioConfig, SimConfig};
use serde_json::{Value, json};
use support::*;

fn graph(sim: &ms_sim::MsSim, path: &str) -> url::Url {
    sim.graph_url().join(path).unwrap()
}

async fn partner_graph_token(sim: &ms_sim::MsSim) -> String {
    let partner = sim.scenario().partners[0].clone();
    user_token(
        sim,
        &partner,
        &partner.admin().upn,
        &partner.tenant_id,
        GRAPH,
    )
    .await
}

/// Follows `@odata.nextLink` to the end; returns every item and the number of pages.
async fn all_pages(first: url::Url, token: &str) -> (Vec<Value>, usize) {
    let (mut items, mut pages, mut next) = (Vec::new(), 0, Some(first.to_string()));
    while let Some(url) = next {
        let (status, _, body) = get(url::Url::parse(&url).unwrap(), token).await;
        assert_eq!(status, 200, "{body}");
        items.extend(body["value"].as_array().unwrap().iter().cloned());
        pages += 1;
        next = body["@odata.nextLink"].as_str().map(str::to_owned);
    }
    (items, pages)
}

#[tokio::test]
async fn alerts_page_through_next_links_filter_and_carry_the_quirks() {
    let sim = sim().await;
    let token = partner_graph_token(&sim).await;
    let (alerts, pages) = all_pages(
        graph(&sim, "/beta/security/partner/securityAlerts?$top=5"),
        &token,
    )
    .await;
    assert_eq!((alerts.len(), pages), (12, 3));
    let mut ids: Vec<&str> = alerts.iter().map(|a| a["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 12);
    assert!(
        alerts.iter().any(|a| a["isTest"].is_string()),
        "isTest is sometimes a string"
    );
    assert!(alerts.iter().any(|a| a["isTest"].is_boolean()));
    assert!(
        alerts.iter().any(|a| a.get("riskScore").is_some()),
        "unknown extra fields appear"
    );
    assert!(
        alerts
            .iter()
            .any(|a| !ms_sim::ALERT_TYPES[..7].contains(&a["alertType"].as_str().unwrap()))
    );
    for state in ["active", "investigating", "resolved"] {
        assert!(alerts.iter().any(|a| a["status"] == state), "{state}");
    }
    for reason in ["legitimate", "fraud"] {
        assert!(
            alerts.iter().any(|a| a["resolvedReason"] == reason),
            "{reason}"
        );
    }

    let (active, _) = all_pages(
        graph(
            &sim,
            "/beta/security/partner/securityAlerts?$filter=status eq 'active'",
        ),
        &token,
    )
    .await;
    assert!(!active.is_empty() && active.iter().all(|a| a["status"] == "active"));
    let mut observed: Vec<&str> = alerts
        .iter()
        .map(|a| a["lastObservedDateTime"].as_str().unwrap())
        .collect();
    observed.sort();
    let middle = observed[6];
    let query = format!(
        "/beta/security/partner/securityAlerts?$filter=lastObservedDateTime ge {middle} and status ne 'resolved'"
    );
    let (recent, _) = all_pages(graph(&sim, &query), &token).await;
    let expected = alerts
        .iter()
        .filter(|a| {
            a["lastObservedDateTime"].as_str().unwrap() >= middle && a["status"] != "resolved"
        })
        .count();
    assert_eq!(recent.len(), expected);
    let (status, _, error) = get(
        graph(
            &sim,
            "/beta/security/partner/securityAlerts?$filter=owner eq 'x'",
        ),
        &token,
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (400, Some("BadRequest"))
    );
    let (_, _, counted) = get(
        graph(
            &sim,
            "/beta/security/partner/securityAlerts?$count=true&$top=1&$select=status",
        ),
        &token,
    )
    .await;
    assert_eq!(counted["@odata.count"], 12);
    assert_eq!(
        counted["value"][0].as_object().unwrap().len(),
        2,
        "id and the selected field"
    );
    sim.shutdown().await;
}

/// A detection computed from delayed usage data appears now with activity that ended hours
/// ago: a reader filtering on recent `lastObservedDateTime` does not see it.
#[tokio::test]
async fn an_alert_can_surface_hours_after_its_last_observed_activity() {
    let sim = sim().await;
    let token = partner_graph_token(&sim).await;
    let partner = sim.scenario().partners[0].tenant_id.clone();
    let control = sim.control();
    let now = control.now_millis();
    let id = control
        .raise_alert(
            &partner,
            &ms_sim::AlertSpec {
                observed_seconds_ago: Some(3 * 3600),
                ..Default::default()
            },
        )
        .unwrap();
    let (alerts, _) = all_pages(graph(&sim, "/beta/security/partner/securityAlerts"), &token).await;
    let late = alerts.iter().find(|a| a["id"] == id.as_str()).unwrap();
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(late[field].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    assert!(at("detectedDateTime") >= now, "detected when it appears");
    let last = at("lastObservedDateTime");
    assert!(last <= now - 3 * 3_600_000 + 1000 && last > now - 3 * 3_600_000 - 60_000);
    assert!(at("firstObservedDateTime") < last);

    let hour_ago = chrono::DateTime::from_timestamp_millis(now - 3_600_000)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let query =
        format!("/beta/security/partner/securityAlerts?$filter=lastObservedDateTime ge {hour_ago}");
    let (recent, _) = all_pages(graph(&sim, &query), &token).await;
    assert!(recent.iter().all(|a| a["id"] != id.as_str()));
    sim.shutdown().await;
}

#[tokio::test]
async fn patch_returns_the_whole_updated_alert_and_needs_the_write_permission() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let token = partner_graph_token(&sim).await;
    let (_, _, list) = get(
        graph(
            &sim,
            "/beta/security/partner/securityAlerts?$filter=status eq 'active'",
        ),
        &token,
    )
    .await;
    let alert = list["value"][0].clone();
    let url = graph(
        &sim,
        &format!(
            "/beta/security/partner/securityAlerts/{}",
            alert["id"].as_str().unwrap()
        ),
    );
    let patch = |token: &str, body: Value| http().patch(url.clone()).bearer_auth(token).json(&body);
    let (status, updated) = send(patch(
        &token,
        json!({"status": "resolved", "resolvedReason": "fraud"}),
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            updated["status"].as_str(),
            updated["resolvedReason"].as_str()
        ),
        (Some("resolved"), Some("fraud"))
    );
    assert_eq!(
        updated["displayName"], alert["displayName"],
        "the whole object comes back"
    );
    assert_eq!(updated["resolvedBy"], partner.admin().upn.as_str());
    let logs = updated["activityLogs"].as_array().unwrap();
    assert_eq!(logs.last().unwrap()["statusTo"], "resolved");
    assert_eq!(
        send(patch(&token, json!({"status": "resolved", "owner": "me"})))
            .await
            .0,
        400
    );
    assert_eq!(
        send(patch(&token, json!({"status": "closed"}))).await.0,
        400
    );
    assert_eq!(
        send(
            http()
                .patch(url.clone())
                .bearer_auth(&token)
                .body("status=resolved")
        )
        .await
        .0,
        415
    );

    // Without PartnerSecurity.ReadWrite.All: reads work, writes are denied.
    sim.control().set_graph_permissions(
        &partner.app.client_id,
        vec!["PartnerSecurity.Read.All".into()],
    );
    let reader = partner_graph_token(&sim).await;
    assert_eq!(get(url.clone(), &reader).await.0, 200);
    let (status, denied) = send(patch(&reader, json!({"status": "active"}))).await;
    assert_eq!(
        (status, denied["error"]["code"].as_str()),
        (403, Some("Authorization_RequestDenied"))
    );
    sim.control()
        .set_graph_permissions(&partner.app.client_id, vec!["User.Read.All".into()]);
    let nothing = partner_graph_token(&sim).await;
    assert_eq!(get(url.clone(), &nothing).await.0, 403);
    // The legacy API sees the same resolution.
    let pc = admin_pc_token(&sim).await;
    let (_, _, events) = get(
        sim.partner_center_url()
            .join("/v1/fraudEvents?EventStatus=Resolved")
            .unwrap(),
        &pc,
    )
    .await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["resolvedReason"] == "Fraud")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn the_security_score_follows_the_world() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let token = partner_graph_token(&sim).await;
    let (_, _, score) = get(
        graph(
            &sim,
            "/beta/security/partner/securityScore?$expand=requirements,history",
        ),
        &token,
    )
    .await;
    assert_eq!(score["maxScore"], 100.0);
    let kinds: Vec<&str> = score["requirements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requirementType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "mfaEnforcedForAdmins",
            "mfaEnforcedForAdminsOfCustomers",
            "securityAlertsPromptlyResolved",
            "securityContactProvided",
            "spendingBudgetSetForCustomerAzureSubscriptions"
        ]
    );
    assert_eq!(score["history"].as_array().unwrap().len(), 7);
    let admins = &score["requirements"][0];
    // The service account has no MFA.
    assert_eq!(
        (
            admins["complianceStatus"].as_str(),
            admins["mfaEnabledAdminsCount"].as_u64()
        ),
        (Some("nonCompliant"), Some(2))
    );
    let before = score["currentScore"].as_f64().unwrap();

    sim.control()
        .set_user_mfa(&partner.tenant_id, &partner.service_account().upn, true);
    sim.control()
        .set_security_contact(&partner.tenant_id, false);
    let (_, _, requirements) = get(
        graph(&sim, "/beta/security/partner/securityScore/requirements"),
        &token,
    )
    .await;
    assert_eq!(requirements["value"][0]["complianceStatus"], "compliant");
    assert_eq!(requirements["value"][3]["complianceStatus"], "nonCompliant");
    let (_, _, after) = get(graph(&sim, "/beta/security/partner/securityScore"), &token).await;
    assert_eq!(
        after["currentScore"].as_f64().unwrap(),
        before + 20.0 - 20.0
    );
    let id = requirements["value"][2]["id"].as_str().unwrap();
    let (_, _, one) = get(
        graph(
            &sim,
            &format!("/beta/security/partner/securityScore/requirements/{id}"),
        ),
        &token,
    )
    .await;
    assert!(one["averageResponseTimeInHours"].is_number());
    sim.shutdown().await;
}

#[tokio::test]
async fn customer_insights_page_by_skip_token_only() {
    let sim = sim_with(SimConfig {
        scenario: ScenarioConfig {
            partners: 1,
            customers_per_partner: 250,
            alerts_per_partner: 3,
        },
        ..SimConfig::default()
    })
    .await;
    let token = partner_graph_token(&sim).await;
    let (insights, pages) = all_pages(
        graph(
            &sim,
            "/beta/security/partner/securityScore/customerInsights",
        ),
        &token,
    )
    .await;
    assert_eq!((insights.len(), pages), (250, 3));
    assert!(insights[0]["mfa"]["totalUsersCount"].is_number());
    assert_eq!(
        get(
            graph(
                &sim,
                "/beta/security/partner/securityScore/customerInsights?$top=10"
            ),
            &token
        )
        .await
        .0,
        400
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn compliance_reads_answer_per_tenant_and_follow_policy_changes() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    // Customer 0: security defaults on, P2. Customer 5: nothing premium, no tenant-wide MFA.
    let (c0, c5) = (partner.customer(0).unwrap(), partner.customer(5).unwrap());
    let rt = refresh_token(&sim, &partner, &partner.admin().upn).await;
    let customer_token = |tenant: String| {
        let (sim, partner, rt) = (&sim, &partner, rt.clone());
        async move {
            token_call(
                sim,
                partner,
                &tenant,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("resource", GRAPH),
                ],
            )
            .await["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let t0 = customer_token(c0.tenant_id.clone()).await;
    let t5 = customer_token(c5.tenant_id.clone()).await;
    let defaults = |token: String| {
        let url = graph(
            &sim,
            "/v1.0/policies/identitySecurityDefaultsEnforcementPolicy",
        );
        async move { get(url, &token).await.2 }
    };
    let policy = defaults(t0.clone()).await;
    assert_eq!(
        (policy["id"].as_str(), policy["isEnabled"].as_bool()),
        (Some("00000000-0000-0000-0000-000000000005"), Some(true))
    );
    sim.control().set_security_defaults(&c0.tenant_id, false);
    assert_eq!(defaults(t0.clone()).await["isEnabled"], false);

    let (_, _, registration) = get(graph(&sim, "/v1.0/reports/authenticationMethods/userRegistrationDetails?$filter=isAdmin eq true and isMfaRegistered eq false"), &t0).await;
    assert_eq!(
        registration["value"].as_array().unwrap().len(),
        0,
        "{registration}"
    );
    let (status, _, premium) = get(
        graph(
            &sim,
            "/v1.0/reports/authenticationMethods/userRegistrationDetails",
        ),
        &t5,
    )
    .await;
    assert_eq!(
        (status, premium["error"]["code"].as_str()),
        (
            403,
            Some("Authentication_RequestFromNonPremiumTenantOrB2CTenant")
        )
    );

    let (_, _, skus) = get(graph(&sim, "/v1.0/subscribedSkus"), &t0).await;
    assert!(
        skus["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["skuPartNumber"] == "AAD_PREMIUM_P2")
    );
    assert_eq!(
        get(
            graph(
                &sim,
                "/v1.0/subscribedSkus?$filter=skuPartNumber eq 'AAD_PREMIUM_P2'"
            ),
            &t0
        )
        .await
        .0,
        400
    );

    let (_, _, ca) = get(
        graph(&sim, "/v1.0/identity/conditionalAccess/policies"),
        &t0,
    )
    .await;
    let mfa = ca["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["grantControls"]["builtInControls"] == json!(["mfa"]))
        .unwrap()
        .clone();
    assert_eq!(mfa["state"], "disabled");
    sim.control().set_mfa_policy(&c0.tenant_id, true);
    let (_, _, ca) = get(
        graph(&sim, "/v1.0/identity/conditionalAccess/policies"),
        &t0,
    )
    .await;
    assert_eq!(ca["value"][0]["state"], "enabled");
    // A customer-tenant token cannot read the partner's alerts.
    assert_eq!(
        get(graph(&sim, "/beta/security/partner/securityAlerts"), &t0)
            .await
            .0,
        403
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn gdap_relationships_page_filter_and_show_roles_expiry_and_assignments() {
    let sim = sim_with(SimConfig {
        scenario: ScenarioConfig {
            partners: 1,
            customers_per_partner: 30,
            alerts_per_partner: 1,
        },
        ..SimConfig::default()
    })
    .await;
    let partner = sim.scenario().partners[0].clone();
    let token = partner_graph_token(&sim).await;
    let (all, pages) = all_pages(
        graph(
            &sim,
            "/v1.0/tenantRelationships/delegatedAdminRelationships?$top=10",
        ),
        &token,
    )
    .await;
    // 30 customers: 6 have no usable GDAP, 3 of those had one that expired.
    assert_eq!((all.len(), pages), (27, 3));
    assert_eq!(all.iter().filter(|r| r["status"] == "expired").count(), 3);
    let ga = "62e90394-69f5-4237-9190-012177145e10";
    let first = all
        .iter()
        .find(|r| r["customer"]["tenantId"] == partner.customer(0).unwrap().tenant_id.as_str())
        .unwrap();
    assert_eq!(
        first["accessDetails"]["unifiedRoles"][0]["roleDefinitionId"],
        ga
    );
    let expiring = all
        .iter()
        .find(|r| r["customer"]["tenantId"] == partner.customer(3).unwrap().tenant_id.as_str())
        .unwrap();
    let end =
        chrono::DateTime::parse_from_rfc3339(expiring["endDateTime"].as_str().unwrap()).unwrap();
    assert!(end.timestamp_millis() - sim.control().now_millis() < 30 * 24 * 3_600_000);
    assert_eq!(expiring["autoExtendDuration"], "PT0S");
    assert_eq!(
        get(
            graph(
                &sim,
                "/v1.0/tenantRelationships/delegatedAdminRelationships?$top=301"
            ),
            &token
        )
        .await
        .0,
        400
    );
    let (active, _) = all_pages(
        graph(
            &sim,
            "/v1.0/tenantRelationships/delegatedAdminRelationships?$filter=status eq 'active'",
        ),
        &token,
    )
    .await;
    assert_eq!(active.len(), 24);
    let customer = partner.customer(1).unwrap();
    let filter = format!(
        "/v1.0/tenantRelationships/delegatedAdminRelationships?$filter=customer/tenantId eq '{}'",
        customer.tenant_id
    );
    let (one, _) = all_pages(graph(&sim, &filter), &token).await;
    assert_eq!(one.len(), 1);
    let id = one[0]["id"].as_str().unwrap();
    let (_, _, assignments) = get(
        graph(
            &sim,
            &format!(
                "/v1.0/tenantRelationships/delegatedAdminRelationships/{id}/accessAssignments"
            ),
        ),
        &token,
    )
    .await;
    assert_eq!(
        assignments["value"][0]["accessContainer"]["accessContainerType"],
        "securityGroup"
    );

    sim.control().expire_gdap(&customer.tenant_id);
    let (_, _, expired) = get(
        graph(
            &sim,
            &format!("/v1.0/tenantRelationships/delegatedAdminRelationships/{id}"),
        ),
        &token,
    )
    .await;
    assert_eq!(expired["status"], "expired");
    let rt = refresh_token(&sim, &partner, &partner.admin().upn).await;
    let body = token_call(
        &sim,
        &partner,
        &customer.tenant_id,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("resource", GRAPH),
        ],
    )
    .await;
    assert_eq!(body["error_codes"], json!([50020]));
    sim.shutdown().await;
}

#[tokio::test]
async fn licences_follow_user_and_tenant_changes() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let token = partner_graph_token(&sim).await;
    let p2_units = |body: &Value| {
        body["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["skuPartNumber"] == "AAD_PREMIUM_P2")
            .map(|s| s["consumedUnits"].as_u64().unwrap())
    };
    let (_, _, skus) = get(graph(&sim, "/v1.0/subscribedSkus"), &token).await;
    assert_eq!(
        p2_units(&skus),
        Some(2),
        "admin and break-glass hold P2; the service account does not"
    );
    sim.control()
        .set_user_p2(&partner.tenant_id, &partner.admin().upn, false);
    let (_, _, skus) = get(graph(&sim, "/v1.0/subscribedSkus"), &token).await;
    assert_eq!(p2_units(&skus), Some(1));
    sim.control().set_tenant_premium(&partner.tenant_id, 0);
    let (_, _, skus) = get(graph(&sim, "/v1.0/subscribedSkus"), &token).await;
    assert_eq!(p2_units(&skus), None);
    assert_eq!(
        get(
            graph(
                &sim,
                "/v1.0/reports/authenticationMethods/userRegistrationDetails"
            ),
            &token
        )
        .await
        .0,
        403
    );
    sim.shutdown().await;
}
