//! Conversation sessions: a metadata hash and the messages in a Redis Stream.
//!
//! Invariants: a session has one owner (an API key or user id) and every operation names it; a
//! caller who is not the owner gets [`Error::NotFound`], exactly as for a missing session, so ids
//! never leak. Every write refreshes the TTL of both keys in the same script, so a session
//! expires only when idle (reads do not keep it alive). At most `max_messages` are kept; older
//! ones are trimmed on append. History comes back in the OpenAI message format, system prompt
//! first, in one round trip.
//!
//! A session may carry a summary of its messages up to some entry ([`SessionStore::set_summary`]):
//! the [`Window::TokenBudget`] history (what prompts are built from) is then the system prompt,
//! the summary, and the messages after it; the other windows return the messages as written.
//! Each write reports the tokens of the messages after the summary, so a caller knows when to
//! summarize without reading the session.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tollgate_core::{ApproxTokenCounter, ChatMessage, TokenCounter};

use crate::conn::Redis;
use crate::error::{Error, Result};
use crate::keys::{Id, Keys};
use crate::millis;
use crate::scripts;

/// Limits of the session store.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// A session with no write for this long expires.
    pub idle_ttl: Duration,
    /// Messages kept per session; older ones are trimmed.
    pub max_messages: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_ttl: Duration::from_secs(24 * 3600),
            max_messages: 1000,
        }
    }
}

/// Which part of the history to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Every stored message.
    All,
    /// The last N messages.
    LastN(usize),
    /// The most recent messages whose tokens, with the system prompt's, fit the budget.
    TokenBudget(u32),
}

/// A session's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The system prompt, if any.
    pub system: Option<String>,
    /// Creation time, ms since the epoch (server clock).
    pub created_ms: u64,
    /// Last write, ms since the epoch (server clock).
    pub updated_ms: u64,
    /// Messages appended over the session's life (stored ones may be fewer, after trimming).
    pub appended: u64,
    /// Messages stored now.
    pub stored: u64,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Messages stored after the write.
    pub stored: u64,
    /// Messages appended over the session's life: the last one written is number `appended`.
    pub appended: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The session's system prompt after the write.
    pub system: Option<String>,
    /// Tokens of the messages after the session's summary (all of them without one).
    pub pending_tokens: u64,
}

/// The messages a summary does not cover yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsummarized {
    /// The summary so far.
    pub summary: Option<String>,
    /// Stream entry id, message and tokens, oldest first.
    pub messages: Vec<(String, ChatMessage, u32)>,
}

/// Sessions on one Redis.
#[derive(Clone)]
pub struct SessionStore {
    redis: Redis,
    keys: Keys,
    config: SessionConfig,
    counter: Arc<dyn TokenCounter>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("config", &self.config)
            .finish()
    }
}

impl SessionStore {
    /// A store that counts tokens with the byte-length estimate.
    pub fn new(redis: Redis, keys: Keys, config: SessionConfig) -> Self {
        Self::with_counter(redis, keys, config, Arc::new(ApproxTokenCounter))
    }

    /// A store that counts message tokens with `counter` (stored with each message, for
    /// [`Window::TokenBudget`]).
    pub fn with_counter(
        redis: Redis,
        keys: Keys,
        config: SessionConfig,
        counter: Arc<dyn TokenCounter>,
    ) -> Self {
        SessionStore {
            redis,
            keys,
            config,
            counter,
        }
    }

    /// Creates a session owned by `owner`. Creating it again with the same owner is a no-op;
    /// an id taken by another owner is a [`Error::Conflict`].
    pub async fn create(&self, id: &str, owner: &str, system: Option<&str>) -> Result<()> {
        self.create_logged(id, owner, system).await.map(|_| ())
    }

    /// [`SessionStore::create`], saying what the session holds after it.
    pub async fn create_logged(
        &self,
        id: &str,
        owner: &str,
        system: Option<&str>,
    ) -> Result<Appended> {
        match self.write(id, owner, true, system, false, &[]).await {
            Err(Error::NotFound) => Err(Error::Conflict("session id is taken".into())),
            other => other,
        }
    }

