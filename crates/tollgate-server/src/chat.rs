//! `POST /v1/chat/completions`: the request path, callable without HTTP.
//!
//! Validate → session history → limits (one script) → exact cache, where one lookup either hits,
//! makes this request the leader, or names the leader's token stream to follow → generation.
//!
//! Every generation runs in a task of its own and is written to a token stream in Redis, so:
//! - identical concurrent requests on any instance share one upstream call: the leader's lease
//!   token *is* its stream id, and followers read that stream (streamed callers get the stream,
//!   the others the whole answer);
//! - a stream can be read again, or resumed, from any instance (`GET /v1/streams/{id}`);
//! - a client that goes away does not cut the generation short: it completes for the cache, the
//!   followers and the accounting.
//!
//! The leader's own client gets chunks straight from the task, not through Redis: with Redis
//! down, streaming still works (writes to Redis are best effort, batched off the hot path).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tollgate_core::chat::completion_to_chunks;
use tollgate_core::{Aggregator, ChatCompletion, ChatMessage, ChatRequest, request_hash};
use tollgate_redis::{CacheKey, EventKind, Lead, Window};

use crate::accounting::Payer;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::limits::{ASSUMED_OUTPUT_TOKENS, Admission, Charge, admit};
use crate::metrics::{CacheResult, TokenKind, TokenLabels, UpstreamErrorKind, UpstreamLabels};
use crate::state::Gateway;

/// Per-request switches from headers.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    /// `Cache-Control: no-cache`: do not answer from the cache.
    pub no_cache: bool,
    /// `Cache-Control: no-store`: do not store the answer.
    pub no_store: bool,
    /// `x-tollgate-cache-ttl`.
    pub ttl: Option<Duration>,
    /// `x-tollgate-session-id`.
    pub session_id: Option<String>,
    /// `x-tollgate-user`: sticky experiment arms.
    pub user: Option<String>,
}

/// One server-sent event for the client.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// A `chat.completion.chunk`, with its position in the token stream when it has one.
    Chunk { seq: Option<u64>, json: Arc<str> },
    /// An error after the stream started: one error event, then the end.
    Error(Value),
    /// The end (`data: [DONE]`).
    Done,
}

