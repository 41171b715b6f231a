//! The online feature store: features of an entity (a user, an item...) in named groups, each
//! group a hash with its own TTL and update time. All groups of one entity share a hash tag, so
//! reading any number of them is one round trip, in a cluster too; a batch of entities is one
//! pipeline per entity, sent together on the multiplexed connection.
//!
//! Values are JSON; feature names must not start with `@` (reserved: `@ts` is the update time,
//! stamped from the server's clock by the write script).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::conn::Redis;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::keys::{Id, Keys};
use crate::scripts;

/// One group's features as read.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureGroup {
    /// Feature name → value.
    pub features: BTreeMap<String, Value>,
    /// When the group was written, ms since the epoch (server clock).
    pub updated_ms: u64,
}

/// Which entity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityRef {
    pub entity_type: String,
    pub entity_id: String,
}

/// Feature groups on one Redis.
#[derive(Debug, Clone)]
pub struct FeatureStore {
    redis: Redis,
    keys: Keys,
    /// The TTL of a group written without one (`None`: it never expires).
    default_ttl: Option<Duration>,
}

impl FeatureStore {
    /// Features under `keys`' prefix; groups written without a TTL never expire.
    pub fn new(redis: Redis, keys: Keys) -> Self {
        FeatureStore {
            redis,
            keys,
            default_ttl: None,
        }
    }

    /// Groups written without a TTL expire after `ttl` (`None`: never).
    pub fn with_default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// The TTL of a write that asks for `ttl_seconds`: none asked, the default; 0, no expiry.
    pub fn ttl_for(&self, ttl_seconds: Option<u64>) -> Option<Duration> {
        match ttl_seconds {
            None => self.default_ttl,
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
        }
    }

    fn key(&self, entity_type: &str, entity_id: &str, group: &str) -> Result<String> {
        Ok(self.keys.feature_group(
            &Id::new(entity_type)?,
            &Id::new(entity_id)?,
            &Id::new(group)?,
        ))
    }

    /// Replaces group `group` of the entity with `features`; `ttl` None keeps it until replaced.
    /// Returns the update time (ms, server clock).
    pub async fn put(
        &self,
        entity_type: &str,
        entity_id: &str,
        group: &str,
        features: &BTreeMap<String, Value>,
        ttl: Option<Duration>,
    ) -> Result<u64> {
        if features.is_empty() {
            return Err(Error::InvalidArgument(
                "a feature group needs at least one feature".into(),
            ));
        }
        if let Some(bad) = features.keys().find(|k| k.is_empty() || k.starts_with('@')) {
            return Err(Error::InvalidArgument(format!(
                "feature name {bad:?} is empty or starts with '@'"
            )));
        }
        let mut invocation = scripts::FEATURES_PUT.prepare_invoke();
        invocation
            .key(self.key(entity_type, entity_id, group)?)
            .arg(ttl.map_or(0, |t| t.as_millis().max(1) as u64));
        for (name, value) in features {
            invocation.arg(name).arg(value.to_string());
        }
        let updated: u64 = invocation.invoke_async(&mut self.redis.conn()).await?;
        Ok(updated)
    }

    /// Groups `groups` of one entity, in one round trip; `None` for a group that is missing.
    pub async fn get(
        &self,
        entity_type: &str,
        entity_id: &str,
        groups: &[&str],
    ) -> Result<Vec<Option<FeatureGroup>>> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for g in groups {
            pipe.cmd("HGETALL")
                .arg(self.key(entity_type, entity_id, g)?);
        }
        let replies: Vec<Vec<(String, String)>> = pipe.query_async(&mut self.redis.conn()).await?;
        replies.into_iter().map(parse_group).collect()
    }

    /// Groups `groups` of many entities: one pipeline per entity, all in flight at once.
    pub async fn get_many(
        &self,
        entities: &[EntityRef],
        groups: &[&str],
    ) -> Result<Vec<Vec<Option<FeatureGroup>>>> {
        futures::future::try_join_all(
            entities
                .iter()
                .map(|e| self.get(&e.entity_type, &e.entity_id, groups)),
        )
        .await
    }

    /// Applies a feature update event: fields `entity_type`, `entity_id`, `group`, optionally
    /// `ttl_seconds` (absent: the default TTL; 0: no expiry), and the features (every other
    /// field; values parsed as JSON when they are).
    pub async fn apply_event(&self, event: &Event) -> Result<u64> {
        let field = |name: &str| {
            event
                .field(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let (Some(entity_type), Some(entity_id), Some(group)) =
            (field("entity_type"), field("entity_id"), field("group"))
        else {
            return Err(Error::InvalidArgument(
                "a feature update needs entity_type, entity_id and group".into(),
            ));
        };
        let ttl = match field("ttl_seconds") {
            None => self.ttl_for(None),
            Some(t) => self.ttl_for(Some(t.parse::<u64>().map_err(|_| {
                Error::InvalidArgument(format!("ttl_seconds: {t:?} is not a number of seconds"))
            })?)),
        };
        let features: BTreeMap<String, Value> = event
            .fields
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "entity_type" | "entity_id" | "group" | "ttl_seconds"
                )
            })
            .map(|(k, v)| {
                let text = String::from_utf8_lossy(v);
                (
                    k.clone(),
                    serde_json::from_str(&text)
                        .unwrap_or_else(|_| Value::String(text.into_owned())),
                )
            })
            .collect();
        self.put(&entity_type, &entity_id, &group, &features, ttl)
            .await
    }
}

fn parse_group(fields: Vec<(String, String)>) -> Result<Option<FeatureGroup>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut group = FeatureGroup {
        features: BTreeMap::new(),
        updated_ms: 0,
    };
    for (k, v) in fields {
        if k == "@ts" {
            group.updated_ms = v.parse().unwrap_or(0);
        } else {
            let value =
                serde_json::from_str(&v).map_err(|e| Error::Decode(format!("feature {k}: {e}")))?;
            group.features.insert(k, value);
        }
    }
    Ok(Some(group))
}
