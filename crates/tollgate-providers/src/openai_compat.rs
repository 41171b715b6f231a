//! Any OpenAI-compatible `/chat/completions` endpoint: OpenAI, vLLM, Ollama, llama.cpp server.
//! Every call streams (`stream: true`, `include_usage`), so the gateway can relay and cache
//! the same way whatever the client asked for.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tollgate_core::{ChatChunk, ChatCompletion, ChatRequest};

use crate::sse::{SseEvent, SseParser};
use crate::{ChunkStream, Embeddings, Provider, ProviderError};

/// Time limits of one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the connection.
    pub connect: Duration,
    /// Until the response headers arrive.
    pub first_byte: Duration,
    /// Between two chunks of a stream.
    pub idle: Duration,
    /// A whole (non-streamed) answer, from the request to its last byte: the upstream sends
    /// nothing until it has generated everything.
    pub whole: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            whole: Duration::from_secs(600),
        }
    }
}

/// An OpenAI-compatible upstream. Cloned for every call (one reference count).
#[derive(Debug, Clone)]
pub struct OpenAiCompat(Arc<Upstream>);

/// Where the upstream is, parsed once: a call does not parse its URL again.
#[derive(Debug)]
struct Upstream {
    client: reqwest::Client,
    url: reqwest::Url,
    embeddings_url: reqwest::Url,
    api_key: Option<String>,
    timeouts: Timeouts,
}

impl OpenAiCompat {
    /// `base_url` ends before `/chat/completions` (e.g. `https://api.openai.com/v1`).
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        timeouts: Timeouts,
    ) -> Result<Self, ProviderError> {
        let client = http_client(&timeouts)?;
        Ok(OpenAiCompat(Arc::new(Upstream {
            client,
            url: endpoint(base_url, "chat/completions")?,
            embeddings_url: endpoint(base_url, "embeddings")?,
            api_key,
            timeouts,
        })))
    }
}

impl Provider for OpenAiCompat {
    fn embed(
        &self,
        model: String,
        texts: Vec<String>,
    ) -> BoxFuture<'static, Result<Embeddings, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let expected = texts.len();
            let body =
                serde_json::json!({"model": model, "input": texts, "encoding_format": "float"});
            let mut call = crate::with_trace_context(
                this.0
                    .client
                    .post(this.0.embeddings_url.clone())
                    .header("content-type", "application/json")
                    .body(body.to_string()),
            );
            if let Some(key) = &this.0.api_key {
                call = call.bearer_auth(key);
            }
            let response = send(call, this.0.timeouts.first_byte).await?;
            read_embeddings(response, expected, this.0.timeouts.idle).await
        })
    }

    fn chat_stream(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<ChunkStream, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let call = this.call(&request, true)?;
            let response = send(call, this.0.timeouts.first_byte).await?;
            Ok(chunk_stream(
                response,
                this.0.timeouts.idle,
                Box::new(parse_openai_event),
            ))
        })
    }

    fn chat(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<ChatCompletion, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let call = this.call(&request, false)?;
            read_completion(call, this.0.timeouts.whole).await
        })
    }
}

impl OpenAiCompat {
    /// The request to the upstream: `request` with `stream` set as asked.
    fn call(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let mut call = crate::with_trace_context(
            self.0
                .client
                .post(self.0.url.clone())
                .header("content-type", "application/json")
                .body(chat_body(request, stream)?),
        );
        if let Some(key) = &self.0.api_key {
            call = call.bearer_auth(key);
        }
        Ok(call)
    }
}

/// The body of a chat call to an OpenAI-shaped API: `request`, streamed with usage or not.
pub(crate) fn chat_body(request: &ChatRequest, stream: bool) -> Result<String, ProviderError> {
    let mut body =
        serde_json::to_value(request).map_err(|e| ProviderError::Protocol(e.to_string()))?;
    if stream {
        body["stream"] = serde_json::Value::Bool(true);
        body["stream_options"] = serde_json::json!({"include_usage": true});
    } else if let Some(fields) = body.as_object_mut() {
        fields.remove("stream");
        fields.remove("stream_options");
    }
    Ok(body.to_string())
}

/// Sends a non-streamed chat call and reads the whole answer, within `whole`.
pub(crate) async fn read_completion(
    call: reqwest::RequestBuilder,
    whole: Duration,
) -> Result<ChatCompletion, ProviderError> {
    let answer = async {
        let response = send(call, whole).await?;
        let bytes = response.bytes().await.map_err(http_error)?;
        serde_json::from_slice::<ChatCompletion>(&bytes).map_err(|e| {
            ProviderError::Protocol(format!(
                "the upstream's answer is not a chat completion: {e}"
            ))
        })
    };
    tokio::time::timeout(whole, answer)
        .await
        .map_err(|_| ProviderError::Timeout)?
}

