//! The fake upstream's Anthropic Messages API: `POST /v1/messages` with `x-api-key` and
//! `anthropic-version`, `max_tokens` required, answered as a message or as Anthropic's event
//! sequence (`message_start`, `content_block_start` / `_delta` / `_stop`, `message_delta`,
//! `message_stop`), with the same text and tool behaviour as the OpenAI side. Usage reports part
//! of the prompt as read from the prompt cache (4 input tokens + 6 cache read), as the real API
//! does for a cached prefix.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Shared, ToolAnswer, ToolTurn, answer_words, call_arguments, event_stream};

fn error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

fn bad_request(message: &str) -> Response {
    let body = error("invalid_request_error", message);
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

pub(super) async fn messages(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let n = match shared.admit(&request, key, error) {
        Ok(n) => n,
        Err(refused) => return refused.into_response(),
    };
    if headers.get("anthropic-version").is_none() {
        return bad_request("anthropic-version: header is required");
    }
    if request.get("max_tokens").and_then(Value::as_u64).is_none() {
        return bad_request("max_tokens: Field required");
    }
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake")
        .to_owned();
    // A text answer streams word by word, as the OpenAI side does; a tool's answer in one piece.
    let (answer, words) = match tool_answer(&request) {
        Some(ToolAnswer::Text(text)) => (ToolAnswer::Text(text.clone()), vec![text]),
        Some(calls) => (calls, Vec::new()),
        None => {
            let words: Vec<String> = answer_words(shared.config.chunks).collect();
            (ToolAnswer::Text(words.concat()), words)
        }
    };
    let blocks: Vec<Value> = match &answer {
        ToolAnswer::Text(text) => vec![json!({"type": "text", "text": text})],
        ToolAnswer::Calls(names) => names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                json!({"type": "tool_use", "id": format!("toolu_{n}_{i}"), "name": name,
                       "input": {"i": i}})
            })
            .collect(),
    };
    let stop_reason = match answer {
        ToolAnswer::Text(_) => "end_turn",
        ToolAnswer::Calls(_) => "tool_use",
    };
    let usage = json!({"input_tokens": 4, "cache_read_input_tokens": 6,
                       "cache_creation_input_tokens": 0, "output_tokens": words.len().max(1)});
    let delay = shared.config.chunk_delay;
    if request.get("stream") != Some(&Value::Bool(true)) {
        if !delay.is_zero() {
            tokio::time::sleep(delay * (words.len() as u32 + 3)).await;
        }
        return Json(json!({
            "id": format!("msg_fake_{n}"), "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": stop_reason, "stop_sequence": null, "usage": usage,
        }))
        .into_response();
    }
    let mut events = vec![json!({"type": "message_start", "message": {
        "id": format!("msg_fake_{n}"), "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 4, "cache_read_input_tokens": 6,
                  "cache_creation_input_tokens": 0, "output_tokens": 1},
    }})];
    events.push(json!({"type": "ping"}));
    for (index, block) in blocks.iter().enumerate() {
        if block["type"] == "text" {
            events.push(json!({"type": "content_block_start", "index": index,
                               "content_block": {"type": "text", "text": ""}}));
            for word in &words {
                events.push(json!({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "text_delta", "text": word}}));
            }
        } else {
            let mut start = block.clone();
            start["input"] = json!({});
            events.push(json!({"type": "content_block_start", "index": index,
                               "content_block": start}));
            // The arguments in two fragments, as the real API splits them.
            let arguments = call_arguments(index);
            let (a, b) = arguments.split_at(arguments.len() / 2);
            for part in [a, b] {
                events.push(json!({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "input_json_delta", "partial_json": part}}));
            }
        }
        events.push(json!({"type": "content_block_stop", "index": index}));
    }
    events.push(json!({"type": "message_delta",
                       "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                       "usage": {"output_tokens": usage["output_tokens"]}}));
    events.push(json!({"type": "message_stop"}));
    let frames = events
        .into_iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect();
    event_stream(frames, delay)
}

/// The tool turn of a Messages request: tools by `name`, `tool_choice` of type `tool` forces
/// one, `none` turns tools off, `disable_parallel_tool_use` allows one call; the results are the
/// `tool_result` blocks of the last user turn.
fn tool_answer(request: &Value) -> Option<ToolAnswer> {
    let tools = request.get("tools").and_then(Value::as_array)?;
    let choice = request.get("tool_choice");
    if choice.and_then(|c| c.get("type")) == Some(&json!("none")) {
        return None;
    }
    let last = request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())?;
    let results = match (last.get("role"), last.get("content")) {
        (Some(role), Some(Value::Array(blocks))) if role == "user" => blocks
            .iter()
            .filter(|b| b.get("type") == Some(&json!("tool_result")))
            .map(|b| match b.get("content") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect(),
                _ => String::new(),
            })
            .collect(),
        _ => Vec::new(),
    };
    ToolTurn {
        names: tools
            .iter()
            .filter_map(|t| t.get("name").and_then(Value::as_str))
            .collect(),
        forced: choice
            .filter(|c| c.get("type") == Some(&json!("tool")))
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str),
        parallel: choice.and_then(|c| c.get("disable_parallel_tool_use")) != Some(&json!(true)),
        results,
    }
    .answer()
}
