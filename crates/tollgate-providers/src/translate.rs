//! What the providers that translate OpenAI's chat format (Anthropic, Gemini, Bedrock) read from
//! a request the same way: a message's extra fields, its parts (text, images), an assistant's
//! tool calls and the function tools. Each is checked here once, with the same 400 naming the
//! field; each provider only writes them in its own API's shape.

use serde_json::{Value, json};
use tollgate_core::ChatMessage;

use crate::ProviderError;

/// Refusals for one API: a 400 naming the field, "... for `models` models".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refuse(pub(crate) &'static str);

impl Refuse {
    pub(crate) fn at(self, field: &str, why: &str) -> ProviderError {
        ProviderError::Rejected {
            status: 400,
            message: format!("`{field}` {why} for {} models", self.0),
        }
    }
}

/// A part of a message's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part<'a> {
    Text(&'a str),
    Image {
        /// Where it is, for refusals: `messages[I].content[J]`.
        at: usize,
        image: Image<'a>,
    },
}

/// An image part's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Image<'a> {
    /// A `data:` URL: its media type and base64 data.
    Inline { mime: &'a str, data: &'a str },
    /// Any other URL, as given.
    Url(&'a str),
}

/// Refuses what message `i` carries besides its role and content, tool calls and tool call id.
pub(crate) fn check_fields(r: Refuse, i: usize, m: &ChatMessage) -> Result<(), ProviderError> {
    for (k, v) in &m.extra {
        let empty = v.is_null() || v.as_array().is_some_and(Vec::is_empty);
        if !empty && k != "tool_calls" && k != "tool_call_id" {
            return Err(r.at(&format!("messages[{i}].{k}"), "is not supported"));
        }
    }
    Ok(())
}

/// Refuses message `i`'s role, one the API has no turn for.
pub(crate) fn unknown_role(r: Refuse, i: usize, role: &str) -> ProviderError {
    r.at(
        &format!("messages[{i}].role"),
        &format!("{role:?} is not supported"),
    )
}

/// Adds a turn of `role` whose `field` (`content`, `parts`) holds `items`: to the last turn when
/// it has the same role (these APIs alternate roles), else as a new one. An empty turn is left
/// out.
pub(crate) fn push_turn(turns: &mut Vec<Value>, role: &str, field: &str, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last["role"] == role => {
            if let Some(existing) = last[field].as_array_mut() {
                existing.extend(items);
            }
        }
        _ => turns.push(json!({"role": role, field: items})),
    }
}

/// The call a tool message `i` answers.
pub(crate) fn tool_call_id(r: Refuse, i: usize, m: &ChatMessage) -> Result<&str, ProviderError> {
    m.extra
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| r.at(&format!("messages[{i}].tool_call_id"), "is required"))
}

/// Message `i`'s content as parts, empty text left out.
pub(crate) fn parts(r: Refuse, i: usize, content: &Value) -> Result<Vec<Part<'_>>, ProviderError> {
    let text = |t: &'_ str| (!t.is_empty()).then_some(());
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(text(s).map(|()| Part::Text(s)).into_iter().collect()),
        Value::Array(items) => {
            let mut out = Vec::new();
            for (j, part) in items.iter().enumerate() {
                let at = format!("messages[{i}].content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = part.get("text").and_then(Value::as_str).unwrap_or_default();
                        if text(t).is_some() {
                            out.push(Part::Text(t));
                        }
                    }
                    Some("image_url") => out.push(Part::Image {
                        at: j,
                        image: image(r, &at, part)?,
                    }),
                    other => {
                        return Err(r.at(
                            &format!("{at}.type"),
                            &format!("{:?} is not supported", other.unwrap_or("")),
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(r.at(
            &format!("messages[{i}].content"),
            "must be a string or an array of parts",
        )),
    }
}

/// The texts of message `i`, which may hold text only (a system or tool message: `kind`).
pub(crate) fn texts<'a>(
    r: Refuse,
    i: usize,
    content: &'a Value,
    kind: &str,
) -> Result<Vec<&'a str>, ProviderError> {
    parts(r, i, content)?
        .into_iter()
        .map(|p| match p {
            Part::Text(t) => Ok(t),
            Part::Image { .. } => Err(r.at(
                &format!("messages[{i}].content"),
                &format!("must be text in a {kind} message"),
            )),
        })
        .collect()
}

/// An `image_url` part's source: its URL (required), `detail` only `auto`, and a `data:` URL's
/// media type and base64 data.
fn image<'a>(r: Refuse, at: &str, part: &'a Value) -> Result<Image<'a>, ProviderError> {
    let image = &part["image_url"];
    let url = image
        .get("url")
        .or(Some(image))
        .and_then(Value::as_str)
        .ok_or_else(|| r.at(&format!("{at}.image_url.url"), "is required"))?;
    match image.get("detail").and_then(Value::as_str) {
        None | Some("auto") => {}
        Some(_) => {
            return Err(r.at(
                &format!("{at}.image_url.detail"),
                "other than \"auto\" is not supported",
            ));
        }
    }
    match url.strip_prefix("data:") {
        Some(data_url) => {
            let (mime, data) = data_url
                .split_once(";base64,")
                .ok_or_else(|| r.at(&format!("{at}.image_url.url"), "must be a base64 data URL"))?;
            Ok(Image::Inline { mime, data })
        }
        None => Ok(Image::Url(url)),
    }
}

