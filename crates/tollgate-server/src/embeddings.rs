//! Embeddings (`POST /v1/embeddings`) and the embedding path that vector collections share: the embedding
//! cache (Redis) answers what it holds in one round trip, only the misses go to the model, in one
//! batch, and are stored for next time. Order is kept. Redis away: everything is computed.
//!
//! The cache is keyed by the model name as requested (an alias over several embedding models
//! should route to models that agree), the version of its vectors ([`version`]) and the text's
//! SHA-256.

use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_redis::EmbeddingCache;
use tracing::Instrument;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::limits::{Charge, admit};
use crate::state::{AppState, Gateway};

/// The version of a model's vectors when neither the configuration
/// (`[embeddings.versions]`) nor its provider (the local models: their weights' hash) gives one.
const DEFAULT_VERSION: &str = "1";

/// The version of `model`'s vectors: `[embeddings.versions]`, else what its provider knows (a
/// local model's weights' hash), else "1". The embedding cache keys vectors by it (old ones are
/// left to expire), and the semantic cache partitions by it.
pub fn version(gw: &Gateway, model: &str) -> String {
    gw.config
        .embeddings
        .versions
        .get(model)
        .cloned()
        .or_else(|| gw.router().embedding_version(model))
        .unwrap_or_else(|| DEFAULT_VERSION.to_owned())
}

/// An embedding model and the version of its vectors (`MODEL@VERSION`): what the semantic cache
/// partitions by.
pub fn embedder(gw: &Gateway, model: &str) -> String {
    format!("{model}@{}", version(gw, model))
}

/// Vectors for `texts`, in order, and how many came from the cache.
#[derive(Debug)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub cached: usize,
    /// Input tokens counted (by the upstream where it tells, else estimated).
    pub prompt_tokens: u64,
}

/// Embeds `texts` with `model`, charging `principal`'s limits, budget and spend for what goes
/// upstream (`None`: the gateway's own use, such as semantic-cache lookups, which no key is
/// charged for).
pub async fn embed_texts(
    gw: &AppState,
    principal: Option<&Principal>,
    model: &str,
    texts: &[String],
) -> Result<Embedded, ApiError> {
    let span = tracing::info_span!(
        target: "otel",
        "embeddings",
        "otel.name" = format!("embeddings {model}"),
        "gen_ai.operation.name" = "embeddings",
        "gen_ai.request.model" = model,
        "gen_ai.usage.input_tokens" = tracing::field::Empty,
        "tollgate.inputs" = texts.len(),
        "tollgate.cached_inputs" = tracing::field::Empty,
    );
    let embedded = embed(gw, principal, model, texts)
        .instrument(span.clone())
        .await;
    if let Ok(e) = &embedded {
        span.record("gen_ai.usage.input_tokens", e.prompt_tokens);
        span.record("tollgate.cached_inputs", e.cached);
    }
    embedded
}

