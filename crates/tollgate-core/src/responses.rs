//! The Responses API's input, as chat messages: what the gateway sends a provider for a
//! `POST /v1/responses`. Pure, so it can be fuzzed and tested without a server.

use serde_json::{Map, Value, json};

use crate::chat::InvalidRequest;
use crate::message::ChatMessage;

fn bad(message: impl Into<String>, param: &str) -> InvalidRequest {
    InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// The request's `input` as chat messages.
pub fn input_messages(input: &Value) -> Result<Vec<ChatMessage>, InvalidRequest> {
    match input {
        Value::String(s) if !s.is_empty() => Ok(vec![ChatMessage::text("user", s.clone())]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, item)| input_item(i, item))
            .collect(),
        Value::String(_) | Value::Array(_) => Err(bad("`input` must not be empty", "input")),
        _ => Err(bad(
            "`input` must be a string or an array of input items",
            "input",
        )),
    }
}

fn input_item(i: usize, item: &Value) -> Result<ChatMessage, InvalidRequest> {
    let at = |field: &str| format!("input[{i}]{field}");
    let obj = item
        .as_object()
        .ok_or_else(|| bad("an input item must be an object", &at("")))?;
    match obj.get("type").and_then(Value::as_str) {
        None | Some("message") => {}
        Some(other) => {
            return Err(bad(
                format!("input items of type {other:?} are not supported; send messages"),
                &at(".type"),
            ));
        }
    }
    let role = obj.get("role").and_then(Value::as_str).unwrap_or("");
    if !["user", "assistant", "system", "developer"].contains(&role) {
        return Err(bad(
            format!("role {role:?} is not one of user, assistant, system, developer"),
            &at(".role"),
        ));
    }
    let content = match obj.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            let mut chat_parts = Vec::new();
            let mut only_text = true;
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "input_text" | "output_text" | "text" => {
                        let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                            bad(
                                "a text part needs `text`",
                                &at(&format!(".content[{j}].text")),
                            )
                        })?;
                        texts.push(text.to_owned());
                        chat_parts.push(json!({"type": "text", "text": text}));
                    }
                    "input_image" => {
                        only_text = false;
                        let url =
                            part.get("image_url")
                                .and_then(Value::as_str)
                                .ok_or_else(|| {
                                    bad(
                                        "an image part needs `image_url`",
                                        &at(&format!(".content[{j}].image_url")),
                                    )
                                })?;
                        chat_parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                    }
                    other => {
                        return Err(bad(
                            format!("content parts of type {other:?} are not supported"),
                            &at(&format!(".content[{j}].type")),
                        ));
                    }
                }
            }
            if only_text {
                Value::String(texts.join("\n"))
            } else {
                Value::Array(chat_parts)
            }
        }
        _ => {
            return Err(bad(
                "`content` must be a string or an array of content parts",
                &at(".content"),
            ));
        }
    };
    Ok(ChatMessage {
        role: role.to_owned(),
        content,
        extra: Map::new(),
    })
}
