//! `/v1/sessions`: create, read, list messages, delete.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_redis::Window;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::sessions;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    system: Option<String>,
}

fn session_json(id: &str, info: &tollgate_redis::SessionInfo) -> Value {
    json!({
        "id": id, "object": "session", "system": info.system,
        "created_at": info.created_ms / 1000, "updated_at": info.updated_ms / 1000,
        "message_count": info.stored, "appended": info.appended,
    })
}

/// `POST /v1/sessions`.
pub async fn create_session_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Json(new): Json<NewSession>,
) -> Result<Response, ApiError> {
    let (id, info) = sessions::create(&gw, &principal, new.id, new.system.as_deref()).await?;
    Ok((StatusCode::CREATED, axum::Json(session_json(&id, &info))).into_response())
}

/// `GET /v1/sessions/{id}`.
pub async fn get_session_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let info = sessions::info(&gw, &principal, &id).await?;
    Ok(axum::Json(session_json(&id, &info)))
}

#[derive(Debug, Deserialize)]
pub struct MessagesQuery {
    limit: Option<usize>,
}

/// `GET /v1/sessions/{id}/messages[?limit=N]`.
pub async fn session_messages_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let window = q.limit.map_or(Window::All, Window::LastN);
    let messages = sessions::messages(&gw, &principal, &id, window).await?;
    Ok(axum::Json(json!({"object": "list", "data": messages})))
}

/// `DELETE /v1/sessions/{id}`.
pub async fn delete_session_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    sessions::delete(&gw, &principal, &id).await?;
    Ok(axum::Json(
        json!({"id": id, "object": "session.deleted", "deleted": true}),
    ))
}
