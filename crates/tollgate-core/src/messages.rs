//! Anthropic's Messages API as chat: a `POST /v1/messages` body becomes a chat request (so it
//! goes down the chat path in front of any provider), and a chat answer becomes a Messages
//! answer. Pure, so it can be fuzzed and tested without a server.
//!
//! Requests: `system` (a string or text blocks) becomes a system message; text blocks text
//! parts; image blocks (base64 or URL) `image_url` parts; an assistant's `tool_use` blocks
//! `tool_calls`; a user's `tool_result` blocks `tool` messages (before the rest of that turn);
//! `tools`, `tool_choice` (with `disable_parallel_tool_use`), `stop_sequences`, `temperature`,
//! `top_p`, `max_tokens`, `metadata.user_id` their chat forms. `cache_control` marks are
//! caching hints for Anthropic's servers and change no answer: they are accepted and have no
//! effect. What chat cannot express (`top_k`, extended thinking, document blocks, server tools)
//! is refused, naming the field.

use serde_json::{Map, Value, json};

use crate::chat::{ChatCompletion, InvalidRequest};

fn bad(message: impl Into<String>, param: &str) -> InvalidRequest {
    InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// The chat request (as JSON, ready to deserialize) of a Messages request.
pub fn to_chat(body: &Value) -> Result<Value, InvalidRequest> {
    let obj = body
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object", "body"))?;
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("`model` is required", "model"))?;
    let max_tokens = obj
        .get("max_tokens")
        .and_then(Value::as_u64)
        .filter(|m| *m > 0)
        .ok_or_else(|| {
            bad(
                "`max_tokens` is required (a positive integer)",
                "max_tokens",
            )
        })?;
    let mut messages = Vec::new();
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (i, block) in blocks.iter().enumerate() {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(text_of(block, &format!("system[{i}]"))?),
                    _ => {
                        return Err(bad(
                            "system blocks must be text",
                            &format!("system[{i}].type"),
                        ));
                    }
                }
            }
            messages.push(json!({"role": "system", "content": texts.join("\n")}));
        }
        Some(_) => return Err(bad("`system` must be a string or text blocks", "system")),
    }
    let turns = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("`messages` must be a non-empty array", "messages"))?;
    for (i, turn) in turns.iter().enumerate() {
        messages.extend(turn_to_chat(i, turn)?);
    }
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let mut chat = json!({
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": stream,
    });
    if stream {
        chat["stream_options"] = json!({"include_usage": true});
    }
    for (k, v) in obj {
        match k.as_str() {
            "model" | "max_tokens" | "system" | "messages" | "stream" => {}
            "temperature" | "top_p" => {
                if !v.is_null() {
                    chat[k.as_str()] = v.clone();
                }
            }
            "stop_sequences" => {
                if !v.is_null() {
                    chat["stop"] = v.clone();
                }
            }
            "metadata" => {
                if let Some(user) = v.get("user_id").and_then(Value::as_str) {
                    chat["user"] = Value::from(user);
                }
            }
            "tools" => chat["tools"] = tools(v)?,
            "tool_choice" => tool_choice(v, &mut chat)?,
            "top_k" | "thinking" | "container" | "mcp_servers" | "service_tier" if v.is_null() => {}
            other => {
                return Err(bad(
                    format!("`{other}` is not supported by this gateway's Messages API"),
                    other,
                ));
            }
        }
    }
    Ok(chat)
}

fn text_of(block: &Value, at: &str) -> Result<String, InvalidRequest> {
    block
        .get("text")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| bad("a text block needs `text`", &format!("{at}.text")))
}

