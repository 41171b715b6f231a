//! Redis patterns for LLM applications, each correct on a single node and on a Redis Cluster.
//!
//! # Layout
//! - [`conn`]: the connection (single node or cluster), a timeout on every call, reconnects.
//! - [`keys`]: every key, built in one place with its hash tag; caller ids encoded safely.
//! - [`response_cache`]: exact response cache, O(1) invalidation, cross-process single-flight.
//! - [`session`]: conversation sessions (metadata hash + message stream), windows, owners.
//! - [`stream`]: token streams, resumable from any entry, readable from any process.
//! - [`pubsub`]: fire-and-forget fan-out.
//! - [`rate_limit`]: GCRA, sliding log, sliding counter, fixed window, token bucket, concurrency
//!   leases, and an all-or-nothing multi-limit check.
//! - [`embedding_cache`]: embeddings by model, version and text hash.
//! - [`api_keys`]: API keys, stored hashed.
//! - [`events`]: an event bus on Streams: consumer groups, reclaim, dead letters.
//! - [`features`]: the online feature store.
//! - [`registry`]: the model registry, changed at runtime, with sticky A/B experiments.
//! - [`vectors`]: vector collections in Redis, searched in an in-process index kept in step.
//! - [`responses`]: stored responses of the Responses API, with tombstones.
//! - [`spend`]: spend per API key and model per day and month, and budgets checked against it.
//! - [`semantic_cache`]: exact-cache answers found again by the meaning of the question.
//!
//! Every script is a file in `lua/` with its contract in a header, run by EVALSHA. Every script
//! uses the server's clock and every write sets a TTL (the one exception is documented in
//! `lua/cache_store.lua`: a generation counter lives at least as long as its entries).

pub mod api_keys;
pub mod conn;
pub mod embedding_cache;
pub mod error;
pub mod events;
pub mod features;
pub mod keys;
pub mod pubsub;
pub mod rate_limit;
pub mod registry;
pub mod response_cache;
pub mod responses;
pub mod results;
mod scripts;
pub mod semantic_cache;
pub mod session;
pub mod spend;
pub mod stream;
pub mod vectors;

pub use api_keys::{ApiKeyRecord, ApiKeys};
pub use conn::{Conn, Redis, RedisConfig};
pub use embedding_cache::EmbeddingCache;
pub use error::{Error, Result};
pub use events::{Consumer, Event, EventBus, EventConfig, StartAt};
pub use features::{EntityRef, FeatureGroup, FeatureStore};
pub use keys::{Id, Keys};
pub use pubsub::{Channels, Subscription};
pub use rate_limit::{
    Check, Decision, Lease, Limit, LimitKey, MultiDecision, PreparedChecks, RateLimiter, Waiter,
};
pub use registry::{Arm, DeploymentEntry, DeploymentStatus, Experiment, ModelEntry, Registry};
pub use response_cache::{
    CacheConfig, CacheKey, CacheStats, ComputeError, Lead, Outcome, ResponseCache, Stored,
};
pub use responses::{ResponseStore, StoredResponse};
pub use results::{ResultCache, TierHit};
pub use semantic_cache::{CheckPolicy, CheckStats, SemanticCache, SemanticHit};
pub use session::{Appended, SessionConfig, SessionInfo, SessionStore, Unsummarized, Window};
pub use spend::{
    Budget, BudgetAlert, Exhausted, Spend, SpendLedger, SpendPeriod, WindowBudget, WindowSpend,
};
pub use stream::{
    EventKind, Follower, Producer, StreamConfig, StreamEvent, StreamReader, TokenStreams,
};
pub use vectors::{
    CollectionInfo, VectorCollections, VectorConfig, VectorHit, VectorItem, VectorSearch,
};

/// This machine's clock, ms since the epoch (0 before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A duration in whole milliseconds for a Redis argument, at least 1 (Redis rejects 0 TTLs).
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
