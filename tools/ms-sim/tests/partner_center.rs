//! Partner Center as the simulator serves it: MFA enforcement, fraudEvents with their quirks,
//! customers and subscriptions, consents, MFA reports, profiles and idempotent retries.

mod support;

use ms_sim::{AlertSpec, PARTNER_CENTER, SimConfig};
use serde_json::{Value, json};
use support::*;

fn pc(sim: &ms_sim::MsSim, path: &str) -> url::Url {
    sim.partner_center_url().join(path).unwrap()
}

fn zoneless(text: &str) -> bool {
    !text.ends_with('Z') && !text.contains('+') && text.len() >= 19
}

#[tokio::test]
async fn user_tokens_without_mfa_are_refused_with_the_documented_challenge() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let no_mfa = user_token(
        &sim,
        &partner,
        &partner.service_account().upn,
        &partner.tenant_id,
        PARTNER_CENTER,
    )
    .await;
    assert_eq!(claims(&no_mfa)["amr"], json!(["pwd"]));
    let (status, headers, body) = get(pc(&sim, "/v1/customers"), &no_mfa).await;
    assert_eq!(status, 401);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    for field in ["code", "description", "data", "source"] {
        assert!(body.get(field).is_some(), "{field} in {body}");
    }
    // No token, and a forged one, are refused the same way.
    let (status, _, _) = get(pc(&sim, "/v1/customers"), "eyJhbGciOiJub25lIn0.e30.").await;
    assert_eq!(status, 401);
    // A Graph token is for another audience.
    let graph = user_token(
        &sim,
        &partner,
        &partner.admin().upn,
        &partner.tenant_id,
        ms_sim::GRAPH,
    )
    .await;
    assert_eq!(get(pc(&sim, "/v1/customers"), &graph).await.0, 401);
    // The admin with MFA gets through.
    let token = admin_pc_token(&sim).await;
    assert_eq!(get(pc(&sim, "/v1/customers"), &token).await.0, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn fraud_events_are_a_bare_array_with_every_quirk_and_page_only_in_the_new_model() {
    let sim = sim().await;
    let token = admin_pc_token(&sim).await;
    let (status, _, legacy) = get(pc(&sim, "/v1/fraudEvents"), &token).await;
    assert_eq!(status, 200);
    let events = legacy.as_array().expect("a bare array, not an envelope");
    assert_eq!(events.len(), 12);
    let first = &events[0];
    assert!(first["hitCount"].is_string(), "hitCount is a string");
    assert!(
        zoneless(first["eventTime"].as_str().unwrap()),
        "{}",
        first["eventTime"]
    );
    assert!(
        first.get("eventType").is_none(),
        "the legacy model has no eventType"
    );
    assert!(
        first["eventId"]
            .as_str()
            .unwrap()
            .starts_with(first["subscriptionId"].as_str().unwrap())
    );
    let open = events
        .iter()
        .find(|e| e["eventStatus"] == "Active")
        .unwrap();
    assert_eq!(open["resolvedOn"], "9999-12-31T23:59:59.997");
    assert_eq!(open["resolvedReason"], "None");

    // The paths are case-insensitive, and paging without the header is ignored.
    let (_, _, lower) = get(pc(&sim, "/v1/fraudevents?PageSize=2&PageNumber=1"), &token).await;
    assert_eq!(lower.as_array().unwrap().len(), 12);

    let new_model = |query: &str| {
        http()
            .get(pc(&sim, &format!("/v1/fraudEvents{query}")))
            .bearer_auth(&token)
            .header("X-NewEventsModel", "true")
    };
    let (_, page1) = send(new_model("?PageSize=5&PageNumber=1")).await;
    let (_, page3) = send(new_model("?PageSize=5&PageNumber=3")).await;
    assert_eq!(page1.as_array().unwrap().len(), 5);
    assert_eq!(page3.as_array().unwrap().len(), 2);
    assert_ne!(page1[0]["eventId"], page3[0]["eventId"]);
    let event = &page1[0];
    assert!(
        event["activityLogs"].is_string(),
        "activityLogs is a JSON-encoded string"
    );
    let logs: Value = serde_json::from_str(event["activityLogs"].as_str().unwrap()).unwrap();
    assert!(logs.is_array());
    assert!(event["IsTest"] == "false" || event["IsTest"] == "true");
    assert!(event["affectedResources"][0]["azureResourceId"].is_string());
    assert_eq!(send(new_model("?PageSize=0")).await.0, 400);
    let (_, resolved) = send(new_model("?EventStatus=Resolved")).await;
    assert!(
        resolved
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["eventStatus"] == "Resolved")
    );
    assert!(!resolved.as_array().unwrap().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn status_updates_accept_both_casings_reach_graph_and_replay_on_the_same_request_id() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let token = admin_pc_token(&sim).await;
    let id = sim
        .control()
        .raise_alert(&partner.tenant_id, &AlertSpec::default())
        .unwrap();
    let alert = sim
        .control()
        .alerts(&partner.tenant_id)
        .into_iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap();
    let subscription = alert["subscriptionId"].as_str().unwrap().to_owned();
    let (_, _, events) = get(
        pc(
            &sim,
            &format!("/v1/fraudEvents?SubscriptionId={subscription}"),
        ),
        &token,
    )
    .await;
    let event_id = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["eventStatus"] == "Active")
        .unwrap()["eventId"]
        .clone();

    let url = pc(
        &sim,
        &format!("/v1/fraudEvents/subscription/{subscription}/status"),
    );
    let update = |body: Value, request_id: &str| {
        http()
            .post(url.clone())
            .bearer_auth(&token)
            .header("MS-RequestId", request_id.to_owned())
            .json(&body)
    };
    let (status, body) = send(update(
        json!({"EventIds": [event_id], "EventStatus": "Resolved", "ResolvedReason": "Legitimate"}),
        "req-1",
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["eventStatus"], "Resolved");
    assert_eq!(body[0]["resolvedReason"], "Legitimate");
    let graph_alert = |sim: &ms_sim::MsSim| {
        sim.control()
            .alerts(&partner.tenant_id)
            .into_iter()
            .find(|a| a["id"] == id.as_str())
            .unwrap()
    };
    let graph_view = graph_alert(&sim);
    assert_eq!(graph_view["status"], "resolved");
    assert_eq!(graph_view["resolvedReason"], "legitimate");
    let log_count = graph_view["activityLogs"].as_array().unwrap().len();

    // A retry with the same MS-RequestId is answered from the first call, without acting again.
    let (status, replay) = send(update(
        json!({"EventIds": [event_id], "EventStatus": "Resolved", "ResolvedReason": "Legitimate"}),
        "req-1",
    ))
    .await;
    assert_eq!((status, &replay), (200, &body));
    assert_eq!(
        graph_alert(&sim)["activityLogs"].as_array().unwrap().len(),
        log_count
    );

    // camelCase works; an empty id list means every event of the subscription.
    let (status, all) = send(update(
        json!({"eventIds": [], "eventStatus": "Investigating", "resolvedReason": "Ignore"}),
        "req-2",
    ))
    .await;
    assert_eq!(status, 200);
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|e| e["eventStatus"] == "Investigating")
    );
    // Bad input: a clear error, nothing changed.
    let (status, error) = send(update(
        json!({"EventIds": [event_id], "EventStatus": "Resolved"}),
        "req-3",
    ))
    .await;
    assert_eq!(status, 400);
    assert!(
        error["description"]
            .as_str()
            .unwrap()
            .contains("ResolvedReason")
    );
    assert_eq!(graph_alert(&sim)["status"], "investigating");
    sim.shutdown().await;
}

