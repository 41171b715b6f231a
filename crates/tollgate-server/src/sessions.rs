//! Sessions: create, read, delete (`/v1/sessions`), Redis first and the database behind.
//!
//! Every write to a session also goes through the outbox, and a session Redis no longer has
//! (expired, evicted, flushed) is read back from the database and put back into Redis,
//! numbering and all, so it goes on where it stopped. A session belongs to the key that created
//! it: to any other key it does not exist.
//!
//! A conversation lives `sessions.ttl_seconds` after its last message. With a database, Redis
//! holds only the sessions in use (`sessions.idle_ttl_seconds`), and the database the rest until
//! their life ends; without one, Redis holds each for its whole life.

use std::time::Duration;

use tollgate_core::ChatMessage;
use tollgate_db::{Record, SessionMessageRow, SessionRow};
use tollgate_redis::{Appended, SessionInfo, Window};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::Gateway;

/// A session store error, for the client: "not found" and "taken" name the session.
fn session_error(id: &str, e: tollgate_redis::Error) -> ApiError {
    match e {
        tollgate_redis::Error::NotFound => ApiError::NotFound(format!("no session {id:?}")),
        tollgate_redis::Error::Conflict(_) => {
            ApiError::bad(format!("session id {id:?} is taken"), Some("id"))
        }
        tollgate_redis::Error::InvalidArgument(m) => ApiError::bad(m, Some("id")),
        e => e.into(),
    }
}

/// The longest session id (the OpenAPI document's `maxLength`).
const MAX_SESSION_ID_LEN: usize = 200;

/// Why a request may not use session `id`: the id is another key's (it never changes hands).
fn taken(id: &str, param: &str) -> ApiError {
    ApiError::bad(
        format!("session id {id:?} is taken by another key; use another id"),
        Some(param),
    )
}

/// Makes sure session id `id` is `owner`'s for life before Redis is given a session by that id:
/// the database is the record of who owns each id (the first claim wins, on any replica, and a
/// session Redis forgot stays its owner's). False when the id is another owner's. Without a
/// database, or while it is unreachable, Redis's own owner check is all there is (logged).
pub async fn claim(gw: &Gateway, id: &str, owner: &str) -> Result<bool, ApiError> {
    let Some(durable) = &gw.durable else {
        return Ok(true);
    };
    match durable
        .db
        .claim_session(id, owner, tollgate_db::now_ms())
        .await
    {
        Ok(holder) => Ok(holder == owner),
        Err(e) => {
            tracing::warn!(error = %e, "database unreachable: a session id is claimed in Redis only");
            Ok(true)
        }
    }
}

/// Creates a session for `principal` (`id`: the caller's choice, else a new one); returns its
/// id and what Redis holds of it. An id another key holds is a 400 ("taken").
pub async fn create(
    gw: &Gateway,
    principal: &Principal,
    id: Option<String>,
    system: Option<&str>,
) -> Result<(String, SessionInfo), ApiError> {
    let id = id.unwrap_or_else(|| format!("sess_{}", uuid::Uuid::new_v4().simple()));
    let owner = &principal.subject;
    if id.is_empty() || id.len() > MAX_SESSION_ID_LEN {
        return Err(ApiError::bad(
            format!("a session id must be 1 to {MAX_SESSION_ID_LEN} bytes"),
            Some("id"),
        ));
    }
    tollgate_redis::Id::new(&id).map_err(|e| session_error(&id, e))?;
    if !claim(gw, &id, owner).await? {
        return Err(taken(&id, "id"));
    }
    let written = gw
        .sessions
        .create_logged(&id, owner, system)
        .await
        .map_err(|e| session_error(&id, e))?;
    record_write(gw, &id, owner, &written, &[]).await;
    let info = gw
        .sessions
        .info(&id, owner)
        .await
        .map_err(|e| session_error(&id, e))?;
    Ok((id, info))
}

/// What Redis holds of session `id` (restored from the database first if Redis lost it).
pub async fn info(gw: &Gateway, principal: &Principal, id: &str) -> Result<SessionInfo, ApiError> {
    let owner = &principal.subject;
    match gw.sessions.info(id, owner).await {
        Err(tollgate_redis::Error::NotFound) if restore(gw, id, owner).await? => {
            gw.sessions.info(id, owner).await
        }
        other => other,
    }
    .map_err(|e| session_error(id, e))
}

/// Session `id`'s messages in `window` (restored from the database first if Redis lost it).
pub async fn messages(
    gw: &Gateway,
    principal: &Principal,
    id: &str,
    window: Window,
) -> Result<Vec<ChatMessage>, ApiError> {
    let owner = &principal.subject;
    match gw.sessions.history(id, owner, window).await {
        Err(tollgate_redis::Error::NotFound) if restore(gw, id, owner).await? => {
            gw.sessions.history(id, owner, window).await
        }
        other => other,
    }
    .map_err(|e| session_error(id, e))
}

/// Deletes session `id`, in Redis and the database.
pub async fn delete(gw: &Gateway, principal: &Principal, id: &str) -> Result<(), ApiError> {
    let owner = &principal.subject;
    match gw.sessions.delete(id, owner).await {
        Ok(()) => {}
        // Gone from Redis, maybe not from the database.
        Err(tollgate_redis::Error::NotFound) if restore(gw, id, owner).await? => {
            gw.sessions
                .delete(id, owner)
                .await
                .map_err(|e| session_error(id, e))?;
        }
        Err(e) => return Err(session_error(id, e)),
    }
    record_delete(gw, id, owner).await;
    Ok(())
}

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

