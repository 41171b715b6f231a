//! Vector collections: vectors with metadata in Redis (the source of truth), searched in an
//! in-process index ([`tollgate_vector::Index`]) that every gateway instance keeps in step with
//! Redis.
//!
//! Layout: `{v:COLL}:meta` (dimension, epoch, last change number), `{v:COLL}:items` (id →
//! record: the vector as little-endian f32 and its metadata as JSON), `{v:COLL}:log` (a stream
//! with one entry per change, ids `0-SEQ` dense from 1), `{v:COLL}:exp` (expiry of the items
//! that have one). One script writes items and log together, so the log never disagrees with
//! the items.
//!
//! Items may expire (the semantic cache's do): a search never ranks an item past its expiry
//! (the expiry is a column of the index, filtered before ranking), every write purges expired
//! items, and a collection whose items all expire expires with the last one.
//!
//! Keeping in step: before a search, an instance reads the meta and the log after the last change
//! it applied, in one round trip, and applies what is new (re-reading those items, so applying a
//! change twice is harmless). A search therefore sees every write acknowledged before it began,
//! on any instance. A gap in the log (trimmed before this instance read it) or a new epoch (the
//! collection dropped and created again) makes the instance reload the whole collection (HSCAN),
//! as it does on first use. Concurrent searches share one catch-up. Collections with an item
//! that never expires are durable records: no TTL.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
pub use tollgate_vector::{Condition, Filter, IndexConfig, Metadata, SearchMode};
use tollgate_vector::{Found, Index, normalized};

use crate::conn::Redis;
use crate::embedding_cache::{decode, encode};
use crate::error::{Error, Result};
use crate::keys::{Id, Keys};
use crate::scripts;

/// Largest dimension accepted.
pub const MAX_DIM: usize = 4096;
/// Longest item id accepted, in bytes.
pub const MAX_ITEM_ID: usize = 512;
/// Log entries read per round trip while catching up.
const CATCH_UP_BATCH: usize = 1000;

/// Tuning of [`VectorCollections`].
#[derive(Debug, Clone)]
pub struct VectorConfig {
    /// Changes kept in a collection's log (approximately); an instance further behind reloads.
    pub log_max_len: usize,
    /// Tuning of each collection's index.
    pub index: IndexConfig,
    /// The most items that expire a collection keeps: past it, a write drops those that expire
    /// soonest (the oldest, for items of one TTL). `None`: no bound. Items that never expire are
    /// not counted.
    pub max_expiring_items: Option<usize>,
    /// The most items this instance keeps in memory across its collections: past it, those
    /// searched least recently are unloaded (their items stay in Redis, and the next search
    /// of one loads it again). `None`: no bound.
    pub max_loaded_items: Option<usize>,
}

impl Default for VectorConfig {
    fn default() -> Self {
        VectorConfig {
            log_max_len: 100_000,
            index: IndexConfig::default(),
            max_expiring_items: None,
            max_loaded_items: None,
        }
    }
}

/// One item of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorItem {
    pub id: String,
    /// As given (the index keeps a normalized copy).
    pub vector: Vec<f32>,
    pub metadata: Metadata,
    /// The text the vector was computed from, when it was.
    pub text: Option<String>,
    /// When the item expires, ms since the epoch; `None`: never.
    pub expires_at_ms: Option<u64>,
}

/// The metadata number holding an item's expiry in the index (names starting with `@` are
/// reserved). Items that never expire hold [`NEVER`].
const EXPIRY_FIELD: &str = "@exp";
const NEVER: f64 = 1e300;

/// A search hit with the item's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    pub id: String,
    /// Cosine similarity.
    pub score: f32,
    pub metadata: Metadata,
}

/// What a search found.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorSearch {
    pub hits: Vec<VectorHit>,
    /// True when every vector passing the filter was compared.
    pub exact: bool,
}

