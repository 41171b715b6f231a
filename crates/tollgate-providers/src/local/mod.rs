//! The `local` provider: models run in this process with candle (pure Rust, CPU), loaded from
//! `TOLLGATE_MODEL_DIR` (`scripts/install-models.sh` puts the weights there):
//! - `local/all-minilm-l6-v2`: sentence embeddings, 384 dimensions ([`embed`]);
//! - `local/smollm2-135m-instruct`: a small chat model, streamed token by token ([`chat`]).
//!
//! Each model runs on a thread of its own, fed by a bounded queue: inference never runs on the
//! async runtime, so a busy model does not stall other requests, and a full queue is answered at
//! once as rate limited (429 with `retry-after`). A model loads in the background when the
//! provider is built; requests wait for it. Missing weights are one clear error naming the
//! command that installs them, never a panic.

mod chat;
mod embed;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tollgate_core::{ChatChunk, ChatRequest, Delta, Usage};

use crate::{ChunkStream, Embeddings, Provider, ProviderError, unix_now};

/// The embedding model's name under `local/`.
pub const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";
/// The chat model's name under `local/`.
pub const CHAT_MODEL: &str = "smollm2-135m-instruct";

/// Where the weights live, and how much may queue.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub model_dir: PathBuf,
    /// Generations waiting for the chat model beyond the one running.
    pub chat_queue: usize,
    /// Embedding batches waiting.
    pub embed_queue: usize,
    /// Load the models when the provider starts; otherwise at each model's first request (so
    /// a gateway that never uses them never holds them in memory).
    pub preload: bool,
    /// Re-quantize the chat model's Q4_1 weights to Q8_0 when loading (about 2× faster decoding
    /// for ~50% more memory). Off keeps the file as shipped.
    pub requantize: bool,
}

impl LocalConfig {
    /// `$TOLLGATE_MODEL_DIR`, else `$XDG_CACHE_HOME/tollgate/models`, else
    /// `~/.cache/tollgate/models` (where `scripts/install-models.sh` installs).
    pub fn default_model_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("TOLLGATE_MODEL_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("."));
        cache.join("tollgate").join("models")
    }
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            model_dir: LocalConfig::default_model_dir(),
            chat_queue: 8,
            embed_queue: 64,
            preload: false,
            requantize: true,
        }
    }
}

/// Why a model could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error(
        "{path}: {reason}; install the local models with `make models` (scripts/install-models.sh)"
    )]
    Missing { path: PathBuf, reason: String },
    #[error("model files are unusable: {0}")]
    Invalid(String),
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, ProviderError>>;

struct EmbedJob {
    texts: Vec<String>,
    reply: Reply<Embeddings>,
}

struct ChatJob {
    request: ChatRequest,
    chunks: tokio::sync::mpsc::Sender<Result<ChatChunk, ProviderError>>,
}

/// The local models; see the module docs.
#[derive(Clone)]
pub struct LocalProvider {
    embed: SyncSender<EmbedJob>,
    chat: SyncSender<ChatJob>,
    /// Where the embedding model's weights are, and their version once read.
    embed_dir: PathBuf,
    embed_version: Arc<std::sync::OnceLock<Option<String>>>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider").finish_non_exhaustive()
    }
}

/// True when the weights of both models are where `config` says (it does not check hashes).
pub fn weights_present(config: &LocalConfig) -> bool {
    [
        format!("{EMBEDDING_MODEL}/model.safetensors"),
        format!("{EMBEDDING_MODEL}/tokenizer.json"),
        format!("{CHAT_MODEL}/model.gguf"),
    ]
    .iter()
    .all(|f| config.model_dir.join(f).is_file())
}

fn unavailable(e: &LoadError) -> ProviderError {
    ProviderError::Rejected {
        status: 503,
        message: format!("local model unavailable: {e}"),
    }
}

/// A model's thread is gone (it panicked).
fn stopped(model: &str) -> ProviderError {
    ProviderError::Upstream {
        status: 503,
        message: format!("the local {model} model stopped"),
    }
}

fn busy() -> ProviderError {
    ProviderError::RateLimited {
        retry_after: Some(Duration::from_secs(1)),
    }
}

/// Texts embedded in one forward pass, at most (jobs queued together are batched up to it).
const EMBED_BATCH: usize = 32;

