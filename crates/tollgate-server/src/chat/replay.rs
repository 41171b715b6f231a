//! Answers that cost the upstream nothing: a cached answer replayed (as JSON or as the stream it
//! would have been), an identical request's token stream followed, and a token stream read
//! again from any instance (`GET /v1/streams/{id}`).
//!
//! A token stream's events become client items in one place, [`relay`], whoever reads them.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tollgate_core::chat::completion_to_chunks;
use tollgate_core::{Aggregator, ChatChunk, Usage};
use tollgate_db::Served;
use tollgate_redis::{EventKind, Follower, StreamEvent};

use super::history::SessionWrite;
use super::plan::Plan;
use super::reply::{ChatReply, ReplyBody, ReplyMeta, StreamItem};
use super::semantic::similarity_header;
use crate::accounting::Payer;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::limits::Admission;
use crate::metrics::CacheResult;
use crate::state::Gateway;

/// The leader's token stream, from its first event.
pub(crate) struct Attached {
    first: StreamEvent,
    follower: Follower,
}

/// What a follower found of its leader's token stream.
pub(super) enum Leader {
    /// Its first event: follow it.
    Attached(Box<Attached>),
    /// No stream (yet, or any more): ask the cache again.
    Absent,
    /// The stream's producer stopped before its end: the leader's gateway died.
    Dead,
}

/// Waits for the first event of the leader's stream.
pub(super) async fn attach(gw: &Gateway, holder: &str) -> Result<Leader, ApiError> {
    let reader = match gw.streams.reader(holder).await {
        Ok(r) => r,
        Err(_) => return Ok(Leader::Absent),
    };
    // What it wrote is there, but it will never end: following it would end in an error.
    if matches!(reader.abandoned().await, Ok(true)) {
        return Ok(Leader::Dead);
    }
    let mut follower = reader.follow(0, Duration::from_secs(2));
    loop {
        match follower.next().await {
            Ok(Some(e)) if e.kind == EventKind::Start => continue,
            Ok(Some(e)) if e.kind == EventKind::Error => return Err(relayed_error(&e.data)),
            Ok(Some(e)) => {
                return Ok(Leader::Attached(Box::new(Attached { first: e, follower })));
            }
            Ok(None) | Err(tollgate_redis::Error::NotFound) => return Ok(Leader::Absent),
            Err(tollgate_redis::Error::Abandoned) => return Ok(Leader::Dead),
            Err(e) => {
                tracing::warn!(error = %e, "could not follow an identical request in flight");
                return Ok(Leader::Absent);
            }
        }
    }
}

/// One event of a token stream, as a client sees it.
pub(crate) enum Relayed {
    Chunk { seq: u64, json: String },
    Done,
    Failed(ApiError),
}

impl Relayed {
    /// The client item.
    pub(crate) fn item(self) -> StreamItem {
        match self {
            Relayed::Chunk { seq, json } => StreamItem::Chunk {
                seq: Some(seq),
                json: json.into(),
            },
            Relayed::Done => StreamItem::Done,
            Relayed::Failed(e) => StreamItem::Error(e.body()),
        }
    }
}

/// The events of a token stream (after `first`, when given), through its end or its first error.
pub(crate) fn relay(follower: Follower, first: Option<StreamEvent>) -> BoxStream<'static, Relayed> {
    futures::stream::unfold(Some((first, follower)), |state| async move {
        let (mut pending, mut follower) = state?;
        loop {
            let event = match pending.take() {
                Some(e) => e,
                None => match follower.next().await {
                    Ok(Some(e)) => e,
                    Ok(None) => return None,
                    Err(e) => return Some((Relayed::Failed(stream_error(e)), None)),
                },
            };
            return match event.kind {
                EventKind::Start => continue,
                EventKind::Chunk => {
                    let json = String::from_utf8_lossy(&event.data).into_owned();
                    Some((
                        Relayed::Chunk {
                            seq: event.seq,
                            json,
                        },
                        Some((None, follower)),
                    ))
                }
                EventKind::Done => Some((Relayed::Done, None)),
                EventKind::Error => Some((Relayed::Failed(relayed_error(&event.data)), None)),
            };
        }
    })
    .boxed()
}

