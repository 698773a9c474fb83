//! Health you can act on: each AADSTS failure lands in its state with a `TokenHealthChanged`
//! event, transient failures are retried and never mark anything broken, a customer's failure
//! stays with that customer, the keep-alive beats the 90-day cliff, and revocation shreds.
//! Each test ends by scanning the database and the logs for every secret it saw.

mod support;

use std::time::Duration;

use ms_sim::{Fault, FaultKind, Host};
use palisade_auth::Scope;
use palisade_contracts::tokens::v1::{self as pb, TokenHealthState};
use support::*;

async fn consented(world: &World, broker: &Instance) -> (Client, pb::App, pb::Consent) {
    let partner = world.partner(0).clone();
    let secret = world
        .credential(
            &[&partner.tenant_id],
            &[Scope::TokensAdmin, Scope::TokensIssue],
        )
        .await;
    let mut c = client(broker.addr, &secret).await;
    let app = register_secret_app(&mut c, &partner, pb::TokenEndpoint::V1).await;
    let consent = consent(
        &mut c,
        &partner.tenant_id,
        &app.app_id,
        &partner.admin().upn,
    )
    .await
    .unwrap();
    (c, app, consent)
}

async fn force(
    c: &mut Client,
    partner: &str,
    target: &str,
) -> Result<pb::GetAccessTokenResponse, tonic::Status> {
    c.get_access_token(pb::GetAccessTokenRequest {
        partner_tenant_id: partner.into(),
        target_tenant_id: target.into(),
        resource: pb::Resource::PartnerCenter as i32,
        custom_scope: String::new(),
        force_refresh: true,
    })
    .await
    .map(|r| r.into_inner())
}

