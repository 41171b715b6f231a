//! AWS Bedrock through the Converse API, translated both ways: `POST /model/{id}/converse`, and
//! `/converse-stream` whose answer is AWS's event stream (binary frames, decoded by AWS's own
//! `aws-smithy-eventstream`). Every request is signed with SigV4 by AWS's own `aws-sigv4`, from
//! credentials in the standard environment variables or a shared credentials file (session
//! tokens included). Embeddings go through `InvokeModel` (Titan: one text per call, called
//! together; Cohere: a batch).
//!
//! A chat request becomes a Converse request: system and developer messages move to `system`;
//! turns of one role are merged (Converse alternates); text parts stay text and `data:` images
//! become image blocks (png, jpeg, gif, webp); an assistant's `tool_calls` become `toolUse`
//! blocks and `tool` messages `toolResult` blocks; function `tools` become `toolConfig`
//! (`auto`, `required` → `any`, a function → `tool`); `stop`, `temperature`, `top_p` and
//! `max_tokens` go to `inferenceConfig`. A field Converse cannot take is refused with a 400
//! naming it, never dropped.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use base64::Engine as _;
use bytes::{Buf, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tollgate_core::{ChatChunk, ChatRequest, Delta, Usage};

use crate::openai_compat::{
    Timeouts, deliver, first_checked, http_client, http_error, read_json, retry_after,
};
use crate::translate::{self, Image, Part, Refuse};
use crate::{ChunkStream, Embeddings, Provider, ProviderError, unix_now};

/// AWS credentials: an access key, its secret, and a session token for temporary ones.
#[derive(Clone)]
pub struct AwsKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKeys")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where the credentials come from.
#[derive(Debug, Clone)]
pub enum AwsCredentials {
    /// Fixed keys (from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    Keys(AwsKeys),
    /// A profile of a shared credentials file (`~/.aws/credentials`), read again every minute so
    /// keys rotated into it are picked up.
    SharedFile {
        path: std::path::PathBuf,
        profile: String,
    },
}

impl AwsCredentials {
    /// The standard chain's first two links: the environment's keys, else the shared
    /// credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`) at
    /// `AWS_PROFILE` (else `default`). `None` when neither is there.
    pub fn from_environment() -> Option<Self> {
        let env = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
        if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            return Some(AwsCredentials::Keys(AwsKeys {
                access_key_id: id,
                secret_access_key: secret,
                session_token: env("AWS_SESSION_TOKEN"),
            }));
        }
        let path = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials")))?;
        path.exists().then(|| AwsCredentials::SharedFile {
            path,
            profile: env("AWS_PROFILE").unwrap_or_else(|| "default".into()),
        })
    }
}

/// A profile's keys in a shared credentials file (INI: `[profile]`, `key = value`).
pub fn read_shared_credentials(text: &str, profile: &str) -> Option<AwsKeys> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_owned();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(AwsKeys {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
    })
}

/// Bedrock's runtime in one region.
#[derive(Debug, Clone)]
pub struct Bedrock {
    client: reqwest::Client,
    /// `https://bedrock-runtime.{region}.amazonaws.com`, or a test's.
    endpoint: String,
    region: String,
    credentials: Arc<CredentialCache>,
    timeouts: Timeouts,
}

#[derive(Debug)]
struct CredentialCache {
    source: AwsCredentials,
    /// A shared file's keys and when they were read.
    read: RwLock<Option<(AwsKeys, Instant)>>,
}

impl CredentialCache {
    fn keys(&self) -> Result<AwsKeys, ProviderError> {
        let (path, profile) = match &self.source {
            AwsCredentials::Keys(k) => return Ok(k.clone()),
            AwsCredentials::SharedFile { path, profile } => (path, profile),
        };
        if let Ok(read) = self.read.read()
            && let Some((keys, at)) = read.as_ref()
            && at.elapsed() < Duration::from_secs(60)
        {
            return Ok(keys.clone());
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProviderError::Connect(format!("{}: {e}", path.display())))?;
        let keys = read_shared_credentials(&text, profile).ok_or_else(|| {
            ProviderError::Connect(format!(
                "{} has no aws_access_key_id and aws_secret_access_key for profile {profile:?}",
                path.display()
            ))
        })?;
        if let Ok(mut read) = self.read.write() {
            *read = Some((keys.clone(), Instant::now()));
        }
        Ok(keys)
    }
}

