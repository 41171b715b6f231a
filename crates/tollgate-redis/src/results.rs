//! A keyed cache of model results that are not chat answers (recommendations, scores,
//! classifications...), read in tiers: a lookup names keys from the most specific to the most
//! general (the user and context, the user's precomputed results, a category's popular ones) and
//! gets the first that is held, all tiers read in one round trip: one pipeline on a single
//! Redis; in a cluster, where each key has its own slot, one GET per tier, all sent at once.
//!
//! A result is any bytes (the HTTP API keeps JSON) with its own TTL, under a cache name, so one
//! cache's keys never meet another's.

use std::time::Duration;

use crate::conn::Redis;
use crate::error::{Error, Result};
use crate::keys::{Id, Keys};

/// Tiers one lookup may read at most.
pub const MAX_TIERS: usize = 16;

/// The first tier a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierHit {
    /// Its place in the lookup's keys (0: the most specific).
    pub tier: usize,
    pub value: Vec<u8>,
}

/// Tiered result caches on one Redis.
#[derive(Debug, Clone)]
pub struct ResultCache {
    redis: Redis,
    keys: Keys,
}

impl ResultCache {
    pub fn new(redis: Redis, keys: Keys) -> Self {
        ResultCache { redis, keys }
    }

    fn key(&self, cache: &str, key: &str) -> Result<String> {
        Ok(self.keys.result(&Id::new(cache)?, &Id::new(key)?))
    }

    /// Holds `value` as `key`'s result in `cache` for `ttl`.
    pub async fn put(&self, cache: &str, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        if ttl.is_zero() {
            return Err(Error::InvalidArgument(
                "a result's TTL must be positive".into(),
            ));
        }
        redis::cmd("SET")
            .arg(self.key(cache, key)?)
            .arg(value)
            .arg("PX")
            .arg(crate::millis(ttl).max(1))
            .query_async::<()>(&mut self.redis.conn())
            .await?;
        Ok(())
    }

    /// Forgets `key`'s result in `cache`; true if there was one.
    pub async fn delete(&self, cache: &str, key: &str) -> Result<bool> {
        let removed: i64 = redis::cmd("DEL")
            .arg(self.key(cache, key)?)
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(removed == 1)
    }

    /// The first of `keys` (most specific first) that `cache` holds, all read in one pipeline.
    pub async fn lookup(&self, cache: &str, keys: &[&str]) -> Result<Option<TierHit>> {
        if keys.is_empty() || keys.len() > MAX_TIERS {
            return Err(Error::InvalidArgument(format!(
                "a lookup names 1 to {MAX_TIERS} keys"
            )));
        }
        let keys = keys
            .iter()
            .map(|key| self.key(cache, key))
            .collect::<Result<Vec<_>>>()?;
        let values: Vec<Option<Vec<u8>>> = if self.redis.is_cluster() {
            let gets = keys.iter().map(|key| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<Vec<u8>>>(&mut self.redis.conn())
                    .await
            });
            futures::future::try_join_all(gets).await?
        } else {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("GET").arg(key);
            }
            pipe.query_async(&mut self.redis.conn()).await?
        };
        Ok(values
            .into_iter()
            .enumerate()
            .find_map(|(tier, value)| value.map(|value| TierHit { tier, value })))
    }
}
