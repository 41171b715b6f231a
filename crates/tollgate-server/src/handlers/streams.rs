//! `GET /v1/streams/{id}`: a generation's token stream as SSE, from the start or after
//! `Last-Event-ID` (or `?after=`), from any instance.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use crate::auth::Principal;
use crate::chat::{replay, sse_response};
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct AfterQuery {
    after: Option<u64>,
}

/// `GET /v1/streams/{id}`.
pub async fn stream_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<AfterQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let after = match (last_event_id, q.after) {
        (Some(v), _) => v.parse::<u64>().map_err(|_| {
            ApiError::bad(
                "Last-Event-ID must be a number from this stream",
                Some("Last-Event-ID"),
            )
        })?,
        (None, Some(a)) => a,
        (None, None) => 0,
    };
    let items = replay::read_stream(&gw, &principal, &id, after).await?;
    Ok(sse_response(items))
}
