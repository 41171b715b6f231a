//! The Anthropic Messages API, translated both ways.
//!
//! A chat request becomes a Messages request: system and developer messages move to `system`;
//! turns of one role are merged (Messages alternate); text and image parts become content blocks
//! (a `data:` URL a base64 image, an `https` URL an image by URL); an assistant's `tool_calls`
//! become `tool_use` blocks and `tool` messages `tool_result` blocks; function `tools`,
//! `tool_choice` and `parallel_tool_calls` map to their Messages forms; `response_format`
//! (`json_schema`, `json_object`) becomes a forced tool whose input is the answer's text; `stop`
//! becomes `stop_sequences`, `user` `metadata.user_id`; `max_tokens` is required and defaults to
//! 1024. A field the Messages API cannot take is refused with a 400 naming it, never dropped.
//!
//! Stream events become chat chunks: text deltas, `tool_use` blocks as `tool_calls` deltas (their
//! `input_json_delta` fragments as argument fragments), the stop reason, and usage
//! (`input_tokens` with the cache's creation and read tokens from `message_start`,
//! `output_tokens` from `message_delta`).

use std::collections::HashMap;

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tollgate_core::{ChatChunk, ChatRequest, Delta, Usage};

use crate::openai_compat::{
    EventParser, Parsed, Timeouts, chunk_stream, endpoint, http_client, send,
};
use crate::sse::SseEvent;
use crate::translate::{self, Image, Part, Refuse};
use crate::{ChunkStream, Provider, ProviderError, unix_now};

const DEFAULT_MAX_TOKENS: u32 = 1024;

/// The forced tool that carries a structured answer (`response_format`).
const FORMAT_TOOL: &str = "json_output";

/// The Anthropic Messages API.
#[derive(Debug, Clone)]
pub struct Anthropic {
    client: reqwest::Client,
    /// Parsed once: a call does not parse it again.
    url: reqwest::Url,
    api_key: String,
    timeouts: Timeouts,
}

impl Anthropic {
    /// `base_url` ends before `/v1/messages` (e.g. `https://api.anthropic.com`).
    pub fn new(base_url: &str, api_key: String, timeouts: Timeouts) -> Result<Self, ProviderError> {
        let client = http_client(&timeouts)?;
        Ok(Anthropic {
            client,
            url: endpoint(base_url, "v1/messages")?,
            api_key,
            timeouts,
        })
    }
}

const R: Refuse = Refuse("Anthropic");

fn refuse(field: &str, why: &str) -> ProviderError {
    R.at(field, why)
}

