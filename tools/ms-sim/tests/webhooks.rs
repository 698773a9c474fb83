//! Partner Center webhooks as the simulator sends them: registration, validation events,
//! signatures that chain to the simulator root, and up to ten attempts.

mod support;

use std::{sync::Arc, time::Duration};

use axum::{body::Bytes, http::HeaderMap, routing::post};
use ms_sim::AlertSpec;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use support::*;
use tokio::sync::Mutex;

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A receiver on loopback that answers with the given statuses in turn (then 200).
async fn receiver(statuses: Vec<u16>) -> (String, Received) {
    let received: Received = Arc::default();
    let answers = Arc::new(Mutex::new(statuses.into_iter()));
    let store = received.clone();
    let app = axum::Router::new().route(
        "/hooks/partner-center",
        post(move |headers: HeaderMap, body: Bytes| {
            let (store, answers) = (store.clone(), answers.clone());
            async move {
                store.lock().await.push((headers, body));
                let status = answers.lock().await.next().unwrap_or(200);
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hooks/partner-center",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

async fn register(sim: &ms_sim::MsSim, url: &str, events: &[&str]) -> Value {
    let token = admin_pc_token(sim).await;
    let (status, body) = send(
        http()
            .post(
                sim.partner_center_url()
                    .join("/webhooks/v1/registration")
                    .unwrap(),
            )
            .bearer_auth(&token)
            .json(&json!({"WebhookUrl": url, "WebhookEvents": events})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn wait_for(received: &Received, count: usize) -> Vec<(HeaderMap, Bytes)> {
    for _ in 0..200 {
        let items = received.lock().await.clone();
        if items.len() >= count {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "expected {count} deliveries, got {}",
        received.lock().await.len()
    );
}

/// The newest delivery the simulator recorded, once it has stopped retrying.
async fn last_finished_delivery(sim: &ms_sim::MsSim) -> ms_sim::WebhookDelivery {
    for _ in 0..400 {
        if let Some(delivery) = sim.control().webhook_deliveries().pop()
            && delivery.finished
        {
            return delivery;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the newest delivery never finished");
}

/// The documented receiver check: chain to the trusted root, then RSA-SHA256 over the raw body.
async fn verify(sim: &ms_sim::MsSim, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let authorization = headers["authorization"].to_str().unwrap();
    let signature = authorization.strip_prefix("Signature ").ok_or("scheme")?;
    assert_eq!(headers["x-ms-signature-algorithm"], "rsa-sha256");
    let cert_url = headers["x-ms-certificate-url"].to_str().unwrap();
    let der = http()
        .get(cert_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let root = pem::parse(sim.webhook_root_ca_pem()).unwrap();
    let root_der = CertificateDer::from(root.contents().to_vec());
    let anchor = webpki::anchor_from_trusted_cert(&root_der).map_err(|e| e.to_string())?;
    let leaf_der = CertificateDer::from(der.to_vec());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| e.to_string())?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| e.to_string())?;
    leaf.verify_signature(
        webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        body,
        &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, signature).unwrap(),
    )
    .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_raised_alert_fires_a_signed_event_that_verifies_and_a_tampered_one_does_not() {
    let sim = sim().await;
    let partner = sim.scenario().partners[0].clone();
    let (url, received) = receiver(vec![]).await;
    let registration = register(&sim, &url, &["azure-fraud-event-detected", "test-created"]).await;
    assert_eq!(registration["WebhookUrl"], url.as_str());
    let id = sim
        .control()
        .raise_alert(&partner.tenant_id, &AlertSpec::default())
        .unwrap();
    let deliveries = wait_for(&received, 1).await;
    let (headers, body) = &deliveries[0];
    verify(&sim, headers, body).await.unwrap();
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(event["EventName"], "azure-fraud-event-detected");
    assert_eq!(event["ResourceName"], Value::Null);
    let alert = sim
        .control()
        .alerts(&partner.tenant_id)
        .into_iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap();
    assert!(
        event["ResourceUri"]
            .as_str()
            .unwrap()
            .contains(alert["subscriptionId"].as_str().unwrap())
    );
    assert!(
        event["ResourceChangeUtcDate"]
            .as_str()
            .unwrap()
            .ends_with("+00:00")
    );
    let mut tampered = body.to_vec();
    tampered[2] ^= 1;
    assert!(verify(&sim, headers, &tampered).await.is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn failed_deliveries_are_retried_up_to_ten_times() {
    let sim = sim_with(ms_sim::SimConfig {
        webhook_retry_base: Duration::from_millis(10),
        ..ms_sim::SimConfig::default()
    })
    .await;
    let partner = sim.scenario().partners[0].clone();
    let (url, received) = receiver(vec![500, 503, 429]).await;
    register(
        &sim,
        &url,
        &[
            "dap-admin-relationship-terminated-by-microsoft",
            "granular-admin-relationship-expired",
        ],
    )
    .await;
    assert!(
        sim.control()
            .terminate_dap(&partner.customer(1).unwrap().tenant_id)
    );
    let deliveries = wait_for(&received, 4).await;
    let bodies: Vec<&Bytes> = deliveries.iter().map(|(_, b)| b).collect();
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every attempt sends the same bytes"
    );
    let event: Value = serde_json::from_slice(bodies[0]).unwrap();
    assert_eq!(
        (event["ResourceUri"].clone(), event["ResourceName"].clone()),
        (Value::Null, json!("PartnerCustomerDap"))
    );
    // The receiver sees the fourth request before the simulator records its answer.
    let record = last_finished_delivery(&sim).await;
    let statuses: Vec<Option<u16>> = record.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, vec![Some(500), Some(503), Some(429), Some(200)]);
    assert!(record.delivered && record.finished);

    // A receiver that never answers well gets exactly ten attempts.
    let (url, received) = receiver(vec![500; 20]).await;
    let token = admin_pc_token(&sim).await;
    let (status, _) = send(
        http()
            .put(sim.partner_center_url().join("/webhooks/v1/registration").unwrap())
            .bearer_auth(&token)
            .json(&json!({"WebhookUrl": url, "WebhookEvents": ["granular-admin-relationship-expired"]})),
    )
    .await;
    assert_eq!(status, 200);
    sim.control()
        .expire_gdap(&partner.customer(2).unwrap().tenant_id);
    let record = last_finished_delivery(&sim).await;
    assert_eq!((record.attempts.len(), record.delivered), (10, false));
    assert_eq!(received.lock().await.len(), 10);
    sim.shutdown().await;
}

#[tokio::test]
async fn validation_events_need_test_created_are_limited_to_two_a_minute_and_report_results() {
    let sim = sim().await;
    let token = admin_pc_token(&sim).await;
    let pc = |path: &str| sim.partner_center_url().join(path).unwrap();
    let (status, _) = send(
        http()
            .post(pc("/webhooks/v1/registration/validationEvents"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, 400, "no registration yet");
    let (url, received) = receiver(vec![]).await;
    register(&sim, &url, &["test-created"]).await;
    let (_, events) = send(
        http()
            .get(pc("/webhooks/v1/registration/events"))
            .bearer_auth(&token),
    )
    .await;
    assert!(
        events
            .as_array()
            .unwrap()
            .contains(&json!("azure-fraud-event-detected"))
    );
    let (status, sent) = send(
        http()
            .post(pc("/webhooks/v1/registration/validationEvents"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, 200);
    let correlation = sent["correlationId"].as_str().unwrap().to_owned();
    assert_eq!(
        send(
            http()
                .post(pc("/webhooks/v1/registration/validationEvents"))
                .bearer_auth(&token)
        )
        .await
        .0,
        200
    );
    let response = http()
        .post(pc("/webhooks/v1/registration/validationEvents"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let deliveries = wait_for(&received, 2).await;
    let event: Value = serde_json::from_slice(&deliveries[0].1).unwrap();
    assert_eq!(event["EventName"], "test-created");
    verify(&sim, &deliveries[0].0, &deliveries[0].1)
        .await
        .unwrap();
    let (status, report) = send(
        http()
            .get(pc(&format!(
                "/webhooks/v1/registration/validationEvents/{correlation}"
            )))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            report["status"].as_str(),
            report["results"][0]["responseCode"].as_str()
        ),
        (Some("completed"), Some("OK"))
    );
    // Unknown events and plain-HTTP public URLs are refused.
    let (status, _) = send(
        http()
            .put(pc("/webhooks/v1/registration"))
            .bearer_auth(&token)
            .json(&json!({"WebhookUrl": url, "WebhookEvents": ["made-up"]})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = send(http().put(pc("/webhooks/v1/registration")).bearer_auth(&token).json(&json!({"WebhookUrl": "http://example.com/hook", "WebhookEvents": ["test-created"]}))).await;
    assert_eq!(status, 400);
    sim.shutdown().await;
}
