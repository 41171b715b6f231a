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
//! Records are kept by [`crate::response_store`]; the streaming events are built by
//! [`events`]. A key never reads another key's responses: they are "not found" to it, as
//! missing ones are.

pub mod events;

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tollgate_core::{ChatCompletion, ChatMessage, ChatRequest, Usage};
use tollgate_db::{DELETED, Record, ResponseRow};
use tracing::Instrument;

use crate::auth::Principal;
use crate::chat::{self, Answer, ChatOptions, ReplyMeta};
use crate::error::ApiError;
use crate::response_store::{Context, StoredRecord, load, persist};
use crate::state::Gateway;

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

/// A Responses answer: the response object, or its streaming events.
#[derive(Debug)]
pub struct ResponseReply {
    pub meta: ReplyMeta,
    pub body: ResponseBody,
}

/// The body of a Responses answer.
pub enum ResponseBody {
    /// The response object.
    Json(Value),
    /// Server-sent events, encoded.
    Events(BoxStream<'static, Bytes>),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBody::Json(v) => f.debug_tuple("Json").field(&v["id"]).finish(),
            ResponseBody::Events(_) => f.write_str("Events"),
        }
    }
}

impl IntoResponse for ResponseReply {
    fn into_response(self) -> Response {
        let mut response = match self.body {
            ResponseBody::Json(object) => Json(object).into_response(),
            ResponseBody::Events(events) => crate::sse::event_stream(Body::from_stream(
                futures::StreamExt::map(events, Ok::<_, std::convert::Infallible>),
            )),
        };
        self.meta.add_headers(&mut response);
        response
    }
}

/// Answers a Responses request (see the module docs); `opts` are the request's chat switches
/// (its `user` stands in for a missing `x-tollgate-user`).
pub async fn create_response(
    gw: &Arc<Gateway>,
    principal: &Principal,
    mut opts: ChatOptions,
    req: ResponsesRequest,
) -> Result<ResponseReply, ApiError> {
    check_supported(&req)?;
    let input = tollgate_core::responses::input_messages(&req.input)?;
    let previous = match &req.previous_response_id {
        Some(id) => Some(
            load(gw, id, &principal.subject)
                .await?
                .ok_or_else(|| previous_not_found(id))?,
        ),
        None => None,
    };
    let mut context = previous.map(|p| p.context).unwrap_or_default();
    let chat_req = chat_request(&req, &context, &input)?;
    opts.decoded = true;
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
        span: tracing::Span::current(),
    };
    context.messages.extend(pending.input.iter().cloned());
    let body = match reply.body.answer()? {
        Answer::Whole(completion) => ResponseBody::Json(pending.finish(context, &completion).await),
        Answer::Events(items) => {
            ResponseBody::Events(events::stream_events(pending, context, items))
        }
    };
    Ok(ResponseReply {
        meta: reply.meta,
        body,
    })
}

/// The chat request of a Responses request: its instructions, the chain's summary and turns,
/// its input.
fn chat_request(
    req: &ResponsesRequest,
    context: &Context,
    input: &[ChatMessage],
) -> Result<ChatRequest, ApiError> {
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
    let tools = req.tools.as_deref().unwrap_or_default();
    if !tools.is_empty() {
        chat_req["tools"] = Value::Array(tollgate_core::responses::chat_tools(tools)?);
        if let Some(parallel) = req.parallel_tool_calls {
            chat_req["parallel_tool_calls"] = Value::Bool(parallel);
        }
    }
    match &req.tool_choice {
        Some(choice) if !tools.is_empty() => {
            chat_req["tool_choice"] = tollgate_core::responses::chat_tool_choice(choice)?;
        }
        // Without tools, "auto" and "none" mean what no choice means.
        Some(Value::String(s)) if s == "auto" || s == "none" => {}
        Some(_) => {
            return Err(ApiError::bad(
                "`tool_choice` asks for a tool call but the request declares no `tools`",
                Some("tool_choice"),
            ));
        }
        None => {}
    }
    if stream {
        chat_req["stream_options"] = json!({"include_usage": true});
    }
    serde_json::from_value(chat_req).map_err(|e| ApiError::bad(e.to_string(), None))
}

/// The stored response `id`, as `GET /v1/responses/{id}` shows it.
pub async fn get_response(
    gw: &Gateway,
    principal: &Principal,
    id: &str,
) -> Result<Value, ApiError> {
    let record = load(gw, id, &principal.subject)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(record.response)
}

