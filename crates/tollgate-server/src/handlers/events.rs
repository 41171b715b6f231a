//! `POST /v1/events/{stream}`: publish to the tenant's event stream.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;

/// An event to publish: a JSON object, each member a field of the event (strings as they are,
/// other values as JSON).
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct NewEvent(Value);

impl NewEvent {
    /// The event's fields, or a 400 saying what is wrong.
    fn fields(self) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
        let Value::Object(members) = self.0 else {
            return Err(ApiError::bad("an event must be a JSON object", None));
        };
        if members.is_empty() {
            return Err(ApiError::bad("an event must have at least one field", None));
        }
        Ok(members
            .into_iter()
            .map(|(k, v)| {
                let bytes = match v {
                    Value::String(s) => s.into_bytes(),
                    other => other.to_string().into_bytes(),
                };
                (k, bytes)
            })
            .collect())
    }
}

/// A stream name: 1 to 256 characters.
fn stream_name(stream: &str) -> Result<&str, ApiError> {
    if stream.is_empty() || stream.len() > 256 {
        return Err(ApiError::bad(
            "a stream name must be 1 to 256 characters",
            Some("stream"),
        ));
    }
    Ok(stream)
}

/// `POST /v1/events/{stream}`.
pub async fn publish_event_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(stream): Path<String>,
    Json(event): Json<NewEvent>,
) -> Result<Response, ApiError> {
    let name = principal.scoped(stream_name(&stream)?);
    let fields = event.fields()?;
    let refs: Vec<(&str, &[u8])> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let id = gw.events.publish(&name, &refs).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "object": "event", "stream": stream})),
    )
        .into_response())
}
