//! The whole notifier in-process on loopback ports, over real gRPC, real Postgres and real
//! Redis Streams: authorisation on every RPC, and a crash in the middle of a fan-out.

mod support;

use std::{collections::HashSet, time::Duration};

use palisade_contracts::{
    common::v1::Severity,
    notify::v1::{notification_service_client::NotificationServiceClient, *},
};
use palisade_notifier::{EngineSettings, Listeners, Settings, queue::EventSettings};
use palisade_testkit::{TestDatabase, TestRedis};
use support::*;
use tonic::{Code, Request, transport::Channel};

/// Mints partner A's admin and read-only credentials in the platform registry.
async fn mint(db: &TestDatabase) -> (String, String) {
    let store = palisade_auth::AuthStore::open(&db.settings())
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for (name, scope) in [
        ("a-admin", palisade_auth::Scope::NotifyAdmin),
        ("a-reader", palisade_auth::Scope::NotifyRead),
    ] {
        let (id, secret, hash) = palisade_auth::generate_secret();
        store
            .insert(
                &id,
                &hash,
                &palisade_auth::NewCredential {
                    display_name: name.into(),
                    service: false,
                    all_partners: false,
                    partners: vec![PARTNER.into()],
                    scopes: vec![scope],
                    expires_at: None,
                },
            )
            .await
            .unwrap();
        tokens.push(secret);
    }
    (tokens[0].clone(), tokens[1].clone())
}

fn settings(
    db: &TestDatabase,
    redis: &TestRedis,
    smtp: &SmtpServer,
    http: &Receiver,
    consumer: &str,
) -> Settings {
    Settings {
        database: db.settings(),
        queue: queue_settings(redis),
        events: EventSettings {
            consumer_name: consumer.to_owned(),
            retry_delay: Duration::from_millis(500),
            ..Default::default()
        },
        kek: palisade_crypto::LocalKekSettings {
            keys: Some(kek_keys()),
            key_file: None,
        },
        server: palisade_server::ServerSettings::ephemeral(),
        auth: Default::default(),
        telemetry: Default::default(),
        ack_listen: None,
        channels: channel_settings(smtp, http, LOOPBACK),
        engine: EngineSettings {
            lease: Duration::from_secs(2),
            poll_interval: Duration::from_millis(100),
            ..engine_settings()
        },
        workers: Some(true),
        shutdown_timeout: Some(Duration::from_secs(5)),
    }
}

