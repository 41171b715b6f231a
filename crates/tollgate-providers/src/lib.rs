//! LLM providers behind one trait, and the router that picks among them.
//!
//! # Layout
//! - [`Provider`]: one upstream; a streamed call, and a whole answer (by default the folded
//!   stream).
//! - [`mock`]: deterministic answers derived from the prompt, with latency, rate and errors to
//!   order, for tests and load; deterministic embeddings (hashed words and trigrams).
//! - [`openai_compat`]: any OpenAI-compatible `/chat/completions` and `/embeddings` (OpenAI, vLLM,
//!   Ollama, llama.cpp).
//! - [`anthropic`]: the Anthropic Messages API, translated both ways.
//! - [`azure`]: Azure OpenAI deployments, with an `api-key` or Microsoft Entra ID tokens.
//! - [`bedrock`]: AWS Bedrock's Converse API, SigV4-signed, translated both ways.
//! - [`gemini`]: Google Gemini (AI Studio with an API key, Vertex AI with a service account),
//!   translated both ways.
//! - `local` (feature `local`): models in this process with candle: MiniLM embeddings, SmolLM2
//!   chat.
//! - [`router`]: aliases to weighted deployments, retries with jittered backoff, fallback.
//! - [`sse`]: a server-sent-events parser for upstream streams.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod error;
pub mod gemini;
#[cfg(feature = "local")]
pub mod local;
pub mod mock;
pub mod openai_compat;
pub mod router;
pub mod sse;
mod token;
mod translate;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tollgate_core::{Aggregator, ChatChunk, ChatCompletion, ChatRequest};

pub use error::ProviderError;
pub use router::{Deployment, RetryPolicy, Routed, Router};

/// A stream of chunks from an upstream; the last ones carry usage and finish reasons.
pub type ChunkStream = BoxStream<'static, Result<ChatChunk, ProviderError>>;

/// One upstream LLM API.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Starts a generation. `request.model` is already the upstream's own model name. The future
    /// resolves once the upstream accepted the request (so retries happen before any chunk).
    fn chat_stream(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<ChunkStream, ProviderError>>;

    /// A whole answer, for a caller that needs no chunks. The default folds
    /// [`Provider::chat_stream`]; upstreams with a non-streamed call use it (one answer instead
    /// of a chunk per token).
    fn chat(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<ChatCompletion, ProviderError>> {
        let started = self.chat_stream(request);
        Box::pin(async move {
            let mut stream = started.await?;
            let mut aggregator = Aggregator::default();
            while let Some(chunk) = stream.next().await {
                aggregator.push(&chunk?);
            }
            Ok(aggregator.finish())
        })
    }

    /// The version of `model`'s vectors (the upstream's own name), when the provider knows it
    /// (the local models: their weights' hash). The embedding cache and the semantic cache key
    /// vectors by it, so changed weights never meet vectors of the old ones.
    fn embedding_version(&self, model: &str) -> Option<String> {
        let _ = model;
        None
    }

    /// Embeds `texts` with `model` (the upstream's own name): one vector per text, in order.
    /// Providers without embeddings refuse, which is not retryable.
    fn embed(
        &self,
        model: String,
        texts: Vec<String>,
    ) -> BoxFuture<'static, Result<Embeddings, ProviderError>> {
        let _ = texts;
        Box::pin(async move {
            Err(ProviderError::Rejected {
                status: 400,
                message: format!("model {model:?} does not produce embeddings"),
            })
        })
    }
}

/// Vectors for a batch of texts, in the order of the texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Input tokens the upstream counted.
    pub prompt_tokens: u64,
}

/// Installs the TLS crypto provider (ring) once per process; HTTP providers call it.
pub fn init_tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `call` with the trace context of the current span (`traceparent`, `tracestate`) when traces
/// are on, so the upstream's spans join the request's trace.
pub(crate) fn with_trace_context(call: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let mut fields = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut fields));
    fields
        .into_iter()
        .fold(call, |call, (name, value)| call.header(name, value))
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