    /// Appends messages; the session must exist and belong to `owner`. Returns the number of
    /// messages stored after the append.
    pub async fn append(&self, id: &str, owner: &str, messages: &[ChatMessage]) -> Result<u64> {
        Ok(self
            .write(id, owner, false, None, false, messages)
            .await?
            .stored)
    }

    /// Appends messages, creating the session (with `system`) if it does not exist.
    pub async fn append_or_create(
        &self,
        id: &str,
        owner: &str,
        system: Option<&str>,
        messages: &[ChatMessage],
    ) -> Result<u64> {
        Ok(self
            .append_or_create_logged(id, owner, system, messages)
            .await?
            .stored)
    }

    /// [`SessionStore::append_or_create`], saying how the messages were numbered.
    pub async fn append_or_create_logged(
        &self,
        id: &str,
        owner: &str,
        system: Option<&str>,
        messages: &[ChatMessage],
    ) -> Result<Appended> {
        self.write(id, owner, true, system, false, messages).await
    }

    /// Replaces the system prompt (`None` removes it).
    pub async fn set_system(&self, id: &str, owner: &str, system: Option<&str>) -> Result<()> {
        self.write(id, owner, false, system, true, &[])
            .await
            .map(|_| ())
    }

    /// Puts a session read from elsewhere (the database) back, unless Redis has one by that id;
    /// `messages` are the stored message JSON and token counts, oldest first. It stays the idle
    /// TTL, or `lives` if that is shorter (what is left of the conversation's life). True if
    /// restored.
    #[allow(clippy::too_many_arguments)]
    pub async fn restore(
        &self,
        id: &str,
        owner: &str,
        system: Option<&str>,
        created_ms: u64,
        appended: u64,
        messages: &[(String, u32)],
        lives: Duration,
    ) -> Result<bool> {
        let id = Id::new(id)?;
        let mut invocation = scripts::SESSION_RESTORE.prepare_invoke();
        invocation
            .key(self.keys.session_meta(&id))
            .key(self.keys.session_messages(&id))
            .arg(owner)
            .arg(millis(self.config.idle_ttl.min(lives)))
            .arg(system.unwrap_or(""))
            .arg(created_ms)
            .arg(appended)
            .arg(self.config.max_messages.max(1));
        for (json, tokens) in messages {
            invocation.arg(json).arg(*tokens);
        }
        let restored: i64 = invocation.invoke_async(&mut self.redis.conn()).await?;
        Ok(restored == 1)
    }

    /// The same store with sessions leaving Redis `idle_ttl` after their last write.
    pub fn with_idle_ttl(mut self, idle_ttl: Duration) -> Self {
        self.config.idle_ttl = idle_ttl;
        self
    }

    /// Messages kept per session.
    pub fn max_messages(&self) -> u64 {
        self.config.max_messages
    }

    async fn write(
        &self,
        id: &str,
        owner: &str,
        create: bool,
        system: Option<&str>,
        replace_system: bool,
        messages: &[ChatMessage],
    ) -> Result<Appended> {
        let id = Id::new(id)?;
        if owner.is_empty() {
            return Err(Error::InvalidArgument(
                "a session owner must not be empty".into(),
            ));
        }
        let mut invocation = scripts::SESSION_WRITE.prepare_invoke();
        invocation
            .key(self.keys.session_meta(&id))
            .key(self.keys.session_messages(&id))
            .arg(owner)
            .arg(millis(self.config.idle_ttl))
            .arg(self.config.max_messages.max(1))
            .arg(if create { "1" } else { "0" })
            .arg(system.unwrap_or(""))
            .arg(if replace_system { "1" } else { "0" });
        for message in messages {
            let json = serde_json::to_string(message)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            invocation
                .arg(json)
                .arg(self.counter.count_message(message));
        }
        let (status, stored, appended, created_ms, system, updated_ms, pending_tokens): (
            String,
            u64,
            u64,
            u64,
            String,
            u64,
            u64,
        ) = invocation.invoke_async(&mut self.redis.conn()).await?;
        match status.as_str() {
            "ok" => Ok(Appended {
                stored,
                appended,
                created_ms,
                updated_ms,
                system: Some(system).filter(|s| !s.is_empty()),
                pending_tokens,
            }),
            "not_found" => Err(Error::NotFound),
            other => Err(Error::reply(
                "session_write",
                format!("unknown status {other:?}"),
            )),
        }
    }

