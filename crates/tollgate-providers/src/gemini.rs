//! Google Gemini, translated both ways: the Generative Language API (Google AI Studio, an API
//! key) and Vertex AI (a service account: a signed JWT exchanged for an access token, cached
//! and fetched again before it expires).
//!
//! A chat request becomes a `generateContent` request: system and developer messages move to
//! `systemInstruction`; `assistant` turns are `model` turns and turns of one role are merged;
//! text parts stay text, `data:` image URLs become `inlineData` and `gs://` URIs `fileData`; an
//! assistant's `tool_calls` become `functionCall` parts and `tool` messages `functionResponse`
//! parts (named after the call they answer); function `tools` become `functionDeclarations` and
//! `tool_choice` a `functionCallingConfig`; `response_format` becomes `responseMimeType` and
//! `responseSchema`; sampling fields go to `generationConfig`. A field Gemini cannot take is
//! refused with a 400 naming it, never dropped.
//!
//! Answers (`streamGenerateContent?alt=sse` events, or one `generateContent` answer) become chat
//! chunks: text, function calls (whole, one chunk each), finish reasons (`SAFETY`, `RECITATION`,
//! `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII` → `content_filter`; `MAX_TOKENS` → `length`), and
//! usage. A prompt Gemini blocks (`promptFeedback.blockReason`, no candidates) is
//! [`ProviderError::ContentFiltered`].

use std::sync::Arc;

use base64::Engine as _;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tollgate_core::{ChatChunk, ChatRequest, Delta, Usage};

use crate::openai_compat::{
    Parsed, Timeouts, chunk_stream, first_checked, http_client, http_error, read_json, send,
};
use crate::sse::SseEvent;
use crate::token::{Fetched, TokenCache, exchange};
use crate::translate::{self, Image, Part, Refuse};
use crate::{ChunkStream, Embeddings, Provider, ProviderError, unix_now};

/// Google AI Studio's endpoint.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// What a Vertex AI access token may do.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Which Gemini API, and how the gateway proves who it is to it.
#[derive(Debug, Clone)]
pub enum GeminiApi {
    /// The Generative Language API: `{base}/v1beta/models/{model}:...`, `x-goog-api-key`.
    AiStudio { base_url: String, api_key: String },
    /// Vertex AI: `{base}/v1/projects/{project}/locations/{location}/publishers/google/models/
    /// {model}:...` (`base` defaults to `https://{location}-aiplatform.googleapis.com`), with a
    /// service account's access tokens.
    Vertex {
        base_url: String,
        project: String,
        location: String,
        account: ServiceAccount,
    },
}

/// A Google Cloud service account, as its JSON key file holds it.
#[derive(Clone, serde::Deserialize)]
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key: String,
    #[serde(default)]
    pub private_key_id: String,
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
    #[serde(default)]
    pub project_id: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

impl ServiceAccount {
    /// A service account from its JSON key file's text.
    pub fn from_json(text: &str) -> Result<Self, ProviderError> {
        let account: ServiceAccount = serde_json::from_str(text).map_err(|e| {
            ProviderError::Connect(format!("the service account key is not one: {e}"))
        })?;
        account.signing_key()?;
        Ok(account)
    }

    /// The RSA key the JWTs are signed with (PKCS#8, as Google issues them).
    fn signing_key(&self) -> Result<ring::signature::RsaKeyPair, ProviderError> {
        let body: String = self
            .private_key
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|e| ProviderError::Connect(format!("private_key is not PEM: {e}")))?;
        ring::signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| ProviderError::Connect(format!("private_key is not an RSA key: {e}")))
    }

    /// The signed JWT that asks for an access token (RS256, an hour's life).
    fn assertion(&self, now: u64) -> Result<String, ProviderError> {
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.private_key_id});
        let claims = json!({"iss": self.client_email, "scope": SCOPE, "aud": self.token_uri,
                            "iat": now, "exp": now + 3600});
        let signed = format!("{}.{}", b64(&header), b64(&claims));
        let key = self.signing_key()?;
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signed.as_bytes(),
            &mut signature,
        )
        .map_err(|_| ProviderError::Connect("could not sign the token request".into()))?;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature);
        Ok(format!("{signed}.{signature}"))
    }
}