/// A collection as this instance sees it after catching up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionInfo {
    pub dim: usize,
    pub len: usize,
    /// Changes applied so far (the log's last sequence number).
    pub seq: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct StoredMeta {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    numbers: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

/// A record: u32 dimension, the vector, then the metadata as JSON.
fn encode_record(item: &VectorItem) -> Vec<u8> {
    let mut out = (item.vector.len() as u32).to_le_bytes().to_vec();
    out.extend(encode(&item.vector));
    let meta = StoredMeta {
        tags: item.metadata.tags.clone(),
        numbers: item.metadata.numbers.clone(),
        text: item.text.clone(),
        exp: item.expires_at_ms,
    };
    out.extend(serde_json::to_vec(&meta).unwrap_or_default());
    out
}

fn decode_record(id: String, bytes: &[u8]) -> Result<VectorItem> {
    let bad = |why: &str| Error::Decode(format!("vector record {id:?}: {why}"));
    let dim = u32::from_le_bytes(
        bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("too short"))?,
    ) as usize;
    let end = 4 + dim * 4;
    let vector = decode(bytes.get(4..end).ok_or_else(|| bad("truncated vector"))?)?;
    let meta: StoredMeta =
        serde_json::from_slice(&bytes[end..]).map_err(|e| bad(&e.to_string()))?;
    Ok(VectorItem {
        id,
        vector,
        metadata: Metadata {
            tags: meta.tags,
            numbers: meta.numbers,
        },
        text: meta.text,
        expires_at_ms: meta.exp,
    })
}

/// What one instance holds of a collection.
struct State {
    epoch: String,
    seq: u64,
    dim: usize,
    index: Index,
}

#[derive(Default)]
struct Loaded {
    /// Held while catching up; holds when the last completed catch-up *started*.
    sync: tokio::sync::Mutex<Option<Instant>>,
    state: RwLock<Option<State>>,
    /// When this instance last searched it, on [`Memory::clock`].
    used: AtomicU64,
    /// The items of its index when last counted.
    len: AtomicUsize,
}

/// What this instance holds in memory, for [`VectorConfig::max_loaded_items`].
#[derive(Default)]
struct Memory {
    /// Counts searches: a collection's `used` is the count at its last one.
    clock: AtomicU64,
    /// The items of every loaded collection (recounted exactly before unloading any).
    items: AtomicUsize,
}

impl Memory {
    /// Records that `loaded` now holds `len` items.
    fn count(&self, loaded: &Loaded, len: usize) {
        let before = loaded.len.swap(len, Ordering::Relaxed);
        let _ = self
            .items
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some((n + len).saturating_sub(before))
            });
    }
}

/// Vector collections on one Redis, with this instance's indexes.
#[derive(Clone)]
pub struct VectorCollections {
    redis: Redis,
    keys: Keys,
    config: VectorConfig,
    loaded: Arc<Mutex<HashMap<String, Arc<Loaded>>>>,
    memory: Arc<Memory>,
}

impl std::fmt::Debug for VectorCollections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorCollections")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct CollectionKeys {
    meta: String,
    items: String,
    log: String,
    expiries: String,
}

impl VectorCollections {
    pub fn new(redis: Redis, keys: Keys, config: VectorConfig) -> Self {
        VectorCollections {
            redis,
            keys,
            config,
            loaded: Arc::default(),
            memory: Arc::default(),
        }
    }

    /// The collections this instance holds in memory, and their items.
    pub fn loaded(&self) -> (usize, usize) {
        let all = self.loaded.lock().map(|all| {
            all.values()
                .map(|l| l.len.load(Ordering::Relaxed))
                .fold((0, 0), |(c, n), len| (c + 1, n + len))
        });
        all.unwrap_or_default()
    }

    /// Unloads the collections searched least recently (never `keep`) until the items in
    /// memory are within `bound`.
    fn unload_least_used(&self, keep: &str, bound: usize) {
        let Ok(mut all) = self.loaded.lock() else {
            return;
        };
        let mut by_use: Vec<(u64, String, usize)> = all
            .iter()
            .map(|(name, l)| {
                (
                    l.used.load(Ordering::Relaxed),
                    name.clone(),
                    l.len.load(Ordering::Relaxed),
                )
            })
            .collect();
        let mut total: usize = by_use.iter().map(|(_, _, len)| len).sum();
        by_use.sort_unstable();
        let mut unloaded = 0;
        for (_, name, len) in by_use {
            if total <= bound {
                break;
            }
            if name != keep {
                all.remove(&name);
                total -= len;
                unloaded += 1;
            }
        }
        self.memory.items.store(total, Ordering::Relaxed);
        tracing::debug!(
            unloaded,
            items = total,
            bound,
            "vector collections unloaded from memory"
        );
    }

    fn keys_of(&self, collection: &str) -> Result<CollectionKeys> {
        let c = Id::new(collection)?;
        Ok(CollectionKeys {
            meta: self.keys.vector_meta(&c),
            items: self.keys.vector_items(&c),
            log: self.keys.vector_log(&c),
            expiries: self.keys.vector_expiries(&c),
        })
    }

