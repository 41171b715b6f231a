//! The semantic cache's part of the chat path: a request's question and partition, the
//! question embedded (through the embedding cache), the nearest stored question's answer, and
//! the question indexed once its answer is stored.
//!
//! It is a side path with a budget: a request waits for its question's embedding at most the
//! typical embedding time (an average of the recent ones) and `semantic_cache.lookup_budget_ms`
//! more, and not at all when the embedder's slots (`semantic_cache.embedding_slots`) are all
//! taken, or when an in-process embedder has spent its share of a busy machine on lookups that
//! miss ([`super::pacer`]); then it goes on as a miss, and its question is indexed after the
//! answer if the embedder has room. So the embedder's speed bounds the hit rate, never the
//! gateway's throughput.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue};
use serde_json::Value;
use tollgate_core::{ChatCompletion, request_hash};
use tollgate_redis::{CacheKey, CheckPolicy};

use super::pacer::Paced;
use crate::auth::Principal;
use crate::metrics::{CheckOutcome, ModelLabels, SemanticCheckLabels, SemanticSkip};
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

/// A question on its way to the semantic cache: embedded in time to look it up, or to be
/// indexed once its answer is stored.
pub(super) struct SemanticProbe {
    pub(super) partition: String,
    pub(super) question: String,
    embedding: Embedding,
    /// A candidate whose cached answer is checked against this request's upstream answer.
    check: Option<Check>,
}

/// A semantic candidate sent upstream as well (`semantic_cache.max_error_rate`): its cached
/// answer is compared with the upstream's once that arrives.
struct Check {
    model: String,
    cached: Vec<u8>,
    /// At or above the threshold: it would have been served.
    served: bool,
    /// The candidate's entry and its similarity: a wrong answer raises that entry's floor.
    request_hash: String,
    similarity: f32,
}

enum Embedding {
    /// Embedded within the lookup budget: looked up, and indexed after a miss.
    Ready(Vec<f32>),
    /// Still embedding when the budget ran out: indexed when it is done.
    Pending(tokio::task::JoinHandle<Option<Vec<f32>>>),
    /// The embedder was saturated: embedded after the answer, if it has room then.
    Later,
}

/// How long the first semantic lookups may take while the embedding model loads: the budget
/// (the typical embedding time and `lookup_budget_ms`) holds once it answered.
const MODEL_LOAD_DEADLINE: Duration = Duration::from_secs(10);

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
        let question = tollgate_core::semantic_checks::question(last.get("content")?.as_str()?);
        if question.is_empty() {
            return None;
        }
        messages.pop();
        let context = request_hash(&body, gw.config.cache.normalization).ok()?;
        Some(SemanticContext {
            partition: tollgate_redis::SemanticCache::partition(
                model,
                tenant,
                &context,
                &crate::embeddings::embedder(gw, &gw.config.semantic_cache.embedding_model),
            ),
            question,
        })
    }

    /// Embeds the question (through the embedding cache, charged to no key) as a side path:
    /// when every embedding slot is taken the request goes on at once as a miss, and when the
    /// embedding takes `semantic_cache.lookup_budget_ms` longer than embeddings typically do, it
    /// goes on without waiting; either way its question is indexed after the answer.
    pub(super) async fn probe(self, gw: &Arc<Gateway>) -> SemanticProbe {
        let probe = |embedding| SemanticProbe {
            partition: self.partition.clone(),
            question: self.question.clone(),
            embedding,
            check: None,
        };
        let Ok(slot) = gw.semantic_slots.clone().try_acquire_owned() else {
            gw.metrics.semantic_skipped(SemanticSkip::Busy);
            return probe(Embedding::Later);
        };
        let Some(paced) = pace(gw) else {
            gw.metrics.semantic_skipped(SemanticSkip::Paced);
            return probe(Embedding::Later);
        };
        let mut task = tokio::spawn(embed_question(
            gw.clone(),
            self.question.clone(),
            (slot, paced),
        ));
        let typical = gw.semantic_embed_us.load(Ordering::Relaxed);
        let budget = if typical == 0 {
            MODEL_LOAD_DEADLINE
        } else {
            Duration::from_micros(typical)
                + Duration::from_millis(gw.config.semantic_cache.lookup_budget_ms)
        };
        match tokio::time::timeout(budget, &mut task).await {
            Ok(Ok(Some(embedding))) => probe(Embedding::Ready(embedding)),
            Ok(_) => probe(Embedding::Later),
            Err(_) => {
                gw.metrics.semantic_skipped(SemanticSkip::Slow);
                probe(Embedding::Pending(task))
            }
        }
    }
}

