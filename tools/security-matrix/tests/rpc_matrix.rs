//! Every RPC of every service, called five ways that must be refused and once that must not:
//! no credential, a forged secret for a real credential id, a credential of another partner,
//! one of the right partner without the scope, and a revoked one; then a credential with
//! exactly the scope the matrix names. The RPCs come from the compiled descriptors, so a new
//! RPC fails the suite until it has a row here.
//!
//! The same run then scans the database (every table of every schema) and the captured logs
//! for every secret it handled: Palisade credentials, the partners' client secrets, the
//! tokens ms-sim issued, and the channel secrets it configured.

#[path = "../../../services/compliance/tests/support/mod.rs"]
mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    time::Duration,
};

use palisade_auth::{AuthStore, NewCredential, Scope};
use palisade_contracts::{auth::v1 as auth_pb, notify::v1 as notify_pb, tokens::v1 as tokens_pb};
use palisade_security_matrix as matrix;
use palisade_testkit::LogCapture;
use tonic::{Code, transport::Channel};

/// What an RPC asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// `scope` for the request's `partner_tenant_id`.
    Partner(Scope),
    /// `scope` on a credential bound to every partner (credentials, key management).
    Platform(Scope),
    /// Any valid credential; it only ever learns about itself (`WhoAmI`).
    Caller,
}

use Access::{Caller, Partner, Platform};
use Scope::{
    Admin, AlertsRead, AlertsWrite, ComplianceRead, ComplianceWrite, NotifyAdmin, NotifyRead,
    TokensAdmin, TokensIssue, TokensRead,
};

/// The matrix: every RPC and what it must demand. This table is the reviewable statement of
/// the platform's authorisation; the test proves each service enforces exactly it.
const MATRIX: &[(&str, Access)] = &[
    // Hosted by every service, over the shared registry.
    (
        "palisade.auth.v1.CredentialService/CreateCredential",
        Platform(Admin),
    ),
    (
        "palisade.auth.v1.CredentialService/ListCredentials",
        Platform(Admin),
    ),
    (
        "palisade.auth.v1.CredentialService/RevokeCredential",
        Platform(Admin),
    ),
    ("palisade.auth.v1.CredentialService/WhoAmI", Caller),
    // token-broker
    (
        "palisade.tokens.v1.TokenBrokerService/RegisterApp",
        Partner(TokensAdmin),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/GetApp",
        Partner(TokensRead),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/ListApps",
        Partner(TokensRead),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/UpdateAppCredential",
        Partner(TokensAdmin),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/DeleteApp",
        Partner(TokensAdmin),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/BeginConsent",
        Partner(TokensAdmin),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/CompleteConsent",
        Partner(TokensAdmin),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/ImportRefreshToken",
        Partner(TokensAdmin),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/ListConsents",
        Partner(TokensRead),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/RevokeConsent",
        Partner(TokensAdmin),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/GetAccessToken",
        Partner(TokensIssue),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/GetTokenHealth",
        Partner(TokensRead),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/RotateKey",
        Platform(TokensAdmin),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/GetKeyStatus",
        Platform(TokensRead),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/ListAuditEvents",
        Partner(TokensRead),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/ListTokenUsage",
        Partner(TokensRead),
    ),
    (
        "palisade.tokens.v1.TokenBrokerService/GetMfaStatistics",
        Partner(TokensRead),
    ),
    // alert-ingest
    (
        "palisade.alerts.v1.AlertService/ListAlerts",
        Partner(AlertsRead),
    ),
    (
        "palisade.alerts.v1.AlertService/GetAlert",
        Partner(AlertsRead),
    ),
    (
        "palisade.alerts.v1.AlertService/ResolveAlert",
        Partner(AlertsWrite),
    ),
    (
        "palisade.alerts.v1.AlertService/BulkResolve",
        Partner(AlertsWrite),
    ),
    (
        "palisade.alerts.v1.AlertService/GetDailySummary",
        Partner(AlertsRead),
    ),
    (
        "palisade.alerts.v1.AlertService/GetResponseTimes",
        Partner(AlertsRead),
    ),
    (
        "palisade.alerts.v1.AlertService/WatchAlerts",
        Partner(AlertsRead),
    ),
    (
        "palisade.alerts.v1.AlertService/ConfigureIngestion",
        Partner(AlertsWrite),
    ),
    (
        "palisade.alerts.v1.AlertService/GetIngestionStatus",
        Partner(AlertsRead),
    ),
    // notifier
    (
        "palisade.notify.v1.NotificationService/SetSecurityContact",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/GetSecurityContact",
        Partner(NotifyRead),
    ),
    (
        "palisade.notify.v1.NotificationService/GetSecurityContactStatus",
        Partner(NotifyRead),
    ),
    (
        "palisade.notify.v1.NotificationService/SetComplianceContact",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/GetComplianceContact",
        Partner(NotifyRead),
    ),
    (
        "palisade.notify.v1.NotificationService/UpsertAdminAgent",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/ListAdminAgents",
        Partner(NotifyRead),
    ),
    (
        "palisade.notify.v1.NotificationService/DeleteAdminAgent",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/CreateChannel",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/ListChannels",
        Partner(NotifyRead),
    ),
    (
        "palisade.notify.v1.NotificationService/DeleteChannel",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/TestChannel",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/RotateChannelSecret",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/CreateRoute",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/ListRoutes",
        Partner(NotifyRead),
    ),
    (
        "palisade.notify.v1.NotificationService/DeleteRoute",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/SetPartnerSettings",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/GetPartnerSettings",
        Partner(NotifyRead),
    ),
    (
        "palisade.notify.v1.NotificationService/AcknowledgeAlert",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/SnoozeAlert",
        Partner(NotifyAdmin),
    ),
    (
        "palisade.notify.v1.NotificationService/ListDeliveries",
        Partner(NotifyRead),
    ),
    (
        "palisade.notify.v1.NotificationService/RedriveDeadLetters",
        Partner(NotifyAdmin),
    ),
    // compliance
    (
        "palisade.compliance.v1.ComplianceService/GetComplianceStatus",
        Partner(ComplianceRead),
    ),
    (
        "palisade.compliance.v1.ComplianceService/ListFindings",
        Partner(ComplianceRead),
    ),
    (
        "palisade.compliance.v1.ComplianceService/GetHistory",
        Partner(ComplianceRead),
    ),
    (
        "palisade.compliance.v1.ComplianceService/ListCustomerPosture",
        Partner(ComplianceRead),
    ),
    (
        "palisade.compliance.v1.ComplianceService/ExportReport",
        Partner(ComplianceRead),
    ),
    (
        "palisade.compliance.v1.ComplianceService/EvaluateNow",
        Partner(ComplianceWrite),
    ),
    (
        "palisade.compliance.v1.ComplianceService/SetEvaluationSchedule",
        Partner(ComplianceWrite),
    ),
];

