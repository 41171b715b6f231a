//! The connection layer: one multiplexed connection per process, to a single node
//! (`redis://`, `rediss://`, `unix://`) or to a cluster (`redis+cluster://h:p,h:p`).
//!
//! Invariants: every call has a timeout (`command_timeout`); a dropped connection reconnects by
//! itself on a later call (redis-rs `ConnectionManager` / cluster connection), so a Redis restart
//! makes calls fail for a while, never forever; the single-node connection is made lazily, so a
//! process can start while Redis is down. Blocking commands (XREAD BLOCK) must not run on the
//! shared connection, since they would stall every request queued behind them: they take a
//! [`Redis::dedicated`] connection.
//!
//! A Redis that stops answering (hung, partitioned, a dead node's connection not yet known to be
//! dead) would cost every command its whole timeout. After a command times out or loses its
//! connection, a single node's shared connection's [`Breaker`] answers "unavailable" at once for three
//! timeouts (at most 3 s) and then lets one command through to probe; the first answer closes
//! it again. So a hung Redis costs one timeout per probe, not one per command, and an answering
//! one is used again within the cooldown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::{Error, Result};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`, `rediss://...`, `unix:///path`, or `redis+cluster://h:p,h:p`.
    pub url: String,
    /// Upper bound on one command's round trip (and on a connection attempt).
    pub command_timeout: Duration,
}

impl RedisConfig {
    /// A config for `url` with a 1 s command timeout.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            command_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Clone)]
enum Target {
    Single(redis::Client),
    /// The seed nodes: a dedicated connection gets a client of its own, with its own timeout.
    Cluster(Vec<String>),
}

/// A handle to Redis: cheap to clone, every clone shares the one multiplexed connection.
#[derive(Clone)]
pub struct Redis {
    conn: Conn,
    target: Target,
    command_timeout: Duration,
    pubsub_url: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("cluster", &self.is_cluster())
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

impl Redis {
    /// Connects to the Redis the URL names. A single node is connected lazily (this succeeds
    /// while Redis is down); a cluster needs one reachable seed node to learn the slot map.
    pub async fn connect(config: &RedisConfig) -> Result<Self> {
        let timeout = config.command_timeout;
        if let Some(hosts) = config.url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{h}"))
                .collect();
            if nodes.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "no hosts in cluster url {:?}",
                    config.url
                )));
            }
            let client = ClusterClient::builder(nodes.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .build()
                .map_err(|e| Error::InvalidArgument(format!("cluster url: {e}")))?;
            let conn = tokio::time::timeout(timeout * 5, client.get_async_connection())
                .await
                .map_err(|_| timeout_error())??;
            Ok(Redis {
                // No breaker in a cluster: one node timing out (a failover in progress) must not
                // stop the calls to every other node, and the cluster client retries on the
                // node that took the slots over.
                conn: Conn {
                    inner: Inner::Cluster(conn),
                    timeout,
                    breaker: None,
                },
                target: Target::Cluster(nodes.clone()),
                command_timeout: timeout,
                pubsub_url: nodes[0].clone(),
            })
        } else {
            let client = redis::Client::open(config.url.as_str())
                .map_err(|e| Error::InvalidArgument(format!("redis url: {e}")))?;
            let manager =
                ConnectionManager::new_lazy_with_config(client.clone(), manager_config(timeout))?;
            Ok(Redis {
                conn: Conn {
                    inner: Inner::Single(manager),
                    timeout,
                    breaker: Some(Arc::new(Breaker::new(timeout))),
                },
                target: Target::Single(client),
                command_timeout: timeout,
                pubsub_url: config.url.clone(),
            })
        }
    }

    /// The shared multiplexed connection (a clone of it). Every command on it has the timeout.
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// True when connected to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The per-command timeout.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// A connection of its own, for blocking commands; `timeout` must exceed the block time.
    /// The client library's own response timeout is set to `timeout` too (its default, 500 ms,
    /// would cut every longer block short).
    pub async fn dedicated(&self, timeout: Duration) -> Result<Conn> {
        let inner = match &self.target {
            Target::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.command_timeout))
                    .set_response_timeout(Some(timeout));
                let c = tokio::time::timeout(
                    self.command_timeout,
                    client.get_multiplexed_async_connection_with_config(&config),
                )
                .await
                .map_err(|_| timeout_error())??;
                Inner::Dedicated(c)
            }
            Target::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.clone())
                    .connection_timeout(self.command_timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .build()
                    .map_err(|e| Error::InvalidArgument(format!("cluster url: {e}")))?;
                let c =
                    tokio::time::timeout(self.command_timeout * 5, client.get_async_connection())
                        .await
                        .map_err(|_| timeout_error())??;
                Inner::Cluster(c)
            }
        };
        // A blocking reader's connection is its own: it waits, it does not trip anyone else.
        Ok(Conn {
            inner,
            timeout,
            breaker: None,
        })
    }

    /// A client for pub/sub subscriptions. In a cluster, PUBLISH reaches every node, so
    /// subscribing on one node (the first seed) receives every message.
    pub(crate) fn pubsub_client(&self) -> Result<redis::Client> {
        redis::Client::open(self.pubsub_url.as_str())
            .map_err(|e| Error::InvalidArgument(format!("redis url: {e}")))
    }

    /// PING with the timeout; `Ok` when Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// The server's `maxmemory-policy`; `None` where `CONFIG` is not allowed (managed
    /// services often rename or refuse it).
    pub async fn maxmemory_policy(&self) -> Result<Option<String>> {
        let mut c = self.conn();
        let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut c)
            .await;
        match reply {
            Ok(pair) => Ok(pair.into_iter().nth(1)),
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        // Reconnect attempts run in the background of a failing call; keep them short so an
        // outage answers fast and a restarted server is picked up within a second or two.
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(500))
}

