//! The operator's listings, read-only: the newest requests (`/admin/requests`, from the usage
//! records), and conversations: the sessions and stored responses the database
//! keeps (every replica writes them through the outbox), newest first, of one tenant or of all.
//! `/admin/sessions`, `/admin/sessions/{id}/messages`, `/admin/responses`; and the generations
//! running now on any instance, `/admin/streams` (their tokens: `/v1/streams/{id}`, which the
//! master key may read).

use std::collections::HashMap;

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::state::{AppState, Gateway};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    /// One tenant's (default: everyone's).
    tenant: Option<String>,
    /// How many, newest first: 1 to 500 (default 50).
    limit: Option<i64>,
}

/// What a listing reads: the database, each owner's tenant (API keys by id; `open` and
/// `master` are their own), the owners asked for (`None`: all) and how many rows.
struct Scope {
    db: tollgate_db::Database,
    tenants: HashMap<String, String>,
    owners: Option<Vec<String>>,
    limit: i64,
}

impl Listing {
    /// How many rows: 1 to 500 (default 50), else a 400 naming `limit`.
    fn limit(&self) -> Result<i64, ApiError> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(ApiError::bad("limit must be 1 to 500", Some("limit")));
        }
        Ok(limit)
    }
}

/// The database these listings read (`what`: what is listed, for the 404 without one).
fn database<'a>(gw: &'a Gateway, what: &str) -> Result<&'a tollgate_db::Database, ApiError> {
    match &gw.durable {
        Some(durable) => Ok(&durable.db),
        None => Err(ApiError::NotFound(format!(
            "{what} are read from the database, and this gateway keeps none"
        ))),
    }
}

async fn scope(gw: &Gateway, q: &Listing) -> Result<Scope, ApiError> {
    let limit = q.limit()?;
    let db = database(gw, "conversations")?;
    let mut tenants: HashMap<String, String> = gw
        .api_keys
        .list()
        .await?
        .into_iter()
        .map(|k| (k.id, k.tenant))
        .collect();
    for own in ["open", "master"] {
        tenants.insert(own.into(), own.into());
    }
    let owners = q.tenant.as_ref().map(|t| {
        tenants
            .iter()
            .filter(|(_, tenant)| *tenant == t)
            .map(|(owner, _)| owner.clone())
            .collect::<Vec<_>>()
    });
    Ok(Scope {
        db: db.clone(),
        tenants,
        owners,
        limit,
    })
}

/// `GET /admin/sessions[?tenant=T&limit=N]`.
pub async fn sessions_handler(
    State(gw): State<AppState>,
    _: Admin,
    Query(q): Query<Listing>,
) -> Result<axum::Json<Value>, ApiError> {
    let Scope {
        db,
        tenants,
        owners,
        limit,
    } = scope(&gw, &q).await?;
    let rows = db.recent_sessions(owners.as_deref(), limit).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|s| {
            json!({"id": s.id, "owner": s.owner, "tenant": tenants.get(&s.owner),
                   "system": s.system, "summarized": s.summary.is_some(),
                   "created_ms": s.created_ms, "updated_ms": s.version})
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})))
}

/// `GET /admin/sessions/{id}/messages`: a session's messages as the database holds them.
pub async fn session_messages_handler(
    State(gw): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let db = database(&gw, "conversations")?;
    let session = db.session(&id).await?;
    if session.is_none_or(|s| s.deleted) {
        return Err(ApiError::NotFound(format!("no session {id:?}")));
    }
    let limit = i64::try_from(gw.sessions.max_messages()).unwrap_or(i64::MAX);
    let rows = db.session_messages(&id, limit).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|m| {
            let message: Value = serde_json::from_str(&m.message).unwrap_or(Value::Null);
            json!({"seq": m.seq, "created_ms": m.created_ms, "tokens": m.tokens,
                   "message": message})
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})))
}

/// `GET /admin/responses[?tenant=T&limit=N]`: stored responses, without their whole output
/// (its text's first 200 characters).
pub async fn responses_handler(
    State(gw): State<AppState>,
    _: Admin,
    Query(q): Query<Listing>,
) -> Result<axum::Json<Value>, ApiError> {
    let Scope {
        db,
        tenants,
        owners,
        limit,
    } = scope(&gw, &q).await?;
    let rows = db.recent_responses(owners.as_deref(), limit).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            // The row holds the response object as `GET /v1/responses/{id}` returns it, and its
            // context.
            let stored: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
            let body = &stored["response"];
            let text: String = body["output"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o["content"].as_array())
                .flatten()
                .filter_map(|c| c["text"].as_str())
                .collect::<String>()
                .chars()
                .take(200)
                .collect();
            json!({"id": r.id, "owner": r.owner, "tenant": tenants.get(&r.owner),
                   "created_ms": r.created_ms, "model": body["model"], "status": body["status"],
                   "previous_response_id": body["previous_response_id"],
                   "usage": body["usage"], "output_text": text})
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})))
}