/// The Messages request for an OpenAI chat request.
pub fn to_messages_request(request: &ChatRequest) -> Result<Value, ProviderError> {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for (i, m) in request.messages.iter().enumerate() {
        translate::check_fields(R, i, m)?;
        let (role, blocks) = match m.role.as_str() {
            "system" | "developer" => {
                for text in translate::texts(R, i, &m.content, "system")? {
                    system.push(text.to_owned());
                }
                continue;
            }
            "user" => ("user", content_blocks(i, &m.content)?),
            "assistant" => {
                let mut blocks = content_blocks(i, &m.content)?;
                let calls = m.extra.get("tool_calls").and_then(Value::as_array);
                for (j, call) in calls.into_iter().flatten().enumerate() {
                    blocks.push(tool_use_block(i, j, call)?);
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = translate::tool_call_id(R, i, m)?;
                let text = translate::texts(R, i, &m.content, "tool")?.join("\n");
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": text})],
                )
            }
            other => return Err(translate::unknown_role(R, i, other)),
        };
        translate::push_turn(&mut messages, role, "content", blocks);
    }
    // A turn of one text block is sent as a plain string.
    for m in &mut messages {
        if let Some([block]) = m["content"].as_array().map(Vec::as_slice)
            && block["type"] == "text"
        {
            m["content"] = block["text"].clone();
        }
    }
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_output_tokens().unwrap_or(DEFAULT_MAX_TOKENS),
        "stream": true,
    });
    if !system.is_empty() {
        body["system"] = Value::String(system.join("\n\n"));
    }
    if let Some(t) = request.temperature {
        if t > 1.0 {
            return Err(refuse("temperature", "above 1 is not supported"));
        }
        body["temperature"] = json!(t);
    }
    if let Some(p) = request.top_p {
        body["top_p"] = json!(p);
    }
    if request.n.is_some_and(|n| n > 1) {
        return Err(refuse("n", "above 1 is not supported"));
    }
    if request.seed.is_some() {
        return Err(refuse("seed", "is not supported"));
    }
    for (k, v) in &request.extra {
        match k.as_str() {
            "stop" => match v {
                Value::String(s) => body["stop_sequences"] = json!([s]),
                Value::Array(a) => body["stop_sequences"] = Value::Array(a.clone()),
                Value::Null => {}
                _ => return Err(refuse("stop", "must be a string or an array of strings")),
            },
            "tools" => body["tools"] = tools(v)?,
            "tool_choice" => body["tool_choice"] = tool_choice(v)?,
            "parallel_tool_calls" | "response_format" | "stream_options" => {}
            "user" => {
                if let Some(user) = v.as_str() {
                    body["metadata"] = json!({"user_id": user});
                }
            }
            // What a request may carry at its neutral value.
            "logprobs" if v.is_null() || v == &json!(false) => {}
            "presence_penalty" | "frequency_penalty" if v.is_null() || v.as_f64() == Some(0.0) => {}
            "logit_bias" if v.is_null() || v.as_object().is_some_and(Map::is_empty) => {}
            other => return Err(refuse(other, "is not supported")),
        }
    }
    if request.extra.get("parallel_tool_calls") == Some(&Value::Bool(false))
        && body.get("tools").is_some()
    {
        if body.get("tool_choice").is_none() {
            body["tool_choice"] = json!({"type": "auto"});
        }
        body["tool_choice"]["disable_parallel_tool_use"] = Value::Bool(true);
    }
    if let Some(format) = request.extra.get("response_format") {
        structured_output(&mut body, format)?;
    }
    Ok(body)
}

/// A message's content as Messages content blocks (empty text left out).
fn content_blocks(i: usize, content: &Value) -> Result<Vec<Value>, ProviderError> {
    translate::parts(R, i, content)?
        .into_iter()
        .map(|part| match part {
            Part::Text(text) => Ok(json!({"type": "text", "text": text})),
            Part::Image { at, image } => image_block(i, at, image),
        })
        .collect()
}

/// An image as an image block: a `data:` URL inline (base64), an http(s) URL by reference.
fn image_block(i: usize, j: usize, image: Image<'_>) -> Result<Value, ProviderError> {
    match image {
        Image::Inline { mime, data } => Ok(json!({"type": "image", "source":
            {"type": "base64", "media_type": mime, "data": data}})),
        Image::Url(url) if url.starts_with("https://") || url.starts_with("http://") => {
            Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
        }
        Image::Url(_) => Err(refuse(
            &format!("messages[{i}].content[{j}].image_url.url"),
            "must be an http(s) or data URL",
        )),
    }
}

/// An assistant's tool call as a `tool_use` block.
fn tool_use_block(i: usize, j: usize, call: &Value) -> Result<Value, ProviderError> {
    let (id, name, input) = translate::tool_call(R, i, j, call)?;
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

/// Function tools as Messages tools.
fn tools(v: &Value) -> Result<Value, ProviderError> {
    let tools = translate::function_tools(R, v)?
        .into_iter()
        .map(|f| {
            let mut out = json!({
                "name": f.name,
                "input_schema": f.parameters.cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            });
            if let Some(d) = f.description {
                out["description"] = Value::from(d);
            }
            if let Some(strict) = f.strict {
                out["strict"] = strict.clone();
            }
            out
        })
        .collect();
    Ok(Value::Array(tools))
}

/// A chat `tool_choice` as a Messages one.
fn tool_choice(v: &Value) -> Result<Value, ProviderError> {
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "required" => Ok(json!({"type": "any"})),
            "none" => Ok(json!({"type": "none"})),
            _ => Err(refuse("tool_choice", &format!("{s:?} is not supported"))),
        },
        _ => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if v["type"] == "function" => Ok(json!({"type": "tool", "name": name})),
            _ => Err(refuse(
                "tool_choice",
                "must be auto, none, required or a function",
            )),
        },
    }
}

