//! The operator's set-up steps for a simulated partner, over the services' public gRPC APIs:
//! the SAM app, the admin agent's MFA consent at ms-sim, ingestion with the Partner Center
//! webhook, a webhook channel and a route. The demo (`palisade dev`) and the chaos suite both
//! configure their partners with these, so they exercise the same calls an operator makes.
//!
//! Every step is idempotent (looked up by name before it is created), so a retry after a
//! failed attempt, or a restart on the same data, converges to the same state.

use std::time::Duration;

use anyhow::Context;
use palisade_auth::BearerInterceptor;
use palisade_contracts::{
    alerts::v1::{
        ConfigureIngestionRequest, IngestionSettings, alert_service_client::AlertServiceClient,
    },
    notify::v1::{
        ChannelKind, CreateChannelRequest, CreateRouteRequest, ListChannelsRequest,
        ListRoutesRequest, Route, notification_service_client::NotificationServiceClient,
    },
    tokens::v1::{
        App, AppCredential, BeginConsentRequest, CompleteConsentRequest, ListAppsRequest,
        RegisterAppRequest, TokenEndpoint, app_credential,
        token_broker_service_client::TokenBrokerServiceClient,
    },
};
use secrecy::SecretString;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// Where the consent redirect "lands": nothing listens there; the code is read off the redirect.
const REDIRECT_URI: &str = "http://127.0.0.1:8099/consent/callback";

pub type Authed = InterceptedService<Channel, BearerInterceptor>;

/// A channel to one service that sends `credential` as its bearer on every call.
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

/// The partner's SAM app in the token broker, registered with its client secret unless an app
/// with the same client id is there already.
pub async fn ensure_sam_app(
    tokens: &mut TokenBrokerServiceClient<Authed>,
    partner: &ms_sim::scenario::Partner,
    display_name: &str,
) -> anyhow::Result<App> {
    let tenant = &partner.tenant_id;
    let apps = tokens
        .list_apps(ListAppsRequest {
            partner_tenant_id: tenant.clone(),
            page_size: 100,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .apps;
    if let Some(app) = apps
        .into_iter()
        .find(|a| a.client_id == partner.app.client_id)
    {
        return Ok(app);
    }
    tokens
        .register_app(RegisterAppRequest {
            partner_tenant_id: tenant.clone(),
            display_name: display_name.into(),
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
        .context("RegisterApp answered without the app")
}

/// The admin agent's consent: BeginConsent, the agent "signs in" with MFA at ms-sim (which
/// redirects back with a code), then CompleteConsent.
pub async fn consent_with_mfa(
    tokens: &mut TokenBrokerServiceClient<Authed>,
    partner: &ms_sim::scenario::Partner,
    app_id: &str,
) -> anyhow::Result<()> {
    let tenant = &partner.tenant_id;
    let begin = tokens
        .begin_consent(BeginConsentRequest {
            partner_tenant_id: tenant.clone(),
            app_id: app_id.to_owned(),
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
    Ok(())
}

/// Graph and fraudEvents polled every `poll_interval_seconds`, and Partner Center's webhook
/// received at `webhook_base`.
pub async fn configure_ingestion(
    alerts: &mut AlertServiceClient<Authed>,
    tenant: &str,
    webhook_base: &str,
    poll_interval_seconds: u32,
) -> anyhow::Result<()> {
    alerts
        .configure_ingestion(ConfigureIngestionRequest {
            partner_tenant_id: tenant.to_owned(),
            settings: Some(IngestionSettings {
                graph_enabled: true,
                fraud_events_enabled: true,
                poll_interval_seconds,
                webhook_url: format!("{webhook_base}/webhooks/partner-center/{tenant}"),
            }),
        })
        .await
        .context("configuring ingestion")?;
    Ok(())
}

/// The id of the partner's webhook channel named `name`, created for `target` if missing.
pub async fn ensure_webhook_channel(
    notify: &mut NotificationServiceClient<Authed>,
    tenant: &str,
    name: &str,
    target: String,
) -> anyhow::Result<String> {
    let channels = notify
        .list_channels(ListChannelsRequest {
            partner_tenant_id: tenant.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .channels;
    if let Some(channel) = channels.into_iter().find(|c| c.display_name == name) {
        return Ok(channel.channel_id);
    }
    Ok(notify
        .create_channel(CreateChannelRequest {
            partner_tenant_id: tenant.to_owned(),
            display_name: name.into(),
            kind: ChannelKind::Webhook as i32,
            target,
            language: "en".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .channel
        .context("CreateChannel answered without the channel")?
        .channel_id)
}

/// Creates `route` unless the partner has a route with its display name.
pub async fn ensure_route(
    notify: &mut NotificationServiceClient<Authed>,
    tenant: &str,
    route: Route,
) -> anyhow::Result<()> {
    let routes = notify
        .list_routes(ListRoutesRequest {
            partner_tenant_id: tenant.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .routes;
    if !routes.iter().any(|r| r.display_name == route.display_name) {
        notify
            .create_route(CreateRouteRequest {
                partner_tenant_id: tenant.to_owned(),
                route: Some(route),
            })
            .await?;
    }
    Ok(())
}
