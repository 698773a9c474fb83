use clap::{Subcommand, ValueEnum};
use palisade_contracts::{
    common::v1::Cloud,
    tokens::v1::{self as pb, token_broker_service_client::TokenBrokerServiceClient},
};
use tokio_stream::StreamExt;

use crate::{
    commands::{Page, progress_bar, update_progress},
    connect::{Clients, Target},
    output::{View, print},
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ResourceArg {
    PartnerCenter,
    Graph,
    Arm,
    Custom,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CloudArg {
    Public,
    China,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Registers the partner's multi-tenant Entra app.
    RegisterApp {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long)]
        name: String,
        #[arg(long)]
        client_id: String,
        /// Read the client secret from this environment variable (never a flag: flags end up in shell history).
        #[arg(long, conflicts_with_all = ["certificate", "private_key"])]
        client_secret_env: Option<String>,
        /// Certificate PEM file, with --private-key.
        #[arg(long, requires = "private_key")]
        certificate: Option<std::path::PathBuf>,
        #[arg(long, requires = "certificate")]
        private_key: Option<std::path::PathBuf>,
        #[arg(long, value_enum, default_value_t = CloudArg::Public)]
        cloud: CloudArg,
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[arg(long, default_value = "")]
        redirect_uri: String,
    },
    GetApp {
        #[arg(long)]
        partner: Option<String>,
        app_id: String,
    },
    ListApps {
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Replaces the app's client secret (from an environment variable) or certificate.
    UpdateAppCredential {
        #[arg(long)]
        partner: Option<String>,
        app_id: String,
        #[arg(long, conflicts_with_all = ["certificate", "private_key"])]
        client_secret_env: Option<String>,
        #[arg(long, requires = "private_key")]
        certificate: Option<std::path::PathBuf>,
        #[arg(long, requires = "certificate")]
        private_key: Option<std::path::PathBuf>,
    },
    DeleteApp {
        #[arg(long)]
        partner: Option<String>,
        app_id: String,
    },
    /// Prints the URL an admin agent opens to consent (with MFA).
    BeginConsent {
        #[arg(long)]
        partner: Option<String>,
        app_id: String,
        #[arg(long, default_value = "")]
        redirect_uri: String,
    },
    /// Redeems the code the redirect received.
    CompleteConsent {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long)]
        state: String,
        /// Read the authorization code from this environment variable.
        #[arg(long)]
        code_env: String,
    },
    /// Migrates a refresh token held elsewhere (after an MFA check).
    ImportRefreshToken {
        #[arg(long)]
        partner: Option<String>,
        app_id: String,
        /// Read the refresh token from this environment variable.
        #[arg(long)]
        refresh_token_env: String,
        #[arg(long, default_value = "cli")]
        source: String,
    },
    Consents {
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    RevokeConsent {
        #[arg(long)]
        partner: Option<String>,
        consent_id: String,
    },
    /// Gets an access token (printed only with --show-token).
    Get {
        #[arg(long)]
        partner: Option<String>,
        /// A customer tenant id; the partner itself when omitted.
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long, value_enum, default_value_t = ResourceArg::Graph)]
        resource: ResourceArg,
        #[arg(long, default_value = "")]
        custom_scope: String,
        #[arg(long)]
        force_refresh: bool,
        #[arg(long)]
        show_token: bool,
    },
    /// Token health, with what to do about it.
    Health {
        #[arg(long)]
        partner: Option<String>,
    },
    /// Re-wraps every data key under a new key version, online.
    RotateKey,
    KeyStatus,
    Audit {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long, default_value = "")]
        target: String,
        #[command(flatten)]
        page: Page,
    },
    Usage {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long, default_value = "")]
        target: String,
        #[command(flatten)]
        page: Page,
    },
    MfaStats {
        #[arg(long)]
        partner: Option<String>,
    },
}

const APP_COLUMNS: &[&str] = &[
    "app_id",
    "display_name",
    "client_id",
    "cloud",
    "credential_kind",
    "credential_expires_at",
];
const CONSENT_COLUMNS: &[&str] = &[
    "consent_id",
    "app_id",
    "consented_by_upn",
    "consented_with_mfa",
    "state",
    "last_redeemed_at",
    "inactivity_deadline",
    "remediation",
];

fn secret_from_env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| anyhow::anyhow!("environment variable {name} is not set"))
}

fn app_credential(
    secret_env: Option<String>,
    certificate: Option<std::path::PathBuf>,
    private_key: Option<std::path::PathBuf>,
) -> anyhow::Result<Option<pb::AppCredential>> {
    use pb::app_credential::Credential;
    let credential = match (secret_env, certificate, private_key) {
        (Some(env), _, _) => Some(Credential::ClientSecret(secret_from_env(&env)?)),
        (None, Some(cert), Some(key)) => Some(Credential::Certificate(pb::Certificate {
            certificate_pem: std::fs::read_to_string(cert)?,
            private_key_pem: std::fs::read_to_string(key)?,
        })),
        _ => None,
    };
    Ok(credential.map(|c| pb::AppCredential {
        credential: Some(c),
    }))
}

