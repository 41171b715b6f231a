//! A fake LLM upstream (the real ones are paid and out of reach): an HTTP server on a free
//! loopback port that speaks OpenAI's chat completions (`POST /v1/chat/completions`) and
//! Anthropic's Messages API (`POST /v1/messages`, see [`anthropic`]). It answers with a fixed
//! number of chunks at a fixed pace (or, after the same pauses, one JSON answer when `stream` is
//! not true), calls the tools it is given, counts and keeps the requests it gets, checks the API
//! key each API's way when given one, and can fail the first N calls with 500.

mod anthropic;
mod azure;
mod bedrock;
mod gemini;

pub use azure::{AZURE_API_VERSIONS, FakeEntra};
pub use bedrock::FakeAws;
pub use gemini::{
    FakeGoogle, another_public_key, service_account_json, service_account_public_key,
};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// How the fake upstream answers.
#[derive(Debug, Clone)]
pub struct FakeUpstreamConfig {
    /// Chunks of content per answer (`w0 w1 ...`).
    pub chunks: usize,
    /// Pause before each chunk.
    pub chunk_delay: Duration,
    /// The first this-many calls get a 500.
    pub fail_first: u64,
    /// The key every call must carry (`Authorization: Bearer` for OpenAI's API, `x-api-key` for
    /// Anthropic's); any key is taken when `None`.
    pub api_key: Option<String>,
    /// When not empty, a text answer is `about TOPIC` (`about nothing` when none): the first of
    /// these words the last user message names. Questions naming the same topic get the same
    /// answer, so a test knows which questions are equivalent.
    pub topics: Vec<String>,
    /// The Entra ID application whose tokens the Azure side takes (see [`azure`]).
    pub entra: Option<FakeEntra>,
    /// The service account whose JWTs Google's token endpoint takes (see [`gemini`]).
    pub google: Option<FakeGoogle>,
    /// The AWS account whose SigV4 signatures the Bedrock side takes (see [`bedrock`]).
    pub aws: Option<FakeAws>,
}

