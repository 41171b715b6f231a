//! An event bus on Redis Streams: publish, consumer groups, blocking reads, acknowledgement after
//! the handler succeeds, reclaiming what a dead or stuck consumer left pending (XAUTOCLAIM,
//! following its cursor), and a dead-letter stream for entries that failed too often.
//!
//! Guarantees: at-least-once delivery to a group; an entry is acknowledged only after its handler
//! succeeded; an entry pending longer than `claim_idle` (its consumer died or hangs) is taken
//! over by another consumer of the group; after `max_deliveries` failed deliveries it is moved to
//! `tg:{ev:STREAM}:dead` (with its origin id, delivery count and reason) and acknowledged, in one
//! script. Retention is bounded: `MAXLEN ~ max_len`, and the stream expires `retention` after its
//! last publish (unless it has none). Entries trimmed while pending are reported as lost ([`Consumer::trimmed`]),
//! never retried forever.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use redis::Value;

use crate::conn::{Conn, Redis};
use crate::error::{Error, Result};
use crate::keys::{Id, Keys};
use crate::{millis, scripts};

/// Bounds and timings of the event bus.
#[derive(Debug, Clone)]
pub struct EventConfig {
    /// About this many entries are kept per stream.
    pub max_len: u64,
    /// A stream with no publish for this long expires; `None`: it never expires (a queue whose
    /// entries are deleted once handled, such as the outbox).
    pub retention: Option<Duration>,
    /// Deliveries after which a failing entry goes to the dead-letter stream.
    pub max_deliveries: u64,
    /// An entry pending this long is taken over by another consumer.
    pub claim_idle: Duration,
    /// How long a read blocks for new entries.
    pub block: Duration,
    /// Entries per read.
    pub batch: usize,
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            max_len: 1_000_000,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            max_deliveries: 5,
            claim_idle: Duration::from_secs(30),
            block: Duration::from_secs(2),
            batch: 100,
        }
    }
}

/// One delivered entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The stream entry id.
    pub id: String,
    /// Field/value pairs, in order.
    pub fields: Vec<(String, Vec<u8>)>,
    /// How many times it has been delivered (1 on first delivery).
    pub deliveries: u64,
}

impl Event {
    /// The value of field `name`.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The fields as a JSON object of text (bytes that are not UTF-8 replaced), as the HTTP API
    /// and the CLI show an entry.
    pub fn text_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        self.fields
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect()
    }
}

/// Where a new group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Every entry still in the stream.
    Beginning,
    /// Only entries published from now on.
    New,
}

/// Event streams on one Redis.
#[derive(Debug, Clone)]
pub struct EventBus {
    redis: Redis,
    keys: Keys,
    config: EventConfig,
}

impl EventBus {
    /// Streams under `keys`' prefix.
    pub fn new(redis: Redis, keys: Keys, config: EventConfig) -> Self {
        EventBus {
            redis,
            keys,
            config,
        }
    }

