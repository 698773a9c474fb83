//! Configures each simulated partner through the services' public gRPC APIs, as an operator
//! would (and as `palisade dev` seeds its demo partner): the SAM app and the admin agent's MFA
//! consent, ingestion with the Partner Center webhook, and a webhook channel with a route for
//! raised alerts pointing at the harness's receiver.

use std::time::Duration;

use anyhow::Context;
use palisade_auth::BearerInterceptor;
use palisade_contracts::{
    alerts::v1::{
        ConfigureIngestionRequest, IngestionSettings, alert_service_client::AlertServiceClient,
    },
    notify::v1::{
        ChannelKind, CreateChannelRequest, CreateRouteRequest, DeliveryMode, ListChannelsRequest,
        ListRoutesRequest, PartnerSettings, Route, SetPartnerSettingsRequest,
        notification_service_client::NotificationServiceClient,
    },
    tokens::v1::{
        AppCredential, BeginConsentRequest, CompleteConsentRequest, GetAccessTokenRequest,
        ListAppsRequest, RegisterAppRequest, Resource, TokenEndpoint, app_credential,
        token_broker_service_client::TokenBrokerServiceClient,
    },
};
use secrecy::SecretString;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// Where the consent redirect "lands": nothing listens there; the code is read off the redirect.
const REDIRECT_URI: &str = "http://127.0.0.1:8099/consent/callback";
const CHANNEL_NAME: &str = "chaos receiver";
const ROUTE_NAME: &str = "raised alerts to the chaos receiver";

pub type Authed = InterceptedService<Channel, BearerInterceptor>;

pub async fn channel(address: &str, credential: &SecretString) -> anyhow::Result<Authed> {
    let channel = tonic::transport::Endpoint::from_shared(address.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connecting to {address}"))?;
    Ok(InterceptedService::new(
        channel,
        BearerInterceptor::new(Some(credential)),
    ))
}

/// The services' gRPC addresses and the receivers' base URLs.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub token_broker: String,
    pub alert_ingest: String,
    pub notifier: String,
    /// alert-ingest's Partner Center webhook receiver.
    pub ingest_webhooks: String,
    /// The harness's own receiver of the notifier's webhooks.
    pub chaos_receiver: String,
}

/// Configures one partner; every step is idempotent, so a retry after a failed attempt (a
/// service still starting) converges.
pub async fn partner(
    partner: &ms_sim::scenario::Partner,
    addresses: &Addresses,
    admin: &SecretString,
    poll_interval_seconds: u32,
) -> anyhow::Result<()> {
    let tenant = partner.tenant_id.clone();
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
                display_name: "Chaos SAM app".into(),
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
    // A consent exists once a partner token can be minted; only then is it skipped.
    let has_consent = tokens
        .get_access_token(GetAccessTokenRequest {
            partner_tenant_id: tenant.clone(),
            resource: Resource::Graph as i32,
            ..Default::default()
        })
        .await
        .is_ok();
    if !has_consent {
        let begin = tokens
            .begin_consent(BeginConsentRequest {
                partner_tenant_id: tenant.clone(),
                app_id: app.app_id.clone(),
                redirect_uri: String::new(),
            })
            .await?
            .into_inner();
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
            .context("completing the consent")?;
    }

    let mut alerts = AlertServiceClient::new(channel(&addresses.alert_ingest, admin).await?);
    alerts
        .configure_ingestion(ConfigureIngestionRequest {
            partner_tenant_id: tenant.clone(),
            settings: Some(IngestionSettings {
                graph_enabled: true,
                fraud_events_enabled: true,
                poll_interval_seconds,
                webhook_url: format!(
                    "{}/webhooks/partner-center/{tenant}",
                    addresses.ingest_webhooks
                ),
            }),
        })
        .await
        .context("configuring ingestion")?;

    let mut notify = NotificationServiceClient::new(channel(&addresses.notifier, admin).await?);
    notify
        .set_partner_settings(SetPartnerSettingsRequest {
            partner_tenant_id: tenant.clone(),
            settings: Some(PartnerSettings {
                time_zone: "UTC".into(),
                digest_hour: 8,
                // Short timers: the run lasts minutes, not hours.
                group_wait_seconds: 1,
                group_interval_seconds: 2,
                repeat_interval_seconds: 24 * 3600,
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
        .find(|c| c.display_name == CHANNEL_NAME)
    {
        Some(c) => c.channel_id,
        None => {
            notify
                .create_channel(CreateChannelRequest {
                    partner_tenant_id: tenant.clone(),
                    display_name: CHANNEL_NAME.into(),
                    kind: ChannelKind::Webhook as i32,
                    target: format!("{}/hooks/{tenant}", addresses.chaos_receiver),
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
    if !routes.iter().any(|r| r.display_name == ROUTE_NAME) {
        notify
            .create_route(CreateRouteRequest {
                partner_tenant_id: tenant.clone(),
                route: Some(Route {
                    display_name: ROUTE_NAME.into(),
                    event_kinds: vec!["alert.raised".into()],
                    channel_ids: vec![channel_id],
                    mode: DeliveryMode::Immediate as i32,
                    stop: true,
                    ..Default::default()
                }),
            })
            .await?;
    }
    Ok(())
}