/// Lets an embedding for the semantic cache start, or not, by the embedder's pace (always, for
/// a model served elsewhere); its time counts until what it returns is dropped.
fn pace(gw: &Gateway) -> Option<Option<Paced>> {
    match &gw.embedder_pacer {
        Some(pacer) => pacer.start().map(Some),
        None => Some(None),
    }
}

/// Embeds a question, holding its embedding slot and its pace (`_held`) until it is done.
async fn embed_question(
    gw: Arc<Gateway>,
    question: String,
    _held: (tokio::sync::OwnedSemaphorePermit, Option<Paced>),
) -> Option<Vec<f32>> {
    let model = &gw.config.semantic_cache.embedding_model;
    let started = Instant::now();
    match crate::embeddings::embed_texts(&gw, None, model, &[question]).await {
        Ok(mut e) => {
            // The typical embedding time, a moving average over about the last eight (the
            // first, which may include loading the model, fades out). It only bounds how long a
            // request holding a slot waits: a saturated embedder is skipped without waiting.
            let took = (started.elapsed().as_micros() as u64).max(1);
            let _ =
                gw.semantic_embed_us
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                        Some(if avg == 0 {
                            took
                        } else {
                            (avg - avg / 8 + took / 8).max(1)
                        })
                    });
            e.vectors.pop()
        }
        Err(e) => {
            tracing::debug!(error = %e, "semantic cache skipped: the question could not be embedded");
            None
        }
    }
}

impl SemanticProbe {
    /// The cached answer of the most similar question, when it is similar enough and its exact
    /// cache entry still exists (an item whose entry expired or was invalidated is forgotten).
    /// `None` at once when the question was not embedded in time.
    ///
    /// With `semantic_cache.max_error_rate`, the threshold is the model's as its checks moved
    /// it, and a `check_rate` share of the candidates within `check_band` below it or above is
    /// not served but checked: the request goes upstream and [`Self::index`] compares answers.
    /// An entry found wrong answers only questions nearer than the one it failed (its floor).
    pub(super) async fn nearest(
        &mut self,
        gw: &Gateway,
        principal: &Principal,
        model: &str,
    ) -> Option<(Vec<u8>, f32)> {
        if !matches!(self.embedding, Embedding::Ready(_)) {
            return None;
        }
        let found = self.search(gw, principal, model).await;
        if let Some(pacer) = &gw.embedder_pacer {
            pacer.looked_up(found.is_some() || self.check.is_some());
        }
        found
    }

    /// [`Self::nearest`] of an embedded question.
    async fn search(
        &mut self,
        gw: &Gateway,
        principal: &Principal,
        model: &str,
    ) -> Option<(Vec<u8>, f32)> {
        let Embedding::Ready(embedding) = &self.embedding else {
            return None;
        };
        let config = &gw.config.semantic_cache;
        let configured = config.threshold_for(model);
        let (threshold, floor) = match config.max_error_rate {
            None => (configured, configured),
            Some(_) => {
                let t = match gw.semantic.threshold(model).await {
                    Ok(t) => t.unwrap_or(configured),
                    Err(e) => {
                        tracing::warn!(error = %e, "semantic threshold unavailable; using the configured one");
                        configured
                    }
                };
                (t, (t - config.check_band).max(0.0))
            }
        };
        let hit = match gw
            .semantic
            .lookup(&self.partition, &self.question, embedding.clone(), floor)
            .await
        {
            Ok(hit) => hit?,
            Err(e) => {
                tracing::warn!(error = %e, "semantic cache unavailable; treating as a miss");
                return None;
            }
        };
        let check = config.max_error_rate.is_some() && uniform() < config.check_rate;
        if !check && hit.similarity < threshold {
            return None;
        }
        let key = CacheKey::new(model, &principal.tenant, &hit.request_hash).ok()?;
        let bytes = match gw.cache.get(&key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let _ = gw.semantic.forget(&self.partition, &hit.request_hash).await;
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "response cache unavailable for a semantic hit");
                return None;
            }
        };
        if check {
            self.check = Some(Check {
                model: model.to_owned(),
                cached: bytes,
                served: hit.similarity >= threshold,
                request_hash: hit.request_hash,
                similarity: hit.similarity,
            });
            return None;
        }
        Some((bytes, hit.similarity))
    }

    /// Indexes the question once its answer is stored under `key`, for as long as the answer.
    /// An embedding at hand is one Redis write, done now (the next identical question finds
    /// it); one still running is awaited off the request path, and a question the embedder had
    /// no room for is embedded then if it has room (else it is not indexed, counted as
    /// `index_dropped`).
    ///
    /// A candidate being checked is compared with `answer` first.
    pub(super) async fn index(
        self,
        gw: &Arc<Gateway>,
        key: &CacheKey,
        ttl: Duration,
        answer: &ChatCompletion,
    ) {
        let SemanticProbe {
            partition,
            question,
            embedding,
            check,
        } = self;
        let (gw, key) = (gw.clone(), key.clone());
        // Recorded before the answer ends (one Redis call, for checked requests only): the
        // next request on any replica sees the threshold it moved.
        if let Some(check) = check {
            let wrong = !same_answer(&check.cached, answer);
            record_check(&gw, &partition, check, wrong).await;
        }
        match embedding {
            Embedding::Ready(e) => insert(&gw, &partition, &question, &key, e, ttl).await,
            Embedding::Pending(task) => {
                tokio::spawn(async move {
                    if let Ok(Some(e)) = task.await {
                        insert(&gw, &partition, &question, &key, e, ttl).await;
                    }
                });
            }
            Embedding::Later => {
                // Lookups come first: a skipped question is indexed late only while no lookup
                // is embedding (every slot free), so indexing never takes a lookup's slot.
                let idle = gw.semantic_slots.available_permits()
                    >= gw.config.semantic_cache.embedding_slots.max(1);
                let held = idle
                    .then(|| gw.semantic_slots.clone().try_acquire_owned().ok())
                    .flatten()
                    .and_then(|slot| Some((slot, pace(&gw)?)));
                let Some(held) = held else {
                    gw.metrics.semantic_skipped(SemanticSkip::IndexDropped);
                    return;
                };
                tokio::spawn(async move {
                    if let Some(e) = embed_question(gw.clone(), question.clone(), held).await {
                        insert(&gw, &partition, &question, &key, e, ttl).await;
                    }
                });
            }
        }
    }
}

