//! The demo world of `palisade dev`: ms-sim as Microsoft, seeded with one partner and 50
//! customers, and Palisade configured for it through its own public APIs (the same calls an
//! operator makes): the SAM app and an MFA consent, ingestion with a Partner Center webhook,
//! contacts and admin agents in three languages, a webhook channel and a route. Then it runs
//! live: ms-sim raises a new alert now and then and fires its signed webhook.
//!
//! Every step is idempotent, so a restart on the same data directory converges to the same
//! state; only the consent is redone, because ms-sim's refresh tokens live in its memory.

use std::time::Duration;

use anyhow::Context;
use palisade_auth::BearerInterceptor;
use palisade_contracts::{
    alerts::v1::{
        ConfigureIngestionRequest, IngestionSettings, alert_service_client::AlertServiceClient,
    },
    notify::v1::{
        AdminAgent, ChannelKind, ComplianceContact, CreateChannelRequest, CreateRouteRequest,
        DeliveryMode, ListChannelsRequest, ListRoutesRequest, PartnerSettings, Recipient, Route,
        SecurityContact, SetComplianceContactRequest, SetPartnerSettingsRequest,
        SetSecurityContactRequest, UpsertAdminAgentRequest,
        notification_service_client::NotificationServiceClient,
    },
    tokens::v1::{
        AppCredential, BeginConsentRequest, CompleteConsentRequest, ListAppsRequest,
        RegisterAppRequest, TokenEndpoint, app_credential,
        token_broker_service_client::TokenBrokerServiceClient,
    },
};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// The seed every demo starts from: the same ids on every laptop.
pub const SEED: u64 = 42;
pub const CUSTOMERS: usize = 50;
/// Where the consent redirect "lands": nothing listens there; the code is read off the redirect.
const REDIRECT_URI: &str = "http://127.0.0.1:8099/consent/callback";

type Authed = InterceptedService<Channel, BearerInterceptor>;