/// A Gemini upstream.
#[derive(Debug, Clone)]
pub struct Gemini {
    client: reqwest::Client,
    api: Arc<GeminiApi>,
    tokens: Arc<TokenCache>,
    timeouts: Timeouts,
}

impl Gemini {
    pub fn new(api: GeminiApi, timeouts: Timeouts) -> Result<Self, ProviderError> {
        Ok(Gemini {
            client: http_client(&timeouts)?,
            api: Arc::new(api),
            tokens: Arc::new(TokenCache::default()),
            timeouts,
        })
    }

    /// A call to `model`'s `method` (`generateContent`, `streamGenerateContent?alt=sse`, ...),
    /// authorized.
    async fn call(
        &self,
        model: &str,
        method: &str,
        body: &Value,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        if model.is_empty() || model.contains(['/', '?', '#', ':']) {
            return Err(ProviderError::Rejected {
                status: 400,
                message: format!("{model:?} is not a Gemini model name"),
            });
        }
        let url = match &*self.api {
            GeminiApi::AiStudio { base_url, .. } => format!(
                "{}/v1beta/models/{model}:{method}",
                base_url.trim_end_matches('/')
            ),
            GeminiApi::Vertex {
                base_url,
                project,
                location,
                ..
            } => format!(
                "{}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}",
                base_url.trim_end_matches('/')
            ),
        };
        let call = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string());
        let call = match &*self.api {
            GeminiApi::AiStudio { api_key, .. } => call.header("x-goog-api-key", api_key),
            GeminiApi::Vertex { account, .. } => {
                let token = self.tokens.get(self.fetch_token(account)).await?;
                call.bearer_auth(token)
            }
        };
        Ok(crate::with_trace_context(call))
    }

    async fn fetch_token(&self, account: &ServiceAccount) -> Result<Fetched, ProviderError> {
        let form = [
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
            ),
            ("assertion", account.assertion(unix_now())?),
        ];
        exchange(&self.client, &account.token_uri, &form).await
    }
}

impl Provider for Gemini {
    fn chat_stream(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<ChunkStream, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let body = to_gemini_request(&request)?;
            let call = this
                .call(&request.model, "streamGenerateContent?alt=sse", &body)
                .await?;
            let response = send(call, this.timeouts.first_byte).await?;
            let mut parse = answer_parser(request.model.clone());
            let stream = chunk_stream(
                response,
                this.timeouts.idle,
                Box::new(move |event: &SseEvent| {
                    if event.data.trim().is_empty() {
                        return Ok(Parsed::Skip);
                    }
                    let answer: Value = serde_json::from_str(&event.data)
                        .map_err(|e| ProviderError::Protocol(format!("bad event: {e}")))?;
                    Ok(Parsed::Chunks(parse(&answer)?))
                }),
            );
            // A blocked prompt is the stream's first event.
            first_checked(stream, this.timeouts.first_byte).await
        })
    }

    fn chat(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<tollgate_core::ChatCompletion, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let body = to_gemini_request(&request)?;
            let call = this.call(&request.model, "generateContent", &body).await?;
            let whole = async {
                let response = send(call, this.timeouts.whole).await?;
                response.bytes().await.map_err(http_error)
            };
            let bytes = tokio::time::timeout(this.timeouts.whole, whole)
                .await
                .map_err(|_| ProviderError::Timeout)??;
            let answer: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ProviderError::Protocol(format!("not a Gemini answer: {e}")))?;
            let mut aggregator = tollgate_core::Aggregator::default();
            for chunk in answer_parser(request.model.clone())(&answer)? {
                aggregator.push(&chunk);
            }
            Ok(aggregator.finish())
        })
    }

    fn embed(
        &self,
        model: String,
        texts: Vec<String>,
    ) -> BoxFuture<'static, Result<Embeddings, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let expected = texts.len();
            let vertex = matches!(&*this.api, GeminiApi::Vertex { .. });
            let (method, body) = if vertex {
                let instances: Vec<Value> = texts.iter().map(|t| json!({"content": t})).collect();
                ("predict", json!({"instances": instances}))
            } else {
                let requests: Vec<Value> = texts
                    .iter()
                    .map(|t| json!({"model": format!("models/{model}"), "content": {"parts": [{"text": t}]}}))
                    .collect();
                ("batchEmbedContents", json!({"requests": requests}))
            };
            let call = this.call(&model, method, &body).await?;
            let response = send(call, this.timeouts.first_byte).await?;
            let reply = read_json(response, this.timeouts.idle, "embeddings").await?;
            let (items, values) = if vertex {
                (reply["predictions"].as_array(), "/embeddings/values")
            } else {
                (reply["embeddings"].as_array(), "/values")
            };
            let vectors: Vec<Vec<f32>> = items
                .into_iter()
                .flatten()
                .map(|item| {
                    serde_json::from_value(item.pointer(values).cloned().unwrap_or_default())
                        .map_err(|e| ProviderError::Protocol(format!("embedding values: {e}")))
                })
                .collect::<Result<_, _>>()?;
            if vectors.len() != expected {
                return Err(ProviderError::Protocol(format!(
                    "{} embeddings for {expected} inputs",
                    vectors.len()
                )));
            }
            // Vertex counts tokens per input; the Generative Language API does not count them.
            let prompt_tokens = items
                .into_iter()
                .flatten()
                .filter_map(|i| i.pointer("/embeddings/statistics/token_count"))
                .filter_map(Value::as_f64)
                .sum::<f64>() as u64;
            Ok(Embeddings {
                vectors,
                prompt_tokens,
            })
        })
    }
}

