//! `POST /v1/events/{stream}`: publish to the tenant's event stream.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;

/// `POST /v1/events/{stream}`: the body is a JSON object, each member a field of the event
/// (strings as they are, other values as JSON).
pub async fn publish_event_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(stream): Path<String>,
    Json(event): Json<Value>,
) -> Result<Response, ApiError> {
    if stream.is_empty() || stream.len() > 256 {
        return Err(ApiError::bad(
            "a stream name must be 1 to 256 characters",
            Some("stream"),
        ));
    }
    let Value::Object(members) = event else {
        return Err(ApiError::bad("an event must be a JSON object", None));
    };
    if members.is_empty() {
        return Err(ApiError::bad("an event must have at least one field", None));
    }
    let fields: Vec<(String, Vec<u8>)> = members
        .into_iter()
        .map(|(k, v)| {
            let bytes = match v {
                Value::String(s) => s.into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (k, bytes)
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let id = gw.events.publish(&principal.scoped(&stream), &refs).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "object": "event", "stream": stream})),
    )
        .into_response())
}
