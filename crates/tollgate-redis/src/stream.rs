//! Token streams: a generation's chunks in a Redis Stream, readable from any process, resumable
//! from any point.
//!
//! Each generation has one producer. Entries carry dense sequence numbers as their stream ids
//! (`0-1` is the `start` entry, chunks follow, a terminal `done` or `error` entry ends it), so an
//! SSE `Last-Event-ID` is simply the last sequence number seen, and a gap is detectable. The
//! stream is bounded (`MAXLEN ~`), expires `ttl_active` after its last write while open, and
//! `ttl_after_end` after its terminal entry. A reader asking for entries already trimmed gets
//! [`Error::Trimmed`], never a silent gap. Readers block on a connection of their own, never on
//! the shared one.
//!
//! A producer shows it lives: every write, and [`Producer::heartbeat`] between writes, keeps
//! `tg:{st:ID}:alive` for `producer_timeout`. A reader that waits in vain on an open stream whose
//! producer shows no life gets [`Error::Abandoned`] (its process died mid-generation) instead of
//! waiting for the stream to expire.

use std::collections::VecDeque;
use std::time::Duration;

use redis::Value;

use crate::conn::{Conn, Redis};
use crate::error::{Error, Result};
use crate::keys::{Id, Keys};
use crate::{millis, scripts};

/// Bounds of token streams.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// About this many entries are kept (older ones trimmed).
    pub max_len: u64,
    /// An open stream with no write for this long expires (its producer died).
    pub ttl_active: Duration,
    /// A finished stream stays readable this long.
    pub ttl_after_end: Duration,
    /// A producer that neither writes nor beats for this long is taken for dead.
    pub producer_timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            max_len: 10_000,
            ttl_active: Duration::from_secs(300),
            ttl_after_end: Duration::from_secs(600),
            producer_timeout: Duration::from_secs(15),
        }
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The first entry; its data is the producer's metadata.
    Start,
    /// A chunk of the generation.
    Chunk,
    /// The generation ended normally (terminal).
    Done,
    /// The generation failed (terminal); data is the error.
    Error,
}

impl EventKind {
    fn code(self) -> &'static str {
        match self {
            EventKind::Start => "s",
            EventKind::Chunk => "c",
            EventKind::Done => "d",
            EventKind::Error => "e",
        }
    }

    fn from_code(code: &[u8]) -> Option<Self> {
        match code {
            b"s" => Some(EventKind::Start),
            b"c" => Some(EventKind::Chunk),
            b"d" => Some(EventKind::Done),
            b"e" => Some(EventKind::Error),
            _ => None,
        }
    }

    /// True for `Done` and `Error`.
    pub fn is_terminal(self) -> bool {
        matches!(self, EventKind::Done | EventKind::Error)
    }
}

/// One entry of a token stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// Sequence number (1 is `Start`); what a reader resumes after.
    pub seq: u64,
    /// What the entry is.
    pub kind: EventKind,
    /// The payload.
    pub data: Vec<u8>,
}

/// Token streams on one Redis.
#[derive(Debug, Clone)]
pub struct TokenStreams {
    redis: Redis,
    keys: Keys,
    config: StreamConfig,
}

impl TokenStreams {
    /// Streams under `keys`' prefix.
    pub fn new(redis: Redis, keys: Keys, config: StreamConfig) -> Self {
        TokenStreams {
            redis,
            keys,
            config,
        }
    }

    /// Opens stream `id` for writing, with `meta` as the data of its `start` entry. An id that
    /// already has a stream is a [`Error::Conflict`].
    pub async fn create(&self, id: &str, meta: &[u8]) -> Result<Producer> {
        let id = Id::new(id)?;
        let key = self.keys.token_stream(&id);
        let mut producer = Producer {
            redis: self.redis.clone(),
            alive: self.keys.token_stream_alive(&id),
            key,
            config: self.config.clone(),
            next_seq: 1,
        };
        producer.append(EventKind::Start, &[meta]).await?;
        Ok(producer)
    }

    /// The data of stream `id`'s `start` entry (its producer's metadata); [`Error::NotFound`] when
    /// the stream does not exist (or is so long its start was trimmed).
    pub async fn start_meta(&self, id: &str) -> Result<Vec<u8>> {
        let key = self.keys.token_stream(&Id::new(id)?);
        let reply: Value = redis::cmd("XRANGE")
            .arg(&key)
            .arg("0-1")
            .arg("0-1")
            .query_async(&mut self.redis.conn())
            .await?;
        type Entries = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;
        let entries: Entries =
            redis::from_redis_value(reply).map_err(|e| Error::reply("XRANGE", e.to_string()))?;
        let (_, fields) = entries.into_iter().next().ok_or(Error::NotFound)?;
        Ok(fields
            .into_iter()
            .find(|(k, _)| k == b"d")
            .map(|(_, v)| v)
            .unwrap_or_default())
    }

