//! Sessions in the database: every write to a session also goes through the outbox, and a
//! session Redis no longer has (expired, evicted, flushed) is read back from the database and
//! put back into Redis, numbering and all, so it goes on where it stopped.

use tollgate_core::ChatMessage;
use tollgate_db::{Record, SessionMessageRow, SessionRow};
use tollgate_redis::Appended;

use crate::error::ApiError;
use crate::state::Gateway;

/// Sends a session write (its metadata, and the `messages` it appended) to the database.
pub async fn record_write(
    gw: &Gateway,
    id: &str,
    owner: &str,
    written: &Appended,
    messages: &[ChatMessage],
) {
    if gw.durable.is_none() {
        return;
    }
    let mut records = vec![Record::Session(SessionRow {
        id: id.to_owned(),
        owner: owner.to_owned(),
        system: written.system.clone(),
        summary: None,
        summary_seq: 0,
        created_ms: written.created_ms as i64,
        version: written.updated_ms as i64,
        deleted: false,
    })];
    let first = written.appended as i64 - messages.len() as i64 + 1;
    for (i, message) in messages.iter().enumerate() {
        let Ok(json) = serde_json::to_string(message) else {
            continue;
        };
        records.push(Record::SessionMessage(SessionMessageRow {
            session_id: id.to_owned(),
            seq: first + i as i64,
            owner: owner.to_owned(),
            created_ms: written.updated_ms as i64,
            tokens: i64::from(gw.counter.count_message(message)),
            message: json,
        }));
    }
    crate::accounting::submit(gw, records).await;
}

/// Records a session's deletion in the database.
pub async fn record_delete(gw: &Gateway, id: &str, owner: &str) {
    crate::accounting::submit(
        gw,
        vec![Record::Session(SessionRow {
            id: id.to_owned(),
            owner: owner.to_owned(),
            system: None,
            summary: None,
            summary_seq: 0,
            created_ms: 0,
            version: tollgate_db::now_ms(),
            deleted: true,
        })],
    )
    .await;
}

/// Puts session `id` back into Redis from the database, if the database has it for `owner`.
/// True when Redis has it now.
pub async fn restore(gw: &Gateway, id: &str, owner: &str) -> Result<bool, ApiError> {
    let Some(durable) = &gw.durable else {
        return Ok(false);
    };
    let db_error = |e: tollgate_db::Error| ApiError::Unavailable(format!("database: {e}"));
    let Some(session) = durable.db.session(id).await.map_err(db_error)? else {
        return Ok(false);
    };
    if session.deleted || session.owner != owner {
        return Ok(false);
    }
    let limit = i64::try_from(gw.sessions.max_messages()).unwrap_or(i64::MAX);
    let rows = durable
        .db
        .session_messages(id, limit)
        .await
        .map_err(db_error)?;
    let appended = rows.last().map_or(0, |m| m.seq.max(0) as u64);
    let messages: Vec<(String, u32)> = rows
        .into_iter()
        .map(|m| (m.message, u32::try_from(m.tokens).unwrap_or(0)))
        .collect();
    match gw
        .sessions
        .restore(
            id,
            owner,
            session.system.as_deref(),
            session.created_ms.max(0) as u64,
            appended,
            &messages,
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) => {
            tracing::warn!(error = %e, "could not put a session back into Redis");
            Ok(false)
        }
    }
}

/// Session `id`'s history from the database (Redis unreachable): the system prompt, then the
/// newest messages within `budget` tokens. `None` when the database does not have it for `owner`.
pub async fn history_from_db(
    gw: &Gateway,
    id: &str,
    owner: &str,
    budget: u32,
) -> Option<Vec<ChatMessage>> {
    let durable = gw.durable.as_ref()?;
    let session = durable.db.session(id).await.ok()??;
    if session.deleted || session.owner != owner {
        return None;
    }
    let limit = i64::try_from(gw.sessions.max_messages()).unwrap_or(i64::MAX);
    let rows = durable.db.session_messages(id, limit).await.ok()?;
    let newest_first = rows.iter().rev().filter_map(|row| {
        let message = serde_json::from_str::<ChatMessage>(&row.message).ok()?;
        Some((message, u32::try_from(row.tokens).unwrap_or(u32::MAX)))
    });
    Some(tollgate_redis::session::within_budget(
        &*gw.counter,
        session.system.as_deref().filter(|s| !s.is_empty()),
        None,
        newest_first,
        budget,
    ))
}
