//! The Responses API (`POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`) for every
//! provider: a request is translated into a chat request and goes down the chat path, so limits,
//! budgets, the caches, coalescing, routing and accounting all apply as they do to chat.
//!
//! A stored response keeps, besides what the API shows, the conversation up to and including it
//! (its *context*: an optional summary, then the turns). A request naming `previous_response_id`
//! reads that one record, so a chain of any length costs one lookup, and the chain cannot be cut
//! by a middle response expiring. Contexts over `[summaries] token_budget` are summarized in the
//! background ([`crate::summaries`]), which keeps records small and the history sent upstream
//! within the budget.
//!
//! Durability: the record is in Redis before the response (or its `response.completed` event)
//! reaches the client, so the next request of the chain finds it on any instance; the same
//! record goes through the outbox to the database. A read that misses Redis (expired, flushed)
//! goes to the database and puts what it found back. A key never reads another key's responses:
//! they are "not found" to it, as missing ones are.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tollgate_core::{ChatCompletion, ChatMessage, ChatRequest, Usage};
use tollgate_db::{DELETED, Record, ResponseRow};
use tollgate_redis::StoredResponse;

use crate::auth::{self, Principal};
use crate::chat::{self, ReplyBody, StreamItem};
use crate::error::ApiError;
use crate::extract::Path;
use crate::handlers::{add_reply_headers, chat_options, read_json};
use crate::state::{AppState, Gateway};

/// A `POST /v1/responses` body. Fields OpenAI defines that change nothing here are accepted;
/// unknown fields are refused, naming the field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponsesRequest {
    pub model: String,
    pub input: Value,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub text: Option<Value>,
    #[serde(default)]
    pub truncation: Option<String>,
    #[serde(default)]
    pub include: Option<Vec<Value>>,
    #[serde(default)]
    pub reasoning: Option<Value>,
    #[serde(default)]
    pub background: Option<bool>,
    #[serde(default)]
    pub service_tier: Option<Value>,
    #[serde(default)]
    pub stream_options: Option<Value>,
    #[serde(default)]
    pub seed: Option<i64>,
}

/// The conversation up to and including a response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Context {
    /// A summary of turns no longer kept word for word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The turns kept, oldest first (instructions are not part of it: each request sets its own).
    pub messages: Vec<ChatMessage>,
    /// Tokens of `summary` and `messages`.
    pub tokens: u64,
}

/// What is stored for a response, in Redis and in the database.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRecord {
    pub owner: String,
    /// 1 when created, +1 each time its context is summarized.
    pub version: i64,
    /// The response object, as `GET` returns it.
    pub response: Value,
    pub context: Context,
}

impl StoredRecord {
    /// The database row of this record; its `body` is also what Redis stores.
    pub fn row(&self, id: &str) -> Result<ResponseRow, serde_json::Error> {
        Ok(ResponseRow {
            id: id.to_owned(),
            owner: self.owner.clone(),
            version: self.version,
            created_ms: self
                .response
                .get("created_at")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                * 1000,
            body: serde_json::to_string(self)?,
        })
    }
}

/// `POST /v1/responses`.
pub async fn create_response_handler(
    State(gw): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    let req: ResponsesRequest = read_json(&gw, body).await?;
    create_response(&gw, &principal, &headers, req).await
}

