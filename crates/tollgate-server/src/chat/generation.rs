//! The generation: a request that goes upstream, in a task of its own.
//!
//! The task calls the upstream (through the router: retries, fallbacks, a pinned experiment
//! arm), relays each chunk to the client and to the token stream ([`super::stream_writer`]),
//! and when the answer is complete: stores it in the cache (and indexes its question in the
//! semantic cache), records the session exchange, charges its spend, settles its limits, and
//! only then ends the stream. The client's answer waits for the upstream to accept or refuse,
//! so an upstream that refuses at once is the client's error status, not a broken stream.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tollgate_core::{Aggregator, ChatCompletion, ChatRequest};
use tollgate_redis::{CacheKey, EventKind};
use tracing::Instrument;

use super::history::SessionWrite;
use super::plan::Plan;
use super::reply::{ChatReply, ReplyBody, ReplyMeta, StreamItem};
use super::semantic::SemanticProbe;
use super::stream_writer::StreamWriter;
use crate::accounting::Payer;
use crate::error::ApiError;
use crate::limits::Admission;
use crate::metrics::{CacheResult, TokenKind, TokenLabels};
use crate::state::Gateway;
use crate::task::AbortOnDrop;

/// How the cache takes part in a generation.
pub(super) enum Caching {
    /// This request holds the single-flight lease.
    Lead {
        key: CacheKey,
        generation: String,
        store: bool,
        /// Where to index the answer in the semantic cache once stored.
        semantic: Option<Box<SemanticProbe>>,
        /// Renews the lease from the moment it was taken until the request is done with it,
        /// so a leader that dies at any point frees its identical requests within the lease.
        _renewal: AbortOnDrop,
    },
    /// Store the answer without a lease (`no-cache` but not `no-store`).
    StoreAfter(CacheKey),
    /// Leave the cache out.
    Bypass,
}

impl Plan {
    /// Starts the generation task and answers once the upstream accepted (or refused).
    pub(super) async fn generate(
        self,
        admission: Admission,
        caching: Caching,
        cache: CacheResult,
    ) -> Result<ChatReply, ApiError> {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (started_tx, started) = oneshot::channel();
        let headers = admission.headers.clone();
        let stream = self.req.stream;
        let include_usage = self.include_usage;
        let stream_id = self.stream_id;
        // The token stream is written only when something can read it: the client's own
        // resumable stream, identical requests that may follow a leader, or a client that asked.
        // Otherwise the upstream is asked for a whole answer and Redis sees none of it.
        let relayed = stream || self.resumable || matches!(caching, Caching::Lead { .. });
        let generation = Generation {
            relayed,
            gw: self.gw.clone(),
            owner: self.owner,
            payer: self.payer,
            request: self.req,
            stream_id: stream_id.clone(),
            caching,
            session: self.session,
            ttl: self.ttl,
            admission,
            events: events_tx,
            started: Some(started_tx),
            route: self.route,
            deployment: None,
        };
        tokio::spawn(generation.run().in_current_span());
        let route = started
            .await
            .map_err(|_| ApiError::Internal("the generation task ended early".into()))??;
        let body = if stream {
            let items = futures::stream::unfold(Some(events), move |rx| async move {
                let mut rx = rx?;
                loop {
                    return match rx.recv().await? {
                        GenEvent::Chunk {
                            usage_only: true, ..
                        } if !include_usage => continue,
                        GenEvent::Chunk { seq, json, .. } => Some((
                            StreamItem::Chunk {
                                seq: Some(seq),
                                json,
                            },
                            Some(rx),
                        )),
                        GenEvent::Done(_) => Some((StreamItem::Done, None)),
                        GenEvent::Error(e) => Some((StreamItem::Error(e.body()), None)),
                    };
                }
            });
            ReplyBody::Stream(items.boxed())
        } else {
            loop {
                match events.recv().await {
                    Some(GenEvent::Chunk { .. }) => {}
                    Some(GenEvent::Done(c)) => break ReplyBody::Json(Box::new((*c).clone())),
                    Some(GenEvent::Error(e)) => return Err(e),
                    None => {
                        return Err(ApiError::Internal(
                            "the generation ended without an answer".into(),
                        ));
                    }
                }
            }
        };
        Ok(ChatReply {
            meta: ReplyMeta {
                cache,
                stream_id: relayed.then_some(stream_id),
                route: Some(route),
                headers,
            },
            body,
        })
    }
}