impl Bedrock {
    /// Bedrock in `region`; `endpoint` empty: the region's public one.
    pub fn new(
        region: &str,
        endpoint: &str,
        credentials: AwsCredentials,
        timeouts: Timeouts,
    ) -> Result<Self, ProviderError> {
        let endpoint = if endpoint.is_empty() {
            format!("https://bedrock-runtime.{region}.amazonaws.com")
        } else {
            endpoint.trim_end_matches('/').to_owned()
        };
        Ok(Bedrock {
            client: http_client(&timeouts)?,
            endpoint,
            region: region.to_owned(),
            credentials: Arc::new(CredentialCache {
                source: credentials,
                read: RwLock::new(None),
            }),
            timeouts,
        })
    }

    /// A signed `POST` of `body` to `/model/{model}/{operation}`.
    fn call(
        &self,
        model: &str,
        operation: &str,
        body: &Value,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        if model.is_empty() || model.contains(['/', '?', '#']) {
            return Err(ProviderError::Rejected {
                status: 400,
                message: format!("{model:?} is not a Bedrock model id"),
            });
        }
        // The model id is one path segment: `:` (in versioned ids) is percent-encoded.
        let id: String = model
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let url = format!("{}/model/{id}/{operation}", self.endpoint);
        let body = body.to_string();
        let keys = self.credentials.keys()?;
        let identity = aws_credential_types::Credentials::new(
            &keys.access_key_id,
            &keys.secret_access_key,
            keys.session_token.clone(),
            None,
            "tollgate",
        )
        .into();
        let signing_error = |e: &dyn std::fmt::Display| {
            ProviderError::Protocol(format!("could not sign the request: {e}"))
        };
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("bedrock")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| signing_error(&e))?
            .into();
        let headers = [("content-type", "application/json")];
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| signing_error(&e))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| signing_error(&e))?
            .into_parts();
        let mut call = self
            .client
            .post(&url)
            .header("content-type", "application/json");
        for (name, value) in instructions.headers() {
            call = call.header(name, value);
        }
        Ok(crate::with_trace_context(call.body(body)))
    }

    async fn send(
        &self,
        call: reqwest::RequestBuilder,
        wait: Duration,
    ) -> Result<reqwest::Response, ProviderError> {
        let response = deliver(call, wait).await?;
        if response.status().as_u16() == 200 {
            return Ok(response);
        }
        Err(aws_error(response).await)
    }
}

/// An AWS error answer (`{"message": ...}`, the type in `x-amzn-ErrorType`) as the error a
/// caller can act on.
async fn aws_error(response: reqwest::Response) -> ProviderError {
    let status = response.status().as_u16();
    let retry = retry_after(response.headers());
    let kind = response
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).to_owned())
        .unwrap_or_default();
    let body = tokio::time::timeout(Duration::from_secs(5), response.bytes())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or(text);
    let message = if kind.is_empty() {
        message
    } else {
        format!("{kind}: {message}")
    };
    match status {
        429 => ProviderError::RateLimited { retry_after: retry },
        500..=599 => ProviderError::Upstream { status, message },
        _ => ProviderError::Rejected { status, message },
    }
}

impl Provider for Bedrock {
    fn chat_stream(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<ChunkStream, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let body = to_converse_request(&request)?;
            let call = this.call(&request.model, "converse-stream", &body)?;
            let response = this.send(call, this.timeouts.first_byte).await?;
            let stream = event_stream(response, this.timeouts.idle, request.model.clone());
            // An exception before the answer (throttling, a refused prompt) is its first frame.
            first_checked(stream, this.timeouts.first_byte).await
        })
    }

    fn chat(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<tollgate_core::ChatCompletion, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let body = to_converse_request(&request)?;
            let call = this.call(&request.model, "converse", &body)?;
            let whole = async {
                let response = this.send(call, this.timeouts.whole).await?;
                response.bytes().await.map_err(http_error)
            };
            let bytes = tokio::time::timeout(this.timeouts.whole, whole)
                .await
                .map_err(|_| ProviderError::Timeout)??;
            let answer: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ProviderError::Protocol(format!("not a Converse answer: {e}")))?;
            Ok(from_converse_answer(&request.model, &answer))
        })
    }

    fn embed(
        &self,
        model: String,
        texts: Vec<String>,
    ) -> BoxFuture<'static, Result<Embeddings, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let vector = |v: &Value| {
                serde_json::from_value::<Vec<f32>>(v.clone())
                    .map_err(|e| ProviderError::Protocol(format!("embedding values: {e}")))
            };
            if model.starts_with("cohere.embed") {
                let body = json!({"texts": texts, "input_type": "search_document"});
                let call = this.call(&model, "invoke", &body)?;
                let response = this.send(call, this.timeouts.first_byte).await?;
                let reply = read_json(response, this.timeouts.idle, "embeddings").await?;
                let vectors = reply["embeddings"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(vector)
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(Embeddings {
                    vectors,
                    prompt_tokens: 0,
                });
            }
            // Titan embeds one text per call: the calls go together.
            let calls = texts.iter().map(|text| {
                let body = json!({"inputText": text});
                let this = this.clone();
                let model = model.clone();
                async move {
                    let call = this.call(&model, "invoke", &body)?;
                    let response = this.send(call, this.timeouts.first_byte).await?;
                    read_json(response, this.timeouts.idle, "embeddings").await
                }
            });
            let mut vectors = Vec::with_capacity(texts.len());
            let mut prompt_tokens = 0;
            for reply in futures::future::try_join_all(calls).await? {
                vectors.push(vector(&reply["embedding"])?);
                prompt_tokens += reply["inputTextTokenCount"].as_u64().unwrap_or(0);
            }
            Ok(Embeddings {
                vectors,
                prompt_tokens,
            })
        })
    }
}

