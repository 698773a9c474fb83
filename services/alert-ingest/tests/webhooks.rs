//! The webhook receiver: genuine events from ms-sim are taken once; forged, unsigned, tampered,
//! wrongly certified, stale and oversized ones are refused and leave nothing behind.

#[path = "support/capture.rs"]
mod capture;
mod support;

use std::{sync::Arc, time::Duration};

use capture::{capture_server, post_to};

use palisade_contracts::events::v1::{DapRelationshipTerminated, GdapRelationshipChanged};
use prost::Message;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_unsigned_tampered_stale_and_oversized_webhooks_are_refused_and_nothing_is_stored() {
    let world = World::new().await;
    let instance = world.start(world.settings("r1")).await;
    let partner = world.partner(0);
    let mut client = client(instance.grpc, Some(&world.admin)).await;
    world
        .configure(&mut client, &partner, false, false, 60)
        .await;

    // A genuine signed event, captured on its way.
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
            Some("https://partner.microsoft.com/granularAdminRelationships/rel-42"),
            None,
        )
        .unwrap();
    eventually("the simulator delivered the event", || async {
        !captured.lock().unwrap().is_empty()
    })
    .await;
    let (headers, body) = captured.lock().unwrap()[0].clone();
    assert!(
        headers["authorization"]
            .to_str()
            .unwrap()
            .starts_with("Signature ")
    );
    let url = instance.webhook_url(&partner);
    let store = Arc::clone(&instance.running.core.store);

    // Unsigned.
    let mut unsigned = headers.clone();
    unsigned.remove("authorization");
    assert_eq!(post_to(&url, &unsigned, body.clone()).await, 401);
    // Not the Signature scheme.
    let mut bearer = headers.clone();
    bearer.insert("authorization", "Bearer abc".parse().unwrap());
    assert_eq!(post_to(&url, &bearer, body.clone()).await, 401);
    // Tampered body under a genuine signature.
    let tampered = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("rel-42", "rel-43");
    assert_eq!(post_to(&url, &headers, tampered).await, 401);
    // A certificate host that is not on the allow-list.
    let mut wrong_host = headers.clone();
    let genuine_cert = headers["x-ms-certificate-url"].to_str().unwrap().to_owned();
    wrong_host.insert(
        "x-ms-certificate-url",
        genuine_cert
            .replace("127.0.0.1", "localhost")
            .parse()
            .unwrap(),
    );
    assert_eq!(post_to(&url, &wrong_host, body.clone()).await, 401);
    // An allowed host serving a certificate that does not chain to the trust anchor.
    let mut wrong_chain = headers.clone();
    wrong_chain.insert(
        "x-ms-certificate-url",
        format!("http://{capture}/forged.cer").parse().unwrap(),
    );
    assert_eq!(post_to(&url, &wrong_chain, body.clone()).await, 401);
    // Another algorithm.
    let mut wrong_alg = headers.clone();
    wrong_alg.insert("x-ms-signature-algorithm", "rsa-sha1".parse().unwrap());
    assert_eq!(post_to(&url, &wrong_alg, body.clone()).await, 401);
    // Oversized.
    assert_eq!(post_to(&url, &headers, vec![b' '; 65 * 1024]).await, 413);
    assert_eq!(
        store.last_webhook_at(&partner).await.unwrap(),
        None,
        "nothing refused was stored"
    );
    assert_eq!(store.pending_webhooks().await.unwrap(), 0);

    // Stale: the same genuine event, at a receiver that accepts nothing older than 1 ms.
    let mut strict = world.settings("r2");
    strict.ingest.webhook_max_age = Duration::from_millis(1);
    let strict = world.start(strict).await;
    assert_eq!(
        post_to(&strict.webhook_url(&partner), &headers, body.clone()).await,
        401
    );
    assert_eq!(store.last_webhook_at(&partner).await.unwrap(), None);
    strict.running.stop().await;

    // The genuine one is taken once, however often it is replayed, and published for
    // compliance and the notifier.
    let mut events = world.consumer("partner-center").await;
    assert_eq!(post_to(&url, &headers, body.clone()).await, 200);
    assert_eq!(post_to(&url, &headers, body.clone()).await, 200);
    let batch = events
        .next_batch(10, Duration::from_secs(10))
        .await
        .unwrap();
    let gdap: Vec<_> = batch
        .iter()
        .filter(|d| d.envelope.kind == "gdap.relationship_changed")
        .collect();
    assert_eq!(gdap.len(), 1);
    let event = GdapRelationshipChanged::decode(gdap[0].envelope.payload.as_slice()).unwrap();
    assert_eq!(event.relationship_id, "rel-42");
    assert_eq!(event.partner_tenant_id, partner);
    assert!(
        events
            .next_batch(10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty(),
        "a replay is not a second event"
    );

    // DAP removal by Microsoft, through the receiver itself this time.
    world.register_webhook(&partner, &url).await;
    world
        .sim
        .control()
        .fire_webhook(
            &partner,
            "dap-admin-relationship-terminated-by-microsoft",
            None,
            Some("PartnerCustomerDap"),
        )
        .unwrap();
    let batch = events
        .next_batch(10, Duration::from_secs(10))
        .await
        .unwrap();
    let dap = DapRelationshipTerminated::decode(batch[0].envelope.payload.as_slice()).unwrap();
    assert_eq!(batch[0].envelope.kind, "dap.relationship_terminated");
    assert_eq!(
        dap.event_name,
        "dap-admin-relationship-terminated-by-microsoft"
    );
    instance.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_for_an_unconfigured_partner_or_without_trust_anchors_are_not_stored() {
    let world = World::new().await;
    let mut settings = world.settings("r1");
    settings.webhook.trust_anchors_pem.clear();
    let instance = world.start(settings).await;
    let partner = world.partner(0);
    let (capture, captured) = capture_server().await;
    world
        .register_webhook(&partner, &format!("http://{capture}/hook"))
        .await;
    world
        .sim
        .control()
        .fire_webhook(
            &partner,
            "dap-admin-relationship-terminated-by-microsoft",
            None,
            None,
        )
        .unwrap();
    eventually("captured", || async {
        !captured.lock().unwrap().is_empty()
    })
    .await;
    let (headers, body) = captured.lock().unwrap()[0].clone();
    assert_eq!(
        post_to(&instance.webhook_url(&partner), &headers, body.clone()).await,
        401
    );
    instance.running.stop().await;

    let instance = world.start(world.settings("r2")).await;
    assert_eq!(
        post_to(&instance.webhook_url(&partner), &headers, body).await,
        404,
        "partner not configured"
    );
    assert_eq!(
        instance
            .running
            .core
            .store
            .last_webhook_at(&partner)
            .await
            .unwrap(),
        None
    );
    instance.running.stop().await;
}