/// The answer's GenAI attributes, on the request's `chat` span (the current one).
fn record_answer(completion: &ChatCompletion, usage: &tollgate_core::Usage) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("gen_ai.response.model", completion.model.as_str());
    span.record("gen_ai.usage.input_tokens", usage.prompt_tokens);
    span.record("gen_ai.usage.output_tokens", usage.completion_tokens);
    let reasons: Vec<&str> = completion
        .choices
        .iter()
        .filter_map(|c| c.finish_reason.as_deref())
        .collect();
    span.record("gen_ai.response.finish_reasons", reasons.join(",").as_str());
}

fn stored_error(e: &ApiError) -> Vec<u8> {
    json!({"status": e.status().as_u16(), "body": e.body()})
        .to_string()
        .into_bytes()
}

enum GenEvent {
    Chunk {
        seq: u64,
        json: Arc<str>,
        usage_only: bool,
    },
    Done(Arc<ChatCompletion>),
    Error(ApiError),
}

struct Generation {
    /// Chunks are relayed through the token stream; else one whole answer, no stream.
    relayed: bool,
    gw: Arc<Gateway>,
    owner: String,
    payer: Payer,
    request: ChatRequest,
    stream_id: String,
    caching: Caching,
    session: Option<SessionWrite>,
    ttl: Option<Duration>,
    admission: Admission,
    events: mpsc::UnboundedSender<GenEvent>,
    started: Option<oneshot::Sender<Result<String, ApiError>>>,
    route: Option<Vec<tollgate_providers::Deployment>>,
    /// The deployment that answered (`provider/model`), once known.
    deployment: Option<String>,
}

impl Generation {
    async fn run(mut self) {
        let gw = self.gw.clone();
        // Whether the client asked for the usage chunk: a resumed read sends what it would have.
        let include_usage = self
            .request
            .stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        // The writer creates the stream while the upstream call starts (chunks queue meanwhile);
        // a follower blocked on the stream's key wakes when it appears.
        let writer = self.relayed.then(|| {
            let meta = json!({"owner": self.owner, "model": self.request.model,
                              "include_usage": include_usage});
            StreamWriter::spawn(
                gw.streams.clone(),
                self.stream_id.clone(),
                meta.to_string().into_bytes(),
                Duration::from_secs(gw.config.streams.producer_timeout_seconds.max(1)) / 3,
            )
        });
        let outcome = if self.relayed {
            self.relay(writer.as_ref()).await
        } else {
            self.whole().await
        };
        match outcome {
            Err(err) => {
                if let Some(w) = writer {
                    w.end(
                        EventKind::Error,
                        stored_error(&err),
                        gw.config.command_timeout(),
                    )
                    .await;
                }
                if let Caching::Lead { key, .. } = &self.caching {
                    let _ = gw.cache.abandon(key, &self.stream_id).await;
                }
                // What the upstream did with a failed request is unknown: keep the reservation.
                self.admission.set_used(self.admission.reserved());
                match self.started.take() {
                    Some(started) => {
                        let _ = started.send(Err(err));
                    }
                    None => {
                        let _ = self.events.send(GenEvent::Error(err));
                    }
                }
            }
            Ok(completion) => {
                let usage = completion.usage.unwrap_or_default();
                gw.metrics
                    .tokens
                    .get_or_create(&TokenLabels {
                        kind: TokenKind::Prompt,
                    })
                    .inc_by(usage.prompt_tokens);
                gw.metrics
                    .tokens
                    .get_or_create(&TokenLabels {
                        kind: TokenKind::Completion,
                    })
                    .inc_by(usage.completion_tokens);
                self.admission.set_used(if completion.usage.is_some() {
                    usage.total_tokens
                } else {
                    self.admission.reserved()
                });
                // Encoded only for the cache: a pass-through's answer is never stored.
                let value = || serde_json::to_vec(&completion).unwrap_or_default();
                match &mut self.caching {
                    Caching::Lead {
                        key,
                        generation,
                        store: true,
                        semantic,
                        ..
                    } => {
                        // What each later hit saves (known only when the upstream reported usage).
                        let saved = completion
                            .usage
                            .map(|u| (u.prompt_tokens, u.completion_tokens));
                        match gw
                            .cache
                            .complete(key, generation, &value(), self.ttl, &self.stream_id, saved)
                            .await
                        {
                            Ok(tollgate_redis::Stored::Yes) => {
                                if let Some(probe) = semantic.take() {
                                    probe
                                        .index(&gw, key, gw.cache.ttl_for(self.ttl), &completion)
                                        .await;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "could not store the answer in the cache");
                            }
                        }
                    }
                    Caching::Lead { key, .. } => {
                        let _ = gw.cache.abandon(key, &self.stream_id).await;
                    }
                    Caching::StoreAfter(key) => {
                        if let Err(e) = gw.cache.put(key, &value(), self.ttl).await {
                            tracing::warn!(error = %e, "could not store the answer in the cache");
                        }
                    }
                    Caching::Bypass => {}
                }
                if let Some(session) = self.session.take() {
                    session.record(&gw, &completion).await;
                }
                record_answer(&completion, &usage);
                // Spend is charged before the answer ends: the key's next request sees it.
                let used = crate::accounting::Used::of(
                    &gw,
                    &self.payer,
                    &self.request.model,
                    self.deployment.as_deref(),
                    &usage,
                    tollgate_db::Served::Upstream,
                );
                used.spend.charge(&gw).await;
                // The usage record is queued before the answer is released (and written after):
                // whoever has seen the answer finds it queued ahead of anything it queues.
                let recorded = crate::accounting::queue(&gw, vec![used.record]);
                // The end reaches the client only once the whole stream is in Redis (or Redis
                // failed to take it in time): what a client saw complete is readable everywhere.
                if let Some(w) = writer {
                    let usage = serde_json::to_vec(&usage).unwrap_or_default();
                    w.end(EventKind::Done, usage, gw.config.command_timeout())
                        .await;
                }
                let _ = self.events.send(GenEvent::Done(Arc::new(completion)));
                // The usage record is written after the answer (this task outlives the client's
                // wait).
                recorded
                    .instrument(tracing::info_span!(target: "otel", "usage record"))
                    .await;
            }
        }
    }

