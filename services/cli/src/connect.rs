//! Where the services are and which credential to present.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use crate::output::OutputFormat;

/// Flags shared by every command. Each falls back to its environment variable, then to the
/// config file, then to the addresses `palisade dev` listens on.
#[derive(Debug, Clone, Args)]
pub struct ClientConfig {
    /// token-broker gRPC address.
    #[arg(long, global = true, env = "PALISADE_TOKEN_BROKER_ADDR")]
    pub token_broker: Option<String>,
    /// alert-ingest gRPC address.
    #[arg(long, global = true, env = "PALISADE_ALERT_INGEST_ADDR")]
    pub alert_ingest: Option<String>,
    /// notifier gRPC address.
    #[arg(long, global = true, env = "PALISADE_NOTIFIER_ADDR")]
    pub notifier: Option<String>,
    /// compliance gRPC address.
    #[arg(long, global = true, env = "PALISADE_COMPLIANCE_ADDR")]
    pub compliance: Option<String>,
    /// The credential ("pal_…"); never echoed.
    #[arg(
        long,
        global = true,
        env = "PALISADE_CREDENTIAL",
        hide_env_values = true
    )]
    pub credential: Option<String>,
    /// Default partner tenant id for commands that take --partner.
    #[arg(long = "default-partner", global = true, env = "PALISADE_PARTNER")]
    pub partner: Option<String>,
    /// CLI config file (TOML with the keys above, snake_case).
    #[arg(long, global = true, env = "PALISADE_CLI_CONFIG")]
    pub config: Option<PathBuf>,
    /// Output: human tables, or JSON (proto3 canonical JSON, stable for scripts).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    token_broker: Option<String>,
    alert_ingest: Option<String>,
    notifier: Option<String>,
    compliance: Option<String>,
    credential: Option<String>,
    partner: Option<String>,
}

/// Resolved settings and lazily connected clients.
#[derive(Clone)]
pub struct Clients {
    pub token_broker: String,
    pub alert_ingest: String,
    pub notifier: String,
    pub compliance: String,
    credential: Option<MetadataValue<Ascii>>,
    pub default_partner: Option<String>,
    pub output: OutputFormat,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("token_broker", &self.token_broker)
            .field("alert_ingest", &self.alert_ingest)
            .field("notifier", &self.notifier)
            .field("compliance", &self.compliance)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl ClientConfig {
    pub fn resolve(&self) -> anyhow::Result<Clients> {
        let file = self.load_file()?;
        let pick = |flag: &Option<String>, file: Option<String>, default: &str| {
            flag.clone().or(file).unwrap_or_else(|| default.to_owned())
        };
        let credential = self
            .credential
            .clone()
            .or(file.credential)
            .map(|c| {
                MetadataValue::try_from(format!("Bearer {}", c.trim()))
                    .context("the credential contains characters that cannot be sent in a header")
            })
            .transpose()?;
        Ok(Clients {
            token_broker: pick(
                &self.token_broker,
                file.token_broker,
                "http://127.0.0.1:50051",
            ),
            alert_ingest: pick(
                &self.alert_ingest,
                file.alert_ingest,
                "http://127.0.0.1:50052",
            ),
            notifier: pick(&self.notifier, file.notifier, "http://127.0.0.1:50053"),
            compliance: pick(&self.compliance, file.compliance, "http://127.0.0.1:50054"),
            credential,
            default_partner: self.partner.clone().or(file.partner),
            output: self.output,
        })
    }

    fn load_file(&self) -> anyhow::Result<FileConfig> {
        let path = match &self.config {
            Some(path) => path.clone(),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".config/palisade/cli.toml"),
                None => return Ok(FileConfig::default()),
            },
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml_from_str(&text)
                .with_context(|| format!("invalid CLI config {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.config.is_none() => {
                Ok(FileConfig::default())
            }
            Err(e) => Err(e).with_context(|| format!("cannot read CLI config {}", path.display())),
        }
    }
}

fn toml_from_str(text: &str) -> anyhow::Result<FileConfig> {
    use figment::providers::{Format, Toml};
    Ok(figment::Figment::from(Toml::string(text)).extract()?)
}

/// Adds the bearer credential to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type AuthedChannel = InterceptedService<Channel, Bearer>;

/// A service the CLI talks to, for error messages.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    TokenBroker,
    AlertIngest,
    Notifier,
    Compliance,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Self::TokenBroker => "token-broker",
            Self::AlertIngest => "alert-ingest",
            Self::Notifier => "notifier",
            Self::Compliance => "compliance",
        }
    }
}

/// A connection failure, kept typed so the exit code says "unavailable".
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach {service} at {address}: {reason} (is it running? `palisade dev` starts everything locally)"
)]
pub struct Unreachable {
    pub service: &'static str,
    pub address: String,
    pub reason: String,
}

impl Clients {
    pub fn address(&self, target: Target) -> &str {
        match target {
            Target::TokenBroker => &self.token_broker,
            Target::AlertIngest => &self.alert_ingest,
            Target::Notifier => &self.notifier,
            Target::Compliance => &self.compliance,
        }
    }

    pub async fn channel(&self, target: Target) -> anyhow::Result<AuthedChannel> {
        let address = self.address(target).to_owned();
        let address = if address.contains("://") {
            address
        } else {
            format!("http://{address}")
        };
        let endpoint = Endpoint::from_shared(address.clone())
            .with_context(|| format!("invalid {} address {address}", target.name()))?
            .connect_timeout(std::time::Duration::from_secs(5));
        let channel = endpoint.connect().await.map_err(|e| Unreachable {
            service: target.name(),
            address: address.clone(),
            reason: std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_else(|| e.to_string()),
        })?;
        Ok(InterceptedService::new(
            channel,
            Bearer(self.credential.clone()),
        ))
    }

    /// The partner to act for: the flag of the command, else the default.
    pub fn partner(&self, explicit: &Option<String>) -> anyhow::Result<String> {
        explicit
            .clone()
            .or_else(|| self.default_partner.clone())
            .context("no partner given: pass --partner or set PALISADE_PARTNER")
    }
}
