//! The semantic cache: answers of the exact cache ([`crate::response_cache`]) found again by
//! meaning. Each answer the exact cache stores may also be indexed here under the embedding of
//! the question it answered; a later question whose embedding is similar enough, in the same
//! partition, is answered with it.
//!
//! - A partition is everything else the answer depends on: the model, the tenant, the system
//!   prompt and earlier turns, every output-affecting parameter. The caller hashes those into a
//!   context hash; [`SemanticCache::partition`] hashes it with model and tenant, so no name can
//!   reach another tenant's partition, and with the embedding model and its version, so a
//!   changed embedder starts afresh. A hit never crosses models, tenants, contexts or embedders.
//! - A partition is a vector collection of its own (under the prefix's `sc:` space, apart from
//!   user collections) whose items expire with their answers: every instance searches it in
//!   memory, kept in step through Redis (see [`crate::vectors`]).
//! - An item names the exact cache entry (its request hash), it does not copy the answer: a hit
//!   reads the entry from the exact cache, so an expired, evicted or invalidated answer is never
//!   served (the caller then [`SemanticCache::forget`]s the item).
//! - Near is not enough: an item carries its question's signature
//!   ([`tollgate_core::semantic_checks::signature`]: its numbers and whether it is negated) as a
//!   tag, and a lookup finds the nearest question *with the same signature*, so "Sublime Text 2"
//!   never answers "Sublime Text 3" however near their embeddings are.
//! - A threshold can follow an error rate instead of being fixed: [`SemanticCache::record_check`]
//!   folds one checked candidate (its cached answer compared with the upstream's) into the
//!   model's threshold, one hash in Redis shared by every replica (`semantic_check.lua`).
//! - And each entry learns its own bar: a candidate found wrong at similarity `s` raises its
//!   entry's floor ([`SemanticCache::raise_floor`], the item's `@floor` number, logged like any
//!   write so every replica's index has it), and the entry never answers at `s` or below again,
//!   whatever the model's threshold does.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::conn::Redis;
use crate::error::{Error, Result};
use crate::keys::Keys;
use tollgate_core::semantic_checks::{self, signature};

use crate::vectors::{
    Condition, Filter, Metadata, SearchMode, VectorCollections, VectorConfig, VectorItem,
};

/// The tag holding an item's question signature.
const SIGNATURE: &str = "sig";
/// The number holding an item's floor: it answers only above it.
const FLOOR: &str = "@floor";

/// The nearest cached question of a partition, when it is similar enough.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticHit {
    /// The exact cache entry's request hash.
    pub request_hash: String,
    /// Cosine similarity of the two questions' embeddings.
    pub similarity: f32,
}

/// Semantic lookups and inserts on one Redis.
#[derive(Debug, Clone)]
pub struct SemanticCache {
    collections: VectorCollections,
    redis: Redis,
    /// `{prefix}sc:`.
    prefix: String,
}

/// What the checks of one model's semantic candidates found, shared by every replica.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CheckStats {
    /// The threshold now (`None`: no check yet, the configured one holds).
    pub threshold: Option<f32>,
    /// Candidates checked, and how many of them were wrong.
    pub checked: u64,
    pub wrong: u64,
    /// Of those, the ones at or above the threshold (that would have been served).
    pub served_checked: u64,
    pub served_wrong: u64,
}

/// How a check moves a model's threshold.
#[derive(Debug, Clone, Copy)]
pub struct CheckPolicy {
    /// The threshold before any check.
    pub initial: f32,
    /// The share of checked candidates that may be wrong.
    pub max_error_rate: f64,
    /// How far one wrong candidate raises the threshold (times `1 - max_error_rate`).
    pub step: f64,
    /// The threshold never goes below this.
    pub least: f32,
}

impl SemanticCache {
    /// Partitions under `keys`' prefix followed by `sc:`.
    pub fn new(redis: Redis, keys: &Keys, config: VectorConfig) -> Result<Self> {
        let keys = Keys::new(format!("{}sc:", keys.prefix()))?;
        Ok(SemanticCache {
            prefix: keys.prefix().to_owned(),
            collections: VectorCollections::new(redis.clone(), keys, config),
            redis,
        })
    }

