//! The exact response cache, with cross-process single-flight.
//!
//! An entry is addressed by model, tenant and the request's canonical hash
//! ([`tollgate_core::request_hash`]). Invariants:
//! - every entry has a TTL (capped by `max_ttl`); values above `max_value_bytes` are not stored;
//!   values above `compress_above` are stored LZ4-compressed;
//! - invalidating a model is O(1): its generation counter is bumped, and entries of an older
//!   generation are never served (they are deleted when next read, or expire);
//! - a value computed while its model was invalidated is not stored;
//! - hit/miss counters per model are updated by the lookup script itself, no extra round trip;
//! - [`ResponseCache::get_or_compute`]: among concurrent callers on any number of processes, one
//!   takes a lease and computes, the others wait for its result; the leader renews its lease while
//!   computing, and a leader that dies stops renewing, so its lease expires and a waiter takes over.
//!
//! A Redis outage makes the cache a pass-through: `get_or_compute` computes without caching and
//! says so ([`Outcome::Uncached`]); it never fails because the cache is down.

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures::future::{Either, select};
use redis::Value;

use crate::conn::Redis;
use crate::error::{Error, Result};
use crate::keys::{Id, Keys};
use crate::millis;
use crate::rate_limit::{MultiDecision, PreparedChecks};
use crate::scripts;

/// Limits of the response cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// TTL of an entry when the caller gives none.
    pub default_ttl: Duration,
    /// No entry lives longer than this (and invalidation keeps generations this long).
    pub max_ttl: Duration,
    /// Values larger than this (uncompressed) are not stored.
    pub max_value_bytes: usize,
    /// Values larger than this are compressed.
    pub compress_above: usize,
    /// How long a single-flight lease lasts without renewal (renewed every third of it).
    pub lease: Duration,
    /// How long a waiter waits for another caller's computation before giving up.
    pub wait_timeout: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            max_value_bytes: 4 << 20,
            compress_above: 1024,
            lease: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(120),
        }
    }
}

/// Where an entry lives: model, tenant (namespace) and request hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    model: Id,
    tenant: Id,
    hash: String,
}

impl CacheKey {
    /// `request_hash` is the lower-case hex hash of the canonical request (1 to 128 hex digits).
    pub fn new(model: &str, tenant: &str, request_hash: &str) -> Result<Self> {
        if request_hash.is_empty()
            || request_hash.len() > 128
            || !request_hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::InvalidArgument(
                "a request hash must be 1 to 128 lower-case hex digits".into(),
            ));
        }
        Ok(CacheKey {
            model: Id::new(model)?,
            tenant: Id::new(tenant)?,
            hash: request_hash.to_owned(),
        })
    }

    /// The request hash the key was made with.
    pub fn request_hash(&self) -> &str {
        &self.hash
    }
}

/// How [`ResponseCache::get_or_compute`] got its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache.
    Hit,
    /// This caller computed it (and stored it, when it fit).
    Computed,
    /// Another caller, maybe on another process, computed it while this one waited.
    Waited,
    /// Redis was unreachable: computed without the cache.
    Uncached,
}

/// Why [`ResponseCache::get_or_compute`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError<E> {
    /// The computation failed; nothing was cached and the lease was released.
    #[error("computation failed: {0}")]
    Compute(E),
    /// The cache failed in a way other than being unreachable (e.g. waited too long).
    #[error(transparent)]
    Cache(Error),
}

/// Hits and misses of one model, and what the hits saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found an entry.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Prompt tokens not sent upstream thanks to hits (entries stored with their usage).
    pub saved_prompt_tokens: u64,
    /// Completion tokens not generated upstream thanks to hits.
    pub saved_completion_tokens: u64,
}

/// The answer of [`ResponseCache::lead`]: a value, or who computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lead {
    /// The value is cached.
    Hit(Vec<u8>),
    /// This caller holds the lease: compute, then [`ResponseCache::complete`] or
    /// [`ResponseCache::abandon`].
    Leader {
        /// The generation to store under.
        generation: String,
    },
    /// Another caller holds the lease; `holder` is the token it leads with.
    Follower {
        /// The leader's token.
        holder: String,
    },
}