/// Embeds the texts of several jobs in one batch and answers each job with its own vectors;
/// the batch's token count is shared out by each job's share of the texts.
fn embed_together(model: &embed::MiniLm, jobs: Vec<EmbedJob>) {
    let texts: Vec<String> = jobs.iter().flat_map(|j| j.texts.iter().cloned()).collect();
    match model.embed_each(&texts) {
        Ok(mut embedded) => {
            for job in jobs.into_iter().rev() {
                let own = embedded.split_off(embedded.len() - job.texts.len());
                let (vectors, tokens): (Vec<Vec<f32>>, Vec<u64>) = own.into_iter().unzip();
                let _ = job.reply.send(Ok(Embeddings {
                    vectors,
                    prompt_tokens: tokens.iter().sum(),
                }));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(ProviderError::Upstream {
                    status: 500,
                    message: e.clone(),
                }));
            }
        }
    }
}

impl LocalProvider {
    /// Starts the two model threads; each loads its model (at once with `preload`, else when
    /// its first job arrives), then serves its queue.
    pub fn start(config: LocalConfig) -> Self {
        let (embed, embed_jobs) = std::sync::mpsc::sync_channel::<EmbedJob>(config.embed_queue);
        let dir = config.model_dir.join(EMBEDDING_MODEL);
        let embed_dir = dir.clone();
        let preload = config.preload;
        std::thread::Builder::new()
            .name("local-embed".into())
            .spawn(move || {
                let mut model = None;
                if preload {
                    model = Some(loaded("embeddings", || embed::MiniLm::load(&dir)));
                }
                while let Ok(first) = embed_jobs.recv() {
                    let model = model
                        .get_or_insert_with(|| loaded("embeddings", || embed::MiniLm::load(&dir)));
                    // Questions that queued together are embedded together: one padded forward
                    // pass for every job waiting, up to a batch.
                    let mut jobs = vec![first];
                    let mut texts = jobs[0].texts.len();
                    while texts < EMBED_BATCH {
                        match embed_jobs.try_recv() {
                            Ok(job) => {
                                texts += job.texts.len();
                                jobs.push(job);
                            }
                            Err(_) => break,
                        }
                    }
                    match model {
                        Ok(m) => embed_together(m, jobs),
                        Err(e) => {
                            for job in jobs {
                                let _ = job.reply.send(Err(unavailable(e)));
                            }
                        }
                    }
                }
            })
            .ok();
        let (chat, chat_jobs) = std::sync::mpsc::sync_channel::<ChatJob>(config.chat_queue);
        let path = config.model_dir.join(CHAT_MODEL).join("model.gguf");
        let requantize = config.requantize;
        std::thread::Builder::new()
            .name("local-chat".into())
            .spawn(move || {
                let mut model = None;
                if preload {
                    model = Some(loaded("chat", || chat::SmolLm::load(&path, requantize)));
                }
                for job in chat_jobs {
                    let model = model.get_or_insert_with(|| {
                        loaded("chat", || chat::SmolLm::load(&path, requantize))
                    });
                    match model {
                        Ok(m) => run_chat(m, job),
                        Err(e) => {
                            let _ = job.chunks.blocking_send(Err(unavailable(e)));
                        }
                    }
                }
            })
            .ok();
        LocalProvider {
            embed,
            chat,
            embed_dir,
            embed_version: Arc::default(),
        }
    }
}

/// The version of the vectors of the embedding model in `dir`: the first 12 hex digits of its
/// weights' SHA-256, read from `model.safetensors.sha256` (which `scripts/install-models.sh`
/// writes beside them) or, when that is missing or older than the weights, computed. `None`
/// without weights.
pub fn weights_version(dir: &std::path::Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    let weights = dir.join("model.safetensors");
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let written = dir.join("model.safetensors.sha256");
    let weights_modified = modified(&weights);
    let fresh = weights_modified.is_some() && modified(&written) >= weights_modified;
    let recorded = std::fs::read_to_string(&written)
        .ok()
        .filter(|_| fresh)
        .and_then(|text| {
            let hex = text.get(..64)?;
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| hex.to_ascii_lowercase())
        });
    let hex = match recorded {
        Some(hex) => hex,
        None => {
            let mut file = std::fs::File::open(&weights).ok()?;
            let mut hash = Sha256::new();
            std::io::copy(&mut file, &mut hash).ok()?;
            hex::encode(hash.finalize())
        }
    };
    Some(hex[..12].to_owned())
}

fn loaded<T>(what: &str, load: impl FnOnce() -> Result<T, LoadError>) -> Result<T, LoadError> {
    let started = Instant::now();
    let model = load();
    match &model {
        Ok(_) => tracing::info!(
            model = what,
            ms = started.elapsed().as_millis() as u64,
            "local model loaded"
        ),
        Err(e) => tracing::warn!(model = what, error = %e, "local model not loaded"),
    }
    model
}

