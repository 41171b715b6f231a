//! `POST /v1/embeddings`; `x-tollgate-embeddings-cached` counts the inputs answered from the
//! cache.

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use crate::auth::Principal;
use crate::embeddings::{self, EmbeddingsRequest};
use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

/// `POST /v1/embeddings`.
pub async fn embeddings_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Json(req): Json<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let (body, cached) = embeddings::embeddings(&gw, &principal, req).await?;
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert("x-tollgate-embeddings-cached", HeaderValue::from(cached));
    Ok(response)
}
