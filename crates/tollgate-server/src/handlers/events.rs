//! The tenant's event streams over HTTP: publish, and consumer groups (create one, read as a
//! consumer of it, acknowledge, read the dead letters). A group delivers each entry to one of its
//! consumers, at least once: an entry a consumer holds longer than `events.claim_idle_seconds`
//! without acknowledging it goes to the next consumer that reads, and one delivered
//! `events.max_deliveries` times goes to the stream's dead letters.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

/// An event to publish: a JSON object, each member a field of the event (strings as they are,
/// other values as JSON).
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct NewEvent(Value);

impl NewEvent {
    /// The event's fields, or a 400 saying what is wrong.
    fn fields(self) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
        let Value::Object(members) = self.0 else {
            return Err(ApiError::bad("an event must be a JSON object", None));
        };
        if members.is_empty() {
            return Err(ApiError::bad("an event must have at least one field", None));
        }
        Ok(members
            .into_iter()
            .map(|(k, v)| {
                let bytes = match v {
                    Value::String(s) => s.into_bytes(),
                    other => other.to_string().into_bytes(),
                };
                (k, bytes)
            })
            .collect())
    }
}

/// A stream name: 1 to 256 characters.
fn stream_name(stream: &str) -> Result<&str, ApiError> {
    if stream.is_empty() || stream.len() > 256 {
        return Err(ApiError::bad(
            "a stream name must be 1 to 256 characters",
            Some("stream"),
        ));
    }
    Ok(stream)
}

/// `POST /v1/events/{stream}`.
pub async fn publish_event_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(stream): Path<String>,
    Json(event): Json<NewEvent>,
) -> Result<Response, ApiError> {
    let name = principal.scoped(stream_name(&stream)?);
    let fields = event.fields()?;
    let refs: Vec<(&str, &[u8])> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let id = gw.events.publish(&name, &refs).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "object": "event", "stream": stream})),
    )
        .into_response())
}

/// `POST /v1/events/{stream}/groups` `{"group", "start": "new" | "beginning"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    group: String,
    #[serde(default)]
    start: Start,
}

/// Where a new group starts: entries published from now on, or every one still in the stream.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    #[default]
    New,
    Beginning,
}

/// A group or consumer name: 1 to 128 characters.
fn member_name<'a>(name: &'a str, what: &str) -> Result<&'a str, ApiError> {
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::bad(
            format!("a {what} name must be 1 to 128 characters"),
            Some(what),
        ));
    }
    Ok(name)
}

/// `POST /v1/events/{stream}/groups`: creates the group (and the stream); an existing one is
/// left as it is.
pub async fn create_group_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(stream): Path<String>,
    Json(new): Json<NewGroup>,
) -> Result<Response, ApiError> {
    let name = principal.scoped(stream_name(&stream)?);
    let group = member_name(&new.group, "group")?;
    let start = match new.start {
        Start::New => tollgate_redis::StartAt::New,
        Start::Beginning => tollgate_redis::StartAt::Beginning,
    };
    gw.events.create_group(&name, group, start).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"object": "event.group", "stream": stream, "group": group})),
    )
        .into_response())
}

/// `POST /v1/events/{stream}/groups/{group}/read` `{"consumer", "count", "block_ms"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadGroup {
    consumer: String,
    #[serde(default = "default_count")]
    count: usize,
    #[serde(default)]
    block_ms: u64,
}

fn default_count() -> usize {
    10
}

/// How many entries a read asks for: 1 to 1000.
fn entry_count(count: usize) -> Result<usize, ApiError> {
    if (1..=1000).contains(&count) {
        Ok(count)
    } else {
        Err(ApiError::bad("count must be 1 to 1000", Some("count")))
    }
}

/// An entry as JSON: its id, fields (as text) and how many times it has been delivered.
fn event_json(e: &tollgate_redis::Event) -> Value {
    json!({"id": e.id, "fields": e.text_fields(), "deliveries": e.deliveries})
}

/// `POST /v1/events/{stream}/groups/{group}/read`: entries for this consumer, those another
/// consumer left unacknowledged too long first, else new ones (waiting up to `block_ms`).
pub async fn read_group_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path((stream, group)): Path<(String, String)>,
    Json(read): Json<ReadGroup>,
) -> Result<axum::Json<Value>, ApiError> {
    let name = principal.scoped(stream_name(&stream)?);
    let group = member_name(&group, "group")?;
    let consumer = member_name(&read.consumer, "consumer")?;
    let count = entry_count(read.count)?;
    let most = gw.config.events.max_block_ms;
    if read.block_ms > most {
        return Err(ApiError::bad(
            format!("block_ms must be at most {most}"),
            Some("block_ms"),
        ));
    }
    let mut reader = gw.events.consumer(&name, group, consumer).await?;
    let events = reader
        .next_up_to(count, Duration::from_millis(read.block_ms))
        .await
        .map_err(|e| match e {
            tollgate_redis::Error::Command(ref r) if r.code() == Some("NOGROUP") => {
                ApiError::NotFound(format!("no group {group:?} on stream {stream:?}"))
            }
            other => other.into(),
        })?;
    Ok(axum::Json(json!({
        "object": "list",
        "data": events.iter().map(event_json).collect::<Vec<_>>(),
    })))
}

/// `POST /v1/events/{stream}/groups/{group}/ack` `{"ids": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    ids: Vec<String>,
}

/// `POST /v1/events/{stream}/groups/{group}/ack`: acknowledges handled entries; says how many
/// were still pending.
pub async fn ack_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path((stream, group)): Path<(String, String)>,
    Json(ack): Json<Ack>,
) -> Result<axum::Json<Value>, ApiError> {
    let name = principal.scoped(stream_name(&stream)?);
    let group = member_name(&group, "group")?;
    if ack.ids.is_empty() || ack.ids.len() > 1000 {
        return Err(ApiError::bad(
            "ids must hold 1 to 1000 entry ids",
            Some("ids"),
        ));
    }
    if let Some(bad) = ack.ids.iter().find(|id| !is_entry_id(id)) {
        return Err(ApiError::bad(
            format!("{bad:?} is not an entry id (MILLISECONDS-SEQUENCE)"),
            Some("ids"),
        ));
    }
    let acknowledged = gw.events.ack(&name, group, &ack.ids).await?;
    Ok(axum::Json(json!({"acknowledged": acknowledged})))
}

/// Whether `id` is a stream entry id (`1700000000000-0`: two numbers that fit 64 bits).
fn is_entry_id(id: &str) -> bool {
    let number = |s: &str| s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u64>().is_ok();
    id.split_once('-')
        .is_some_and(|(ms, seq)| number(ms) && number(seq))
}

/// `GET /v1/events/{stream}/dead?count=N` query.
#[derive(Debug, Deserialize)]
pub struct DeadQuery {
    #[serde(default = "default_count")]
    count: usize,
}

/// `GET /v1/events/{stream}/dead`: the stream's dead letters, oldest first (each with the entry
/// it came from, its deliveries and why).
pub async fn dead_letters_handler(
    State(gw): State<AppState>,
    principal: Principal,
    Path(stream): Path<String>,
    Query(q): Query<DeadQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let name = principal.scoped(stream_name(&stream)?);
    let count = entry_count(q.count)?;
    let dead = gw.events.dead_letters(&name, count).await?;
    Ok(axum::Json(json!({
        "object": "list",
        "data": dead.iter().map(event_json).collect::<Vec<_>>(),
    })))
}
