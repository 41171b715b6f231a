//! `ApiError`: every failure the HTTP layer reports, mapped to a status and an OpenAI-shaped body
//! `{"error": {"message", "type", "param", "code"}}`. 5xx bodies carry no internals; the detail
//! goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A failure of an HTTP request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No route has this path.
    #[error("unknown path {0}")]
    NotFound(String),
    /// A dependency (Redis) is not reachable.
    #[error("not ready: {0}")]
    Unavailable(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A low-cardinality label for the body's `type` and for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found_error",
            ApiError::Unavailable(_) => "service_unavailable",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
            "the service is temporarily unavailable".to_owned()
        } else {
            self.to_string()
        };
        let body = json!({"error": {"message": message, "type": self.kind(), "param": null, "code": null}});
        (status, Json(body)).into_response()
    }
}
