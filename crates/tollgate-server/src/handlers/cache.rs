//! `/admin/cache`: statistics, and invalidating a model's answers.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

/// `GET /admin/cache/stats`.
pub async fn cache_stats_handler(
    State(gw): State<AppState>,
    _: Admin,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(admin::cache_stats(&gw).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invalidate {
    model: String,
}

/// `POST /admin/cache/invalidate` `{"model": ...}`.
pub async fn invalidate_handler(
    State(gw): State<AppState>,
    _: Admin,
    Json(Invalidate { model }): Json<Invalidate>,
) -> Result<axum::Json<Value>, ApiError> {
    let generation = gw
        .cache
        .invalidate_model(&model)
        .await
        .map_err(|e| match e {
            tollgate_redis::Error::InvalidArgument(m) => ApiError::bad(m, Some("model")),
            e => e.into(),
        })?;
    Ok(axum::Json(
        json!({"model": model, "generation": generation, "invalidated": true}),
    ))
}