/// Deletes the stored response `id` (a tombstone in Redis, the deletion in the database).
pub async fn delete_response(
    gw: &Gateway,
    principal: &Principal,
    id: &str,
) -> Result<Value, ApiError> {
    let record = load(gw, id, &principal.subject)
        .await?
        .ok_or_else(|| not_found(id))?;
    if let Err(e) = gw.responses.delete(id).await {
        tracing::warn!(error = %e, "could not mark a response deleted in Redis");
    }
    crate::accounting::submit(
        gw,
        vec![Record::Response(ResponseRow {
            id: id.to_owned(),
            owner: record.owner,
            version: DELETED,
            created_ms: 0,
            body: String::new(),
        })],
    )
    .await;
    Ok(json!({"id": id, "object": "response", "deleted": true}))
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
    /// The request's span: a streamed response is stored after the handler returned, and its
    /// `response store` span still belongs to the request's trace.
    span: tracing::Span,
}

/// How an answer ended.
struct Outcome<'a> {
    text: &'a str,
    /// The chat `tool_calls` of the answer.
    calls: &'a [Value],
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
                    Value::Array(self.output(o.text, o.calls)),
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
            "parallel_tool_calls": self.req.parallel_tool_calls.unwrap_or(true),
            "previous_response_id": self.req.previous_response_id,
            "reasoning": {"effort": null, "summary": null},
            "store": self.req.store.unwrap_or(true),
            "temperature": self.req.temperature,
            "text": self.req.text.clone().unwrap_or_else(|| json!({"format": {"type": "text"}})),
            "tool_choice": self.req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            "tools": self.req.tools.clone().unwrap_or_default(),
            "top_p": self.req.top_p,
            "truncation": self.req.truncation.clone().unwrap_or_else(|| "disabled".into()),
            "usage": usage,
            "user": self.req.user,
            "metadata": self.req.metadata.clone().unwrap_or_default(),
        })
    }

    /// The output items: the message (when the model wrote text, or did nothing else), then
    /// its function calls in order.
    fn output(&self, text: &str, calls: &[Value]) -> Vec<Value> {
        let mut items = Vec::new();
        if !text.is_empty() || calls.is_empty() {
            items.push(self.message_item(text, "completed"));
        }
        for (k, call) in calls.iter().enumerate() {
            items.push(self.call_item(k, call, "completed"));
        }
        items
    }

    fn call_item_id(&self, k: usize) -> String {
        format!("fc_{}_{k}", &self.id["resp_".len()..])
    }

    /// The `function_call` item of the `k`-th chat tool call (`call`, whole or its first
    /// fragment).
    fn call_item(&self, k: usize, call: &Value, status: &str) -> Value {
        let call_id = call.get("id").and_then(Value::as_str).map_or_else(
            || format!("call_{}_{k}", &self.id["resp_".len()..]),
            str::to_owned,
        );
        json!({
            "id": self.call_item_id(k),
            "type": "function_call",
            "status": status,
            "call_id": call_id,
            "name": call.pointer("/function/name").cloned().unwrap_or(Value::from("")),
            "arguments": call.pointer("/function/arguments").cloned().unwrap_or(Value::from("")),
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
        let calls = choice
            .and_then(|c| c.message.extra.get("tool_calls"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let outcome = Outcome {
            text: &text,
            calls: &calls,
            usage: completion.usage,
            finish_reason: choice.and_then(|c| c.finish_reason.as_deref()),
        };
        let object = self.object(Some(&outcome));
        if self.req.store.unwrap_or(true) {
            // The chain keeps the calls with the turn that made them; their outputs come in the
            // next request's input.
            let mut answer = ChatMessage::text("assistant", text.clone());
            if !calls.is_empty() {
                if text.is_empty() {
                    answer.content = Value::Null;
                }
                answer
                    .extra
                    .insert("tool_calls".into(), Value::Array(calls));
            }
            context.messages.push(answer);
            context.tokens = crate::summaries::tokens_of(&self.gw, &context);
            let record = StoredRecord {
                owner: self.owner.clone(),
                version: 1,
                response: object.clone(),
                context,
            };
            let span = tracing::info_span!(
                target: "otel",
                parent: &self.span,
                "response store",
                "gen_ai.response.id" = %self.id,
                "tollgate.context_messages" = record.context.messages.len(),
                "tollgate.context_tokens" = record.context.tokens,
            );
            persist(&self.gw, &self.id, &record).instrument(span).await;
            crate::summaries::summarize_response_if_long(&self.gw, &self.id, record);
        }
        object
    }
}