/// Runs one generation, sending chunks until it ends or the receiver goes away.
fn run_chat(model: &chat::SmolLm, job: ChatJob) {
    let ChatJob { request, chunks } = job;
    let messages: Vec<(String, String)> = request
        .messages
        .iter()
        .map(|m| (m.role.clone(), m.text_content()))
        .collect();
    let prompt = match model.prompt(&messages) {
        Ok(p) => p,
        Err(e) => {
            let _ = chunks.blocking_send(Err(ProviderError::Upstream {
                status: 500,
                message: e,
            }));
            return;
        }
    };
    if prompt.len() >= chat::CONTEXT {
        let _ = chunks.blocking_send(Err(ProviderError::Rejected {
            status: 400,
            message: format!(
                "the prompt has {} tokens; {CHAT_MODEL} reads at most {}",
                prompt.len(),
                chat::CONTEXT - 1
            ),
        }));
        return;
    }
    let room = chat::CONTEXT - prompt.len();
    let sampler = chat::Sampler {
        max_tokens: request
            .max_output_tokens()
            .map_or(chat::DEFAULT_MAX_TOKENS, |m| m as usize)
            .min(room),
        temperature: request.temperature,
        top_p: request.top_p,
        seed: request.seed.map_or_else(rand::random, |s| s as u64),
        stop: stop_strings(&request),
    };
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let (created, name) = (unix_now(), format!("local/{CHAT_MODEL}"));
    let chunk = |delta: Delta, finish: Option<String>| {
        ChatChunk::delta(&id, created, &name, 0, delta, finish)
    };
    let first = Delta {
        role: Some("assistant".into()),
        content: Some(String::new()),
        ..Delta::default()
    };
    if chunks.blocking_send(Ok(chunk(first, None))).is_err() {
        return;
    }
    let result = model.generate(&prompt, &sampler, |piece| {
        let delta = Delta {
            content: Some(piece.to_owned()),
            ..Delta::default()
        };
        chunks.blocking_send(Ok(chunk(delta, None))).is_ok()
    });
    match result {
        Ok((chat::Finish::Abandoned, _)) => {}
        Ok((finish, generated)) => {
            let reason = if finish == chat::Finish::Length {
                "length"
            } else {
                "stop"
            };
            let _ = chunks.blocking_send(Ok(chunk(Delta::default(), Some(reason.into()))));
            let (prompt_tokens, completion_tokens) = (prompt.len() as u64, generated as u64);
            let usage = Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            };
            let _ = chunks.blocking_send(Ok(ChatChunk::usage_only(&id, created, &name, usage)));
        }
        Err(e) => {
            let _ = chunks.blocking_send(Err(ProviderError::Upstream {
                status: 500,
                message: e,
            }));
        }
    }
}

/// What the local chat model cannot do is refused by name, never dropped: tools and tool turns,
/// structured output, log probabilities, several choices, images. A field at its neutral value
/// (null, false, 0, empty) asks for nothing and passes.
fn check_supported(request: &ChatRequest) -> Result<(), ProviderError> {
    let refuse = |field: &str| {
        Err(ProviderError::Rejected {
            status: 400,
            message: format!("`{field}` is not supported by local/{CHAT_MODEL}"),
        })
    };
    if request.n.is_some_and(|n| n > 1) {
        return refuse("n");
    }
    for (k, v) in &request.extra {
        let neutral = v.is_null()
            || v == &serde_json::Value::Bool(false)
            || v.as_f64() == Some(0.0)
            || v.as_array().is_some_and(Vec::is_empty)
            || v.as_object().is_some_and(serde_json::Map::is_empty);
        match k.as_str() {
            "stop" | "stream_options" | "user" | "parallel_tool_calls" => {}
            "response_format" if v.get("type").and_then(|t| t.as_str()) == Some("text") => {}
            "tool_choice" if v == "none" || v == "auto" => {}
            _ if neutral => {}
            other => return refuse(other),
        }
    }
    for (i, m) in request.messages.iter().enumerate() {
        if m.role == "tool" {
            return refuse(&format!("messages[{i}].role: tool"));
        }
        if m.extra
            .get("tool_calls")
            .and_then(|c| c.as_array())
            .is_some_and(|c| !c.is_empty())
        {
            return refuse(&format!("messages[{i}].tool_calls"));
        }
        if let Some(parts) = m.content.as_array() {
            for (j, part) in parts.iter().enumerate() {
                if part.get("type").and_then(|t| t.as_str()) != Some("text") {
                    return refuse(&format!("messages[{i}].content[{j}].type"));
                }
            }
        }
    }
    Ok(())
}

