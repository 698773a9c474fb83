use clap::{Subcommand, ValueEnum};
use palisade_contracts::{
    alerts::v1::{self as pb, alert_service_client::AlertServiceClient},
    common::v1::{Severity, SortOrder},
};
use tokio_stream::StreamExt;

use crate::{
    commands::{Page, parse_duration_secs, progress_bar, update_progress},
    connect::{Clients, Target},
    output::{View, print, print_line},
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ResolutionArg {
    Legitimate,
    Fraud,
    Ignore,
}

impl From<ResolutionArg> for pb::Resolution {
    fn from(value: ResolutionArg) -> Self {
        match value {
            ResolutionArg::Legitimate => Self::Legitimate,
            ResolutionArg::Fraud => Self::Fraud,
            ResolutionArg::Ignore => Self::Ignore,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Active,
    Investigating,
    Resolved,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SeverityArg {
    Informational,
    Low,
    Medium,
    High,
}

/// Filters shared by list, watch and bulk-resolve.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    #[arg(long, default_value = "")]
    pub customer: String,
    #[arg(long = "status", value_enum)]
    pub statuses: Vec<StatusArg>,
    #[arg(long = "severity", value_enum)]
    pub severities: Vec<SeverityArg>,
    #[arg(long = "type")]
    pub alert_types: Vec<String>,
    #[arg(long, default_value = "")]
    pub reseller: String,
}

impl FilterArgs {
    fn to_proto(&self) -> pb::AlertFilter {
        pb::AlertFilter {
            customer_tenant_id: self.customer.clone(),
            statuses: self
                .statuses
                .iter()
                .map(|s| match s {
                    StatusArg::Active => pb::AlertStatus::Active,
                    StatusArg::Investigating => pb::AlertStatus::Investigating,
                    StatusArg::Resolved => pb::AlertStatus::Resolved,
                } as i32)
                .collect(),
            severities: self
                .severities
                .iter()
                .map(|s| match s {
                    SeverityArg::Informational => Severity::Informational,
                    SeverityArg::Low => Severity::Low,
                    SeverityArg::Medium => Severity::Medium,
                    SeverityArg::High => Severity::High,
                } as i32)
                .collect(),
            alert_types: self.alert_types.clone(),
            last_observed: None,
            reseller_tenant_id: self.reseller.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    List {
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Oldest first instead of newest first.
        #[arg(long)]
        oldest_first: bool,
        #[command(flatten)]
        page: Page,
    },
    /// One alert with its history.
    Show {
        #[arg(long)]
        partner: Option<String>,
        alert_id: String,
    },
    /// Resolves an alert and writes the resolution back to Microsoft.
    Resolve {
        #[arg(long)]
        partner: Option<String>,
        alert_id: String,
        #[arg(long, value_enum)]
        resolution: ResolutionArg,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Resolves every matching alert, e.g. `--older-than 60d --resolution ignore`.
    BulkResolve {
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_parser = parse_duration_secs)]
        older_than: Option<u64>,
        #[arg(long, value_enum)]
        resolution: ResolutionArg,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Microsoft's daily summary: unresolved alerts of the last 60 days, per type.
    Summary {
        #[arg(long)]
        partner: Option<String>,
    },
    /// The 30-day average response time against the 24-hour requirement.
    ResponseTimes {
        #[arg(long)]
        partner: Option<String>,
    },
    /// Streams alert changes as they happen (Ctrl-C to stop).
    Watch {
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Which sources feed a partner, and how often.
    ConfigureIngestion {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        graph: bool,
        #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
        fraud_events: bool,
        #[arg(long, default_value_t = 300)]
        poll_interval_seconds: u32,
        #[arg(long, default_value = "")]
        webhook_url: String,
    },
    IngestionStatus {
        #[arg(long)]
        partner: Option<String>,
    },
}

const ALERT_COLUMNS: &[&str] = &[
    "alert_id",
    "alert_type",
    "severity",
    "status",
    "customer_name",
    "subscription_id",
    "last_observed_at",
    "resolution",
    "write_back_state",
];

pub async fn run(cmd: AlertsCommand, clients: &Clients) -> anyhow::Result<()> {
    let mut client = AlertServiceClient::new(clients.channel(Target::AlertIngest).await?);
    let out = clients.output;
    match cmd {
        AlertsCommand::List {
            partner,
            filter,
            oldest_first,
            page,
        } => {
            let response = client
                .list_alerts(pb::ListAlertsRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    filter: Some(filter.to_proto()),
                    sort_field: pb::AlertSortField::LastObserved as i32,
                    sort_order: if oldest_first {
                        SortOrder::Ascending
                    } else {
                        SortOrder::Descending
                    } as i32,
                    page_size: page.page_size,
                    page_token: page.page_token,
                })
                .await?
                .into_inner();
            print(
                out,
                &response,
                View::List {
                    field: "alerts",
                    columns: ALERT_COLUMNS,
                },
            );
        }
        AlertsCommand::Show { partner, alert_id } => {
            let response = client
                .get_alert(pb::GetAlertRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    alert_id,
                })
                .await?
                .into_inner();
            match (out, &response.alert) {
                (crate::OutputFormat::Table, Some(alert)) => {
                    print(out, alert, View::Record);
                    print(
                        out,
                        alert,
                        View::List {
                            field: "history",
                            columns: &["at", "from_status", "to_status", "actor", "reason"],
                        },
                    );
                }
                _ => print(out, &response, View::Record),
            }
        }
        AlertsCommand::Resolve {
            partner,
            alert_id,
            resolution,
            note,
        } => {
            let response = client
                .resolve_alert(pb::ResolveAlertRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    alert_id,
                    resolution: pb::Resolution::from(resolution) as i32,
                    note,
                })
                .await?
                .into_inner();
            match (out, &response.alert) {
                (crate::OutputFormat::Table, Some(alert)) => print(out, alert, View::Record),
                _ => print(out, &response, View::Record),
            }
        }
        AlertsCommand::BulkResolve {
            partner,
            filter,
            older_than,
            resolution,
            note,
            dry_run,
        } => {
            let bar = progress_bar(out, "resolving");
            let mut stream = client
                .bulk_resolve(pb::BulkResolveRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    filter: Some(filter.to_proto()),
                    older_than_seconds: older_than.unwrap_or(0),
                    resolution: pb::Resolution::from(resolution) as i32,
                    note,
                    dry_run,
                })
                .await?
                .into_inner();
            let mut last = None;
            while let Some(item) = stream.next().await {
                let item = item?;
                update_progress(&bar, item.progress.as_ref());
                last = Some(item);
            }
            bar.finish_and_clear();
            if let Some(last) = last {
                print(out, &last, View::Record);
            }
        }
        AlertsCommand::Summary { partner } => {
            let response = client
                .get_daily_summary(pb::GetDailySummaryRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    as_of: None,
                })
                .await?
                .into_inner();
            print(
                out,
                &response,
                View::List {
                    field: "by_type",
                    columns: &[
                        "alert_type",
                        "unresolved_alerts",
                        "affected_customers",
                        "affected_subscriptions",
                        "affected_partners",
                    ],
                },
            );
        }
        AlertsCommand::ResponseTimes { partner } => {
            let response = client
                .get_response_times(pb::GetResponseTimesRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    as_of: None,
                })
                .await?
                .into_inner();
            match out {
                crate::OutputFormat::Json => print(out, &response, View::Record),
                crate::OutputFormat::Table => {
                    let hours = response.average_response_seconds / 3600.0;
                    let verdict = if response.meets_requirement {
                        "meets"
                    } else {
                        "MISSES"
                    };
                    println!(
                        "30-day average response: {hours:.1} h over {} resolved alerts; {verdict} the {:.0} h requirement; {} unresolved older than it",
                        response.resolved_in_window,
                        response.requirement_seconds / 3600.0,
                        response.unresolved_older_than_requirement
                    );
                    print(
                        out,
                        &response,
                        View::List {
                            field: "breaching_alerts",
                            columns: ALERT_COLUMNS,
                        },
                    );
                }
            }
        }
        AlertsCommand::Watch { partner, filter } => {
            let mut stream = client
                .watch_alerts(pb::WatchAlertsRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    filter: Some(filter.to_proto()),
                })
                .await?
                .into_inner();
            while let Some(item) = stream.next().await {
                print_line(
                    out,
                    &item?,
                    &[
                        "change",
                        "alert.alert_id",
                        "alert.alert_type",
                        "alert.severity",
                        "alert.status",
                        "alert.customer_name",
                    ],
                );
            }
        }
        AlertsCommand::ConfigureIngestion {
            partner,
            graph,
            fraud_events,
            poll_interval_seconds,
            webhook_url,
        } => {
            let response = client
                .configure_ingestion(pb::ConfigureIngestionRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    settings: Some(pb::IngestionSettings {
                        graph_enabled: graph,
                        fraud_events_enabled: fraud_events,
                        poll_interval_seconds,
                        webhook_url,
                    }),
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        AlertsCommand::IngestionStatus { partner } => {
            let response = client
                .get_ingestion_status(pb::GetIngestionStatusRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                })
                .await?
                .into_inner();
            print(
                out,
                &response,
                View::List {
                    field: "sources",
                    columns: &[
                        "source",
                        "last_success_at",
                        "last_attempt_at",
                        "last_error",
                        "cursor",
                        "quarantined_payloads",
                    ],
                },
            );
        }
    }
    Ok(())
}
