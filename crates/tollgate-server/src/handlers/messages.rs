//! `POST /v1/messages` (Anthropic's Messages API) in front of every provider, and
//! `POST /v1/messages/count_tokens`. A Messages request is translated to chat
//! ([`tollgate_core::messages`]) and goes down the chat path, so sessions, the caches,
//! coalescing, limits, budgets, spend and records apply as they do to chat; the answer is
//! translated back, streamed with the Messages event sequence (`message_start`, per content block
//! `content_block_start` / `_delta` / `_stop`, `message_delta`, `message_stop`). Errors on these
//! paths are in the Messages shape ([`in_messages_shape`]).

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tollgate_core::messages::{from_completion, stop_reason};
use tollgate_core::{ChatChunk, ChatRequest, Usage};

use crate::auth::Principal;
use crate::chat::{self, Answer, ChatOptions, StreamItem};
use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

/// `POST /v1/messages`.
pub async fn messages_handler(
    State(gw): State<AppState>,
    principal: Principal,
    mut opts: ChatOptions,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    let chat = tollgate_core::messages::to_chat(&body)?;
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let req: ChatRequest =
        serde_json::from_value(chat).map_err(|e| ApiError::bad(e.to_string(), None))?;
    opts.decoded = true;
    let reply = chat::chat_completions(&gw, &principal, req, opts).await?;
    let mut response = match reply.body.answer()? {
        Answer::Whole(completion) => {
            axum::Json(from_completion(&completion, &model)).into_response()
        }
        Answer::Events(items) => crate::sse::event_stream(Body::from_stream(
            events(items, model).map(Ok::<_, Infallible>),
        )),
    };
    reply.meta.add_headers(&mut response);
    Ok(response)
}

/// `POST /v1/messages/count_tokens`: the tokens the request's messages, system prompt and tools
/// take, as this gateway counts them.
pub async fn count_tokens_handler(
    State(gw): State<AppState>,
    _principal: Principal,
    Json(mut body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    if let Some(obj) = body.as_object_mut() {
        obj.entry("max_tokens").or_insert(json!(1));
    }
    let chat = tollgate_core::messages::to_chat(&body)?;
    let req: ChatRequest =
        serde_json::from_value(chat).map_err(|e| ApiError::bad(e.to_string(), None))?;
    Ok(axum::Json(
        json!({"input_tokens": gw.counter.count_prompt(&req)}),
    ))
}

/// An error answered on a Messages path, in the Messages shape:
/// `{"type": "error", "error": {"type": ..., "message": ...}}`, whichever layer refused (the
/// front layer in `app.rs` passes every answer of these paths through here).
pub async fn in_messages_shape(response: Response) -> Response {
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let kind = match status.as_u16() {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": message}}).to_string();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// The Messages stream events of a chat stream, encoded.
fn events(items: BoxStream<'static, StreamItem>, model: String) -> BoxStream<'static, Bytes> {
    let state = Events {
        items,
        model,
        started: false,
        done: false,
        open: None,
        next_block: 0,
        calls: Vec::new(),
        finish: None,
        usage: Usage::default(),
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let mut out = Vec::new();
        loop {
            match s.items.next().await {
                Some(StreamItem::Chunk { json, .. }) => {
                    let Ok(chunk) = serde_json::from_str::<ChatChunk>(&json) else {
                        continue;
                    };
                    s.chunk(&mut out, &chunk);
                    if !out.is_empty() {
                        return Some((Bytes::from(out.concat()), s));
                    }
                }
                Some(StreamItem::Error(body)) => {
                    s.done = true;
                    let message = body
                        .pointer("/error/message")
                        .cloned()
                        .unwrap_or(Value::from("the upstream failed"));
                    out.push(event(
                        "error",
                        json!({"error": {"type": "api_error", "message": message}}),
                    ));
                    return Some((Bytes::from(out.concat()), s));
                }
                Some(StreamItem::Done) | None => {
                    s.done = true;
                    s.start(&mut out, "");
                    s.close(&mut out);
                    out.push(event(
                        "message_delta",
                        json!({"delta": {"stop_reason": stop_reason(s.finish.as_deref()), "stop_sequence": null},
                               "usage": {"input_tokens": s.usage.prompt_tokens,
                                         "output_tokens": s.usage.completion_tokens}}),
                    ));
                    out.push(event("message_stop", json!({})));
                    return Some((Bytes::from(out.concat()), s));
                }
            }
        }
    })
    .boxed()
}

fn event(kind: &str, mut data: Value) -> Bytes {
    data["type"] = Value::from(kind);
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// The open content block.
enum Open {
    Text(usize),
    /// A tool call's block.
    Call(usize),
}

struct Events {
    items: BoxStream<'static, StreamItem>,
    model: String,
    started: bool,
    done: bool,
    open: Option<Open>,
    next_block: usize,
    /// Tool calls seen: (index in the chat stream, block index).
    calls: Vec<(usize, usize)>,
    finish: Option<String>,
    usage: Usage,
}

impl Events {
    fn start(&mut self, out: &mut Vec<Bytes>, id: &str) {
        if self.started {
            return;
        }
        self.started = true;
        let id = id.strip_prefix("chatcmpl-").unwrap_or(id);
        out.push(event(
            "message_start",
            json!({"message": {"id": format!("msg_{id}"), "type": "message", "role": "assistant",
                               "model": self.model, "content": [], "stop_reason": null,
                               "stop_sequence": null,
                               "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        ));
    }

    fn close(&mut self, out: &mut Vec<Bytes>) {
        if let Some(Open::Text(index) | Open::Call(index)) = self.open.take() {
            out.push(event("content_block_stop", json!({"index": index})));
        }
    }

    fn chunk(&mut self, out: &mut Vec<Bytes>, chunk: &ChatChunk) {
        self.start(out, &chunk.id);
        if let Some(usage) = chunk.usage {
            self.usage = usage;
        }
        let Some(choice) = chunk.choices.first() else {
            return;
        };
        if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
            let index = match self.open {
                Some(Open::Text(index)) => index,
                _ => {
                    self.close(out);
                    let index = self.next_block;
                    self.next_block += 1;
                    self.open = Some(Open::Text(index));
                    out.push(event(
                        "content_block_start",
                        json!({"index": index, "content_block": {"type": "text", "text": ""}}),
                    ));
                    index
                }
            };
            out.push(event(
                "content_block_delta",
                json!({"index": index, "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for fragment in choice.delta.tool_calls.iter().flatten() {
            let k = fragment.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            let index = match self.calls.iter().find(|(call, _)| *call == k) {
                Some((_, index)) => *index,
                None => {
                    self.close(out);
                    let index = self.next_block;
                    self.next_block += 1;
                    self.calls.push((k, index));
                    self.open = Some(Open::Call(index));
                    out.push(event(
                        "content_block_start",
                        json!({"index": index, "content_block": {"type": "tool_use",
                               "id": fragment.get("id").cloned().unwrap_or(Value::Null),
                               "name": fragment.pointer("/function/name").cloned().unwrap_or(Value::Null),
                               "input": {}}}),
                    ));
                    index
                }
            };
            let partial = fragment
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !partial.is_empty() {
                out.push(event(
                    "content_block_delta",
                    json!({"index": index, "delta": {"type": "input_json_delta", "partial_json": partial}}),
                ));
            }
        }
        if let Some(reason) = &choice.finish_reason {
            self.finish = Some(reason.clone());
        }
    }
}