    /// The session's metadata.
    pub async fn info(&self, id: &str, owner: &str) -> Result<SessionInfo> {
        let id = Id::new(id)?;
        let (meta, stored): (Vec<(String, String)>, u64) = redis::pipe()
            .cmd("HGETALL")
            .arg(self.keys.session_meta(&id))
            .cmd("XLEN")
            .arg(self.keys.session_messages(&id))
            .query_async(&mut self.redis.conn())
            .await?;
        let meta = Meta::from_fields(meta, owner)?;
        Ok(meta.into_info(stored))
    }

    /// The history in OpenAI format: the system prompt (if any), then the window's messages,
    /// oldest first. One round trip.
    pub async fn history(&self, id: &str, owner: &str, window: Window) -> Result<Vec<ChatMessage>> {
        let id = Id::new(id)?;
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(self.keys.session_meta(&id));
        let msgs = self.keys.session_messages(&id);
        match window {
            Window::LastN(n) => pipe
                .cmd("XREVRANGE")
                .arg(&msgs)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(n.max(1)),
            Window::All | Window::TokenBudget(_) => {
                pipe.cmd("XREVRANGE").arg(&msgs).arg("+").arg("-")
            }
        };
        let (meta, entries): (Vec<(String, String)>, Value) =
            pipe.query_async(&mut self.redis.conn()).await?;
        let meta = Meta::from_fields(meta, owner)?;
        let newest_first = parse_entries(entries)?;
        let system = meta.system.as_deref().filter(|s| !s.is_empty());
        if let Window::TokenBudget(budget) = window {
            // Prompts get the summary in place of the messages it covers.
            let upto = meta
                .summary
                .as_ref()
                .and(meta.summary_upto.as_deref())
                .and_then(entry_id);
            let after_summary = newest_first
                .into_iter()
                .take_while(|(id, _, _)| upto.is_none_or(|u| entry_id(id).is_none_or(|e| e > u)))
                .map(|(_, message, tokens)| (message, tokens));
            return Ok(within_budget(
                &*self.counter,
                system,
                meta.summary.as_deref(),
                after_summary,
                budget,
            ));
        }
        let mut out: Vec<ChatMessage> = system
            .map(|s| ChatMessage::text("system", s))
            .into_iter()
            .collect();
        if matches!(window, Window::LastN(0)) {
            return Ok(out);
        }
        out.extend(
            newest_first
                .into_iter()
                .rev()
                .map(|(_, message, _)| message),
        );
        Ok(out)
    }

    /// The summary and the messages after it (the messages still in the stream).
    pub async fn unsummarized(&self, id: &str, owner: &str) -> Result<Unsummarized> {
        let id = Id::new(id)?;
        let (meta, entries): (Vec<(String, String)>, Value) = redis::pipe()
            .cmd("HGETALL")
            .arg(self.keys.session_meta(&id))
            .cmd("XRANGE")
            .arg(self.keys.session_messages(&id))
            .arg("-")
            .arg("+")
            .query_async(&mut self.redis.conn())
            .await?;
        let meta = Meta::from_fields(meta, owner)?;
        let upto = meta.summary_upto.as_deref().and_then(entry_id);
        let messages = parse_entries(entries)?
            .into_iter()
            .filter(|(id, _, _)| upto.is_none_or(|u| entry_id(id).is_some_and(|e| e > u)))
            .collect();
        Ok(Unsummarized {
            summary: meta.summary,
            messages,
        })
    }

    /// Records `summary` as covering the messages up to entry `upto` (`tokens` of them), unless
    /// the session has a newer one. True if recorded.
    pub async fn set_summary(
        &self,
        id: &str,
        owner: &str,
        summary: &str,
        upto: &str,
        tokens: u64,
    ) -> Result<bool> {
        let id = Id::new(id)?;
        if entry_id(upto).is_none() {
            return Err(Error::InvalidArgument(format!(
                "{upto:?} is not a stream entry id"
            )));
        }
        let recorded: i64 = scripts::SESSION_SUMMARY
            .key(self.keys.session_meta(&id))
            .arg(owner)
            .arg(summary)
            .arg(upto)
            .arg(tokens)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(recorded == 1)
    }

