//! OpenTelemetry trace export (feature `otel`): when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the
//! servers' spans (each request, with the caller and the transaction id once known) are sent
//! over OTLP (HTTP/protobuf) by a batch exporter on a thread of its own, named by
//! `OTEL_SERVICE_NAME` (default `wimse-issuer`, `wimse-agent` or `wimse-gateway`). The
//! exporter reads the other standard `OTEL_*` variables itself (headers, timeout, batch delay).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Exports spans until dropped (then flushes what is buffered).
pub(crate) struct Export(SdkTracerProvider);

impl Drop for Export {
    fn drop(&mut self) {
        if let Err(error) = self.0.shutdown() {
            eprintln!("wimse: OpenTelemetry export did not flush: {error}");
        }
    }
}

/// The tracing layer exporting spans, and its guard, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub(crate) fn layer<S>(service: &str) -> Result<Option<(impl tracing_subscriber::Layer<S>, Export)>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(name).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("wimse");
    Ok(Some((tracing_opentelemetry::layer().with_tracer(tracer), Export(provider))))
}