/// The answer's body.
pub enum ReplyBody {
    /// A whole `chat.completion`.
    Json(Box<ChatCompletion>),
    /// Server-sent events.
    Stream(BoxStream<'static, StreamItem>),
}

impl std::fmt::Debug for ReplyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyBody::Json(c) => f.debug_tuple("Json").field(&c.id).finish(),
            ReplyBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// The answer and what the response headers say about it.
#[derive(Debug)]
pub struct ChatReply {
    pub cache: CacheResult,
    pub stream_id: Option<String>,
    pub route: Option<String>,
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    pub body: ReplyBody,
}

/// A reply's description without its body.
#[derive(Debug)]
pub struct ReplyMeta {
    pub cache: CacheResult,
    pub stream_id: Option<String>,
    pub route: Option<String>,
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
}

impl ChatReply {
    /// The description and the body, apart.
    pub fn into_parts(self) -> (ReplyMeta, ReplyBody) {
        let meta = ReplyMeta {
            cache: self.cache,
            stream_id: self.stream_id,
            route: self.route,
            headers: self.headers,
        };
        (meta, self.body)
    }
}

/// What to write to the session when the answer is complete.
#[derive(Debug, Clone)]
struct SessionWrite {
    id: String,
    owner: String,
    system: Option<String>,
    messages: Vec<ChatMessage>,
}

impl SessionWrite {
    fn record(self, gw: &Arc<Gateway>, completion: &ChatCompletion) {
        let gw = gw.clone();
        let mut messages = self.messages;
        if let Some(choice) = completion.choices.first() {
            messages.push(choice.message.clone());
        }
        tokio::spawn(async move {
            match gw
                .sessions
                .append_or_create_logged(&self.id, &self.owner, self.system.as_deref(), &messages)
                .await
            {
                Ok(written) => {
                    crate::summaries::summarize_session_if_long(
                        &gw,
                        &self.id,
                        &self.owner,
                        written.pending_tokens,
                    );
                    crate::sessions::record_write(&gw, &self.id, &self.owner, &written, &messages)
                        .await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not record the exchange in its session");
                }
            }
        });
    }
}

/// How the cache takes part in a generation.
enum Caching {
    /// This request holds the single-flight lease.
    Lead {
        key: CacheKey,
        generation: String,
        store: bool,
        /// Where to index the answer in the semantic cache once stored.
        semantic: Option<Box<SemanticProbe>>,
    },
    /// Store the answer without a lease (`no-cache` but not `no-store`).
    StoreAfter(CacheKey),
    /// Leave the cache out.
    Bypass,
}

/// Answers a chat request.
///
/// The cache is asked first, so that what a request is charged fits what it costs: a hit or a
/// coalesced follower is charged one request (no tokens, no concurrency slot: it costs the
/// upstream nothing); a request that goes upstream is charged in full before it does.
pub async fn chat_completions(
    gw: &Arc<Gateway>,
    principal: &Principal,
    mut req: ChatRequest,
    opts: ChatOptions,
) -> Result<ChatReply, ApiError> {
    req.validate().map_err(|e| ApiError::BadRequest {
        message: e.message,
        param: e.param,
    })?;
    if !gw.router().knows(&req.model) {
        return Err(ApiError::UnknownModel(req.model));
    }
    crate::accounting::check_budget(gw, principal).await?;
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let session = match &opts.session_id {
        Some(id) => Some(with_history(gw, principal, id, &mut req).await?),
        None => None,
    };
    let prompt: u64 = req
        .messages
        .iter()
        .map(|m| u64::from(gw.counter.count_message(m)))
        .sum();
    let estimate = prompt
        + req
            .max_output_tokens()
            .map_or(ASSUMED_OUTPUT_TOKENS, u64::from);
    let model = req.model.clone();
    let full = || {
        admit(
            gw,
            principal,
            &model,
            Charge::Full {
                estimated_tokens: estimate,
            },
        )
    };

    let cacheable = gw.config.cache.enabled
        && (req.is_deterministic() || gw.config.cache.cache_non_deterministic);
    // An experiment pins the user's arm; arms may answer differently, so the arm is in the key.
    let pinned = gw.pinned_route(&req.model, opts.user.as_deref());
    let mut semantic_context = None;
    let key = if cacheable {
        let mut body = serde_json::to_value(&req).map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Some((arm, _)) = &pinned {
            body["tollgate_route"] = Value::String(arm.clone());
        }
        let hash = request_hash(&body, gw.config.cache.normalization)
            .map_err(|e| ApiError::bad(e.to_string(), None))?;
        if gw.config.semantic_cache.enabled {
            semantic_context = semantic_context_of(gw, &req.model, &principal.tenant, body);
        }
        Some(
            CacheKey::new(&req.model, &principal.tenant, &hash)
                .map_err(|e| ApiError::bad(e.to_string(), None))?,
        )
    } else {
        None
    };
    let stream_id = format!("st_{}", uuid::Uuid::new_v4().simple());
    let plan = Plan {
        gw: gw.clone(),
        owner: principal.subject.clone(),
        payer: Payer::from(principal),
        req,
        include_usage,
        session,
        ttl: opts.ttl,
        route: pinned.map(|(_, route)| route),
    };

    let Some(key) = key else {
        gw.metrics.cache(CacheResult::Bypass);
        return plan
            .generate(
                full().await?,
                Caching::Bypass,
                stream_id,
                CacheResult::Bypass,
            )
            .await;
    };
    if opts.no_cache {
        gw.metrics.cache(CacheResult::Bypass);
        let caching = if opts.no_store {
            Caching::Bypass
        } else {
            Caching::StoreAfter(key)
        };
        return plan
            .generate(full().await?, caching, stream_id, CacheResult::Bypass)
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(gw.config.cache.coalesce_wait_seconds);
    let mut first = true;
    loop {
        match gw.cache.lead(&key, &stream_id, first).await {
            Ok(Lead::Hit(bytes)) => {
                gw.metrics.cache(CacheResult::Hit);
                let admission = admit(gw, principal, &model, Charge::RequestOnly).await?;
                return plan.hit(admission, &bytes);
            }
            Ok(Lead::Leader { generation }) => {
                let probe = match semantic_context.take() {
                    Some(context) => semantic_probe(gw, context).await,
                    None => None,
                };
                if let Some(probe) = &probe
                    && let Some((bytes, similarity)) =
                        semantic_hit(gw, principal, &model, probe).await
                {
                    gw.metrics.cache(CacheResult::Semantic);
                    let _ = gw.cache.abandon(&key, &stream_id).await;
                    let admission = admit(gw, principal, &model, Charge::RequestOnly).await?;
                    let mut reply = plan.hit(admission, &bytes)?;
                    reply.cache = CacheResult::Semantic;
                    if let Ok(v) = HeaderValue::from_str(&format!("{similarity:.4}")) {
                        reply
                            .headers
                            .push((HeaderName::from_static("x-tollgate-cache-similarity"), v));
                    }
                    return Ok(reply);
                }
                gw.metrics.cache(CacheResult::Miss);
                let admission = match full().await {
                    Ok(a) => a,
                    Err(e) => {
                        // Refused: let an identical request that is allowed lead instead.
                        let _ = gw.cache.abandon(&key, &stream_id).await;
                        return Err(e);
                    }
                };
                let caching = Caching::Lead {
                    key,
                    generation,
                    store: !opts.no_store,
                    semantic: probe.map(Box::new),
                };
                return plan
                    .generate(admission, caching, stream_id, CacheResult::Miss)
                    .await;
            }
            Ok(Lead::Follower { holder }) => {
                if let Some(started) = plan.attach(&holder).await? {
                    gw.metrics.cache(CacheResult::Coalesced);
                    let admission = admit(gw, principal, &model, Charge::RequestOnly).await?;
                    return plan.follow(admission, holder, started).await;
                }
                // The leader's stream is gone (it died before writing): try to lead in turn.
                if Instant::now() > deadline {
                    return Err(ApiError::Unavailable(
                        "gave up waiting for an identical request in flight".into(),
                    ));
                }
                first = false;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "response cache unavailable; answering without it");
                gw.metrics.cache(CacheResult::Error);
                return plan
                    .generate(
                        full().await?,
                        Caching::Bypass,
                        stream_id,
                        CacheResult::Bypass,
                    )
                    .await;
            }
            Err(e) => return Err(ApiError::Internal(format!("cache: {e}"))),
        }
    }
}

/// Prepends the session's history to the request; returns what to record afterwards.
async fn with_history(
    gw: &Gateway,
    principal: &Principal,
    id: &str,
    req: &mut ChatRequest,
) -> Result<SessionWrite, ApiError> {
    let tokens = gw.config.sessions.history_token_budget;
    let budget = Window::TokenBudget(tokens);
    let owner = &principal.subject;
    let history = match gw.sessions.history(id, owner, budget).await {
        Ok(h) => h,
        // Not in Redis: the database may still have it (expired, evicted, flushed).
        Err(tollgate_redis::Error::NotFound) => {
            if crate::sessions::restore(gw, id, owner).await? {
                gw.sessions
                    .history(id, owner, budget)
                    .await
                    .unwrap_or_default()
            } else {
                Vec::new()
            }
        }
        Err(tollgate_redis::Error::InvalidArgument(m)) => {
            return Err(ApiError::bad(m, Some("x-tollgate-session-id")));
        }
        Err(e) => {
            tracing::warn!(error = %e, "session history unavailable in Redis; reading the database");
            crate::sessions::history_from_db(gw, id, owner, tokens)
                .await
                .unwrap_or_default()
        }
    };
    let is_system = |m: &ChatMessage| m.role == "system" || m.role == "developer";
    let system = req
        .messages
        .iter()
        .find(|m| is_system(m))
        .map(ChatMessage::text_content);
    let new: Vec<ChatMessage> = req
        .messages
        .iter()
        .filter(|m| !is_system(m))
        .cloned()
        .collect();
    if history.first().is_some_and(is_system) {
        // The session's system prompt stands; the request's own is dropped.
        req.messages.retain(|m| !is_system(m));
    }
    let mut messages = history;
    messages.append(&mut req.messages);
    req.messages = messages;
    Ok(SessionWrite {
        id: id.to_owned(),
        owner: principal.subject.clone(),
        system,
        messages: new,
    })
}

/// Everything a request needs once admitted.
struct Plan {
    gw: Arc<Gateway>,
    owner: String,
    payer: Payer,
    req: ChatRequest,
    include_usage: bool,
    session: Option<SessionWrite>,
    ttl: Option<Duration>,
    /// Deployments in order when an experiment pinned the route.
    route: Option<Vec<tollgate_providers::Deployment>>,
}

impl Plan {
    fn hit(self, admission: Admission, bytes: &[u8]) -> Result<ChatReply, ApiError> {
        let completion: ChatCompletion = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::Internal(format!("cached answer does not decode: {e}")))?;
        let usage = completion.usage.unwrap_or_default();
        let gw = self.gw.clone();
        gw.metrics.saved_tokens.inc_by(usage.total_tokens);
        if let Some(price) = gw.config.prices.get(&self.req.model) {
            gw.metrics
                .saved_dollars
                .inc_by(price.cost(usage.prompt_tokens, usage.completion_tokens));
        }
        if let Some(s) = self.session {
            s.record(&gw, &completion);
        }
        record_cached(&gw, &self.payer, &self.req.model, &completion);
        let headers = admission.headers.clone();
        drop(admission);
        let body = if self.req.stream {
            let mut items: Vec<StreamItem> = completion_to_chunks(&completion, self.include_usage)
                .iter()
                .filter_map(|c| serde_json::to_string(c).ok())
                .map(|json| StreamItem::Chunk {
                    seq: None,
                    json: json.into(),
                })
                .collect();
            items.push(StreamItem::Done);
            ReplyBody::Stream(futures::stream::iter(items).boxed())
        } else {
            ReplyBody::Json(Box::new(completion))
        };
        Ok(ChatReply {
            cache: CacheResult::Hit,
            stream_id: None,
            route: None,
            headers,
            body,
        })
    }

