//! What every service sets up before serving: the credential registry and its cached
//! authenticator, the credentials configured for this deployment, and the metrics registry.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use palisade_auth::{AuthSettings, AuthStore, Authenticator, Scope, ensure_configured_credential};
use palisade_storage::DatabaseSettings;
use palisade_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

/// The shared pieces a service runs with.
#[derive(Clone, Debug)]
pub struct Platform {
    pub authenticator: Arc<Authenticator>,
    pub metrics: Metrics,
}

impl Platform {
    /// Opens the registry (migrating it), registers the configured bootstrap admin and this
    /// service's own credential (with the scopes it needs to call the others), and starts the
    /// authenticator's refresh loop until `shutdown`.
    pub async fn start(
        service: &'static str,
        database: &DatabaseSettings,
        auth: &AuthSettings,
        service_scopes: Vec<Scope>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let store = AuthStore::open(database)
            .await
            .context("opening the credential registry (schema auth)")?;
        if let Some(secret) = &auth.bootstrap_admin_secret {
            ensure_configured_credential(&store, secret, "bootstrap admin", vec![Scope::Admin])
                .await
                .context("config key auth.bootstrap_admin_secret")?;
        }
        if let Some(secret) = &auth.service_credential
            && !service_scopes.is_empty()
        {
            ensure_configured_credential(
                &store,
                secret,
                &format!("service {service}"),
                service_scopes,
            )
            .await
            .context("config key auth.service_credential")?;
        }
        let authenticator = Authenticator::start(store, Duration::from_secs(1), shutdown).await?;
        Ok(Self {
            authenticator,
            metrics: Metrics::new(),
        })
    }
}