    /// Lists stream `id` among the generations running now (on any instance), for operators:
    /// one `ZADD` to an index of its own, outside the stream's writes.
    pub async fn mark_live(&self, id: &str) -> Result<()> {
        let id = Id::new(id)?;
        let key = self.keys.live_streams();
        redis::pipe()
            .cmd("ZADD")
            .arg(&key)
            .arg(now_ms())
            .arg(id.as_str())
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(crate::millis(self.config.ttl_active))
            .ignore()
            .query_async::<()>(&mut self.redis.conn())
            .await?;
        Ok(())
    }

    /// Takes stream `id` off the running generations.
    pub async fn mark_done(&self, id: &str) -> Result<()> {
        let id = Id::new(id)?;
        redis::cmd("ZREM")
            .arg(self.keys.live_streams())
            .arg(id.as_str())
            .query_async::<()>(&mut self.redis.conn())
            .await?;
        Ok(())
    }

    /// The generations running now, newest first (at most `limit`): stream id and start (ms since
    /// the epoch). One whose instance died without ending it leaves after `ttl_active`.
    pub async fn live(&self, limit: usize) -> Result<Vec<(String, u64)>> {
        let key = self.keys.live_streams();
        let stale = now_ms().saturating_sub(crate::millis(self.config.ttl_active));
        let (live,): (Vec<(String, f64)>,) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(stale)
            .ignore()
            .cmd("ZREVRANGE")
            .arg(&key)
            .arg(0)
            .arg(limit.max(1) - 1)
            .arg("WITHSCORES")
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(live.into_iter().map(|(id, at)| (id, at as u64)).collect())
    }

    /// A reader of stream `id`, with a blocking connection of its own.
    pub async fn reader(&self, id: &str) -> Result<StreamReader> {
        let id = Id::new(id)?;
        Ok(StreamReader {
            redis: self.redis.clone(),
            key: self.keys.token_stream(&id),
            alive: self.keys.token_stream_alive(&id),
            conn: None,
        })
    }
}

/// The single writer of one stream.
#[derive(Debug)]
pub struct Producer {
    redis: Redis,
    key: String,
    alive: String,
    config: StreamConfig,
    next_seq: u64,
}

impl Producer {
    /// Shows readers the producer lives (between writes; every write does too).
    pub async fn heartbeat(&self) -> Result<()> {
        redis::cmd("SET")
            .arg(&self.alive)
            .arg(1)
            .arg("PX")
            .arg(millis(self.config.producer_timeout))
            .query_async::<()>(&mut self.redis.conn())
            .await?;
        Ok(())
    }

    /// Appends one chunk; returns its sequence number.
    pub async fn push(&mut self, chunk: &[u8]) -> Result<u64> {
        self.append(EventKind::Chunk, &[chunk]).await
    }

    /// Appends several chunks in one round trip; returns the last sequence number.
    pub async fn push_many(&mut self, chunks: &[&[u8]]) -> Result<u64> {
        if chunks.is_empty() {
            return Ok(self.next_seq - 1);
        }
        self.append(EventKind::Chunk, chunks).await
    }

    /// Ends the stream normally.
    pub async fn finish(mut self, data: &[u8]) -> Result<u64> {
        self.append(EventKind::Done, &[data]).await
    }

    /// Ends the stream with an error.
    pub async fn fail(mut self, message: &[u8]) -> Result<u64> {
        self.append(EventKind::Error, &[message]).await
    }

    /// The sequence number the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    async fn append(&mut self, kind: EventKind, items: &[&[u8]]) -> Result<u64> {
        let ttl = if kind.is_terminal() {
            self.config.ttl_after_end
        } else {
            self.config.ttl_active
        };
        let mut append = scripts::STREAM_APPEND.prepare_invoke();
        append
            .key(&self.key)
            .key(&self.alive)
            .arg(self.config.max_len.max(1))
            .arg(millis(ttl))
            .arg(if kind.is_terminal() {
                0
            } else {
                millis(self.config.producer_timeout).max(1)
            })
            .arg(kind.code())
            .arg(self.next_seq);
        for data in items {
            append.arg(*data);
        }
        match append.invoke_async::<u64>(&mut self.redis.conn()).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("equal or smaller") => {
                return Err(Error::Conflict("the stream id is already in use".into()));
            }
            Err(e) => return Err(e.into()),
        }
        self.next_seq += items.len() as u64;
        Ok(self.next_seq - 1)
    }
}

