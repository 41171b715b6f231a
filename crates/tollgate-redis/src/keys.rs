//! Every Redis key tollgate uses is built here, and only here.
//!
//! Layout (prefix `tg:` by default; the part in `{}` is the hash tag, so everything one script or
//! pipeline touches lands in one cluster slot):
//!
//! | key | type | what |
//! |---|---|---|
//! | `tg:{c:MODEL}:gen` | string | the model's cache generation (bumped to invalidate the model) |
//! | `tg:{c:MODEL}:stats` | hash | cache hits/misses of the model, tokens saved by hits |
//! | `tg:{c:MODEL}:e:TENANT:HASH` | hash | a cache entry: `g` generation, `v` value |
//! | `tg:{c:MODEL}:l:TENANT:HASH` | string | the single-flight lease of that entry |
//! | `tg:{s:SESSION}:meta`, `tg:{s:SESSION}:msgs` | hash, stream | a session |
//! | `tg:{st:STREAM}` | stream | a generation's token stream |
//! | `tg:{st:STREAM}:alive` | string | present while the stream's producer lives (`producer_timeout`) |
//! | `tg:{k:SUBJECT}:rl:NAME` | various | a rate limit of a subject (an API key, a user...) |
//! | `tg:{m:MODEL}:rl:NAME` | various | a model's capacity, shared by every key that calls it |
//! | `...:rl:NAME:q`, `...:rl:NAME:qd` | zset, zset | the queue of a concurrency limit: waiters by arrival, and by deadline |
//! | `tg:{e:MODEL:VERSION}:SHA256` | string | a cached embedding |
//! | `tg:{f:TYPE:ID}:GROUP` | hash | a feature group of an entity (`@ts`: update time) |
//! | `tg:ch:NAME` | pub/sub channel | fire-and-forget fan-out |
//! | `tg:{reg}:models`, `tg:{reg}:version` | hash, string | the model registry and its version (no TTL) |
//! | `tg:{ev:STREAM}`, `tg:{ev:STREAM}:dead` | stream, stream | an event stream and its dead letters |
//! | `tg:{ev:STREAM}:sink` | string | where a stream's entries all go, when only one place may take them (no TTL) |
//! | `tg:{ak}:h:SHA256` | string | an API key's record, by the hash of the key (no TTL) |
//! | `tg:{ak}:index` | hash | API key id -> hash (no TTL) |
//! | `tg:{ak}:version` | string | bumped by every revocation, so replicas drop cached lookups (no TTL) |
//! | `tg:{r:ID}` | string | a stored response of the Responses API (or its tombstone) |
//! | `tg:{res:CACHE:KEY}` | string | a model result in a tiered result cache (each key its own slot) |
//! | `tg:{k:SUBJECT}:spend:d:YYYYMMDD`, `:spend:m:YYYYMM` | hash | spend of an API key per model and in all (`*`), in billionths of a dollar |
//! | `tg:{k:SUBJECT}:spend:w:SECONDS` | hash | spend of an API key over a sliding window: per sixtieth of it, and when each alert last went out |
//! | `tg:{ev:outbox}` | stream | durable records on their way to the database |
//! | `tg:cache-models` | set | models with cache stats |
//! | `tg:{v:COLL}:meta`, `:items`, `:log`, `:exp` | hash, hash, stream, zset | a vector collection (no TTL unless all its items expire) |
//!
//! Caller-supplied ids go through [`Id`], which percent-encodes every byte outside
//! `[A-Za-z0-9_.-/]`. The encoding is injective, so two ids never share a key, and it removes
//! `{`, `}` and `:`, so an id can neither move a key to another hash tag nor forge another
//! tenant's key. Ids longer than 256 encoded bytes are replaced by their SHA-256 (still
//! injective in practice, and keys stay short).

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const MAX_ENCODED_LEN: usize = 256;

/// A caller-supplied id, encoded so it is safe inside a key (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id(String);