fn timeout_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "redis command timed out",
    ))
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Dedicated(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Stops calls to a Redis that just failed to answer, for a cooldown, but one probe.
#[derive(Debug)]
struct Breaker {
    epoch: Instant,
    /// Milliseconds since `epoch` until which calls are refused; 0 while closed.
    open_until: AtomicU64,
    cooldown: Duration,
}

impl Breaker {
    fn new(timeout: Duration) -> Self {
        Breaker {
            epoch: Instant::now(),
            open_until: AtomicU64::new(0),
            cooldown: (timeout * 3).clamp(Duration::from_millis(100), Duration::from_secs(3)),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go to Redis: always while closed; once the cooldown is over, only
    /// the one caller that takes the probe.
    fn admit(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now();
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    now + self.cooldown.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// Records a call's outcome: no answer opens the breaker, any answer closes it.
    fn record<T>(&self, result: &redis::RedisResult<T>) {
        match result {
            Err(e) if e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() => {
                let until = self.now() + self.cooldown.as_millis() as u64;
                self.open_until.store(until.max(1), Ordering::Release);
            }
            _ => self.open_until.store(0, Ordering::Release),
        }
    }
}

fn open_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "redis skipped: it did not answer a moment ago",
    ))
}

/// A connection with a timeout on every call; implements redis-rs `ConnectionLike`, so
/// commands, pipelines and scripts run on it directly.
#[derive(Clone)]
pub struct Conn {
    inner: Inner,
    timeout: Duration,
    breaker: Option<Arc<Breaker>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let timeout = self.timeout;
        let breaker = self.breaker.clone();
        Box::pin(async move {
            if breaker.as_ref().is_some_and(|b| !b.admit()) {
                return Err(open_error());
            }
            let fut = match &mut self.inner {
                Inner::Single(c) => c.req_packed_command(cmd),
                Inner::Dedicated(c) => c.req_packed_command(cmd),
                Inner::Cluster(c) => c.req_packed_command(cmd),
            };
            let result = tokio::time::timeout(timeout, fut)
                .await
                .unwrap_or_else(|_| Err(timeout_error()));
            if let Some(b) = &breaker {
                b.record(&result);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let timeout = self.timeout;
        let breaker = self.breaker.clone();
        Box::pin(async move {
            if breaker.as_ref().is_some_and(|b| !b.admit()) {
                return Err(open_error());
            }
            let fut = match &mut self.inner {
                Inner::Single(c) => c.req_packed_commands(pipeline, offset, count),
                Inner::Dedicated(c) => c.req_packed_commands(pipeline, offset, count),
                Inner::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            };
            let result = tokio::time::timeout(timeout, fut)
                .await
                .unwrap_or_else(|_| Err(timeout_error()));
            if let Some(b) = &breaker {
                b.record(&result);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Dedicated(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}