    /// Binds `stream` to one sink (say, the database its entries are written to): the first
    /// binding stands, and the answer is the sink in force, `sink` or the one bound before.
    /// Consumers that would write elsewhere can so refuse to take entries meant for another.
    pub async fn bind_sink(&self, stream: &str, sink: &str) -> Result<String> {
        let key = self.keys.event_stream_sink(&Id::new(stream)?);
        let (bound,): (Option<String>,) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(sink)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key)
            .query_async(&mut self.redis.conn())
            .await?;
        bound.ok_or_else(|| Error::reply("bind_sink", "the binding vanished"))
    }

    /// Appends an event; returns its id.
    pub async fn publish(&self, stream: &str, fields: &[(&str, &[u8])]) -> Result<String> {
        if fields.is_empty() {
            return Err(Error::InvalidArgument(
                "an event needs at least one field".into(),
            ));
        }
        let key = self.keys.event_stream(&Id::new(stream)?);
        let Some(retention) = self.config.retention else {
            // Nothing to keep alive: one plain command, no script.
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.config.max_len.max(1))
                .arg("*");
            for (k, v) in fields {
                xadd.arg(*k).arg(*v);
            }
            return Ok(xadd.query_async(&mut self.redis.conn()).await?);
        };
        let mut publish = scripts::EVENT_PUBLISH.prepare_invoke();
        publish
            .key(&key)
            .arg(self.config.max_len.max(1))
            .arg(millis(retention));
        for (k, v) in fields {
            publish.arg(*k).arg(*v);
        }
        let id: String = publish.invoke_async(&mut self.redis.conn()).await?;
        Ok(id)
    }

    /// Creates consumer group `group` on `stream` (creating the stream too); an existing group is
    /// left as it is.
    pub async fn create_group(&self, stream: &str, group: &str, start: StartAt) -> Result<()> {
        let key = self.keys.event_stream(&Id::new(stream)?);
        let from = match start {
            StartAt::Beginning => "0",
            StartAt::New => "$",
        };
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(group)
            .arg(from)
            .arg("MKSTREAM")
            .query_async(&mut self.redis.conn())
            .await;
        match created {
            Ok(()) => {
                // MKSTREAM made the key without a TTL; give it the retention (unless published to).
                if let Some(retention) = self.config.retention {
                    let _: i64 = redis::cmd("PEXPIRE")
                        .arg(&key)
                        .arg(millis(retention))
                        .arg("NX")
                        .query_async(&mut self.redis.conn())
                        .await?;
                }
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A consumer `name` of `group`, with a blocking connection of its own.
    pub async fn consumer(&self, stream: &str, group: &str, name: &str) -> Result<Consumer> {
        let id = Id::new(stream)?;
        if group.is_empty() || name.is_empty() {
            return Err(Error::InvalidArgument(
                "a consumer needs a group and a name".into(),
            ));
        }
        let conn = self
            .redis
            .dedicated(self.config.block + self.redis.command_timeout())
            .await?;
        Ok(Consumer {
            bus: self.clone(),
            key: self.keys.event_stream(&id),
            dead_key: self.keys.dead_letters(&id),
            group: group.to_owned(),
            name: name.to_owned(),
            conn,
            cursor: "0-0".into(),
            last_scan: None,
            trimmed: 0,
        })
    }

    /// Entries after `after` (an entry id; `0` for the beginning, `$` for only new ones), without a
    /// group, waiting up to `block` on a connection of the caller's ([`EventBus::reader`]).
    pub async fn read(
        &self,
        conn: &mut Conn,
        stream: &str,
        after: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Event>> {
        let key = self.keys.event_stream(&Id::new(stream)?);
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(millis(block))
            .arg("STREAMS")
            .arg(&key)
            .arg(after)
            .query_async(conn)
            .await?;
        if matches!(reply, Value::Nil) {
            return Ok(Vec::new());
        }
        type Streams = Vec<(String, Value)>;
        let streams: Streams =
            redis::from_redis_value(reply).map_err(|e| Error::reply("XREAD", e.to_string()))?;
        match streams.into_iter().next() {
            Some((_, entries)) => parse_entries(entries, 0),
            None => Ok(Vec::new()),
        }
    }

    /// A connection for [`EventBus::read`] blocking up to `block`.
    pub async fn reader(&self, block: Duration) -> Result<Conn> {
        self.redis
            .dedicated(block + self.redis.command_timeout())
            .await
    }

    /// The id of the newest entry of `stream` (`0-0` when empty or missing), to tail from.
    pub async fn last_id(&self, stream: &str) -> Result<String> {
        let key = self.keys.event_stream(&Id::new(stream)?);
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(parse_entries(reply, 0)?
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |e| e.id))
    }

    /// The first `count` entries of the dead-letter stream of `stream`.
    pub async fn dead_letters(&self, stream: &str, count: usize) -> Result<Vec<Event>> {
        let key = self.keys.dead_letters(&Id::new(stream)?);
        let reply: Value = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.redis.conn())
            .await?;
        parse_entries(reply, 0)
    }

    /// Acknowledges entries `ids` of `group` on `stream`; how many were pending.
    pub async fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let key = self.keys.event_stream(&Id::new(stream)?);
        Ok(redis::cmd("XACK")
            .arg(&key)
            .arg(group)
            .arg(ids)
            .query_async(&mut self.redis.conn())
            .await?)
    }

    /// Entries in `stream` (for a stream whose entries are deleted once done, the backlog).
    pub async fn backlog(&self, stream: &str) -> Result<u64> {
        let key = self.keys.event_stream(&Id::new(stream)?);
        Ok(redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut self.redis.conn())
            .await?)
    }

    /// Entries of `group` delivered but not acknowledged.
    pub async fn pending(&self, stream: &str, group: &str) -> Result<u64> {
        let key = self.keys.event_stream(&Id::new(stream)?);
        let reply: Value = redis::cmd("XPENDING")
            .arg(&key)
            .arg(group)
            .query_async(&mut self.redis.conn())
            .await?;
        match reply {
            Value::Array(items) => Ok(items
                .first()
                .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
                .unwrap_or(0)),
            _ => Err(Error::reply("XPENDING", "not an array")),
        }
    }
}

