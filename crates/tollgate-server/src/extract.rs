//! Extractors whose rejections are OpenAI-shaped errors, like every other error (axum's own
//! answer in plain text): JSON bodies within the size limit, path and query parameters, and the
//! chat switches of a request's headers.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::chat::ChatOptions;
use crate::error::ApiError;

/// The largest body a request may send (`server.max_body_bytes`), as the front layer left it
/// for [`Json`].
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

/// The body limit, checked by the front layer (`app.rs`) for every request: one whose
/// `Content-Length` is over the limit is refused at once; [`Json`] holds every other body to it
/// while reading.
pub fn limit_body(limit: usize, request: &mut Request) -> Result<(), ApiError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    request.extensions_mut().insert(BodyLimit(limit));
    Ok(())
}

/// A JSON body: read within the size limit, then decoded; empty, oversized or malformed bodies
/// are 400s and 413s that say so.
#[derive(Debug)]
pub struct Json<T>(pub T);

/// The limit when no layer set one (a handler served outside `app`).
const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map_or(DEFAULT_BODY_LIMIT, |l| l.0);
        read_json(request.into_body(), limit).await.map(Json)
    }
}

/// Reads a JSON body of at most `limit` bytes.
async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(ApiError::TooLarge { limit });
        }
        Err(e) => {
            return Err(ApiError::bad(
                format!("could not read the request body: {e}"),
                None,
            ));
        }
    };
    if bytes.is_empty() {
        return Err(ApiError::bad(
            "the request body is empty; send a JSON object",
            None,
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}"), None))
}

impl<S: Send + Sync> FromRequestParts<S> for ChatOptions {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        ChatOptions::from_headers(&parts.headers)
    }
}

/// The longest id or name a path, a header or a body may give (the OpenAPI document's
/// `maxLength`): session, response and stream ids, collection, entity and stream names.
pub const MAX_ID_LEN: usize = 200;

/// Path parameters, each 1 to [`MAX_ID_LEN`] bytes; a bad one is a 400 naming it.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad(e.body_text(), None))?;
        for (name, value) in &raw {
            if value.is_empty() || value.len() > MAX_ID_LEN {
                return Err(ApiError::bad(
                    format!("{name} must be 1 to {MAX_ID_LEN} bytes"),
                    Some(name),
                ));
            }
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::bad(e.body_text(), None))
    }
}

/// Query parameters; a bad one is a 400 naming the problem.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::bad(e.body_text(), None))
    }
}
