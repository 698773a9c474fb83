use std::io::Write;

use clap::{Subcommand, ValueEnum};
use palisade_contracts::compliance::v1::{
    self as pb, compliance_service_client::ComplianceServiceClient,
};
use tokio_stream::StreamExt;

use crate::{
    commands::{Page, progress_bar, update_progress},
    connect::{Clients, Target},
    output::{View, print},
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Csv,
    Json,
    Html,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Pass,
    Fail,
    Warn,
    Unknown,
}

fn status(s: &StatusArg) -> i32 {
    (match s {
        StatusArg::Pass => pb::CheckStatus::Pass,
        StatusArg::Fail => pb::CheckStatus::Fail,
        StatusArg::Warn => pb::CheckStatus::Warn,
        StatusArg::Unknown => pb::CheckStatus::Unknown,
    }) as i32
}

#[derive(Debug, Subcommand)]
pub enum ComplianceCommand {
    /// The latest evaluation: score and every check.
    Status {
        #[arg(long)]
        partner: Option<String>,
    },
    Findings {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long = "status", value_enum)]
        statuses: Vec<StatusArg>,
        #[arg(long, default_value = "")]
        customer: String,
        #[command(flatten)]
        page: Page,
    },
    /// Score history and trend.
    History {
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Every customer's admin MFA posture.
    Customers {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long = "status", value_enum)]
        statuses: Vec<StatusArg>,
        #[command(flatten)]
        page: Page,
    },
    /// Writes the latest evaluation as CSV, JSON or HTML.
    Export {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long, value_enum, default_value_t = FormatArg::Html)]
        format: FormatArg,
        /// Output file; standard output when omitted.
        #[arg(long, short = 'f')]
        file: Option<std::path::PathBuf>,
    },
    /// Evaluates now, with progress.
    Evaluate {
        #[arg(long)]
        partner: Option<String>,
    },
    Schedule {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long, default_value_t = 3600)]
        interval_seconds: u32,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        enabled: bool,
    },
}

const CHECK_COLUMNS: &[&str] = &[
    "check",
    "status",
    "severity",
    "title",
    "summary",
    "remediation",
];

pub async fn run(cmd: ComplianceCommand, clients: &Clients) -> anyhow::Result<()> {
    let mut client = ComplianceServiceClient::new(clients.channel(Target::Compliance).await?);
    let out = clients.output;
    match cmd {
        ComplianceCommand::Status { partner } => {
            let response = client
                .get_compliance_status(pb::GetComplianceStatusRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                })
                .await?
                .into_inner();
            match (out, &response.status) {
                (crate::OutputFormat::Table, Some(status)) => {
                    println!(
                        "score {:.0}/{:.0} (Microsoft: {:.0}/{:.0}), evaluated {}",
                        status.score,
                        status.max_score,
                        status.microsoft_score,
                        status.microsoft_max_score,
                        status
                            .evaluated_at
                            .as_ref()
                            .map(|t| chrono::DateTime::from_timestamp(t.seconds, 0)
                                .map(|d| d.to_rfc3339())
                                .unwrap_or_default())
                            .unwrap_or_default()
                    );
                    print(
                        out,
                        status,
                        View::List {
                            field: "checks",
                            columns: CHECK_COLUMNS,
                        },
                    );
                }
                _ => print(out, &response, View::Record),
            }
        }
        ComplianceCommand::Findings {
            partner,
            statuses,
            customer,
            page,
        } => {
            let response = client
                .list_findings(pb::ListFindingsRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    checks: Vec::new(),
                    statuses: statuses.iter().map(status).collect(),
                    customer_tenant_id: customer,
                    page_size: page.page_size,
                    page_token: page.page_token,
                })
                .await?
                .into_inner();
            print(
                out,
                &response,
                View::List {
                    field: "findings",
                    columns: &[
                        "check",
                        "status",
                        "severity",
                        "customer_tenant_id",
                        "title",
                        "subjects",
                    ],
                },
            );
        }
        ComplianceCommand::History { partner, page } => {
            let response = client
                .get_history(pb::GetHistoryRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    time_range: None,
                    page_size: page.page_size,
                    page_token: page.page_token,
                })
                .await?
                .into_inner();
            print(
                out,
                &response,
                View::List {
                    field: "points",
                    columns: &["evaluated_at", "score", "passing", "failing", "warnings"],
                },
            );
        }
        ComplianceCommand::Customers {
            partner,
            statuses,
            page,
        } => {
            let response = client
                .list_customer_posture(pb::ListCustomerPostureRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    statuses: statuses.iter().map(status).collect(),
                    page_size: page.page_size,
                    page_token: page.page_token,
                })
                .await?
                .into_inner();
            print(
                out,
                &response,
                View::List {
                    field: "customers",
                    columns: &[
                        "customer_tenant_id",
                        "display_name",
                        "admin_mfa",
                        "mfa_mechanism",
                        "admins_with_mfa",
                        "admins_total",
                        "detail",
                    ],
                },
            );
        }
        ComplianceCommand::Export {
            partner,
            format,
            file,
        } => {
            let bar = progress_bar(out, "exporting");
            let mut stream = client
                .export_report(pb::ExportReportRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    format: match format {
                        FormatArg::Csv => pb::ReportFormat::Csv,
                        FormatArg::Json => pb::ReportFormat::Json,
                        FormatArg::Html => pb::ReportFormat::Html,
                    } as i32,
                })
                .await?
                .into_inner();
            let mut sink: Box<dyn Write> = match &file {
                Some(path) => Box::new(std::fs::File::create(path)?),
                None => Box::new(std::io::stdout()),
            };
            let mut written = 0_u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                sink.write_all(&chunk.data)?;
                written += chunk.data.len() as u64;
                bar.set_position(written);
            }
            sink.flush()?;
            bar.finish_and_clear();
            if let Some(path) = file {
                eprintln!("wrote {written} bytes to {}", path.display());
            }
        }
        ComplianceCommand::Evaluate { partner } => {
            let bar = progress_bar(out, "evaluating");
            let mut stream = client
                .evaluate_now(pb::EvaluateNowRequest {
                    partner_tenant_id: clients.partner(&partner)?,
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
            match last.and_then(|l| l.status) {
                Some(status) => match out {
                    crate::OutputFormat::Json => print(out, &status, View::Record),
                    crate::OutputFormat::Table => {
                        println!("score {:.0}/{:.0}", status.score, status.max_score);
                        print(
                            out,
                            &status,
                            View::List {
                                field: "checks",
                                columns: CHECK_COLUMNS,
                            },
                        );
                    }
                },
                None => anyhow::bail!("the evaluation ended without a result"),
            }
        }
        ComplianceCommand::Schedule {
            partner,
            interval_seconds,
            enabled,
        } => {
            let response = client
                .set_evaluation_schedule(pb::SetEvaluationScheduleRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    interval_seconds,
                    enabled,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
    }
    Ok(())
}