/// What happened to a value handed to [`ResponseCache::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored.
    Yes,
    /// Larger than `max_value_bytes`: not stored.
    TooLarge,
    /// The model was invalidated since the lookup: not stored, it may be stale.
    Stale,
}

const STATS_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Decompression never allocates more than this, whatever a stored header claims.
const MAX_DECOMPRESSED: usize = 256 << 20;

/// The exact response cache on one Redis.
#[derive(Debug, Clone)]
pub struct ResponseCache {
    redis: Redis,
    keys: Keys,
    config: CacheConfig,
}

enum LookupStatus {
    Hit(Vec<u8>),
    Miss,
    Lead,
    Wait(String),
}

struct Lookup {
    status: LookupStatus,
    generation: String,
}

impl Lookup {
    /// The lookup script's reply: a status, a value, the model's generation.
    fn of(status: &str, value: Vec<u8>, generation: String) -> Result<Lookup> {
        let status = match status {
            "hit" => LookupStatus::Hit(decode(&value)?),
            "miss" => LookupStatus::Miss,
            "lead" => LookupStatus::Lead,
            "wait" => LookupStatus::Wait(String::from_utf8_lossy(&value).into_owned()),
            other => {
                return Err(Error::reply(
                    "cache_lookup",
                    format!("unknown status {other:?}"),
                ));
            }
        };
        Ok(Lookup { status, generation })
    }

    /// What a lookup that asked for the lease found.
    fn into_lead(self) -> Result<Lead> {
        Ok(match self.status {
            LookupStatus::Hit(v) => Lead::Hit(v),
            LookupStatus::Lead => Lead::Leader {
                generation: self.generation,
            },
            LookupStatus::Wait(holder) => Lead::Follower { holder },
            LookupStatus::Miss => return Err(Error::reply("cache_lookup", "miss without a lease")),
        })
    }
}

impl ResponseCache {
    /// A cache under `keys`' prefix.
    pub fn new(redis: Redis, keys: Keys, config: CacheConfig) -> Self {
        ResponseCache {
            redis,
            keys,
            config,
        }
    }

    /// How long an entry stored with `ttl` lives: the default when none, at most the maximum.
    pub fn ttl_for(&self, ttl: Option<Duration>) -> Duration {
        ttl.unwrap_or(self.config.default_ttl)
            .min(self.config.max_ttl)
    }