/// Why reading a token stream failed, for the client.
fn stream_error(e: tollgate_redis::Error) -> ApiError {
    match e {
        tollgate_redis::Error::Abandoned => ApiError::stream_interrupted(),
        tollgate_redis::Error::Trimmed { .. } | tollgate_redis::Error::NotFound => {
            ApiError::NotFound(format!("the stream no longer holds those events: {e}"))
        }
        other => {
            tracing::warn!(error = %other, "token stream read failed");
            ApiError::Unavailable(format!("streams: {other}"))
        }
    }
}

/// An error stored in a token stream: `{"status": 502, "body": {"error": ...}}`.
pub(super) fn relayed_error(data: &[u8]) -> ApiError {
    let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
    let status = v.get("status").and_then(Value::as_u64).unwrap_or(502) as u16;
    let body = v.get("body").cloned().unwrap_or_else(|| json!({"error": {"message": "upstream failed", "type": "upstream_error", "param": null, "code": null}}));
    ApiError::Relayed { status, body }
}

/// The token stream `id` as client items, after position `after`, for `principal` (its owner
/// or an admin: to anyone else it does not exist).
pub async fn read_stream(
    gw: &Gateway,
    principal: &Principal,
    id: &str,
    after: u64,
) -> Result<BoxStream<'static, StreamItem>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no stream {id:?}"));
    // A generation writes its stream while it starts upstream: a reader arriving in its first
    // milliseconds waits for the stream to appear (up to a second) rather than getting a 404.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let meta = loop {
        match gw.streams.start_meta(id).await {
            Ok(m) => break m,
            Err(tollgate_redis::Error::NotFound) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(tollgate_redis::Error::NotFound | tollgate_redis::Error::InvalidArgument(_)) => {
                return Err(not_found());
            }
            Err(e) => return Err(ApiError::Unavailable(format!("streams: {e}"))),
        }
    };
    let meta = serde_json::from_slice::<Value>(&meta).unwrap_or(Value::Null);
    let owner = meta.get("owner").and_then(Value::as_str);
    if owner != Some(principal.subject.as_str()) && !principal.admin {
        return Err(not_found());
    }
    // The usage chunk goes to a reader only if the generation's client asked for it.
    let include_usage = meta
        .get("include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let reader = gw.streams.reader(id).await?;
    let follower = reader.follow(after, Duration::from_secs(5));
    Ok(relay(follower, None)
        .filter(move |event| {
            let keep =
                include_usage || !matches!(event, Relayed::Chunk { json, .. } if usage_only(json));
            std::future::ready(keep)
        })
        .map(Relayed::item)
        .boxed())
}

/// True for the chunk that carries only usage (`stream_options.include_usage`).
fn usage_only(json: &str) -> bool {
    serde_json::from_str::<ChatChunk>(json).is_ok_and(|c| c.choices.is_empty() && c.usage.is_some())
}

/// Records the usage of an answer that cost the upstream nothing (a cache hit, a coalesced
/// follower): no spend to charge, and its record goes with the outbox's next entry, off the
/// request path.
fn record_cached(gw: &Gateway, payer: &Payer, model: &str, usage: &Usage, served: Served) {
    let used = crate::accounting::Used::of(gw, payer, model, None, usage, served);
    crate::accounting::send(gw, vec![used.record]);
}

/// The usage of a stored answer, read without decoding the rest of it.
fn stored_usage(bytes: &[u8]) -> Result<Usage, ApiError> {
    #[derive(serde::Deserialize)]
    struct Stored {
        #[serde(default)]
        usage: Option<Usage>,
    }
    let stored: Stored = super::reply::decode(bytes)?;
    Ok(stored.usage.unwrap_or_default())
}