/// One consumer of a group.
#[derive(Debug)]
pub struct Consumer {
    bus: EventBus,
    key: String,
    dead_key: String,
    group: String,
    name: String,
    conn: Conn,
    cursor: String,
    last_scan: Option<Instant>,
    trimmed: u64,
}

impl Consumer {
    /// The next entries for this consumer: first any taken over from consumers that left them
    /// pending too long, else new ones (blocking up to `block`). Entries already delivered
    /// `max_deliveries` times go to the dead-letter stream instead.
    pub async fn next(&mut self) -> Result<Vec<Event>> {
        let (count, block) = (self.bus.config.batch, self.bus.config.block);
        self.next_up_to(count, block).await
    }

    /// [`Consumer::next`] with at most `count` new entries, blocking up to `block` (at most the
    /// bus's `block`: the consumer's connection times out after it).
    pub async fn next_up_to(&mut self, count: usize, block: Duration) -> Result<Vec<Event>> {
        let claimed = self.reclaim().await?;
        if !claimed.is_empty() {
            return Ok(claimed);
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&self.group)
            .arg(&self.name)
            .arg("COUNT")
            .arg(count.max(1));
        // BLOCK 0 would wait forever: no wait is no BLOCK.
        let block = millis(block.min(self.bus.config.block));
        if block > 0 {
            read.arg("BLOCK").arg(block);
        }
        let reply: Value = read
            .arg("STREAMS")
            .arg(&self.key)
            .arg(">")
            .query_async(&mut self.conn)
            .await?;
        if matches!(reply, Value::Nil) {
            return Ok(Vec::new());
        }
        type Streams = Vec<(String, Value)>;
        let streams: Streams = redis::from_redis_value(reply)
            .map_err(|e| Error::reply("XREADGROUP", e.to_string()))?;
        match streams.into_iter().next() {
            Some((_, entries)) => parse_entries(entries, 1),
            None => Ok(Vec::new()),
        }
    }