/// The scopes that satisfy `scope` where it is asked for: `admin` everywhere, and in the
/// services that say so, the area's write/admin scope for its read scope.
fn satisfying(scope: Scope) -> Vec<Scope> {
    let mut out = vec![scope, Admin];
    match scope {
        TokensRead => out.push(TokensAdmin),
        NotifyRead => out.push(NotifyAdmin),
        ComplianceRead => out.push(ComplianceWrite),
        _ => {}
    }
    out
}

/// Every scope but those that would satisfy `scope`: the strongest credential that must
/// still be refused.
fn all_but(scope: Scope) -> Vec<Scope> {
    let excluded = satisfying(scope);
    Scope::ALL
        .into_iter()
        .filter(|s| !excluded.contains(s))
        .collect()
}

#[test]
fn every_rpc_in_the_contracts_has_a_row_in_the_matrix() {
    let pool = matrix::pool();
    let declared: BTreeSet<String> = matrix::rpcs(&pool).iter().map(matrix::rpc_name).collect();
    let covered: BTreeSet<String> = MATRIX.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(
        covered.len(),
        MATRIX.len(),
        "an RPC appears twice in the matrix"
    );
    let missing: Vec<_> = declared.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "RPCs without a security case (add them to MATRIX): {missing:?}"
    );
    let stale: Vec<_> = covered.difference(&declared).collect();
    assert!(
        stale.is_empty(),
        "MATRIX names RPCs that no longer exist: {stale:?}"
    );
    // Streaming RPCs are in: the matrix reads their first message or status.
    assert!(declared.contains("palisade.alerts.v1.AlertService/WatchAlerts"));
}

