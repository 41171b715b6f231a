//! `/admin/keys` and `/admin/spend`: API keys (create, list, revoke) and what they spent.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin;
use crate::auth::Admin;
use crate::config::Limits;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    name: String,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    limits: Option<Limits>,
}

/// `POST /admin/keys`: the key is in the answer, and nowhere else, ever.
pub async fn create_key_handler(
    State(gw): State<AppState>,
    _: Admin,
    Json(new): Json<NewKey>,
) -> Result<Response, ApiError> {
    let (record, secret) =
        admin::create_key(&gw, new.name, new.tier, new.tenant, new.limits).await?;
    let mut body = serde_json::to_value(&record).unwrap_or_default();
    body["key"] = Value::String(secret);
    body["object"] = Value::String("api_key".into());
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `GET /admin/keys`.
pub async fn list_keys_handler(
    State(gw): State<AppState>,
    _: Admin,
) -> Result<axum::Json<Value>, ApiError> {
    let keys = gw.api_keys.list().await?;
    Ok(axum::Json(json!({"object": "list", "data": keys})))
}

/// `DELETE /admin/keys/{id}`.
pub async fn revoke_key_handler(
    State(gw): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let record = gw.api_keys.revoke(&id).await.map_err(|e| match e {
        tollgate_redis::Error::NotFound => ApiError::NotFound(format!("no key {id:?}")),
        e => e.into(),
    })?;
    gw.forget_keys();
    Ok(axum::Json(serde_json::to_value(record).unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
pub struct SpendQuery {
    /// One key's spend (default: every key's).
    key: Option<String>,
}

/// `GET /admin/spend[?key=ID]`: spend per key and model, today, this month and since the first
/// record.
pub async fn spend_handler(
    State(gw): State<AppState>,
    _: Admin,
    Query(q): Query<SpendQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let data = admin::spend_report(&gw, q.key.as_deref()).await?;
    Ok(axum::Json(json!({"object": "list", "data": data})))
}