pub async fn run(cmd: TokensCommand, clients: &Clients) -> anyhow::Result<()> {
    let mut client = TokenBrokerServiceClient::new(clients.channel(Target::TokenBroker).await?);
    let out = clients.output;
    match cmd {
        TokensCommand::RegisterApp {
            partner,
            name,
            client_id,
            client_secret_env,
            certificate,
            private_key,
            cloud,
            scopes,
            redirect_uri,
        } => {
            let credential = app_credential(client_secret_env, certificate, private_key)?
                .ok_or_else(|| {
                    anyhow::anyhow!("give --client-secret-env or --certificate with --private-key")
                })?;
            let response = client
                .register_app(pb::RegisterAppRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    display_name: name,
                    client_id,
                    cloud: match cloud {
                        CloudArg::Public => Cloud::Public,
                        CloudArg::China => Cloud::China,
                    } as i32,
                    scopes,
                    credential: Some(credential),
                    token_endpoint: pb::TokenEndpoint::V1 as i32,
                    redirect_uri,
                    credential_expires_at: None,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        TokensCommand::GetApp { partner, app_id } => {
            let response = client
                .get_app(pb::GetAppRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    app_id,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        TokensCommand::ListApps { partner, page } => {
            let response = client
                .list_apps(pb::ListAppsRequest {
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
                    field: "apps",
                    columns: APP_COLUMNS,
                },
            );
        }
        TokensCommand::UpdateAppCredential {
            partner,
            app_id,
            client_secret_env,
            certificate,
            private_key,
        } => {
            let credential = app_credential(client_secret_env, certificate, private_key)?
                .ok_or_else(|| {
                    anyhow::anyhow!("give --client-secret-env or --certificate with --private-key")
                })?;
            let response = client
                .update_app_credential(pb::UpdateAppCredentialRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    app_id,
                    credential: Some(credential),
                    credential_expires_at: None,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        TokensCommand::DeleteApp { partner, app_id } => {
            let response = client
                .delete_app(pb::DeleteAppRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    app_id,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        TokensCommand::BeginConsent {
            partner,
            app_id,
            redirect_uri,
        } => {
            let response = client
                .begin_consent(pb::BeginConsentRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    app_id,
                    redirect_uri,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        TokensCommand::CompleteConsent {
            partner,
            state,
            code_env,
        } => {
            let response = client
                .complete_consent(pb::CompleteConsentRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    state,
                    code: secret_from_env(&code_env)?,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        TokensCommand::ImportRefreshToken {
            partner,
            app_id,
            refresh_token_env,
            source,
        } => {
            let response = client
                .import_refresh_token(pb::ImportRefreshTokenRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    app_id,
                    refresh_token: secret_from_env(&refresh_token_env)?,
                    source,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        TokensCommand::Consents { partner, page } => {
            let response = client
                .list_consents(pb::ListConsentsRequest {
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
                    field: "consents",
                    columns: CONSENT_COLUMNS,
                },
            );
        }
        TokensCommand::RevokeConsent {
            partner,
            consent_id,
        } => {
            let response = client
                .revoke_consent(pb::RevokeConsentRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    consent_id,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        TokensCommand::Get {
            partner,
            target,
            resource,
            custom_scope,
            force_refresh,
            show_token,
        } => {
            let mut response = client
                .get_access_token(pb::GetAccessTokenRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    target_tenant_id: target,
                    resource: match resource {
                        ResourceArg::PartnerCenter => pb::Resource::PartnerCenter,
                        ResourceArg::Graph => pb::Resource::Graph,
                        ResourceArg::Arm => pb::Resource::Arm,
                        ResourceArg::Custom => pb::Resource::Custom,
                    } as i32,
                    custom_scope,
                    force_refresh,
                })
                .await?
                .into_inner();
            if !show_token {
                response.access_token = "(hidden; pass --show-token)".into();
            }
            print(out, &response, View::Record);
        }
        TokensCommand::Health { partner } => {
            let response = client
                .get_token_health(pb::GetTokenHealthRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                })
                .await?
                .into_inner();
            match out {
                crate::OutputFormat::Json => print(out, &response, View::Record),
                crate::OutputFormat::Table => {
                    print(
                        out,
                        &response,
                        View::List {
                            field: "consents",
                            columns: CONSENT_COLUMNS,
                        },
                    );
                    if !response.customer_issues.is_empty() {
                        print(
                            out,
                            &response,
                            View::List {
                                field: "customer_issues",
                                columns: &["customer_tenant_id", "state", "detail", "since"],
                            },
                        );
                    }
                }
            }
        }
        TokensCommand::RotateKey => {
            let bar = progress_bar(out, "re-wrapping data keys");
            let mut stream = client
                .rotate_key(pb::RotateKeyRequest {})
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
        TokensCommand::KeyStatus => {
            let response = client
                .get_key_status(pb::GetKeyStatusRequest {})
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        TokensCommand::Audit {
            partner,
            target,
            page,
        } => {
            let response = client
                .list_audit_events(pb::ListAuditEventsRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    time_range: None,
                    target_tenant_id: target,
                    page_size: page.page_size,
                    page_token: page.page_token,
                })
                .await?
                .into_inner();
            print(
                out,
                &response,
                View::List {
                    field: "events",
                    columns: &[
                        "occurred_at",
                        "kind",
                        "target_tenant_id",
                        "resource",
                        "caller",
                        "success",
                        "detail",
                    ],
                },
            );
        }
        TokensCommand::Usage {
            partner,
            target,
            page,
        } => {
            let response = client
                .list_token_usage(pb::ListTokenUsageRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    target_tenant_id: target,
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
                    field: "usage",
                    columns: &[
                        "minute",
                        "caller",
                        "target_tenant_id",
                        "resource",
                        "cache_hits",
                        "issued",
                    ],
                },
            );
        }
        TokensCommand::MfaStats { partner } => {
            let response = client
                .get_mfa_statistics(pb::GetMfaStatisticsRequest {
                    partner_tenant_id: clients.partner(&partner)?,
                    time_range: None,
                })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
    }
    Ok(())
}