/// One Messages turn as chat messages: a user turn's tool results come first, as `tool`
/// messages, then the rest of the turn.
fn turn_to_chat(i: usize, turn: &Value) -> Result<Vec<Value>, InvalidRequest> {
    let at = format!("messages[{i}]");
    let role = turn.get("role").and_then(Value::as_str).unwrap_or("");
    if role != "user" && role != "assistant" {
        return Err(bad(
            format!("role {role:?} is not one of user, assistant"),
            &format!("{at}.role"),
        ));
    }
    let blocks = match turn.get("content") {
        Some(Value::String(s)) => return Ok(vec![json!({"role": role, "content": s})]),
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(bad(
                "`content` must be a string or an array of blocks",
                &format!("{at}.content"),
            ));
        }
    };
    let mut out = Vec::new();
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{at}.content[{j}]");
        match (role, block.get("type").and_then(Value::as_str)) {
            (_, Some("text")) => parts.push(json!({"type": "text", "text": text_of(block, &at)?})),
            ("user", Some("image")) => parts.push(image_part(block, &at)?),
            ("assistant", Some("tool_use")) => {
                let id = block.get("id").and_then(Value::as_str);
                let name = block.get("name").and_then(Value::as_str);
                let (Some(id), Some(name)) = (id, name) else {
                    return Err(bad("a tool_use block needs `id` and `name`", &at));
                };
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function",
                                  "function": {"name": name, "arguments": input.to_string()}}));
            }
            ("user", Some("tool_result")) => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        bad(
                            "a tool_result needs `tool_use_id`",
                            &format!("{at}.tool_use_id"),
                        )
                    })?;
                let mut content = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => inner
                        .iter()
                        .enumerate()
                        .map(|(k, b)| match b.get("type").and_then(Value::as_str) {
                            Some("text") => text_of(b, &format!("{at}.content[{k}]")),
                            _ => Err(bad(
                                "tool_result content must be text",
                                &format!("{at}.content[{k}].type"),
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .join("\n"),
                    Some(_) => {
                        return Err(bad("bad tool_result content", &format!("{at}.content")));
                    }
                };
                // Chat has no error flag on a tool result: the text says it.
                if block.get("is_error") == Some(&Value::Bool(true)) {
                    content = format!("Error: {content}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            (_, other) => {
                return Err(bad(
                    format!(
                        "{:?} blocks are not supported in a {role} turn",
                        other.unwrap_or("")
                    ),
                    &format!("{at}.type"),
                ));
            }
        }
    }
    if !parts.is_empty() || !calls.is_empty() {
        let only_text = parts.iter().all(|p| p["type"] == "text");
        let content = if parts.is_empty() {
            Value::Null
        } else if only_text {
            Value::from(
                parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        } else {
            Value::Array(parts)
        };
        let mut message = json!({"role": role, "content": content});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        out.push(message);
    }
    Ok(out)
}

fn image_part(block: &Value, at: &str) -> Result<Value, InvalidRequest> {
    let source = &block["source"];
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str);
            let data = source.get("data").and_then(Value::as_str);
            let (Some(media), Some(data)) = (media, data) else {
                return Err(bad(
                    "a base64 image needs `media_type` and `data`",
                    &format!("{at}.source"),
                ));
            };
            format!("data:{media};base64,{data}")
        }
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a URL image needs `url`", &format!("{at}.source.url")))?
            .to_owned(),
        _ => {
            return Err(bad(
                "an image source is base64 or url",
                &format!("{at}.source.type"),
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn tools(v: &Value) -> Result<Value, InvalidRequest> {
    let tools = v
        .as_array()
        .ok_or_else(|| bad("`tools` must be an array", "tools"))?;
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            // Client tools have no `type` (or `custom`); typed ones run on Anthropic's servers.
            match tool.get("type").and_then(Value::as_str) {
                None | Some("custom") => {}
                Some(other) => {
                    return Err(bad(
                        format!("the server tool {other:?} cannot run through this gateway"),
                        &format!("tools[{i}].type"),
                    ));
                }
            }
            let name = tool
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("a tool needs `name`", &format!("tools[{i}].name")))?;
            let mut function = Map::new();
            function.insert("name".into(), Value::from(name));
            if let Some(d) = tool.get("description").and_then(Value::as_str) {
                function.insert("description".into(), Value::from(d));
            }
            function.insert(
                "parameters".into(),
                tool.get("input_schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            );
            Ok(json!({"type": "function", "function": function}))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn tool_choice(v: &Value, chat: &mut Value) -> Result<(), InvalidRequest> {
    let choice = match v.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match v.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => {
                return Err(bad(
                    "a tool choice of type tool needs `name`",
                    "tool_choice.name",
                ));
            }
        },
        _ => {
            return Err(bad(
                "`tool_choice.type` is one of auto, any, tool, none",
                "tool_choice.type",
            ));
        }
    };
    chat["tool_choice"] = choice;
    if v.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
        chat["parallel_tool_calls"] = Value::Bool(false);
    }
    Ok(())
}

/// The Messages `stop_reason` of a chat `finish_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// The `tool_use` block of a chat tool call: its arguments parsed (none: `{}`; text that is not
/// JSON stays a string, as the model wrote it).
pub fn tool_use_block(call: &Value) -> Value {
    let arguments = call
        .pointer("/function/arguments")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let input = if arguments.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(arguments).unwrap_or_else(|_| Value::from(arguments))
    };
    json!({
        "type": "tool_use",
        "id": call.get("id").cloned().unwrap_or(Value::Null),
        "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
        "input": input,
    })
}

/// The Messages answer of a chat answer; `model` is the model the client asked for.
pub fn from_completion(completion: &ChatCompletion, model: &str) -> Value {
    let choice = completion.choices.first();
    let mut content = Vec::new();
    if let Some(choice) = choice {
        let text = choice.message.text_content();
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in choice
            .message
            .extra
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            content.push(tool_use_block(call));
        }
    }
    let usage = completion.usage.unwrap_or_default();
    let id = completion
        .id
        .strip_prefix("chatcmpl-")
        .unwrap_or(&completion.id);
    json!({
        "id": format!("msg_{id}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.and_then(|c| c.finish_reason.as_deref())),
        "stop_sequence": null,
        "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messages_request_becomes_chat_field_by_field() {
        let chat = to_chat(&json!({
            "model": "up/m", "max_tokens": 100, "stream": true, "temperature": 0.3,
            "stop_sequences": ["END"], "metadata": {"user_id": "u1"},
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA="}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "found", "is_error": false},
                    {"type": "text", "text": "and?"}
                ]}
            ]
        }))
        .unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "up/m", "max_tokens": 100, "stream": true, "temperature": 0.3,
                "stream_options": {"include_usage": true}, "stop": ["END"], "user": "u1",
                "tools": [{"type": "function", "function": {"name": "lookup", "description": "Look up", "parameters": {"type": "object"}}}],
                "tool_choice": "required", "parallel_tool_calls": false,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA="}}
                    ]},
                    {"role": "assistant", "content": "Looking.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "found"},
                    {"role": "user", "content": "and?"}
                ]
            })
        );
    }

    #[test]
    fn what_chat_cannot_express_is_refused_by_name() {
        let base =
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
        for (patch, param) in [
            (json!({"top_k": 5}), "top_k"),
            (
                json!({"thinking": {"type": "enabled", "budget_tokens": 1000}}),
                "thinking",
            ),
            (json!({"max_tokens": null}), "max_tokens"),
            (json!({"messages": []}), "messages"),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"tool_choice": {"type": "sometimes"}}),
                "tool_choice.type",
            ),
        ] {
            let mut body = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            let e = to_chat(&body).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }
}
