//! The Responses API's input, tools and tool choice, as chat messages and chat tools: what the
//! gateway sends a provider for a `POST /v1/responses`. Pure, so it can be fuzzed and tested
//! without a server.
//!
//! Function tools translate one to one. Hosted tools (web search, file search, computer use, code
//! interpreter, ...) run on OpenAI's own servers, which a gateway in front of other providers
//! cannot do: they are refused, naming the tool, never dropped.

use serde_json::{Map, Value, json};

use crate::chat::InvalidRequest;
use crate::message::ChatMessage;

fn bad(message: impl Into<String>, param: &str) -> InvalidRequest {
    InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// The request's `input` as chat messages. Consecutive `function_call` items (and an assistant
/// message just before them) become one assistant message with `tool_calls`; each
/// `function_call_output` becomes a `tool` message.
pub fn input_messages(input: &Value) -> Result<Vec<ChatMessage>, InvalidRequest> {
    match input {
        Value::String(s) if !s.is_empty() => Ok(vec![ChatMessage::text("user", s.clone())]),
        Value::Array(items) if !items.is_empty() => {
            let mut messages: Vec<ChatMessage> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match input_item(i, item)? {
                    Item::Message(m) => messages.push(m),
                    Item::Call(call) => match messages.last_mut() {
                        Some(last) if last.role == "assistant" => {
                            let calls = last
                                .extra
                                .entry("tool_calls")
                                .or_insert_with(|| Value::Array(Vec::new()));
                            if let Value::Array(calls) = calls {
                                calls.push(call);
                            }
                        }
                        _ => {
                            let mut m = ChatMessage {
                                role: "assistant".into(),
                                content: Value::Null,
                                extra: Map::new(),
                            };
                            m.extra
                                .insert("tool_calls".into(), Value::Array(vec![call]));
                            messages.push(m);
                        }
                    },
                }
            }
            Ok(messages)
        }
        Value::String(_) | Value::Array(_) => Err(bad("`input` must not be empty", "input")),
        _ => Err(bad(
            "`input` must be a string or an array of input items",
            "input",
        )),
    }
}

/// Tool types that run on OpenAI's servers.
const HOSTED_TOOLS: &[&str] = &[
    "web_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "file_search",
    "computer_use",
    "computer_use_preview",
    "code_interpreter",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
    "apply_patch",
];

fn refuse_tool(kind: &str, param: &str) -> InvalidRequest {
    if HOSTED_TOOLS.contains(&kind) {
        bad(
            format!(
                "the hosted tool {kind:?} runs on OpenAI's servers and cannot run through this \
                 gateway; declare a function tool and run it in your application"
            ),
            param,
        )
    } else {
        bad(
            format!("tools of type {kind:?} are not supported; use function tools"),
            param,
        )
    }
}

/// The request's `tools` as chat tools (function tools only).
pub fn chat_tools(tools: &[Value]) -> Result<Vec<Value>, InvalidRequest> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let at = |field: &str| format!("tools[{i}]{field}");
            let obj = tool
                .as_object()
                .ok_or_else(|| bad("a tool must be an object", &at("")))?;
            let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
            if kind != "function" {
                return Err(refuse_tool(kind, &at(".type")));
            }
            let mut function = Map::new();
            for (k, v) in obj {
                match k.as_str() {
                    "type" => {}
                    "name" => match v.as_str() {
                        Some(name) if !name.is_empty() => {
                            function.insert("name".into(), v.clone());
                        }
                        _ => return Err(bad("a function tool needs a `name`", &at(".name"))),
                    },
                    "description" | "parameters" | "strict" if !v.is_null() => {
                        function.insert(k.clone(), v.clone());
                    }
                    "description" | "parameters" | "strict" => {}
                    other => {
                        return Err(bad(
                            format!("unknown field `{other}` in a function tool"),
                            &at(&format!(".{other}")),
                        ));
                    }
                }
            }
            if !function.contains_key("name") {
                return Err(bad("a function tool needs a `name`", &at(".name")));
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

/// The request's `tool_choice` as a chat `tool_choice`.
pub fn chat_tool_choice(choice: &Value) -> Result<Value, InvalidRequest> {
    match choice {
        Value::String(s) if ["auto", "none", "required"].contains(&s.as_str()) => {
            Ok(choice.clone())
        }
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function") => match o.get("name").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => {
                    Ok(json!({"type": "function", "function": {"name": name}}))
                }
                _ => Err(bad(
                    "a function `tool_choice` needs the function's `name`",
                    "tool_choice.name",
                )),
            },
            Some(other) => Err(refuse_tool(other, "tool_choice.type")),
            None => Err(bad("`tool_choice` needs a `type`", "tool_choice.type")),
        },
        _ => Err(bad(
            "`tool_choice` must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": ...}",
            "tool_choice",
        )),
    }
}

/// One input item: a message, or a function call the model made earlier.
enum Item {
    Message(ChatMessage),
    /// A chat `tool_calls` entry.
    Call(Value),
}

fn input_item(i: usize, item: &Value) -> Result<Item, InvalidRequest> {
    let at = |field: &str| format!("input[{i}]{field}");
    let obj = item
        .as_object()
        .ok_or_else(|| bad("an input item must be an object", &at("")))?;
    let text_field = |field: &str| {
        obj.get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                bad(
                    format!(
                        "a {} item needs `{field}`",
                        obj.get("type").and_then(Value::as_str).unwrap_or("input")
                    ),
                    &at(&format!(".{field}")),
                )
            })
    };
    match obj.get("type").and_then(Value::as_str) {
        None | Some("message") => {}
        Some("function_call") => {
            let call_id = text_field("call_id")?;
            let name = text_field("name")?;
            let arguments = match obj.get("arguments") {
                Some(Value::String(a)) => a.clone(),
                None | Some(Value::Null) => String::new(),
                Some(_) => {
                    return Err(bad(
                        "`arguments` must be a string (JSON text)",
                        &at(".arguments"),
                    ));
                }
            };
            return Ok(Item::Call(json!({
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            })));
        }
        Some("function_call_output") => {
            let call_id = text_field("call_id")?;
            let output = match obj.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match p.get("type").and_then(Value::as_str) {
                        Some("input_text" | "output_text" | "text") => Ok(p
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()),
                        other => Err(bad(
                            format!(
                                "function_call_output parts of type {:?} are not supported; send text",
                                other.unwrap_or("")
                            ),
                            &at(".output"),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join("\n"),
                _ => {
                    return Err(bad(
                        "a function_call_output item needs `output` (a string)",
                        &at(".output"),
                    ));
                }
            };
            let mut m = ChatMessage::text("tool", output);
            m.extra.insert("tool_call_id".into(), Value::from(call_id));
            return Ok(Item::Message(m));
        }
        Some(other) => {
            return Err(bad(
                format!(
                    "input items of type {other:?} are not supported; send messages, \
                     function_call and function_call_output items"
                ),
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
    Ok(Item::Message(ChatMessage {
        role: role.to_owned(),
        content,
        extra: Map::new(),
    }))
}