impl Default for FakeUpstreamConfig {
    fn default() -> Self {
        FakeUpstreamConfig {
            chunks: 8,
            chunk_delay: Duration::ZERO,
            fail_first: 0,
            api_key: None,
            topics: Vec::new(),
            entra: None,
            google: None,
            aws: None,
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: FakeUpstreamConfig,
    calls: AtomicU64,
    requests: std::sync::Mutex<Vec<Value>>,
    traceparents: std::sync::Mutex<Vec<String>>,
    /// The paths of the Azure calls (the deployment is in them), in order.
    paths: std::sync::Mutex<Vec<String>>,
    /// Bearer tokens issued (Entra ID's and Google's), and when each expires.
    bearer_tokens: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
    /// `http://127.0.0.1:PORT/token`, the audience of a service account's JWT.
    token_uri: std::sync::Mutex<String>,
    tokens_issued: AtomicU64,
}

/// A running fake upstream; stops when dropped.
#[derive(Debug)]
pub struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    /// Starts it on a free loopback port (inside the current tokio runtime).
    pub async fn start(config: FakeUpstreamConfig) -> Self {
        let shared = Arc::new(Shared {
            config,
            calls: AtomicU64::new(0),
            requests: std::sync::Mutex::new(Vec::new()),
            traceparents: std::sync::Mutex::new(Vec::new()),
            paths: std::sync::Mutex::new(Vec::new()),
            bearer_tokens: std::sync::Mutex::new(Vec::new()),
            token_uri: std::sync::Mutex::new(String::new()),
            tokens_issued: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(chat))
            .route("/v1/embeddings", axum::routing::post(embeddings))
            .route("/v1/messages", axum::routing::post(anthropic::messages))
            .route(
                "/openai/deployments/{deployment}/chat/completions",
                axum::routing::post(azure::chat),
            )
            .route(
                "/openai/deployments/{deployment}/embeddings",
                axum::routing::post(azure::embeddings),
            )
            .route(
                "/{tenant}/oauth2/v2.0/token",
                axum::routing::post(azure::token),
            )
            .route(
                "/v1beta/models/{call}",
                axum::routing::post(gemini::ai_studio),
            )
            .route(
                "/v1/projects/{project}/locations/{location}/publishers/google/models/{call}",
                axum::routing::post(gemini::vertex),
            )
            .route("/token", axum::routing::post(gemini::token))
            .route(
                "/model/{id}/{operation}",
                axum::routing::post(bedrock::model),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake upstream");
        let addr = listener.local_addr().expect("fake upstream address");
        if let Ok(mut uri) = shared.token_uri.lock() {
            *uri = format!("http://{addr}/token");
        }
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeUpstream { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL to configure for an OpenAI-compatible provider.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT`, the base URL to configure for an Anthropic provider.
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT`: an Azure OpenAI resource's endpoint, and the Entra ID authority.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The paths of the Azure calls received so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.shared
            .paths
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT/token`: Google's OAuth token endpoint for a service account.
    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Bearer tokens (Entra ID's, Google's) issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.tokens_issued.load(Ordering::SeqCst)
    }

    /// Calls received so far.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// The bodies of the requests received so far, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The `traceparent` headers of the chat requests received so far, in order.
    pub fn traceparents(&self) -> Vec<String> {
        self.shared
            .traceparents
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The text every successful answer spells (without `topics`).
    pub fn answer(&self) -> String {
        answer_text(self.shared.config.chunks)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The words of the text answer to `request`: the topic's (`topics`), else `w0`, ` w1`, ...
fn words_for(config: &FakeUpstreamConfig, request: &Value) -> Vec<String> {
    if config.topics.is_empty() {
        return answer_words(config.chunks).collect();
    }
    let question = request
        .pointer("/messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_lowercase();
    let topic = config
        .topics
        .iter()
        .find(|t| {
            question
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w == t.as_str())
        })
        .map_or("nothing", String::as_str);
    vec!["about".to_owned(), format!(" {topic}")]
}

/// The words of a text answer: `w0`, ` w1`, ...
fn answer_words(chunks: usize) -> impl Iterator<Item = String> {
    (0..chunks).map(|i| {
        if i == 0 {
            "w0".to_owned()
        } else {
            format!(" w{i}")
        }
    })
}

fn answer_text(chunks: usize) -> String {
    answer_words(chunks).collect()
}

impl Shared {
    fn record_path(&self, path: &str) {
        if let Ok(mut paths) = self.paths.lock() {
            paths.push(path.to_owned());
        }
    }

    /// True for a bearer token this fake issued that has not expired.
    fn token_is_live(&self, token: &str) -> bool {
        let now = std::time::Instant::now();
        self.bearer_tokens
            .lock()
            .map(|live| live.iter().any(|(t, expires)| t == token && *expires > now))
            .unwrap_or(false)
    }

    /// Keeps the request and counts the call; its number, or the error to answer: 401 without
    /// the expected key (read by `key`), 500 for the first `fail_first` calls. Errors are shaped
    /// by `error(kind, message)`.
    fn admit(
        &self,
        request: &Value,
        key: Option<&str>,
        error: fn(&str, &str) -> Value,
    ) -> Result<u64, (StatusCode, Json<Value>)> {
        if let Ok(mut requests) = self.requests.lock() {
            requests.push(request.clone());
        }
        if let Some(expected) = &self.config.api_key
            && key != Some(expected.as_str())
        {
            let body = error("authentication_error", "invalid api key");
            return Err((StatusCode::UNAUTHORIZED, Json(body)));
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.config.fail_first {
            let body = error("api_error", "fake upstream failure");
            return Err((StatusCode::INTERNAL_SERVER_ERROR, Json(body)));
        }
        Ok(n)
    }
}

fn openai_error(kind: &str, message: &str) -> Value {
    json!({"error": {"type": kind, "message": message}})
}

async fn chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    if let Some(parent) = headers.get("traceparent").and_then(|v| v.to_str().ok())
        && let Ok(mut seen) = shared.traceparents.lock()
    {
        seen.push(parent.to_owned());
    }
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let n = match shared.admit(&request, key, openai_error) {
        Ok(n) => n,
        Err(refused) => return refused.into_response(),
    };
    answer_chat(&shared, n, &request, None).await
}

/// The answer to chat request number `n` in OpenAI's format; `prelude` (Azure's prompt filter
/// results) is the first event of a stream when given.
async fn answer_chat(shared: &Shared, n: u64, request: &Value, prelude: Option<Value>) -> Response {
    let request = request.clone();
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake")
        .to_owned();
    let config = shared.config.clone();
    if let Some(answer) = tool_answer(&request) {
        let stream = request.get("stream") == Some(&Value::Bool(true));
        return answer
            .respond(n, &model, stream, config.chunk_delay, prelude)
            .await;
    }
    if request.get("stream") != Some(&Value::Bool(true)) {
        // The same pauses as a stream (one per event), then the whole answer.
        if !config.chunk_delay.is_zero() {
            for _ in 0..config.chunks + 3 {
                tokio::time::sleep(config.chunk_delay).await;
            }
        }
        return Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words_for(&config, &request).concat()},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": config.chunks, "total_tokens": 10 + config.chunks},
        }))
        .into_response();
    }
    let chunk = move |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events: Vec<Value> = prelude.into_iter().collect();
    events.push(chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    for text in words_for(&config, &request) {
        events.push(chunk(json!({"content": text}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    let mut usage = chunk(json!({}), Value::Null);
    usage["choices"] = json!([]);
    usage["usage"] = json!({"prompt_tokens": 10, "completion_tokens": config.chunks, "total_tokens": 10 + config.chunks});
    events.push(usage);
    event_stream(openai_frames(events), config.chunk_delay)
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(expected) = &shared.config.api_key
        && key != Some(expected.as_str())
    {
        let body = openai_error("authentication_error", "invalid api key");
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    let model = request["model"].as_str().unwrap_or("fake").to_owned();
    embeddings_answer(&shared, &request, &model)
}

/// An embeddings answer in OpenAI's format: for each input (a string or a list of them), 8
/// numbers derived from its bytes, so equal texts get equal vectors; a word is a token.
fn embeddings_answer(shared: &Shared, request: &Value, model: &str) -> Response {
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    if inputs.is_empty() {
        let body = openai_error(
            "invalid_request_error",
            "input: expected a string or strings",
        );
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    if let Ok(mut requests) = shared.requests.lock() {
        requests.push(request.clone());
    }
    shared.calls.fetch_add(1, Ordering::SeqCst);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": fake_vector(text)}))
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    Json(json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}

/// The fake's vector of `text`: 8 components from its bytes, normalized.
pub fn fake_vector(text: &str) -> Vec<f32> {
    let mut v = [1.0f32; 8];
    for (i, b) in text.bytes().enumerate() {
        v[i % 8] += f32::from(b) / 255.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

/// What the fake model does in a conversation with tools (the same in either wire format): it
/// calls tools (the first one or two declared, or the one the tool choice names; `{"i": I}` as
/// arguments) until the conversation ends with tool results, then answers
/// `tools said: RESULTS` (the results, joined).
enum ToolAnswer {
    /// The names of the tools called, in order.
    Calls(Vec<String>),
    Text(String),
}

/// A conversation's tools, as either wire format states them.
struct ToolTurn<'a> {
    /// The declared tools' names.
    names: Vec<&'a str>,
    /// The tool the request forces, if any.
    forced: Option<&'a str>,
    /// Whether several calls may be made at once.
    parallel: bool,
    /// The tool results the conversation ends with.
    results: Vec<String>,
}

impl ToolTurn<'_> {
    fn answer(self) -> Option<ToolAnswer> {
        if self.names.is_empty() {
            return None;
        }
        if !self.results.is_empty() {
            return Some(ToolAnswer::Text(format!(
                "tools said: {}",
                self.results.join(", ")
            )));
        }
        let names = match self.forced {
            Some(name) => vec![name.to_owned()],
            None => self
                .names
                .iter()
                .take(if self.parallel { 2 } else { 1 })
                .map(|n| (*n).to_owned())
                .collect(),
        };
        Some(ToolAnswer::Calls(names))
    }
}

/// The arguments of the `i`-th call of an answer.
fn call_arguments(i: usize) -> String {
    format!("{{\"i\": {i}}}")
}

fn tool_answer(request: &Value) -> Option<ToolAnswer> {
    let tools = request.get("tools").and_then(Value::as_array)?;
    if request.get("tool_choice") == Some(&json!("none")) {
        return None;
    }
    let messages = request.get("messages").and_then(Value::as_array)?;
    let mut results: Vec<String> = messages
        .iter()
        .rev()
        .take_while(|m| m.get("role") == Some(&json!("tool")))
        .filter_map(|m| m.get("content").and_then(Value::as_str).map(str::to_owned))
        .collect();
    results.reverse();
    ToolTurn {
        names: tools
            .iter()
            .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
            .collect(),
        forced: request
            .pointer("/tool_choice/function/name")
            .and_then(Value::as_str),
        parallel: request.get("parallel_tool_calls") != Some(&json!(false)),
        results,
    }
    .answer()
}

impl ToolAnswer {
    /// The answer in OpenAI's format, paced by `delay` per event as text answers are; call ids
    /// are `call_N_I` for the `n`-th request.
    async fn respond(
        self,
        n: u64,
        model: &str,
        stream: bool,
        delay: Duration,
        prelude: Option<Value>,
    ) -> Response {
        let usage = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
        let calls: Vec<Value> = match &self {
            ToolAnswer::Calls(names) => names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    json!({"id": format!("call_{n}_{i}"), "type": "function",
                           "function": {"name": name, "arguments": call_arguments(i)}})
                })
                .collect(),
            ToolAnswer::Text(_) => Vec::new(),
        };
        let (message, finish) = match &self {
            ToolAnswer::Calls(_) => (
                json!({"role": "assistant", "content": null, "tool_calls": calls}),
                "tool_calls",
            ),
            ToolAnswer::Text(text) => (json!({"role": "assistant", "content": text}), "stop"),
        };
        if !stream {
            if !delay.is_zero() {
                tokio::time::sleep(delay * 4).await;
            }
            return Json(json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            }))
            .into_response();
        }
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                   "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut events: Vec<Value> = prelude.into_iter().collect();
        events.push(chunk(
            json!({"role": "assistant", "content": null}),
            Value::Null,
        ));
        match self {
            ToolAnswer::Calls(_) => {
                // Each call opens with its id and name, then its arguments in two fragments.
                for (i, call) in calls.iter().enumerate() {
                    let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
                    let (a, b) = arguments.split_at(arguments.len() / 2);
                    events.push(chunk(
                        json!({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                               "function": {"name": call["function"]["name"], "arguments": ""}}]}),
                        Value::Null,
                    ));
                    for part in [a, b] {
                        events.push(chunk(
                            json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                            Value::Null,
                        ));
                    }
                }
            }
            ToolAnswer::Text(text) => events.push(chunk(json!({"content": text}), Value::Null)),
        }
        events.push(chunk(json!({}), json!(finish)));
        let mut last = chunk(json!({}), Value::Null);
        last["choices"] = json!([]);
        last["usage"] = usage;
        events.push(last);
        event_stream(openai_frames(events), delay)
    }
}

/// OpenAI's frames: one `data:` line per event, then `[DONE]`.
fn openai_frames(events: Vec<Value>) -> Vec<String> {
    events
        .into_iter()
        .map(|e| format!("data: {e}\n\n"))
        .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
        .collect()
}

fn event_stream(frames: Vec<String>, delay: Duration) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(paced_body(frames, delay))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The frames, one every `delay`.
fn paced_body<T: Into<axum::body::Bytes> + Send + 'static>(
    frames: Vec<T>,
    delay: Duration,
) -> Body {
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::convert::Infallible>>(4);
    tokio::spawn(async move {
        for frame in frames {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(frame.into())).await.is_err() {
                return;
            }
        }
    });
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}