/// `stop`: one string or up to four.
fn stop_strings(request: &ChatRequest) -> Vec<String> {
    match request.extra.get("stop") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn unknown(model: &str) -> ProviderError {
    ProviderError::Rejected {
        status: 404,
        message: format!(
            "no local model {model:?}: local/{EMBEDDING_MODEL} embeds, local/{CHAT_MODEL} chats"
        ),
    }
}

impl Provider for LocalProvider {
    fn embedding_version(&self, model: &str) -> Option<String> {
        if model != EMBEDDING_MODEL {
            return None;
        }
        self.embed_version
            .get_or_init(|| weights_version(&self.embed_dir))
            .clone()
    }

    fn chat_stream(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<ChunkStream, ProviderError>> {
        let queue = self.chat.clone();
        Box::pin(async move {
            if request.model != CHAT_MODEL {
                return Err(unknown(&request.model));
            }
            check_supported(&request)?;
            let (chunks, receiver) = tokio::sync::mpsc::channel(64);
            match queue.try_send(ChatJob { request, chunks }) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(busy()),
                Err(TrySendError::Disconnected(_)) => {
                    return Err(stopped("chat"));
                }
            }
            let stream: ChunkStream = Box::pin(tokio_stream(receiver));
            Ok(stream)
        })
    }

    fn embed(
        &self,
        model: String,
        texts: Vec<String>,
    ) -> BoxFuture<'static, Result<Embeddings, ProviderError>> {
        let queue = self.embed.clone();
        Box::pin(async move {
            if model != EMBEDDING_MODEL {
                return Err(unknown(&model));
            }
            let (reply, answer) = tokio::sync::oneshot::channel();
            match queue.try_send(EmbedJob { texts, reply }) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(busy()),
                Err(TrySendError::Disconnected(_)) => {
                    return Err(stopped("embedding"));
                }
            }
            answer.await.map_err(|_| stopped("embedding"))?
        })
    }
}

/// A receiver as a stream.
fn tokio_stream<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_vectors_version_is_the_weights_hash_recorded_beside_them_or_computed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(weights_version(dir.path()), None, "no weights");
        let weights = dir.path().join("model.safetensors");
        std::fs::write(&weights, "abc").unwrap();
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(weights_version(dir.path()).as_deref(), Some("ba7816bf8f01"));
        let recorded = dir.path().join("model.safetensors.sha256");
        std::fs::write(
            &recorded,
            format!("{}\n", "0123456789AB".repeat(6)[..64].to_owned()),
        )
        .unwrap();
        assert_eq!(weights_version(dir.path()).as_deref(), Some("0123456789ab"));
        // Weights newer than the recorded hash: it is computed again.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&weights)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(weights_version(dir.path()).as_deref(), Some("ba7816bf8f01"));
    }

    #[test]
    fn what_the_local_model_cannot_do_is_refused_by_name() {
        let request = |patch: serde_json::Value| {
            let mut body =
                json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in patch.as_object().into_iter().flatten() {
                body[k] = v.clone();
            }
            serde_json::from_value::<ChatRequest>(body).unwrap_or_else(|e| panic!("{e}"))
        };
        for ok in [
            json!({}),
            json!({"stop": "x", "user": "u", "logprobs": false, "tools": [], "tool_choice": "auto"}),
            json!({"response_format": {"type": "text"}, "presence_penalty": 0}),
        ] {
            assert!(check_supported(&request(ok.clone())).is_ok(), "{ok}");
        }
        for (patch, field) in [
            (
                json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
                "`tools`",
            ),
            (
                json!({"response_format": {"type": "json_object"}}),
                "`response_format`",
            ),
            (json!({"logprobs": true}), "`logprobs`"),
            (json!({"n": 3}), "`n`"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://e.com/a.png"}}]}]}),
                "`messages[0].content[0].type`",
            ),
            (
                json!({"messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]}),
                "`messages[0].role: tool`",
            ),
        ] {
            match check_supported(&request(patch.clone())) {
                Err(ProviderError::Rejected {
                    status: 400,
                    message,
                }) => assert!(message.contains(field), "{patch}: {message}"),
                other => panic!("{patch}: {other:?}"),
            }
        }
    }
}
