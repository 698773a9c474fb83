//! At most one identity-provider call per (partner, target, resource) and refresh window,
//! across replicas; and a crash between Microsoft's answer and the database write breaks
//! nothing.

mod support;

use std::{sync::atomic::Ordering, time::Duration};

use palisade_auth::Scope;
use palisade_contracts::tokens::v1::{self as pb, TokenHealthState};
use palisade_crypto::{Aad, Sealed};
use support::*;

/// The refresh token the broker holds now, opened with its own cipher.
async fn stored_refresh_token(instance: &Instance, partner: &str) -> (String, i64) {
    let broker = &instance.running.broker;
    let consent = broker
        .store()
        .active_consent(partner)
        .await
        .unwrap()
        .unwrap();
    let sealed = Sealed::from_bytes(consent.refresh_token_sealed.as_deref().unwrap()).unwrap();
    let plain = broker
        .cipher()
        .open(
            &sealed,
            &Aad::new("refresh_token", partner, &consent.consent_id),
        )
        .await
        .unwrap();
    (
        String::from_utf8(plain.to_vec()).unwrap(),
        consent.rotation_count,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_replicas_and_two_hundred_callers_cause_one_redemption_per_window() {
    let world = World::new().await;
    let partner = world.partner(0).clone();
    let mut instances = Vec::new();
    for _ in 0..20 {
        let mut settings = world.settings();
        settings.database.max_connections = 2;
        instances.push(world.start(settings).await);
    }
    let secret = world
        .credential(
            &[&partner.tenant_id],
            &[Scope::TokensAdmin, Scope::TokensIssue],
        )
        .await;
    let mut admin = client(instances[0].addr, &secret).await;
    let app = register_secret_app(&mut admin, &partner, pb::TokenEndpoint::V1).await;
    consent(
        &mut admin,
        &partner.tenant_id,
        &app.app_id,
        &partner.admin().upn,
    )
    .await
    .unwrap();
    let mut clients = Vec::new();
    for instance in &instances {
        clients.push(client(instance.addr, &secret).await);
    }
    let control = world.sim.control();
    let windows = 3;
    for window in 0..windows {
        // Forced expiry: every replica's cached token (and the shared row) is now stale.
        if window > 0 {
            world.clock.advance(Duration::from_secs(3600));
            world.sim.control().advance_clock(Duration::from_secs(3600));
        }
        control.clear_requests();
        let outcome = palisade_token_broker::race::race(
            &clients,
            &partner.tenant_id,
            pb::Resource::PartnerCenter,
            200,
        )
        .await;
        assert!(
            outcome.failures.is_empty(),
            "every caller gets a token: {:?}",
            outcome.failures
        );
        assert_eq!(
            outcome.tokens.len(),
            1,
            "window {window}: every caller got the same token"
        );
        let redemptions = control.requests(&ms_sim::control_filter_refresh());
        assert_eq!(
            redemptions.len(),
            1,
            "window {window}: exactly one redemption at the identity provider"
        );
        assert_eq!(redemptions[0].status, 200);
    }
    // The chain is intact: the stored refresh token is the newest, live, and works.
    let (rt, rotations) = stored_refresh_token(&instances[7], &partner.tenant_id).await;
    assert_eq!(rotations, windows);
    assert!(control.refresh_token_is_live(&rt));
    control.clear_requests();
    let forced = clients[3]
        .get_access_token(pb::GetAccessTokenRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            resource: pb::Resource::PartnerCenter as i32,
            force_refresh: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!forced.from_cache);
    assert_eq!(control.requests(&ms_sim::control_filter_refresh()).len(), 1);
    let (next, _) = stored_refresh_token(&instances[11], &partner.tenant_id).await;
    assert_ne!(next, rt, "rotated again");
    // The database never held one of them in the clear, nor did the logs.
    let dump = dump_tokens_schema(&world.db).await;
    let issued = control.issued_refresh_tokens();
    for t in &issued {
        assert!(!dump.contains(t.as_str()));
    }
    let needles: Vec<&str> = issued.iter().map(String::as_str).collect();
    world.logs.assert_absent(&needles);
    world.logs.assert_absent(&[
        partner.app.client_secret.as_str(),
        forced.access_token.as_str(),
    ]);
    for instance in instances {
        instance.running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_answer_and_the_write_is_survived() {
    let world = World::new().await;
    let partner = world.partner(0).clone();
    let mut settings = world.settings();
    // A dead holder's lease must expire for the next replica to take over.
    settings.broker.lock_ttl = Duration::from_secs(2);
    let a = world.start(settings.clone()).await;
    let secret = world
        .credential(
            &[&partner.tenant_id],
            &[Scope::TokensAdmin, Scope::TokensIssue],
        )
        .await;
    let mut ca = client(a.addr, &secret).await;
    let app = register_secret_app(&mut ca, &partner, pb::TokenEndpoint::V2).await;
    consent(
        &mut ca,
        &partner.tenant_id,
        &app.app_id,
        &partner.admin().upn,
    )
    .await
    .unwrap();
    let (before, rotations_before) = stored_refresh_token(&a, &partner.tenant_id).await;

    // Replica A redeems, Entra rotates, and A dies before writing anything.
    a.running
        .broker
        .fail_points
        .crash_after_redemption
        .store(true, Ordering::SeqCst);
    let control = world.sim.control();
    control.clear_requests();
    let err = token(&mut ca, &partner.tenant_id, "", pb::Resource::Graph)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(control.requests(&ms_sim::control_filter_refresh()).len(), 1);
    a.running.kill().await;
    // Entra issued a refresh token that nobody stored; the stored one is older but alive.
    let orphaned = control.issued_refresh_tokens().len();
    assert!(control.refresh_token_is_live(&before));

    // Replica B takes over (after the dead lease expires) and redeems the stored token.
    let b = world.start(settings).await;
    let (unchanged, rotations) = stored_refresh_token(&b, &partner.tenant_id).await;
    assert_eq!(unchanged, before, "nothing was written by the dead replica");
    assert_eq!(rotations, rotations_before);
    let mut cb = client(b.addr, &secret).await;
    let t = token(&mut cb, &partner.tenant_id, "", pb::Resource::Graph)
        .await
        .unwrap();
    assert!(!t.from_cache);
    let (after, rotations) = stored_refresh_token(&b, &partner.tenant_id).await;
    assert_ne!(after, before);
    assert_eq!(rotations, rotations_before + 1);
    assert!(control.refresh_token_is_live(&after));
    assert_eq!(control.issued_refresh_tokens().len(), orphaned + 1);
    let health = cb
        .get_token_health(pb::GetTokenHealthRequest {
            partner_tenant_id: partner.tenant_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.state, TokenHealthState::Healthy as i32);
    b.running.stop().await;
}
