//! Forged webhooks at alert-ingest's Partner Center receiver. A genuine, signed event is
//! captured from ms-sim on its way, then presented altered: unsigned, under another scheme,
//! certified by a chain that does not reach the trust anchor, with a certificate URL on a host
//! that is not allowed, by a certificate of another issuer organisation, with a tampered
//! body, oversized, and stale (a replay after the freshness window). Each must answer 401 (or
//! 413) and leave nothing stored; the genuine one is then taken, so the checks can fail.

#[path = "../../../services/alert-ingest/tests/support/capture.rs"]
mod capture;
#[path = "../../../services/alert-ingest/tests/support/mod.rs"]
mod support;

use std::{sync::Arc, time::Duration};

use capture::{capture_server, post_to};

use support::{World, client, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_webhooks_are_refused_and_nothing_is_stored() {
    let world = World::new().await;
    let instance = world.start(world.settings("r1")).await;
    let partner = world.partner(0);
    let mut alerts = client(instance.grpc, Some(&world.admin)).await;
    world
        .configure(&mut alerts, &partner, false, false, 60)
        .await;

    let (capture, captured) = capture_server().await;
    world
        .register_webhook(&partner, &format!("http://{capture}/hook"))
        .await;
    world
        .sim
        .control()
        .fire_webhook(
            &partner,
            "granular-admin-relationship-terminated",
            Some("https://partner.microsoft.com/granularAdminRelationships/rel-77"),
            None,
        )
        .unwrap();
    eventually("ms-sim delivered the event", || async {
        !captured.lock().unwrap().is_empty()
    })
    .await;
    let (headers, body) = captured.lock().unwrap()[0].clone();
    let url = instance.webhook_url(&partner);
    let store = Arc::clone(&instance.running.core.store);
    let genuine_cert = headers["x-ms-certificate-url"].to_str().unwrap().to_owned();

    let mut refused = Vec::new();
    let mut expect = |case: &str, status: u16, expected: u16| {
        if status != expected {
            refused.push(format!("{case}: {status}, expected {expected}"));
        }
    };

    let mut unsigned = headers.clone();
    unsigned.remove("authorization");
    expect(
        "unsigned",
        post_to(&url, &unsigned, body.clone()).await,
        401,
    );

    let mut bearer = headers.clone();
    bearer.insert("authorization", "Bearer forged".parse().unwrap());
    expect(
        "another scheme",
        post_to(&url, &bearer, body.clone()).await,
        401,
    );

    let mut garbage = headers.clone();
    garbage.insert("authorization", "Signature AAAA".parse().unwrap());
    expect(
        "a signature of garbage",
        post_to(&url, &garbage, body.clone()).await,
        401,
    );

    let mut wrong_chain = headers.clone();
    wrong_chain.insert(
        "x-ms-certificate-url",
        format!("http://{capture}/forged.cer").parse().unwrap(),
    );
    expect(
        "wrong chain",
        post_to(&url, &wrong_chain, body.clone()).await,
        401,
    );

    let mut wrong_host = headers.clone();
    wrong_host.insert(
        "x-ms-certificate-url",
        genuine_cert
            .replace("127.0.0.1", "localhost")
            .parse()
            .unwrap(),
    );
    expect(
        "certificate URL host not allowed",
        post_to(&url, &wrong_host, body.clone()).await,
        401,
    );

    let mut metadata_host = headers.clone();
    metadata_host.insert(
        "x-ms-certificate-url",
        "http://169.254.169.254/latest/meta-data".parse().unwrap(),
    );
    expect(
        "certificate URL at the metadata service",
        post_to(&url, &metadata_host, body.clone()).await,
        401,
    );

    let tampered = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("rel-77", "rel-78");
    assert_ne!(
        tampered.as_bytes(),
        &body[..],
        "the body names the relationship"
    );
    expect(
        "tampered body",
        post_to(&url, &headers, tampered).await,
        401,
    );

    expect(
        "oversized",
        post_to(&url, &headers, vec![b' '; 1024 * 1024]).await,
        413,
    );

    assert_eq!(
        store.last_webhook_at(&partner).await.unwrap(),
        None,
        "nothing refused was stored"
    );
    assert_eq!(store.pending_webhooks().await.unwrap(), 0);

    // Another issuer organisation required: Microsoft's genuine certificate no longer does.
    let mut other_issuer = world.settings("r2");
    other_issuer.webhook.required_issuer_organization = "Not Microsoft Corporation".into();
    let other_issuer = world.start(other_issuer).await;
    expect(
        "issuer organisation not the required one",
        post_to(&other_issuer.webhook_url(&partner), &headers, body.clone()).await,
        401,
    );
    other_issuer.running.stop().await;

    // Stale: the captured event replayed after the freshness window (1 ms here).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut strict = world.settings("r3");
    strict.ingest.webhook_max_age = Duration::from_millis(1);
    let strict = world.start(strict).await;
    expect(
        "stale replay",
        post_to(&strict.webhook_url(&partner), &headers, body.clone()).await,
        401,
    );
    strict.running.stop().await;

    assert!(
        refused.is_empty(),
        "forged webhooks not refused:\n{}",
        refused.join("\n")
    );
    assert_eq!(
        store.last_webhook_at(&partner).await.unwrap(),
        None,
        "nothing refused was stored"
    );
    assert_eq!(store.pending_webhooks().await.unwrap(), 0);

    // The control: the genuine event, unaltered, is taken, so every refusal above was the
    // receiver's judgement of the forgery, not of the harness.
    assert_eq!(post_to(&url, &headers, body.clone()).await, 200);
    assert!(store.last_webhook_at(&partner).await.unwrap().is_some());
    instance.running.stop().await;
}
