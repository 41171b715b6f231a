//! Chat messages in the OpenAI wire format. Fields tollgate does not interpret (tool calls,
//! names, audio, ...) are kept as they came, so storing and replaying a message loses nothing.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One message of a conversation: `{"role": ..., "content": ..., ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, an array of content parts, or null (assistant messages with tool calls).
    #[serde(default)]
    pub content: Value,
    /// Every other field of the message, untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    /// A message whose content is plain text.
    pub fn text(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: Value::String(content.into()),
            extra: Map::new(),
        }
    }

    /// How a summary of earlier turns is shown to a model: a system message.
    pub fn summary(summary: &str) -> Self {
        ChatMessage::text(
            "system",
            format!("Summary of the earlier conversation:\n{summary}"),
        )
    }

    /// The text of the message: the string content, or the `text` parts joined by newlines.
    pub fn text_content(&self) -> String {
        match &self.content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }
}