/// `response_format` as a forced tool whose input is the answer (see [`event_parser`]).
fn structured_output(body: &mut Value, format: &Value) -> Result<(), ProviderError> {
    let schema = match format.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(()),
        Some("json_object") => json!({"type": "object"}),
        Some("json_schema") => format
            .pointer("/json_schema/schema")
            .cloned()
            .ok_or_else(|| refuse("response_format.json_schema.schema", "is required"))?,
        _ => {
            return Err(refuse(
                "response_format.type",
                "is not one of text, json_object, json_schema",
            ));
        }
    };
    if body.get("tools").is_some() {
        return Err(refuse(
            "response_format",
            "together with tools is not supported",
        ));
    }
    body["tools"] = json!([{"name": FORMAT_TOOL, "description":
        "Give the answer as this tool's input, matching its schema.", "input_schema": schema}]);
    body["tool_choice"] = json!({"type": "tool", "name": FORMAT_TOOL});
    Ok(())
}

fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// A parser of Messages stream events into chat chunks (it keeps the message id, usage and the
/// open tool calls). `structured`: the request asked for a structured answer, so the forced
/// tool's input is the answer's text.
pub fn event_parser(
    model: String,
    structured: bool,
) -> impl FnMut(&SseEvent) -> Result<Vec<ChatChunk>, ProviderError> + Send {
    let created = unix_now();
    let mut id = String::new();
    let mut usage = Usage::default();
    // Content block index -> the tool call's index in the chat stream (None: the answer).
    let mut calls: HashMap<u64, Option<usize>> = HashMap::new();
    move |event| {
        if event.data.trim().is_empty() {
            return Ok(Vec::new());
        }
        let v: Value = serde_json::from_str(&event.data)
            .map_err(|e| ProviderError::Protocol(format!("bad event: {e}")))?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(event.event.as_str());
        if kind == "message_start" {
            id = v
                .pointer("/message/id")
                .and_then(Value::as_str)
                .unwrap_or("msg")
                .to_owned();
        }
        let chunk = |delta: Delta, finish: Option<String>| {
            ChatChunk::delta(&id, created, &model, 0, delta, finish)
        };
        let text = |text: &str| Delta {
            content: Some(text.to_owned()),
            ..Delta::default()
        };
        let block = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        Ok(match kind {
            "message_start" => {
                let tokens = |field: &str| {
                    v.pointer(&format!("/message/usage/{field}"))
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                };
                // Tokens read from or written to the prompt cache are prompt tokens too.
                usage.prompt_tokens = tokens("input_tokens")
                    + tokens("cache_creation_input_tokens")
                    + tokens("cache_read_input_tokens");
                vec![chunk(
                    Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                        ..Delta::default()
                    },
                    None,
                )]
            }
            "content_block_start"
                if v.pointer("/content_block/type") == Some(&json!("tool_use")) =>
            {
                if structured {
                    calls.insert(block, None);
                    return Ok(Vec::new());
                }
                let index = calls.values().filter(|c| c.is_some()).count();
                calls.insert(block, Some(index));
                let call = json!({
                    "index": index,
                    "id": v.pointer("/content_block/id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": v.pointer("/content_block/name").cloned().unwrap_or(Value::Null),
                        "arguments": "",
                    },
                });
                vec![chunk(
                    Delta {
                        tool_calls: Some(vec![call]),
                        ..Delta::default()
                    },
                    None,
                )]
            }
            "content_block_delta" => match v.pointer("/delta/type").and_then(Value::as_str) {
                Some("text_delta") => match v.pointer("/delta/text").and_then(Value::as_str) {
                    Some(t) => vec![chunk(text(t), None)],
                    None => Vec::new(),
                },
                Some("input_json_delta") => {
                    let part = v
                        .pointer("/delta/partial_json")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    match calls.get(&block) {
                        Some(None) => vec![chunk(text(part), None)],
                        Some(Some(index)) => vec![chunk(
                            Delta {
                                tool_calls: Some(vec![
                                    json!({"index": index, "function": {"arguments": part}}),
                                ]),
                                ..Delta::default()
                            },
                            None,
                        )],
                        None => Vec::new(),
                    }
                }
                _ => Vec::new(),
            },
            "message_delta" => {
                if let Some(out) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    usage.completion_tokens = out;
                }
                match v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    // The forced tool was the answer: it ended as an answer does.
                    Some("tool_use") if structured => {
                        vec![chunk(Delta::default(), Some("stop".into()))]
                    }
                    Some(reason) => {
                        vec![chunk(Delta::default(), Some(finish_reason(reason).into()))]
                    }
                    None => Vec::new(),
                }
            }
            "message_stop" => {
                usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
                vec![ChatChunk::usage_only(&id, created, &model, usage)]
            }
            "error" => {
                let message = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error")
                    .to_owned();
                return Err(ProviderError::Upstream {
                    status: 500,
                    message,
                });
            }
            _ => Vec::new(),
        })
    }
}

