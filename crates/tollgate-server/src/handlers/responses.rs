//! `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::auth::Principal;
use crate::chat::ChatOptions;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::responses::{self, ResponsesRequest};
use crate::state::AppState;

/// `POST /v1/responses`.
pub async fn create_response_handler(
    State(gw): State<AppState>,
    principal: Principal,
    opts: ChatOptions,
    Json(req): Json<ResponsesRequest>,
) -> Result<Response, ApiError> {
    let reply = responses::create_response(&gw, &principal, opts, req).await?;
    Ok(reply.into_response())
}

/// `GET /v1/responses/{id}`.
pub async fn get_response_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(
        responses::get_response(&gw, &principal, &id).await?,
    ))
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete_response_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(
        responses::delete_response(&gw, &principal, &id).await?,
    ))
}