    /// The partition of (model, tenant, context hash) for questions embedded by `embedder` (the
    /// embedding model and its version: vectors of another model, or of another version of one,
    /// are never compared) and signed by this version of the checks.
    pub fn partition(model: &str, tenant: &str, context_hash: &str, embedder: &str) -> String {
        let mut h = Sha256::new();
        let checks = semantic_checks::VERSION.to_string();
        for part in [model, tenant, context_hash, embedder, checks.as_str()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// The most similar cached question of `partition` with `question`'s signature, if its
    /// similarity is at least `threshold` and above its entry's floor. Expired entries are never
    /// considered.
    pub async fn lookup(
        &self,
        partition: &str,
        question: &str,
        embedding: Vec<f32>,
        threshold: f32,
    ) -> Result<Option<SemanticHit>> {
        let filter = Filter {
            conditions: vec![Condition::TagIn {
                field: SIGNATURE.into(),
                values: vec![signature(question)],
            }],
        };
        match self
            .collections
            .search(partition, embedding, 1, filter, SearchMode::Auto)
            .await
        {
            Ok(found) => Ok(found
                .hits
                .into_iter()
                .next()
                .filter(|h| {
                    h.score >= threshold
                        && h.metadata
                            .numbers
                            .get(FLOOR)
                            // Compared as the f32 it was: the f64 Redis keeps may be a
                            // hair below it.
                            .is_none_or(|&floor| h.score > floor as f32)
                })
                .map(|h| SemanticHit {
                    request_hash: h.id,
                    similarity: h.score,
                })),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Indexes the exact cache entry `request_hash` under `embedding` for `ttl` (the entry's own).
    pub async fn insert(
        &self,
        partition: &str,
        request_hash: &str,
        embedding: Vec<f32>,
        question: &str,
        ttl: Duration,
    ) -> Result<()> {
        let expires =
            crate::now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        self.collections
            .upsert(
                partition,
                &[VectorItem {
                    id: request_hash.to_owned(),
                    vector: embedding,
                    metadata: Metadata {
                        tags: [(SIGNATURE.to_owned(), signature(question))].into(),
                        ..Metadata::default()
                    },
                    text: Some(question.to_owned()),
                    expires_at_ms: Some(expires),
                }],
            )
            .await
            .map(|_| ())
    }

    /// Raises the floor of the entry `request_hash` to `similarity`: it was found wrong for a
    /// question that near, so it answers only questions nearer than that, on every replica.
    pub async fn raise_floor(
        &self,
        partition: &str,
        request_hash: &str,
        similarity: f32,
    ) -> Result<()> {
        self.collections
            .raise_number(partition, FLOOR, &[(request_hash, f64::from(similarity))])
            .await
            .map(|_| ())
    }

    /// Drops an item whose exact cache entry is gone.
    pub async fn forget(&self, partition: &str, request_hash: &str) -> Result<()> {
        self.collections
            .delete(partition, &[request_hash])
            .await
            .map(|_| ())
    }

    /// The hash holding `model`'s threshold and checks.
    fn checks_key(&self, model: &str) -> String {
        format!("{}threshold:{model}", self.prefix)
    }

    /// `model`'s threshold as its checks have moved it, or `None` before the first check.
    pub async fn threshold(&self, model: &str) -> Result<Option<f32>> {
        let t: Option<String> = redis::cmd("HGET")
            .arg(self.checks_key(model))
            .arg("t")
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(t.and_then(|t| t.parse().ok()))
    }

    /// Folds one checked candidate of `model` into its threshold: `wrong` when its cached answer
    /// differed from the upstream's, `served` when it was at or above the threshold. Returns
    /// the new threshold.
    pub async fn record_check(
        &self,
        model: &str,
        policy: &CheckPolicy,
        wrong: bool,
        served: bool,
    ) -> Result<f64> {
        let t: String = crate::scripts::SEMANTIC_CHECK
            .key(self.checks_key(model))
            .arg(policy.initial)
            .arg(u8::from(wrong))
            .arg(policy.step)
            .arg(policy.max_error_rate)
            .arg(policy.least)
            .arg(u8::from(served))
            .invoke_async(&mut self.redis.conn())
            .await?;
        t.parse()
            .map_err(|_| Error::Decode(format!("semantic threshold {t:?}")))
    }

    /// What the checks of `model`'s candidates found so far.
    pub async fn check_stats(&self, model: &str) -> Result<CheckStats> {
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.checks_key(model))
            .arg(&["t", "checked", "wrong", "served_checked", "served_wrong"])
            .query_async(&mut self.redis.conn())
            .await?;
        let n = |i: usize| -> u64 {
            v.get(i)
                .and_then(|x| x.as_deref())
                .and_then(|x| x.parse().ok())
                .unwrap_or(0)
        };
        Ok(CheckStats {
            threshold: v
                .first()
                .and_then(|x| x.as_deref())
                .and_then(|t| t.parse().ok()),
            checked: n(1),
            wrong: n(2),
            served_checked: n(3),
            served_wrong: n(4),
        })
    }
}
