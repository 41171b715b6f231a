//! Stored responses of the Responses API: the record (the response object and its *context*,
//! the conversation up to and including it), Redis first and the database behind.
//!
//! A record is in Redis before its response reaches the client, so the next request of a chain
//! finds it on any instance; the same record goes through the outbox to the database. A read
//! that misses Redis (expired, flushed) goes to the database and puts what it found back. A
//! record belongs to the key that created it, for life: to any other key it does not exist.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_core::ChatMessage;
use tollgate_db::{Record, ResponseRow};
use tollgate_redis::StoredResponse;
use tracing::Instrument;

use crate::error::ApiError;
use crate::state::Gateway;

/// The conversation up to and including a response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Context {
    /// A summary of turns no longer kept word for word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The turns kept, oldest first (instructions are not part of it: each request sets its own).
    pub messages: Vec<ChatMessage>,
    /// Tokens of `summary` and `messages`.
    pub tokens: u64,
}

/// What is stored for a response, in Redis and in the database.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRecord {
    pub owner: String,
    /// 1 when created, +1 each time its context is summarized.
    pub version: i64,
    /// The response object, as `GET` returns it.
    pub response: Value,
    pub context: Context,
}

impl StoredRecord {
    /// The database row of this record; its `body` is also what Redis stores.
    pub fn row(&self, id: &str) -> Result<ResponseRow, serde_json::Error> {
        Ok(ResponseRow {
            id: id.to_owned(),
            owner: self.owner.clone(),
            version: self.version,
            created_ms: self
                .response
                .get("created_at")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                * 1000,
            body: serde_json::to_string(self)?,
        })
    }
}

/// The stored record of `id` if `owner` may read it: Redis first, then the database (what the
/// database has is put back into Redis).
///
/// Traced as a `response load` span: the id asked for and where the record came from
/// (`tollgate.source`: `redis`, `database` or `none`).
pub async fn load(gw: &Gateway, id: &str, owner: &str) -> Result<Option<StoredRecord>, ApiError> {
    if id.is_empty() || id.len() > 200 {
        return Ok(None);
    }
    let span = tracing::info_span!(
        target: "otel",
        "response load",
        "tollgate.response_id" = id,
        "tollgate.source" = tracing::field::Empty,
    );
    let found = read(gw, id).instrument(span.clone()).await?;
    span.record(
        "tollgate.source",
        match &found {
            Some((_, true)) => "database",
            Some((_, false)) => "redis",
            None => "none",
        },
    );
    Ok(found.and_then(|(record, _)| (record.owner == owner).then_some(record)))
}

/// The record of `id` from Redis or else the database (true), whoever owns it.
async fn read(gw: &Gateway, id: &str) -> Result<Option<(StoredRecord, bool)>, ApiError> {
    let from_redis = match gw.responses.get(id).await {
        Ok(StoredResponse::Found(bytes)) => Some(decode(&bytes)?),
        Ok(StoredResponse::Deleted) => return Ok(None),
        Ok(StoredResponse::Missing) => None,
        Err(e) => {
            tracing::warn!(error = %e, "stored responses unavailable in Redis; reading the database");
            None
        }
    };
    if let Some(record) = from_redis {
        return Ok(Some((record, false)));
    }
    let Some(durable) = &gw.durable else {
        return Ok(None);
    };
    let row = durable.db.response(id).await?;
    let Some(row) = row.filter(|r| !r.is_deleted()) else {
        return Ok(None);
    };
    if let Err(e) = gw.responses.restore(id, row.body.as_bytes()).await {
        tracing::debug!(error = %e, "could not put a response back into Redis");
    }
    Ok(Some((decode(row.body.as_bytes())?, true)))
}

fn decode(bytes: &[u8]) -> Result<StoredRecord, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Internal(format!("a stored response does not decode: {e}")))
}

/// Stores `record` (Redis, awaited; the database through the outbox).
pub async fn persist(gw: &Gateway, id: &str, record: &StoredRecord) {
    let row = match record.row(id) {
        Ok(row) => row,
        Err(e) => {
            tracing::error!(error = %e, "a response record does not encode");
            return;
        }
    };
    let stored = gw.responses.put(id, row.body.as_bytes()).await;
    let row = Record::Response(row);
    match stored {
        Ok(()) => crate::accounting::submit(gw, vec![row]).await,
        Err(e) => {
            // The next request of the chain will look in the database: it must be there first.
            tracing::warn!(error = %e, "could not store a response in Redis; writing it to the database");
            if let Some(durable) = &gw.durable
                && let Err(e) = durable.db.write(vec![row.clone()]).await
            {
                tracing::warn!(error = %e, "database write failed; queueing the response");
                crate::accounting::submit(gw, vec![row]).await;
            }
        }
    }
}