const R: Refuse = Refuse("Gemini");

fn refuse(field: &str, why: &str) -> ProviderError {
    R.at(field, why)
}

/// The `generateContent` request for an OpenAI chat request.
pub fn to_gemini_request(request: &ChatRequest) -> Result<Value, ProviderError> {
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Tool call id -> function name: a functionResponse names the function it answers.
    let mut called: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (i, m) in request.messages.iter().enumerate() {
        translate::check_fields(R, i, m)?;
        let (role, parts) = match m.role.as_str() {
            "system" | "developer" => {
                for text in translate::texts(R, i, &m.content, "system")? {
                    system.push(json!({"text": text}));
                }
                continue;
            }
            "user" => ("user", parts_of(i, &m.content)?),
            "assistant" => {
                let mut parts = parts_of(i, &m.content)?;
                let calls = m.extra.get("tool_calls").and_then(Value::as_array);
                for (j, call) in calls.into_iter().flatten().enumerate() {
                    let (id, part) = function_call_part(i, j, call)?;
                    if let Some(name) = part.pointer("/functionCall/name").and_then(Value::as_str) {
                        called.insert(id, name.to_owned());
                    }
                    parts.push(part);
                }
                ("model", parts)
            }
            "tool" => {
                let at = format!("messages[{i}].tool_call_id");
                let id = translate::tool_call_id(R, i, m)?;
                let name = called
                    .get(id)
                    .ok_or_else(|| refuse(&at, "names no earlier tool call"))?;
                let text = translate::texts(R, i, &m.content, "tool")?.join("\n");
                // Gemini takes an object: a JSON object as it is, anything else as its content.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    _ => json!({"content": text}),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
            other => return Err(translate::unknown_role(R, i, other)),
        };
        translate::push_turn(&mut contents, role, "parts", parts);
    }
    let mut body = json!({"contents": contents});
    if !system.is_empty() {
        body["systemInstruction"] = json!({"parts": system});
    }
    let mut generation = Map::new();
    if let Some(t) = request.temperature {
        generation.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        generation.insert("topP".into(), json!(p));
    }
    if let Some(n) = request.max_output_tokens() {
        generation.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(n) = request.n.filter(|n| *n > 1) {
        generation.insert("candidateCount".into(), json!(n));
    }
    if let Some(seed) = request.seed {
        generation.insert("seed".into(), json!(seed));
    }
    for (k, v) in &request.extra {
        match k.as_str() {
            "stop" => match v {
                Value::String(s) => {
                    generation.insert("stopSequences".into(), json!([s]));
                }
                Value::Array(a) => {
                    generation.insert("stopSequences".into(), Value::Array(a.clone()));
                }
                Value::Null => {}
                _ => return Err(refuse("stop", "must be a string or an array of strings")),
            },
            "presence_penalty" | "frequency_penalty" => {
                if let Some(x) = v.as_f64() {
                    let name = if k == "presence_penalty" {
                        "presencePenalty"
                    } else {
                        "frequencyPenalty"
                    };
                    generation.insert(name.into(), json!(x));
                }
            }
            "tools" => body["tools"] = tools(v)?,
            "tool_choice" => body["toolConfig"] = tool_choice(v)?,
            "response_format" => structured_output(&mut generation, v)?,
            // Gemini may answer with several calls at once whatever it is told.
            "parallel_tool_calls" if v != &Value::Bool(false) => {}
            // `user` is a label for the caller's records: it changes no answer.
            "user" | "stream_options" | "max_tokens" | "max_completion_tokens" => {}
            "logprobs" if v.is_null() || v == &json!(false) => {}
            "logit_bias" if v.is_null() || v.as_object().is_some_and(Map::is_empty) => {}
            other => return Err(refuse(other, "is not supported")),
        }
    }
    if !generation.is_empty() {
        body["generationConfig"] = Value::Object(generation);
    }
    Ok(body)
}

/// A message's content as Gemini parts (empty text left out).
fn parts_of(i: usize, content: &Value) -> Result<Vec<Value>, ProviderError> {
    translate::parts(R, i, content)?
        .into_iter()
        .map(|part| match part {
            Part::Text(text) => Ok(json!({"text": text})),
            Part::Image { at, image } => image_part(i, at, image),
        })
        .collect()
}

/// An image: a `data:` URL inline, a `gs://` URI by reference. Gemini does not fetch other URLs.
fn image_part(i: usize, j: usize, image: Image<'_>) -> Result<Value, ProviderError> {
    let at = format!("messages[{i}].content[{j}].image_url.url");
    match image {
        Image::Inline { mime, data } => Ok(json!({"inlineData": {"mimeType": mime, "data": data}})),
        Image::Url(url) if url.starts_with("gs://") => {
            let mime = match url
                .rsplit('.')
                .next()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("png") => "image/png",
                Some("jpg" | "jpeg") => "image/jpeg",
                Some("webp") => "image/webp",
                Some("gif") => "image/gif",
                _ => return Err(refuse(&at, "must end in .png, .jpg, .jpeg, .webp or .gif")),
            };
            Ok(json!({"fileData": {"mimeType": mime, "fileUri": url}}))
        }
        Image::Url(_) => Err(refuse(
            &at,
            "must be a data: URL or a gs:// URI (Gemini does not fetch web URLs)",
        )),
    }
}

/// An assistant's tool call as a `functionCall` part, with its id.
fn function_call_part(i: usize, j: usize, call: &Value) -> Result<(String, Value), ProviderError> {
    let (id, name, args) = translate::tool_call(R, i, j, call)?;
    Ok((
        id.to_owned(),
        json!({"functionCall": {"name": name, "args": args}}),
    ))
}

/// Function tools as one `functionDeclarations` tool.
fn tools(v: &Value) -> Result<Value, ProviderError> {
    let declarations = translate::function_tools(R, v)?
        .into_iter()
        .map(|f| {
            let mut out = json!({"name": f.name});
            if let Some(d) = f.description {
                out["description"] = Value::from(d);
            }
            if let Some(p) = f.parameters {
                out["parameters"] = schema(p, &format!("tools[{}].function.parameters", f.at))?;
            }
            Ok(out)
        })
        .collect::<Result<Vec<_>, ProviderError>>()?;
    if declarations.is_empty() {
        return Ok(json!([]));
    }
    Ok(json!([{"functionDeclarations": declarations}]))
}

/// A JSON Schema as Gemini's schema (an OpenAPI subset): the keys it does not know that change
/// nothing it checks (`additionalProperties`, `$schema`, `strict`) are left out; references are
/// refused, Gemini cannot resolve them.
fn schema(v: &Value, at: &str) -> Result<Value, ProviderError> {
    match v {
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, value) in o {
                match k.as_str() {
                    "additionalProperties" | "$schema" | "strict" | "$id" => {}
                    "$ref" | "$defs" | "definitions" => {
                        return Err(refuse(&format!("{at}.{k}"), "is not supported"));
                    }
                    // Property names are the caller's, not schema keywords.
                    "properties" => {
                        let mut props = Map::new();
                        for (name, p) in value.as_object().into_iter().flatten() {
                            props.insert(
                                name.clone(),
                                schema(p, &format!("{at}.properties.{name}"))?,
                            );
                        }
                        out.insert(k.clone(), Value::Object(props));
                    }
                    _ => {
                        out.insert(k.clone(), schema(value, &format!("{at}.{k}"))?);
                    }
                }
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => items
            .iter()
            .map(|i| schema(i, at))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

/// A chat `tool_choice` as a `toolConfig`.
fn tool_choice(v: &Value) -> Result<Value, ProviderError> {
    let mode = |m: &str| json!({"functionCallingConfig": {"mode": m}});
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(mode("AUTO")),
            "required" => Ok(mode("ANY")),
            "none" => Ok(mode("NONE")),
            _ => Err(refuse("tool_choice", &format!("{s:?} is not supported"))),
        },
        _ => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if v["type"] == "function" => Ok(json!({"functionCallingConfig":
                {"mode": "ANY", "allowedFunctionNames": [name]}})),
            _ => Err(refuse(
                "tool_choice",
                "must be auto, none, required or a function",
            )),
        },
    }
}

