//! The OpenAI chat-completions wire format: request, response, stream chunk, usage; folding a
//! chunk stream into a response, and replaying a response as chunks.
//!
//! Fields tollgate does not interpret are kept (`extra`), so what passes through is what came in.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::message::ChatMessage;

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// `provider/model` or an alias.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Stream options (`include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<Value>,
    /// Upper bound on generated tokens (legacy name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Upper bound on generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Number of choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Every other parameter, passed through untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Why a request is invalid: the message and the offending parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest {
    /// What is wrong.
    pub message: String,
    /// Which parameter.
    pub param: Option<String>,
}

impl ChatRequest {
    /// Checks what serde cannot: ranges, emptiness, roles.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        let bad = |param: &str, message: String| {
            Err(InvalidRequest {
                message,
                param: Some(param.to_owned()),
            })
        };
        if self.model.trim().is_empty() {
            return bad("model", "`model` must not be empty".into());
        }
        if self.messages.is_empty() {
            return bad(
                "messages",
                "`messages` must contain at least one message".into(),
            );
        }
        for (i, m) in self.messages.iter().enumerate() {
            if !matches!(
                m.role.as_str(),
                "system" | "developer" | "user" | "assistant" | "tool" | "function"
            ) {
                return bad(
                    &format!("messages[{i}].role"),
                    format!("unknown role {:?}", m.role),
                );
            }
            if !matches!(m.content, Value::String(_) | Value::Array(_) | Value::Null) {
                return bad(
                    &format!("messages[{i}].content"),
                    "`content` must be a string, an array or null".into(),
                );
            }
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return bad(
                "temperature",
                format!("`temperature` must be between 0 and 2, got {t}"),
            );
        }
        if let Some(p) = self.top_p
            && !(0.0..=1.0).contains(&p)
        {
            return bad("top_p", format!("`top_p` must be between 0 and 1, got {p}"));
        }
        if self.n.is_some_and(|n| n == 0 || n > 128) {
            return bad("n", "`n` must be between 1 and 128".into());
        }
        if self.max_output_tokens() == Some(0) {
            return bad("max_tokens", "`max_tokens` must be at least 1".into());
        }
        Ok(())
    }

    /// The output-token bound, whichever name it came under.
    pub fn max_output_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// True when the same request should give the same answer: temperature 0, or a seed.
    pub fn is_deterministic(&self) -> bool {
        self.temperature == Some(0.0) || self.seed.is_some()
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Both.
    #[serde(default)]
    pub total_tokens: u64,
}

/// `chat.completion`: a whole answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// One per `n`.
    pub choices: Vec<Choice>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Other fields (`system_fingerprint`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One choice of a whole answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Position.
    pub index: u32,
    /// The generated message.
    pub message: ChatMessage,
    /// `stop`, `length`, `tool_calls`, `content_filter`.
    pub finish_reason: Option<String>,
    /// Log probabilities, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
}

/// `chat.completion.chunk`: one server-sent event of a streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// Same id across the stream.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model.
    pub model: String,
    /// Deltas, one per choice index present in this chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Present on the last chunk when usage was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One choice's delta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Which choice.
    pub index: u32,
    /// What is new.
    pub delta: Delta,
    /// Set on the choice's last chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Log probabilities, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
}

/// The new part of a message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// Set on the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Tool-call fragments, merged by their `index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    /// Other fields (`refusal`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatChunk {
    /// A chunk with one choice's delta.
    pub fn delta(
        id: &str,
        created: u64,
        model: &str,
        index: u32,
        delta: Delta,
        finish_reason: Option<String>,
    ) -> Self {
        ChatChunk {
            id: id.to_owned(),
            object: "chat.completion.chunk".into(),
            created,
            model: model.to_owned(),
            choices: vec![ChunkChoice {
                index,
                delta,
                finish_reason,
                logprobs: None,
            }],
            usage: None,
            extra: Map::new(),
        }
    }

    /// The last chunk of a stream that reports usage: no choices, only the usage.
    pub fn usage_only(id: &str, created: u64, model: &str, usage: Usage) -> Self {
        let mut chunk = ChatChunk::delta(id, created, model, 0, Delta::default(), None);
        chunk.choices.clear();
        chunk.usage = Some(usage);
        chunk
    }
}

/// Folds a chunk stream into the whole answer it spells.
#[derive(Debug, Default)]
pub struct Aggregator {
    first: Option<ChatChunk>,
    choices: Vec<PartialChoice>,
    usage: Option<Usage>,
}

