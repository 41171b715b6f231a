//! What the chat path answers: a whole `chat.completion` or server-sent events, and the headers
//! that say how it was answered (cache, token stream, route, limits).
//!
//! The SSE encoding of one item is here too: `id:` (the token-stream position, for
//! `Last-Event-ID`) and `data:` per chunk, `data: [DONE]` at the end; after an error, one error
//! event and the end.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use tollgate_core::ChatCompletion;

use crate::error::ApiError;
use crate::metrics::CacheResult;

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

impl StreamItem {
    /// The item as SSE bytes.
    pub fn encode(&self) -> Bytes {
        match self {
            StreamItem::Chunk {
                seq: Some(seq),
                json,
            } => Bytes::from(format!("id: {seq}\ndata: {json}\n\n")),
            StreamItem::Chunk { seq: None, json } => Bytes::from(format!("data: {json}\n\n")),
            StreamItem::Error(body) => Bytes::from(format!("data: {body}\n\n")),
            StreamItem::Done => Bytes::from_static(b"data: [DONE]\n\n"),
        }
    }
}

/// A `text/event-stream` response of `items`.
pub fn sse_response(items: BoxStream<'static, StreamItem>) -> Response {
    crate::sse::event_stream(Body::from_stream(
        items.map(|item| Ok::<_, Infallible>(item.encode())),
    ))
}

/// The answer's body.
pub enum ReplyBody {
    /// A whole `chat.completion`.
    Json(Box<ChatCompletion>),
    /// A whole `chat.completion` as the cache stored it (encoded by this gateway): a hit on the
    /// chat API is answered with these bytes, not decoded and encoded again.
    Stored(Bytes),
    /// Server-sent events.
    Stream(BoxStream<'static, StreamItem>),
}

/// A reply's body as an API that translates it needs it.
pub enum Answer {
    /// The whole completion, decoded.
    Whole(Box<ChatCompletion>),
    /// Server-sent events.
    Events(BoxStream<'static, StreamItem>),
}

impl ReplyBody {
    /// The body with a stored completion decoded.
    pub fn answer(self) -> Result<Answer, ApiError> {
        Ok(match self {
            ReplyBody::Json(completion) => Answer::Whole(completion),
            ReplyBody::Stored(bytes) => Answer::Whole(Box::new(decode(&bytes)?)),
            ReplyBody::Stream(items) => Answer::Events(items),
        })
    }
}

/// A cached answer (or the part of it `T` reads).
pub(super) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Internal(format!("cached answer does not decode: {e}")))
}

impl std::fmt::Debug for ReplyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyBody::Json(c) => f.debug_tuple("Json").field(&c.id).finish(),
            ReplyBody::Stored(b) => f.debug_tuple("Stored").field(&b.len()).finish(),
            ReplyBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// The answer and what the response headers say about it.
#[derive(Debug)]
pub struct ChatReply {
    pub meta: ReplyMeta,
    pub body: ReplyBody,
}

/// How a request was answered, without the answer.
#[derive(Debug)]
pub struct ReplyMeta {
    pub cache: CacheResult,
    pub stream_id: Option<String>,
    pub route: Option<String>,
    /// `x-ratelimit-*`, `x-tollgate-cache-similarity`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ReplyMeta {
    /// Adds the headers that describe how the request was answered to `response`.
    pub fn add_headers(self, response: &mut Response) {
        let h = response.headers_mut();
        // Room for every header at once: growing the map header by header cost a hit measurably.
        h.reserve(self.headers.len() + 3);
        let cache = match self.cache {
            CacheResult::Hit => "hit",
            CacheResult::Semantic => "semantic",
            CacheResult::Bypass | CacheResult::Error => "bypass",
            CacheResult::Miss | CacheResult::Coalesced => "miss",
        };
        h.insert("x-tollgate-cache", HeaderValue::from_static(cache));
        if let Some(id) = self.stream_id.and_then(|s| HeaderValue::from_str(&s).ok()) {
            h.insert("x-tollgate-stream-id", id);
        }
        if let Some(route) = self.route.and_then(|s| HeaderValue::from_str(&s).ok()) {
            h.insert("x-tollgate-route", route);
        }
        for (name, value) in self.headers {
            h.insert(name, value);
        }
    }
}

impl IntoResponse for ChatReply {
    fn into_response(self) -> Response {
        let mut response = match self.body {
            ReplyBody::Json(completion) => Json(completion).into_response(),
            ReplyBody::Stored(bytes) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                bytes,
            )
                .into_response(),
            ReplyBody::Stream(items) => sse_response(items),
        };
        self.meta.add_headers(&mut response);
        response
    }
}
