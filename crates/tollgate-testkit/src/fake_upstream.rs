//! A fake OpenAI-compatible upstream (the real ones are paid and out of reach): an HTTP server on
//! a free loopback port that answers `POST /v1/chat/completions` with a fixed number of chunks at
//! a fixed pace (or, after the same pauses, one JSON answer when `stream` is not true), counts and
//! keeps the requests it gets, and can fail the first N calls with 500.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
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
}

impl Default for FakeUpstreamConfig {
    fn default() -> Self {
        FakeUpstreamConfig {
            chunks: 8,
            chunk_delay: Duration::ZERO,
            fail_first: 0,
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: FakeUpstreamConfig,
    calls: AtomicU64,
    requests: std::sync::Mutex<Vec<Value>>,
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
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(chat))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake upstream");
        let addr = listener.local_addr().expect("fake upstream address");
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeUpstream { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL to configure.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
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

    /// The text every successful answer spells.
    pub fn answer(&self) -> String {
        answer_text(self.shared.config.chunks)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer_text(chunks: usize) -> String {
    (0..chunks)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn chat(State(shared): State<Arc<Shared>>, Json(request): Json<Value>) -> Response {
    if let Ok(mut requests) = shared.requests.lock() {
        requests.push(request.clone());
    }
    let n = shared.calls.fetch_add(1, Ordering::SeqCst);
    if n < shared.config.fail_first {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "fake upstream failure"}})),
        )
            .into_response();
    }
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake")
        .to_owned();
    let config = shared.config.clone();
    if let Some(answer) = tool_answer(&request, n) {
        let stream = request.get("stream") == Some(&Value::Bool(true));
        return answer.respond(&model, stream, config.chunk_delay).await;
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
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer_text(config.chunks)},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": config.chunks, "total_tokens": 10 + config.chunks},
        }))
        .into_response();
    }
    let chunk = move |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for i in 0..config.chunks {
        let text = if i == 0 {
            format!("w{i}")
        } else {
            format!(" w{i}")
        };
        events.push(chunk(json!({"content": text}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    let mut usage = chunk(json!({}), Value::Null);
    usage["choices"] = json!([]);
    usage["usage"] = json!({"prompt_tokens": 10, "completion_tokens": config.chunks, "total_tokens": 10 + config.chunks});
    events.push(usage);
    let delay = config.chunk_delay;
    let body = paced_body(events, delay);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// What the fake does in a conversation with tools: the model calls tools (the first one or
/// two declared, or the one `tool_choice` names; `{"i": I}` as arguments) until the last message
/// is a tool result, then answers `tools said: OUTPUTS` (the results of its calls, joined).
enum ToolAnswer {
    Calls(Vec<Value>),
    Text(String),
}

fn tool_answer(request: &Value, n: u64) -> Option<ToolAnswer> {
    let tools = request.get("tools").and_then(Value::as_array)?;
    if tools.is_empty() || request.get("tool_choice") == Some(&json!("none")) {
        return None;
    }
    let messages = request.get("messages").and_then(Value::as_array)?;
    let results: Vec<&str> = messages
        .iter()
        .rev()
        .take_while(|m| m.get("role") == Some(&json!("tool")))
        .filter_map(|m| m.get("content").and_then(Value::as_str))
        .collect();
    if !results.is_empty() {
        let mut results = results;
        results.reverse();
        return Some(ToolAnswer::Text(format!(
            "tools said: {}",
            results.join(", ")
        )));
    }
    let names: Vec<&str> = match request.pointer("/tool_choice/function/name") {
        Some(Value::String(name)) => vec![name],
        _ => {
            let parallel = request.get("parallel_tool_calls") != Some(&json!(false));
            tools
                .iter()
                .take(if parallel { 2 } else { 1 })
                .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
                .collect()
        }
    };
    Some(ToolAnswer::Calls(
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                json!({"id": format!("call_{n}_{i}"), "type": "function",
                       "function": {"name": name, "arguments": format!("{{\"i\": {i}}}")}})
            })
            .collect(),
    ))
}

impl ToolAnswer {
    /// The answer, paced by `delay` per event as text answers are.
    async fn respond(self, model: &str, stream: bool, delay: Duration) -> Response {
        let usage = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
        let (message, finish) = match &self {
            ToolAnswer::Calls(calls) => (
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
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": null}),
            Value::Null,
        )];
        match self {
            ToolAnswer::Calls(calls) => {
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
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(paced_body(events, delay))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

fn paced_body(events: Vec<Value>, delay: Duration) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(4);
    tokio::spawn(async move {
        for e in events {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(format!("data: {e}\n\n"))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok("data: [DONE]\n\n".to_owned())).await;
    });
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}
