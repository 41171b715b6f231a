//! Server-sent events to the client: `id:` (the token-stream position, for `Last-Event-ID`) and
//! `data:` per chunk, `data: [DONE]` at the end; after an error, one error event and the end.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::chat::StreamItem;

/// Encodes one item.
pub fn encode(item: &StreamItem) -> Bytes {
    match item {
        StreamItem::Chunk {
            seq: Some(seq),
            json,
        } => Bytes::from(format!("id: {seq}\ndata: {json}\n\n")),
        StreamItem::Chunk { seq: None, json } => Bytes::from(format!("data: {json}\n\n")),
        StreamItem::Error(body) => Bytes::from(format!("data: {body}\n\n")),
        StreamItem::Done => Bytes::from_static(b"data: [DONE]\n\n"),
    }
}

/// A `text/event-stream` response of `items`.
pub fn response(items: BoxStream<'static, StreamItem>) -> Response {
    event_stream(Body::from_stream(
        items.map(|item| Ok::<_, Infallible>(encode(&item))),
    ))
}

/// A `text/event-stream` response of an already encoded body, unbuffered by proxies.
pub fn event_stream(body: Body) -> Response {
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