/// Answers a Responses request (see the module docs).
pub async fn create_response(
    gw: &Arc<Gateway>,
    principal: &Principal,
    headers: &HeaderMap,
    req: ResponsesRequest,
) -> Result<Response, ApiError> {
    check_supported(&req)?;
    let input =
        tollgate_core::responses::input_messages(&req.input).map_err(|e| ApiError::BadRequest {
            message: e.message,
            param: e.param,
        })?;
    let previous = match &req.previous_response_id {
        Some(id) => Some(
            load(gw, id, &principal.subject)
                .await?
                .ok_or_else(|| previous_not_found(id))?,
        ),
        None => None,
    };
    let mut context = previous.map(|p| p.context).unwrap_or_default();
    let mut messages = Vec::new();
    if let Some(instructions) = req.instructions.as_deref().filter(|i| !i.is_empty()) {
        messages.push(ChatMessage::text("system", instructions));
    }
    if let Some(summary) = &context.summary {
        messages.push(ChatMessage::summary(summary));
    }
    messages.extend(context.messages.iter().cloned());
    messages.extend(input.iter().cloned());
    let stream = req.stream.unwrap_or(false);
    let mut chat_req = json!({
        "model": req.model,
        "messages": messages,
        "stream": stream,
    });
    for (name, value) in [
        ("temperature", req.temperature.map(Value::from)),
        ("top_p", req.top_p.map(Value::from)),
        ("max_tokens", req.max_output_tokens.map(Value::from)),
        ("seed", req.seed.map(Value::from)),
        ("response_format", response_format(req.text.as_ref())?),
    ] {
        if let Some(v) = value {
            chat_req[name] = v;
        }
    }
    if stream {
        chat_req["stream_options"] = json!({"include_usage": true});
    }
    let chat_req: ChatRequest =
        serde_json::from_value(chat_req).map_err(|e| ApiError::bad(e.to_string(), None))?;
    let mut opts = chat_options(headers)?;
    if opts.user.is_none() {
        opts.user = req.user.clone();
    }
    let reply = chat::chat_completions(gw, principal, chat_req, opts).await?;

    let id = format!("resp_{}", uuid::Uuid::new_v4().simple());
    let pending = Pending {
        gw: gw.clone(),
        id,
        owner: principal.subject.clone(),
        created_at: (tollgate_db::now_ms() / 1000),
        req,
        input,
    };
    context.messages.extend(pending.input.iter().cloned());
    let (meta, body) = reply.into_parts();
    let mut response = match body {
        ReplyBody::Json(completion) => {
            let object = pending.finish(context, &completion).await;
            Json(object).into_response()
        }
        ReplyBody::Stream(items) => stream_events(pending, context, items),
    };
    add_reply_headers(&mut response, meta);
    Ok(response)
}

/// `GET /v1/responses/{id}`.
pub async fn get_response_handler(
    State(gw): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    let record = load(&gw, &id, &principal.subject)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(record.response).into_response())
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete_response_handler(
    State(gw): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    let record = load(&gw, &id, &principal.subject)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if let Err(e) = gw.responses.delete(&id).await {
        tracing::warn!(error = %e, "could not mark a response deleted in Redis");
    }
    crate::accounting::submit(
        &gw,
        vec![Record::Response(ResponseRow {
            id: id.clone(),
            owner: record.owner,
            version: DELETED,
            created_ms: 0,
            body: String::new(),
        })],
    )
    .await;
    Ok(Json(json!({"id": id, "object": "response", "deleted": true})).into_response())
}

/// The stored record of `id` if `owner` may read it: Redis first, then the database (what the
/// database has is put back into Redis).
pub async fn load(gw: &Gateway, id: &str, owner: &str) -> Result<Option<StoredRecord>, ApiError> {
    if id.is_empty() || id.len() > 200 {
        return Ok(None);
    }
    let from_redis = match gw.responses.get(id).await {
        Ok(StoredResponse::Found(bytes)) => Some(decode(&bytes)?),
        Ok(StoredResponse::Deleted) => return Ok(None),
        Ok(StoredResponse::Missing) => None,
        Err(e) => {
            tracing::warn!(error = %e, "stored responses unavailable in Redis; reading the database");
            None
        }
    };
    let record = match from_redis {
        Some(record) => record,
        None => {
            let Some(durable) = &gw.durable else {
                return Ok(None);
            };
            let row = durable
                .db
                .response(id)
                .await
                .map_err(|e| ApiError::Unavailable(format!("database: {e}")))?;
            let Some(row) = row.filter(|r| !r.is_deleted()) else {
                return Ok(None);
            };
            if let Err(e) = gw.responses.restore(id, row.body.as_bytes()).await {
                tracing::debug!(error = %e, "could not put a response back into Redis");
            }
            decode(row.body.as_bytes())?
        }
    };
    Ok((record.owner == owner).then_some(record))
}

fn decode(bytes: &[u8]) -> Result<StoredRecord, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Internal(format!("a stored response does not decode: {e}")))
}

/// Stores `record` (Redis, awaited; the database through the outbox).
pub async fn persist(gw: &Gateway, id: &str, record: &StoredRecord) {
    let row = match record.row(id) {
        Ok(row) => row,
        Err(e) => {
            tracing::error!(error = %e, "a response record does not encode");
            return;
        }
    };
    let stored = gw.responses.put(id, row.body.as_bytes()).await;
    let row = Record::Response(row);
    match stored {
        Ok(()) => crate::accounting::submit(gw, vec![row]).await,
        Err(e) => {
            // The next request of the chain will look in the database: it must be there first.
            tracing::warn!(error = %e, "could not store a response in Redis; writing it to the database");
            if let Some(durable) = &gw.durable
                && let Err(e) = durable.db.write(vec![row.clone()]).await
            {
                tracing::warn!(error = %e, "database write failed; queueing the response");
                crate::accounting::submit(gw, vec![row]).await;
            }
        }
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("No response found with id '{id}'."))
}