    /// Starts the generation task and answers once the upstream accepted (or refused).
    async fn generate(
        self,
        admission: Admission,
        caching: Caching,
        stream_id: String,
        cache: CacheResult,
    ) -> Result<ChatReply, ApiError> {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (started_tx, started) = oneshot::channel();
        let headers = admission.headers.clone();
        let stream = self.req.stream;
        let include_usage = self.include_usage;
        let generation = Generation {
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
        tokio::spawn(generation.run());
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
            cache,
            stream_id: Some(stream_id),
            route: Some(route),
            headers,
            body,
        })
    }

    /// Waits for the first chunk of the leader's stream; `None` when there is no such stream.
    async fn attach(&self, holder: &str) -> Result<Option<Attached>, ApiError> {
        let reader = match self.gw.streams.reader(holder).await {
            Ok(r) => r,
            Err(_) => return Ok(None),
        };
        let mut follower = reader.follow(0, Duration::from_secs(2));
        loop {
            match follower.next().await {
                Ok(Some(e)) if e.kind == EventKind::Start => continue,
                Ok(Some(e)) if e.kind == EventKind::Error => return Err(relayed_error(&e.data)),
                Ok(Some(e)) => return Ok(Some(Attached { first: e, follower })),
                Ok(None) | Err(tollgate_redis::Error::NotFound) => return Ok(None),
                Err(e) => {
                    tracing::warn!(error = %e, "could not follow an identical request in flight");
                    return Ok(None);
                }
            }
        }
    }

    /// Answers from the leader's stream: as a stream, or folded into the whole answer.
    async fn follow(
        self,
        admission: Admission,
        holder: String,
        attached: Attached,
    ) -> Result<ChatReply, ApiError> {
        let headers = admission.headers.clone();
        if !self.req.stream {
            let mut aggregator = Aggregator::default();
            let (mut pending, mut follower) = (Some(attached.first), attached.follower);
            loop {
                let event = match pending.take() {
                    Some(e) => e,
                    None => match follower.next().await {
                        Ok(Some(e)) => e,
                        Ok(None) => break,
                        Err(e) => {
                            return Err(ApiError::Unavailable(format!(
                                "lost the shared stream: {e}"
                            )));
                        }
                    },
                };
                match event.kind {
                    EventKind::Start => {}
                    EventKind::Chunk => {
                        if let Ok(chunk) =
                            serde_json::from_slice::<tollgate_core::ChatChunk>(&event.data)
                        {
                            aggregator.push(&chunk);
                        }
                    }
                    EventKind::Done => break,
                    EventKind::Error => return Err(relayed_error(&event.data)),
                }
            }
            let completion = aggregator.finish();
            if let Some(session) = self.session {
                session.record(&self.gw, &completion);
            }
            record_cached(&self.gw, &self.payer, &self.req.model, &completion);
            drop(admission);
            let body = ReplyBody::Json(Box::new(completion));
            return Ok(ChatReply {
                cache: CacheResult::Miss,
                stream_id: Some(holder),
                route: None,
                headers,
                body,
            });
        }
        let include_usage = self.include_usage;
        let gw = self.gw.clone();
        let session = self.session;
        struct State {
            pending: Option<tollgate_redis::StreamEvent>,
            follower: tollgate_redis::Follower,
            aggregator: Aggregator,
            session: Option<SessionWrite>,
            gw: Arc<Gateway>,
            payer: Payer,
            model: String,
            _admission: Admission,
        }
        let state = State {
            pending: Some(attached.first),
            follower: attached.follower,
            aggregator: Aggregator::default(),
            session,
            gw,
            payer: self.payer,
            model: self.req.model,
            _admission: admission,
        };
        let items = futures::stream::unfold(Some(state), move |state| async move {
            let mut s = state?;
            loop {
                let event = match s.pending.take() {
                    Some(e) => e,
                    None => match s.follower.next().await {
                        Ok(Some(e)) => e,
                        Ok(None) => return None,
                        Err(e) => {
                            let err = ApiError::Unavailable(format!("lost the shared stream: {e}"));
                            return Some((StreamItem::Error(err.body()), None));
                        }
                    },
                };
                match event.kind {
                    EventKind::Start => continue,
                    EventKind::Chunk => {
                        let Ok(json) = String::from_utf8(event.data) else {
                            continue;
                        };
                        let chunk: Option<tollgate_core::ChatChunk> =
                            serde_json::from_str(&json).ok();
                        let usage_only = chunk
                            .as_ref()
                            .is_some_and(|c| c.choices.is_empty() && c.usage.is_some());
                        if let Some(c) = &chunk {
                            s.aggregator.push(c);
                        }
                        if usage_only && !include_usage {
                            continue;
                        }
                        return Some((
                            StreamItem::Chunk {
                                seq: Some(event.seq),
                                json: json.into(),
                            },
                            Some(s),
                        ));
                    }
                    EventKind::Done => {
                        let completion = std::mem::take(&mut s.aggregator).finish();
                        if let Some(session) = s.session.take() {
                            session.record(&s.gw, &completion);
                        }
                        record_cached(&s.gw, &s.payer, &s.model, &completion);
                        return Some((StreamItem::Done, None));
                    }
                    EventKind::Error => {
                        return Some((StreamItem::Error(relayed_error(&event.data).body()), None));
                    }
                }
            }
        })
        .boxed();
        Ok(ChatReply {
            cache: CacheResult::Miss,
            stream_id: Some(holder),
            route: None,
            headers,
            body: ReplyBody::Stream(items),
        })
    }
}

