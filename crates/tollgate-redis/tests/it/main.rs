//! Behaviour of the Redis patterns against real `redis-server`s started by the testkit: every
//! pattern test runs on a single node and on a 3-master Redis Cluster (`pattern_suite!`).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, as the tests do"
)]

mod api_keys;
mod bad_input;
mod connection;
mod embedding_cache;
mod events;
mod features;
mod rate_limit;
mod registry;
mod response_cache;
mod responses;
mod results;
mod session;
mod stream;
mod vectors;

use std::time::Duration;

use tollgate_redis::{Keys, Redis, RedisConfig};
use tollgate_testkit::{shared_cluster, shared_redis, unique_prefix};

#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend {
    Single,
    Cluster,
}

/// A test's view of Redis: `conns` separate connections (separate sockets, as separate gateway
/// processes would have) and a key prefix no other test uses.
pub(crate) struct Ctx {
    pub(crate) conns: Vec<Redis>,
    pub(crate) keys: Keys,
}

impl Ctx {
    pub(crate) async fn new(backend: Backend, conns: usize) -> Self {
        let url = match backend {
            Backend::Single => shared_redis().url(),
            Backend::Cluster => shared_cluster().url(),
        };
        let mut handles = Vec::new();
        for _ in 0..conns.max(1) {
            handles.push(connect(&url).await);
        }
        Ctx {
            conns: handles,
            keys: Keys::new(unique_prefix()).unwrap(),
        }
    }

    pub(crate) fn redis(&self) -> Redis {
        self.conns[0].clone()
    }

    /// The connection for caller `i`, round-robin.
    pub(crate) fn conn_for(&self, i: usize) -> Redis {
        self.conns[i % self.conns.len()].clone()
    }
}

pub(crate) async fn connect(url: &str) -> Redis {
    let config = RedisConfig {
        url: url.to_owned(),
        command_timeout: Duration::from_secs(5),
    };
    Redis::connect(&config).await.unwrap()
}

/// Runs each named `async fn(Backend)` as two tests: `single` and `cluster`.
macro_rules! pattern_suite {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn single() {
                    super::$name($crate::Backend::Single).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cluster() {
                    super::$name($crate::Backend::Cluster).await
                }
            }
        )*
    };
}
pub(crate) use pattern_suite;
