//! OpenTelemetry traces over OTLP/HTTP (protobuf), configured by the standard environment:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns them on;
//! `OTEL_SERVICE_NAME` (default `tollgate`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
//! and `_ARG`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS` and `_TIMEOUT` are read by the SDK;
//! `OTEL_SDK_DISABLED=true` turns them off.
//!
//! What is traced: one span per HTTP request (its parent taken from the caller's `traceparent`),
//! and inside it, for a chat request, a `chat MODEL` span with the GenAI semantic conventions'
//! attributes (`gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...) and tollgate's own
//! (`tollgate.cache`, `tollgate.similarity`, `tollgate.route`, `tollgate.key_id`), with child
//! spans for the cache lookup, the limits, each upstream attempt (its `traceparent` sent on),
//! the usage record written, and a session's history read and exchange written (`session
//! history`, `session write`). A Responses request adds, beside its `chat` span, the previous
//! response read (`response load`: from Redis or the database) and the new one stored
//! (`response store`, with `gen_ai.response.id`); a Messages request is its `chat` span under
//! its HTTP span. Prompts and answers are never attributes.
//!
//! The spans are `tracing` spans of target [`TARGET`]; the log output does not show them, and
//! without an endpoint nothing listens to them (their cost is a disabled callsite check).

use std::future::Future;
use std::pin::Pin;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The `tracing` target of the spans sent as OpenTelemetry spans.
pub const TARGET: &str = "otel";

/// Traces being sent; [`Telemetry::shutdown`] sends what is left.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Traces as the environment configures them: `None` when no OTLP endpoint is set (or
    /// `OTEL_SDK_DISABLED=true`). Exports run on `runtime`.
    pub fn from_env(
        runtime: tokio::runtime::Handle,
    ) -> Result<Option<(Telemetry, SdkTracer)>, String> {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        let disabled =
            std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if disabled
            || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        {
            return Ok(None);
        }
        tollgate_providers::init_tls();
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| format!("OpenTelemetry exporter: {e}"))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(Transport { client, runtime })
            .build()
            .map_err(|e| format!("OpenTelemetry exporter: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if !set("OTEL_SERVICE_NAME") {
            resource = resource.with_service_name("tollgate");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let tracer = provider.tracer("tollgate");
        Ok(Some((Telemetry { provider }, tracer)))
    }

    /// Sends the spans not sent yet and stops (blocks: call it off the runtime's threads).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OpenTelemetry: could not send the last spans");
        }
    }
}

/// The exporter's transport: the workspace's reqwest, run on tollgate's runtime (the batch
/// processor exports from a thread of its own).
#[derive(Debug)]
struct Transport {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl HttpClient for Transport {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let (parts, body) = request.into_parts();
        let call = self
            .client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send();
        let sent = self.runtime.spawn(async move {
            let answer = call.await?;
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                response = response.header(name, value);
            }
            let body = answer.bytes().await?;
            Ok::<_, HttpError>(response.body(body)?)
        });
        Box::pin(async move { sent.await.map_err(|e| -> HttpError { Box::new(e) })? })
    }
}

/// The trace context a request came with (`traceparent`), to parent its span.
pub fn remote_context(headers: &axum::http::HeaderMap) -> opentelemetry::Context {
    struct Headers<'a>(&'a axum::http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    TraceContextPropagator::new().extract(&Headers(headers))
}
