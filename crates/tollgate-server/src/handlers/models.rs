//! Models: `GET /v1/models` (what a key may ask for), and the model registry under
//! `/admin/models` (deployments, weights, experiments; every instance applies a change within a
//! second).

use axum::extract::State;
use serde_json::{Value, json};

use crate::auth::{Admin, Principal};
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::{AppState, Gateway};

/// `GET /v1/models`.
pub async fn models_handler(
    State(gw): State<AppState>,
    _: Principal,
) -> Result<axum::Json<Value>, ApiError> {
    let data: Vec<Value> = listed(&gw)
        .into_iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})))
}

/// The models a key may ask for, each with who serves it: the aliases (`tollgate`), then each
/// provider's models.
pub fn listed(gw: &Gateway) -> Vec<(String, String)> {
    let mut models: Vec<(String, String)> = gw
        .router()
        .aliases()
        .map(|alias| (alias.to_owned(), "tollgate".to_owned()))
        .collect();
    for (name, provider) in &gw.config.providers {
        for model in &provider.models {
            models.push((model.clone(), name.clone()));
        }
    }
    models
}

/// `GET /admin/models`: the registry's models and its version.
pub async fn list_registry_handler(
    State(gw): State<AppState>,
    _: Admin,
) -> Result<axum::Json<Value>, ApiError> {
    let (version, models) = gw.registry.load().await?;
    Ok(axum::Json(
        json!({"object": "list", "version": version, "data": models}),
    ))
}

/// `PUT /admin/models/{name}`: adds or replaces a model (`{"deployments": [...], "experiment": ...}`).
pub async fn put_registry_handler(
    State(gw): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    Json(mut entry): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    if !entry.is_object() {
        return Err(ApiError::bad("a model must be a JSON object", None));
    }
    entry["name"] = Value::String(name.clone());
    let entry: tollgate_redis::ModelEntry = serde_json::from_value(entry)
        .map_err(|e| ApiError::bad(format!("invalid model: {e}"), None))?;
    let router = gw.router();
    for d in &entry.deployments {
        if router.deployment_for(&d.name, &d.model).is_none() {
            return Err(ApiError::bad(
                format!("deployment {:?}: no provider serves {:?}", d.name, d.model),
                Some("deployments"),
            ));
        }
    }
    let version = gw.registry.put(&entry).await?;
    let _ = gw.sync_registry().await;
    Ok(axum::Json(json!({"name": name, "version": version})))
}

/// `DELETE /admin/models/{name}`.
pub async fn delete_registry_handler(
    State(gw): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let version = gw.registry.delete(&name).await.map_err(|e| match e {
        tollgate_redis::Error::NotFound => {
            ApiError::NotFound(format!("no model {name:?} in the registry"))
        }
        e => e.into(),
    })?;
    let _ = gw.sync_registry().await;
    Ok(axum::Json(
        json!({"name": name, "version": version, "deleted": true}),
    ))
}