    /// `vector_write.lua` on `collection`'s keys, its fixed arguments set; the caller adds items.
    fn write(
        &self,
        collection: &str,
        op: &str,
        dim: usize,
        epoch: &str,
    ) -> Result<redis::ScriptInvocation<'static>> {
        let k = self.keys_of(collection)?;
        let mut invocation = scripts::VECTOR_WRITE.prepare_invoke();
        invocation
            .key(k.meta)
            .key(k.items)
            .key(k.log)
            .key(k.expiries)
            .arg(op)
            .arg(dim)
            .arg(epoch)
            .arg(self.config.log_max_len)
            .arg(self.config.max_expiring_items.unwrap_or(0));
        Ok(invocation)
    }

    /// Stores `items` (creating the collection with their dimension), all or none. Returns the
    /// sequence number of the last change.
    pub async fn upsert(&self, collection: &str, items: &[VectorItem]) -> Result<u64> {
        let Some(first) = items.first() else {
            return Err(Error::InvalidArgument("no items to store".into()));
        };
        let dim = first.vector.len();
        if dim == 0 || dim > MAX_DIM {
            return Err(Error::InvalidArgument(format!(
                "a vector needs 1 to {MAX_DIM} dimensions, got {dim}"
            )));
        }
        for item in items {
            check_item_id(&item.id)?;
            if item.vector.len() != dim {
                return Err(Error::InvalidArgument(format!(
                    "item {:?} has {} dimensions, the first item {dim}",
                    item.id,
                    item.vector.len()
                )));
            }
            normalized(&item.vector)
                .map_err(|e| Error::InvalidArgument(format!("item {:?}: {e}", item.id)))?;
            let names = item
                .metadata
                .tags
                .keys()
                .chain(item.metadata.numbers.keys());
            if let Some(name) = names
                .into_iter()
                .find(|n| n.is_empty() || n.starts_with('@'))
            {
                return Err(Error::InvalidArgument(format!(
                    "item {:?}: metadata name {name:?} is empty or starts with '@' (reserved)",
                    item.id
                )));
            }
            if let Some((field, _)) = item.metadata.numbers.iter().find(|(_, x)| !x.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "item {:?}: metadata number {field} is not finite",
                    item.id
                )));
            }
        }
        let epoch = uuid::Uuid::new_v4().simple().to_string();
        let mut invocation = self.write(collection, "put", dim, &epoch)?;
        for item in items {
            invocation
                .arg(&item.id)
                .arg(encode_record(item))
                .arg(item.expires_at_ms.unwrap_or(0));
        }
        let (seq, n): (i64, u64) = invocation.invoke_async(&mut self.redis.conn()).await?;
        if seq < 0 {
            return Err(Error::Conflict(format!(
                "collection {collection:?} has {n} dimensions, the vectors {dim}"
            )));
        }
        Ok(seq as u64)
    }

    /// Deletes items; returns how many existed.
    pub async fn delete(&self, collection: &str, ids: &[&str]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.write(collection, "del", 0, "")?;
        for id in ids {
            invocation.arg(*id);
        }
        let (_, n): (i64, u64) = invocation.invoke_async(&mut self.redis.conn()).await?;
        Ok(n)
    }

    /// Raises the metadata number `name` of each listed item to at least its value, atomically
    /// in Redis and logged like any write, so every instance's index sees it at its next
    /// search; items that are gone stay gone. Returns how many items changed.
    pub async fn raise_number(
        &self,
        collection: &str,
        name: &str,
        raises: &[(&str, f64)],
    ) -> Result<u64> {
        if raises.is_empty() {
            return Ok(0);
        }
        if let Some((_, v)) = raises.iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "metadata number {name} cannot be {v}"
            )));
        }
        let mut invocation = self.write(collection, "max", 0, "")?;
        for (id, value) in raises {
            invocation.arg(*id).arg(name).arg(*value);
        }
        let (_, n): (i64, u64) = invocation.invoke_async(&mut self.redis.conn()).await?;
        Ok(n)
    }

    /// One item as stored, read from Redis.
    pub async fn get(&self, collection: &str, id: &str) -> Result<Option<VectorItem>> {
        let k = self.keys_of(collection)?;
        let bytes: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&k.items)
            .arg(id)
            .query_async(&mut self.redis.conn())
            .await?;
        bytes.map(|b| decode_record(id.to_owned(), &b)).transpose()
    }

    /// Deletes the whole collection; false when there was none.
    pub async fn drop_collection(&self, collection: &str) -> Result<bool> {
        let k = self.keys_of(collection)?;
        let dropped: i64 = scripts::VECTOR_DROP
            .key(&k.meta)
            .key(&k.items)
            .key(&k.log)
            .key(&k.expiries)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(dropped == 1)
    }

    /// The collection after catching up with Redis; `NotFound` when it does not exist.
    pub async fn info(&self, collection: &str) -> Result<CollectionInfo> {
        let loaded = self.caught_up(collection).await?;
        let state = loaded.state.read().map_err(|_| poisoned())?;
        let s = state.as_ref().ok_or(Error::NotFound)?;
        Ok(CollectionInfo {
            dim: s.dim,
            len: s.index.len(),
            seq: s.seq,
        })
    }

    /// The `k` items nearest `query` among those passing `filter` (and not expired), seeing
    /// every write acknowledged before the call. `NotFound` when the collection does not exist.
    pub async fn search(
        &self,
        collection: &str,
        query: Vec<f32>,
        k: usize,
        mut filter: Filter,
        mode: SearchMode,
    ) -> Result<VectorSearch> {
        let loaded = self.caught_up(collection).await?;
        filter.conditions.push(Condition::Range {
            field: EXPIRY_FIELD.into(),
            min: Some(crate::now_ms() as f64),
            max: None,
        });
        tokio::task::spawn_blocking(move || {
            let state = loaded.state.read().map_err(|_| poisoned())?;
            let s = state.as_ref().ok_or(Error::NotFound)?;
            let Found { hits, exact } = s
                .index
                .search_with(&query, k, &filter, mode)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let hits = hits
                .into_iter()
                .map(|h| {
                    let mut metadata = s
                        .index
                        .get(&h.id)
                        .map(|(_, m)| m.clone())
                        .unwrap_or_default();
                    metadata.numbers.remove(EXPIRY_FIELD);
                    VectorHit {
                        metadata,
                        id: h.id,
                        score: h.score,
                    }
                })
                .collect();
            Ok(VectorSearch { hits, exact })
        })
        .await
        .map_err(|e| Error::reply("vector search", e.to_string()))?
    }

    /// This instance's copy of `collection`, caught up with every change made before the call.
    async fn caught_up(&self, collection: &str) -> Result<Arc<Loaded>> {
        let loaded = {
            let mut all = self.loaded.lock().map_err(|_| poisoned())?;
            all.entry(collection.to_owned()).or_default().clone()
        };
        let arrived = Instant::now();
        let gate = Arc::clone(&loaded);
        let mut last = gate.sync.lock().await;
        // A catch-up that started after this call arrived has seen everything this call must.
        if last.is_some_and(|started| started >= arrived) {
            return Ok(loaded);
        }
        let started = Instant::now();
        let result = self.catch_up(collection, &loaded).await;
        if let Err(Error::NotFound) = result {
            if let Ok(mut state) = loaded.state.write() {
                *state = None;
            }
            if let Ok(mut all) = self.loaded.lock() {
                all.remove(collection);
            }
            self.memory.count(&loaded, 0);
        }
        result?;
        *last = Some(started);
        drop(last);
        let now = self.memory.clock.fetch_add(1, Ordering::Relaxed) + 1;
        loaded.used.store(now, Ordering::Relaxed);
        if let Some(bound) = self.config.max_loaded_items
            && self.memory.items.load(Ordering::Relaxed) > bound
        {
            self.unload_least_used(collection, bound);
        }
        Ok(loaded)
    }

    async fn catch_up(&self, collection: &str, loaded: &Arc<Loaded>) -> Result<()> {
        let k = self.keys_of(collection)?;
        loop {
            let known = {
                let state = loaded.state.read().map_err(|_| poisoned())?;
                state.as_ref().map(|s| (s.epoch.clone(), s.seq))
            };
            let Some((epoch, seq)) = known else {
                self.reload(&k, loaded).await?;
                continue;
            };
            let (meta, entries): (Vec<Option<String>>, Vec<LogEntry>) = redis::pipe()
                .cmd("HMGET")
                .arg(&k.meta)
                .arg("epoch")
                .arg("seq")
                .cmd("XRANGE")
                .arg(&k.log)
                .arg(format!("(0-{seq}"))
                .arg("+")
                .arg("COUNT")
                .arg(CATCH_UP_BATCH)
                .query_async(&mut self.redis.conn())
                .await?;
            let Some(Some(current)) = meta.first() else {
                return Err(Error::NotFound);
            };
            if *current != epoch {
                self.reload(&k, loaded).await?;
                continue;
            }
            let Some((first, _)) = entries.first() else {
                return Ok(());
            };
            if log_seq(first)? != seq + 1 {
                // Changes were trimmed before this instance read them.
                self.reload(&k, loaded).await?;
                continue;
            }
            let last_seq = log_seq(&entries[entries.len() - 1].0)?;
            let ids: Vec<String> = entries
                .iter()
                .filter_map(|(_, fields)| {
                    fields
                        .iter()
                        .find(|(f, _)| f == "id")
                        .map(|(_, v)| v.clone())
                })
                .collect();
            let records: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                .arg(&k.items)
                .arg(&ids)
                .query_async(&mut self.redis.conn())
                .await?;
            let changes = ids
                .into_iter()
                .zip(records)
                .map(|(id, record)| match record {
                    Some(bytes) => decode_record(id, &bytes).map(Change::Put),
                    None => Ok(Change::Delete(id)),
                })
                .collect::<Result<Vec<_>>>()?;
            let done = entries.len() < CATCH_UP_BATCH;
            let target = Arc::clone(loaded);
            let memory = Arc::clone(&self.memory);
            tokio::task::spawn_blocking(move || {
                let mut state = target.state.write().map_err(|_| poisoned())?;
                let s = state.as_mut().ok_or(Error::NotFound)?;
                for change in changes {
                    apply(&mut s.index, change);
                }
                s.seq = last_seq;
                memory.count(&target, s.index.len());
                Ok::<_, Error>(())
            })
            .await
            .map_err(|e| Error::reply("vector catch-up", e.to_string()))??;
            if done {
                return Ok(());
            }
        }
    }

    /// Reads the whole collection into a fresh index. The meta is read first: every change
    /// after it has a higher sequence number and is applied by the catch-up that follows.
    async fn reload(&self, k: &CollectionKeys, loaded: &Arc<Loaded>) -> Result<()> {
        let meta: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&k.meta)
            .query_async(&mut self.redis.conn())
            .await?;
        let (Some(epoch), Some(seq), Some(dim)) = (
            meta.get("epoch").cloned(),
            meta.get("seq").and_then(|s| s.parse::<u64>().ok()),
            meta.get("dim").and_then(|s| s.parse::<usize>().ok()),
        ) else {
            return Err(Error::NotFound);
        };
        let mut items = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<(String, Vec<u8>)>) = redis::cmd("HSCAN")
                .arg(&k.items)
                .arg(cursor)
                .arg("COUNT")
                .arg(CATCH_UP_BATCH)
                .query_async(&mut self.redis.conn())
                .await?;
            for (id, bytes) in page {
                items.push(decode_record(id, &bytes)?);
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let config = self.config.index.clone();
        let target = Arc::clone(loaded);
        let memory = Arc::clone(&self.memory);
        tokio::task::spawn_blocking(move || {
            let mut index = Index::with_config(dim, config);
            for item in items {
                apply(&mut index, Change::Put(item));
            }
            memory.count(&target, index.len());
            let mut state = target.state.write().map_err(|_| poisoned())?;
            *state = Some(State {
                epoch,
                seq,
                dim,
                index,
            });
            Ok::<_, Error>(())
        })
        .await
        .map_err(|e| Error::reply("vector reload", e.to_string()))?
    }
}

/// A change log entry: its id (`0-SEQ`) and fields (`id`: the item changed).
type LogEntry = (String, Vec<(String, String)>);

enum Change {
    Put(VectorItem),
    Delete(String),
}

fn apply(index: &mut Index, change: Change) {
    match change {
        Change::Put(mut item) => {
            let expiry = item.expires_at_ms.map_or(NEVER, |ms| ms as f64);
            item.metadata.numbers.insert(EXPIRY_FIELD.into(), expiry);
            // Records were validated when written; one that no longer fits is skipped, loudly.
            if let Err(e) = index.upsert(&item.id, &item.vector, item.metadata) {
                tracing::warn!(id = item.id, error = %e, "vector record not indexed");
            }
        }
        Change::Delete(id) => {
            index.remove(&id);
        }
    }
}

fn log_seq(entry_id: &str) -> Result<u64> {
    entry_id
        .strip_prefix("0-")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::reply("vector log", format!("entry id {entry_id}")))
}

fn check_item_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ITEM_ID {
        return Err(Error::InvalidArgument(format!(
            "an item id needs 1 to {MAX_ITEM_ID} bytes"
        )));
    }
    Ok(())
}

fn poisoned() -> Error {
    Error::reply("vector index", "a lock was poisoned by a panic")
}
