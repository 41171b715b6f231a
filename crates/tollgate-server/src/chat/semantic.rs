//! The semantic cache's part of the chat path: a request's question and partition, the
//! question embedded (through the embedding cache), the nearest stored question's answer, and
//! the question indexed once its answer is stored.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use serde_json::Value;
use tollgate_core::request_hash;
use tollgate_redis::CacheKey;

use crate::auth::Principal;
use crate::state::Gateway;

/// The `x-tollgate-cache-similarity` header of a semantic hit.
pub(super) fn similarity_header(similarity: f32) -> Option<(HeaderName, HeaderValue)> {
    let value = HeaderValue::from_str(&format!("{similarity:.4}")).ok()?;
    Some((
        HeaderName::from_static("x-tollgate-cache-similarity"),
        value,
    ))
}

/// What the semantic cache needs of a request: the question (the last message, from the user,
/// as plain text) and the partition of everything else.
pub(super) struct SemanticContext {
    partition: String,
    question: String,
}

/// A question embedded, ready to look up and, after a miss, to index.
pub(super) struct SemanticProbe {
    pub(super) partition: String,
    pub(super) question: String,
    pub(super) embedding: Vec<f32>,
}

/// How long a semantic lookup may take before the request goes on without it (the first one
/// may wait for the embedding model to load).
const SEMANTIC_LOOKUP_DEADLINE: Duration = Duration::from_secs(10);

impl SemanticContext {
    /// The semantic context of a canonical request body: `None` unless its last message is a
    /// user's plain text. The partition hashes the body without that message (system prompt,
    /// earlier turns, every parameter) with the model and tenant.
    pub(super) fn of(
        gw: &Gateway,
        model: &str,
        tenant: &str,
        mut body: Value,
    ) -> Option<SemanticContext> {
        let messages = body.get_mut("messages")?.as_array_mut()?;
        let last = messages.last()?;
        if last.get("role")?.as_str()? != "user" {
            return None;
        }
        let question = last.get("content")?.as_str()?.to_owned();
        if question.trim().is_empty() {
            return None;
        }
        messages.pop();
        let context = request_hash(&body, gw.config.cache.normalization).ok()?;
        Some(SemanticContext {
            partition: tollgate_redis::SemanticCache::partition(model, tenant, &context),
            question,
        })
    }

    /// Embeds the question (through the embedding cache, charged to no key); `None` when the
    /// embedding model is unavailable: the request goes on without the semantic cache.
    pub(super) async fn probe(self, gw: &Arc<Gateway>) -> Option<SemanticProbe> {
        let model = &gw.config.semantic_cache.embedding_model;
        let texts = [self.question.clone()];
        let embedded = tokio::time::timeout(
            SEMANTIC_LOOKUP_DEADLINE,
            crate::embeddings::embed_texts(gw, None, model, &texts),
        )
        .await;
        match embedded {
            Ok(Ok(mut e)) => Some(SemanticProbe {
                partition: self.partition,
                question: self.question,
                embedding: e.vectors.pop()?,
            }),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "semantic cache skipped: the question could not be embedded");
                None
            }
            Err(_) => {
                tracing::debug!("semantic cache skipped: embedding took too long");
                None
            }
        }
    }
}

impl SemanticProbe {
    /// The cached answer of the most similar question, when it is similar enough and its exact
    /// cache entry still exists (an item whose entry expired or was invalidated is forgotten).
    pub(super) async fn nearest(
        &self,
        gw: &Gateway,
        principal: &Principal,
        model: &str,
    ) -> Option<(Vec<u8>, f32)> {
        let threshold = gw.config.semantic_cache.threshold_for(model);
        let hit = match gw
            .semantic
            .lookup(&self.partition, self.embedding.clone(), threshold)
            .await
        {
            Ok(hit) => hit?,
            Err(e) => {
                tracing::warn!(error = %e, "semantic cache unavailable; treating as a miss");
                return None;
            }
        };
        let key = CacheKey::new(model, &principal.tenant, &hit.request_hash).ok()?;
        match gw.cache.get(&key).await {
            Ok(Some(bytes)) => Some((bytes, hit.similarity)),
            Ok(None) => {
                let _ = gw.semantic.forget(&self.partition, &hit.request_hash).await;
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "response cache unavailable for a semantic hit");
                None
            }
        }
    }

    /// Indexes the question once its answer is stored under `key`, for as long as the answer.
    pub(super) async fn index(&self, gw: &Gateway, key: &CacheKey, ttl: Duration) {
        if let Err(e) = gw
            .semantic
            .insert(
                &self.partition,
                key.request_hash(),
                self.embedding.clone(),
                &self.question,
                ttl,
            )
            .await
        {
            tracing::warn!(error = %e, "could not index the answer in the semantic cache");
        }
    }
}