struct Attached {
    first: tollgate_redis::StreamEvent,
    follower: tollgate_redis::Follower,
}

/// Records the usage of an answer that cost the upstream nothing (a cache hit, a coalesced
/// follower), off the request path.
fn record_cached(gw: &Arc<Gateway>, payer: &Payer, model: &str, completion: &ChatCompletion) {
    let (gw, payer, model) = (gw.clone(), payer.clone(), model.to_owned());
    let usage = completion.usage.unwrap_or_default();
    tokio::spawn(async move {
        crate::accounting::record_usage(&gw, &payer, &model, None, &usage, true).await;
    });
}

/// An error stored in a token stream: `{"status": 502, "body": {"error": ...}}`.
fn relayed_error(data: &[u8]) -> ApiError {
    let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
    let status = v.get("status").and_then(Value::as_u64).unwrap_or(502) as u16;
    let body = v.get("body").cloned().unwrap_or_else(|| json!({"error": {"message": "upstream failed", "type": "upstream_error", "param": null, "code": null}}));
    ApiError::Relayed { status, body }
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
        let meta = json!({"owner": self.owner, "model": self.request.model}).to_string();
        // The writer creates the stream while the upstream call starts (chunks queue meanwhile);
        // a follower blocked on the stream's key wakes when it appears.
        let writer = Some(StreamWriter::spawn(
            gw.streams.clone(),
            self.stream_id.clone(),
            meta.into_bytes(),
            Duration::from_secs(gw.config.streams.producer_timeout_seconds.max(1)) / 3,
        ));
        let renewal = match &self.caching {
            Caching::Lead { key, .. } => {
                let (gw, key, token) = (gw.clone(), key.clone(), self.stream_id.clone());
                Some(tokio::spawn(async move {
                    let mut every = tokio::time::interval(Duration::from_secs(10));
                    every.tick().await;
                    loop {
                        every.tick().await;
                        let _ = gw.cache.renew(&key, &token).await;
                    }
                }))
            }
            _ => None,
        };
        let outcome = self.relay(writer.as_ref()).await;
        if let Some(r) = renewal {
            r.abort();
        }
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
                let value = serde_json::to_vec(&completion).unwrap_or_default();
                match &self.caching {
                    Caching::Lead {
                        key,
                        generation,
                        store: true,
                        semantic,
                    } => {
                        // What each later hit saves (known only when the upstream reported usage).
                        let saved = completion
                            .usage
                            .map(|u| (u.prompt_tokens, u.completion_tokens));
                        match gw
                            .cache
                            .complete(key, generation, &value, self.ttl, &self.stream_id, saved)
                            .await
                        {
                            Ok(tollgate_redis::Stored::Yes) => {
                                if let Some(probe) = semantic {
                                    let ttl = gw.cache.ttl_for(self.ttl);
                                    if let Err(e) = gw
                                        .semantic
                                        .insert(
                                            &probe.partition,
                                            key.request_hash(),
                                            probe.embedding.clone(),
                                            &probe.question,
                                            ttl,
                                        )
                                        .await
                                    {
                                        tracing::warn!(error = %e, "could not index the answer in the semantic cache");
                                    }
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
                        if let Err(e) = gw.cache.put(key, &value, self.ttl).await {
                            tracing::warn!(error = %e, "could not store the answer in the cache");
                        }
                    }
                    Caching::Bypass => {}
                }
                if let Some(session) = self.session.take() {
                    session.record(&gw, &completion);
                }
                // Spend is charged before the answer ends: the key's next request sees it.
                crate::accounting::record_usage(
                    &gw,
                    &self.payer,
                    &self.request.model,
                    self.deployment.as_deref(),
                    &usage,
                    false,
                )
                .await;
                // The end reaches the client only once the whole stream is in Redis (or Redis
                // failed to take it in time): what a client saw complete is readable everywhere.
                if let Some(w) = writer {
                    let usage = serde_json::to_vec(&usage).unwrap_or_default();
                    w.end(EventKind::Done, usage, gw.config.command_timeout())
                        .await;
                }
                let _ = self.events.send(GenEvent::Done(Arc::new(completion)));
            }
        }
    }

    /// Calls the upstream and relays its chunks; the whole answer when it ends normally.
    async fn relay(&mut self, writer: Option<&StreamWriter>) -> Result<ChatCompletion, ApiError> {
        let gw = self.gw.clone();
        let upstream_error = |e: &tollgate_providers::ProviderError| {
            gw.metrics
                .upstream_errors
                .get_or_create(&UpstreamLabels {
                    kind: UpstreamErrorKind::of(e),
                })
                .inc();
        };
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

/// Writes a generation's chunks to its token stream from a task of its own, batching what
/// accumulates while a write is in flight; errors are logged once and stop the writes, never
/// the generation.
struct StreamWriter {
    tx: mpsc::UnboundedSender<WriterMsg>,
}

enum WriterMsg {
    Chunk(Arc<str>),
    /// The terminal entry; the sender is told once it is written (or could not be).
    End(EventKind, Vec<u8>, oneshot::Sender<()>),
}

impl StreamWriter {
    fn spawn(
        streams: tollgate_redis::TokenStreams,
        id: String,
        meta: Vec<u8>,
        beat: Duration,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<WriterMsg>();
        tokio::spawn(async move {
            let mut producer = match streams.create(&id, &meta).await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "token stream unavailable; streaming to this client only");
                    None
                }
            };
            let mut broken = producer.is_none();
            let mut batch: Vec<Arc<str>> = Vec::new();
            // Between chunks (a slow first token), beats show readers the generation lives.
            let mut beats = tokio::time::interval(beat);
            beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let first = tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(m) => m,
                        None => break,
                    },
                    _ = beats.tick() => {
                        if let Some(p) = producer.as_ref().filter(|_| !broken) {
                            let _ = p.heartbeat().await;
                        }
                        continue;
                    }
                };
                let mut end = None;
                let mut next = Some(first);
                while let Some(msg) = next.take() {
                    match msg {
                        WriterMsg::Chunk(c) => batch.push(c),
                        WriterMsg::End(kind, data, written) => {
                            end = Some((kind, data, written));
                            break;
                        }
                    }
                    next = rx.try_recv().ok();
                }
                if let Some(producer) = producer.as_mut().filter(|_| !broken && !batch.is_empty()) {
                    let refs: Vec<&[u8]> = batch.iter().map(|c| c.as_bytes()).collect();
                    if let Err(e) = producer.push_many(&refs).await {
                        tracing::warn!(error = %e, "token stream write failed; this stream is no longer resumable");
                        broken = true;
                    }
                }
                batch.clear();
                if let Some((kind, data, written)) = end {
                    if let Some(producer) = producer.take().filter(|_| !broken) {
                        let result = match kind {
                            EventKind::Error => producer.fail(&data).await,
                            _ => producer.finish(&data).await,
                        };
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "could not end the token stream");
                        }
                    }
                    let _ = written.send(());
                    return;
                }
            }
        });
        StreamWriter { tx }
    }

    fn chunk(&self, json: Arc<str>) {
        let _ = self.tx.send(WriterMsg::Chunk(json));
    }

    /// Writes the terminal entry after everything queued, and waits (at most `wait`) until the
    /// stream is complete in Redis.
    async fn end(self, kind: EventKind, data: Vec<u8>, wait: Duration) {
        let (written, done) = oneshot::channel();
        if self.tx.send(WriterMsg::End(kind, data, written)).is_ok() {
            let _ = tokio::time::timeout(wait, done).await;
        }
    }
}

