use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// `[server]` in every service's config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub grpc_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// RPCs in flight per replica before new ones are shed with UNAVAILABLE.
    pub concurrency_limit: usize,
    pub max_message_bytes: usize,
    pub tls: Option<TlsSettings>,
    /// How long draining may take; the pod's grace period must be longer.
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            request_timeout: Duration::from_secs(30),
            concurrency_limit: 1024,
            max_message_bytes: 4 * 1024 * 1024,
            tls: None,
            shutdown_deadline: Duration::from_secs(20),
        }
    }
}

impl ServerSettings {
    /// Loopback on port 0 for both listeners: for tests and `palisade dev`.
    pub fn ephemeral() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown_deadline: Duration::from_secs(5),
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), palisade_config::ConfigError> {
        use palisade_config::ConfigError;
        if self.concurrency_limit == 0 {
            return Err(ConfigError::invalid(
                "server.concurrency_limit",
                "must be at least 1",
            ));
        }
        if self.max_message_bytes < 1024 {
            return Err(ConfigError::invalid(
                "server.max_message_bytes",
                "must be at least 1024",
            ));
        }
        if self.grpc_listen == self.admin_listen && self.grpc_listen.port() != 0 {
            return Err(ConfigError::invalid(
                "server.admin_listen",
                "must differ from server.grpc_listen",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Requires client certificates from this CA (mTLS).
    pub client_ca_path: Option<PathBuf>,
}
