//! Logs, traces and metrics, set up once per process.
//!
//! - `tracing` with an env filter and JSON (production) or pretty (local) output;
//! - OpenTelemetry traces and metrics over OTLP/gRPC when an endpoint is configured;
//! - the W3C TraceContext propagator, installed globally, with helpers that carry the context
//!   across gRPC metadata and across queue envelopes, so one trace follows an alert from the
//!   webhook that announced it to the message that delivered it;
//! - a Prometheus registry that services add their metrics to, served at `/metrics`.
//!
//! This crate must never log a field value it was not given explicitly: it records spans and
//! metadata keys, not payloads.

mod metrics;
mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider, trace::SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

pub use metrics::{GrpcMetrics, MethodMetrics, Metrics, split_grpc_path};
pub use propagation::{
    extract_grpc, extract_map, inject_grpc, inject_map, set_parent_from_grpc,
    set_parent_from_headers, set_parent_from_map, trace_context_map,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub log_filter: String,
    /// `OTEL_SERVICE_NAME`, or the service's own name.
    pub service_name: Option<String>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. `http://otel-collector:4317`. Off when unset.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_filter: "info".into(),
            service_name: None,
            otlp_endpoint: None,
        }
    }
}

/// Flushes and shuts the exporters down when dropped: keep it alive until the very end of
/// `main`, after the server has drained.
#[must_use = "telemetry is flushed when the guard drops"]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("otlp", &self.tracer_provider.is_some())
            .finish()
    }
}

impl TelemetryGuard {
    /// Flushes pending spans and metrics now.
    pub fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(provider) = self.tracer_provider.take() {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
        if let Some(provider) = self.meter_provider.take() {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Installs the global subscriber and propagator. Call once, first thing in `main`.
pub fn init(service: &str, settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let service_name = settings
        .service_name
        .clone()
        .unwrap_or_else(|| format!("palisade-{service}"));
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_filter))
        .map_err(|e| anyhow::anyhow!("config key telemetry.log_filter: {e}"))?;

    let (tracer_provider, meter_provider) = match &settings.otlp_endpoint {
        Some(endpoint) if !endpoint.is_empty() => {
            let resource = Resource::builder()
                .with_service_name(service_name.clone())
                .build();
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            let tracer_provider = SdkTracerProvider::builder()
                .with_batch_exporter(spans)
                .with_resource(resource.clone())
                .build();
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            let meter_provider = SdkMeterProvider::builder()
                .with_periodic_exporter(metrics)
                .with_resource(resource)
                .build();
            opentelemetry::global::set_tracer_provider(tracer_provider.clone());
            opentelemetry::global::set_meter_provider(meter_provider.clone());
            (Some(tracer_provider), Some(meter_provider))
        }
        _ => (None, None),
    };

    let otel_layer = tracer_provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name.clone())));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let result = match settings.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().compact())
            .try_init(),
    };
    // A second init in one process (tests, `palisade dev`) keeps the first subscriber.
    if let Err(e) = result {
        tracing::debug!(error = %e, "a tracing subscriber was already installed");
    }
    Ok(TelemetryGuard {
        tracer_provider,
        meter_provider,
    })
}