/// Reads one stream from any sequence number, blocking for new entries.
#[derive(Debug)]
pub struct StreamReader {
    redis: Redis,
    key: String,
    alive: String,
    conn: Option<Conn>,
}

impl StreamReader {
    /// Entries after sequence number `after` (0 = from the start), waiting up to `block` for the
    /// first one. An empty result means nothing arrived in time. A stream that does not exist
    /// (never created, or expired) is [`Error::NotFound`]; an open one whose producer shows no
    /// life, [`Error::Abandoned`].
    pub async fn read(&mut self, after: u64, block: Duration) -> Result<Vec<StreamEvent>> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self.conn.insert(
                self.redis
                    .dedicated(block + self.redis.command_timeout())
                    .await?,
            ),
        };
        let block_ms = millis(block);
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(format!("0-{after}"))
            .query_async(conn)
            .await?;
        let events = parse_xread(reply)?;
        match events.first() {
            None => match self.tail().await? {
                (None, _) => Err(Error::NotFound),
                (Some(kind), alive) if kind.is_terminal() || alive => Ok(events),
                (Some(_), _) => Err(Error::Abandoned),
            },
            Some(first) if first.seq != after + 1 => Err(Error::Trimmed {
                requested: after,
                oldest: first.seq,
            }),
            Some(_) => Ok(events),
        }
    }

    /// True when the stream is open (no terminal entry) and its producer shows no life: whoever
    /// was writing it is gone, and nothing more will come.
    pub async fn abandoned(&self) -> Result<bool> {
        let (last, alive) = self.tail().await?;
        Ok(last.is_some_and(|kind| !kind.is_terminal()) && !alive)
    }

    /// The kind of the stream's last entry (`None`: no stream), and whether its producer shows
    /// life. Both keys share the stream's hash tag: one round trip, one slot.
    async fn tail(&self) -> Result<(Option<EventKind>, bool)> {
        let (last, alive): (Value, bool) = redis::pipe()
            .cmd("XREVRANGE")
            .arg(&self.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("EXISTS")
            .arg(&self.alive)
            .query_async(&mut self.redis.conn())
            .await?;
        Ok((parse_entries(last)?.first().map(|e| e.kind), alive))
    }

    /// Follows the stream from `after` to its terminal entry, one event at a time.
    pub fn follow(self, after: u64, block: Duration) -> Follower {
        Follower {
            reader: self,
            after,
            block,
            buffer: VecDeque::new(),
            ended: false,
        }
    }
}

/// Yields a stream's events in order until (and including) the terminal one.
#[derive(Debug)]
pub struct Follower {
    reader: StreamReader,
    after: u64,
    block: Duration,
    buffer: VecDeque<StreamEvent>,
    ended: bool,
}

impl Follower {
    /// The next event; `Ok(None)` after the terminal event was returned.
    pub async fn next(&mut self) -> Result<Option<StreamEvent>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.after = event.seq;
                if event.kind.is_terminal() {
                    self.ended = true;
                    self.buffer.clear();
                }
                return Ok(Some(event));
            }
            if self.ended {
                return Ok(None);
            }
            self.buffer
                .extend(self.reader.read(self.after, self.block).await?);
        }
    }

    /// The last sequence number returned (what to resume after).
    pub fn position(&self) -> u64 {
        self.after
    }
}

fn parse_xread(reply: Value) -> Result<Vec<StreamEvent>> {
    if matches!(reply, Value::Nil) {
        return Ok(Vec::new());
    }
    let streams: Vec<(String, Value)> =
        redis::from_redis_value(reply).map_err(|e| Error::reply("XREAD", e.to_string()))?;
    let mut out = Vec::new();
    for (_, entries) in streams {
        out.extend(parse_entries(entries)?);
    }
    Ok(out)
}

/// Parses XRANGE-shaped entries (`[[id, [k, kind, d, data]], ...]`).
fn parse_entries(reply: Value) -> Result<Vec<StreamEvent>> {
    if matches!(reply, Value::Nil) {
        return Ok(Vec::new());
    }
    type Entries = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;
    let entries: Entries = redis::from_redis_value(reply)
        .map_err(|e| Error::reply("stream entries", e.to_string()))?;
    let mut out = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        let seq = id
            .strip_prefix("0-")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Decode(format!("token stream entry id {id:?}")))?;
        let mut kind = None;
        let mut data = Vec::new();
        for (k, v) in fields {
            match k.as_slice() {
                b"k" => kind = EventKind::from_code(&v),
                b"d" => data = v,
                _ => {}
            }
        }
        let kind =
            kind.ok_or_else(|| Error::Decode(format!("token stream entry {id} has no kind")))?;
        out.push(StreamEvent { seq, kind, data });
    }
    Ok(out)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