    /// The cache's limits.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Reads an entry (counted in the model's stats).
    pub async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>> {
        match self.lookup(key, "", true).await?.status {
            LookupStatus::Hit(v) => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    /// Reads an entry or takes the single-flight lease with `token` (one round trip). The caller
    /// chooses the token, so it can name something followers use (a stream id, say).
    pub async fn lead(&self, key: &CacheKey, token: &str, count: bool) -> Result<Lead> {
        if token.is_empty() {
            return Err(Error::InvalidArgument(
                "a lease token must not be empty".into(),
            ));
        }
        self.lookup(key, token, count).await?.into_lead()
    }

    /// Stores the leader's value (unless the model was invalidated meanwhile) and releases its
    /// lease. `usage` (prompt, completion tokens) is what each later hit saves; the lookup counts
    /// it in the model's stats itself.
    pub async fn complete(
        &self,
        key: &CacheKey,
        generation: &str,
        value: &[u8],
        ttl: Option<Duration>,
        token: &str,
        usage: Option<(u64, u64)>,
    ) -> Result<Stored> {
        let usage = usage.map(|(p, c)| format!("{p} {c}")).unwrap_or_default();
        let stored = self
            .store(key, generation, value, ttl, token, &usage)
            .await?;
        if stored == Stored::Yes {
            let _: Result<i64, _> = redis::cmd("SADD")
                .arg(self.keys.cache_models())
                .arg(key.model.as_str())
                .query_async(&mut self.redis.conn())
                .await;
        }
        Ok(stored)
    }

    /// Releases a lease without storing anything (the computation failed).
    pub async fn abandon(&self, key: &CacheKey, token: &str) -> Result<bool> {
        self.lease_op(key, token, "release").await
    }

    /// Takes the lease over from `holder` (a leader known to be dead: its token stream was
    /// abandoned) for `token`, unless someone else already did; the generation to compute for,
    /// as [`Lead::Leader`] has it.
    pub async fn take_over(
        &self,
        key: &CacheKey,
        holder: &str,
        token: &str,
    ) -> Result<Option<String>> {
        if token.is_empty() {
            return Err(Error::InvalidArgument(
                "a lease token must not be empty".into(),
            ));
        }
        let taken: redis::Value = scripts::LEASE_TOKEN
            .key(self.keys.cache_lease(&key.model, &key.tenant, &key.hash))
            .key(self.keys.cache_gen(&key.model))
            .arg(holder)
            .arg("takeover")
            .arg(millis(self.config.lease))
            .arg(token)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(match taken {
            redis::Value::BulkString(g) => Some(String::from_utf8_lossy(&g).into_owned()),
            redis::Value::SimpleString(g) => Some(g),
            _ => None,
        })
    }

    /// Extends a lease held with `token`; `false` when it was lost.
    pub async fn renew(&self, key: &CacheKey, token: &str) -> Result<bool> {
        self.lease_op(key, token, "renew").await
    }

    /// Models that have had entries stored (encoded as in keys).
    pub async fn models(&self) -> Result<Vec<String>> {
        let mut models: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.cache_models())
            .query_async(&mut self.redis.conn())
            .await?;
        models.sort();
        Ok(models)
    }

    /// Stores a value under the model's current generation, for `ttl` (default and cap from the
    /// config).
    pub async fn put(&self, key: &CacheKey, value: &[u8], ttl: Option<Duration>) -> Result<Stored> {
        let generation: Option<String> = redis::cmd("GET")
            .arg(self.keys.cache_gen(&key.model))
            .query_async(&mut self.redis.conn())
            .await?;
        self.store(
            key,
            &generation.unwrap_or_else(|| "0".into()),
            value,
            ttl,
            "",
            "",
        )
        .await
    }

    /// Invalidates every entry of `model`, for every tenant, in O(1). Returns the new generation.
    pub async fn invalidate_model(&self, model: &str) -> Result<u64> {
        let generation: u64 = scripts::CACHE_INVALIDATE
            .key(self.keys.cache_gen(&Id::new(model)?))
            .arg(millis(self.config.max_ttl))
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(generation)
    }

    /// Hit and miss counters of `model`, and the tokens its hits saved.
    pub async fn stats(&self, model: &str) -> Result<CacheStats> {
        type Counters = (Option<u64>, Option<u64>, Option<u64>, Option<u64>);
        let (hits, misses, saved_prompt, saved_completion): Counters = redis::cmd("HMGET")
            .arg(self.keys.cache_stats(&Id::new(model)?))
            .arg("hits")
            .arg("misses")
            .arg("saved_prompt_tokens")
            .arg("saved_completion_tokens")
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(CacheStats {
            hits: hits.unwrap_or(0),
            misses: misses.unwrap_or(0),
            saved_prompt_tokens: saved_prompt.unwrap_or(0),
            saved_completion_tokens: saved_completion.unwrap_or(0),
        })
    }

    /// Returns the cached value, or computes it once across every caller of every process
    /// (see the module docs). `compute` runs at most once per call, and only when this caller
    /// holds the lease (or Redis is unreachable).
    pub async fn get_or_compute<F, Fut, E>(
        &self,
        key: &CacheKey,
        ttl: Option<Duration>,
        compute: F,
    ) -> Result<(Vec<u8>, Outcome), ComputeError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let started = Instant::now();
        let mut delay = Duration::from_millis(2);
        let mut first = true;
        let lookup = loop {
            let lookup = match self.lookup(key, &token, first).await {
                Ok(l) => l,
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(error = %e, "response cache unavailable; computing without it");
                    let value = compute().await.map_err(ComputeError::Compute)?;
                    return Ok((value, Outcome::Uncached));
                }
                Err(e) => return Err(ComputeError::Cache(e)),
            };
            match lookup.status {
                LookupStatus::Hit(v) => {
                    return Ok((v, if first { Outcome::Hit } else { Outcome::Waited }));
                }
                LookupStatus::Lead => break lookup,
                LookupStatus::Wait(_) | LookupStatus::Miss => {
                    if started.elapsed() >= self.config.wait_timeout {
                        return Err(ComputeError::Cache(Error::Timeout(
                            self.config.wait_timeout,
                        )));
                    }
                    first = false;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
            }
        };
        let value = self.compute_holding_lease(key, &token, compute).await;
        match value {
            Ok(value) => {
                if let Err(e) = self
                    .store(key, &lookup.generation, &value, ttl, &token, "")
                    .await
                {
                    tracing::warn!(error = %e, "could not store a computed value in the response cache");
                }
                Ok((value, Outcome::Computed))
            }
            Err(e) => {
                if let Err(release) = self.lease_op(key, &token, "release").await {
                    tracing::warn!(error = %release, "could not release a single-flight lease; it will expire");
                }
                Err(ComputeError::Compute(e))
            }
        }
    }

