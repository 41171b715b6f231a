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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecentQuery {
    /// One tenant's requests (default: everyone's).
    tenant: Option<String>,
    /// How many, newest first: 1 to 500 (default 50).
    limit: Option<i64>,
}

/// `GET /admin/requests[?tenant=T&limit=N]`: the newest requests, from the usage records every
/// replica writes to the database (model, key, tenant, tokens, cost, whether the cache answered).
pub async fn recent_requests_handler(
    State(gw): State<AppState>,
    _: Admin,
    Query(q): Query<RecentQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad("limit must be 1 to 500", Some("limit")));
    }
    let Some(durable) = &gw.durable else {
        return Err(ApiError::NotFound(
            "recent requests are read from the database's usage records, and this gateway keeps none"
                .into(),
        ));
    };
    let rows = durable.db.recent_usage(q.tenant.as_deref(), limit).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"id": r.id, "key": r.key_id, "tenant": r.tenant, "model": r.model,
                   "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                   "cost_usd": r.cost_nanos as f64 / 1e9, "cached": r.cached,
                   "created_ms": r.created_ms})
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})))
}
