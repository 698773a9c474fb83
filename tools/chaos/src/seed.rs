//! Configures each simulated partner through the services' public gRPC APIs, with the same
//! operator steps `palisade dev` seeds its demo partner with: the SAM app and the admin agent's
//! MFA consent, ingestion with the Partner Center webhook, and a webhook channel with a route
//! for raised alerts pointing at the harness's receiver.

use palisade_cli::dev::provision;
pub use palisade_cli::dev::provision::channel;
use palisade_contracts::{
    alerts::v1::alert_service_client::AlertServiceClient,
    notify::v1::{
        DeliveryMode, PartnerSettings, Route, SetPartnerSettingsRequest,
        notification_service_client::NotificationServiceClient,
    },
    tokens::v1::{
        GetAccessTokenRequest, Resource, token_broker_service_client::TokenBrokerServiceClient,
    },
};
use secrecy::SecretString;

const CHANNEL_NAME: &str = "chaos receiver";
const ROUTE_NAME: &str = "raised alerts to the chaos receiver";

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
    let app = provision::ensure_sam_app(&mut tokens, partner, "Chaos SAM app").await?;
    // A consent exists once a partner token can be minted; only then is it skipped (a second
    // consent would start a new refresh-token chain and hide a broken one).
    let has_consent = tokens
        .get_access_token(GetAccessTokenRequest {
            partner_tenant_id: tenant.clone(),
            resource: Resource::Graph as i32,
            ..Default::default()
        })
        .await
        .is_ok();
    if !has_consent {
        provision::consent_with_mfa(&mut tokens, partner, &app.app_id).await?;
    }

    let mut alerts = AlertServiceClient::new(channel(&addresses.alert_ingest, admin).await?);
    provision::configure_ingestion(
        &mut alerts,
        &tenant,
        &addresses.ingest_webhooks,
        poll_interval_seconds,
    )
    .await?;

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
    let channel_id = provision::ensure_webhook_channel(
        &mut notify,
        &tenant,
        CHANNEL_NAME,
        format!("{}/hooks/{tenant}", addresses.chaos_receiver),
    )
    .await?;
    provision::ensure_route(
        &mut notify,
        &tenant,
        Route {
            display_name: ROUTE_NAME.into(),
            event_kinds: vec!["alert.raised".into()],
            channel_ids: vec![channel_id],
            mode: DeliveryMode::Immediate as i32,
            stop: true,
            ..Default::default()
        },
    )
    .await
}
