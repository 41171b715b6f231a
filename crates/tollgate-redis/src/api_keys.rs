//! API keys, stored hashed. A key is shown once, at creation; Redis holds only its SHA-256.
//!
//! Keys are durable records, so unlike everything else here they have no TTL (run Redis with a
//! `volatile-*` eviction policy, as the embedded one does, so they are never evicted). All of
//! them share one hash tag: the set of keys is small, and creation is one atomic transaction.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::conn::Redis;
use crate::error::{Error, Result};
use crate::keys::Keys;
use crate::pubsub::{Channels, Subscription};

/// What is stored about a key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id (`key_...`), used in admin calls and as the rate-limit subject.
    pub id: String,
    /// A label.
    pub name: String,
    /// The tier whose limits apply.
    pub tier: String,
    /// Cache namespace; keys of one tenant share cached answers.
    pub tenant: String,
    /// This key's own limits (JSON, shaped like a tier), overriding the tier's.
    #[serde(default)]
    pub limits: serde_json::Value,
    /// Creation time, unix seconds.
    pub created: u64,
    /// Revoked keys authenticate no more.
    #[serde(default)]
    pub revoked: bool,
    /// The first characters of the key, to tell keys apart in listings.
    pub prefix: String,
}

/// The key store.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    redis: Redis,
    keys: Keys,
    channels: Channels,
}

/// Where revocations are announced.
const CHANNEL: &str = "api_keys";

/// The SHA-256 of a key, as stored.
pub fn key_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl ApiKeys {
    /// Keys under `keys`' prefix.
    pub fn new(redis: Redis, keys: Keys) -> Self {
        ApiKeys {
            channels: Channels::new(redis.clone(), keys.clone()),
            redis,
            keys,
        }
    }

    /// The revocation version: it goes up with every revocation. A replica that caches key
    /// lookups drops them when it moves (it is read twice a second, and announced).
    pub async fn version(&self) -> Result<u64> {
        let v: Option<u64> = redis::cmd("GET")
            .arg(self.keys.api_key_version())
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Revocation announcements (each message is the new version).
    pub async fn watch(&self) -> Result<Subscription> {
        self.channels.subscribe(CHANNEL).await
    }

    /// Creates a key; returns its record and the secret (shown once).
    pub async fn create(
        &self,
        name: &str,
        tier: &str,
        tenant: Option<&str>,
        limits: serde_json::Value,
    ) -> Result<(ApiKeyRecord, String)> {
        if name.trim().is_empty() {
            return Err(Error::InvalidArgument("a key needs a name".into()));
        }
        let id = format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
        let secret = format!(
            "tg-{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record = ApiKeyRecord {
            id: id.clone(),
            name: name.to_owned(),
            tier: tier.to_owned(),
            tenant: tenant.unwrap_or(&id).to_owned(),
            limits,
            created,
            revoked: false,
            prefix: secret[..10].to_owned(),
        };
        let hash = key_hash(&secret);
        let json =
            serde_json::to_string(&record).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.keys.api_key_by_hash(&hash))
            .arg(&json)
            .ignore()
            .cmd("HSET")
            .arg(self.keys.api_key_index())
            .arg(&id)
            .arg(&hash)
            .ignore()
            .query_async::<()>(&mut self.redis.conn())
            .await?;
        Ok((record, secret))
    }

    /// The record of a presented key; `None` for unknown or revoked keys.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<ApiKeyRecord>> {
        let json: Option<String> = redis::cmd("GET")
            .arg(self.keys.api_key_by_hash(&key_hash(secret)))
            .query_async(&mut self.redis.conn())
            .await?;
        let Some(json) = json else { return Ok(None) };
        let record: ApiKeyRecord =
            serde_json::from_str(&json).map_err(|e| Error::Decode(e.to_string()))?;
        Ok(if record.revoked { None } else { Some(record) })
    }

    /// Every key, newest first.
    pub async fn list(&self) -> Result<Vec<ApiKeyRecord>> {
        let index: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.keys.api_key_index())
            .query_async(&mut self.redis.conn())
            .await?;
        if index.is_empty() {
            return Ok(Vec::new());
        }
        let mut get = redis::cmd("MGET");
        for (_, hash) in &index {
            get.arg(self.keys.api_key_by_hash(hash));
        }
        let jsons: Vec<Option<String>> = get.query_async(&mut self.redis.conn()).await?;
        let mut out: Vec<ApiKeyRecord> = jsons
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect();
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Revokes a key by id; [`Error::NotFound`] when there is none.
    pub async fn revoke(&self, id: &str) -> Result<ApiKeyRecord> {
        let hash: Option<String> = redis::cmd("HGET")
            .arg(self.keys.api_key_index())
            .arg(id)
            .query_async(&mut self.redis.conn())
            .await?;
        let hash = hash.ok_or(Error::NotFound)?;
        let key = self.keys.api_key_by_hash(&hash);
        let json: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.redis.conn())
            .await?;
        let mut record: ApiKeyRecord = serde_json::from_str(&json.ok_or(Error::NotFound)?)
            .map_err(|e| Error::Decode(e.to_string()))?;
        record.revoked = true;
        let json = serde_json::to_string(&record).map_err(|e| Error::Decode(e.to_string()))?;
        // The record and the version in one transaction (one hash tag), then the announcement.
        let (version,): (u64,) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&key)
            .arg(json)
            .ignore()
            .cmd("INCR")
            .arg(self.keys.api_key_version())
            .query_async(&mut self.redis.conn())
            .await?;
        if let Err(e) = self
            .channels
            .publish(CHANNEL, version.to_string().as_bytes())
            .await
        {
            tracing::debug!(error = %e, "revocation not announced; replicas see the version move");
        }
        Ok(record)
    }
}