    /// Deletes the session (both keys).
    pub async fn delete(&self, id: &str, owner: &str) -> Result<()> {
        let id = Id::new(id)?;
        let deleted: i64 = scripts::SESSION_DELETE
            .key(self.keys.session_meta(&id))
            .key(self.keys.session_messages(&id))
            .arg(owner)
            .invoke_async(&mut self.redis.conn())
            .await?;
        if deleted == 1 {
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }
}

struct Meta {
    system: Option<String>,
    created_ms: u64,
    updated_ms: u64,
    appended: u64,
    summary: Option<String>,
    summary_upto: Option<String>,
}

/// A prompt's history: the system prompt, the summary of earlier messages (if any), then the
/// newest messages that fit `budget` tokens with them, oldest first. `newest_first` gives each
/// message with its token count; the first that does not fit ends the history.
pub fn within_budget(
    counter: &dyn TokenCounter,
    system: Option<&str>,
    summary: Option<&str>,
    newest_first: impl IntoIterator<Item = (ChatMessage, u32)>,
    budget: u32,
) -> Vec<ChatMessage> {
    let mut left = budget;
    let mut out = Vec::new();
    let head = system
        .map(|s| ChatMessage::text("system", s))
        .into_iter()
        .chain(summary.map(ChatMessage::summary));
    for message in head {
        left = left.saturating_sub(counter.count_message(&message));
        out.push(message);
    }
    let mut kept = Vec::new();
    for (message, tokens) in newest_first {
        if tokens > left {
            break;
        }
        left -= tokens;
        kept.push(message);
    }
    out.extend(kept.into_iter().rev());
    out
}

/// A stream entry id as (ms, seq), for ordering.
fn entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl Meta {
    fn from_fields(fields: Vec<(String, String)>, owner: &str) -> Result<Self> {
        let mut meta = Meta {
            system: None,
            created_ms: 0,
            updated_ms: 0,
            appended: 0,
            summary: None,
            summary_upto: None,
        };
        let mut found_owner = None;
        for (k, v) in fields {
            match k.as_str() {
                "owner" => found_owner = Some(v),
                "system" => meta.system = Some(v).filter(|s| !s.is_empty()),
                "created_ms" => meta.created_ms = v.parse().unwrap_or(0),
                "updated_ms" => meta.updated_ms = v.parse().unwrap_or(0),
                "appended" => meta.appended = v.parse().unwrap_or(0),
                "summary" => meta.summary = Some(v).filter(|s| !s.is_empty()),
                "summary_upto" => meta.summary_upto = Some(v),
                _ => {}
            }
        }
        if found_owner.as_deref() != Some(owner) {
            return Err(Error::NotFound);
        }
        Ok(meta)
    }

    fn into_info(self, stored: u64) -> SessionInfo {
        SessionInfo {
            system: self.system,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            appended: self.appended,
            stored,
        }
    }
}

/// Parses XRANGE/XREVRANGE entries (`m` message JSON, `t` tokens) with their ids, in the order
/// given.
fn parse_entries(reply: Value) -> Result<Vec<(String, ChatMessage, u32)>> {
    type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
    let entries: Entries = redis::from_redis_value(reply)
        .map_err(|e| Error::reply("session history", e.to_string()))?;
    entries
        .into_iter()
        .map(|(id, fields)| {
            let mut message = None;
            let mut tokens = 0;
            for (k, v) in fields {
                match k.as_str() {
                    "m" => {
                        message = Some(
                            serde_json::from_slice::<ChatMessage>(&v)
                                .map_err(|e| Error::Decode(e.to_string()))?,
                        )
                    }
                    "t" => {
                        tokens = std::str::from_utf8(&v)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0)
                    }
                    _ => {}
                }
            }
            let message =
                message.ok_or_else(|| Error::Decode("session entry without a message".into()))?;
            Ok((id, message, tokens))
        })
        .collect()
}
