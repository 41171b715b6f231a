//! HTTP handlers: extract, call the logic, shape the answer. The logic lives elsewhere
//! ([`crate::chat`], the stores), so the CLI and tests can call it without HTTP.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tollgate_core::ChatRequest;
use tollgate_redis::{EventKind, Window};

use crate::auth;
use crate::chat::{self, ChatOptions, ChatReply, ReplyBody, StreamItem};
use crate::config::Limits;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::metrics::CacheResult;
use crate::sse;
use crate::state::AppState;

/// Reads a JSON body within the configured size limit.
pub async fn read_json<T: DeserializeOwned>(gw: &AppState, body: Body) -> Result<T, ApiError> {
    let limit = gw.config.server.max_body_bytes;
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(ApiError::TooLarge { limit });
        }
        Err(e) => {
            return Err(ApiError::bad(
                format!("could not read the request body: {e}"),
                None,
            ));
        }
    };
    if bytes.is_empty() {
        return Err(ApiError::bad(
            "the request body is empty; send a JSON object",
            None,
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}"), None))
}

/// A header holding an id: absent, or 1 to 256 visible characters (trimmed).
fn short_header(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let value = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 256);
    let value = value.ok_or_else(|| {
        ApiError::bad(
            format!("{name} must be 1 to 256 visible characters"),
            Some(name),
        )
    })?;
    Ok(Some(value.to_owned()))
}

pub(crate) fn chat_options(headers: &HeaderMap) -> Result<ChatOptions, ApiError> {
    let mut opts = ChatOptions::default();
    for value in headers.get_all("cache-control") {
        for directive in value.to_str().unwrap_or_default().split(',') {
            match directive.trim().to_ascii_lowercase().as_str() {
                "no-cache" => opts.no_cache = true,
                "no-store" => opts.no_store = true,
                _ => {}
            }
        }
    }
    if let Some(v) = headers.get("x-tollgate-cache-ttl") {
        let secs = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                ApiError::bad(
                    "x-tollgate-cache-ttl must be a whole number of seconds, at least 1",
                    Some("x-tollgate-cache-ttl"),
                )
            })?;
        opts.ttl = Some(Duration::from_secs(secs));
    }
    opts.user = short_header(headers, "x-tollgate-user")?;
    opts.session_id = short_header(headers, "x-tollgate-session-id")?;
    Ok(opts)
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions_handler(
    State(gw): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    let req: ChatRequest = read_json(&gw, body).await?;
    let opts = chat_options(&headers)?;
    let reply = chat::chat_completions(&gw, &principal, req, opts).await?;
    Ok(reply_response(reply))
}

fn reply_response(reply: ChatReply) -> Response {
    let (meta, body) = reply.into_parts();
    let mut response = match body {
        ReplyBody::Json(completion) => Json(completion).into_response(),
        ReplyBody::Stream(items) => sse::response(items),
    };
    add_reply_headers(&mut response, meta);
    response
}

/// The headers that describe how a request was answered (cache, stream, route, limits).
pub(crate) fn add_reply_headers(response: &mut Response, reply: crate::chat::ReplyMeta) {
    let h = response.headers_mut();
    let cache = match reply.cache {
        CacheResult::Hit => "hit",
        CacheResult::Semantic => "semantic",
        CacheResult::Bypass | CacheResult::Error => "bypass",
        CacheResult::Miss | CacheResult::Coalesced => "miss",
    };
    h.insert("x-tollgate-cache", HeaderValue::from_static(cache));
    if let Some(id) = reply.stream_id.and_then(|s| HeaderValue::from_str(&s).ok()) {
        h.insert("x-tollgate-stream-id", id);
    }
    if let Some(route) = reply.route.and_then(|s| HeaderValue::from_str(&s).ok()) {
        h.insert("x-tollgate-route", route);
    }
    for (name, value) in reply.headers {
        h.insert(name, value);
    }
}

