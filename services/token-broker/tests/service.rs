//! The token broker over gRPC, against real Postgres, real Redis and ms-sim over real HTTP.

mod support;

use std::time::Duration;

use palisade_auth::Scope;
use palisade_contracts::tokens::v1::{self as pb, TokenHealthState};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_then_tokens_for_the_partner_and_a_customer_on_v1_and_v2() {
    let world = World::new().await;
    let broker = world.instance().await;
    for (index, endpoint) in [(0, pb::TokenEndpoint::V1), (1, pb::TokenEndpoint::V2)] {
        let partner = world.partner(index).clone();
        let secret = world
            .credential(
                &[&partner.tenant_id],
                &[Scope::TokensAdmin, Scope::TokensIssue],
            )
            .await;
        let mut c = client(broker.addr, &secret).await;
        let app = register_secret_app(&mut c, &partner, endpoint).await;
        let consent = consent(
            &mut c,
            &partner.tenant_id,
            &app.app_id,
            &partner.admin().upn,
        )
        .await
        .unwrap();
        assert!(consent.consented_with_mfa);
        assert_eq!(consent.state, TokenHealthState::Healthy as i32);
        assert_eq!(consent.consented_by_upn, partner.admin().upn);

        // The partner's own Partner Center token: minted once, then from the cache.
        let first = token(&mut c, &partner.tenant_id, "", pb::Resource::PartnerCenter)
            .await
            .unwrap();
        assert!(!first.from_cache);
        assert!(first.mfa);
        let claims = claims(&first.access_token);
        assert_eq!(claims["tid"], partner.tenant_id.as_str());
        assert_eq!(claims["aud"], ms_sim::PARTNER_CENTER);
        assert_eq!(
            claims["ver"],
            if endpoint == pb::TokenEndpoint::V2 {
                "2.0"
            } else {
                "1.0"
            }
        );
        let again = token(&mut c, &partner.tenant_id, "", pb::Resource::PartnerCenter)
            .await
            .unwrap();
        assert!(again.from_cache);
        assert_eq!(again.access_token, first.access_token);

        // A customer through GDAP, for Graph.
        let customer = partner
            .customers()
            .find(|c| c.gdap_usable() && c.app_consent)
            .unwrap();
        let graph = token(
            &mut c,
            &partner.tenant_id,
            &customer.tenant_id,
            pb::Resource::Graph,
        )
        .await
        .unwrap();
        let claims = support::claims(&graph.access_token);
        assert_eq!(claims["tid"], customer.tenant_id.as_str());
        assert_eq!(claims["aud"], ms_sim::GRAPH);

        // ARM and a custom scope too.
        token(&mut c, &partner.tenant_id, "", pb::Resource::Arm)
            .await
            .unwrap();
        let custom = c
            .get_access_token(pb::GetAccessTokenRequest {
                partner_tenant_id: partner.tenant_id.clone(),
                target_tenant_id: String::new(),
                resource: pb::Resource::Custom as i32,
                custom_scope: "https://graph.microsoft.com/.default".into(),
                force_refresh: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(support::claims(&custom.access_token)["aud"], ms_sim::GRAPH);

        // Every redemption rotated the stored refresh token.
        let listed = c
            .list_consents(pb::ListConsentsRequest {
                partner_tenant_id: partner.tenant_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.consents.len(), 1);
        assert_eq!(listed.consents[0].rotation_count, 4);

        // Audit and the MFA share for the compliance service.
        let stats = c
            .get_mfa_statistics(pb::GetMfaStatisticsRequest {
                partner_tenant_id: partner.tenant_id.clone(),
                time_range: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            stats.tokens_minted, 5,
            "the consent's redemption and four refreshes"
        );
        assert_eq!(stats.tokens_minted_with_mfa, 5);
        let usage = c
            .list_token_usage(pb::ListTokenUsageRequest {
                partner_tenant_id: partner.tenant_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let hits: u64 = usage.usage.iter().map(|u| u.cache_hits).sum();
        let issued: u64 = usage.usage.iter().map(|u| u.issued).sum();
        assert_eq!((hits, issued), (1, 4));
        assert!(usage.usage.iter().all(|u| !u.caller.is_empty()));
    }
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_app_authenticates_with_a_signed_client_assertion() {
    let world = World::new().await;
    let broker = world.instance().await;
    let partner = world.partner(0).clone();
    let secret = world
        .credential(
            &[&partner.tenant_id],
            &[Scope::TokensAdmin, Scope::TokensIssue],
        )
        .await;
    let mut c = client(broker.addr, &secret).await;
    let certificate = partner.app.certificate();
    for endpoint in [pb::TokenEndpoint::V1, pb::TokenEndpoint::V2] {
        let app = c
            .register_app(pb::RegisterAppRequest {
                partner_tenant_id: partner.tenant_id.clone(),
                display_name: "SAM app (certificate)".into(),
                client_id: partner.app.client_id.clone(),
                cloud: 1,
                scopes: vec![],
                credential: Some(pb::AppCredential {
                    credential: Some(pb::app_credential::Credential::Certificate(
                        pb::Certificate {
                            certificate_pem: certificate.certificate_pem.clone(),
                            private_key_pem: certificate.private_key_pem.clone(),
                        },
                    )),
                }),
                token_endpoint: endpoint as i32,
                redirect_uri: "https://panel.example/consent".into(),
                credential_expires_at: None,
            })
            .await
            .unwrap()
            .into_inner()
            .app
            .unwrap();
        assert_eq!(
            app.credential_kind,
            pb::AppCredentialKind::Certificate as i32
        );
        let consent = consent(
            &mut c,
            &partner.tenant_id,
            &app.app_id,
            &partner.admin().upn,
        )
        .await
        .unwrap();
        assert!(consent.consented_with_mfa);
        let customer = partner
            .customers()
            .find(|c| c.gdap_usable() && c.app_consent)
            .unwrap();
        for target in ["", customer.tenant_id.as_str()] {
            let t = c
                .get_access_token(pb::GetAccessTokenRequest {
                    partner_tenant_id: partner.tenant_id.clone(),
                    target_tenant_id: target.into(),
                    resource: pb::Resource::Graph as i32,
                    custom_scope: String::new(),
                    force_refresh: true,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(!t.from_cache);
        }
    }
    // The private key never reached the database in the clear.
    let dump = dump_tokens_schema(&world.db).await;
    let key_body: String = certificate
        .private_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!dump.contains(&key_body[..40]));
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_without_mfa_is_refused_in_words_and_nothing_is_stored() {
    let world = World::new().await;
    let broker = world.instance().await;
    let partner = world.partner(0).clone();
    let secret = world
        .credential(
            &[&partner.tenant_id],
            &[Scope::TokensAdmin, Scope::TokensIssue],
        )
        .await;
    let mut c = client(broker.addr, &secret).await;
    let app = register_secret_app(&mut c, &partner, pb::TokenEndpoint::V1).await;
    let refused = consent(
        &mut c,
        &partner.tenant_id,
        &app.app_id,
        &partner.service_account().upn,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("without multi-factor authentication")
            && refused.message().contains(&partner.service_account().upn),
        "{}",
        refused.message()
    );
    let consents = c
        .list_consents(pb::ListConsentsRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(consents.consents.is_empty());
    let audit = c
        .list_audit_events(pb::ListAuditEventsRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        audit
            .events
            .iter()
            .any(|e| e.kind == "consent.refused" && !e.success)
    );
    // No token can be had, and the message says what to do.
    let denied = token(&mut c, &partner.tenant_id, "", pb::Resource::PartnerCenter)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::FailedPrecondition);
    assert!(denied.message().contains("BeginConsent"));

    // Importing a refresh token minted without MFA is refused the same way.
    let rt = world
        .sim
        .control()
        .issued_refresh_tokens()
        .into_iter()
        .next()
        .unwrap();
    let imported = c
        .import_refresh_token(pb::ImportRefreshTokenRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            app_id: app.app_id.clone(),
            refresh_token: rt,
            source: "script".into(),
        })
        .await
        .unwrap_err();
    assert!(
        imported
            .message()
            .contains("without multi-factor authentication")
    );
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_refresh_token_is_tested_then_rotated_and_kept_when_none_comes_back() {
    let world = World::new().await;
    let broker = world.instance().await;
    let partner = world.partner(0).clone();
    let secret = world
        .credential(
            &[&partner.tenant_id],
            &[Scope::TokensAdmin, Scope::TokensIssue],
        )
        .await;
    let mut c = client(broker.addr, &secret).await;
    let app = register_secret_app(&mut c, &partner, pb::TokenEndpoint::V1).await;
    // A refresh token obtained by a script, outside the broker.
    let begun = c
        .begin_consent(pb::BeginConsentRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            app_id: app.app_id.clone(),
            redirect_uri: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let (code, _) = sign_in(&begun.authorize_url, &partner.admin().upn).await;
    let http = reqwest::Client::new();
    let body: serde_json::Value = http
        .post(format!(
            "{}{}/oauth2/token",
            world.sim.login_url(),
            partner.tenant_id
        ))
        .form(&[
            ("client_id", partner.app.client_id.as_str()),
            ("client_secret", partner.app.client_secret.as_str()),
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "https://panel.example/consent"),
            ("resource", ms_sim::PARTNER_CENTER),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scripted = body["refresh_token"].as_str().unwrap().to_owned();
    let consent = c
        .import_refresh_token(pb::ImportRefreshTokenRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            app_id: app.app_id.clone(),
            refresh_token: scripted.clone(),
            source: "key-vault:contoso-sam".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .consent
        .unwrap();
    assert!(consent.consented_with_mfa);
    // Microsoft answers the next refresh without a new refresh token: the stored one stays.
    world.sim.control().omit_refresh_tokens(1);
    token(&mut c, &partner.tenant_id, "", pb::Resource::Graph)
        .await
        .unwrap();
    let after = c
        .list_consents(pb::ListConsentsRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert_eq!(after[0].rotation_count, 0, "nothing new to store");
    // And the one after that rotates again.
    token(&mut c, &partner.tenant_id, "", pb::Resource::PartnerCenter)
        .await
        .unwrap();
    let after = c
        .list_consents(pb::ListConsentsRequest {
            partner_tenant_id: partner.tenant_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert_eq!(after[0].rotation_count, 1);
    broker.running.stop().await;
}

/// Every RPC, called by a credential of another partner (or one without the scope), is
/// denied before anything is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_tenant_caller_is_denied_on_every_rpc() {
    let world = World::new().await;
    let broker = world.instance().await;
    let victim = world.partner(0).clone();
    let attacker = world.partner(1).clone();
    let admin = world
        .credential(
            &[&victim.tenant_id],
            &[Scope::TokensAdmin, Scope::TokensIssue],
        )
        .await;
    let mut owner = client(broker.addr, &admin).await;
    let app = register_secret_app(&mut owner, &victim, pb::TokenEndpoint::V1).await;
    let consent = consent(
        &mut owner,
        &victim.tenant_id,
        &app.app_id,
        &victim.admin().upn,
    )
    .await
    .unwrap();
    let other = world
        .credential(
            &[&attacker.tenant_id],
            &[Scope::TokensAdmin, Scope::TokensIssue, Scope::TokensRead],
        )
        .await;
    let reader = world
        .credential(&[&victim.tenant_id], &[Scope::TokensRead])
        .await;
    let p = victim.tenant_id.clone();
    for secret in [&other, &reader] {
        let mut c = client(broker.addr, secret).await;
        let mut codes = Vec::new();
        macro_rules! call {
            ($rpc:ident, $req:expr) => {
                codes.push((
                    stringify!($rpc),
                    c.$rpc($req).await.map(|_| ()).map_err(|e| e.code()),
                ))
            };
        }
        let is_reader = secret == &reader;
        if !is_reader {
            call!(
                get_app,
                pb::GetAppRequest {
                    partner_tenant_id: p.clone(),
                    app_id: app.app_id.clone()
                }
            );
            call!(
                list_apps,
                pb::ListAppsRequest {
                    partner_tenant_id: p.clone(),
                    ..Default::default()
                }
            );
            call!(
                list_consents,
                pb::ListConsentsRequest {
                    partner_tenant_id: p.clone(),
                    ..Default::default()
                }
            );
            call!(
                get_token_health,
                pb::GetTokenHealthRequest {
                    partner_tenant_id: p.clone()
                }
            );
            call!(
                list_audit_events,
                pb::ListAuditEventsRequest {
                    partner_tenant_id: p.clone(),
                    ..Default::default()
                }
            );
            call!(
                list_token_usage,
                pb::ListTokenUsageRequest {
                    partner_tenant_id: p.clone(),
                    ..Default::default()
                }
            );
            call!(
                get_mfa_statistics,
                pb::GetMfaStatisticsRequest {
                    partner_tenant_id: p.clone(),
                    time_range: None
                }
            );
        }
        call!(
            register_app,
            pb::RegisterAppRequest {
                partner_tenant_id: p.clone(),
                client_id: "x".into(),
                ..Default::default()
            }
        );
        call!(
            update_app_credential,
            pb::UpdateAppCredentialRequest {
                partner_tenant_id: p.clone(),
                app_id: app.app_id.clone(),
                ..Default::default()
            }
        );
        call!(
            delete_app,
            pb::DeleteAppRequest {
                partner_tenant_id: p.clone(),
                app_id: app.app_id.clone()
            }
        );
        call!(
            begin_consent,
            pb::BeginConsentRequest {
                partner_tenant_id: p.clone(),
                app_id: app.app_id.clone(),
                redirect_uri: String::new()
            }
        );
        call!(
            complete_consent,
            pb::CompleteConsentRequest {
                partner_tenant_id: p.clone(),
                state: "s".into(),
                code: "c".into()
            }
        );
        call!(
            import_refresh_token,
            pb::ImportRefreshTokenRequest {
                partner_tenant_id: p.clone(),
                app_id: app.app_id.clone(),
                refresh_token: "0.AAAA".into(),
                source: String::new()
            }
        );
        call!(
            revoke_consent,
            pb::RevokeConsentRequest {
                partner_tenant_id: p.clone(),
                consent_id: consent.consent_id.clone()
            }
        );
        call!(
            get_access_token,
            pb::GetAccessTokenRequest {
                partner_tenant_id: p.clone(),
                resource: 1,
                ..Default::default()
            }
        );
        call!(rotate_key, pb::RotateKeyRequest {});
        call!(get_key_status, pb::GetKeyStatusRequest {});
        for (rpc, code) in &codes {
            assert_eq!(*code, Err(tonic::Code::PermissionDenied), "{rpc}");
        }
    }
    // Without any credential: unauthenticated.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anonymous = pb::token_broker_service_client::TokenBrokerServiceClient::new(channel);
    let denied = anonymous
        .get_access_token(pb::GetAccessTokenRequest {
            partner_tenant_id: p.clone(),
            resource: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    // The victim's consent is untouched.
    let still = owner
        .list_consents(pb::ListConsentsRequest {
            partner_tenant_id: p.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert_eq!(still[0].state, TokenHealthState::Healthy as i32);
    broker.running.stop().await;
    let _ = Duration::ZERO;
}