    /// Runs `compute` while renewing the lease every third of its duration.
    async fn compute_holding_lease<F, Fut, E>(
        &self,
        key: &CacheKey,
        token: &str,
        compute: F,
    ) -> Result<Vec<u8>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        let renew = async {
            let mut interval = tokio::time::interval(self.config.lease / 3);
            interval.tick().await;
            loop {
                interval.tick().await;
                match self.lease_op(key, token, "renew").await {
                    Ok(true) => {}
                    // Lost (expired while Redis was away): another caller may compute too. The
                    // value is still stored; duplicate work is the price of liveness.
                    Ok(false) => return,
                    Err(e) => tracing::warn!(error = %e, "could not renew a single-flight lease"),
                }
            }
        };
        let compute = pin!(compute());
        match select(compute, pin!(renew)).await {
            Either::Left((value, _)) => value,
            Either::Right(((), compute)) => compute.await,
        }
    }

    /// The lookup script's keys and arguments for `key`.
    fn lookup_invocation(
        &self,
        script: &'static redis::Script,
        key: &CacheKey,
        token: &str,
        count: bool,
    ) -> redis::ScriptInvocation<'static> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.cache_gen(&key.model))
            .key(self.keys.cache_entry(&key.model, &key.tenant, &key.hash))
            .key(self.keys.cache_stats(&key.model))
            .key(self.keys.cache_lease(&key.model, &key.tenant, &key.hash))
            .arg(token)
            .arg(millis(self.config.lease))
            .arg(if count { "1" } else { "0" })
            .arg(millis(STATS_TTL));
        invocation
    }

    async fn lookup(&self, key: &CacheKey, token: &str, count: bool) -> Result<Lookup> {
        let reply: Value = self
            .lookup_invocation(&scripts::CACHE_LOOKUP, key, token, count)
            .invoke_async(&mut self.redis.conn())
            .await?;
        let (status, value, generation): (String, Vec<u8>, String) = redis::from_redis_value(reply)
            .map_err(|e| Error::reply("cache_lookup", e.to_string()))?;
        Lookup::of(&status, value, generation)
    }

    /// [`ResponseCache::lead`], and on a hit the request's `limits` checked and charged in the
    /// same script: one round trip for a hit. The decision is `None` when the lookup was not a
    /// hit (nothing was charged: the caller admits the request itself) and on a cluster, where
    /// the cache's keys and the limits' are in different slots (then the lookup alone runs).
    pub async fn lead_admitting(
        &self,
        key: &CacheKey,
        token: &str,
        count: bool,
        limits: &PreparedChecks,
    ) -> Result<(Lead, Option<MultiDecision>)> {
        if self.redis.is_cluster() {
            return Ok((self.lead(key, token, count).await?, None));
        }
        if token.is_empty() {
            return Err(Error::InvalidArgument(
                "a lease token must not be empty".into(),
            ));
        }
        let mut invocation =
            self.lookup_invocation(&scripts::CACHE_LOOKUP_ADMIT, key, token, count);
        limits.add_to(&mut invocation);
        let reply: Value = invocation.invoke_async(&mut self.redis.conn()).await?;
        let mut fields: Vec<Value> = redis::from_redis_value(reply)
            .map_err(|e| Error::reply("cache_lookup_admit", e.to_string()))?;
        if fields.len() < 3 {
            return Err(Error::reply("cache_lookup_admit", "a short reply"));
        }
        let rest = fields.split_off(3);
        let (status, value, generation): (String, Vec<u8>, String) =
            redis::from_redis_value(Value::Array(fields))
                .map_err(|e| Error::reply("cache_lookup_admit", e.to_string()))?;
        let lookup = Lookup::of(&status, value, generation)?;
        let decision = match &lookup.status {
            LookupStatus::Hit(_) => Some(limits.decision(Value::Array(rest))?),
            _ => None,
        };
        Ok((lookup.into_lead()?, decision))
    }

    async fn store(
        &self,
        key: &CacheKey,
        generation: &str,
        value: &[u8],
        ttl: Option<Duration>,
        token: &str,
        usage: &str,
    ) -> Result<Stored> {
        let ttl = self.ttl_for(ttl);
        if ttl.as_millis() == 0 {
            return Err(Error::InvalidArgument(
                "a cache TTL must be at least 1 ms".into(),
            ));
        }
        if value.len() > self.config.max_value_bytes {
            if !token.is_empty() {
                self.lease_op(key, token, "release").await?;
            }
            return Ok(Stored::TooLarge);
        }
        let encoded = encode(value, self.config.compress_above);
        let stored: i64 = scripts::CACHE_STORE
            .key(self.keys.cache_gen(&key.model))
            .key(self.keys.cache_entry(&key.model, &key.tenant, &key.hash))
            .key(self.keys.cache_lease(&key.model, &key.tenant, &key.hash))
            .arg(generation)
            .arg(encoded)
            .arg(millis(ttl))
            .arg(token)
            .arg(usage)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(if stored == 1 {
            Stored::Yes
        } else {
            Stored::Stale
        })
    }

    async fn lease_op(&self, key: &CacheKey, token: &str, op: &str) -> Result<bool> {
        let done: i64 = scripts::LEASE_TOKEN
            .key(self.keys.cache_lease(&key.model, &key.tenant, &key.hash))
            .arg(token)
            .arg(op)
            .arg(millis(self.config.lease))
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(done == 1)
    }
}