impl Provider for Anthropic {
    fn chat_stream(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<ChunkStream, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let body = to_messages_request(&request)?;
            let structured = body.pointer("/tool_choice/name") == Some(&json!(FORMAT_TOOL));
            let call = crate::with_trace_context(
                this.client
                    .post(this.url.clone())
                    .header("x-api-key", &this.api_key)
                    .header("anthropic-version", "2023-06-01")
                    .header("content-type", "application/json")
                    .body(body.to_string()),
            );
            let response = send(call, this.timeouts.first_byte).await?;
            let mut parse = event_parser(request.model.clone(), structured);
            let mut ended = false;
            let parser: EventParser = Box::new(move |event| {
                if ended {
                    return Ok(Parsed::Skip);
                }
                let chunks = parse(event)?;
                if event.event == "message_stop" || event.data.contains("\"message_stop\"") {
                    ended = true;
                }
                Ok(if chunks.is_empty() {
                    Parsed::Skip
                } else {
                    Parsed::Chunks(chunks)
                })
            });
            Ok(chunk_stream(response, this.timeouts.idle, parser))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_prompts_move_to_system_and_turns_alternate() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "claude-x", "max_tokens": 50, "stop": "END",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"}
            ]
        }))
        .unwrap();
        let body = to_messages_request(&req).unwrap();
        assert_eq!(body["system"], "Be brief.");
        // Two user turns in a row become one turn of two text blocks.
        assert_eq!(
            body["messages"][0],
            json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})
        );
        assert_eq!(body["messages"][1]["role"], "assistant");
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(body["stop_sequences"], json!(["END"]));
    }

    #[test]
    fn stream_events_become_chunks_with_usage() {
        let mut parse = event_parser("claude-x".into(), false);
        let ev = |e: &str, d: Value| SseEvent {
            event: e.into(),
            data: d.to_string(),
            id: None,
        };
        let mut agg = tollgate_core::Aggregator::default();
        for (e, d) in [
            (
                "message_start",
                json!({"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":12}}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","delta":{"type":"text_delta","text":"Hi"}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","delta":{"type":"text_delta","text":" there"}}),
            ),
            (
                "message_delta",
                json!({"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":2}}),
            ),
            ("message_stop", json!({"type":"message_stop"})),
        ] {
            for c in parse(&ev(e, d)).unwrap() {
                agg.push(&c);
            }
        }
        let done = agg.finish();
        assert_eq!(done.choices[0].message.text_content(), "Hi there");
        assert_eq!(done.choices[0].finish_reason.as_deref(), Some("length"));
        assert_eq!(
            done.usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 2,
                total_tokens: 14
            })
        );
        assert_eq!(done.id, "msg_1");
    }

    fn ev(e: &str, d: Value) -> SseEvent {
        SseEvent {
            event: e.into(),
            data: d.to_string(),
            id: None,
        }
    }

    #[test]
    fn tools_images_and_tool_turns_are_translated_field_by_field() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "claude-x", "parallel_tool_calls": false, "tool_choice": "required",
            "user": "u-1", "logprobs": false, "presence_penalty": 0,
            "tools": [
                {"type": "function", "function": {"name": "weather", "description": "Weather",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": true}},
                {"type": "function", "function": {"name": "time"}}
            ],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg", "detail": "auto"}}
                ]},
                {"role": "assistant", "content": "Let me look.", "refusal": null, "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "noon"}]},
                {"role": "user", "content": "thanks"}
            ]
        }))
        .unwrap();
        let body = to_messages_request(&req).unwrap();
        assert_eq!(
            body["tools"],
            json!([
                {"name": "weather", "description": "Weather", "strict": true,
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "time", "input_schema": {"type": "object", "properties": {}}}
            ])
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(body["metadata"], json!({"user_id": "u-1"}));
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "noon"},
                    {"type": "text", "text": "thanks"}
                ]}
            ])
        );
        for (choice, expected) in [
            (json!("auto"), json!({"type": "auto"})),
            (json!("none"), json!({"type": "none"})),
            (
                json!({"type": "function", "function": {"name": "time"}}),
                json!({"type": "tool", "name": "time"}),
            ),
        ] {
            assert_eq!(tool_choice(&choice).unwrap(), expected);
        }
    }

    #[test]
    fn what_the_messages_api_cannot_take_is_refused_by_name() {
        let base = json!({"model": "claude-x", "messages": [{"role": "user", "content": "x"}]});
        for (patch, field) in [
            (json!({"temperature": 1.5}), "`temperature`"),
            (json!({"seed": 7}), "`seed`"),
            (json!({"n": 2}), "`n`"),
            (json!({"logprobs": true}), "`logprobs`"),
            (json!({"top_logprobs": 2}), "`top_logprobs`"),
            (json!({"frequency_penalty": 0.5}), "`frequency_penalty`"),
            (json!({"store": true}), "`store`"),
            (
                json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
                "`tools[0].type`",
            ),
            (json!({"tool_choice": "sometimes"}), "`tool_choice`"),
            (
                json!({"response_format": {"type": "json_object"}, "tools": [{"type": "function", "function": {"name": "f"}}]}),
                "`response_format`",
            ),
            (
                json!({"messages": [{"role": "user", "name": "ada", "content": "x"}]}),
                "`messages[0].name`",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
                "`messages[0].content[0].type`",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://e.com/a.png", "detail": "high"}}]}]}),
                "`messages[0].content[0].image_url.detail`",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "{oops"}}]}]}),
                "`messages[0].tool_calls[0].function.arguments`",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "`messages[0].tool_call_id`",
            ),
        ] {
            let mut body = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            let req: ChatRequest = serde_json::from_value(body.clone()).unwrap();
            match to_messages_request(&req) {
                Err(ProviderError::Rejected {
                    status: 400,
                    message,
                }) => {
                    assert!(message.contains(field), "{body}: {message}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn tool_use_streams_fold_into_tool_calls_with_cache_tokens_counted() {
        let mut parse = event_parser("claude-x".into(), false);
        let mut agg = tollgate_core::Aggregator::default();
        for (e, d) in [
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_2",
                "usage": {"input_tokens": 5, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 900}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "time", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ] {
            for c in parse(&ev(e, d)).unwrap() {
                agg.push(&c);
            }
        }
        let done = agg.finish();
        let choice = &done.choices[0];
        assert_eq!(choice.message.text_content(), "Checking.");
        assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            choice.message.extra["tool_calls"],
            json!([
                {"id": "toolu_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}},
                {"id": "toolu_b", "type": "function", "function": {"name": "time", "arguments": "{}"}}
            ])
        );
        assert_eq!(
            done.usage,
            Some(Usage {
                prompt_tokens: 1005,
                completion_tokens: 30,
                total_tokens: 1035
            })
        );
    }

    #[test]
    fn a_structured_answer_goes_through_a_forced_tool_and_comes_back_as_text() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "claude-x", "messages": [{"role": "user", "content": "a city"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "city",
                "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}}
        }))
        .unwrap();
        let body = to_messages_request(&req).unwrap();
        assert_eq!(body["tools"][0]["name"], FORMAT_TOOL);
        assert_eq!(
            body["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {"name": {"type": "string"}}})
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": FORMAT_TOOL})
        );
        let mut parse = event_parser("claude-x".into(), true);
        let mut agg = tollgate_core::Aggregator::default();
        for (e, d) in [
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": FORMAT_TOOL, "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"name\": "}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "\"Lyon\"}"}}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 6}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ] {
            for c in parse(&ev(e, d)).unwrap() {
                agg.push(&c);
            }
        }
        let done = agg.finish();
        assert_eq!(
            done.choices[0].message.text_content(),
            "{\"name\": \"Lyon\"}"
        );
        assert_eq!(done.choices[0].finish_reason.as_deref(), Some("stop"));
        assert!(!done.choices[0].message.extra.contains_key("tool_calls"));
    }
}
