use clap::Subcommand;
use palisade_contracts::auth::v1::{
    self as pb, credential_service_client::CredentialServiceClient,
};

use crate::{
    commands::Page,
    connect::{Clients, Target},
    output::{View, print},
};

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Mints a credential; the secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// Partner tenant ids the credential may act for (repeatable).
        #[arg(long = "partner")]
        partners: Vec<String>,
        /// Let the credential act for every partner.
        #[arg(long)]
        all_partners: bool,
        /// Scopes, e.g. alerts:read (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// A service credential (for Palisade's own services).
        #[arg(long)]
        service: bool,
    },
    List {
        #[arg(long)]
        include_revoked: bool,
        #[command(flatten)]
        page: Page,
    },
    Revoke {
        credential_id: String,
    },
    /// Shows the calling credential.
    Whoami,
}

const COLUMNS: &[&str] = &[
    "credential_id",
    "display_name",
    "kind",
    "all_partners",
    "partner_tenant_ids",
    "scopes",
    "revoked_at",
];

pub async fn run(cmd: AuthCommand, clients: &Clients) -> anyhow::Result<()> {
    let mut client = CredentialServiceClient::new(clients.channel(Target::TokenBroker).await?);
    let out = clients.output;
    match cmd {
        AuthCommand::Create {
            name,
            partners,
            all_partners,
            scopes,
            service,
        } => {
            let response = client
                .create_credential(pb::CreateCredentialRequest {
                    display_name: name,
                    kind: if service {
                        pb::CredentialKind::Service
                    } else {
                        pb::CredentialKind::Client
                    } as i32,
                    partner_tenant_ids: partners,
                    all_partners,
                    scopes,
                    expires_at: None,
                })
                .await?
                .into_inner();
            match out {
                crate::OutputFormat::Json => print(out, &response, View::Record),
                crate::OutputFormat::Table => {
                    if let Some(credential) = &response.credential {
                        print(out, credential, View::Record);
                    }
                    println!("secret (shown once, store it now): {}", response.secret);
                }
            }
        }
        AuthCommand::List {
            include_revoked,
            page,
        } => {
            let response = client
                .list_credentials(pb::ListCredentialsRequest {
                    page_size: page.page_size,
                    page_token: page.page_token,
                    include_revoked,
                })
                .await?
                .into_inner();
            print(
                out,
                &response,
                View::List {
                    field: "credentials",
                    columns: COLUMNS,
                },
            );
        }
        AuthCommand::Revoke { credential_id } => {
            let response = client
                .revoke_credential(pb::RevokeCredentialRequest { credential_id })
                .await?
                .into_inner();
            print(out, &response, View::Record);
        }
        AuthCommand::Whoami => {
            let response = client.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
            match response.credential {
                Some(credential) => print(out, &credential, View::Record),
                None => print(out, &response, View::Record),
            }
        }
    }
    Ok(())
}