/// Credentials minted in the shared registry; every secret is remembered for the scan.
struct Minter {
    auth: AuthStore,
    secrets: Vec<String>,
    cache: HashMap<String, String>,
}

impl Minter {
    /// A credential of this shape, minted once and reused by every RPC's case.
    async fn mint(&mut self, all_partners: bool, partners: &[&str], scopes: Vec<Scope>) -> String {
        let key = format!("{all_partners}|{partners:?}|{scopes:?}");
        if let Some(secret) = self.cache.get(&key) {
            return secret.clone();
        }
        let secret = self.fresh(all_partners, partners, scopes).await;
        self.cache.insert(key, secret.clone());
        secret
    }

    /// A credential of its own, shared with no case (one to revoke, one to forge).
    async fn fresh(&mut self, all_partners: bool, partners: &[&str], scopes: Vec<Scope>) -> String {
        let (id, secret, hash) = palisade_auth::generate_secret();
        self.auth
            .insert(
                &id,
                &hash,
                &NewCredential {
                    display_name: format!("matrix {id}"),
                    service: false,
                    all_partners,
                    partners: partners.iter().map(|p| (*p).to_owned()).collect(),
                    scopes,
                    expires_at: None,
                },
            )
            .await
            .unwrap();
        self.secrets.push(secret.clone());
        secret
    }
}