/// `stream` with its first item already read (within `wait`): an error there (a refused prompt,
/// throttling, sent as the stream's first event) is returned as the call's error, so it is
/// refused or retried like any error before the answer, never relayed mid-stream.
pub(crate) async fn first_checked(
    mut stream: ChunkStream,
    wait: Duration,
) -> Result<ChunkStream, ProviderError> {
    let first = tokio::time::timeout(wait, stream.next())
        .await
        .map_err(|_| ProviderError::Timeout)?;
    match first {
        None => Ok(stream),
        Some(Err(e)) => Err(e),
        Some(Ok(chunk)) => Ok(futures::stream::once(async { Ok(chunk) })
            .chain(stream)
            .boxed()),
    }
}

/// A whole JSON answer's body, read within `wait`; `what` names it in a protocol error.
pub(crate) async fn read_json(
    response: reqwest::Response,
    wait: Duration,
    what: &str,
) -> Result<serde_json::Value, ProviderError> {
    let bytes = tokio::time::timeout(wait, response.bytes())
        .await
        .map_err(|_| ProviderError::Timeout)?
        .map_err(http_error)?;
    serde_json::from_slice(&bytes).map_err(|e| ProviderError::Protocol(format!("{what}: {e}")))
}

/// Reads an OpenAI-shaped embeddings answer for `expected` inputs: one vector per input, in
/// the inputs' order whatever order the items came in.
pub(crate) async fn read_embeddings(
    response: reqwest::Response,
    expected: usize,
    idle: Duration,
) -> Result<Embeddings, ProviderError> {
    let bytes = tokio::time::timeout(idle, response.bytes())
        .await
        .map_err(|_| ProviderError::Timeout)?
        .map_err(http_error)?;
    #[derive(serde::Deserialize)]
    struct Item {
        index: usize,
        embedding: Vec<f32>,
    }
    #[derive(serde::Deserialize)]
    struct Reply {
        data: Vec<Item>,
        #[serde(default)]
        usage: Option<serde_json::Value>,
    }
    let reply: Reply = serde_json::from_slice(&bytes)
        .map_err(|e| ProviderError::Protocol(format!("embeddings: {e}")))?;
    let mut vectors = vec![Vec::new(); expected];
    for item in reply.data {
        match vectors.get_mut(item.index) {
            Some(slot) => *slot = item.embedding,
            None => {
                return Err(ProviderError::Protocol(format!(
                    "embedding index {} for {expected} inputs",
                    item.index
                )));
            }
        }
    }
    if vectors.iter().any(Vec::is_empty) {
        return Err(ProviderError::Protocol("an input got no embedding".into()));
    }
    let prompt_tokens = reply
        .usage
        .and_then(|u| u.get("prompt_tokens").and_then(serde_json::Value::as_u64))
        .unwrap_or(0);
    Ok(Embeddings {
        vectors,
        prompt_tokens,
    })
}

/// The HTTP client of an upstream: its connect timeout, pooled keep-alive connections, no Nagle.
pub(crate) fn http_client(timeouts: &Timeouts) -> Result<reqwest::Client, ProviderError> {
    crate::init_tls();
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ProviderError::Connect(e.to_string()))
}

/// `path` under `base_url`, parsed once when a provider is made.
pub(crate) fn endpoint(base_url: &str, path: &str) -> Result<reqwest::Url, ProviderError> {
    let url = format!("{}/{path}", base_url.trim_end_matches('/'));
    reqwest::Url::parse(&url)
        .map_err(|e| ProviderError::Connect(format!("base_url {base_url:?}: {e}")))
}

/// Sends a request, waiting at most `first_byte` for the answer's head, whatever its status.
pub(crate) async fn deliver(
    call: reqwest::RequestBuilder,
    first_byte: Duration,
) -> Result<reqwest::Response, ProviderError> {
    tokio::time::timeout(first_byte, call.send())
        .await
        .map_err(|_| ProviderError::Timeout)?
        .map_err(http_error)
}

/// [`deliver`]; anything but 200 is the error a caller can act on.
pub(crate) async fn send(
    call: reqwest::RequestBuilder,
    first_byte: Duration,
) -> Result<reqwest::Response, ProviderError> {
    let response = deliver(call, first_byte).await?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(status_error(status, response).await);
    }
    Ok(response)
}

