//! `/v1/features`: the tenant's online feature store (put a group, get groups of an entity, get
//! many entities in one round trip).

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutFeatures {
    features: std::collections::BTreeMap<String, Value>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

fn group_json(group: Option<tollgate_redis::FeatureGroup>) -> Value {
    group.map_or(
        Value::Null,
        |g| json!({"features": g.features, "updated_at_ms": g.updated_ms}),
    )
}

/// `PUT /v1/features/{entity_type}/{entity_id}/{group}` `{"features": {...}, "ttl_seconds": N}`
/// (left out: `features.default_ttl_seconds`; 0: no expiry).
pub async fn put_features_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path((entity_type, entity_id, group)): Path<(String, String, String)>,
    Json(put): Json<PutFeatures>,
) -> Result<axum::Json<Value>, ApiError> {
    // Left out: `features.default_ttl_seconds`; 0: the group never expires.
    let ttl = gw.features.ttl_for(put.ttl_seconds);
    let updated = gw
        .features
        .put(
            &principal.scoped(&entity_type),
            &entity_id,
            &group,
            &put.features,
            ttl,
        )
        .await?;
    Ok(axum::Json(
        json!({"entity_type": entity_type, "entity_id": entity_id, "group": group, "updated_at_ms": updated}),
    ))
}

#[derive(Debug, Deserialize)]
pub struct GroupsQuery {
    groups: Option<String>,
}

fn groups_of(q: &GroupsQuery) -> Result<Vec<String>, ApiError> {
    let groups: Vec<String> = q
        .groups
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect();
    if groups.is_empty() || groups.len() > 100 {
        return Err(ApiError::bad(
            "name 1 to 100 groups: ?groups=a,b,c",
            Some("groups"),
        ));
    }
    Ok(groups)
}

/// `GET /v1/features/{entity_type}/{entity_id}?groups=a,b,c`: one round trip.
pub async fn get_features_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path((entity_type, entity_id)): Path<(String, String)>,
    Query(q): Query<GroupsQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let groups = groups_of(&q)?;
    let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
    let got = gw
        .features
        .get(&principal.scoped(&entity_type), &entity_id, &refs)
        .await?;
    let by_group: serde_json::Map<String, Value> = groups
        .into_iter()
        .zip(got)
        .map(|(g, v)| (g, group_json(v)))
        .collect();
    Ok(axum::Json(
        json!({"entity_type": entity_type, "entity_id": entity_id, "groups": by_group}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchFeatures {
    entities: Vec<BatchEntity>,
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchEntity {
    entity_type: String,
    entity_id: String,
}

impl BatchFeatures {
    /// The groups asked for, or a 400 when the batch names too few or too many entities or
    /// groups.
    fn groups(&self) -> Result<Vec<String>, ApiError> {
        if self.entities.is_empty() || self.entities.len() > 1000 {
            return Err(ApiError::bad("name 1 to 1000 entities", Some("entities")));
        }
        groups_of(&GroupsQuery {
            groups: Some(self.groups.join(",")),
        })
    }

    /// The entities, in `principal`'s tenant.
    fn entities(&self, principal: &Principal) -> Vec<tollgate_redis::EntityRef> {
        self.entities
            .iter()
            .map(|e| tollgate_redis::EntityRef {
                entity_type: principal.scoped(&e.entity_type),
                entity_id: e.entity_id.clone(),
            })
            .collect()
    }
}

/// `POST /v1/features/batch` `{"entities": [{"entity_type", "entity_id"}], "groups": [...]}`.
pub async fn features_batch_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Json(batch): Json<BatchFeatures>,
) -> Result<axum::Json<Value>, ApiError> {
    let groups = batch.groups()?;
    let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
    let entities = batch.entities(&principal);
    let got = gw.features.get_many(&entities, &refs).await?;
    let data: Vec<Value> = batch
        .entities
        .iter()
        .zip(got)
        .map(|(e, groups_got)| {
            let by_group: serde_json::Map<String, Value> = groups
                .iter()
                .cloned()
                .zip(groups_got.into_iter().map(group_json))
                .collect();
            json!({"entity_type": e.entity_type, "entity_id": e.entity_id, "groups": by_group})
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})))
}
