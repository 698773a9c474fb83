use clap::{Subcommand, ValueEnum};
use palisade_contracts::{
    common::v1::Severity,
    notify::v1::{self as pb, notification_service_client::NotificationServiceClient},
};

use crate::{
    commands::Page,
    connect::{Clients, Target},
    output::{View, print},
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ChannelArg {
    Email,
    Webhook,
    Teams,
    Slack,
    Sms,
    Pagerduty,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RecipientArg {
    SecurityContact,
    ComplianceContact,
    AdminAgents,
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// The security and compliance contacts.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Admin agents: who receives Azure fraud alerts, in which language and time zone.
    #[command(subcommand)]
    Agents(AgentsCommand),
    #[command(subcommand)]
    Channels(ChannelsCommand),
    #[command(subcommand)]
    Routes(RoutesCommand),
    /// Digest hour, time zone, grouping timers and escalation.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// The delivery log, with every attempt.
    Deliveries {
        #[arg(long)]
        partner: Option<String>,
        /// planned, sending, delivered, retrying, dead, suppressed
        #[arg(long = "status")]
        statuses: Vec<String>,
        #[arg(long, default_value = "")]
        fingerprint: String,
        #[arg(long, default_value = "")]
        channel: String,
        #[command(flatten)]
        page: Page,
    },
    /// Acknowledges an alert: stops its escalation.
    Ack {
        #[arg(long)]
        partner: Option<String>,
        fingerprint: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Silences an alert fingerprint for 7 to 90 days.
    Snooze {
        #[arg(long)]
        partner: Option<String>,
        fingerprint: String,
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
    /// Sends dead-lettered deliveries again.
    Redrive {
        #[arg(long)]
        partner: Option<String>,
        /// Specific deliveries; every dead one when omitted.
        delivery_ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Sets the security contact (Partner Center's fields).
    SetSecurity {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long)]
        first_name: String,
        #[arg(long, default_value = "")]
        middle_name: String,
        #[arg(long)]
        last_name: String,
        #[arg(long)]
        email: String,
        /// E.164, answered 24x7.
        #[arg(long)]
        phone: String,
        #[arg(long)]
        group: bool,
        #[arg(long, default_value = "en")]
        language: String,
    },
    GetSecurity {
        #[arg(long)]
        partner: Option<String>,
    },
    /// Whether the security and compliance contacts are complete.
    Status {
        #[arg(long)]
        partner: Option<String>,
    },
    SetCompliance {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "")]
        phone: String,
        #[arg(long, default_value = "en")]
        language: String,
    },
    GetCompliance {
        #[arg(long)]
        partner: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    Upsert {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long, default_value = "")]
        agent_id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "en")]
        language: String,
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        #[arg(long, default_value = "")]
        phone: String,
    },
    List {
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    Delete {
        #[arg(long)]
        partner: Option<String>,
        agent_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChannelsCommand {
    Create {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        kind: ChannelArg,
        /// The address, URL or phone number.
        #[arg(long, default_value = "")]
        target: String,
        /// Read the webhook secret or PagerDuty routing key from this environment variable.
        #[arg(long)]
        secret_env: Option<String>,
        #[arg(long, default_value = "en")]
        language: String,
    },
    List {
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    Delete {
        #[arg(long)]
        partner: Option<String>,
        channel_id: String,
    },
    /// Sends a test message.
    Test {
        #[arg(long)]
        partner: Option<String>,
        channel_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
    Create {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long)]
        name: String,
        /// e.g. alert.raised, token.health_changed (repeatable; all when omitted).
        #[arg(long = "event")]
        event_kinds: Vec<String>,
        #[arg(long, value_enum)]
        min_severity: Option<super::alerts::SeverityArg>,
        #[arg(long = "alert-type")]
        alert_types: Vec<String>,
        #[arg(long = "customer")]
        customers: Vec<String>,
        #[arg(long = "recipient", value_enum)]
        recipients: Vec<RecipientArg>,
        #[arg(long = "channel")]
        channels: Vec<String>,
        #[arg(long)]
        digest: bool,
        #[arg(long)]
        stop: bool,
        #[arg(long, default_value_t = 100)]
        priority: u32,
    },
    List {
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    Delete {
        #[arg(long)]
        partner: Option<String>,
        route_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    Get {
        #[arg(long)]
        partner: Option<String>,
    },
    Set {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        #[arg(long, default_value_t = 8)]
        digest_hour: u32,
        #[arg(long, default_value_t = 30)]
        group_wait_seconds: u32,
        #[arg(long, default_value_t = 300)]
        group_interval_seconds: u32,
        #[arg(long, default_value_t = 4 * 3600)]
        repeat_interval_seconds: u32,
        #[arg(long, default_value = "en")]
        default_language: String,
    },
}

fn recipient(r: &RecipientArg) -> i32 {
    (match r {
        RecipientArg::SecurityContact => pb::Recipient::SecurityContact,
        RecipientArg::ComplianceContact => pb::Recipient::ComplianceContact,
        RecipientArg::AdminAgents => pb::Recipient::AdminAgents,
    }) as i32
}

fn delivery_status(name: &str) -> anyhow::Result<i32> {
    Ok(match name {
        "planned" => pb::DeliveryStatus::Planned,
        "sending" => pb::DeliveryStatus::Sending,
        "delivered" => pb::DeliveryStatus::Delivered,
        "retrying" => pb::DeliveryStatus::Retrying,
        "dead" => pb::DeliveryStatus::Dead,
        "suppressed" => pb::DeliveryStatus::Suppressed,
        other => anyhow::bail!("unknown delivery status {other:?}"),
    } as i32)
}

pub async fn run(cmd: NotifyCommand, clients: &Clients) -> anyhow::Result<()> {
    let mut client = NotificationServiceClient::new(clients.channel(Target::Notifier).await?);
    let out = clients.output;
    match cmd {
        NotifyCommand::Contacts(cmd) => match cmd {
            ContactsCommand::SetSecurity {
                partner,
                first_name,
                middle_name,
                last_name,
                email,
                phone,
                group,
                language,
            } => {
                let response = client
                    .set_security_contact(pb::SetSecurityContactRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        contact: Some(pb::SecurityContact {
                            first_name,
                            middle_name,
                            last_name,
                            email,
                            phone,
                            is_group: group,
                            language,
                            updated_at: None,
                        }),
                    })
                    .await?
                    .into_inner();
                print(out, &response, View::Record);
            }
            ContactsCommand::GetSecurity { partner } => {
                let response = client
                    .get_security_contact(pb::GetSecurityContactRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                    })
                    .await?
                    .into_inner();
                match (out, &response.contact) {
                    (crate::OutputFormat::Table, Some(contact)) => {
                        print(out, contact, View::Record)
                    }
                    _ => print(out, &response, View::Record),
                }
            }
            ContactsCommand::Status { partner } => {
                let response = client
                    .get_security_contact_status(pb::GetSecurityContactStatusRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                    })
                    .await?
                    .into_inner();
                print(out, &response, View::Record);
            }
            ContactsCommand::SetCompliance {
                partner,
                name,
                email,
                phone,
                language,
            } => {
                let response = client
                    .set_compliance_contact(pb::SetComplianceContactRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        contact: Some(pb::ComplianceContact {
                            name,
                            email,
                            phone,
                            language,
                        }),
                    })
                    .await?
                    .into_inner();
                print(out, &response, View::Record);
            }
            ContactsCommand::GetCompliance { partner } => {
                let response = client
                    .get_compliance_contact(pb::GetComplianceContactRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                    })
                    .await?
                    .into_inner();
                print(out, &response, View::Record);
            }
        },
        NotifyCommand::Agents(cmd) => match cmd {
            AgentsCommand::Upsert {
                partner,
                agent_id,
                name,
                email,
                language,
                time_zone,
                phone,
            } => {
                let response = client
                    .upsert_admin_agent(pb::UpsertAdminAgentRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        // The email identifies an agent unless an explicit id is given.
                        agent: Some(pb::AdminAgent {
                            agent_id: if agent_id.is_empty() {
                                email.clone()
                            } else {
                                agent_id
                            },
                            display_name: name,
                            email,
                            language,
                            time_zone,
                            phone,
                        }),
                    })
                    .await?
                    .into_inner();
                print(out, &response, View::Record);
            }
            AgentsCommand::List { partner, page } => {
                let response = client
                    .list_admin_agents(pb::ListAdminAgentsRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        page_size: page.page_size,
                        page_token: page.page_token,
                    })
                    .await?
                    .into_inner();
                print(
                    out,
                    &response,
                    View::List {
                        field: "agents",
                        columns: &[
                            "agent_id",
                            "display_name",
                            "email",
                            "language",
                            "time_zone",
                            "phone",
                        ],
                    },
                );
            }
            AgentsCommand::Delete { partner, agent_id } => {
                let response = client
                    .delete_admin_agent(pb::DeleteAdminAgentRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        agent_id,
                    })
                    .await?
                    .into_inner();
                print(out, &response, View::Record);
            }
        },
        NotifyCommand::Channels(cmd) => match cmd {
            ChannelsCommand::Create {
                partner,
                name,
                kind,
                target,
                secret_env,
                language,
            } => {
                let secret = match secret_env {
                    Some(env) => std::env::var(&env)
                        .map_err(|_| anyhow::anyhow!("environment variable {env} is not set"))?,
                    None => String::new(),
                };
                let response = client
                    .create_channel(pb::CreateChannelRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        display_name: name,
                        kind: match kind {
                            ChannelArg::Email => pb::ChannelKind::Email,
                            ChannelArg::Webhook => pb::ChannelKind::Webhook,
                            ChannelArg::Teams => pb::ChannelKind::Teams,
                            ChannelArg::Slack => pb::ChannelKind::Slack,
                            ChannelArg::Sms => pb::ChannelKind::Sms,
                            ChannelArg::Pagerduty => pb::ChannelKind::Pagerduty,
                        } as i32,
                        target,
                        secret,
                        language,
                    })
                    .await?
                    .into_inner();
                match out {
                    crate::OutputFormat::Json => print(out, &response, View::Record),
                    crate::OutputFormat::Table => {
                        if let Some(channel) = &response.channel {
                            print(out, channel, View::Record);
                        }
                        if !response.generated_secret.is_empty() {
                            println!("signing secret (shown once): {}", response.generated_secret);
                        }
                    }
                }
            }
            ChannelsCommand::List { partner, page } => {
                let response = client
                    .list_channels(pb::ListChannelsRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        page_size: page.page_size,
                        page_token: page.page_token,
                    })
                    .await?
                    .into_inner();
                print(
                    out,
                    &response,
                    View::List {
                        field: "channels",
                        columns: &[
                            "channel_id",
                            "display_name",
                            "kind",
                            "target",
                            "enabled",
                            "disabled_reason",
                            "language",
                        ],
                    },
                );
            }
            ChannelsCommand::Delete {
                partner,
                channel_id,
            } => {
                let response = client
                    .delete_channel(pb::DeleteChannelRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        channel_id,
                    })
                    .await?
                    .into_inner();
                print(out, &response, View::Record);
            }
            ChannelsCommand::Test {
                partner,
                channel_id,
            } => {
                let response = client
                    .test_channel(pb::TestChannelRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        channel_id,
                    })
                    .await?
                    .into_inner();
                print(out, &response, View::Record);
                if !response.success {
                    anyhow::bail!("the test message was not delivered: {}", response.detail);
                }
            }
        },
        NotifyCommand::Routes(cmd) => match cmd {
            RoutesCommand::Create {
                partner,
                name,
                event_kinds,
                min_severity,
                alert_types,
                customers,
                recipients,
                channels,
                digest,
                stop,
                priority,
            } => {
                let response = client
                    .create_route(pb::CreateRouteRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        route: Some(pb::Route {
                            route_id: String::new(),
                            display_name: name,
                            event_kinds,
                            min_severity: min_severity
                                .map(|s| match s {
                                    super::alerts::SeverityArg::Informational => {
                                        Severity::Informational
                                    }
                                    super::alerts::SeverityArg::Low => Severity::Low,
                                    super::alerts::SeverityArg::Medium => Severity::Medium,
                                    super::alerts::SeverityArg::High => Severity::High,
                                } as i32)
                                .unwrap_or_default(),
                            alert_types,
                            customer_tenant_ids: customers,
                            recipients: recipients.iter().map(recipient).collect(),
                            channel_ids: channels,
                            mode: if digest {
                                pb::DeliveryMode::Digest
                            } else {
                                pb::DeliveryMode::Immediate
                            } as i32,
                            stop,
                            priority,
                        }),
                    })
                    .await?
                    .into_inner();
                print(out, &response, View::Record);
            }
            RoutesCommand::List { partner, page } => {
                let response = client
                    .list_routes(pb::ListRoutesRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        page_size: page.page_size,
                        page_token: page.page_token,
                    })
                    .await?
                    .into_inner();
                print(
                    out,
                    &response,
                    View::List {
                        field: "routes",
                        columns: &[
                            "route_id",
                            "display_name",
                            "event_kinds",
                            "min_severity",
                            "recipients",
                            "channel_ids",
                            "mode",
                            "priority",
                        ],
                    },
                );
            }
            RoutesCommand::Delete { partner, route_id } => {
                let response = client
                    .delete_route(pb::DeleteRouteRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        route_id,
                    })
                    .await?
                    .into_inner();
                print(out, &response, View::Record);
            }
        },
        NotifyCommand::Settings(cmd) => match cmd {
            SettingsCommand::Get { partner } => {
                let response = client
                    .get_partner_settings(pb::GetPartnerSettingsRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                    })
                    .await?
                    .into_inner();
                print(out, &response, View::Record);
            }
            SettingsCommand::Set {
                partner,
                time_zone,
                digest_hour,
                group_wait_seconds,
                group_interval_seconds,
                repeat_interval_seconds,
                default_language,
            } => {
                let response = client
                    .set_partner_settings(pb::SetPartnerSettingsRequest {
                        partner_tenant_id: clients.partner(&partner)?,
                        settings: Some(pb::PartnerSettings {
                            time_zone,
                            digest_hour,
                            group_wait_seconds,
                            group_interval_seconds,
                            repeat_interval_seconds,
                            escalation: Vec::new(),
                            default_language,
                        }),
                    })
                    .await?
                    .into_inner();
                print(out, &response, View::Record);
            }
        },
        NotifyCommand::Deliveries {
            partner,
            statuses,
            fingerprint,
            channel,
            page,
        } => {
            let response = client
                .list_deliveries(pb::ListDeliveriesRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    statuses: statuses
                        .iter()
                        .map(|s| delivery_status(s))
                        .collect::<anyhow::Result<_>>()?,
                    fingerprint,
                    channel_id: channel,
                    page_size: page.page_size,
                    page_token: page.page_token,
                })
                .await?
                .into_inner();
            print(
                out,
                &response,
                View::List {
                    field: "deliveries",
                    columns: &[
                        "delivery_id",
                        "event_kind",
                        "channel_kind",
                        "recipient",
                        "language",
                        "status",
                        "created_at",
                        "next_attempt_at",
                    ],
                },
            );
        }
        NotifyCommand::Ack {
            partner,
            fingerprint,
            note,
        } => {
            let response = client
                .acknowledge_alert(pb::AcknowledgeAlertRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    fingerprint,
                    note,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        NotifyCommand::Snooze {
            partner,
            fingerprint,
            days,
        } => {
            let response = client
                .snooze_alert(pb::SnoozeAlertRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    fingerprint,
                    days,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        NotifyCommand::Redrive {
            partner,
            delivery_ids,
        } => {
            let response = client
                .redrive_dead_letters(pb::RedriveDeadLettersRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    delivery_ids,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
    }
    Ok(())
}
