//! The HTTP surface: routes and the state they share.

use axum::extract::State;
use axum::http::Uri;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tollgate_redis::Redis;

use crate::error::ApiError;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The shared Redis.
    pub redis: Redis,
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz_handler))
        .route("/readyz", get(readyz_handler))
        .fallback(not_found_handler)
        .with_state(state)
}

/// Liveness: the process answers.
async fn healthz_handler() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: Redis answers a PING within its timeout.
async fn readyz_handler(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .redis
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(format!("redis: {e}")))?;
    Ok(Json(json!({"status": "ready", "redis": "ok"})))
}

async fn not_found_handler(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}