async fn channel(address: &str, credential: &SecretString) -> anyhow::Result<Authed> {
    let channel = tonic::transport::Endpoint::from_shared(address.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {address}"))?;
    Ok(InterceptedService::new(
        channel,
        BearerInterceptor::new(Some(credential)),
    ))
}

/// Where the demo's services listen.
pub struct Addresses {
    pub token_broker: String,
    pub alert_ingest: String,
    pub notifier: String,
    pub webhook_receiver: String,
}

/// Starts ms-sim for the demo on fixed ports from `base_port`.
pub async fn start_sim(bind: std::net::IpAddr, base_port: u16) -> anyhow::Result<ms_sim::MsSim> {
    ms_sim::start(ms_sim::SimConfig {
        seed: SEED,
        bind_ip: bind,
        scenario: ms_sim::ScenarioConfig {
            partners: 1,
            customers_per_partner: CUSTOMERS,
            alerts_per_partner: 12,
        },
        ports: ms_sim::Ports::from_base(base_port),
        webhook_retry_base: Duration::from_secs(1),
        realistic_throttles: true,
        public_host: None,
    })
    .await
    .with_context(|| format!("starting ms-sim on ports {base_port}-{}", base_port + 5))
}

/// Configures Palisade for the demo partner through its APIs.
pub async fn seed(
    sim: &ms_sim::MsSim,
    addresses: &Addresses,
    admin: &SecretString,
) -> anyhow::Result<()> {
    let partner = sim.scenario().partners[0].clone();
    let tenant = partner.tenant_id.clone();

    // 1. The SAM app, and the admin agent's consent with MFA.
    let mut tokens = TokenBrokerServiceClient::new(channel(&addresses.token_broker, admin).await?);
    let apps = tokens
        .list_apps(ListAppsRequest {
            partner_tenant_id: tenant.clone(),
            page_size: 100,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .apps;
    let app = match apps
        .into_iter()
        .find(|a| a.client_id == partner.app.client_id)
    {
        Some(app) => app,
        None => tokens
            .register_app(RegisterAppRequest {
                partner_tenant_id: tenant.clone(),
                display_name: "Demo SAM app".into(),
                client_id: partner.app.client_id.clone(),
                credential: Some(AppCredential {
                    credential: Some(app_credential::Credential::ClientSecret(
                        partner.app.client_secret.clone(),
                    )),
                }),
                token_endpoint: TokenEndpoint::V1 as i32,
                redirect_uri: REDIRECT_URI.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .app
            .context("RegisterApp answered without the app")?,
    };
    let begin = tokens
        .begin_consent(BeginConsentRequest {
            partner_tenant_id: tenant.clone(),
            app_id: app.app_id.clone(),
            redirect_uri: String::new(),
        })
        .await?
        .into_inner();
    // The admin agent "signs in" at ms-sim: it redirects back with the code.
    let mut authorize = url::Url::parse(&begin.authorize_url)?;
    authorize
        .query_pairs_mut()
        .append_pair("login_hint", &partner.admin().upn);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let location = http
        .get(authorize)
        .send()
        .await?
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned)
        .context("ms-sim's authorize answered without a redirect")?;
    let code = url::Url::parse(&location)?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .context("the consent redirect carries no code")?;
    tokens
        .complete_consent(CompleteConsentRequest {
            partner_tenant_id: tenant.clone(),
            state: begin.state,
            code,
        })
        .await
        .context("completing the demo consent")?;

    // 2. Ingestion: Graph and fraudEvents polled, and Partner Center's webhook.
    let mut alerts = AlertServiceClient::new(channel(&addresses.alert_ingest, admin).await?);
    alerts
        .configure_ingestion(ConfigureIngestionRequest {
            partner_tenant_id: tenant.clone(),
            settings: Some(IngestionSettings {
                graph_enabled: true,
                fraud_events_enabled: true,
                poll_interval_seconds: 60,
                webhook_url: format!(
                    "{}/webhooks/partner-center/{tenant}",
                    addresses.webhook_receiver
                ),
            }),
        })
        .await
        .context("configuring ingestion")?;

    // 3. Who hears about it: contacts, admin agents in three languages, a webhook channel.
    let mut notify = NotificationServiceClient::new(channel(&addresses.notifier, admin).await?);
    notify
        .set_security_contact(SetSecurityContactRequest {
            partner_tenant_id: tenant.clone(),
            contact: Some(SecurityContact {
                first_name: "Security".into(),
                last_name: "Operations".into(),
                email: "secops@partner0.example".into(),
                phone: "+81312345678".into(),
                is_group: true,
                language: "en".into(),
                ..Default::default()
            }),
        })
        .await?;
    notify
        .set_compliance_contact(SetComplianceContactRequest {
            partner_tenant_id: tenant.clone(),
            contact: Some(ComplianceContact {
                name: "Claire Martin".into(),
                email: "compliance@partner0.example".into(),
                phone: "+33140000000".into(),
                language: "fr".into(),
            }),
        })
        .await?;
    for (id, name, email, language, zone) in [
        (
            "agent-en",
            "Alex Admin",
            "alex@partner0.example",
            "en",
            "America/New_York",
        ),
        (
            "agent-ja",
            "佐藤 愛子",
            "aiko@partner0.example",
            "ja",
            "Asia/Tokyo",
        ),
        (
            "agent-fr",
            "Camille Dubois",
            "camille@partner0.example",
            "fr",
            "Europe/Paris",
        ),
    ] {
        notify
            .upsert_admin_agent(UpsertAdminAgentRequest {
                partner_tenant_id: tenant.clone(),
                agent: Some(AdminAgent {
                    agent_id: id.into(),
                    display_name: name.into(),
                    email: email.into(),
                    language: language.into(),
                    time_zone: zone.into(),
                    phone: String::new(),
                }),
            })
            .await?;
    }
    notify
        .set_partner_settings(SetPartnerSettingsRequest {
            partner_tenant_id: tenant.clone(),
            settings: Some(PartnerSettings {
                time_zone: "Asia/Tokyo".into(),
                digest_hour: 8,
                // Short timers, so a person watching sees alerts arrive within seconds.
                group_wait_seconds: 5,
                group_interval_seconds: 60,
                repeat_interval_seconds: 4 * 3600,
                default_language: "en".into(),
                ..Default::default()
            }),
        })
        .await?;
    let channels = notify
        .list_channels(ListChannelsRequest {
            partner_tenant_id: tenant.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .channels;
    let channel_id = match channels
        .into_iter()
        .find(|c| c.display_name == "SOC webhook")
    {
        Some(c) => c.channel_id,
        None => {
            notify
                .create_channel(CreateChannelRequest {
                    partner_tenant_id: tenant.clone(),
                    display_name: "SOC webhook".into(),
                    kind: ChannelKind::Webhook as i32,
                    target: "https://soc.partner0.example/hooks/palisade".into(),
                    language: "en".into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .channel
                .context("CreateChannel answered without the channel")?
                .channel_id
        }
    };
    let routes = notify
        .list_routes(ListRoutesRequest {
            partner_tenant_id: tenant.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .routes;
    if !routes
        .iter()
        .any(|r| r.display_name == "Alerts to agents and the SOC")
    {
        notify
            .create_route(CreateRouteRequest {
                partner_tenant_id: tenant.clone(),
                route: Some(Route {
                    display_name: "Alerts to agents and the SOC".into(),
                    event_kinds: vec!["alert.raised".into()],
                    recipients: vec![
                        Recipient::SecurityContact as i32,
                        Recipient::AdminAgents as i32,
                    ],
                    channel_ids: vec![channel_id],
                    mode: DeliveryMode::Immediate as i32,
                    ..Default::default()
                }),
            })
            .await?;
    }
    Ok(())
}

/// ms-sim raises a new alert every `every`, on a different customer each time, which fires its
/// signed webhook to alert-ingest.
pub async fn live(
    control: ms_sim::Control,
    partner: ms_sim::scenario::Partner,
    every: Duration,
    stop: CancellationToken,
) {
    let types = [
        "CryptoMining",
        "ARM_SuspiciousOperations",
        "VM_AnomalousDeployment",
        "AzureBatch_AnomalousDeployment",
    ];
    let mut round = 0_usize;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let customer = partner.customer(round * 7 % CUSTOMERS).map(|c| c.tenant_id);
        let spec = ms_sim::AlertSpec {
            customer_tenant_id: customer,
            alert_type: Some(types[round % types.len()].to_owned()),
            severity: Some(
                if round.is_multiple_of(3) {
                    "high"
                } else {
                    "medium"
                }
                .to_owned(),
            ),
            is_test: false,
        };
        if let Some(id) = control.raise_alert(&partner.tenant_id, &spec) {
            tracing::info!(alert = %id, "ms-sim raised a new alert and fired its webhook");
        }
        round += 1;
    }
}
