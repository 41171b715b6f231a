//! What operators and orchestrators poll: liveness, readiness and the OpenAPI document (open
//! by design), metrics (the master key's); and the answers to an unknown path or method.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

/// The OpenAPI document, kept beside the routes it describes.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// `GET /openapi.json`.
pub async fn openapi_handler() -> Response {
    let mut response = Response::new(axum::body::Body::from(OPENAPI));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `GET /healthz`: liveness, the process answers.
pub async fn healthz_handler() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

/// How long `/readyz` waits for the database.
const DATABASE_PING: Duration = Duration::from_secs(1);

/// `GET /readyz`: readiness. Redis must answer a PING within its timeout (else 503). The
/// database is reported: away, the gateway still serves (`"status": "degraded"`), and durable
/// records wait in the outbox.
pub async fn readyz_handler(State(gw): State<AppState>) -> Result<axum::Json<Value>, ApiError> {
    gw.redis
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(format!("redis: {e}")))?;
    let mut body = json!({"status": "ready", "redis": "ok"});
    if let Some(durable) = &gw.durable {
        let answered = tokio::time::timeout(DATABASE_PING, durable.db.ping()).await;
        body["database"] = if matches!(answered, Ok(Ok(()))) {
            json!("ok")
        } else {
            body["status"] = json!("degraded");
            json!("unreachable: durable records wait in the outbox")
        };
    }
    Ok(axum::Json(body))
}

/// `GET /metrics`: the Prometheus exposition.
pub async fn metrics_handler(State(gw): State<AppState>) -> Response {
    let mut response = gw.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// A path served, with a method it does not take.
pub async fn method_not_allowed_handler(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not take {method}", uri.path()))
}

/// Any other path.
pub async fn not_found_handler(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("unknown path {}", uri.path()))
}
