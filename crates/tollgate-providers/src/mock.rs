//! The `mock` provider: answers derived deterministically from the prompt (the same request
//! always gets the same text), with a first-token latency, a token rate and an error rate to
//! order. For tests and load tests; it never calls out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tollgate_core::{ApproxTokenCounter, ChatChunk, ChatRequest, Delta, TokenCounter, Usage};

use crate::{ChunkStream, Embeddings, Provider, ProviderError, unix_now};

/// How the mock behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct MockConfig {
    /// Delay before the first chunk.
    pub first_token_latency: Duration,
    /// Chunks per second after the first; 0 sends them all at once.
    pub tokens_per_second: f64,
    /// Fraction of requests answered with a 500, 0 to 1 (spread evenly, deterministic).
    pub error_rate: f64,
    /// Words generated when the request sets no `max_tokens`.
    pub default_max_tokens: u32,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            first_token_latency: Duration::ZERO,
            tokens_per_second: 0.0,
            error_rate: 0.0,
            default_max_tokens: 64,
        }
    }
}

/// The mock provider.
#[derive(Debug, Default)]
pub struct MockProvider {
    config: MockConfig,
    calls: AtomicU64,
}

impl MockProvider {
    /// A mock that behaves as `config` says.
    pub fn new(config: MockConfig) -> Self {
        MockProvider {
            config,
            calls: AtomicU64::new(0),
        }
    }

    /// How many generations were started (failed ones included).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// The words of the answer to `request`: a fixed lead-in and the last user message's words, cut
/// at `max_tokens` (send a longer prompt for a longer answer).
pub fn reply_words(request: &ChatRequest, default_max: u32) -> Vec<String> {
    let mut words: Vec<String> = ["This", "is", "a", "mock", "answer", "to:"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    words.extend(
        last_user_text(request)
            .split_whitespace()
            .map(str::to_owned),
    );
    words.truncate(request.max_output_tokens().unwrap_or(default_max) as usize);
    words
}

fn last_user_text(request: &ChatRequest) -> String {
    request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.text_content())
        .unwrap_or_default()
}

/// Dimensions of the mock's embeddings (all-MiniLM-L6-v2's).
pub const MOCK_EMBEDDING_DIM: usize = 384;

/// A deterministic embedding: each lowercased word, and each character trigram at half weight,
/// adds ±1 at a position picked by its hash (feature hashing), then the vector is normalized.
/// Texts sharing words are similar, identical texts equal, like a (much weaker) real model.
pub fn mock_embedding(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; MOCK_EMBEDDING_DIM];
    let mut add = |feature: &str, weight: f32| {
        // FNV-1a: stable across versions and platforms, unlike std's hasher.
        let h = feature.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let slot = (h % MOCK_EMBEDDING_DIM as u64) as usize;
        v[slot] += if h >> 63 == 0 { weight } else { -weight };
    };
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    for w in &words {
        add(w, 1.0);
        let chars: Vec<char> = format!(" {w} ").chars().collect();
        for tri in chars.windows(3) {
            add(&tri.iter().collect::<String>(), 0.5);
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    } else {
        v[0] = 1.0; // No words: still a direction.
    }
    v
}

impl Provider for MockProvider {
    fn embed(
        &self,
        _model: String,
        texts: Vec<String>,
    ) -> BoxFuture<'static, Result<Embeddings, ProviderError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let prompt_tokens = texts
                .iter()
                .map(|t| t.split_whitespace().count() as u64)
                .sum();
            Ok(Embeddings {
                vectors: texts.iter().map(|t| mock_embedding(t)).collect(),
                prompt_tokens,
            })
        })
    }

    fn chat_stream(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<ChunkStream, ProviderError>> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let config = self.config.clone();
        Box::pin(async move {
            // Error k of every 1/rate requests, evenly spread: deterministic for tests.
            let rate = config.error_rate.clamp(0.0, 1.0);
            if rate > 0.0 && ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor() {
                return Err(ProviderError::Upstream {
                    status: 500,
                    message: "mock error".into(),
                });
            }
            if !config.first_token_latency.is_zero() {
                tokio::time::sleep(config.first_token_latency).await;
            }
            let words = reply_words(&request, config.default_max_tokens);
            let max = request
                .max_output_tokens()
                .unwrap_or(config.default_max_tokens) as usize;
            let full = 6 + last_user_text(&request).split_whitespace().count();
            let finish = if full > max { "length" } else { "stop" };
            let prompt_tokens: u64 = request
                .messages
                .iter()
                .map(|m| u64::from(ApproxTokenCounter.count_message(m)))
                .sum();
            let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
            let created = unix_now();
            let model = request.model.clone();
            let mut chunks = Vec::with_capacity(words.len() + 3);
            let role = Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                ..Delta::default()
            };
            chunks.push(ChatChunk::delta(&id, created, &model, 0, role, None));
            for (i, w) in words.iter().enumerate() {
                let text = if i == 0 { w.clone() } else { format!(" {w}") };
                chunks.push(ChatChunk::delta(
                    &id,
                    created,
                    &model,
                    0,
                    Delta {
                        content: Some(text),
                        ..Delta::default()
                    },
                    None,
                ));
            }
            chunks.push(ChatChunk::delta(
                &id,
                created,
                &model,
                0,
                Delta::default(),
                Some(finish.into()),
            ));
            let completion_tokens = words.len() as u64;
            chunks.push(ChatChunk::usage_only(
                &id,
                created,
                &model,
                Usage {
                    prompt_tokens,
                    completion_tokens,
                    total_tokens: prompt_tokens + completion_tokens,
                },
            ));
            let gap = if config.tokens_per_second > 0.0 {
                Some(Duration::from_secs_f64(1.0 / config.tokens_per_second))
            } else {
                None
            };
            let stream: ChunkStream = match gap {
                None => futures::stream::iter(chunks.into_iter().map(Ok)).boxed(),
                Some(gap) => futures::stream::iter(chunks.into_iter().enumerate())
                    .then(move |(i, c)| async move {
                        if i > 1 {
                            tokio::time::sleep(gap).await;
                        }
                        Ok(c)
                    })
                    .boxed(),
            };
            Ok(stream)
        })
    }
}