    /// Takes over entries idle longer than `claim_idle`, scanning the pending list with
    /// XAUTOCLAIM's cursor across calls (a full pass at most every half `claim_idle`).
    async fn reclaim(&mut self) -> Result<Vec<Event>> {
        let idle = self.bus.config.claim_idle;
        let mid_scan = self.cursor != "0-0";
        if !mid_scan && self.last_scan.is_some_and(|t| t.elapsed() < idle / 2) {
            return Ok(Vec::new());
        }
        if !mid_scan {
            self.last_scan = Some(Instant::now());
        }
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.name)
            .arg(millis(idle))
            .arg(&self.cursor)
            .arg("COUNT")
            .arg(self.bus.config.batch.max(1))
            .query_async(&mut self.bus.redis.conn())
            .await?;
        let Value::Array(mut parts) = reply else {
            return Err(Error::reply("XAUTOCLAIM", "not an array"));
        };
        if parts.len() < 2 {
            return Err(Error::reply("XAUTOCLAIM", "too few parts"));
        }
        // Redis 7: [next cursor, claimed entries, ids deleted from the stream while pending].
        let deleted = if parts.len() > 2 { parts.pop() } else { None };
        let claimed = parts.pop().unwrap_or(Value::Nil);
        self.cursor = parts
            .pop()
            .and_then(|c| redis::from_redis_value::<String>(c).ok())
            .unwrap_or_else(|| "0-0".into());
        if let Some(Value::Array(ids)) = deleted {
            // Redis dropped them from the pending list; they cannot be processed any more.
            self.trimmed += ids.len() as u64;
        }
        let mut events = parse_entries(claimed, 0)?;
        if events.is_empty() {
            return Ok(events);
        }
        let counts = self.delivery_counts(&events).await?;
        let mut ready = Vec::with_capacity(events.len());
        for mut e in events.drain(..) {
            e.deliveries = counts.get(&e.id).copied().unwrap_or(1);
            if e.deliveries > self.bus.config.max_deliveries {
                let reason = format!("delivered {} times without success", e.deliveries - 1);
                self.dead_letter(&e, &reason).await?;
            } else {
                ready.push(e);
            }
        }
        Ok(ready)
    }

    async fn delivery_counts(&self, events: &[Event]) -> Result<HashMap<String, u64>> {
        let (first, last) = (&events[0].id, &events[events.len() - 1].id);
        let reply: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.key)
            .arg(&self.group)
            .arg(first)
            .arg(last)
            .arg(events.len())
            .arg(&self.name)
            .query_async(&mut self.bus.redis.conn())
            .await?;
        Ok(reply.into_iter().map(|(id, _, _, n)| (id, n)).collect())
    }

    /// Acknowledges a processed entry.
    pub async fn ack(&self, id: &str) -> Result<()> {
        let _: i64 = redis::cmd("XACK")
            .arg(&self.key)
            .arg(&self.group)
            .arg(id)
            .query_async(&mut self.bus.redis.conn())
            .await?;
        Ok(())
    }

    /// Acknowledges processed entries and deletes them from the stream, in one script: for
    /// streams of work items (an outbox), which then hold only what is still to be done.
    pub async fn ack_and_delete(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: i64 = scripts::EVENT_DONE
            .key(&self.key)
            .arg(&self.group)
            .arg(ids)
            .invoke_async(&mut self.bus.redis.conn())
            .await?;
        Ok(())
    }

    /// Moves an entry to the dead-letter stream and acknowledges it (one script).
    pub async fn dead_letter(&self, event: &Event, reason: &str) -> Result<()> {
        let _: Value = scripts::DEAD_LETTER
            .key(&self.key)
            .key(&self.dead_key)
            .arg(&self.group)
            .arg(&event.id)
            .arg(event.deliveries)
            .arg(reason)
            .arg(self.bus.config.max_len.max(1))
            .arg(self.bus.config.retention.map_or(0, millis))
            .invoke_async(&mut self.bus.redis.conn())
            .await?;
        Ok(())
    }

    /// Handles one batch: each entry the handler accepts is acknowledged; a failed one stays
    /// pending (another delivery after `claim_idle`), or goes to the dead-letter stream once it has
    /// had `max_deliveries`. Returns how many entries were handled successfully.
    pub async fn process<F, Fut, E>(&mut self, mut handler: F) -> Result<usize>
    where
        F: FnMut(Event) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut done = 0;
        for event in self.next().await? {
            let (id, deliveries, copy) = (event.id.clone(), event.deliveries, event.clone());
            match handler(event).await {
                Ok(()) => {
                    self.ack(&id).await?;
                    done += 1;
                }
                Err(e) if deliveries >= self.bus.config.max_deliveries => {
                    self.dead_letter(&copy, &e.to_string()).await?;
                }
                Err(e) => {
                    tracing::debug!(id, error = %e, "event handler failed; the entry will be delivered again")
                }
            }
        }
        Ok(done)
    }

    /// Entries lost because the stream was trimmed while they were pending.
    pub fn trimmed(&self) -> u64 {
        self.trimmed
    }
}

/// Parses `[[id, [field, value, ...]], ...]`; `deliveries` is set on each.
fn parse_entries(reply: Value, deliveries: u64) -> Result<Vec<Event>> {
    if matches!(reply, Value::Nil) {
        return Ok(Vec::new());
    }
    type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
    let entries: Entries = redis::from_redis_value(reply)
        .map_err(|e| Error::reply("stream entries", e.to_string()))?;
    Ok(entries
        .into_iter()
        .map(|(id, fields)| Event {
            id,
            fields,
            deliveries,
        })
        .collect())
}