#[derive(Debug, Default)]
struct PartialChoice {
    role: Option<String>,
    content: String,
    has_content: bool,
    tool_calls: Vec<Value>,
    finish_reason: Option<String>,
    /// The chunks' log probabilities, their `content` and `refusal` lists joined.
    logprobs: Option<Map<String, Value>>,
    extra: Map<String, Value>,
}

impl Aggregator {
    /// Adds one chunk.
    pub fn push(&mut self, chunk: &ChatChunk) {
        if self.first.is_none() {
            self.first = Some(ChatChunk {
                choices: Vec::new(),
                usage: None,
                ..chunk.clone()
            });
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        for c in &chunk.choices {
            let i = c.index as usize;
            if self.choices.len() <= i {
                self.choices.resize_with(i + 1, PartialChoice::default);
            }
            let p = &mut self.choices[i];
            if let Some(role) = &c.delta.role {
                p.role = Some(role.clone());
            }
            if let Some(text) = &c.delta.content {
                p.content.push_str(text);
                p.has_content = true;
            }
            for (k, v) in &c.delta.extra {
                merge_text_field(&mut p.extra, k, v);
            }
            for call in c.delta.tool_calls.iter().flatten() {
                merge_tool_call(&mut p.tool_calls, call);
            }
            if let Some(Value::Object(lp)) = &c.logprobs {
                let joined = p.logprobs.get_or_insert_with(Map::new);
                for (k, v) in lp {
                    match (joined.get_mut(k), v) {
                        (Some(Value::Array(list)), Value::Array(more)) => {
                            list.extend(more.iter().cloned())
                        }
                        (None, _) | (Some(Value::Null), _) => {
                            joined.insert(k.clone(), v.clone());
                        }
                        _ => {}
                    }
                }
            }
            if c.finish_reason.is_some() {
                p.finish_reason = c.finish_reason.clone();
            }
        }
    }

    /// Token counts, when a chunk carried them.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The text of choice 0 so far.
    pub fn text(&self) -> &str {
        self.choices.first().map_or("", |c| c.content.as_str())
    }

    /// The whole answer (an empty one when no chunk came).
    pub fn finish(self) -> ChatCompletion {
        let first = self
            .first
            .unwrap_or_else(|| ChatChunk::delta("", 0, "", 0, Delta::default(), None));
        let choices = self
            .choices
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let mut extra = p.extra;
                if !p.tool_calls.is_empty() {
                    extra.insert("tool_calls".into(), Value::Array(p.tool_calls));
                }
                let content = if p.has_content || extra.is_empty() {
                    Value::String(p.content)
                } else {
                    Value::Null
                };
                Choice {
                    index: i as u32,
                    message: ChatMessage {
                        role: p.role.unwrap_or_else(|| "assistant".into()),
                        content,
                        extra,
                    },
                    finish_reason: p.finish_reason,
                    logprobs: p.logprobs.map(Value::Object),
                }
            })
            .collect();
        ChatCompletion {
            id: first.id,
            object: "chat.completion".into(),
            created: first.created,
            model: first.model,
            choices,
            usage: self.usage,
            extra: first.extra,
        }
    }
}

fn merge_text_field(extra: &mut Map<String, Value>, key: &str, value: &Value) {
    match (extra.get_mut(key), value) {
        (Some(Value::String(acc)), Value::String(more)) => acc.push_str(more),
        (_, Value::Null) => {}
        _ => {
            extra.insert(key.to_owned(), value.clone());
        }
    }
}

/// Tool-call fragments share an `index`; their `function.arguments` strings concatenate.
fn merge_tool_call(calls: &mut Vec<Value>, fragment: &Value) {
    let index = fragment
        .get("index")
        .and_then(Value::as_u64)
        .unwrap_or(calls.len() as u64) as usize;
    while calls.len() <= index {
        calls.push(Value::Object(Map::new()));
    }
    let Value::Object(target) = &mut calls[index] else {
        return;
    };
    let Value::Object(src) = fragment else { return };
    for (k, v) in src {
        if k == "index" {
            continue;
        }
        if k == "function" {
            let f = target
                .entry("function")
                .or_insert_with(|| Value::Object(Map::new()));
            if let (Value::Object(f), Value::Object(src_f)) = (f, v) {
                for (fk, fv) in src_f {
                    merge_text_field(f, fk, fv);
                }
            }
        } else {
            target.insert(k.clone(), v.clone());
        }
    }
}