    /// Asks the upstream for a whole answer (no chunks, no token stream).
    async fn whole(&mut self) -> Result<ChatCompletion, ApiError> {
        let gw = self.gw.clone();
        let router = gw.router();
        let deployments = match self.route.take() {
            Some(deployments) => deployments,
            None => router
                .resolve(&self.request.model)
                .map_err(ApiError::Provider)?,
        };
        let (completion, deployment) =
            router
                .chat_via(deployments, &self.request)
                .await
                .map_err(|e| {
                    gw.metrics.upstream_error(&e);
                    ApiError::Provider(e)
                })?;
        self.deployment = Some(deployment.clone());
        if let Some(started) = self.started.take() {
            let _ = started.send(Ok(deployment));
        }
        Ok(completion)
    }

    /// Calls the upstream and relays its chunks; the whole answer when it ends normally.
    async fn relay(&mut self, writer: Option<&StreamWriter>) -> Result<ChatCompletion, ApiError> {
        let gw = self.gw.clone();
        let upstream_error = |e: &tollgate_providers::ProviderError| gw.metrics.upstream_error(e);
        let router = gw.router();
        let routed = match self.route.take() {
            Some(deployments) => router.chat_stream_via(deployments, &self.request).await,
            None => router.chat_stream(&self.request).await,
        };
        let routed = routed.map_err(|e| {
            upstream_error(&e);
            ApiError::Provider(e)
        })?;
        self.deployment = Some(routed.deployment.clone());
        if let Some(started) = self.started.take() {
            let _ = started.send(Ok(routed.deployment.clone()));
        }
        let mut aggregator = Aggregator::default();
        let mut seq = 1;
        let mut stream = routed.stream;
        while let Some(item) = stream.next().await {
            let chunk = item.map_err(|e| {
                upstream_error(&e);
                ApiError::Provider(e)
            })?;
            aggregator.push(&chunk);
            seq += 1;
            let usage_only = chunk.choices.is_empty() && chunk.usage.is_some();
            let json: Arc<str> = serde_json::to_string(&chunk)
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .into();
            if let Some(w) = writer {
                w.chunk(json.clone());
            }
            // The client may be gone; the generation goes on for the cache and the followers.
            let _ = self.events.send(GenEvent::Chunk {
                seq,
                json,
                usage_only,
            });
        }
        Ok(aggregator.finish())
    }
}
