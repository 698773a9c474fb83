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
use palisade_contracts::{
    alerts::v1::alert_service_client::AlertServiceClient,
    notify::v1::{
        AdminAgent, ComplianceContact, DeliveryMode, PartnerSettings, Recipient, Route,
        SecurityContact, SetComplianceContactRequest, SetPartnerSettingsRequest,
        SetSecurityContactRequest, UpsertAdminAgentRequest,
        notification_service_client::NotificationServiceClient,
    },
    tokens::v1::token_broker_service_client::TokenBrokerServiceClient,
};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::provision::{self, channel};

/// The seed every demo starts from: the same ids on every laptop.
pub const SEED: u64 = 42;
pub const CUSTOMERS: usize = 50;
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
    .with_context(|| {
        format!(
            "starting ms-sim on ports {base_port}-{}",
            base_port + ms_sim::Ports::COUNT - 1
        )
    })
}

/// Configures Palisade for the demo partner through its APIs.
pub async fn seed(
    sim: &ms_sim::MsSim,
    addresses: &Addresses,
    admin: &SecretString,
) -> anyhow::Result<()> {
    let partner = sim.scenario().partners[0].clone();
    let tenant = partner.tenant_id.clone();

    // 1. The SAM app, and the admin agent's consent with MFA (redone on every start: ms-sim's
    // refresh tokens live in its memory).
    let mut tokens = TokenBrokerServiceClient::new(channel(&addresses.token_broker, admin).await?);
    let app = provision::ensure_sam_app(&mut tokens, &partner, "Demo SAM app").await?;
    provision::consent_with_mfa(&mut tokens, &partner, &app.app_id).await?;

    // 2. Ingestion: Graph and fraudEvents polled, and Partner Center's webhook.
    let mut alerts = AlertServiceClient::new(channel(&addresses.alert_ingest, admin).await?);
    provision::configure_ingestion(&mut alerts, &tenant, &addresses.webhook_receiver, 60).await?;

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
    let channel_id = provision::ensure_webhook_channel(
        &mut notify,
        &tenant,
        "SOC webhook",
        "https://soc.partner0.example/hooks/palisade".into(),
    )
    .await?;
    provision::ensure_route(
        &mut notify,
        &tenant,
        Route {
            display_name: "Alerts to agents and the SOC".into(),
            event_kinds: vec!["alert.raised".into()],
            recipients: vec![
                Recipient::SecurityContact as i32,
                Recipient::AdminAgents as i32,
            ],
            channel_ids: vec![channel_id],
            mode: DeliveryMode::Immediate as i32,
            ..Default::default()
        },
    )
    .await?;
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
            ..Default::default()
        };
        if let Some(id) = control.raise_alert(&partner.tenant_id, &spec) {
            tracing::info!(alert = %id, "ms-sim raised a new alert and fired its webhook");
        }
        round += 1;
    }
}