/// `GET /admin/streams`: the generations running now on every instance, newest first, with
/// their model and owner (from each stream's start).
pub async fn live_streams_handler(
    State(gw): State<AppState>,
    _: Admin,
) -> Result<axum::Json<Value>, ApiError> {
    let live = gw
        .streams
        .live(100)
        .await
        .map_err(|e| ApiError::Unavailable(format!("streams: {e}")))?;
    let mut data = Vec::with_capacity(live.len());
    for (id, started_ms) in live {
        let meta = match gw.streams.start_meta(&id).await {
            Ok(m) => serde_json::from_slice::<Value>(&m).unwrap_or(Value::Null),
            // Ended and gone meanwhile.
            Err(_) => continue,
        };
        data.push(
            json!({"id": id, "started_ms": started_ms, "model": meta["model"],
                         "owner": meta["owner"]}),
        );
    }
    Ok(axum::Json(json!({"object": "list", "data": data})))
}

/// `GET /admin/requests[?tenant=T&limit=N]`: the newest requests, from the usage records every
/// replica writes to the database (model, key, tenant, tokens, cost, whether the cache answered).
pub async fn recent_requests_handler(
    State(gw): State<AppState>,
    _: Admin,
    Query(q): Query<Listing>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = q.limit()?;
    let db = database(&gw, "recent requests")?;
    let rows = db.recent_usage(q.tenant.as_deref(), limit).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"id": r.id, "key": r.key_id, "tenant": r.tenant, "model": r.model,
                   "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                   "cost_usd": r.cost_nanos as f64 / 1e9, "cached": r.served.cached(),
                   "served": r.served.name(),
                   "created_ms": r.created_ms})
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    /// One tenant's (default: everyone's).
    tenant: Option<String>,
    /// How far back: 1 to 10080 (a week; default 60).
    minutes: Option<i64>,
}

/// The step a timeline is cut into: the shortest of a minute, 5, 15 minutes and an hour that
/// makes at most 180 steps (an hour in minutes, a day in quarter hours, a week in hours).
fn timeline_step_ms(minutes: i64) -> i64 {
    let step = [1, 5, 15]
        .into_iter()
        .find(|step| minutes / step <= 180)
        .unwrap_or(60);
    step * 60_000
}

/// `GET /admin/timeline[?tenant=T&minutes=N]`: what every replica answered over the last N
/// minutes, step by step, from the usage records in the database: requests, how the caches
/// answered them (exact, semantic, coalesced with another request), what the upstream answers
/// cost and what the hits saved (their tokens at the model's price). Every step is listed, the
/// quiet ones as zeros, oldest first.
pub async fn timeline_handler(
    State(gw): State<AppState>,
    _: Admin,
    Query(q): Query<TimelineQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let minutes = q.minutes.unwrap_or(60);
    if !(1..=10_080).contains(&minutes) {
        return Err(ApiError::bad(
            "minutes must be 1 to 10080 (a week)",
            Some("minutes"),
        ));
    }
    let db = database(&gw, "timelines")?;
    let step = timeline_step_ms(minutes);
    let now = tollgate_db::now_ms();
    let first = (now - minutes * 60_000) / step * step;
    let rows = db.timeline(q.tenant.as_deref(), first, step).await?;
    let mut steps: Vec<Step> = (0..=(now - first) / step)
        .map(|i| Step {
            start_ms: first + i * step,
            ..Step::default()
        })
        .collect();
    for r in rows {
        let Some(at) = usize::try_from((r.start_ms - first) / step)
            .ok()
            .and_then(|i| steps.get_mut(i))
        else {
            continue;
        };
        at.requests += r.requests;
        at.exact += r.exact;
        at.semantic += r.semantic;
        at.coalesced += r.coalesced;
        at.spend_usd += r.cost_nanos as f64 / 1e9;
        at.saved_usd += gw.config.price(&r.model, None).map_or(0.0, |p| {
            p.cost(r.hit_prompt_tokens as u64, r.hit_completion_tokens as u64)
        });
    }
    Ok(axum::Json(
        json!({"object": "timeline", "step_ms": step, "data": steps}),
    ))
}

/// One step of a timeline, every model's requests together.
#[derive(Debug, Default, serde::Serialize)]
struct Step {
    start_ms: i64,
    requests: i64,
    exact: i64,
    semantic: i64,
    coalesced: i64,
    spend_usd: f64,
    saved_usd: f64,
}