const R: Refuse = Refuse("Bedrock");

fn refuse(field: &str, why: &str) -> ProviderError {
    R.at(field, why)
}

/// The Converse request for an OpenAI chat request.
pub fn to_converse_request(request: &ChatRequest) -> Result<Value, ProviderError> {
    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let mut tool_blocks = false;
    for (i, m) in request.messages.iter().enumerate() {
        translate::check_fields(R, i, m)?;
        let (role, blocks) = match m.role.as_str() {
            "system" | "developer" => {
                for text in translate::texts(R, i, &m.content, "system")? {
                    system.push(json!({"text": text}));
                }
                continue;
            }
            "user" => ("user", content_blocks(i, &m.content)?),
            "assistant" => {
                let mut blocks = content_blocks(i, &m.content)?;
                let calls = m.extra.get("tool_calls").and_then(Value::as_array);
                for (j, call) in calls.into_iter().flatten().enumerate() {
                    blocks.push(tool_use_block(i, j, call)?);
                    tool_blocks = true;
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = translate::tool_call_id(R, i, m)?;
                let text = translate::texts(R, i, &m.content, "tool")?.join("\n");
                tool_blocks = true;
                let result = json!({"toolResult": {"toolUseId": id,
                    "content": [{"text": text}]}});
                ("user", vec![result])
            }
            other => return Err(translate::unknown_role(R, i, other)),
        };
        translate::push_turn(&mut messages, role, "content", blocks);
    }
    let mut body = json!({"messages": messages});
    if !system.is_empty() {
        body["system"] = Value::Array(system);
    }
    let mut inference = Map::new();
    if let Some(n) = request.max_output_tokens() {
        inference.insert("maxTokens".into(), json!(n));
    }
    if let Some(t) = request.temperature {
        inference.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        inference.insert("topP".into(), json!(p));
    }
    if request.n.is_some_and(|n| n > 1) {
        return Err(refuse("n", "above 1 is not supported"));
    }
    if request.seed.is_some() {
        return Err(refuse("seed", "is not supported"));
    }
    let mut tools = None;
    let mut choice = None;
    for (k, v) in &request.extra {
        match k.as_str() {
            "stop" => match v {
                Value::String(s) => {
                    inference.insert("stopSequences".into(), json!([s]));
                }
                Value::Array(a) => {
                    inference.insert("stopSequences".into(), Value::Array(a.clone()));
                }
                Value::Null => {}
                _ => return Err(refuse("stop", "must be a string or an array of strings")),
            },
            "tools" => tools = Some(tool_specs(v)?),
            "tool_choice" => choice = Some(v.clone()),
            // Several calls at once are the model's choice on Bedrock: `false` cannot be kept.
            "parallel_tool_calls" if v != &Value::Bool(false) => {}
            // `user` is a label for the caller's records: it changes no answer.
            "user" | "stream_options" | "max_tokens" | "max_completion_tokens" => {}
            "logprobs" if v.is_null() || v == &json!(false) => {}
            "presence_penalty" | "frequency_penalty" if v.is_null() || v.as_f64() == Some(0.0) => {}
            "logit_bias" if v.is_null() || v.as_object().is_some_and(Map::is_empty) => {}
            "response_format" if v.get("type").and_then(Value::as_str) == Some("text") => {}
            other => return Err(refuse(other, "is not supported")),
        }
    }
    if !inference.is_empty() {
        body["inferenceConfig"] = Value::Object(inference);
    }
    let tools = tools.filter(|t| !t.is_empty());
    match (tools, choice.as_ref()) {
        (Some(_), Some(Value::String(s))) if s == "none" => {
            // Converse has no "none": the tools are left out, unless the conversation holds
            // tool blocks, which need them declared.
            if tool_blocks {
                return Err(refuse(
                    "tool_choice",
                    "\"none\" in a conversation with tool calls is not supported",
                ));
            }
        }
        (Some(tools), choice) => {
            let mut config = json!({"tools": tools});
            if let Some(choice) = choice {
                config["toolChoice"] = tool_choice(choice)?;
            }
            body["toolConfig"] = config;
        }
        (None, _) if tool_blocks => {
            return Err(refuse(
                "tools",
                "must declare the tools a conversation with tool calls used",
            ));
        }
        (None, _) => {}
    }
    Ok(body)
}

/// A message's content as Converse blocks (empty text left out).
fn content_blocks(i: usize, content: &Value) -> Result<Vec<Value>, ProviderError> {
    translate::parts(R, i, content)?
        .into_iter()
        .map(|part| match part {
            Part::Text(text) => Ok(json!({"text": text})),
            Part::Image { at, image } => image_block(i, at, image),
        })
        .collect()
}

/// An image as an image block: Converse takes the image's bytes (a `data:` URL).
fn image_block(i: usize, j: usize, image: Image<'_>) -> Result<Value, ProviderError> {
    let at = format!("messages[{i}].content[{j}].image_url.url");
    let Image::Inline { mime, data } = image else {
        return Err(refuse(
            &at,
            "must be a base64 data: URL (Bedrock does not fetch URLs)",
        ));
    };
    let format = match mime {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => return Err(refuse(&at, "must be a png, jpeg, gif or webp image")),
    };
    // Bytes are base64 in Converse's JSON too: checked here, sent as they are.
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| refuse(&at, "is not valid base64"))?;
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

/// An assistant's tool call as a `toolUse` block.
fn tool_use_block(i: usize, j: usize, call: &Value) -> Result<Value, ProviderError> {
    let (id, name, input) = translate::tool_call(R, i, j, call)?;
    Ok(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}))
}