/// `GET /v1/models`.
pub async fn models_handler(
    State(gw): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::principal(&gw, &headers).await?;
    let mut data = Vec::new();
    for alias in gw.router().aliases() {
        data.push(json!({"id": alias, "object": "model", "created": 0, "owned_by": "tollgate"}));
    }
    for (name, provider) in &gw.config.providers {
        for model in &provider.models {
            data.push(json!({"id": model, "object": "model", "created": 0, "owned_by": name}));
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

#[derive(Debug, Deserialize)]
pub struct AfterQuery {
    after: Option<u64>,
}

/// `GET /v1/streams/{id}`: a generation's stream as SSE, from the start or after
/// `Last-Event-ID` (or `?after=`), from any instance.
pub async fn stream_handler(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<AfterQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    let not_found = || ApiError::NotFound(format!("no stream {id:?}"));
    // A generation writes its stream while it starts upstream: a reader arriving in its first
    // milliseconds waits for the stream to appear (up to a second) rather than getting a 404.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let meta = loop {
        match gw.streams.start_meta(&id).await {
            Ok(m) => break m,
            Err(tollgate_redis::Error::NotFound) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(tollgate_redis::Error::NotFound | tollgate_redis::Error::InvalidArgument(_)) => {
                return Err(not_found());
            }
            Err(e) => return Err(ApiError::Unavailable(format!("streams: {e}"))),
        }
    };
    let owner = serde_json::from_slice::<Value>(&meta)
        .ok()
        .and_then(|m| m.get("owner").and_then(Value::as_str).map(str::to_owned));
    if owner.as_deref() != Some(principal.subject.as_str()) && !principal.admin {
        return Err(not_found());
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let after = match (last_event_id, q.after) {
        (Some(v), _) => v.parse::<u64>().map_err(|_| {
            ApiError::bad(
                "Last-Event-ID must be a number from this stream",
                Some("Last-Event-ID"),
            )
        })?,
        (None, Some(a)) => a,
        (None, None) => 0,
    };
    let reader = gw
        .streams
        .reader(&id)
        .await
        .map_err(|e| ApiError::Unavailable(format!("streams: {e}")))?;
    let follower = reader.follow(after, Duration::from_secs(5));
    let items = futures::stream::unfold(Some(follower), |f| async move {
        let mut f = f?;
        loop {
            return match f.next().await {
                Ok(Some(e)) => match e.kind {
                    EventKind::Start => continue,
                    EventKind::Chunk => {
                        let json = String::from_utf8_lossy(&e.data).into_owned();
                        Some((
                            StreamItem::Chunk {
                                seq: Some(e.seq),
                                json: json.into(),
                            },
                            Some(f),
                        ))
                    }
                    EventKind::Done => Some((StreamItem::Done, None)),
                    EventKind::Error => {
                        let stored: Value = serde_json::from_slice(&e.data).unwrap_or(Value::Null);
                        Some((
                            StreamItem::Error(stored.get("body").cloned().unwrap_or(stored)),
                            None,
                        ))
                    }
                },
                Ok(None) => None,
                Err(tollgate_redis::Error::Abandoned) => {
                    let err = ApiError::Relayed {
                        status: 502,
                        body: json!({"error": {
                            "message": "the generation was interrupted: the gateway running it stopped; send the request again",
                            "type": "upstream_error", "param": null, "code": "stream_interrupted"}}),
                    };
                    Some((StreamItem::Error(err.body()), None))
                }
                Err(e) => {
                    let err = match e {
                        tollgate_redis::Error::Trimmed { .. } | tollgate_redis::Error::NotFound => {
                            ApiError::NotFound(format!(
                                "the stream no longer holds those events: {e}"
                            ))
                        }
                        other => {
                            tracing::warn!(error = %other, "token stream read failed");
                            ApiError::Unavailable(format!("streams: {other}"))
                        }
                    };
                    Some((StreamItem::Error(err.body()), None))
                }
            };
        }
    });
    Ok(sse::response(items.boxed()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    system: Option<String>,
}

fn session_error(id: &str, e: tollgate_redis::Error) -> ApiError {
    match e {
        tollgate_redis::Error::NotFound => ApiError::NotFound(format!("no session {id:?}")),
        tollgate_redis::Error::Conflict(_) => {
            ApiError::bad(format!("session id {id:?} is taken"), Some("id"))
        }
        tollgate_redis::Error::InvalidArgument(m) => ApiError::bad(m, Some("id")),
        e if e.is_unavailable() => ApiError::Unavailable(format!("sessions: {e}")),
        e => ApiError::Internal(format!("sessions: {e}")),
    }
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
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    let new: NewSession = read_json(&gw, body).await?;
    let id = new
        .id
        .unwrap_or_else(|| format!("sess_{}", uuid::Uuid::new_v4().simple()));
    let written = gw
        .sessions
        .create_logged(&id, &principal.subject, new.system.as_deref())
        .await
        .map_err(|e| session_error(&id, e))?;
    crate::sessions::record_write(&gw, &id, &principal.subject, &written, &[]).await;
    let info = gw
        .sessions
        .info(&id, &principal.subject)
        .await
        .map_err(|e| session_error(&id, e))?;
    Ok((StatusCode::CREATED, Json(session_json(&id, &info))).into_response())
}

/// `GET /v1/sessions/{id}`.
pub async fn get_session_handler(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    let owner = &principal.subject;
    let info = match gw.sessions.info(&id, owner).await {
        Err(tollgate_redis::Error::NotFound)
            if crate::sessions::restore(&gw, &id, owner).await? =>
        {
            gw.sessions.info(&id, owner).await
        }
        other => other,
    }
    .map_err(|e| session_error(&id, e))?;
    Ok(Json(session_json(&id, &info)))
}

#[derive(Debug, Deserialize)]
pub struct MessagesQuery {
    limit: Option<usize>,
}

/// `GET /v1/sessions/{id}/messages`.
pub async fn session_messages_handler(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<MessagesQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    let window = q.limit.map_or(Window::All, Window::LastN);
    let owner = &principal.subject;
    let messages = match gw.sessions.history(&id, owner, window).await {
        Err(tollgate_redis::Error::NotFound)
            if crate::sessions::restore(&gw, &id, owner).await? =>
        {
            gw.sessions.history(&id, owner, window).await
        }
        other => other,
    }
    .map_err(|e| session_error(&id, e))?;
    Ok(Json(json!({"object": "list", "data": messages})))
}

/// `DELETE /v1/sessions/{id}`.
pub async fn delete_session_handler(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    let owner = &principal.subject;
    match gw.sessions.delete(&id, owner).await {
        Ok(()) => {}
        // Gone from Redis, maybe not from the database.
        Err(tollgate_redis::Error::NotFound)
            if crate::sessions::restore(&gw, &id, owner).await? =>
        {
            gw.sessions
                .delete(&id, owner)
                .await
                .map_err(|e| session_error(&id, e))?;
        }
        Err(e) => return Err(session_error(&id, e)),
    }
    crate::sessions::record_delete(&gw, &id, owner).await;
    Ok(Json(
        json!({"id": id, "object": "session.deleted", "deleted": true}),
    ))
}

/// A name scoped to a tenant (`TENANT/NAME`): event streams and feature entity types are per
/// tenant, so one tenant's keys never reach another's.
pub fn tenant_scoped(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// `POST /v1/events/{stream}`: the body is a JSON object, each member a field of the event
/// (strings as they are, other values as JSON).
pub async fn publish_event_handler(
    State(gw): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    if stream.is_empty() || stream.len() > 256 {
        return Err(ApiError::bad(
            "a stream name must be 1 to 256 characters",
            Some("stream"),
        ));
    }
    let event: Value = read_json(&gw, body).await?;
    let Value::Object(members) = event else {
        return Err(ApiError::bad("an event must be a JSON object", None));
    };
    if members.is_empty() {
        return Err(ApiError::bad("an event must have at least one field", None));
    }
    let fields: Vec<(String, Vec<u8>)> = members
        .into_iter()
        .map(|(k, v)| {
            let bytes = match v {
                Value::String(s) => s.into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (k, bytes)
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let id = gw
        .events
        .publish(&tenant_scoped(&principal.tenant, &stream), &refs)
        .await
        .map_err(|e| match e {
            tollgate_redis::Error::InvalidArgument(m) => ApiError::bad(m, None),
            e => ApiError::Unavailable(format!("events: {e}")),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "object": "event", "stream": stream})),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutFeatures {
    features: std::collections::BTreeMap<String, Value>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

fn features_error(e: tollgate_redis::Error) -> ApiError {
    match e {
        tollgate_redis::Error::InvalidArgument(m) => ApiError::bad(m, None),
        e => ApiError::Unavailable(format!("features: {e}")),
    }
}

fn group_json(group: Option<tollgate_redis::FeatureGroup>) -> Value {
    group.map_or(
        Value::Null,
        |g| json!({"features": g.features, "updated_at_ms": g.updated_ms}),
    )
}

/// `PUT /v1/features/{entity_type}/{entity_id}/{group}` `{"features": {...}, "ttl_seconds": N}`.
pub async fn put_features_handler(
    State(gw): State<AppState>,
    Path((entity_type, entity_id, group)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    let put: PutFeatures = read_json(&gw, body).await?;
    if put.ttl_seconds == Some(0) {
        return Err(ApiError::bad(
            "ttl_seconds must be at least 1 (leave it out for no expiry)",
            Some("ttl_seconds"),
        ));
    }
    let ttl = put.ttl_seconds.map(Duration::from_secs);
    let updated = gw
        .features
        .put(
            &tenant_scoped(&principal.tenant, &entity_type),
            &entity_id,
            &group,
            &put.features,
            ttl,
        )
        .await
        .map_err(features_error)?;
    Ok(Json(
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
    Path((entity_type, entity_id)): Path<(String, String)>,
    Query(q): Query<GroupsQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    let groups = groups_of(&q)?;
    let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
    let got = gw
        .features
        .get(
            &tenant_scoped(&principal.tenant, &entity_type),
            &entity_id,
            &refs,
        )
        .await
        .map_err(features_error)?;
    let by_group: serde_json::Map<String, Value> = groups
        .into_iter()
        .zip(got)
        .map(|(g, v)| (g, group_json(v)))
        .collect();
    Ok(Json(
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

/// `POST /v1/features/batch` `{"entities": [{"entity_type", "entity_id"}], "groups": [...]}`.
pub async fn features_batch_handler(
    State(gw): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let principal = auth::principal(&gw, &headers).await?;
    let batch: BatchFeatures = read_json(&gw, body).await?;
    if batch.entities.is_empty() || batch.entities.len() > 1000 {
        return Err(ApiError::bad("name 1 to 1000 entities", Some("entities")));
    }
    let groups = groups_of(&GroupsQuery {
        groups: Some(batch.groups.join(",")),
    })?;
    let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
    let entities: Vec<tollgate_redis::EntityRef> = batch
        .entities
        .iter()
        .map(|e| tollgate_redis::EntityRef {
            entity_type: tenant_scoped(&principal.tenant, &e.entity_type),
            entity_id: e.entity_id.clone(),
        })
        .collect();
    let got = gw
        .features
        .get_many(&entities, &refs)
        .await
        .map_err(features_error)?;
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
    Ok(Json(json!({"object": "list", "data": data})))
}

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
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    auth::admin(&gw, &headers)?;
    let new: NewKey = read_json(&gw, body).await?;
    let (record, secret) = create_key(&gw, new.name, new.tier, new.tenant, new.limits).await?;
    let mut body = serde_json::to_value(&record).unwrap_or_default();
    body["key"] = Value::String(secret);
    body["object"] = Value::String("api_key".into());
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Creates a key after checking its tier and limits (shared by HTTP and the CLI).
pub async fn create_key(
    gw: &AppState,
    name: String,
    tier: Option<String>,
    tenant: Option<String>,
    limits: Option<Limits>,
) -> Result<(tollgate_redis::ApiKeyRecord, String), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::bad("`name` must not be empty", Some("name")));
    }
    let tier = tier.unwrap_or_else(|| gw.config.limits.default_tier.clone());
    if !gw.config.tiers.contains_key(&tier) {
        return Err(ApiError::bad(
            format!("no tier named {tier:?}"),
            Some("tier"),
        ));
    }
    let limits = limits.unwrap_or_default();
    for (what, v) in [
        ("rpm", limits.rpm),
        ("tpm", limits.tpm),
        ("max_concurrency", limits.max_concurrency),
    ] {
        if v == Some(0) {
            return Err(ApiError::bad(
                format!("limits.{what} must be at least 1"),
                Some("limits"),
            ));
        }
    }
    for (what, v) in [
        ("daily_budget_usd", limits.daily_budget_usd),
        ("monthly_budget_usd", limits.monthly_budget_usd),
    ] {
        if v.is_some_and(|v| !(v >= 0.0 && v.is_finite())) {
            return Err(ApiError::bad(
                format!("limits.{what} must be a number of dollars, 0 or more"),
                Some("limits"),
            ));
        }
    }
    let limits = serde_json::to_value(&limits).unwrap_or_default();
    gw.api_keys
        .create(
            &name,
            &tier,
            tenant.as_deref().filter(|t| !t.is_empty()),
            limits,
        )
        .await
        .map_err(|e| match e {
            e if e.is_unavailable() => ApiError::Unavailable(format!("keys: {e}")),
            e => ApiError::bad(e.to_string(), None),
        })
}

/// `GET /admin/keys`.
pub async fn list_keys_handler(
    State(gw): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&gw, &headers)?;
    let keys = gw
        .api_keys
        .list()
        .await
        .map_err(|e| ApiError::Unavailable(format!("keys: {e}")))?;
    Ok(Json(json!({"object": "list", "data": keys})))
}

#[derive(Debug, Deserialize)]
pub struct SpendQuery {
    /// One key's spend (default: every key's).
    key: Option<String>,
}

/// Spend of one key today and this month (UTC), in dollars, per model and in all.
pub async fn key_spend(gw: &AppState, key_id: &str) -> Result<Value, ApiError> {
    let now = tollgate_db::now_ms() as u64;
    let mut out = serde_json::Map::new();
    for (name, period) in [
        ("today", tollgate_redis::SpendPeriod::Day),
        ("this_month", tollgate_redis::SpendPeriod::Month),
    ] {
        let spend = gw
            .spend
            .spend(key_id, period, now)
            .await
            .map_err(|e| match e {
                e if e.is_unavailable() => ApiError::Unavailable(format!("spend: {e}")),
                e => ApiError::bad(e.to_string(), Some("key")),
            })?;
        let models: serde_json::Map<String, Value> = spend
            .models
            .iter()
            .map(|(m, n)| (m.clone(), json!(*n as f64 / 1e9)))
            .collect();
        out.insert(
            name.into(),
            json!({"total_usd": spend.total_nanos as f64 / 1e9, "models": models}),
        );
    }
    Ok(Value::Object(out))
}

/// `GET /admin/spend[?key=ID]`: spend per key and model, today and this month (from Redis, where
/// budgets are checked), and since the first record (from the database, when there is one).
pub async fn spend_handler(
    State(gw): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SpendQuery>,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&gw, &headers)?;
    let ids: Vec<String> = match &q.key {
        Some(k) => vec![k.clone()],
        None => gw
            .api_keys
            .list()
            .await
            .map_err(|e| ApiError::Unavailable(format!("keys: {e}")))?
            .into_iter()
            .map(|k| k.id)
            .chain(["open".to_owned(), "master".to_owned()])
            .collect(),
    };
    let mut data = Vec::new();
    for id in &ids {
        let mut entry = key_spend(&gw, id).await?;
        entry["key"] = Value::String(id.clone());
        if let Some(durable) = &gw.durable {
            let rows = durable
                .db
                .spend(Some(id), 0)
                .await
                .map_err(|e| ApiError::Unavailable(format!("database: {e}")))?;
            entry["recorded"] = Value::Array(
                rows.iter()
                    .map(|r| {
                        json!({"model": r.model, "requests": r.requests,
                               "prompt_tokens": r.prompt_tokens,
                               "completion_tokens": r.completion_tokens,
                               "cost_usd": r.cost_nanos as f64 / 1e9})
                    })
                    .collect(),
            );
        }
        data.push(entry);
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `DELETE /admin/keys/{id}`.
pub async fn revoke_key_handler(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&gw, &headers)?;
    let record = gw.api_keys.revoke(&id).await.map_err(|e| match e {
        tollgate_redis::Error::NotFound => ApiError::NotFound(format!("no key {id:?}")),
        e => ApiError::Unavailable(format!("keys: {e}")),
    })?;
    gw.forget_keys();
    Ok(Json(serde_json::to_value(record).unwrap_or_default()))
}

/// Cache statistics of every model with cached entries (shared by HTTP and the CLI).
pub async fn cache_stats(gw: &AppState) -> Result<Value, ApiError> {
    let unavailable = |e: tollgate_redis::Error| ApiError::Unavailable(format!("cache: {e}"));
    let mut data = Vec::new();
    for model in gw.cache.models().await.map_err(unavailable)? {
        let s = gw.cache.stats(&model).await.map_err(unavailable)?;
        let lookups = s.hits + s.misses;
        let price = gw.config.prices.get(&model).copied().unwrap_or_default();
        data.push(json!({
            "model": model,
            "hits": s.hits,
            "misses": s.misses,
            "hit_rate": if lookups == 0 { 0.0 } else { s.hits as f64 / lookups as f64 },
            "saved_prompt_tokens": s.saved_prompt_tokens,
            "saved_completion_tokens": s.saved_completion_tokens,
            "saved_dollars": price.cost(s.saved_prompt_tokens, s.saved_completion_tokens),
        }));
    }
    Ok(json!({"object": "list", "data": data}))
}

/// `GET /admin/cache/stats`.
pub async fn cache_stats_handler(
    State(gw): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&gw, &headers)?;
    Ok(Json(cache_stats(&gw).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invalidate {
    model: String,
}

/// `POST /admin/cache/invalidate` `{"model": ...}`.
pub async fn invalidate_handler(
    State(gw): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&gw, &headers)?;
    let Invalidate { model } = read_json(&gw, body).await?;
    let generation = gw
        .cache
        .invalidate_model(&model)
        .await
        .map_err(|e| match e {
            tollgate_redis::Error::InvalidArgument(m) => ApiError::bad(m, Some("model")),
            e => ApiError::Unavailable(format!("cache: {e}")),
        })?;
    Ok(Json(
        json!({"model": model, "generation": generation, "invalidated": true}),
    ))
}

/// `GET /admin/models`: the registry's models and its version.
pub async fn list_registry_handler(
    State(gw): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&gw, &headers)?;
    let (version, models) = gw
        .registry
        .load()
        .await
        .map_err(|e| ApiError::Unavailable(format!("registry: {e}")))?;
    Ok(Json(
        json!({"object": "list", "version": version, "data": models}),
    ))
}

/// `PUT /admin/models/{name}`: adds or replaces a model (`{"deployments": [...], "experiment": ...}`).
pub async fn put_registry_handler(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&gw, &headers)?;
    let mut entry: Value = read_json(&gw, body).await?;
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
    let version = gw.registry.put(&entry).await.map_err(|e| match e {
        tollgate_redis::Error::InvalidArgument(m) => ApiError::bad(m, None),
        e => ApiError::Unavailable(format!("registry: {e}")),
    })?;
    let _ = gw.sync_registry().await;
    Ok(Json(json!({"name": name, "version": version})))
}

/// `DELETE /admin/models/{name}`.
pub async fn delete_registry_handler(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&gw, &headers)?;
    let version = gw.registry.delete(&name).await.map_err(|e| match e {
        tollgate_redis::Error::NotFound => {
            ApiError::NotFound(format!("no model {name:?} in the registry"))
        }
        e => ApiError::Unavailable(format!("registry: {e}")),
    })?;
    let _ = gw.sync_registry().await;
    Ok(Json(
        json!({"name": name, "version": version, "deleted": true}),
    ))
}

/// `GET /metrics`.
pub async fn metrics_handler(State(gw): State<AppState>) -> Response {
    let mut response = gw.metrics.render().into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