/// Replays a whole answer as the chunks a stream of it would have had: a role chunk, the
/// content, the finish reason, and usage last (when `include_usage`).
pub fn completion_to_chunks(completion: &ChatCompletion, include_usage: bool) -> Vec<ChatChunk> {
    let (id, created, model) = (&completion.id, completion.created, &completion.model);
    let mut out = Vec::new();
    for choice in &completion.choices {
        let role = Delta {
            role: Some(choice.message.role.clone()),
            content: Some(String::new()),
            ..Delta::default()
        };
        out.push(ChatChunk::delta(
            id,
            created,
            model,
            choice.index,
            role,
            None,
        ));
        let mut body = Delta::default();
        if let Value::String(text) = &choice.message.content
            && !text.is_empty()
        {
            body.content = Some(text.clone());
        }
        for (k, v) in &choice.message.extra {
            if k == "tool_calls" {
                if let Value::Array(calls) = v {
                    let indexed = calls
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let mut c = c.clone();
                            if let Value::Object(m) = &mut c {
                                m.insert("index".into(), Value::from(i));
                            }
                            c
                        })
                        .collect();
                    body.tool_calls = Some(indexed);
                }
            } else {
                body.extra.insert(k.clone(), v.clone());
            }
        }
        if body != Delta::default() || choice.logprobs.is_some() {
            let mut chunk = ChatChunk::delta(id, created, model, choice.index, body, None);
            // The whole answer's log probabilities ride on the chunk that carries its text.
            if let Some(c) = chunk.choices.first_mut() {
                c.logprobs = choice.logprobs.clone();
            }
            out.push(chunk);
        }
        out.push(ChatChunk::delta(
            id,
            created,
            model,
            choice.index,
            Delta::default(),
            choice.finish_reason.clone(),
        ));
    }
    if include_usage && let Some(usage) = completion.usage {
        out.push(ChatChunk::usage_only(id, created, model, usage));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn log_probabilities_of_a_stream_are_joined_in_the_whole_answer() {
        let chunk = |text: &str, token: Value| -> ChatChunk {
            serde_json::from_value(
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null,
                             "logprobs": {"content": [token], "refusal": null}}]}),
            )
            .unwrap()
        };
        let mut agg = Aggregator::default();
        agg.push(&chunk("Hi", json!({"token": "Hi", "logprob": -0.1})));
        agg.push(&chunk(
            " there",
            json!({"token": " there", "logprob": -0.2}),
        ));
        let done = agg.finish();
        assert_eq!(
            done.choices[0].logprobs,
            Some(
                json!({"content": [{"token": "Hi", "logprob": -0.1}, {"token": " there", "logprob": -0.2}],
                        "refusal": null})
            )
        );
        // Replayed (a streamed cache hit) and folded again: the same answer.
        let mut again = Aggregator::default();
        for c in completion_to_chunks(&done, false) {
            again.push(&c);
        }
        assert_eq!(again.finish().choices, done.choices);
    }

    #[test]
    fn chunks_fold_into_the_answer_they_spell_and_back() {
        let chunks: Vec<ChatChunk> = [
            json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}),
            json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}),
            json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}),
            json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        let mut agg = Aggregator::default();
        chunks.iter().for_each(|c| agg.push(c));
        let done = agg.finish();
        assert_eq!(
            done.choices[0].message,
            ChatMessage::text("assistant", "Hello")
        );
        assert_eq!(done.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(done.usage.unwrap().total_tokens, 5);
        let mut again = Aggregator::default();
        completion_to_chunks(&done, true)
            .iter()
            .for_each(|c| again.push(c));
        assert_eq!(again.finish(), done);
    }

    #[test]
    fn tool_call_fragments_merge_by_index() {
        let frag = |v: Value| -> ChatChunk {
            serde_json::from_value(json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[v]},"finish_reason":null}]})).unwrap()
        };
        let mut agg = Aggregator::default();
        agg.push(&frag(json!({"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\""}})));
        agg.push(&frag(json!({"index":0,"function":{"arguments":":1}"}})));
        let done = agg.finish();
        let calls = &done.choices[0].message.extra["tool_calls"];
        assert_eq!(calls[0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(calls[0]["id"], "call_1");
        assert_eq!(done.choices[0].message.content, Value::Null);
    }

    #[test]
    fn validation_names_the_bad_parameter() {
        let req = |v: Value| serde_json::from_value::<ChatRequest>(v).unwrap();
        let ok = json!({"model":"m","messages":[{"role":"user","content":"hi"}]});
        assert!(req(ok.clone()).validate().is_ok());
        for (patch, param) in [
            (json!({"messages": []}), "messages"),
            (json!({"temperature": 3}), "temperature"),
            (json!({"top_p": -1}), "top_p"),
            (json!({"n": 0}), "n"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (
                json!({"messages": [{"role":"wizard","content":"x"}]}),
                "messages[0].role",
            ),
            (json!({"model": " "}), "model"),
        ] {
            let mut v = ok.clone();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            assert_eq!(req(v).validate().unwrap_err().param.as_deref(), Some(param));
        }
    }
}
