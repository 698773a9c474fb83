//! The scaffold every Palisade service runs in.
//!
//! [`serve`] takes the service's gRPC routes and adds what every service needs: the
//! credential check, `grpc.health.v1`, reflection, the `CredentialService`, RED metrics and a
//! span per RPC, timeouts, a concurrency limit with load shedding, message-size limits,
//! optional TLS and mTLS, and an admin HTTP port with `/metrics`, `/healthz` and `/readyz`.
//! It then shuts down in stages when the token is cancelled.

pub mod cli;
mod errors;
mod frame;
mod layers;
mod platform;
mod settings;
mod shutdown;

use std::{sync::Arc, time::Instant};

use anyhow::Context;
use futures::future::BoxFuture;
use palisade_auth::{AuthLayer, Authenticator, CredentialServiceImpl};
use palisade_telemetry::{GrpcMetrics, Metrics};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tower::ServiceBuilder;

pub use cli::{ServiceSettings, service_main};
pub use errors::{ErrorCode, ServiceError, into_status};
pub use frame::{BaseSettings, Frame};
pub use platform::Platform;
pub use settings::{ServerSettings, TlsSettings};
pub use shutdown::shutdown_signal;

/// The sockets a service serves on, bound before `serve` (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(settings: &ServerSettings) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(settings.grpc_listen)
            .await
            .with_context(|| {
                format!(
                    "config key server.grpc_listen: cannot bind {}",
                    settings.grpc_listen
                )
            })?;
        let admin = TcpListener::bind(settings.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "config key server.admin_listen: cannot bind {}",
                    settings.admin_listen
                )
            })?;
        Ok(Self { grpc, admin })
    }
}

/// Whether the service can take traffic (database reachable, workers running…).
pub type Readiness = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// Always ready: for services with nothing to check beyond being up.
pub fn always_ready() -> Readiness {
    Arc::new(|| Box::pin(async { true }))
}

pub struct ServeOptions {
    /// Short name for logs and metrics, e.g. "notifier".
    pub service_name: &'static str,
    /// Fully qualified gRPC service names reported by the health service.
    pub health_names: Vec<&'static str>,
    pub settings: ServerSettings,
    pub listeners: Listeners,
    pub routes: tonic::service::Routes,
    pub authenticator: Arc<Authenticator>,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("service_name", &self.service_name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Serves until `shutdown` is cancelled, then drains within `settings.shutdown_deadline`:
/// health turns NOT_SERVING, new connections stop, in-flight RPCs finish, then the admin port
/// closes. The caller then stops its workers, closes pools and flushes telemetry.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let ServeOptions {
        service_name,
        health_names,
        settings,
        listeners,
        routes,
        authenticator,
        metrics,
        readiness,
        shutdown,
    } = options;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in health_names.iter().copied().chain(std::iter::once("")) {
        health_reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(palisade_contracts::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("reflection service")?;
    let credentials = CredentialServiceImpl::new(authenticator.clone())
        .into_server()
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(settings.max_message_bytes);

    let grpc_metrics = GrpcMetrics::register(&metrics);
    // The stack, outermost first. Each layer's place matters:
    let stack = ServiceBuilder::new()
        // 1. Trace and RED metrics outermost, so every outcome is seen, shed and denied included.
        .layer(layers::TraceLayer::new(service_name, grpc_metrics))
        // 2. Shed load before queueing: an overloaded replica answers at once (UNAVAILABLE)
        //    and the client retries elsewhere, instead of timing out in a queue.
        .load_shed()
        // 3. Bound the work in flight per replica; what exceeds it is shed by the layer above.
        .concurrency_limit(settings.concurrency_limit)
        // 4. Authenticate last, inside the limits, so floods of bad credentials cannot bypass them.
        .layer(AuthLayer::new(authenticator))
        .into_inner();

    let mut builder = Server::builder()
        // Deadline for any RPC, capped further by the client's grpc-timeout.
        .timeout(settings.request_timeout)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)));
    if let Some(tls) = &settings.tls {
        builder = builder
            .tls_config(tls_config(tls)?)
            .context("config key server.tls")?;
    }
    let router = builder
        .layer(stack)
        .add_routes(routes)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(credentials);

    let admin = admin_router(metrics, readiness, shutdown.clone());
    let grpc_addr = listeners.grpc.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    tracing::info!(service = service_name, %grpc_addr, %admin_addr, "serving");

    // Stage 1, on cancellation: report NOT_SERVING so load balancers stop sending traffic.
    let drain_signal = {
        let shutdown = shutdown.clone();
        let reporter = health_reporter.clone();
        let names = health_names.clone();
        async move {
            shutdown.cancelled().await;
            for name in names.iter().copied().chain(std::iter::once("")) {
                reporter
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            tracing::info!(
                service = service_name,
                "shutting down: draining in-flight RPCs"
            );
        }
    };
    let incoming = grpc_incoming(listeners.grpc);
    let grpc = router.serve_with_incoming_shutdown(incoming, drain_signal);
    let admin_server = axum::serve(listeners.admin, admin).with_graceful_shutdown({
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    });

    let started = Instant::now();
    let deadline = settings.shutdown_deadline;
    let run = async {
        let (grpc_result, admin_result) = tokio::join!(grpc, admin_server);
        grpc_result.context("gRPC server")?;
        admin_result.context("admin server")?;
        anyhow::Ok(())
    };
    tokio::pin!(run);
    // Stage 2: in-flight RPCs drain, bounded by the deadline once shutdown has begun.
    tokio::select! {
        result = &mut run => result?,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(deadline).await;
        } => {
            tracing::warn!(service = service_name, ?deadline, "shutdown deadline passed; abandoning in-flight RPCs");
        }
    }
    tracing::info!(service = service_name, uptime = ?started.elapsed(), "server stopped");
    Ok(())
}

/// The accepted gRPC connections, with Nagle's algorithm off. `Server::tcp_nodelay` applies
/// only to listeners tonic binds itself, not to ours, so it was silently ignored: a small
/// response written while the client had not yet acknowledged the previous one waited for that
/// ACK. Every gRPC server worth comparing with (and the bench's bare echo) turns it off.
fn grpc_incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

fn tls_config(tls: &TlsSettings) -> anyhow::Result<ServerTlsConfig> {
    let cert = std::fs::read(&tls.cert_path).with_context(|| {
        format!(
            "config key server.tls.cert_path: cannot read {}",
            tls.cert_path.display()
        )
    })?;
    let key = std::fs::read(&tls.key_path).with_context(|| {
        format!(
            "config key server.tls.key_path: cannot read {}",
            tls.key_path.display()
        )
    })?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &tls.client_ca_path {
        // mTLS: only clients with a certificate from this CA may connect at all.
        let ca = std::fs::read(ca).with_context(|| {
            format!(
                "config key server.tls.client_ca_path: cannot read {}",
                ca.display()
            )
        })?;
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(config)
}

fn admin_router(
    metrics: Metrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> axum::Router {
    use axum::{http::StatusCode, routing::get};
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                let shutdown = shutdown.clone();
                async move {
                    if shutdown.is_cancelled() {
                        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                    } else if readiness().await {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    #[tokio::test]
    async fn accepted_grpc_connections_have_nagle_off() {
        let listener = super::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = super::grpc_incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY must be set on accepted sockets"
        );
    }
}
