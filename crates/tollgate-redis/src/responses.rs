//! Stored responses of the Responses API, by id: written before the response reaches its client,
//! so the next request of a chain finds it on any instance at once.
//!
//! A value is opaque here (the gateway's JSON). A deleted response leaves a tombstone for as long
//! as the response would have lived, so a read that misses Redis and finds the response still in
//! the database (its deletion not written there yet) does not bring it back.

use std::time::Duration;

use crate::conn::Redis;
use crate::error::Result;
use crate::keys::{Id, Keys};
use crate::{millis, scripts};

/// The value of a deleted response.
const TOMBSTONE: &str = "\u{0}deleted";

/// What Redis holds for an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredResponse {
    Found(Vec<u8>),
    Deleted,
    Missing,
}

/// Responses on one Redis.
#[derive(Debug, Clone)]
pub struct ResponseStore {
    redis: Redis,
    keys: Keys,
    ttl: Duration,
}

impl ResponseStore {
    /// Responses kept for `ttl` after they are written.
    pub fn new(redis: Redis, keys: Keys, ttl: Duration) -> Self {
        ResponseStore { redis, keys, ttl }
    }

    /// Stores a response.
    pub async fn put(&self, id: &str, value: &[u8]) -> Result<()> {
        self.set(id, value, false).await
    }

    /// Stores a response found elsewhere (the database) unless Redis has one or its tombstone.
    pub async fn restore(&self, id: &str, value: &[u8]) -> Result<()> {
        self.set(id, value, true).await
    }

    /// SET with the responses' TTL; only if absent with `if_absent`.
    async fn set(&self, id: &str, value: &[u8], if_absent: bool) -> Result<()> {
        let mut set = redis::cmd("SET");
        set.arg(self.keys.response(&Id::new(id)?))
            .arg(value)
            .arg("PX")
            .arg(millis(self.ttl));
        if if_absent {
            set.arg("NX");
        }
        set.query_async::<()>(&mut self.redis.conn()).await?;
        Ok(())
    }

    /// Replaces a stored response, keeping its TTL; false when it is missing or deleted.
    pub async fn replace(&self, id: &str, value: &[u8]) -> Result<bool> {
        let key = self.keys.response(&Id::new(id)?);
        let replaced: i64 = scripts::RESPONSE_REPLACE
            .key(&key)
            .arg(value)
            .arg(TOMBSTONE)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(replaced == 1)
    }

    /// What Redis holds for `id`.
    pub async fn get(&self, id: &str) -> Result<StoredResponse> {
        let key = self.keys.response(&Id::new(id)?);
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(match value {
            None => StoredResponse::Missing,
            Some(v) if v == TOMBSTONE.as_bytes() => StoredResponse::Deleted,
            Some(v) => StoredResponse::Found(v),
        })
    }

    /// Marks `id` deleted (for as long as a response lives).
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.set(id, TOMBSTONE.as_bytes(), false).await
    }
}
