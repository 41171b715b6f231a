//! `POST /v1/chat/completions`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use tollgate_core::ChatRequest;

use crate::auth::Principal;
use crate::chat::{self, ChatOptions};
use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;

/// `POST /v1/chat/completions`.
pub async fn chat_completions_handler(
    State(gw): State<AppState>,
    principal: Principal,
    opts: ChatOptions,
    Json(req): Json<ChatRequest>,
) -> Result<Response, ApiError> {
    let reply = chat::chat_completions(&gw, &principal, req, opts).await?;
    Ok(reply.into_response())
}