async fn embed(
    gw: &AppState,
    principal: Option<&Principal>,
    model: &str,
    texts: &[String],
) -> Result<Embedded, ApiError> {
    let router = gw.router();
    if !router.knows(model) {
        return Err(ApiError::UnknownModel(model.to_owned()));
    }
    let cache = EmbeddingCache::new(
        gw.embedding_redis.clone(),
        gw.keys.clone(),
        model,
        &version(gw, model),
        Duration::from_secs(gw.config.embeddings.cache_ttl_seconds),
    )
    .map_err(|e| ApiError::bad(e.to_string(), Some("model")))?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut found = match cache.get_many(&refs).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "embedding cache unavailable; computing every input");
            vec![None; texts.len()]
        }
    };
    let misses: Vec<usize> = (0..texts.len()).filter(|&i| found[i].is_none()).collect();
    let cached = texts.len() - misses.len();
    let mut prompt_tokens = 0;
    if !misses.is_empty() {
        let batch: Vec<String> = misses.iter().map(|&i| texts[i].clone()).collect();
        let estimate: u64 = batch
            .iter()
            .map(|t| u64::from(gw.counter.count_text(t)))
            .sum();
        if let Some(p) = principal {
            crate::accounting::check_budget(gw, p, model).await?;
        }
        let admission = match principal {
            Some(p) => Some(
                admit(
                    gw,
                    p,
                    model,
                    Charge::Full {
                        estimated_tokens: estimate,
                    },
                    None,
                )
                .instrument(tracing::info_span!(target: "otel", "limits"))
                .await?,
            ),
            None => None,
        };
        let (_, embeddings) = router.embed(model, batch).await?;
        prompt_tokens = if embeddings.prompt_tokens > 0 {
            embeddings.prompt_tokens
        } else {
            estimate
        };
        if let Some(a) = &admission {
            a.set_used(prompt_tokens);
        }
        if let Some(p) = principal {
            let usage = tollgate_core::Usage {
                prompt_tokens,
                completion_tokens: 0,
                total_tokens: prompt_tokens,
            };
            crate::accounting::record_usage(
                gw,
                &p.into(),
                model,
                None,
                &usage,
                tollgate_db::Served::Upstream,
            )
            .await;
        }
        let fresh: Vec<(&str, &[f32])> = misses
            .iter()
            .zip(&embeddings.vectors)
            .map(|(&i, v)| (texts[i].as_str(), v.as_slice()))
            .collect();
        if let Err(e) = cache.set_many(&fresh).await {
            tracing::warn!(error = %e, "could not store embeddings in the cache");
        }
        for (&i, v) in misses.iter().zip(embeddings.vectors) {
            found[i] = Some(v);
        }
    }
    Ok(Embedded {
        vectors: found.into_iter().flatten().collect(),
        cached,
        prompt_tokens,
    })
}

/// One string or a list of strings (token arrays are not accepted).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Value,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<u64>,
    #[serde(default)]
    pub user: Option<String>,
}

impl EmbeddingsRequest {
    /// The texts, or a 400 naming what is wrong.
    fn texts(&self, max_inputs: usize) -> Result<Vec<String>, ApiError> {
        let bad = |m: &str| ApiError::bad(m, Some("input"));
        let texts = match serde_json::from_value::<Input>(self.input.clone()) {
            Ok(Input::One(t)) => vec![t],
            Ok(Input::Many(ts)) => ts,
            Err(_) => {
                return Err(bad(
                    "input must be a string or an array of strings (token arrays are not supported)",
                ));
            }
        };
        if texts.is_empty() {
            return Err(bad("input must not be empty"));
        }
        if texts.len() > max_inputs {
            return Err(bad(&format!("at most {max_inputs} inputs per request")));
        }
        if texts.iter().any(String::is_empty) {
            return Err(bad("an input string must not be empty"));
        }
        Ok(texts)
    }
}

/// Answers an embeddings request in OpenAI's format; also how many inputs the cache answered.
pub async fn embeddings(
    gw: &AppState,
    principal: &Principal,
    req: EmbeddingsRequest,
) -> Result<(Value, usize), ApiError> {
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad(
                format!("encoding_format must be \"float\" or \"base64\", not {other:?}"),
                Some("encoding_format"),
            ));
        }
    };
    let texts = req.texts(gw.config.embeddings.max_inputs)?;
    let embedded = embed_texts(gw, Some(principal), &req.model, &texts).await?;
    if let Some(d) = req.dimensions
        && embedded
            .vectors
            .first()
            .is_some_and(|v| v.len() as u64 != d)
    {
        return Err(ApiError::bad(
            format!("model {} does not produce {d} dimensions", req.model),
            Some("dimensions"),
        ));
    }
    let data: Vec<Value> = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                Value::String(
                    base64::engine::general_purpose::STANDARD
                        .encode(tollgate_redis::embedding_cache::encode(v)),
                )
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": embedded.prompt_tokens, "total_tokens": embedded.prompt_tokens},
    });
    Ok((body, embedded.cached))
}