/// Puts a question into its partition's index, for as long as its answer.
async fn insert(
    gw: &Gateway,
    partition: &str,
    question: &str,
    key: &CacheKey,
    embedding: Vec<f32>,
    ttl: Duration,
) {
    if let Err(e) = gw
        .semantic
        .insert(partition, key.request_hash(), embedding, question, ttl)
        .await
    {
        tracing::warn!(error = %e, "could not index the answer in the semantic cache");
    }
}

/// A uniform draw in [0, 1) (uuid's fast random generator: no system call).
fn uniform() -> f64 {
    (uuid::Uuid::new_v4().as_u64_pair().0 >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether a cached answer says what a fresh one says (the first choice's message: its text
/// and tool calls). For a deterministic request a right candidate's answer is the same.
fn same_answer(cached: &[u8], fresh: &ChatCompletion) -> bool {
    let message = |v: &Value| v.pointer("/choices/0/message").cloned();
    let (Ok(cached), Ok(fresh)) = (
        serde_json::from_slice::<Value>(cached),
        serde_json::to_value(fresh),
    ) else {
        return false;
    };
    message(&cached).is_some() && message(&cached) == message(&fresh)
}

/// Folds a checked candidate into its model's threshold and, when it was wrong, its entry's
/// floor (both shared through Redis), and into the metrics.
async fn record_check(gw: &Gateway, partition: &str, check: Check, wrong: bool) {
    let config = &gw.config.semantic_cache;
    let Some(max_error_rate) = config.max_error_rate else {
        return;
    };
    if wrong
        && let Err(e) = gw
            .semantic
            .raise_floor(partition, &check.request_hash, check.similarity)
            .await
    {
        tracing::warn!(error = %e, "could not raise a semantic entry's floor");
    }
    gw.metrics
        .semantic_checks
        .get_or_create(&SemanticCheckLabels {
            model: check.model.clone(),
            outcome: if wrong {
                CheckOutcome::Wrong
            } else {
                CheckOutcome::Right
            },
            served: check.served,
        })
        .inc();
    let policy = CheckPolicy {
        initial: config.threshold_for(&check.model),
        max_error_rate,
        step: config.check_step,
        least: config.min_threshold,
    };
    match gw
        .semantic
        .record_check(&check.model, &policy, wrong, check.served)
        .await
    {
        Ok(t) => {
            gw.metrics
                .semantic_threshold
                .get_or_create(&ModelLabels { model: check.model })
                .set(t);
        }
        Err(e) => tracing::warn!(error = %e, "could not record a semantic check"),
    }
}