impl Id {
    /// Encodes an id given as bytes (any bytes, UTF-8 or not). Empty ids are rejected.
    pub fn new(raw: impl AsRef<[u8]>) -> Result<Self> {
        let raw = raw.as_ref();
        if raw.is_empty() {
            return Err(Error::InvalidArgument("an id must not be empty".into()));
        }
        let mut out = String::with_capacity(raw.len());
        for &b in raw {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/') {
                out.push(char::from(b));
            } else {
                out.push('%');
                out.push_str(&format!("{b:02X}"));
            }
            if out.len() > MAX_ENCODED_LEN {
                // `~` is always percent-encoded above, so a hashed id cannot equal an encoded one.
                return Ok(Id(format!("~{}", hex::encode(Sha256::digest(raw)))));
            }
        }
        Ok(Id(out))
    }

    /// The encoded form, as it appears in keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds every key under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            prefix: "tg:".into(),
        }
    }
}

impl Keys {
    /// Keys under `prefix` (e.g. `tg:`). The prefix must not contain `{` or `}`, which would move
    /// the hash tag.
    pub fn new(prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        if prefix.contains(['{', '}']) {
            return Err(Error::InvalidArgument(format!(
                "key prefix {prefix:?} must not contain '{{' or '}}'"
            )));
        }
        Ok(Keys { prefix })
    }

    /// The prefix keys start with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // The response cache's keys are built on every cacheable request, four at a time: joined
    // into one allocation rather than through `format!`.

    pub(crate) fn cache_gen(&self, model: &Id) -> String {
        self.join(&["{c:", model.as_str(), "}:gen"])
    }

    pub(crate) fn cache_stats(&self, model: &Id) -> String {
        self.join(&["{c:", model.as_str(), "}:stats"])
    }

    pub(crate) fn cache_entry(&self, model: &Id, tenant: &Id, hash: &str) -> String {
        self.join(&["{c:", model.as_str(), "}:e:", tenant.as_str(), ":", hash])
    }

    pub(crate) fn cache_lease(&self, model: &Id, tenant: &Id, hash: &str) -> String {
        self.join(&["{c:", model.as_str(), "}:l:", tenant.as_str(), ":", hash])
    }

    /// The prefix and `parts`, in one allocation.
    fn join(&self, parts: &[&str]) -> String {
        let len = self.prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut key = String::with_capacity(len);
        key.push_str(&self.prefix);
        for part in parts {
            key.push_str(part);
        }
        key
    }

    pub(crate) fn session_meta(&self, session: &Id) -> String {
        format!("{}{{s:{session}}}:meta", self.prefix)
    }

    pub(crate) fn session_messages(&self, session: &Id) -> String {
        format!("{}{{s:{session}}}:msgs", self.prefix)
    }

    pub(crate) fn token_stream(&self, stream: &Id) -> String {
        format!("{}{{st:{stream}}}", self.prefix)
    }

    pub(crate) fn live_streams(&self) -> String {
        format!("{}{{st}}:live", self.prefix)
    }

    pub(crate) fn token_stream_alive(&self, stream: &Id) -> String {
        format!("{}{{st:{stream}}}:alive", self.prefix)
    }

    pub(crate) fn rate_limit(&self, subject: &Id, name: &Id) -> String {
        format!("{}{{k:{subject}}}:rl:{name}", self.prefix)
    }

    /// The queue of the concurrency limit at `limit` (a key this module built): its waiters by
    /// arrival, and by the time they must ask again by. Same hash tag as the limit.
    pub(crate) fn limit_queue(limit: &str) -> [String; 2] {
        [format!("{limit}:q"), format!("{limit}:qd")]
    }

    pub(crate) fn result(&self, cache: &Id, key: &Id) -> String {
        format!("{}{{res:{cache}:{key}}}", self.prefix)
    }

    pub(crate) fn model_limit(&self, model: &Id, name: &Id) -> String {
        format!("{}{{m:{model}}}:rl:{name}", self.prefix)
    }

    pub(crate) fn embedding(&self, model: &Id, version: &Id, sha256_hex: &str) -> String {
        format!("{}{{e:{model}:{version}}}:{sha256_hex}", self.prefix)
    }

    pub(crate) fn api_key_by_hash(&self, sha256_hex: &str) -> String {
        format!("{}{{ak}}:h:{sha256_hex}", self.prefix)
    }