#[tokio::test]
async fn app_only_tokens_cannot_read_fraud_events() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let token = app_token(&sim, &partner, PARTNER_CENTER).await;
    assert_eq!(get(pc(&sim, "/v1/fraudEvents"), &token).await.0, 403);
    // App-only is fine where the docs allow it.
    assert_eq!(get(pc(&sim, "/v1/customers"), &token).await.0, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn customers_page_with_continuation_tokens_and_carry_dap_resellers_and_subscriptions() {
    let sim = sim().await;
    let token = admin_pc_token(&sim).await;
    let mut ids = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let mut request = http()
            .get(pc(&sim, "/v1/customers?size=4"))
            .bearer_auth(&token);
        if let Some(token) = &continuation {
            request = request.header("MS-ContinuationToken", token);
        }
        let (status, page) = send(request).await;
        assert_eq!(status, 200);
        assert_eq!(page["totalCount"], page["items"].as_array().unwrap().len());
        for item in page["items"].as_array().unwrap() {
            assert!(
                item.get("allowDelegatedAccess").is_none(),
                "only get-by-id carries DAP"
            );
            ids.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["links"]["next"]["headers"][0]["value"].as_str() {
            Some(next) => continuation = Some(next.to_owned()),
            None => break,
        }
    }
    let partner = sim.scenario().partners[0].clone();
    assert_eq!(
        ids,
        partner.customers().map(|c| c.tenant_id).collect::<Vec<_>>()
    );

    // Customer 1 has leftover DAP; removing it is a PATCH.
    let dap = partner.customer(1).unwrap();
    let (_, _, before) = get(
        pc(&sim, &format!("/v1/customers/{}", dap.tenant_id)),
        &token,
    )
    .await;
    assert_eq!(before["allowDelegatedAccess"], true);
    let (status, after) = send(
        http()
            .patch(pc(&sim, &format!("/v1/customers/{}", dap.tenant_id)))
            .bearer_auth(&token)
            .json(
                &json!({"AllowDelegatedAccess": false, "attributes": {"objectType": "Customer"}}),
            ),
    )
    .await;
    assert_eq!(
        (status, &after["allowDelegatedAccess"]),
        (200, &json!(false))
    );

    // Customer 5 is sold through an indirect reseller.
    let resold = partner.customer(5).unwrap();
    let (_, _, relationships) = get(
        pc(
            &sim,
            &format!("/v1/customers/{}/relationships", resold.tenant_id),
        ),
        &token,
    )
    .await;
    assert_eq!(
        relationships["items"][0]["relationshipType"],
        "is_indirect_cloud_solution_provider_of"
    );
    // The Azure plan's entitlement is the subscription alerts name.
    let (_, _, subscriptions) = get(
        pc(
            &sim,
            &format!("/v1/customers/{}/subscriptions", resold.tenant_id),
        ),
        &token,
    )
    .await;
    let azure = subscriptions["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["offerName"] == "Azure plan")
        .unwrap()
        .clone();
    let id = sim
        .control()
        .raise_alert(
            &partner.tenant_id,
            &AlertSpec {
                customer_tenant_id: Some(resold.tenant_id.clone()),
                ..AlertSpec::default()
            },
        )
        .unwrap();
    let alert = sim
        .control()
        .alerts(&partner.tenant_id)
        .into_iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap();
    assert_eq!(azure["entitlementId"], alert["subscriptionId"]);
    assert_eq!(
        alert["valueAddedResellerTenantId"],
        relationships["items"][0]["id"]
    );
    let (status, _, one) = get(
        pc(
            &sim,
            &format!(
                "/v1/customers/{}/subscriptions/{}",
                resold.tenant_id,
                azure["id"].as_str().unwrap()
            ),
        ),
        &token,
    )
    .await;
    assert_eq!(
        (status, &one["attributes"]["objectType"]),
        (200, &json!("Subscription"))
    );
    // Another partner's customer does not exist for this partner.
    let foreign = sim.scenario().partners[1].customer(0).unwrap();
    assert_eq!(
        get(
            pc(&sim, &format!("/v1/customers/{}", foreign.tenant_id)),
            &token
        )
        .await
        .0,
        404
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn the_customer_resource_is_limited_to_500_calls_a_minute_per_tenant() {
    let sim = sim().await;
    let token = admin_pc_token(&sim).await;
    let customer = sim.scenario().partners[0].customer(0).unwrap();
    let url = pc(&sim, &format!("/v1/customers/{}", customer.tenant_id));
    for _ in 0..500 {
        assert_eq!(get(url.clone(), &token).await.0, 200);
    }
    let (status, headers, body) = get(url.clone(), &token).await;
    assert_eq!(status, 429);
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    assert_eq!(body["code"], "429");
    sim.control()
        .advance_clock(std::time::Duration::from_secs(61));
    // The next minute's window is open again.
    assert_eq!(get(url, &token).await.0, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn consent_via_the_api_needs_a_gdap_role_that_may_consent_and_the_same_app() {
    let sim = sim_with(SimConfig::default()).await;
    let partner = sim.scenario().partners[0].clone();
    let token = admin_pc_token(&sim).await;
    // Customer 6 has GDAP with Global Administrator but no consent; customer 2's roles cannot consent.
    let (with_ga, without_role) = (partner.customer(6).unwrap(), partner.customer(2).unwrap());
    let rt = refresh_token(&sim, &partner, &partner.admin().upn).await;
    let graph_token = |tenant: String| {
        let (sim, partner, rt) = (&sim, &partner, rt.clone());
        async move {
            token_call(
                sim,
                partner,
                &tenant,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("resource", ms_sim::GRAPH),
                ],
            )
            .await
        }
    };
    assert_eq!(
        graph_token(with_ga.tenant_id.clone()).await["error_codes"],
        json!([65001])
    );
    let body = json!({"applicationId": partner.app.client_id, "displayName": "SAM",
        "applicationGrants": [{"enterpriseApplicationId": "00000003-0000-0000-c000-000000000000", "scope": "Directory.Read.All,User.Read.All"}]});
    let consent = |customer: &str, body: &Value, request_id: &str| {
        http()
            .post(pc(
                &sim,
                &format!("/v1/customers/{customer}/applicationconsents"),
            ))
            .bearer_auth(&token)
            .header("MS-RequestId", request_id.to_owned())
            .json(body)
    };
    let (status, created) = send(consent(&with_ga.tenant_id, &body, "c-1")).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["applicationId"], partner.app.client_id.as_str());
    assert!(graph_token(with_ga.tenant_id.clone()).await["access_token"].is_string());
    // The retry is idempotent; a new request for the same consent is a conflict.
    assert_eq!(send(consent(&with_ga.tenant_id, &body, "c-1")).await.0, 201);
    assert_eq!(send(consent(&with_ga.tenant_id, &body, "c-2")).await.0, 409);
    sim.control()
        .set_customer_consent(&without_role.tenant_id, false);
    assert_eq!(
        send(consent(&without_role.tenant_id, &body, "c-3")).await.0,
        403
    );
    let mut other_app = body.clone();
    other_app["applicationId"] = json!("11111111-2222-3333-4444-555555555555");
    assert_eq!(
        send(consent(&with_ga.tenant_id, &other_app, "c-4")).await.0,
        403
    );
    assert_eq!(
        send(consent(
            &with_ga.tenant_id,
            &json!({"applicationId": partner.app.client_id}),
            "c-5"
        ))
        .await
        .0,
        400
    );
    // Removing it stops customer tokens again.
    let (status, _) = send(
        http()
            .delete(pc(
                &sim,
                &format!(
                    "/v1/customers/{}/applicationconsents/{}",
                    with_ga.tenant_id, partner.app.client_id
                ),
            ))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        graph_token(with_ga.tenant_id.clone()).await["error_codes"],
        json!([65001])
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn mfa_reports_describe_the_calls_the_simulator_received() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let admin = admin_pc_token(&sim).await;
    let service = user_token(
        &sim,
        &partner,
        &partner.service_account().upn,
        &partner.tenant_id,
        PARTNER_CENTER,
    )
    .await;
    assert_eq!(get(pc(&sim, "/v1/customers"), &service).await.0, 401);
    assert_eq!(
        get(pc(&sim, "/v1/profiles/organization"), &admin).await.0,
        200
    );

    let (_, _, principals) = get(pc(&sim, "/v1/nonMfaCompliantPartnerPrincipals"), &admin).await;
    let upns: Vec<&str> = principals["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["upn"].as_str().unwrap())
        .collect();
    assert_eq!(upns, vec![partner.service_account().upn.as_str()]);
    assert_eq!(principals["attributes"]["objectType"], "Collection");

    let (_, _, adoption) = get(pc(&sim, "/v1/applicationmfaadoptionstatus"), &admin).await;
    let row = &adoption.as_array().expect("a bare array")[0];
    assert_eq!(row["applicationId"], partner.app.client_id.as_str());
    assert!(
        row["totalRequestCount"].as_u64().unwrap()
            > row["mfaCompliantRequestCount"].as_u64().unwrap()
    );

    let (_, _, requests) = get(pc(&sim, "/v1/partnerRequests"), &admin).await;
    let items = requests["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|r| r["mfaCompliant"] == false
                && r["upn"] == partner.service_account().upn.as_str())
    );
    assert!(items.iter().any(|r| r["mfaCompliant"] == true));
    sim.shutdown().await;
}

#[tokio::test]
async fn profiles_read_and_the_legal_profile_updates() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let token = admin_pc_token(&sim).await;
    let (_, _, org) = get(pc(&sim, "/v1/profiles/organization"), &token).await;
    assert_eq!(
        (org["tenantId"].as_str(), org["profileType"].as_str()),
        (
            Some(partner.tenant_id.as_str()),
            Some("OrganizationProfile")
        )
    );
    let (_, _, mut legal) = get(
        pc(&sim, "/v1/profiles/legalbusiness?vettingVersion=Current"),
        &token,
    )
    .await;
    assert_eq!(legal["vettingStatus"], "authorized");
    legal["primaryContact"]["email"] = json!("security@partner0.example");
    let (status, _) = send(
        http()
            .put(pc(&sim, "/v1/profiles/legalbusiness"))
            .bearer_auth(&token)
            .json(&legal),
    )
    .await;
    assert_eq!(status, 200);
    let (_, _, again) = get(pc(&sim, "/v1/profiles/legalbusiness"), &token).await;
    assert_eq!(
        again["primaryContact"]["email"],
        "security@partner0.example"
    );
    assert_eq!(
        send(
            http()
                .put(pc(&sim, "/v1/profiles/legalbusiness"))
                .bearer_auth(&token)
                .json(&json!({"x": 1}))
        )
        .await
        .0,
        400
    );
    sim.shutdown().await;
}
