//! Fire-and-forget fan-out over Redis pub/sub: a message reaches whoever is subscribed at that
//! moment and no one else (use a token stream or the event bus when it must not be lost).
//! In a cluster, PUBLISH reaches every node, so a subscription on one node sees all messages.

use futures::StreamExt;

use crate::conn::Redis;
use crate::error::Result;
use crate::keys::{Id, Keys};

/// Pub/sub channels under one prefix.
#[derive(Debug, Clone)]
pub struct Channels {
    redis: Redis,
    keys: Keys,
}

impl Channels {
    /// Channels under `keys`' prefix.
    pub fn new(redis: Redis, keys: Keys) -> Self {
        Channels { redis, keys }
    }

    /// Publishes `payload`; returns how many subscribers (on the receiving node) got it.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<u64> {
        let n: u64 = redis::cmd("PUBLISH")
            .arg(self.keys.channel(&Id::new(channel)?))
            .arg(payload)
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(n)
    }

    /// Subscribes to `channel` on a connection of its own.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription> {
        let name = self.keys.channel(&Id::new(channel)?);
        let client = self.redis.pubsub_client()?;
        let mut pubsub =
            tokio::time::timeout(self.redis.command_timeout(), client.get_async_pubsub())
                .await
                .map_err(|_| timeout())??;
        tokio::time::timeout(self.redis.command_timeout(), pubsub.subscribe(&name))
            .await
            .map_err(|_| timeout())??;
        Ok(Subscription {
            messages: pubsub.into_on_message(),
        })
    }
}

fn timeout() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "redis subscribe timed out",
    ))
}

/// An active subscription; dropping it unsubscribes.
pub struct Subscription {
    messages: redis::aio::PubSubStream,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next message's payload; `None` when the connection closed.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        self.messages
            .next()
            .await
            .map(|m| m.get_payload_bytes().to_vec())
    }
}
