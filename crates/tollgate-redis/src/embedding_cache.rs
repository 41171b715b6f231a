//! The embedding cache: vectors keyed by model, model version and SHA-256 of the text, stored as
//! little-endian f32 bytes with a TTL. A batch is read in one round trip (MGET) and written in
//! one (a pipeline of SET EX); all keys of one model version share a hash tag, so both work in a
//! cluster.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::conn::Redis;
use crate::error::{Error, Result};
use crate::keys::{Id, Keys};
use crate::millis;

/// Embeddings of one model version.
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    redis: Redis,
    keys: Keys,
    model: Id,
    version: Id,
    ttl: Duration,
}

impl EmbeddingCache {
    /// A cache of `model` at `version` (bump the version when the weights change), entries
    /// living `ttl`.
    pub fn new(
        redis: Redis,
        keys: Keys,
        model: &str,
        version: &str,
        ttl: Duration,
    ) -> Result<Self> {
        if ttl.as_millis() == 0 {
            return Err(Error::InvalidArgument(
                "an embedding TTL must be at least 1 ms".into(),
            ));
        }
        Ok(EmbeddingCache {
            redis,
            keys,
            model: Id::new(model)?,
            version: Id::new(version)?,
            ttl,
        })
    }

    fn key(&self, text: &str) -> String {
        self.keys.embedding(
            &self.model,
            &self.version,
            &hex::encode(Sha256::digest(text.as_bytes())),
        )
    }

    /// Looks up every text in one round trip; `None` where there is no entry. Order is kept.
    pub async fn get_many(&self, texts: &[&str]) -> Result<Vec<Option<Vec<f32>>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for text in texts {
            cmd.arg(self.key(text));
        }
        let values: Vec<Option<Vec<u8>>> = cmd.query_async(&mut self.redis.conn()).await?;
        values
            .into_iter()
            .map(|v| v.map(|bytes| decode(&bytes)).transpose())
            .collect()
    }

    /// Stores every (text, vector) pair in one round trip.
    pub async fn set_many(&self, items: &[(&str, &[f32])]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (text, vector) in items {
            if vector.is_empty() {
                return Err(Error::InvalidArgument(
                    "an embedding must not be empty".into(),
                ));
            }
            pipe.cmd("SET")
                .arg(self.key(text))
                .arg(encode(vector))
                .arg("PX")
                .arg(millis(self.ttl))
                .ignore();
        }
        pipe.query_async::<()>(&mut self.redis.conn()).await?;
        Ok(())
    }
}

/// Little-endian f32 bytes.
pub fn encode(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`encode`]; a length that is not a multiple of 4 is a decode error.
pub fn decode(bytes: &[u8]) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(Error::Decode(format!(
            "embedding of {} bytes is not f32s",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