/// What the semantic cache needs of a request: the question (the last message, from the user,
/// as plain text) and the partition of everything else.
struct SemanticContext {
    partition: String,
    question: String,
}

/// A question embedded, ready to look up and, after a miss, to index.
struct SemanticProbe {
    partition: String,
    question: String,
    embedding: Vec<f32>,
}

/// The semantic context of a canonical request body: `None` unless its last message is a user's
/// plain text. The partition hashes the body without that message (system prompt, earlier
/// turns, every parameter) with the model and tenant.
fn semantic_context_of(
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

/// How long a semantic lookup may take before the request goes on without it (the first one
/// may wait for the embedding model to load).
const SEMANTIC_LOOKUP_DEADLINE: Duration = Duration::from_secs(10);

/// Embeds the question (through the embedding cache, charged to no key); `None` when the
/// embedding model is unavailable: the request goes on without the semantic cache.
async fn semantic_probe(gw: &Arc<Gateway>, context: SemanticContext) -> Option<SemanticProbe> {
    let model = &gw.config.semantic_cache.embedding_model;
    let texts = [context.question.clone()];
    let embedded = tokio::time::timeout(
        SEMANTIC_LOOKUP_DEADLINE,
        crate::embeddings::embed_texts(gw, None, model, &texts),
    )
    .await;
    match embedded {
        Ok(Ok(mut e)) => Some(SemanticProbe {
            partition: context.partition,
            question: context.question,
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

/// The cached answer of the most similar question, when it is similar enough and its exact
/// cache entry still exists (an item whose entry expired or was invalidated is forgotten).
async fn semantic_hit(
    gw: &Arc<Gateway>,
    principal: &Principal,
    model: &str,
    probe: &SemanticProbe,
) -> Option<(Vec<u8>, f32)> {
    let threshold = gw.config.semantic_cache.threshold_for(model);
    let hit = match gw
        .semantic
        .lookup(&probe.partition, probe.embedding.clone(), threshold)
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
            let _ = gw
                .semantic
                .forget(&probe.partition, &hit.request_hash)
                .await;
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "response cache unavailable for a semantic hit");
            None
        }
    }
}