/// `response_format` as `responseMimeType` (and `responseSchema`).
fn structured_output(
    generation: &mut Map<String, Value>,
    format: &Value,
) -> Result<(), ProviderError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            let s = format
                .pointer("/json_schema/schema")
                .ok_or_else(|| refuse("response_format.json_schema.schema", "is required"))?;
            generation.insert("responseMimeType".into(), json!("application/json"));
            generation.insert(
                "responseSchema".into(),
                schema(s, "response_format.json_schema.schema")?,
            );
        }
        _ => {
            return Err(refuse(
                "response_format.type",
                "is not one of text, json_object, json_schema",
            ));
        }
    }
    Ok(())
}

fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ => "stop",
    }
}

/// A parser of Gemini answers (one per stream event, or the whole answer) into chat chunks. It
/// numbers function calls across the stream and reports usage once, after the last answer that
/// carries a finish reason.
fn answer_parser(
    model: String,
) -> impl FnMut(&Value) -> Result<Vec<ChatChunk>, ProviderError> + Send {
    let created = unix_now();
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let mut started = false;
    let mut calls = 0usize;
    move |answer| {
        if let Some(reason) = answer
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
        {
            return Err(ProviderError::ContentFiltered {
                message: format!("Gemini blocked the prompt ({reason})"),
            });
        }
        let mut chunks = Vec::new();
        let mut finished = false;
        for candidate in answer["candidates"].as_array().into_iter().flatten() {
            let index = candidate["index"].as_u64().unwrap_or(0) as u32;
            let mut delta = Delta::default();
            if !started {
                delta.role = Some("assistant".into());
                started = true;
            }
            let mut text = String::new();
            let mut tool_calls = Vec::new();
            for part in candidate
                .pointer("/content/parts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if part["thought"] == Value::Bool(true) {
                    continue;
                }
                if let Some(t) = part["text"].as_str() {
                    text.push_str(t);
                }
                if let Some(call) = part.get("functionCall") {
                    tool_calls.push(json!({
                        "index": calls,
                        "id": format!("call_{}_{calls}", &id[9..21]),
                        "type": "function",
                        "function": {
                            "name": call["name"],
                            "arguments": call.get("args").unwrap_or(&json!({})).to_string(),
                        },
                    }));
                    calls += 1;
                }
            }
            if !text.is_empty() || delta.role.is_some() {
                delta.content = Some(text);
            }
            if !tool_calls.is_empty() {
                delta.tool_calls = Some(tool_calls);
            }
            // A turn that called functions ends as OpenAI's do: `tool_calls`.
            let finish = candidate["finishReason"].as_str().map(|r| {
                finished = true;
                if r == "STOP" && calls > 0 {
                    "tool_calls".to_owned()
                } else {
                    finish_reason(r).to_owned()
                }
            });
            chunks.push(ChatChunk::delta(&id, created, &model, index, delta, finish));
        }
        if finished && let Some(u) = answer.get("usageMetadata") {
            let count = |f: &str| u[f].as_u64().unwrap_or(0);
            // Thinking tokens are generated and billed as output.
            let completion = count("candidatesTokenCount") + count("thoughtsTokenCount");
            let usage = Usage {
                prompt_tokens: count("promptTokenCount"),
                completion_tokens: completion,
                total_tokens: count("promptTokenCount") + completion,
            };
            chunks.push(ChatChunk::usage_only(&id, created, &model, usage));
        }
        Ok(chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::request;

    #[test]
    fn a_conversation_with_tools_and_images_becomes_contents() {
        let body = to_gemini_request(&request(json!({
            "model": "gemini-2.0-flash",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "look", "arguments": "{\"x\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
            ],
            "tools": [{"type": "function", "function": {"name": "look", "parameters":
                {"type": "object", "additionalProperties": false, "properties": {"x": {"type": "integer"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "look"}},
            "temperature": 0, "max_tokens": 50, "stop": "END", "seed": 7,
        })))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            body["systemInstruction"],
            json!({"parts": [{"text": "be brief"}]})
        );
        assert_eq!(
            body["contents"][0]["parts"][1]["inlineData"]["mimeType"],
            "image/png"
        );
        assert_eq!(body["contents"][1]["role"], "model");
        assert_eq!(
            body["contents"][1]["parts"][0]["functionCall"],
            json!({"name": "look", "args": {"x": 1}})
        );
        assert_eq!(
            body["contents"][2]["parts"][0]["functionResponse"],
            json!({"name": "look", "response": {"content": "a cat"}})
        );
        let declared = &body["tools"][0]["functionDeclarations"][0];
        assert_eq!(
            declared["parameters"],
            json!({"type": "object", "properties": {"x": {"type": "integer"}}})
        );
        assert_eq!(
            body["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"],
            json!(["look"])
        );
        assert_eq!(
            body["generationConfig"],
            json!({"temperature": 0.0, "maxOutputTokens": 50, "stopSequences": ["END"], "seed": 7})
        );
    }

    #[test]
    fn what_gemini_cannot_take_is_refused_by_name() {
        crate::translate::assert_refused_by_name(
            to_gemini_request,
            &[
                (json!({"logit_bias": {"42": 1}}), "logit_bias"),
                (json!({"parallel_tool_calls": false}), "parallel_tool_calls"),
                (json!({"logprobs": true}), "logprobs"),
                (
                    json!({"messages": [{"role": "user", "content": [{"type": "image_url",
                "image_url": {"url": "https://example.com/cat.png"}}]}]}),
                    "messages[0].content[0].image_url.url",
                ),
                (
                    json!({"response_format": {"type": "json_schema", "json_schema":
                {"schema": {"$ref": "#/$defs/x"}}}}),
                    "response_format.json_schema.schema.$ref",
                ),
            ],
        );
    }

    #[test]
    fn answers_become_chunks_with_calls_finish_reasons_and_usage() {
        let mut parse = answer_parser("g".into());
        let first = parse(&json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}]}))
            .unwrap_or_default();
        assert_eq!(first[0].choices[0].delta.role.as_deref(), Some("assistant"));
        let last = parse(&json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]},
            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3, "thoughtsTokenCount": 2}}))
        .unwrap_or_default();
        let call = &last[0].choices[0]
            .delta
            .tool_calls
            .as_ref()
            .map(|c| c[0].clone())
            .unwrap_or_default();
        assert_eq!(call["function"]["arguments"], "{\"a\":1}");
        assert_eq!(
            last[0].choices[0].finish_reason.as_deref(),
            Some("tool_calls")
        );
        let usage = last[1].usage.unwrap_or_default();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (7, 5, 12)
        );

        let mut parse = answer_parser("g".into());
        let unsafe_answer = parse(&json!({"candidates": [{"finishReason": "SAFETY", "index": 0}]}))
            .unwrap_or_default();
        assert_eq!(
            unsafe_answer[0].choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
        let blocked = parse(&json!({"promptFeedback": {"blockReason": "SAFETY"}}));
        assert!(
            matches!(blocked, Err(ProviderError::ContentFiltered { .. })),
            "{blocked:?}"
        );
    }
}
