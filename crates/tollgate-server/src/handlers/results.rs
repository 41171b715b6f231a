//! `/v1/results`: the tenant's tiered caches of model results that are not chat answers (put a
//! result with its TTL, look up the first of several keys in one round trip, delete).

use std::time::Duration;

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;

/// A result kept for an hour when the write names no TTL.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutResult {
    value: Value,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// `PUT /v1/results/{cache}/{key}` `{"value": ..., "ttl_seconds": N}` (left out: an hour; at
/// most `cache.max_ttl_seconds`).
pub async fn put_result_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path((cache, key)): Path<(String, String)>,
    Json(put): Json<PutResult>,
) -> Result<axum::Json<Value>, ApiError> {
    let max = gw.config.cache.max_ttl_seconds;
    let ttl = match put.ttl_seconds {
        None => DEFAULT_TTL,
        Some(s) if (1..=max).contains(&s) => Duration::from_secs(s),
        Some(_) => {
            return Err(ApiError::bad(
                format!("ttl_seconds must be from 1 to {max}"),
                Some("ttl_seconds"),
            ));
        }
    };
    let value = serde_json::to_vec(&put.value).unwrap_or_default();
    if value.len() > gw.config.cache.max_value_bytes {
        return Err(ApiError::bad(
            format!(
                "value is {} bytes, more than cache.max_value_bytes ({})",
                value.len(),
                gw.config.cache.max_value_bytes
            ),
            Some("value"),
        ));
    }
    gw.results
        .put(&principal.scoped(&cache), &key, &value, ttl)
        .await?;
    Ok(axum::Json(
        json!({"object": "result", "cache": cache, "key": key, "ttl_seconds": ttl.as_secs()}),
    ))
}

/// `DELETE /v1/results/{cache}/{key}`.
pub async fn delete_result_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path((cache, key)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let deleted = gw.results.delete(&principal.scoped(&cache), &key).await?;
    Ok(axum::Json(
        json!({"object": "result", "cache": cache, "key": key, "deleted": deleted}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    keys: Vec<String>,
}

/// `POST /v1/results/{cache}/lookup` `{"keys": [most specific, ..., most general]}`: the first
/// key held, every tier read in one round trip.
pub async fn lookup_results_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(cache): Path<String>,
    Json(lookup): Json<Lookup>,
) -> Result<axum::Json<Value>, ApiError> {
    let max = tollgate_redis::results::MAX_TIERS;
    if lookup.keys.is_empty() || lookup.keys.len() > max {
        return Err(ApiError::bad(
            format!("keys must name 1 to {max} keys, most specific first"),
            Some("keys"),
        ));
    }
    let keys: Vec<&str> = lookup.keys.iter().map(String::as_str).collect();
    let found = gw.results.lookup(&principal.scoped(&cache), &keys).await?;
    gw.metrics.result_lookup(found.as_ref().map(|hit| hit.tier));
    Ok(axum::Json(match found {
        Some(hit) => json!({
            "object": "result.lookup",
            "hit": true,
            "tier": hit.tier,
            "key": lookup.keys[hit.tier],
            "value": serde_json::from_slice::<Value>(&hit.value).unwrap_or(Value::Null),
        }),
        None => {
            json!({"object": "result.lookup", "hit": false, "tier": null, "key": null, "value": null})
        }
    }))
}
