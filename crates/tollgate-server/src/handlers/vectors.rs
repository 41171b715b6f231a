//! Vector collections over HTTP, each scoped to the caller's tenant:
//! - `PUT /v1/vectors/{collection}/{id}` `{"vector": [...] | "text": "...", "tags": {}, "numbers": {}}`
//!   (text is embedded by `vectors.embedding_model` and kept with the item);
//! - `GET` / `DELETE /v1/vectors/{collection}/{id}`;
//! - `POST /v1/vectors/{collection}/search` `{"vector" | "text", "k", "filter": {"tags":
//!   {"lang": ["en", "fr"]}, "ranges": {"price": {"gte": 10, "lte": 20}}}, "exact": false}`;
//! - `GET` / `DELETE /v1/vectors/{collection}`: its size, or drop it.
//!
//! Filters apply before ranking; `exact: true` forces a scan of every passing vector, and every
//! answer says whether it was exact.

use std::collections::BTreeMap;

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_redis::VectorItem;
use tollgate_redis::vectors::{Condition, Filter, Metadata, SearchMode};

use crate::auth::Principal;
use crate::embeddings::embed_texts;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;

/// Longest collection name.
const MAX_COLLECTION: usize = 128;

fn collection_name(principal: &Principal, collection: &str) -> Result<String, ApiError> {
    // No '/': it separates the tenant from the name, so it must not be part of a name.
    if collection.is_empty() || collection.len() > MAX_COLLECTION || collection.contains('/') {
        return Err(ApiError::bad(
            format!("a collection name needs 1 to {MAX_COLLECTION} bytes and no '/'"),
            Some("collection"),
        ));
    }
    Ok(principal.scoped(collection))
}

fn store_error(e: tollgate_redis::Error) -> ApiError {
    match e {
        tollgate_redis::Error::InvalidArgument(m) | tollgate_redis::Error::Conflict(m) => {
            ApiError::bad(m, None)
        }
        tollgate_redis::Error::NotFound => ApiError::NotFound("no such vector collection".into()),
        e => e.into(),
    }
}

/// A vector given as numbers, or text to embed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutVector {
    #[serde(default)]
    vector: Option<Vec<f32>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    numbers: BTreeMap<String, f64>,
}

/// The vector of a request: as given, or `text` embedded by the configured model.
async fn vector_of(
    gw: &AppState,
    principal: &Principal,
    vector: Option<Vec<f32>>,
    text: Option<&str>,
) -> Result<Vec<f32>, ApiError> {
    match (vector, text) {
        (Some(v), None) => Ok(v),
        (None, Some(t)) if !t.is_empty() => {
            let model = &gw.config.vectors.embedding_model;
            let mut embedded = embed_texts(gw, Some(principal), model, &[t.to_owned()])
                .await
                .map_err(|e| match e {
                    ApiError::UnknownModel(_) => ApiError::bad(
                        format!(
                            "text needs the embedding model {model:?} (vectors.embedding_model), which is not available; send a vector instead"
                        ),
                        Some("text"),
                    ),
                    e => e,
                })?;
            embedded
                .vectors
                .pop()
                .ok_or_else(|| ApiError::Internal("the embedding model returned nothing".into()))
        }
        (None, Some(_)) => Err(ApiError::bad("text must not be empty", Some("text"))),
        _ => Err(ApiError::bad(
            "give exactly one of vector (numbers) and text (to embed)",
            Some("vector"),
        )),
    }
}

/// `PUT /v1/vectors/{collection}/{id}`.
pub async fn put_vector_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path((collection, id)): Path<(String, String)>,
    Json(put): Json<PutVector>,
) -> Result<axum::Json<Value>, ApiError> {
    let name = collection_name(&principal, &collection)?;
    let vector = vector_of(&gw, &principal, put.vector, put.text.as_deref()).await?;
    let dimensions = vector.len();
    let item = VectorItem {
        id: id.clone(),
        vector,
        metadata: Metadata {
            tags: put.tags,
            numbers: put.numbers,
        },
        text: put.text,
        expires_at_ms: None,
    };
    let seq = gw
        .vectors
        .upsert(&name, std::slice::from_ref(&item))
        .await
        .map_err(store_error)?;
    Ok(axum::Json(json!({
        "object": "vector", "collection": collection, "id": id,
        "dimensions": dimensions, "seq": seq,
    })))
}