/// Function tools as Converse tool specs.
fn tool_specs(v: &Value) -> Result<Vec<Value>, ProviderError> {
    Ok(translate::function_tools(R, v)?
        .into_iter()
        .map(|f| {
            let schema = f
                .parameters
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let mut spec = json!({"name": f.name, "inputSchema": {"json": schema}});
            if let Some(d) = f.description {
                spec["description"] = Value::from(d);
            }
            json!({"toolSpec": spec})
        })
        .collect())
}

/// A chat `tool_choice` (other than `none`) as a Converse one.
fn tool_choice(v: &Value) -> Result<Value, ProviderError> {
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"auto": {}})),
            "required" => Ok(json!({"any": {}})),
            _ => Err(refuse("tool_choice", &format!("{s:?} is not supported"))),
        },
        _ => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if v["type"] == "function" => Ok(json!({"tool": {"name": name}})),
            _ => Err(refuse(
                "tool_choice",
                "must be auto, none, required or a function",
            )),
        },
    }
}

fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

fn usage_of(u: &Value) -> Usage {
    let count = |f: &str| u[f].as_u64().unwrap_or(0);
    Usage {
        prompt_tokens: count("inputTokens"),
        completion_tokens: count("outputTokens"),
        total_tokens: count("inputTokens") + count("outputTokens"),
    }
}

/// A whole Converse answer as a chat completion.
fn from_converse_answer(model: &str, answer: &Value) -> tollgate_core::ChatCompletion {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in answer
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = block["text"].as_str() {
            text.push_str(t);
        }
        if let Some(call) = block.get("toolUse") {
            calls.push(json!({"id": call["toolUseId"], "type": "function",
                "function": {"name": call["name"], "arguments": call["input"].to_string()}}));
        }
    }
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let mut delta = Delta {
        role: Some("assistant".into()),
        content: Some(text),
        ..Delta::default()
    };
    if !calls.is_empty() {
        let indexed = calls
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                c["index"] = json!(i);
                c
            })
            .collect();
        delta.tool_calls = Some(indexed);
    }
    let finish = finish_reason(answer["stopReason"].as_str().unwrap_or("end_turn"));
    let created = unix_now();
    let mut aggregator = tollgate_core::Aggregator::default();
    aggregator.push(&ChatChunk::delta(
        &id,
        created,
        model,
        0,
        delta,
        Some(finish.into()),
    ));
    aggregator.push(&ChatChunk::usage_only(
        &id,
        created,
        model,
        usage_of(&answer["usage"]),
    ));
    aggregator.finish()
}