fn previous_not_found(id: &str) -> ApiError {
    ApiError::BadRequest {
        message: format!("Previous response with id '{id}' not found."),
        param: Some("previous_response_id".into()),
    }
}

fn check_supported(req: &ResponsesRequest) -> Result<(), ApiError> {
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::bad(
            "tools are not supported on /v1/responses by this gateway; use /v1/chat/completions for tool calls",
            Some("tools"),
        ));
    }
    if req.background == Some(true) {
        return Err(ApiError::bad(
            "background responses are not supported",
            Some("background"),
        ));
    }
    if req.model.trim().is_empty() {
        return Err(ApiError::bad("`model` must not be empty", Some("model")));
    }
    Ok(())
}

/// `text.format` as a chat `response_format`.
fn response_format(text: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") | None => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = format.clone();
            if let Some(o) = schema.as_object_mut() {
                o.remove("type");
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        Some(other) => Err(ApiError::bad(
            format!("text.format.type {other:?} is not one of text, json_object, json_schema"),
            Some("text.format.type"),
        )),
    }
}

/// A response being produced: what is needed to build and store it once the answer is complete.
struct Pending {
    gw: Arc<Gateway>,
    id: String,
    owner: String,
    created_at: i64,
    req: ResponsesRequest,
    input: Vec<ChatMessage>,
}

/// How an answer ended.
struct Outcome<'a> {
    text: &'a str,
    usage: Option<Usage>,
    finish_reason: Option<&'a str>,
}

impl Pending {
    fn message_id(&self) -> String {
        format!("msg_{}", &self.id["resp_".len()..])
    }

    /// The response object; `outcome` `None` while in progress.
    fn object(&self, outcome: Option<&Outcome<'_>>) -> Value {
        let (status, output, usage, incomplete) = match outcome {
            None => ("in_progress", json!([]), Value::Null, Value::Null),
            Some(o) => {
                let incomplete = o.finish_reason == Some("length");
                let usage = o.usage.map_or(Value::Null, |u| {
                    json!({
                        "input_tokens": u.prompt_tokens,
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens": u.completion_tokens,
                        "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": u.total_tokens,
                    })
                });
                (
                    if incomplete {
                        "incomplete"
                    } else {
                        "completed"
                    },
                    json!([self.message_item(o.text, "completed")]),
                    usage,
                    if incomplete {
                        json!({"reason": "max_output_tokens"})
                    } else {
                        Value::Null
                    },
                )
            }
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete,
            "instructions": self.req.instructions,
            "max_output_tokens": self.req.max_output_tokens,
            "model": self.req.model,
            "output": output,
            "parallel_tool_calls": self.req.parallel_tool_calls.unwrap_or(false),
            "previous_response_id": self.req.previous_response_id,
            "reasoning": {"effort": null, "summary": null},
            "store": self.req.store.unwrap_or(true),
            "temperature": self.req.temperature,
            "text": self.req.text.clone().unwrap_or_else(|| json!({"format": {"type": "text"}})),
            "tool_choice": self.req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            "tools": [],
            "top_p": self.req.top_p,
            "truncation": self.req.truncation.clone().unwrap_or_else(|| "disabled".into()),
            "usage": usage,
            "user": self.req.user,
            "metadata": self.req.metadata.clone().unwrap_or_default(),
        })
    }

    fn message_item(&self, text: &str, status: &str) -> Value {
        json!({
            "id": self.message_id(),
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        })
    }

    /// Builds the finished response object and stores it (unless `store` is false) before
    /// returning it; starts a summary when the conversation outgrew its budget.
    async fn finish(&self, mut context: Context, completion: &ChatCompletion) -> Value {
        let choice = completion.choices.first();
        let text = choice.map(|c| c.message.text_content()).unwrap_or_default();
        let outcome = Outcome {
            text: &text,
            usage: completion.usage,
            finish_reason: choice.and_then(|c| c.finish_reason.as_deref()),
        };
        let object = self.object(Some(&outcome));
        if self.req.store.unwrap_or(true) {
            context
                .messages
                .push(ChatMessage::text("assistant", text.clone()));
            context.tokens = crate::summaries::tokens_of(&self.gw, &context);
            let record = StoredRecord {
                owner: self.owner.clone(),
                version: 1,
                response: object.clone(),
                context,
            };
            persist(&self.gw, &self.id, &record).await;
            crate::summaries::summarize_response_if_long(&self.gw, &self.id, record);
        }
        object
    }
}

