//! Server-sent events to the client: the response head every event stream shares (chat chunks,
//! token streams read again, the Responses API's events).

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;

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