/// Maps one ConverseStream frame (message type, event or exception type, payload) to chunks.
type FrameParser =
    Box<dyn FnMut(&str, &str, &Value) -> Result<Vec<ChatChunk>, ProviderError> + Send>;

/// The chunks of a ConverseStream answer: AWS event-stream frames, decoded as they arrive.
fn event_stream(response: reqwest::Response, idle: Duration, model: String) -> ChunkStream {
    struct State {
        body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
        buffer: BytesMut,
        decoder: MessageFrameDecoder,
        pending: std::collections::VecDeque<ChatChunk>,
        parse: FrameParser,
        done: bool,
    }
    let state = State {
        body: response.bytes_stream().boxed(),
        buffer: BytesMut::new(),
        decoder: MessageFrameDecoder::new(),
        pending: std::collections::VecDeque::new(),
        parse: Box::new(stream_parser(model)),
        done: false,
    };
    futures::stream::unfold(state, move |mut s| async move {
        loop {
            if let Some(chunk) = s.pending.pop_front() {
                return Some((Ok(chunk), s));
            }
            if s.done {
                return None;
            }
            // Every whole frame in the buffer first.
            match s.decoder.decode_frame(&mut s.buffer) {
                Ok(DecodedFrame::Complete(message)) => {
                    let header = |name: &str| {
                        message
                            .headers()
                            .iter()
                            .find(|h| h.name().as_str() == name)
                            .and_then(|h| h.value().as_string().ok())
                            .map(|v| v.as_str().to_owned())
                            .unwrap_or_default()
                    };
                    let (kind, event) = match header(":message-type").as_str() {
                        "exception" | "error" => ("exception", header(":exception-type")),
                        _ => ("event", header(":event-type")),
                    };
                    let payload: Value =
                        serde_json::from_slice(message.payload()).unwrap_or_default();
                    match (s.parse)(kind, &event, &payload) {
                        Ok(chunks) => s.pending.extend(chunks),
                        Err(e) => {
                            s.done = true;
                            return Some((Err(e), s));
                        }
                    }
                    continue;
                }
                Ok(DecodedFrame::Incomplete) => {}
                Err(e) => {
                    s.done = true;
                    return Some((
                        Err(ProviderError::Protocol(format!("event stream: {e}"))),
                        s,
                    ));
                }
            }
            match tokio::time::timeout(idle, s.body.next()).await {
                Err(_) => {
                    s.done = true;
                    return Some((Err(ProviderError::Timeout), s));
                }
                Ok(None) => {
                    s.done = true;
                    if s.buffer.has_remaining() {
                        return Some((
                            Err(ProviderError::Protocol(
                                "the event stream ended mid-frame".into(),
                            )),
                            s,
                        ));
                    }
                }
                Ok(Some(Err(e))) => {
                    s.done = true;
                    return Some((Err(http_error(e)), s));
                }
                Ok(Some(Ok(bytes))) => s.buffer.extend_from_slice(&bytes),
            }
        }
    })
    .boxed()
}

