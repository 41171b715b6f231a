//! The Anthropic Messages API, translated both ways: OpenAI chat requests become Messages
//! requests (system prompts move to `system`, `max_tokens` is required and defaults to 1024,
//! `stop` becomes `stop_sequences`), and Messages stream events become chat chunks with usage
//! (`input_tokens` from `message_start`, `output_tokens` from `message_delta`).
//! Tool use is not translated yet: requests with `tools` are rejected with a clear error.

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tollgate_core::{ChatChunk, ChatRequest, Delta, Usage};

use crate::openai_compat::{EventParser, Parsed, Timeouts, chunk_stream, http_client, send};
use crate::sse::SseEvent;
use crate::{ChunkStream, Provider, ProviderError, unix_now};

const DEFAULT_MAX_TOKENS: u32 = 1024;

/// The Anthropic Messages API.
#[derive(Debug, Clone)]
pub struct Anthropic {
    client: reqwest::Client,
    url: String,
    api_key: String,
    timeouts: Timeouts,
}

impl Anthropic {
    /// `base_url` ends before `/v1/messages` (e.g. `https://api.anthropic.com`).
    pub fn new(base_url: &str, api_key: String, timeouts: Timeouts) -> Result<Self, ProviderError> {
        let client = http_client(&timeouts)?;
        Ok(Anthropic {
            client,
            url: format!("{}/v1/messages", base_url.trim_end_matches('/')),
            api_key,
            timeouts,
        })
    }
}

/// The Messages request for an OpenAI chat request.
pub fn to_messages_request(request: &ChatRequest) -> Result<Value, ProviderError> {
    if request.extra.contains_key("tools") {
        return Err(ProviderError::Rejected {
            status: 400,
            message: "tools are not supported for Anthropic models yet".into(),
        });
    }
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in &request.messages {
        match m.role.as_str() {
            "system" | "developer" => system.push(m.text_content()),
            "user" | "assistant" => {
                let role = m.role.as_str();
                let text = m.text_content();
                // Messages must alternate; merge consecutive turns of one role.
                match messages.last_mut() {
                    Some(last) if last["role"] == role => {
                        let joined = format!(
                            "{}\n\n{}",
                            last["content"].as_str().unwrap_or_default(),
                            text
                        );
                        last["content"] = Value::String(joined);
                    }
                    _ => messages.push(json!({"role": role, "content": text})),
                }
            }
            other => {
                return Err(ProviderError::Rejected {
                    status: 400,
                    message: format!("role {other:?} is not supported for Anthropic models"),
                });
            }
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
        body["temperature"] = json!(t.min(1.0));
    }
    if let Some(p) = request.top_p {
        body["top_p"] = json!(p);
    }
    match request.extra.get("stop") {
        Some(Value::String(s)) => body["stop_sequences"] = json!([s]),
        Some(Value::Array(a)) => body["stop_sequences"] = Value::Array(a.clone()),
        _ => {}
    }
    Ok(body)
}

fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// A parser of Messages stream events into chat chunks (it keeps the message id and usage).
pub fn event_parser(
    model: String,
) -> impl FnMut(&SseEvent) -> Result<Vec<ChatChunk>, ProviderError> + Send {
    let created = unix_now();
    let mut id = String::new();
    let mut usage = Usage::default();
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
        Ok(match kind {
            "message_start" => {
                usage.prompt_tokens = v
                    .pointer("/message/usage/input_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                vec![chunk(
                    Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                        ..Delta::default()
                    },
                    None,
                )]
            }
            "content_block_delta" => match v.pointer("/delta/text").and_then(Value::as_str) {
                Some(text) => vec![chunk(
                    Delta {
                        content: Some(text.to_owned()),
                        ..Delta::default()
                    },
                    None,
                )],
                None => Vec::new(),
            },
            "message_delta" => {
                if let Some(out) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    usage.completion_tokens = out;
                }
                match v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    Some(reason) => {
                        vec![chunk(Delta::default(), Some(finish_reason(reason).into()))]
                    }
                    None => Vec::new(),
                }
            }
            "message_stop" => {
                usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
                let mut last = chunk(Delta::default(), None);
                last.choices.clear();
                last.usage = Some(usage);
                vec![last]
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
            let call = this
                .client
                .post(&this.url)
                .header("x-api-key", &this.api_key)
                .header("anthropic-version", "2023-06-01")
                .header("content-type", "application/json")
                .body(body.to_string());
            let response = send(call, this.timeouts.first_byte).await?;
            let mut parse = event_parser(request.model.clone());
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
        assert_eq!(
            body["messages"][0],
            json!({"role": "user", "content": "a\n\nb"})
        );
        assert_eq!(body["messages"][1]["role"], "assistant");
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(body["stop_sequences"], json!(["END"]));
    }

    #[test]
    fn stream_events_become_chunks_with_usage() {
        let mut parse = event_parser("claude-x".into());
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
}