/// An assistant's tool call `j` of message `i`: its id, function name and arguments (JSON; an
/// empty string is `{}`).
pub(crate) fn tool_call(
    r: Refuse,
    i: usize,
    j: usize,
    call: &Value,
) -> Result<(&str, &str, Value), ProviderError> {
    let at = format!("messages[{i}].tool_calls[{j}]");
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| r.at(&format!("{at}.id"), "is required"))?;
    let name = call
        .pointer("/function/name")
        .and_then(Value::as_str)
        .ok_or_else(|| r.at(&format!("{at}.function.name"), "is required"))?;
    let arguments = call
        .pointer("/function/arguments")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let arguments = if arguments.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(arguments)
            .map_err(|_| r.at(&format!("{at}.function.arguments"), "must be JSON"))?
    };
    Ok((id, name, arguments))
}

/// A function tool of a request's `tools`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FunctionTool<'a> {
    /// Its index in `tools`, for refusals.
    pub(crate) at: usize,
    pub(crate) name: &'a str,
    pub(crate) description: Option<&'a str>,
    /// Its JSON Schema, when given.
    pub(crate) parameters: Option<&'a Value>,
    pub(crate) strict: Option<&'a Value>,
}

/// A request's `tools`: functions only, each with a name.
pub(crate) fn function_tools(r: Refuse, v: &Value) -> Result<Vec<FunctionTool<'_>>, ProviderError> {
    let tools = v
        .as_array()
        .ok_or_else(|| r.at("tools", "must be an array"))?;
    tools
        .iter()
        .enumerate()
        .map(|(k, tool)| {
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err(r.at(
                    &format!("tools[{k}].type"),
                    "other than function is not supported",
                ));
            }
            let f = &tool["function"];
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| r.at(&format!("tools[{k}].function.name"), "is required"))?;
            Ok(FunctionTool {
                at: k,
                name,
                description: f.get("description").and_then(Value::as_str),
                parameters: f.get("parameters").filter(|p| !p.is_null()),
                strict: f.get("strict").filter(|s| !s.is_null()),
            })
        })
        .collect()
}

/// A chat request from its JSON (tests).
#[cfg(test)]
pub(crate) fn request(v: Value) -> tollgate_core::ChatRequest {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
}

/// Checks that `translate` refuses each case (fields laid over a one-message request) with a 400
/// naming the field.
#[cfg(test)]
pub(crate) fn assert_refused_by_name(
    translate: impl Fn(&tollgate_core::ChatRequest) -> Result<Value, ProviderError>,
    cases: &[(Value, &str)],
) {
    for (extra, field) in cases {
        let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, x) in extra.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        match translate(&request(v)) {
            Err(ProviderError::Rejected {
                status: 400,
                message,
            }) => assert!(message.contains(&format!("`{field}`")), "{message}"),
            other => panic!("{field}: {other:?}"),
        }
    }
}
