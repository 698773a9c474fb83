//! One trace crosses a gRPC hop and a queue hop: spans recorded by the SDK's in-memory
//! exporter carry the producer's trace id and parent span id on the other side.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn context_crosses_grpc_metadata_and_queue_envelopes() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));

    tracing::subscriber::with_default(subscriber, || {
        // Producer: a webhook handler calls another service over gRPC...
        let webhook = tracing::info_span!("webhook");
        let _entered = webhook.enter();
        let producer_trace = webhook.context().span().span_context().trace_id();
        let mut metadata = tonic::metadata::MetadataMap::new();
        palisade_telemetry::inject_grpc(&mut metadata);
        assert!(
            metadata.get("traceparent").is_some(),
            "traceparent in metadata"
        );

        // The server's trace layer reads the same context straight from the HTTP/2 headers.
        let via_headers = tracing::info_span!("rpc.headers");
        palisade_telemetry::set_parent_from_headers(&via_headers, &metadata.clone().into_headers());
        assert_eq!(
            via_headers.context().span().span_context().trace_id(),
            producer_trace
        );
        drop(via_headers);

        // ...which handles it and publishes an envelope...
        let handler = tracing::info_span!("grpc.handler");
        palisade_telemetry::set_parent_from_grpc(&handler, &metadata);
        let (traceparent, tracestate) = {
            let _h = handler.enter();
            palisade_telemetry::trace_context_map()
        };
        assert!(traceparent.starts_with("00-"), "{traceparent}");

        // ...and a consumer in yet another process picks it up.
        let consumer = tracing::info_span!("queue.consume");
        palisade_telemetry::set_parent_from_map(&consumer, &traceparent, &tracestate);
        let consumer_trace = consumer.context().span().span_context().trace_id();
        assert_eq!(consumer_trace, producer_trace);
        drop(consumer);
        drop(handler);
    });
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let by_name = |n: &str| {
        spans
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("span {n}"))
    };
    let webhook = by_name("webhook");
    let handler = by_name("grpc.handler");
    let consumer = by_name("queue.consume");
    assert_eq!(
        handler.span_context.trace_id(),
        webhook.span_context.trace_id()
    );
    assert_eq!(handler.parent_span_id, webhook.span_context.span_id());
    assert_eq!(
        consumer.span_context.trace_id(),
        webhook.span_context.trace_id()
    );
    assert_eq!(consumer.parent_span_id, handler.span_context.span_id());
}

#[test]
fn empty_context_extracts_to_no_parent() {
    let cx = palisade_telemetry::extract_map("", "");
    assert!(!cx.span().span_context().is_valid());
}