/// A parser of ConverseStream events (message type, event or exception type, payload) into chat
/// chunks; it numbers the tool calls and keeps which content block each one is.
fn stream_parser(
    model: String,
) -> impl FnMut(&str, &str, &Value) -> Result<Vec<ChatChunk>, ProviderError> + Send {
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    // Content block index -> tool call index.
    let mut calls: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    move |kind, event, payload| {
        let chunk = |delta: Delta, finish: Option<String>| {
            ChatChunk::delta(&id, created, &model, 0, delta, finish)
        };
        if kind == "exception" {
            let message = payload["message"]
                .as_str()
                .unwrap_or("no message")
                .to_owned();
            return Err(match event {
                "throttlingException" => ProviderError::RateLimited { retry_after: None },
                "validationException" => ProviderError::Rejected {
                    status: 400,
                    message: format!("{event}: {message}"),
                },
                _ => ProviderError::Upstream {
                    status: 503,
                    message: format!("{event}: {message}"),
                },
            });
        }
        let block = payload["contentBlockIndex"].as_u64().unwrap_or(0);
        Ok(match event {
            "messageStart" => vec![chunk(
                Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..Delta::default()
                },
                None,
            )],
            "contentBlockStart" => match payload.pointer("/start/toolUse") {
                Some(tool) => {
                    let index = calls.len();
                    calls.insert(block, index);
                    let call = json!({"index": index, "id": tool["toolUseId"], "type": "function",
                        "function": {"name": tool["name"], "arguments": ""}});
                    vec![chunk(
                        Delta {
                            tool_calls: Some(vec![call]),
                            ..Delta::default()
                        },
                        None,
                    )]
                }
                None => Vec::new(),
            },
            "contentBlockDelta" => {
                if let Some(text) = payload.pointer("/delta/text").and_then(Value::as_str) {
                    vec![chunk(
                        Delta {
                            content: Some(text.to_owned()),
                            ..Delta::default()
                        },
                        None,
                    )]
                } else if let Some(part) = payload
                    .pointer("/delta/toolUse/input")
                    .and_then(Value::as_str)
                {
                    let index = calls.get(&block).copied().unwrap_or(0);
                    vec![chunk(
                        Delta {
                            tool_calls: Some(vec![
                                json!({"index": index, "function": {"arguments": part}}),
                            ]),
                            ..Delta::default()
                        },
                        None,
                    )]
                } else {
                    Vec::new()
                }
            }
            "messageStop" => {
                let reason = payload["stopReason"].as_str().unwrap_or("end_turn");
                vec![chunk(Delta::default(), Some(finish_reason(reason).into()))]
            }
            "metadata" => {
                vec![ChatChunk::usage_only(
                    &id,
                    created,
                    &model,
                    usage_of(&payload["usage"]),
                )]
            }
            _ => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::request;

    #[test]
    fn a_conversation_with_tools_becomes_a_converse_request() {
        let body = to_converse_request(&request(json!({
            "model": "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
                    "function": {"name": "see", "arguments": "{\"x\":1}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "a cat"},
            ],
            "tools": [{"type": "function", "function": {"name": "see", "description": "looks",
                "parameters": {"type": "object"}}}],
            "tool_choice": "required", "max_tokens": 64, "temperature": 0.5, "stop": ["END"],
        })))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body["system"], json!([{"text": "be brief"}]));
        assert_eq!(body["messages"][0]["content"][1]["image"]["format"], "png");
        assert_eq!(
            body["messages"][1]["content"][0]["toolUse"],
            json!({"toolUseId": "t1", "name": "see", "input": {"x": 1}})
        );
        assert_eq!(
            body["messages"][2]["content"][0]["toolResult"],
            json!({"toolUseId": "t1", "content": [{"text": "a cat"}]})
        );
        assert_eq!(body["toolConfig"]["toolChoice"], json!({"any": {}}));
        assert_eq!(
            body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"],
            json!({"json": {"type": "object"}})
        );
        assert_eq!(
            body["inferenceConfig"],
            json!({"maxTokens": 64, "temperature": 0.5, "stopSequences": ["END"]})
        );
    }

    #[test]
    fn what_converse_cannot_take_is_refused_by_name() {
        crate::translate::assert_refused_by_name(
            to_converse_request,
            &[
                (json!({"seed": 1}), "seed"),
                (json!({"n": 2}), "n"),
                (
                    json!({"response_format": {"type": "json_object"}}),
                    "response_format",
                ),
                (json!({"presence_penalty": 0.5}), "presence_penalty"),
                (json!({"parallel_tool_calls": false}), "parallel_tool_calls"),
                (
                    json!({"messages": [{"role": "user", "content": [{"type": "image_url",
                "image_url": {"url": "https://example.com/a.png"}}]}]}),
                    "messages[0].content[0].image_url.url",
                ),
            ],
        );
    }

    #[test]
    fn shared_credentials_files_are_read_by_profile() {
        let text = "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n\n\
                    # a comment\n[work]\naws_access_key_id=A2\naws_secret_access_key=S2\naws_session_token = T2\n";
        let work = read_shared_credentials(text, "work").unwrap_or_else(|| panic!("no work"));
        assert_eq!(
            (work.access_key_id.as_str(), work.session_token.as_deref()),
            ("A2", Some("T2"))
        );
        let default =
            read_shared_credentials(text, "default").unwrap_or_else(|| panic!("no default"));
        assert_eq!(default.session_token, None);
        assert!(read_shared_credentials(text, "missing").is_none());
    }
}