fn queue_settings(redis: &TestRedis) -> palisade_queue::QueueSettings {
    palisade_queue::QueueSettings {
        backend: palisade_queue::Backend::Redis,
        redis_url: Some(secrecy::SecretString::from(redis.url().to_owned())),
        key_prefix: redis.prefix().trim_end_matches(':').to_owned(),
        visibility_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

async fn listeners() -> (Listeners, u16) {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = grpc.local_addr().unwrap().port();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (Listeners { grpc, admin, http }, port)
}

async fn client(port: u16) -> NotificationServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    NotificationServiceClient::new(channel)
}

fn authed<T>(token: &str, body: T) -> Request<T> {
    let mut r = Request::new(body);
    if !token.is_empty() {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    r
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.err().map(|e| e.code()).unwrap_or(Code::Ok)
}

/// Calls every RPC for `partner` with `token` and returns each status code.
async fn call_every_rpc(
    c: &mut NotificationServiceClient<Channel>,
    token: &str,
    partner: &str,
) -> Vec<(&'static str, Code)> {
    let p = || partner.to_owned();
    let contact = SecurityContact {
        first_name: "A".into(),
        last_name: "B".into(),
        email: "a@b.example".into(),
        phone: "+81312345678".into(),
        ..Default::default()
    };
    vec![
        (
            "SetSecurityContact",
            code(
                c.set_security_contact(authed(
                    token,
                    SetSecurityContactRequest {
                        partner_tenant_id: p(),
                        contact: Some(contact),
                    },
                ))
                .await,
            ),
        ),
        (
            "GetSecurityContact",
            code(
                c.get_security_contact(authed(
                    token,
                    GetSecurityContactRequest {
                        partner_tenant_id: p(),
                    },
                ))
                .await,
            ),
        ),
        (
            "GetSecurityContactStatus",
            code(
                c.get_security_contact_status(authed(
                    token,
                    GetSecurityContactStatusRequest {
                        partner_tenant_id: p(),
                    },
                ))
                .await,
            ),
        ),
        (
            "SetComplianceContact",
            code(
                c.set_compliance_contact(authed(
                    token,
                    SetComplianceContactRequest {
                        partner_tenant_id: p(),
                        contact: Some(ComplianceContact {
                            name: "C".into(),
                            email: "c@b.example".into(),
                            ..Default::default()
                        }),
                    },
                ))
                .await,
            ),
        ),
        (
            "GetComplianceContact",
            code(
                c.get_compliance_contact(authed(
                    token,
                    GetComplianceContactRequest {
                        partner_tenant_id: p(),
                    },
                ))
                .await,
            ),
        ),
        (
            "UpsertAdminAgent",
            code(
                c.upsert_admin_agent(authed(
                    token,
                    UpsertAdminAgentRequest {
                        partner_tenant_id: p(),
                        agent: Some(AdminAgent {
                            agent_id: "x".into(),
                            display_name: "X".into(),
                            email: "x@b.example".into(),
                            ..Default::default()
                        }),
                    },
                ))
                .await,
            ),
        ),
        (
            "ListAdminAgents",
            code(
                c.list_admin_agents(authed(
                    token,
                    ListAdminAgentsRequest {
                        partner_tenant_id: p(),
                        ..Default::default()
                    },
                ))
                .await,
            ),
        ),
        (
            "DeleteAdminAgent",
            code(
                c.delete_admin_agent(authed(
                    token,
                    DeleteAdminAgentRequest {
                        partner_tenant_id: p(),
                        agent_id: "x".into(),
                    },
                ))
                .await,
            ),
        ),
        (
            "CreateChannel",
            code(
                c.create_channel(authed(
                    token,
                    CreateChannelRequest {
                        partner_tenant_id: p(),
                        display_name: "m".into(),
                        kind: ChannelKind::Email as i32,
                        target: "m@b.example".into(),
                        ..Default::default()
                    },
                ))
                .await,
            ),
        ),
        (
            "ListChannels",
            code(
                c.list_channels(authed(
                    token,
                    ListChannelsRequest {
                        partner_tenant_id: p(),
                        ..Default::default()
                    },
                ))
                .await,
            ),
        ),
        (
            "DeleteChannel",
            code(
                c.delete_channel(authed(
                    token,
                    DeleteChannelRequest {
                        partner_tenant_id: p(),
                        channel_id: "ch_x".into(),
                    },
                ))
                .await,
            ),
        ),
        (
            "RotateChannelSecret",
            code(
                c.rotate_channel_secret(authed(
                    token,
                    RotateChannelSecretRequest {
                        partner_tenant_id: p(),
                        channel_id: "ch_x".into(),
                        ..Default::default()
                    },
                ))
                .await,
            ),
        ),
        (
            "TestChannel",
            code(
                c.test_channel(authed(
                    token,
                    TestChannelRequest {
                        partner_tenant_id: p(),
                        channel_id: "ch_x".into(),
                    },
                ))
                .await,
            ),
        ),
        (
            "CreateRoute",
            code(
                c.create_route(authed(
                    token,
                    CreateRouteRequest {
                        partner_tenant_id: p(),
                        route: Some(Route {
                            display_name: "r".into(),
                            recipients: vec![Recipient::SecurityContact as i32],
                            ..Default::default()
                        }),
                    },
                ))
                .await,
            ),
        ),
        (
            "ListRoutes",
            code(
                c.list_routes(authed(
                    token,
                    ListRoutesRequest {
                        partner_tenant_id: p(),
                        ..Default::default()
                    },
                ))
                .await,
            ),
        ),
        (
            "DeleteRoute",
            code(
                c.delete_route(authed(
                    token,
                    DeleteRouteRequest {
                        partner_tenant_id: p(),
                        route_id: "rt_x".into(),
                    },
                ))
                .await,
            ),
        ),
        (
            "SetPartnerSettings",
            code(
                c.set_partner_settings(authed(
                    token,
                    SetPartnerSettingsRequest {
                        partner_tenant_id: p(),
                        settings: Some(PartnerSettings {
                            time_zone: "UTC".into(),
                            ..Default::default()
                        }),
                    },
                ))
                .await,
            ),
        ),
        (
            "GetPartnerSettings",
            code(
                c.get_partner_settings(authed(
                    token,
                    GetPartnerSettingsRequest {
                        partner_tenant_id: p(),
                    },
                ))
                .await,
            ),
        ),
        (
            "AcknowledgeAlert",
            code(
                c.acknowledge_alert(authed(
                    token,
                    AcknowledgeAlertRequest {
                        partner_tenant_id: p(),
                        fingerprint: "fp".into(),
                        note: String::new(),
                    },
                ))
                .await,
            ),
        ),
        (
            "SnoozeAlert",
            code(
                c.snooze_alert(authed(
                    token,
                    SnoozeAlertRequest {
                        partner_tenant_id: p(),
                        fingerprint: "fp".into(),
                        days: 7,
                    },
                ))
                .await,
            ),
        ),
        (
            "ListDeliveries",
            code(
                c.list_deliveries(authed(
                    token,
                    ListDeliveriesRequest {
                        partner_tenant_id: p(),
                        ..Default::default()
                    },
                ))
                .await,
            ),
        ),
        (
            "RedriveDeadLetters",
            code(
                c.redrive_dead_letters(authed(
                    token,
                    RedriveDeadLettersRequest {
                        partner_tenant_id: p(),
                        delivery_ids: vec![],
                    },
                ))
                .await,
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_denies_other_tenants_and_unauthenticated_callers() {
    let db = TestDatabase::create().await;
    let (admin_a, reader_a) = mint(&db).await;
    let redis = TestRedis::create().await;
    let smtp = SmtpServer::start().await;
    let http = Receiver::start().await;
    let (l, port) = listeners().await;
    let running = palisade_notifier::start(
        settings(&db, &redis, &smtp, &http, "n1"),
        l,
        palisade_clock::system(),
    )
    .await
    .unwrap();
    let mut c = client(port).await;

    // Partner A's admin is denied on every RPC for partner B, whether or not B has data.
    for (rpc, code) in call_every_rpc(&mut c, &admin_a, OTHER_PARTNER).await {
        assert_eq!(code, Code::PermissionDenied, "{rpc} for another partner");
    }
    for (rpc, code) in call_every_rpc(&mut c, "", PARTNER).await {
        assert_eq!(code, Code::Unauthenticated, "{rpc} without a credential");
    }
    for (rpc, code) in call_every_rpc(&mut c, "not-a-token", PARTNER).await {
        assert_eq!(
            code,
            Code::Unauthenticated,
            "{rpc} with an unknown credential"
        );
    }
    // A read-only credential reads but never writes.
    let writes = [
        "SetSecurityContact",
        "SetComplianceContact",
        "UpsertAdminAgent",
        "DeleteAdminAgent",
        "CreateChannel",
        "DeleteChannel",
        "TestChannel",
        "RotateChannelSecret",
        "CreateRoute",
        "DeleteRoute",
        "SetPartnerSettings",
        "AcknowledgeAlert",
        "SnoozeAlert",
        "RedriveDeadLetters",
    ];
    for (rpc, code) in call_every_rpc(&mut c, &reader_a, PARTNER).await {
        if writes.contains(&rpc) {
            assert_eq!(
                code,
                Code::PermissionDenied,
                "{rpc} with a read-only credential"
            );
        } else {
            assert_ne!(
                code,
                Code::PermissionDenied,
                "{rpc} read with a read-only credential"
            );
            assert_ne!(code, Code::Unauthenticated, "{rpc}");
        }
    }
    // And the owner gets through (answers depend on data, but never an auth error).
    for (rpc, code) in call_every_rpc(&mut c, &admin_a, PARTNER).await {
        assert!(
            !matches!(
                code,
                Code::PermissionDenied | Code::Unauthenticated | Code::Internal
            ),
            "{rpc}: {code:?}"
        );
    }
    let status = c
        .get_security_contact_status(authed(
            &reader_a,
            GetSecurityContactStatusRequest {
                partner_tenant_id: PARTNER.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.security_contact_present
            && status.security_contact_complete
            && status.compliance_contact_present
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_killed_mid_fan_out_loses_nothing_and_repeats_only_with_the_same_webhook_id() {
    let db = TestDatabase::create().await;
    let (admin_a, _reader_a) = mint(&db).await;
    let redis = TestRedis::create().await;
    let smtp = SmtpServer::start().await;
    let http = Receiver::start().await;
    let (l, port) = listeners().await;
    let running = palisade_notifier::start(
        settings(&db, &redis, &smtp, &http, "pod-1"),
        l,
        palisade_clock::system(),
    )
    .await
    .unwrap();
    let mut c = client(port).await;

    c.set_partner_settings(authed(
        &admin_a,
        SetPartnerSettingsRequest {
            partner_tenant_id: PARTNER.into(),
            settings: Some(PartnerSettings {
                time_zone: "UTC".into(),
                digest_hour: 23,
                group_wait_seconds: 0,
                group_interval_seconds: 0,
                repeat_interval_seconds: 86_400,
                escalation: vec![],
                default_language: "en".into(),
            }),
        },
    ))
    .await
    .unwrap();
    let hooks = ["/hook-1", "/hook-2", "/hook-3"];
    let mut channel_ids = Vec::new();
    for hook in hooks {
        // Slow receivers keep sends in flight when the process dies.
        http.default_reply(hook, Reply::status(200).delayed(Duration::from_millis(300)));
        let ch = c
            .create_channel(authed(
                &admin_a,
                CreateChannelRequest {
                    partner_tenant_id: PARTNER.into(),
                    display_name: hook.into(),
                    kind: ChannelKind::Webhook as i32,
                    target: http.url(hook),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        channel_ids.push(ch.channel.unwrap().channel_id);
    }
    c.create_route(authed(
        &admin_a,
        CreateRouteRequest {
            partner_tenant_id: PARTNER.into(),
            route: Some(Route {
                display_name: "hooks".into(),
                channel_ids,
                ..Default::default()
            }),
        },
    ))
    .await
    .unwrap();

    let producer = palisade_queue::connect(&queue_settings(&redis))
        .await
        .unwrap();
    let fingerprints: Vec<String> = (0..12).map(|i| format!("fp-crash-{i}")).collect();
    for fp in &fingerprints {
        let a = alert(fp, Severity::Medium as i32, "c1");
        producer
            .publish("alerts", &raised(&a, chrono::Utc::now().timestamp_millis()))
            .await
            .unwrap();
        // Spread out, so the fan-out is several notifications rather than one.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Let the fan-out start, then crash in the middle of it.
    assert!(
        eventually(30, || http.received().len() >= 3).await,
        "fan-out started"
    );
    running.kill().await;
    let at_crash = http.received().len();

    let (l, port) = listeners().await;
    let restarted = palisade_notifier::start(
        settings(&db, &redis, &smtp, &http, "pod-2"),
        l,
        palisade_clock::system(),
    )
    .await
    .unwrap();
    let mut c = client(port).await;
    let all_delivered = |ds: &[Delivery]| {
        !ds.is_empty()
            && ds
                .iter()
                .all(|d| d.status == DeliveryStatus::Delivered as i32)
    };
    let mut finished = Vec::new();
    for _ in 0..300 {
        let ds = c
            .list_deliveries(authed(
                &admin_a,
                ListDeliveriesRequest {
                    partner_tenant_id: PARTNER.into(),
                    page_size: 500,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        let every_fp_told = fingerprints.iter().all(|fp| {
            hooks.iter().all(|hook| {
                http.at(hook)
                    .iter()
                    .any(|r| String::from_utf8_lossy(&r.body).contains(&format!("\"{fp}\"")))
            })
        });
        if all_delivered(&ds) && every_fp_told {
            finished = ds;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !finished.is_empty(),
        "every delivery reached Delivered and every alert reached every hook (received {} before the crash)",
        at_crash
    );
    assert!(
        http.received().len() > at_crash,
        "the restarted notifier had work left: the crash came mid-fan-out"
    );

    // Receivers saw only planned deliveries; any repeat carries the same webhook-id and
    // the same body.
    let planned: HashSet<String> = finished.iter().map(|d| d.delivery_id.clone()).collect();
    let mut bodies = std::collections::HashMap::new();
    for r in http.received() {
        let id = r.header("webhook-id");
        assert!(planned.contains(&id), "unplanned webhook-id {id}");
        let previous = bodies.insert((r.path.clone(), id.clone()), r.body.clone());
        if let Some(previous) = previous {
            assert_eq!(previous, r.body, "a duplicate of {id} differs");
        }
    }
    for d in &finished {
        let hook = http
            .received()
            .into_iter()
            .any(|r| r.header("webhook-id") == d.delivery_id);
        assert!(
            hook,
            "delivery {} never reached its receiver",
            d.delivery_id
        );
    }
    restarted.stop().await;
}

/// The admin port's `/metrics`, as a Prometheus scrape sees it.
async fn scrape(admin_port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sample lines of one metric family, sorted (a family's series come in no set order).
fn series(text: &str, family: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(family))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_dead_letters_and_disabled_channels_are_exported_on_metrics() {
    let db = TestDatabase::create().await;
    let (admin_a, _reader_a) = mint(&db).await;
    let redis = TestRedis::create().await;
    let smtp = SmtpServer::start().await;
    let http = Receiver::start().await;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = grpc.local_addr().unwrap().port();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_port = admin.local_addr().unwrap().port();
    let ack = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = palisade_notifier::start(
        settings(&db, &redis, &smtp, &http, "pod-metrics"),
        Listeners {
            grpc,
            admin,
            http: ack,
        },
        palisade_clock::system(),
    )
    .await
    .unwrap();
    let mut c = client(port).await;

    // Nothing has happened yet: the gauges read the store at start and say zero.
    let text = scrape(admin_port).await;
    assert_eq!(
        series(&text, "palisade_notify_dead_letters"),
        ["palisade_notify_dead_letters 0"]
    );
    assert!(
        series(&text, "palisade_notify_deliveries_total").is_empty(),
        "{text}"
    );

    c.set_partner_settings(authed(
        &admin_a,
        SetPartnerSettingsRequest {
            partner_tenant_id: PARTNER.into(),
            settings: Some(PartnerSettings {
                time_zone: "UTC".into(),
                digest_hour: 23,
                group_wait_seconds: 0,
                group_interval_seconds: 0,
                repeat_interval_seconds: 86_400,
                escalation: vec![],
                default_language: "en".into(),
            }),
        },
    ))
    .await
    .unwrap();
    // One endpoint takes the message; the other answers 410, which dead-letters the
    // delivery and disables the channel.
    http.default_reply("/gone", Reply::status(410));
    let mut channel_ids = Vec::new();
    for hook in ["/ok", "/gone"] {
        let ch = c
            .create_channel(authed(
                &admin_a,
                CreateChannelRequest {
                    partner_tenant_id: PARTNER.into(),
                    display_name: hook.into(),
                    kind: ChannelKind::Webhook as i32,
                    target: http.url(hook),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        channel_ids.push(ch.channel.unwrap().channel_id);
    }
    c.create_route(authed(
        &admin_a,
        CreateRouteRequest {
            partner_tenant_id: PARTNER.into(),
            route: Some(Route {
                display_name: "hooks".into(),
                channel_ids,
                ..Default::default()
            }),
        },
    ))
    .await
    .unwrap();
    let producer = palisade_queue::connect(&queue_settings(&redis))
        .await
        .unwrap();
    let a = alert("fp-metrics", Severity::Medium as i32, "c1");
    producer
        .publish("alerts", &raised(&a, chrono::Utc::now().timestamp_millis()))
        .await
        .unwrap();

    let mut text = String::new();
    for _ in 0..200 {
        text = scrape(admin_port).await;
        if series(&text, "palisade_notify_dead_letters") == ["palisade_notify_dead_letters 1"]
            && series(&text, "palisade_notify_deliveries_total").len() == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        series(&text, "palisade_notify_deliveries_total"),
        [
            r#"palisade_notify_deliveries_total{channel_kind="webhook",outcome="dead"} 1"#,
            r#"palisade_notify_deliveries_total{channel_kind="webhook",outcome="delivered"} 1"#,
        ],
        "{text}"
    );
    assert_eq!(
        series(&text, "palisade_notify_channels_disabled"),
        [
            r#"palisade_notify_channels_disabled{partner_tenant_id="partner-a",channel_kind="webhook"} 1"#
        ],
        "{text}"
    );
    assert_eq!(
        series(&text, "palisade_notify_dead_letters"),
        ["palisade_notify_dead_letters 1"],
        "{text}"
    );
    // One delivered webhook observed: count 1, and on loopback well under 5 s.
    let latency = series(&text, "palisade_notify_delivery_seconds");
    assert!(
        latency.contains(
            &r#"palisade_notify_delivery_seconds_count{channel_kind="webhook"} 1"#.to_owned()
        ),
        "{text}"
    );
    assert!(
        latency.contains(
            &r#"palisade_notify_delivery_seconds_bucket{le="5.0",channel_kind="webhook"} 1"#
                .to_owned()
        ),
        "{text}"
    );
    assert_eq!(http.at("/ok").len(), 1);
    assert_eq!(http.at("/gone").len(), 1);

    // Redriven, the dead letter is gone from the gauge; its channel is still disabled, so the
    // retry is suppressed rather than sent.
    c.redrive_dead_letters(authed(
        &admin_a,
        RedriveDeadLettersRequest {
            partner_tenant_id: PARTNER.into(),
            delivery_ids: vec![],
        },
    ))
    .await
    .unwrap();
    for _ in 0..200 {
        text = scrape(admin_port).await;
        if series(&text, "palisade_notify_deliveries_total").len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        series(&text, "palisade_notify_dead_letters"),
        ["palisade_notify_dead_letters 0"],
        "{text}"
    );
    assert_eq!(
        series(&text, "palisade_notify_deliveries_total"),
        [
            r#"palisade_notify_deliveries_total{channel_kind="webhook",outcome="dead"} 1"#,
            r#"palisade_notify_deliveries_total{channel_kind="webhook",outcome="delivered"} 1"#,
            r#"palisade_notify_deliveries_total{channel_kind="webhook",outcome="suppressed"} 1"#,
        ],
        "{text}"
    );
    assert_eq!(
        http.at("/gone").len(),
        1,
        "a disabled channel is not sent to"
    );
    running.stop().await;
}