/// `GET /v1/vectors/{collection}/{id}`.
pub async fn get_vector_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path((collection, id)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let name = collection_name(&principal, &collection)?;
    let item = gw
        .vectors
        .get(&name, &id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::NotFound(format!("no vector {id:?} in {collection:?}")))?;
    Ok(axum::Json(json!({
        "object": "vector", "collection": collection, "id": item.id, "vector": item.vector,
        "tags": item.metadata.tags, "numbers": item.metadata.numbers, "text": item.text,
    })))
}

/// `DELETE /v1/vectors/{collection}/{id}`.
pub async fn delete_vector_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path((collection, id)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let name = collection_name(&principal, &collection)?;
    let deleted = gw
        .vectors
        .delete(&name, &[id.as_str()])
        .await
        .map_err(store_error)?;
    if deleted == 0 {
        return Err(ApiError::NotFound(format!(
            "no vector {id:?} in {collection:?}"
        )));
    }
    Ok(axum::Json(
        json!({"object": "vector.deleted", "id": id, "deleted": true}),
    ))
}

/// `GET /v1/vectors/{collection}`.
pub async fn collection_info_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(collection): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let name = collection_name(&principal, &collection)?;
    let info = gw.vectors.info(&name).await.map_err(store_error)?;
    Ok(axum::Json(json!({
        "object": "vector_collection", "collection": collection,
        "dimensions": info.dim, "count": info.len, "seq": info.seq,
    })))
}

/// `DELETE /v1/vectors/{collection}`.
pub async fn drop_collection_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(collection): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let name = collection_name(&principal, &collection)?;
    if !gw
        .vectors
        .drop_collection(&name)
        .await
        .map_err(store_error)?
    {
        return Err(ApiError::NotFound("no such vector collection".into()));
    }
    Ok(axum::Json(
        json!({"object": "vector_collection.deleted", "collection": collection, "deleted": true}),
    ))
}

/// A tag filter value: one value or any of several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TagValues {
    One(String),
    Any(Vec<String>),
}

/// An inclusive numeric range.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    #[serde(default)]
    gte: Option<f64>,
    #[serde(default)]
    lte: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterBody {
    #[serde(default)]
    tags: BTreeMap<String, TagValues>,
    #[serde(default)]
    ranges: BTreeMap<String, Range>,
}

impl FilterBody {
    fn into_filter(self) -> Result<Filter, ApiError> {
        let mut conditions = Vec::new();
        for (field, values) in self.tags {
            let values = match values {
                TagValues::One(v) => vec![v],
                TagValues::Any(vs) => vs,
            };
            conditions.push(Condition::TagIn { field, values });
        }
        for (field, range) in self.ranges {
            if [range.gte, range.lte]
                .iter()
                .flatten()
                .any(|x| !x.is_finite())
            {
                return Err(ApiError::bad(
                    format!("range {field:?}: bounds must be finite numbers"),
                    Some("filter"),
                ));
            }
            conditions.push(Condition::Range {
                field,
                min: range.gte,
                max: range.lte,
            });
        }
        Ok(Filter { conditions })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    #[serde(default)]
    vector: Option<Vec<f32>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default)]
    filter: FilterBody,
    #[serde(default)]
    exact: bool,
}

fn default_k() -> usize {
    10
}

/// `POST /v1/vectors/{collection}/search`.
pub async fn search_vectors_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(collection): Path<String>,
    Json(search): Json<SearchBody>,
) -> Result<axum::Json<Value>, ApiError> {
    let name = collection_name(&principal, &collection)?;
    let max_k = gw.config.vectors.max_k;
    if search.k == 0 || search.k > max_k {
        return Err(ApiError::bad(format!("k must be 1 to {max_k}"), Some("k")));
    }
    let filter = search.filter.into_filter()?;
    let query = vector_of(&gw, &principal, search.vector, search.text.as_deref()).await?;
    let mode = if search.exact {
        SearchMode::Exact
    } else {
        SearchMode::Auto
    };
    let found = gw
        .vectors
        .search(&name, query, search.k, filter, mode)
        .await
        .map_err(store_error)?;
    let data: Vec<Value> = found
        .hits
        .into_iter()
        .map(|h| json!({"id": h.id, "score": h.score, "tags": h.metadata.tags, "numbers": h.metadata.numbers}))
        .collect();
    Ok(axum::Json(
        json!({"object": "list", "data": data, "exact": found.exact}),
    ))
}