const RAW: u8 = 0;
const LZ4: u8 = 1;

fn encode(value: &[u8], compress_above: usize) -> Vec<u8> {
    if value.len() > compress_above {
        let compressed = lz4_flex::compress_prepend_size(value);
        if compressed.len() < value.len() {
            let mut out = Vec::with_capacity(compressed.len() + 1);
            out.push(LZ4);
            out.extend_from_slice(&compressed);
            return out;
        }
    }
    let mut out = Vec::with_capacity(value.len() + 1);
    out.push(RAW);
    out.extend_from_slice(value);
    out
}

fn decode(stored: &[u8]) -> Result<Vec<u8>> {
    match stored.split_first() {
        Some((&RAW, rest)) => Ok(rest.to_vec()),
        Some((&LZ4, rest)) => {
            let claimed = rest
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .unwrap_or(usize::MAX);
            if claimed > MAX_DECOMPRESSED {
                return Err(Error::Decode(format!(
                    "compressed entry claims {claimed} bytes"
                )));
            }
            lz4_flex::decompress_size_prepended(rest).map_err(|e| Error::Decode(e.to_string()))
        }
        _ => Err(Error::Decode("unknown cache entry encoding".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_small_and_large_values() {
        for value in [vec![], b"short".to_vec(), vec![b'a'; 10_000]] {
            let enc = encode(&value, 1024);
            assert_eq!(decode(&enc).unwrap(), value);
        }
        assert_eq!(encode(&[b'a'; 10_000], 1024)[0], LZ4);
        assert!(encode(&[b'a'; 10_000], 1024).len() < 200);
    }

    #[test]
    fn corrupt_entries_are_decode_errors_not_panics() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 1, 2]).is_err());
        assert!(decode(&[LZ4, 0xff, 0xff, 0xff, 0x7f, 1]).is_err());
        assert!(decode(&[LZ4, 1]).is_err());
    }
}