/// The Responses streaming events of a chat stream. The record is stored before
/// `response.completed` is sent.
fn stream_events(
    pending: Pending,
    context: Context,
    items: futures::stream::BoxStream<'static, StreamItem>,
) -> Response {
    struct State {
        pending: Pending,
        context: Option<Context>,
        items: futures::stream::BoxStream<'static, StreamItem>,
        seq: u64,
        started: bool,
        text: String,
        usage: Option<Usage>,
        finish_reason: Option<String>,
        done: bool,
    }
    impl State {
        fn event(&mut self, kind: &str, mut data: Value) -> Bytes {
            data["type"] = Value::String(kind.to_owned());
            data["sequence_number"] = Value::from(self.seq);
            self.seq += 1;
            Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
        }
    }
    let state = State {
        pending,
        context: Some(context),
        items,
        seq: 0,
        started: false,
        text: String::new(),
        usage: None,
        finish_reason: None,
        done: false,
    };
    let events = futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let mut out = Vec::new();
        if !s.started {
            s.started = true;
            let object = s.pending.object(None);
            out.push(s.event("response.created", json!({"response": object})));
            out.push(s.event("response.in_progress", json!({"response": object})));
            let item = s.pending.message_item("", "in_progress");
            let mut item = item;
            item["content"] = json!([]);
            out.push(s.event(
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            ));
            let item_id = s.pending.message_id();
            out.push(s.event(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
            ));
            return Some((Ok::<_, Infallible>(Bytes::from(out.concat())), s));
        }
        loop {
            match s.items.next().await {
                Some(StreamItem::Chunk { json, .. }) => {
                    let Ok(chunk) = serde_json::from_str::<tollgate_core::ChatChunk>(&json) else {
                        continue;
                    };
                    if let Some(u) = chunk.usage {
                        s.usage = Some(u);
                    }
                    let Some(choice) = chunk.choices.first() else {
                        continue;
                    };
                    if let Some(reason) = &choice.finish_reason {
                        s.finish_reason = Some(reason.clone());
                    }
                    let delta = choice.delta.content.clone().unwrap_or_default();
                    if delta.is_empty() {
                        continue;
                    }
                    s.text.push_str(&delta);
                    let item_id = s.pending.message_id();
                    let event = s.event(
                        "response.output_text.delta",
                        json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                               "delta": delta, "logprobs": []}),
                    );
                    return Some((Ok(event), s));
                }
                Some(StreamItem::Error(body)) => {
                    s.done = true;
                    let error = body.get("error").cloned().unwrap_or(Value::Null);
                    let event = s.event(
                        "error",
                        json!({"code": error.get("code").cloned().unwrap_or(Value::Null),
                               "message": error.get("message").cloned().unwrap_or(Value::Null),
                               "param": error.get("param").cloned().unwrap_or(Value::Null)}),
                    );
                    return Some((Ok(event), s));
                }
                Some(StreamItem::Done) | None => {
                    s.done = true;
                    let item_id = s.pending.message_id();
                    let text = s.text.clone();
                    out.push(s.event(
                        "response.output_text.done",
                        json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                               "text": text, "logprobs": []}),
                    ));
                    out.push(s.event(
                        "response.content_part.done",
                        json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                               "part": {"type": "output_text", "text": text, "annotations": []}}),
                    ));
                    let item = s.pending.message_item(&text, "completed");
                    out.push(s.event(
                        "response.output_item.done",
                        json!({"output_index": 0, "item": item}),
                    ));
                    let completion = completion_of(
                        &s.pending.req.model,
                        &text,
                        s.usage,
                        s.finish_reason.clone(),
                    );
                    let context = s.context.take().unwrap_or_default();
                    let object = s.pending.finish(context, &completion).await;
                    let kind = if object["status"] == "incomplete" {
                        "response.incomplete"
                    } else {
                        "response.completed"
                    };
                    out.push(s.event(kind, json!({"response": object})));
                    return Some((Ok(Bytes::from(out.concat())), s));
                }
            }
        }
    });
    crate::sse::event_stream(Body::from_stream(events))
}

/// A whole chat answer from what a stream carried.
fn completion_of(
    model: &str,
    text: &str,
    usage: Option<Usage>,
    finish_reason: Option<String>,
) -> ChatCompletion {
    let value = json!({
        "id": "chatcmpl-stream",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason}],
        "usage": usage,
    });
    serde_json::from_value(value).unwrap_or_else(|_| ChatCompletion {
        id: "chatcmpl-stream".into(),
        object: "chat.completion".into(),
        created: 0,
        model: model.to_owned(),
        choices: Vec::new(),
        usage,
        extra: Map::new(),
    })
}
