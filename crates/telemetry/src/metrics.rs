//! The Prometheus registry every service registers into, and the RED metrics of its RPCs.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// A process's metrics. Cloning shares the registry.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            registry: Arc::new(Mutex::new(Registry::with_prefix("palisade"))),
        }
    }

    /// Registers a metric under `palisade_<name>`.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub service: String,
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub service: String,
    pub method: String,
}

/// Requests, errors and duration per RPC.
#[derive(Clone)]
pub struct GrpcMetrics {
    requests: Family<RpcLabels, Counter>,
    duration: Family<MethodLabels, Histogram>,
}

impl std::fmt::Debug for GrpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcMetrics")
    }
}

impl GrpcMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let requests = Family::<RpcLabels, Counter>::default();
        let duration = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ])
        });
        metrics.register(
            "grpc_requests",
            "gRPC requests by RPC and status code",
            requests.clone(),
        );
        metrics.register(
            "grpc_request_duration_seconds",
            "gRPC request duration by RPC",
            duration.clone(),
        );
        Self { requests, duration }
    }

    pub fn record(&self, service: &str, method: &str, code: tonic::Code, seconds: f64) {
        self.requests
            .get_or_create(&RpcLabels {
                service: service.to_owned(),
                method: method.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
        self.duration
            .get_or_create(&MethodLabels {
                service: service.to_owned(),
                method: method.to_owned(),
            })
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_metrics_render_in_the_text_format() {
        let metrics = Metrics::new();
        let grpc = GrpcMetrics::register(&metrics);
        grpc.record(
            "palisade.alerts.v1.AlertService",
            "ListAlerts",
            tonic::Code::Ok,
            0.003,
        );
        grpc.record(
            "palisade.alerts.v1.AlertService",
            "ListAlerts",
            tonic::Code::PermissionDenied,
            0.001,
        );
        let text = metrics.render();
        assert!(text.contains("palisade_grpc_requests_total{service=\"palisade.alerts.v1.AlertService\",method=\"ListAlerts\",code=\"Ok\"} 1"), "{text}");
        assert!(text.contains("code=\"PermissionDenied\"} 1"), "{text}");
        assert!(
            text.contains("palisade_grpc_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
