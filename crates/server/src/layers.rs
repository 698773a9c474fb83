//! A span per RPC (child of the caller's trace) and the RED metrics.

use std::{
    task::{Context, Poll},
    time::Instant,
};

use palisade_telemetry::GrpcMetrics;
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct TraceLayer {
    service: &'static str,
    metrics: GrpcMetrics,
}

impl TraceLayer {
    pub fn new(service: &'static str, metrics: GrpcMetrics) -> Self {
        Self { service, metrics }
    }
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = TraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            service: self.service,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TraceService<S> {
    inner: S,
    service: &'static str,
    metrics: GrpcMetrics,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for TraceService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>> + Send,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Borrowed from the path: the span copies what it keeps (when a subscriber wants the
        // span at all), and the metrics handles are resolved once per method, so an RPC's
        // bookkeeping allocates nothing beyond the span itself.
        let path = request.uri().path();
        let (grpc_service, method) = palisade_telemetry::split_grpc_path(path);
        // Only the trace exporter takes this span (see `palisade_telemetry::init`); without
        // one it is disabled and costs a callsite check.
        let span = tracing::info_span!(
            target: palisade_telemetry::RPC_SPAN_TARGET,
            "rpc",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = grpc_service,
            rpc.method = method,
            service = self.service,
        );
        palisade_telemetry::set_parent_from_headers(&span, request.headers());
        let metrics = self.metrics.method(path);
        let started = Instant::now();
        let failed_path = request.uri().path_and_query().cloned();
        let future = self.inner.call(request);
        Box::pin(
            async move {
                let result = future.await;
                // Errors become trailers-only responses, so grpc-status is in the headers;
                // a plain 200 without it is a success whose status follows in the trailers.
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map(tonic::Code::from)
                        .unwrap_or(tonic::Code::Ok),
                    Err(_) => tonic::Code::Unavailable,
                };
                if code != tonic::Code::Ok {
                    // The log layer does not see the span, so the line names the RPC itself.
                    let (rpc_service, rpc_method) = palisade_telemetry::split_grpc_path(
                        failed_path.as_ref().map_or("", |p| p.path()),
                    );
                    tracing::info!(
                        rpc.service = rpc_service,
                        rpc.method = rpc_method,
                        code = ?code,
                        "rpc failed"
                    );
                }
                metrics.record(code, started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}