    pub(crate) fn api_key_version(&self) -> String {
        format!("{}{{ak}}:version", self.prefix)
    }

    pub(crate) fn api_key_index(&self) -> String {
        format!("{}{{ak}}:index", self.prefix)
    }

    pub(crate) fn cache_models(&self) -> String {
        format!("{}cache-models", self.prefix)
    }

    pub(crate) fn feature_group(&self, entity_type: &Id, entity_id: &Id, group: &Id) -> String {
        format!("{}{{f:{entity_type}:{entity_id}}}:{group}", self.prefix)
    }

    pub(crate) fn registry_models(&self) -> String {
        format!("{}{{reg}}:models", self.prefix)
    }

    pub(crate) fn registry_version(&self) -> String {
        format!("{}{{reg}}:version", self.prefix)
    }

    pub(crate) fn event_stream(&self, stream: &Id) -> String {
        format!("{}{{ev:{stream}}}", self.prefix)
    }

    pub(crate) fn event_stream_sink(&self, stream: &Id) -> String {
        format!("{}{{ev:{stream}}}:sink", self.prefix)
    }

    pub(crate) fn dead_letters(&self, stream: &Id) -> String {
        format!("{}{{ev:{stream}}}:dead", self.prefix)
    }

    pub(crate) fn vector_meta(&self, collection: &Id) -> String {
        format!("{}{{v:{collection}}}:meta", self.prefix)
    }

    pub(crate) fn vector_items(&self, collection: &Id) -> String {
        format!("{}{{v:{collection}}}:items", self.prefix)
    }

    pub(crate) fn vector_log(&self, collection: &Id) -> String {
        format!("{}{{v:{collection}}}:log", self.prefix)
    }

    pub(crate) fn vector_expiries(&self, collection: &Id) -> String {
        format!("{}{{v:{collection}}}:exp", self.prefix)
    }

    pub(crate) fn response(&self, id: &Id) -> String {
        format!("{}{{r:{id}}}", self.prefix)
    }

    pub(crate) fn spend(&self, subject: &Id, period: &str) -> String {
        format!("{}{{k:{subject}}}:spend:{period}", self.prefix)
    }

    pub(crate) fn channel(&self, name: &Id) -> String {
        format!("{}ch:{name}", self.prefix)
    }
}

/// The hash tag of a key (the part between the first `{` and the next `}`), as Redis Cluster
/// computes it; `None` when the key has no tag.
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')? + open + 1;
    (close > open + 1).then(|| &key[open + 1..close])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_escape_their_hash_tag_or_segment() {
        let keys = Keys::default();
        for raw in [
            &b"a}b"[..],
            b"{x}",
            b"t:1",
            b"*",
            b"%41",
            b"\xff\xfe",
            b"a b",
        ] {
            let id = Id::new(raw).unwrap();
            assert!(!id.as_str().contains(['{', '}', ':', '*', ' ']), "{id}");
            let key = keys.session_meta(&id);
            assert_eq!(hash_tag(&key), Some(format!("s:{id}").as_str()));
        }
    }

    #[test]
    fn encoding_is_injective() {
        // "%41" must not collide with "A", nor ":" with its percent form.
        assert_ne!(Id::new("A").unwrap(), Id::new("%41").unwrap());
        assert_ne!(Id::new(":").unwrap(), Id::new("%3A").unwrap());
        assert_ne!(Id::new("a").unwrap(), Id::new("a ").unwrap());
    }

    #[test]
    fn long_ids_are_hashed_and_empty_ids_rejected() {
        let long = "x".repeat(10_000);
        let id = Id::new(&long).unwrap();
        assert!(id.as_str().starts_with('~') && id.as_str().len() == 65);
        assert_ne!(id, Id::new("x".repeat(10_001)).unwrap());
        assert!(matches!(Id::new(""), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn prefix_with_braces_is_rejected() {
        assert!(Keys::new("a{b}:").is_err());
        assert_eq!(
            Keys::new("x:").unwrap().cache_gen(&Id::new("m").unwrap()),
            "x:{c:m}:gen"
        );
    }
}