/// When a session the database holds ends: `sessions.ttl_seconds` after its last write (its
/// claim, if it was never written), ms since the epoch.
fn ends_at(gw: &Gateway, session: &SessionRow) -> i64 {
    let ttl_ms = gw.config.sessions.ttl_seconds.saturating_mul(1000);
    let last = session.version.max(session.created_ms);
    last.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX))
}

/// What is left of a session's life; `None` once the conversation is over.
fn left_to_live(gw: &Gateway, session: &SessionRow) -> Option<Duration> {
    let left = ends_at(gw, session).saturating_sub(tollgate_db::now_ms());
    (left > 0).then(|| Duration::from_millis(left as u64))
}

/// Ends a conversation that outlived `sessions.ttl_seconds`: a tombstone dated the moment it
/// ended takes its messages from the database. The id stays its owner's, and a session the
/// owner starts again under it (written after that moment) is not touched.
async fn expire(gw: &Gateway, session: &SessionRow) {
    crate::accounting::submit(
        gw,
        vec![Record::Session(SessionRow {
            id: session.id.clone(),
            owner: session.owner.clone(),
            system: None,
            summary: None,
            summary_seq: 0,
            created_ms: 0,
            version: ends_at(gw, session),
            deleted: true,
        })],
    )
    .await;
}

/// Puts session `id` back into Redis from the database, if the database has it for `owner`.
/// True when Redis has it now. A conversation that is over is not put back.
pub async fn restore(gw: &Gateway, id: &str, owner: &str) -> Result<bool, ApiError> {
    restore_or_restart(gw, id, owner, None).await
}

/// [`restore`]; with `restart`, a conversation that is over starts afresh in Redis with that
/// system prompt (empty: none). Its messages are numbered after the old ones, so no write of
/// the new conversation can collide with a message of the old one the database still has.
async fn restore_or_restart(
    gw: &Gateway,
    id: &str,
    owner: &str,
    restart: Option<Option<&str>>,
) -> Result<bool, ApiError> {
    let Some(durable) = &gw.durable else {
        return Ok(false);
    };
    let Some(session) = durable.db.session(id).await? else {
        return Ok(false);
    };
    if session.deleted || session.owner != owner {
        return Ok(false);
    }
    let numbered =
        |rows: &[tollgate_db::SessionMessageRow]| rows.last().map_or(0, |m| m.seq.max(0) as u64);
    let (system, created_ms, appended, messages, lives) = match left_to_live(gw, &session) {
        Some(lives) => {
            let limit = i64::try_from(gw.sessions.max_messages()).unwrap_or(i64::MAX);
            let rows = durable.db.session_messages(id, limit).await?;
            let messages: Vec<(String, u32)> = rows
                .iter()
                .map(|m| (m.message.clone(), u32::try_from(m.tokens).unwrap_or(0)))
                .collect();
            let system = session.system.as_deref();
            (system, session.created_ms, numbered(&rows), messages, lives)
        }
        None => {
            // The next life is numbered after the old one's last message, read before the end
            // is queued (a writer may take the end at once and delete the old messages: read
            // after, the numbering would depend on how fast the writers are).
            let last = match restart {
                Some(_) => durable.db.session_messages(id, 1).await?,
                None => Vec::new(),
            };
            expire(gw, &session).await;
            let Some(system) = restart else {
                return Ok(false);
            };
            let lives = Duration::from_secs(gw.config.sessions.ttl_seconds);
            (
                system,
                tollgate_db::now_ms(),
                numbered(&last),
                Vec::new(),
                lives,
            )
        }
    };
    match gw
        .sessions
        .restore(
            id,
            owner,
            system,
            created_ms.max(0) as u64,
            appended,
            &messages,
            lives,
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

/// The history of session `id` for a request of `owner` that names it; `system` is the
/// request's system prompt, the session's own if it has none yet. A session Redis does not
/// have is read back from the database, or created (its id claimed for `owner`); an id that is
/// another key's is a 400 naming the header, never a 200 without the session.
pub async fn history_for_request(
    gw: &Gateway,
    id: &str,
    owner: &str,
    system: Option<&str>,
    tokens: u32,
) -> Result<Vec<ChatMessage>, ApiError> {
    let budget = Window::TokenBudget(tokens);
    let header = "x-tollgate-session-id";
    match gw.sessions.history(id, owner, budget).await {
        Ok(h) => Ok(h),
        // Not in Redis for this owner: forgotten (expired, evicted, flushed), new, or another
        // key's.
        Err(tollgate_redis::Error::NotFound) => {
            if !claim(gw, id, owner).await? {
                return Err(taken(id, header));
            }
            if restore_or_restart(gw, id, owner, Some(system)).await? {
                return Ok(gw
                    .sessions
                    .history(id, owner, budget)
                    .await
                    .unwrap_or_default());
            }
            match gw.sessions.create_logged(id, owner, system).await {
                Ok(_) => Ok(Vec::new()),
                Err(tollgate_redis::Error::Conflict(_)) => Err(taken(id, header)),
                Err(e) => {
                    tracing::warn!(error = %e, "could not create a session in Redis; answering without it");
                    Ok(Vec::new())
                }
            }
        }
        Err(tollgate_redis::Error::InvalidArgument(m)) => Err(ApiError::bad(m, Some(header))),
        Err(e) => {
            tracing::warn!(error = %e, "session history unavailable in Redis; reading the database");
            Ok(history_from_db(gw, id, owner, tokens)
                .await
                .unwrap_or_default())
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
    if session.deleted || session.owner != owner || left_to_live(gw, &session).is_none() {
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