/// Scans the tokens schema and the captured logs for every secret of the simulator.
async fn assert_no_secret_leaked(world: &World, access_tokens: &[String]) {
    let dump = dump_tokens_schema(&world.db).await;
    let mut secrets: Vec<String> = world.sim.control().issued_refresh_tokens();
    assert!(!secrets.is_empty());
    for p in &world.sim.scenario().partners {
        secrets.push(p.app.client_secret.clone());
    }
    secrets.extend(access_tokens.iter().cloned());
    for secret in &secrets {
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(
            !dump.contains(secret.as_str()) && !dump.contains(&hex),
            "a secret is stored in the clear (first 12 chars: {:?})",
            &secret[..12.min(secret.len())]
        );
    }
    let needles: Vec<&str> = secrets.iter().map(String::as_str).collect();
    world.logs.assert_absent(&needles);
    // The scan looked at real output: the broker's own warnings are there.
    assert!(world.logs.contents().contains("token health changed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_aadsts_failure_lands_in_its_state_with_an_event_and_heals() {
    let world = World::new().await;
    let mut settings = world.settings();
    // Retry a broken consent at once, so one test walks through every code.
    settings.broker.broken_retry_after = Duration::ZERO;
    let broker = world.start(settings).await;
    let (mut c, _app, consent) = consented(&world, &broker).await;
    let partner = world.partner(0).clone();
    let mut events = world.events().await;
    let mut tokens = Vec::new();
    let admin = partner.admin().upn.clone();
    let client_id = partner.app.client_id.clone();
    for (code, subject, state) in [
        (700082, &admin, TokenHealthState::Expired),
        (70043, &admin, TokenHealthState::Expired),
        (50173, &admin, TokenHealthState::Revoked),
        (50076, &admin, TokenHealthState::MfaRequired),
        (50079, &admin, TokenHealthState::MfaRequired),
        (65001, &admin, TokenHealthState::ConsentMissing),
        (500011, &admin, TokenHealthState::ConsentMissing),
        (53003, &admin, TokenHealthState::BlockedByPolicy),
        (530034, &admin, TokenHealthState::BlockedByPolicy),
        (
            7000215,
            &client_id,
            TokenHealthState::ClientCredentialInvalid,
        ),
        (
            7000222,
            &client_id,
            TokenHealthState::ClientCredentialInvalid,
        ),
    ] {
        world
            .sim
            .control()
            .fail_token_requests(subject, code, Some(1));
        let err = force(&mut c, &partner.tenant_id, "").await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::FailedPrecondition,
            "AADSTS{code}: {err:?}"
        );
        assert!(
            err.message().contains(&format!("AADSTS{code}")),
            "{}",
            err.message()
        );
        let event = next_health_event(&mut events)
            .await
            .expect("an event per change");
        assert_eq!(event.state, state as i32, "AADSTS{code}");
        assert_eq!(event.previous_state, TokenHealthState::Healthy as i32);
        assert_eq!(event.consent_id, consent.consent_id);
        assert!(event.customer_tenant_id.is_empty());
        assert!(!event.remediation.is_empty());
        assert!(event.detail.contains(&format!("AADSTS{code}")));
        let needs_reconsent = matches!(
            state,
            TokenHealthState::Expired
                | TokenHealthState::Revoked
                | TokenHealthState::MfaRequired
                | TokenHealthState::ConsentMissing
        );
        assert_eq!(
            event.reconsent_url.contains("/oauth2/authorize?"),
            needs_reconsent,
            "AADSTS{code}"
        );
        let health = c
            .get_token_health(pb::GetTokenHealthRequest {
                partner_tenant_id: partner.tenant_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(health.state, state as i32, "AADSTS{code}");
        assert_eq!(health.consents[0].state_detail, event.detail);
        // The failure was one-off: the next call heals the consent, with its own event.
        tokens.push(
            force(&mut c, &partner.tenant_id, "")
                .await
                .unwrap()
                .access_token,
        );
        let healed = next_health_event(&mut events).await.unwrap();
        assert_eq!(healed.previous_state, state as i32);
        assert_eq!(healed.state, TokenHealthState::Healthy as i32);
    }
    // The re-consent link in an event is a working consent.
    world
        .sim
        .control()
        .fail_token_requests(&admin, 50173, Some(1));
    force(&mut c, &partner.tenant_id, "").await.unwrap_err();
    let event = next_health_event(&mut events).await.unwrap();
    let (code, state) = sign_in(&event.reconsent_url, &admin).await;
    let renewed = c
        .complete_consent(pb::CompleteConsentRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            state,
            code,
        })
        .await
        .unwrap()
        .into_inner()
        .consent
        .unwrap();
    assert_ne!(renewed.consent_id, consent.consent_id);
    tokens.push(
        force(&mut c, &partner.tenant_id, "")
            .await
            .unwrap()
            .access_token,
    );
    let audit = c
        .list_audit_events(pb::ListAuditEventsRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            page_size: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let failed = audit
        .events
        .iter()
        .filter(|e| e.kind == "redemption" && !e.success)
        .count();
    assert_eq!(failed, 12, "every failed redemption is audited");
    assert_no_secret_leaked(&world, &tokens).await;
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_never_mark_a_token_broken() {
    let world = World::new().await;
    let broker = world.instance().await;
    let (mut c, _app, _consent) = consented(&world, &broker).await;
    let partner = world.partner(0).clone();
    let control = world.sim.control();
    // Two throttles with Retry-After, then success: one call, three requests.
    control.clear_requests();
    control.inject_fault(
        Fault::new(FaultKind::Throttle {
            retry_after_secs: 1,
        })
        .on(Host::Login)
        .times(2),
    );
    let t = force(&mut c, &partner.tenant_id, "").await.unwrap();
    assert!(!t.from_cache);
    assert_eq!(world.refresh_redemptions(), 3);
    // A server error and a reset are retried too.
    control.inject_fault(
        Fault::new(FaultKind::Status { status: 503 })
            .on(Host::Login)
            .times(1),
    );
    control.inject_fault(Fault::new(FaultKind::Reset).on(Host::Login).times(1));
    force(&mut c, &partner.tenant_id, "").await.unwrap();
    // Microsoft down for good: UNAVAILABLE, and the token is still healthy.
    control.inject_fault(Fault::new(FaultKind::Status { status: 503 }).on(Host::Login));
    let err = force(&mut c, &partner.tenant_id, "").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message().contains("not marked broken"),
        "{}",
        err.message()
    );
    control.clear_faults();
    let health = c
        .get_token_health(pb::GetTokenHealthRequest {
            partner_tenant_id: partner.tenant_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.state, TokenHealthState::Healthy as i32);
    let mut events = world.events().await;
    assert!(
        next_health_event(&mut events).await.is_none(),
        "no state changed"
    );
    force(&mut c, &partner.tenant_id, "").await.unwrap();
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_whose_access_fails_does_not_affect_the_others() {
    let world = World::new().await;
    let broker = world.instance().await;
    let (mut c, _app, consent) = consented(&world, &broker).await;
    let partner = world.partner(0).clone();
    let no_gdap = partner.customers().find(|c| !c.gdap_usable()).unwrap();
    let no_consent = partner
        .customers()
        .find(|c| c.gdap_usable() && !c.app_consent)
        .unwrap();
    let fine = partner
        .customers()
        .find(|c| c.gdap_usable() && c.app_consent)
        .unwrap();
    let mut events = world.events().await;
    for customer in [&no_gdap, &no_consent] {
        let err = token(
            &mut c,
            &partner.tenant_id,
            &customer.tenant_id,
            pb::Resource::Graph,
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.message().contains(&customer.tenant_id),
            "{}",
            err.message()
        );
        let event = next_health_event(&mut events).await.unwrap();
        assert_eq!(event.customer_tenant_id, customer.tenant_id);
        assert_eq!(event.state, TokenHealthState::CustomerAccessDenied as i32);
        assert_eq!(event.consent_id, consent.consent_id);
        assert!(event.remediation.contains("GDAP"));
    }
    // A second call fails fast, without asking Microsoft again.
    let before = world.refresh_redemptions();
    token(
        &mut c,
        &partner.tenant_id,
        &no_gdap.tenant_id,
        pb::Resource::Graph,
    )
    .await
    .unwrap_err();
    assert_eq!(world.refresh_redemptions(), before);
    // Everyone else is fine.
    token(
        &mut c,
        &partner.tenant_id,
        &fine.tenant_id,
        pb::Resource::Graph,
    )
    .await
    .unwrap();
    token(&mut c, &partner.tenant_id, "", pb::Resource::Graph)
        .await
        .unwrap();
    let health = c
        .get_token_health(pb::GetTokenHealthRequest {
            partner_tenant_id: partner.tenant_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.state, TokenHealthState::Healthy as i32);
    let mut issues: Vec<_> = health
        .customer_issues
        .iter()
        .map(|i| i.customer_tenant_id.clone())
        .collect();
    issues.sort();
    let mut expected = vec![no_gdap.tenant_id.clone(), no_consent.tenant_id.clone()];
    expected.sort();
    assert_eq!(issues, expected);
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_alive_warns_before_the_cliff_and_redeems_idle_tokens() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.broker.keepalive_after = Duration::from_secs(80 * 86_400);
    settings.broker.keepalive_jitter = Duration::ZERO;
    settings.broker.cliff_warning = Duration::from_secs(14 * 86_400);
    let broker = world.start(settings).await;
    let (mut c, _app, consent) = consented(&world, &broker).await;
    let partner = world.partner(0).clone();
    let mut events = world.events().await;
    let day = Duration::from_secs(86_400);
    // Day 77: not yet due for keep-alive, but inside the warning window.
    world.clock.advance(77 * day);
    world.sim.control().advance_clock(77 * day);
    assert_eq!(broker.running.broker.sweep_once().await.unwrap(), 0);
    let warning = next_health_event(&mut events).await.unwrap();
    assert_eq!(warning.state, TokenHealthState::Healthy as i32);
    assert_eq!(
        warning.severity,
        palisade_contracts::common::v1::Severity::Medium as i32
    );
    assert!(warning.detail.contains("inactivity"), "{}", warning.detail);
    // Warned once, not at every sweep.
    assert_eq!(broker.running.broker.sweep_once().await.unwrap(), 0);
    assert!(next_health_event(&mut events).await.is_none());
    // Day 81: redeemed, and the 90 days start again.
    world.clock.advance(4 * day);
    world.sim.control().advance_clock(4 * day);
    let before = world.refresh_redemptions();
    assert_eq!(broker.running.broker.sweep_once().await.unwrap(), 1);
    assert_eq!(world.refresh_redemptions(), before + 1);
    let listed = c
        .list_consents(pb::ListConsentsRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert_eq!(listed[0].consent_id, consent.consent_id);
    assert_eq!(listed[0].rotation_count, 1);
    // 85 more idle days would have killed the original; the rotated one lives.
    world.clock.advance(85 * day);
    world.sim.control().advance_clock(85 * day);
    force(&mut c, &partner.tenant_id, "").await.unwrap();
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_app_credential_warns_and_renewal_heals() {
    let world = World::new().await;
    let broker = world.instance().await;
    let (mut c, app, _consent) = consented(&world, &broker).await;
    let partner = world.partner(0).clone();
    let mut events = world.events().await;
    let in_ten_days = palisade_contracts::time::from_millis(
        palisade_clock::Clock::now_millis(&*world.clock) + 10 * 86_400_000,
    );
    c.update_app_credential(pb::UpdateAppCredentialRequest {
        partner_tenant_id: partner.tenant_id.clone(),
        app_id: app.app_id.clone(),
        credential: Some(pb::AppCredential {
            credential: Some(pb::app_credential::Credential::ClientSecret(
                partner.app.client_secret.clone(),
            )),
        }),
        credential_expires_at: Some(in_ten_days),
    })
    .await
    .unwrap();
    broker.running.broker.sweep_once().await.unwrap();
    let event = next_health_event(&mut events).await.unwrap();
    assert_eq!(
        event.state,
        TokenHealthState::ClientCredentialExpiring as i32
    );
    // Still minting while it expires.
    force(&mut c, &partner.tenant_id, "").await.unwrap();
    c.update_app_credential(pb::UpdateAppCredentialRequest {
        partner_tenant_id: partner.tenant_id.clone(),
        app_id: app.app_id.clone(),
        credential: Some(pb::AppCredential {
            credential: Some(pb::app_credential::Credential::ClientSecret(
                partner.app.client_secret.clone(),
            )),
        }),
        credential_expires_at: None,
    })
    .await
    .unwrap();
    let healed = next_health_event(&mut events).await.unwrap();
    assert_eq!(healed.state, TokenHealthState::Healthy as i32);
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_consent_shreds_it_and_every_replica_drops_its_tokens() {
    let world = World::new().await;
    let a = world.instance().await;
    let b = world.instance().await;
    let (mut ca, _app, consent) = consented(&world, &a).await;
    let partner = world.partner(0).clone();
    let secret = world
        .credential(&[&partner.tenant_id], &[Scope::TokensIssue])
        .await;
    let mut cb = client(b.addr, &secret).await;
    token(&mut cb, &partner.tenant_id, "", pb::Resource::Graph)
        .await
        .unwrap();
    assert!(
        token(&mut cb, &partner.tenant_id, "", pb::Resource::Graph)
            .await
            .unwrap()
            .from_cache
    );
    let mut events = world.events().await;
    let revoked = ca
        .revoke_consent(pb::RevokeConsentRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            consent_id: consent.consent_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .consent
        .unwrap();
    assert_eq!(revoked.state, TokenHealthState::RevokedByOperator as i32);
    let event = next_health_event(&mut events).await.unwrap();
    assert_eq!(event.state, TokenHealthState::RevokedByOperator as i32);
    // The row keeps its metadata and loses its secret.
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(world.db.url()).await.unwrap();
    let row = sqlx::query(
        "SELECT refresh_token_sealed IS NULL AS shredded, \
         (SELECT count(*) FROM tokens.access_tokens WHERE consent_id = $1) AS cached \
         FROM tokens.consents WHERE consent_id = $1",
    )
    .bind(&consent.consent_id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(row.get::<bool, _>("shredded"));
    assert_eq!(row.get::<i64, _>("cached"), 0);
    // Replica B learns of it from the revocation watch (polled, bounded).
    let mut denied = None;
    for _ in 0..100 {
        match token(&mut cb, &partner.tenant_id, "", pb::Resource::Graph).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                denied = Some(e);
                break;
            }
        }
    }
    let denied = denied.expect("replica B stopped serving the revoked consent's tokens");
    assert_eq!(denied.code(), tonic::Code::FailedPrecondition);
    a.running.stop().await;
    b.running.stop().await;
}
