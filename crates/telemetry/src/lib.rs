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
use tracing_subscriber::{
    EnvFilter, Layer, fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
};

/// The target of the server's span per RPC. Only the trace exporter wants these spans: the
/// log layer turns them off (see [`init`]).
pub const RPC_SPAN_TARGET: &str = "palisade::rpc";

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

/// The log layer's filter: the configured one, minus the span per RPC.
fn without_rpc_spans(filter: EnvFilter) -> EnvFilter {
    filter.add_directive(
        format!("{RPC_SPAN_TARGET}=off")
            .parse()
            .expect("a valid directive"),
    )
}

/// Installs the global subscriber and propagator. Call once, first thing in `main`.
///
/// The filter applies to each layer on its own. The log layer never takes the server's span
/// per RPC ([`RPC_SPAN_TARGET`]): decorating log lines with it made the JSON layer serialise
/// its five fields on every RPC, about 14,000 instructions each (callgrind), the largest
/// cost of the platform stack, for a decoration only the rare log line inside an RPC used.
/// (The server's own "rpc failed" line carries the method itself.) Without OTLP nothing
/// wants the span, so `info_span!` returns a disabled span for the price of a check; with
/// OTLP the trace layer takes it as before.
pub fn init(service: &str, settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    init_with_writer(service, settings, std::io::stdout)
}

/// [`init`] with logs written to `writer` (the benchmark uses a sink, to pay what production
/// pays without printing it).
pub fn init_with_writer<W>(
    service: &str,
    settings: &TelemetrySettings,
    writer: W,
) -> anyhow::Result<TelemetryGuard>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let service_name = settings
        .service_name
        .clone()
        .unwrap_or_else(|| format!("palisade-{service}"));
    let directives = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|d| EnvFilter::try_new(d).is_ok())
        .unwrap_or_else(|| settings.log_filter.clone());
    let filter = || {
        EnvFilter::try_new(&directives)
            .map_err(|e| anyhow::anyhow!("config key telemetry.log_filter: {e}"))
    };
    let log_filter = without_rpc_spans(filter()?);

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

    let otel_layer = match &tracer_provider {
        Some(p) => Some(
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer(service_name.clone()))
                .with_filter(filter()?),
        ),
        None => None,
    };
    let registry = tracing_subscriber::registry().with(otel_layer);
    let result = match settings.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer)
                    .with_filter(log_filter),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(writer)
                    .with_filter(log_filter),
            )
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

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use tracing_subscriber::{Layer, layer::SubscriberExt};

    use super::*;

    /// Counts the spans a layer is given, as the trace exporter would receive them.
    struct CountSpans(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for CountSpans {
        fn on_new_span(
            &self,
            _: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_rpc_span_reaches_the_trace_layer_but_not_the_logs() {
        let spans = Arc::new(AtomicUsize::new(0));
        let logs = Buffer::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::registry()
            .with(CountSpans(spans.clone()).with_filter(EnvFilter::new("info")))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(move || writer.clone())
                    .with_filter(without_rpc_spans(EnvFilter::new("info"))),
            );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(target: RPC_SPAN_TARGET, "rpc", rpc.method = "Get");
            assert!(!span.is_disabled(), "the trace layer wants it");
            span.in_scope(|| tracing::info!("inside"));
        });
        assert_eq!(spans.load(Ordering::SeqCst), 1);
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("inside"), "{text}");
        assert!(!text.contains("rpc.method"), "{text}");

        // Without a trace layer, nothing wants the span at all.
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(without_rpc_spans(EnvFilter::new("info"))),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(target: RPC_SPAN_TARGET, "rpc");
            assert!(span.is_disabled());
        });
    }
}