impl Plan {
    /// Answers from a cached answer (`similarity`: a semantic hit's).
    pub(super) async fn hit(
        self,
        admission: Admission,
        bytes: Vec<u8>,
        similarity: Option<f32>,
    ) -> Result<ChatReply, ApiError> {
        // A whole answer with no session to record it in, for a caller that does not translate
        // it, is served as stored: only its usage is read (for the accounting and the savings).
        let (completion, usage) = if self.req.stream || self.session.is_some() || self.decoded {
            let completion: tollgate_core::ChatCompletion = super::reply::decode(&bytes)?;
            let usage = completion.usage.unwrap_or_default();
            (Some(completion), usage)
        } else {
            (None, stored_usage(&bytes)?)
        };
        let gw = self.gw.clone();
        gw.metrics.saved_tokens.inc_by(usage.total_tokens);
        if let Some(price) = gw.config.price(&self.req.model, None) {
            gw.metrics
                .saved_dollars
                .inc_by(price.cost(usage.prompt_tokens, usage.completion_tokens));
        }
        if let (Some(s), Some(completion)) = (self.session, &completion) {
            s.record(&gw, completion).await;
        }
        let served = match similarity {
            Some(_) => Served::Semantic,
            None => Served::Exact,
        };
        record_cached(&gw, &self.payer, &self.req.model, &usage, served);
        let mut headers = admission.headers.clone();
        drop(admission);
        let body = match completion {
            None => ReplyBody::Stored(bytes.into()),
            Some(completion) if self.req.stream => {
                let mut items: Vec<StreamItem> =
                    completion_to_chunks(&completion, self.include_usage)
                        .iter()
                        .filter_map(|c| serde_json::to_string(c).ok())
                        .map(|json| StreamItem::Chunk {
                            seq: None,
                            json: json.into(),
                        })
                        .collect();
                items.push(StreamItem::Done);
                ReplyBody::Stream(futures::stream::iter(items).boxed())
            }
            Some(completion) => ReplyBody::Json(Box::new(completion)),
        };
        headers.extend(similarity.and_then(similarity_header));
        let cache = match similarity {
            Some(_) => CacheResult::Semantic,
            None => CacheResult::Hit,
        };
        Ok(ChatReply {
            meta: ReplyMeta {
                cache,
                stream_id: None,
                route: None,
                headers,
            },
            body,
        })
    }

    /// Answers from the leader's stream: as a stream, or folded into the whole answer.
    pub(super) async fn follow(
        self,
        admission: Admission,
        holder: String,
        attached: Attached,
    ) -> Result<ChatReply, ApiError> {
        let meta = ReplyMeta {
            cache: CacheResult::Miss,
            stream_id: Some(holder),
            route: None,
            headers: admission.headers.clone(),
        };
        let mut events = relay(attached.follower, Some(attached.first));
        if !self.req.stream {
            let mut aggregator = Aggregator::default();
            while let Some(event) = events.next().await {
                match event {
                    Relayed::Chunk { json, .. } => {
                        if let Ok(chunk) = serde_json::from_str::<ChatChunk>(&json) {
                            aggregator.push(&chunk);
                        }
                    }
                    Relayed::Done => break,
                    Relayed::Failed(e) => return Err(e),
                }
            }
            let completion = aggregator.finish();
            if let Some(session) = self.session {
                session.record(&self.gw, &completion).await;
            }
            record_cached(
                &self.gw,
                &self.payer,
                &self.req.model,
                &completion.usage.unwrap_or_default(),
                Served::Coalesced,
            );
            drop(admission);
            return Ok(ChatReply {
                meta,
                body: ReplyBody::Json(Box::new(completion)),
            });
        }
        struct Following {
            events: BoxStream<'static, Relayed>,
            aggregator: Aggregator,
            session: Option<SessionWrite>,
            gw: Arc<Gateway>,
            payer: Payer,
            model: String,
            include_usage: bool,
            _admission: Admission,
        }
        let state = Following {
            events,
            aggregator: Aggregator::default(),
            session: self.session,
            gw: self.gw,
            payer: self.payer,
            model: self.req.model,
            include_usage: self.include_usage,
            _admission: admission,
        };
        let items = futures::stream::unfold(Some(state), |state| async move {
            let mut s = state?;
            loop {
                let event = s.events.next().await?;
                if let Relayed::Chunk { json, .. } = &event {
                    let chunk: Option<ChatChunk> = serde_json::from_str(json).ok();
                    let usage_only = chunk
                        .as_ref()
                        .is_some_and(|c| c.choices.is_empty() && c.usage.is_some());
                    if let Some(c) = &chunk {
                        s.aggregator.push(c);
                    }
                    if usage_only && !s.include_usage {
                        continue;
                    }
                    return Some((event.item(), Some(s)));
                }
                if let Relayed::Done = event {
                    let completion = std::mem::take(&mut s.aggregator).finish();
                    if let Some(session) = s.session.take() {
                        session.record(&s.gw, &completion).await;
                    }
                    let usage = completion.usage.unwrap_or_default();
                    record_cached(&s.gw, &s.payer, &s.model, &usage, Served::Coalesced);
                }
                return Some((event.item(), None));
            }
        })
        .boxed();
        Ok(ChatReply {
            meta,
            body: ReplyBody::Stream(items),
        })
    }
}