async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn capture_production_logs() -> (LogCapture, palisade_telemetry::TelemetryGuard) {
    let capture = LogCapture::default();
    let settings = palisade_telemetry::TelemetrySettings {
        // Everything Palisade logs, at every level; ms-sim (Microsoft) and the transport
        // internals are not Palisade's logs.
        log_filter: "trace,ms_sim=off,h2=info,hyper=info,hyper_util=info,tower=info,mio=info"
            .into(),
        ..Default::default()
    };
    let guard = palisade_telemetry::init_with_writer("security-matrix", &settings, capture.clone())
        .unwrap();
    (capture, guard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_refuses_the_wrong_callers_and_no_secret_is_stored_or_logged() {
    let (logs, _telemetry) = capture_production_logs();
    let h = support::start(ms_sim::SimConfig::default(), |_| {}).await;
    let partner = h.partner.tenant_id.clone();
    let other = h.sim.scenario().partners[1].tenant_id.clone();
    assert_ne!(partner, other);

    let hosts: BTreeMap<&str, Vec<(&str, SocketAddr)>> = [
        (
            "palisade.tokens.v1.TokenBrokerService",
            vec![("token-broker", h.broker_addr)],
        ),
        (
            "palisade.alerts.v1.AlertService",
            vec![("alert-ingest", h.alert_ingest_addr)],
        ),
        (
            "palisade.notify.v1.NotificationService",
            vec![("notifier", h.notifier_addr)],
        ),
        (
            "palisade.compliance.v1.ComplianceService",
            vec![("compliance", h.addr)],
        ),
        (
            "palisade.auth.v1.CredentialService",
            vec![
                ("token-broker", h.broker_addr),
                ("alert-ingest", h.alert_ingest_addr),
                ("notifier", h.notifier_addr),
                ("compliance", h.addr),
            ],
        ),
    ]
    .into_iter()
    .collect();
    let mut channels = HashMap::new();
    for addr in [h.broker_addr, h.alert_ingest_addr, h.notifier_addr, h.addr] {
        channels.insert(addr, connect(addr).await);
    }

    let mut minter = Minter {
        auth: h.auth.clone(),
        secrets: vec![h.admin.clone()],
        cache: HashMap::new(),
    };

    // A credential with every right, used on every service (so each has it cached), then
    // revoked through one of them: the others must learn it from the registry.
    let revoked = minter.fresh(true, &[], vec![Admin]).await;
    let pool = matrix::pool();
    let who_am_i = pool
        .get_service_by_name("palisade.auth.v1.CredentialService")
        .unwrap()
        .methods()
        .find(|m| m.name() == "WhoAmI")
        .unwrap();
    for channel in channels.values() {
        matrix::call(
            channel.clone(),
            &who_am_i,
            matrix::request(&who_am_i, serde_json::json!({})),
            Some(&revoked),
        )
        .await
        .expect("the credential works before its revocation");
    }
    let revoked_id = revoked.split('_').nth(1).unwrap().to_owned();
    let mut admin = palisade_contracts::auth::v1::credential_service_client::CredentialServiceClient::with_interceptor(
        channels[&h.broker_addr].clone(),
        palisade_auth::BearerInterceptor::new(Some(&secrecy::SecretString::from(h.admin.clone()))),
    );
    admin
        .revoke_credential(auth_pb::RevokeCredentialRequest {
            credential_id: revoked_id,
        })
        .await
        .unwrap();
    for (addr, channel) in &channels {
        let mut refused = false;
        // Each replica refreshes from the registry every second; the bound is generous.
        for _ in 0..100 {
            let status = matrix::call(
                channel.clone(),
                &who_am_i,
                matrix::request(&who_am_i, serde_json::json!({})),
                Some(&revoked),
            )
            .await;
            if status
                .as_ref()
                .is_err_and(|s| s.code() == Code::Unauthenticated)
            {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            refused,
            "the service at {addr} still accepts a revoked credential"
        );
    }
    // A real credential id with a secret of our own making.
    let forged = {
        let real = minter.fresh(true, &[], vec![Admin]).await;
        let id = real.split('_').nth(1).unwrap();
        format!("pal_{id}_{}", "A".repeat(43))
    };

    let access: HashMap<&str, Access> = MATRIX.iter().copied().collect();
    let mut failures = Vec::new();
    let mut calls = 0_usize;
    for method in matrix::rpcs(&pool) {
        let name = matrix::rpc_name(&method);
        let Some(&rule) = access.get(name.as_str()) else {
            failures.push(format!("{name}: no row in MATRIX"));
            continue;
        };
        let service = method.parent_service().full_name().to_owned();
        let Some(targets) = hosts.get(service.as_str()) else {
            failures.push(format!("{name}: no host known for {service}"));
            continue;
        };
        let json = match rule {
            Partner(_) => {
                if method
                    .input()
                    .get_field_by_name("partner_tenant_id")
                    .is_none()
                {
                    failures.push(format!("{name}: the request names no partner_tenant_id"));
                    continue;
                }
                serde_json::json!({ "partner_tenant_id": partner })
            }
            Platform(_) | Caller => serde_json::json!({}),
        };
        // (case, credential, expected code; None = must not be refused)
        let mut cases: Vec<(&str, Option<String>, Option<Code>)> = vec![
            ("no credential", None, Some(Code::Unauthenticated)),
            (
                "forged secret",
                Some(forged.clone()),
                Some(Code::Unauthenticated),
            ),
            (
                "revoked",
                Some(revoked.clone()),
                Some(Code::Unauthenticated),
            ),
        ];
        match rule {
            Partner(scope) => {
                cases.push((
                    "another partner (admin there)",
                    Some(minter.mint(false, &[&other], vec![Admin]).await),
                    Some(Code::PermissionDenied),
                ));
                cases.push((
                    "right partner, every scope but the one needed",
                    Some(minter.mint(false, &[&partner], all_but(scope)).await),
                    Some(Code::PermissionDenied),
                ));
                cases.push((
                    "right partner, exactly the scope",
                    Some(minter.mint(false, &[&partner], vec![scope]).await),
                    None,
                ));
            }
            Platform(scope) => {
                cases.push((
                    "bound to some partners (admin there)",
                    Some(minter.mint(false, &[&partner, &other], vec![Admin]).await),
                    Some(Code::PermissionDenied),
                ));
                cases.push((
                    "every partner, every scope but the one needed",
                    Some(minter.mint(true, &[], all_but(scope)).await),
                    Some(Code::PermissionDenied),
                ));
                cases.push((
                    "every partner, exactly the scope",
                    Some(minter.mint(true, &[], vec![scope]).await),
                    None,
                ));
            }
            Caller => {
                // Another partner's or a scopeless caller learns only about itself: allowed.
                cases.push((
                    "any valid credential",
                    Some(minter.mint(false, &[&other], vec![AlertsRead]).await),
                    None,
                ));
            }
        }
        for (host, addr) in targets {
            for (case, credential, expected) in &cases {
                calls += 1;
                let outcome = matrix::call(
                    channels[addr].clone(),
                    &method,
                    matrix::request(&method, json.clone()),
                    credential.as_deref(),
                )
                .await;
                let code = outcome.as_ref().err().map(tonic::Status::code);
                match expected {
                    Some(expected) if code != Some(*expected) => failures.push(format!(
                        "{name} at {host}, {case}: expected {expected:?}, got {outcome:?}"
                    )),
                    None if matches!(
                        code,
                        Some(Code::Unauthenticated | Code::PermissionDenied)
                    ) =>
                    {
                        failures.push(format!("{name} at {host}, {case}: refused: {outcome:?}"))
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {calls} calls broke the matrix:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(calls >= MATRIX.len() * 4, "only {calls} calls were made");

    // --- the secret scan: collect what the run handled, then look for it everywhere.
    let mut secrets = minter.secrets.clone();
    for p in &h.sim.scenario().partners {
        secrets.push(p.app.client_secret.clone());
    }
    // Tokens Microsoft issued to the broker, and access tokens the broker handed out.
    let mut broker = h.broker_client().await;
    for resource in [
        tokens_pb::Resource::Graph,
        tokens_pb::Resource::PartnerCenter,
    ] {
        let token = broker
            .get_access_token(tokens_pb::GetAccessTokenRequest {
                partner_tenant_id: partner.clone(),
                resource: resource as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .access_token;
        secrets.push(token);
    }
    let refresh_tokens = h.sim.control().issued_refresh_tokens();
    assert!(!refresh_tokens.is_empty(), "ms-sim issued refresh tokens");
    secrets.extend(refresh_tokens);
    // Channel secrets the partner configured: a generated webhook secret, a PagerDuty key.
    let mut notifier = h.notifier_client().await;
    let webhook = notifier
        .create_channel(notify_pb::CreateChannelRequest {
            partner_tenant_id: partner.clone(),
            display_name: "SOC webhook".into(),
            kind: notify_pb::ChannelKind::Webhook as i32,
            target: "https://hooks.partner.invalid/palisade".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!webhook.generated_secret.is_empty());
    secrets.push(webhook.generated_secret.clone());
    let pagerduty_key = "R0ut1ngKeyR0ut1ngKeyR0ut1ngKey42".to_owned();
    notifier
        .create_channel(notify_pb::CreateChannelRequest {
            partner_tenant_id: partner.clone(),
            display_name: "on call".into(),
            kind: notify_pb::ChannelKind::Pagerduty as i32,
            secret: pagerduty_key.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    secrets.push(pagerduty_key);
    // The long, unguessable parts: a Palisade credential is matched by its secret part too.
    let mut needles: Vec<String> = Vec::new();
    for s in &secrets {
        needles.push(s.clone());
        if let Some(part) = s.strip_prefix("pal_").and_then(|r| r.split_once('_')) {
            needles.push(part.1.to_owned());
        }
    }
    assert!(needles.len() > 20, "the scan has something to look for");

    let dump = dump_database(h.db.url()).await;
    assert!(dump.rows > 0, "the database holds rows to scan");
    for needle in &needles {
        let hex_form = hex::encode(needle.as_bytes());
        assert!(
            !dump.text.contains(needle.as_str()) && !dump.text.contains(&hex_form),
            "a secret is stored in plaintext (first 12 chars: {:?}); tables scanned: {}",
            &needle[..needle.len().min(12)],
            dump.tables.join(", ")
        );
    }
    assert!(
        logs.contents().len() > 1000,
        "the logs were captured (else the scan proves nothing)"
    );
    let refs: Vec<&str> = needles.iter().map(String::as_str).collect();
    logs.assert_absent(&refs);
    h.stop().await;
}

struct Dump {
    text: String,
    rows: usize,
    tables: Vec<String>,
}

/// Every row of every table of every schema, as Postgres renders a row as text (bytea as
/// `\x` hex, which is why the scan also looks for each secret's hex form).
async fn dump_database(url: &str) -> Dump {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' \
           AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut dump = Dump {
        text: String::new(),
        rows: 0,
        tables: Vec::new(),
    };
    for (schema, table) in tables {
        let rows = sqlx::query(&format!(
            "SELECT t::text AS row FROM \"{schema}\".\"{table}\" t"
        ))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        dump.rows += rows.len();
        for row in rows {
            dump.text.push_str(&row.get::<String, _>("row"));
            dump.text.push('\n');
        }
        dump.tables.push(format!("{schema}.{table}"));
    }
    dump
}