/// Maps a non-200 answer to the error a caller can act on.
pub(crate) async fn status_error(status: u16, response: reqwest::Response) -> ProviderError {
    let retry_after = retry_after(response.headers());
    let body = tokio::time::timeout(Duration::from_secs(5), response.bytes())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
    let parsed = serde_json::from_str::<serde_json::Value>(&body).ok();
    let field = |pointer: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.pointer(pointer))
            .and_then(|m| m.as_str())
            .map(str::to_owned)
    };
    let message = field("/error/message").unwrap_or(body);
    // Azure OpenAI's content filter refuses the prompt with a 400 and this code.
    if status == 400 && field("/error/code").as_deref() == Some("content_filter") {
        return ProviderError::ContentFiltered { message };
    }
    // Google says how long to wait in the body (a `google.rpc.RetryInfo` detail: "30s").
    let retry_after = retry_after.or_else(|| {
        parsed
            .as_ref()?
            .pointer("/error/details")?
            .as_array()?
            .iter()
            .find_map(|d| {
                d.get("retryDelay")?
                    .as_str()?
                    .strip_suffix('s')?
                    .parse::<f64>()
                    .ok()
            })
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    });
    match status {
        429 => ProviderError::RateLimited { retry_after },
        500..=599 => ProviderError::Upstream { status, message },
        _ => ProviderError::Rejected { status, message },
    }
}

/// How long an upstream asks us to wait: `retry-after-ms` (Azure), else `retry-after` in
/// seconds.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| number("retry-after").map(Duration::from_secs_f64))
}

pub(crate) fn http_error(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else {
        ProviderError::Connect(e.to_string())
    }
}

/// What an upstream event means.
pub(crate) enum Parsed {
    Chunks(Vec<ChatChunk>),
    Skip,
    End,
}

pub(crate) fn parse_openai_event(event: &SseEvent) -> Result<Parsed, ProviderError> {
    let data = event.data.trim();
    if data == "[DONE]" {
        return Ok(Parsed::End);
    }
    if data.is_empty() {
        return Ok(Parsed::Skip);
    }
    let value: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| ProviderError::Protocol(format!("bad chunk: {e}")))?;
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("upstream error")
            .to_owned();
        return Err(ProviderError::Upstream {
            status: 500,
            message,
        });
    }
    let chunk: ChatChunk = serde_json::from_value(value)
        .map_err(|e| ProviderError::Protocol(format!("bad chunk: {e}")))?;
    Ok(Parsed::Chunks(vec![chunk]))
}

/// Maps one upstream event to chunks; may keep state across events (Anthropic does).
pub(crate) type EventParser = Box<dyn FnMut(&SseEvent) -> Result<Parsed, ProviderError> + Send>;

/// Turns an SSE response into chunks, with an idle timeout between reads.
pub(crate) fn chunk_stream(
    response: reqwest::Response,
    idle: Duration,
    parse: EventParser,
) -> ChunkStream {
    struct State {
        body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
        parser: SseParser,
        pending: VecDeque<ChatChunk>,
        done: bool,
        parse: EventParser,
    }
    let state = State {
        body: response.bytes_stream().boxed(),
        parser: SseParser::default(),
        pending: VecDeque::new(),
        done: false,
        parse,
    };
    futures::stream::unfold(state, move |mut s| async move {
        loop {
            if let Some(chunk) = s.pending.pop_front() {
                return Some((Ok(chunk), s));
            }
            if s.done {
                return None;
            }
            let bytes = match tokio::time::timeout(idle, s.body.next()).await {
                Err(_) => {
                    s.done = true;
                    return Some((Err(ProviderError::Timeout), s));
                }
                Ok(None) => {
                    s.done = true;
                    continue;
                }
                Ok(Some(Err(e))) => {
                    s.done = true;
                    return Some((Err(http_error(e)), s));
                }
                Ok(Some(Ok(b))) => b,
            };
            let events = match s.parser.feed(&bytes) {
                Ok(e) => e,
                Err(e) => {
                    s.done = true;
                    return Some((Err(ProviderError::Protocol(e)), s));
                }
            };
            for event in events {
                match (s.parse)(&event) {
                    Ok(Parsed::Chunks(c)) => s.pending.extend(c),
                    Ok(Parsed::Skip) => {}
                    Ok(Parsed::End) => s.done = true,
                    Err(e) => {
                        s.done = true;
                        s.pending.clear();
                        return Some((Err(e), s));
                    }
                }
            }
        }
    })
    .boxed()
}
