//! Configuration: compiled-in defaults (`config/default.toml`) → a file → environment.
//!
//! Tables merge and values replace, so a file names only what it changes. Every problem is
//! collected, not just the first: unknown fields anywhere, type errors in every section, and
//! the checks of [`Config::validate`] (`tollgate config check` prints them all).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tollgate_core::Normalization;

const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ConfigErrors(pub Vec<String>);

/// Declares the configuration's sections once: the `Config` struct, and how a merged table
/// becomes one, every section parsed and every problem of every section collected.
macro_rules! sections {
    ($($(#[$doc:meta])* $name:ident: $ty:ty,)*) => {
        /// The whole configuration.
        #[derive(Debug, Clone)]
        pub struct Config {
            $($(#[$doc])* pub $name: $ty,)*
        }

        /// The section names, as a file writes them.
        const SECTIONS: &[&str] = &[$(stringify!($name)),*];

        impl Config {
            /// Parses each section of `table` (a missing one is empty: the defaults fill it).
            fn sections(table: &mut toml::Table, errors: &mut Vec<String>) -> Option<Config> {
                let mut take = |name: &str| {
                    table
                        .remove(name)
                        .unwrap_or_else(|| toml::Value::Table(toml::Table::new()))
                };
                $(let $name = section::<$ty>(stringify!($name), take(stringify!($name)), errors);)*
                Some(Config { $($name: $name?,)* })
            }
        }
    };
}

sections! {
    server: ServerConfig,
    redis: RedisSection,
    embedded_redis: EmbeddedSection,
    cache: CacheSection,
    limits: LimitsSection,
    tiers: BTreeMap<String, Limits>,
    /// A model's capacity, shared by every key that calls it.
    capacity: BTreeMap<String, Capacity>,
    /// A tenant's own settings (its budgets, for all its keys together).
    tenants: BTreeMap<String, TenantSection>,
    sessions: SessionsSection,
    streams: StreamsSection,
    embeddings: EmbeddingsSection,
    semantic_cache: SemanticCacheSection,
    vectors: VectorsSection,
    features: FeaturesSection,
    events: EventsSection,
    retry: RetrySection,
    providers: BTreeMap<String, ProviderSection>,
    aliases: BTreeMap<String, AliasSection>,
    prices: BTreeMap<String, Price>,
    database: DatabaseSection,
    outbox: OutboxSection,
    responses: ResponsesSection,
    summaries: SummariesSection,
    alerts: AlertsSection,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSection {
    /// `postgres://...` or `sqlite:PATH`; empty: SQLite in the data dir (`tollgate.db`).
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSection {
    /// Outbox entries committed per database transaction.
    pub batch: usize,
    /// An entry a writer left unacknowledged this long is written by another.
    pub claim_idle_seconds: u64,
    /// A writer that found less than a batch waits this long before reading again.
    pub linger_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResponsesSection {
    /// How long a stored response stays in Redis (the database keeps it after).
    pub ttl_seconds: u64,
}

/// Where budget alerts go besides the event bus (`budget-alerts`, in the key's tenant).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// Each alert is POSTed here as JSON (empty: none).
    pub webhook_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SummariesSection {
    pub enabled: bool,
    /// The model that writes summaries.
    pub model: String,
    /// A conversation (a response chain, a session) above this many tokens has its older
    /// turns summarized.
    pub token_budget: u32,
    /// The most recent turns kept word for word, up to this many tokens.
    pub keep_recent_tokens: u32,
    /// Longest summary, in tokens.
    pub max_tokens: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    pub listen: String,
    pub max_body_bytes: usize,
    pub shutdown_drain_seconds: u64,
    /// The longest a connection waits for a request's headers, idle keep-alive included.
    pub idle_timeout_seconds: u64,
    /// Connections open at once.
    pub max_connections: usize,
    pub master_key: String,
    /// Threads serving requests (0: [`ServerConfig::threads`] decides).
    pub worker_threads: usize,
}

impl ServerConfig {
    /// Threads serving requests: `worker_threads`, else the machine's `cores`, less one when
    /// Redis (`redis_url`, empty for the embedded one) runs on this machine: it is one busy
    /// thread of its own, and on a small machine a thread more than there are cores to run them
    /// costs every request its wakeups (measured on 2 cores: CPU per cache hit 34 µs with one
    /// thread against 37-72 µs with two).
    pub fn threads(&self, cores: usize, redis_url: &str) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        let local = redis_url.is_empty()
            || redis_url.starts_with("unix:")
            || redis_url.starts_with("redis+unix:")
            || redis_url
                .split("://")
                .nth(1)
                .map(|rest| rest.rsplit('@').next().unwrap_or(rest))
                .is_some_and(|host| {
                    ["localhost", "127.", "[::1]"]
                        .iter()
                        .any(|local| host.starts_with(local))
                });
        if local {
            cores.saturating_sub(1).max(1)
        } else {
            cores.max(1)
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSection {
    pub url: String,
    pub command_timeout_ms: u64,
    pub key_prefix: String,
    pub cache_url: String,
    pub limits_url: String,
    pub sessions_url: String,
    pub streams_url: String,
    pub features_url: String,
    pub vectors_url: String,
    pub events_url: String,
    pub outbox_url: String,
}

/// What a concern's Redis should do when full, after the seed's five deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Anything may go (an evicting cache: `allkeys-lfu`).
    Any,
    /// Only keys with a TTL may go (`volatile-lru`): what has none must stay.
    VolatileOnly,
    /// Nothing may go (`noeviction`): what it holds is the only copy, or must answer at once.
    None,
}

impl RedisSection {
    /// Each concern's Redis URL as configured (empty: the main one), with what it must keep.
    pub fn concerns(&self) -> [(&'static str, &str, Eviction); 9] {
        [
            ("url", &self.url, Eviction::None),
            ("cache_url", &self.cache_url, Eviction::Any),
            ("limits_url", &self.limits_url, Eviction::VolatileOnly),
            ("sessions_url", &self.sessions_url, Eviction::Any),
            ("streams_url", &self.streams_url, Eviction::VolatileOnly),
            ("features_url", &self.features_url, Eviction::None),
            ("vectors_url", &self.vectors_url, Eviction::None),
            ("events_url", &self.events_url, Eviction::None),
            ("outbox_url", &self.outbox_url, Eviction::None),
        ]
    }
}

impl Eviction {
    /// Why `policy` (a `maxmemory-policy`) contradicts what a concern needs, if it does.
    pub fn contradiction(self, policy: &str) -> Option<&'static str> {
        let evicts_any = policy.starts_with("allkeys-");
        let evicts = evicts_any || policy.starts_with("volatile-");
        match self {
            Eviction::None if evicts => Some(
                "it evicts when full, and what this concern holds must stay (noeviction advised)",
            ),
            Eviction::VolatileOnly if evicts_any => Some(
                "it evicts keys without a TTL when full, and this concern has some that must stay (volatile-lru advised)",
            ),
            Eviction::Any if policy == "noeviction" => Some(
                "it never evicts, so a full cache refuses writes instead of making room (allkeys-lfu advised)",
            ),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddedSection {
    pub max_memory: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CacheSection {
    pub enabled: bool,
    pub default_ttl_seconds: u64,
    pub max_ttl_seconds: u64,
    pub max_value_bytes: usize,
    pub cache_non_deterministic: bool,
    pub coalesce_wait_seconds: u64,
    pub normalization: Normalization,
}

/// What a limit does when Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailPolicy {
    /// Admit, enforcing this instance's share in process.
    Open,
    /// Refuse with 503.
    Closed,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LimitsSection {
    pub on_redis_error: FailPolicy,
    /// Overrides `on_redis_error` for request-count limits.
    #[serde(default)]
    pub requests_on_redis_error: Option<FailPolicy>,
    /// Overrides `on_redis_error` for token limits.
    #[serde(default)]
    pub tokens_on_redis_error: Option<FailPolicy>,
    /// Overrides `on_redis_error` for concurrency limits.
    #[serde(default)]
    pub concurrency_on_redis_error: Option<FailPolicy>,
    pub expected_instances: u64,
    pub default_tier: String,
    pub concurrency_lease_seconds: u64,
}

/// Limits of a tier, or a key's own (which override its tier's, field by field).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u64>,
    /// How long a request refused only for want of concurrency slots (its own, or its model's
    /// capacity) waits for one, in order of arrival across replicas (0: refused at once). A
    /// request may ask for less with `x-tollgate-queue-wait`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_wait_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelLimits>,
    /// Dollars a key may spend per UTC day (the request that finds it spent is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_budget_usd: Option<f64>,
    /// Dollars a key may spend per UTC month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget_usd: Option<f64>,
    /// Dollars a key may spend within any window (a minute to a month), with alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<Vec<WindowBudget>>,
}

/// At most `usd` spent within any `window`; an alert (an event and the webhook) when spend
/// reaches each share in `alert_at`, at most once per window.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowBudget {
    /// `30m`, `1h`, `6h`, `1d`, `7d`, `30d`: a number and a unit (m, h, d), one minute to 31 days.
    pub window: String,
    pub usd: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_at: Vec<f64>,
}

impl WindowBudget {
    /// The window as a duration; `None` when it is not one from a minute to 31 days.
    pub fn duration(&self) -> Option<Duration> {
        let w = self.window.trim();
        let (number, unit) = w.split_at(w.len().checked_sub(1)?);
        let n: u64 = number.parse().ok()?;
        let secs = n.checked_mul(match unit {
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return None,
        })?;
        (60..=31 * 86_400)
            .contains(&secs)
            .then(|| Duration::from_secs(secs))
    }

    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.duration().is_none() {
            return Some(format!(
                "window {:?} must be a number and m, h or d, from 1m to 31d",
                self.window
            ));
        }
        if !(self.usd >= 0.0 && self.usd.is_finite()) {
            return Some("usd must be a number of dollars, 0 or more".into());
        }
        if self.alert_at.iter().any(|s| !(*s > 0.0 && *s <= 1.0)) {
            return Some("alert_at shares must be above 0 and at most 1".into());
        }
        None
    }
}

/// What a model (`provider/model` or an alias, as requests name it) can take across every
/// replica and every key: requests that go upstream, their tokens and the slots they hold.
/// Answers from the cache cost the upstream nothing and are not counted.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub max_concurrency: Option<u64>,
    /// Dollars spent on the model within any window, by every key together, with alerts.
    #[serde(default)]
    pub budgets: Vec<WindowBudget>,
}

/// A tenant's own settings (`[tenants.NAME]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    /// Dollars its keys together may spend within any window, with alerts.
    #[serde(default)]
    pub budgets: Vec<WindowBudget>,
}

/// Per-model limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

impl Limits {
    /// `self` over `base`: every field `self` sets wins.
    pub fn over(&self, base: &Limits) -> Limits {
        let mut models = base.models.clone();
        for (m, l) in &self.models {
            let b = models.remove(m).unwrap_or_default();
            models.insert(
                m.clone(),
                ModelLimits {
                    rpm: l.rpm.or(b.rpm),
                    tpm: l.tpm.or(b.tpm),
                },
            );
        }
        Limits {
            rpm: self.rpm.or(base.rpm),
            tpm: self.tpm.or(base.tpm),
            max_concurrency: self.max_concurrency.or(base.max_concurrency),
            queue_wait_seconds: self.queue_wait_seconds.or(base.queue_wait_seconds),
            models,
            daily_budget_usd: self.daily_budget_usd.or(base.daily_budget_usd),
            monthly_budget_usd: self.monthly_budget_usd.or(base.monthly_budget_usd),
            budgets: self.budgets.clone().or_else(|| base.budgets.clone()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SessionsSection {
    /// A conversation with no message for this long is over: gone from Redis and the database
    /// (its id stays its owner's).
    pub ttl_seconds: u64,
    /// A session with no message for this long leaves Redis (memory); the database keeps it and
    /// its next use reads it back. Without a database, Redis keeps it for `ttl_seconds`.
    pub idle_ttl_seconds: u64,
    pub max_messages: u64,
    pub history_token_budget: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamsSection {
    pub max_len: u64,
    pub ttl_active_seconds: u64,
    pub ttl_after_end_seconds: u64,
    /// A generation whose process shows no life for this long is reported to its readers as
    /// interrupted.
    pub producer_timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingsSection {
    /// How long a computed embedding stays in the embedding cache.
    pub cache_ttl_seconds: u64,
    /// Most inputs in one `/v1/embeddings` request.
    pub max_inputs: usize,
    /// The version of a model's vectors, per model (`"openai/text-embedding-3-small" = "2"`):
    /// change it when the model behind a name changes, and its cached embeddings and semantic
    /// partitions start afresh. Local models default to their weights' hash, others to "1".
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SemanticCacheSection {
    pub enabled: bool,
    /// The model that embeds questions (any provider's embedding model).
    pub embedding_model: String,
    /// Cosine similarity at or above which a cached answer serves another question.
    pub threshold: f32,
    /// Per-model thresholds over `threshold`.
    #[serde(default)]
    pub thresholds: BTreeMap<String, f32>,
    /// When set, each model's threshold follows this error rate instead of staying fixed: a
    /// share (`check_rate`) of the candidates near or above it also go upstream, the two answers
    /// are compared, and the threshold (shared by every replica) moves until about this share
    /// of the candidates checked are wrong. It starts from the configured threshold.
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// The share of candidates checked against the upstream (each check is one upstream call).
    #[serde(default = "default_check_rate")]
    pub check_rate: f64,
    /// How far below the threshold candidates are still checked (so it can come down).
    #[serde(default = "default_check_band")]
    pub check_band: f32,
    /// How far one wrong candidate raises the threshold (times `1 - max_error_rate`); a right
    /// one lowers it by this times `max_error_rate`.
    #[serde(default = "default_check_step")]
    pub check_step: f64,
    /// The least threshold the checks may bring a model to, however right its candidates were.
    #[serde(default = "default_min_threshold")]
    pub min_threshold: f32,
    /// How much longer than embeddings typically take a request waits for its question's
    /// before going on as a miss.
    pub lookup_budget_ms: u64,
    /// Questions embedded at once for the semantic cache (lookups and late indexing); a request
    /// that finds none free goes on as a miss without waiting.
    pub embedding_slots: usize,
    /// The share of time an in-process embedding model may spend on the semantic cache while
    /// the gateway is busy and no lookup hits; it rises with the hit rate to all of it.
    #[serde(default = "default_embedder_share")]
    pub embedder_share: f64,
    /// Questions a partition keeps (in Redis and in each replica's memory); past it, indexing
    /// one drops those whose answers expire soonest.
    pub max_entries_per_partition: usize,
    /// Questions each replica keeps in memory across partitions; past it, the partitions
    /// looked up least recently are unloaded (kept in Redis, loaded again when looked up).
    pub max_loaded_entries: usize,
}

impl SemanticCacheSection {
    /// The threshold for `model`.
    pub fn threshold_for(&self, model: &str) -> f32 {
        self.thresholds
            .get(model)
            .copied()
            .unwrap_or(self.threshold)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventsSection {
    /// Deliveries after which an entry a group keeps failing on goes to the dead-letter stream.
    pub max_deliveries: u64,
    /// An entry a consumer has held this long without acknowledging it goes to another.
    pub claim_idle_seconds: u64,
    /// The longest a group read over HTTP waits for new entries.
    pub max_block_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FeaturesSection {
    /// How long a feature group written without `ttl_seconds` lives; 0: it never expires.
    pub default_ttl_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VectorsSection {
    /// The model that embeds `text` stored in, or searched for in, a vector collection.
    pub embedding_model: String,
    /// Changes kept in a collection's change log; an instance further behind reloads.
    pub log_max_len: usize,
    /// Largest `k` a search may ask for.
    pub max_k: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetrySection {
    pub max_retries: u32,
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

/// Which API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Mock,
    Openai,
    Anthropic,
    /// In-process models (candle): `local/all-minilm-l6-v2`, `local/smollm2-135m-instruct`.
    Local,
    /// Azure OpenAI: `base_url` is the resource's endpoint, a model is a deployment.
    Azure,
    /// Google Gemini through the Generative Language API (Google AI Studio): an API key.
    Gemini,
    /// Google Gemini through Vertex AI: a project, a location and a service account.
    Vertex,
    /// AWS Bedrock's Converse API: a region and AWS credentials (SigV4).
    Bedrock,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProviderSection {
    pub kind: ProviderKind,
    /// Base URL (`https://api.openai.com/v1`, `http://localhost:11434/v1`, ...).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The API key itself (prefer `api_key_env`).
    #[serde(default)]
    pub api_key: Option<String>,
    /// The environment variable holding the API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Models listed by `GET /v1/models` (`name/model`).
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_first_byte_ms")]
    pub first_byte_timeout_ms: u64,
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    /// A whole (non-streamed) answer, request to last byte.
    #[serde(default = "default_whole_ms")]
    pub whole_timeout_ms: u64,
    /// Mock only: delay before the first chunk.
    #[serde(default)]
    pub first_token_latency_ms: u64,
    /// Mock only: chunks per second (0: all at once).
    #[serde(default)]
    pub tokens_per_second: f64,
    /// Mock only: fraction of requests that fail with 500.
    #[serde(default)]
    pub error_rate: f64,
    /// Local only: where the weights are (empty: `TOLLGATE_MODEL_DIR`, else the user's cache).
    #[serde(default)]
    pub model_dir: String,
    /// Local only: load the models at start instead of at their first request.
    #[serde(default)]
    pub preload: bool,
    /// Azure only: the `api-version` (empty: a current GA version).
    #[serde(default)]
    pub api_version: String,
    /// Azure only: Microsoft Entra ID tokens instead of the resource's key.
    #[serde(default)]
    pub entra: Option<EntraSection>,
    /// Vertex only: the Google Cloud project (empty: the service account's).
    #[serde(default)]
    pub project: String,
    /// Vertex only: the region (`us-central1`, `europe-west4`, ...).
    #[serde(default)]
    pub location: String,
    /// Vertex: the service account's JSON key file (empty: `GOOGLE_APPLICATION_CREDENTIALS`).
    /// Bedrock: a shared credentials file (empty: the environment's keys, else
    /// `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`).
    #[serde(default)]
    pub credentials_file: String,
    /// Bedrock only: the region (empty: `AWS_REGION`, else `AWS_DEFAULT_REGION`).
    #[serde(default)]
    pub region: String,
    /// Bedrock only: the shared credentials file's profile (empty: `AWS_PROFILE`, else
    /// `default`).
    #[serde(default)]
    pub profile: String,
}

/// Where a provider's Microsoft Entra ID tokens come from. The first that is set wins:
/// `token_file`, `token_env`, then an application's credentials (`tenant_id`, `client_id` and a
/// client secret or a federated token file; each defaults to the standard `AZURE_*` variable).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraSection {
    /// A file holding a token that something else keeps fresh.
    #[serde(default)]
    pub token_file: Option<String>,
    /// The environment variable holding a token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Default: `AZURE_TENANT_ID`.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Default: `AZURE_CLIENT_ID`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The environment variable holding the client secret. Default: `AZURE_CLIENT_SECRET`.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// A workload identity's federated token. Default: `AZURE_FEDERATED_TOKEN_FILE`.
    #[serde(default)]
    pub federated_token_file: Option<String>,
    /// Default: `https://login.microsoftonline.com`.
    #[serde(default)]
    pub authority: Option<String>,
}

fn default_connect_ms() -> u64 {
    5_000
}
fn default_first_byte_ms() -> u64 {
    60_000
}
fn default_idle_ms() -> u64 {
    60_000
}
fn default_whole_ms() -> u64 {
    600_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasSection {
    pub deployments: Vec<AliasDeployment>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasDeployment {
    /// `provider/model`.
    pub model: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Price {
    /// The cost of `prompt` + `completion` tokens.
    pub fn cost(&self, prompt: u64, completion: u64) -> f64 {
        (prompt as f64 * self.input_per_million + completion as f64 * self.output_per_million) / 1e6
    }

    /// The compiled-in price of `model` (`provider/name` or a bare name): the entry of
    /// `config/prices.toml` its name is, or else the longest one it starts with.
    pub fn builtin(model: &str) -> Option<Price> {
        static PRICES: std::sync::LazyLock<BTreeMap<String, Price>> =
            std::sync::LazyLock::new(|| {
                let table: BTreeMap<String, [f64; 2]> =
                    toml::from_str(include_str!("../../../config/prices.toml")).unwrap_or_default();
                table
                    .into_iter()
                    .map(|(name, [input, output])| {
                        let price = Price {
                            input_per_million: input,
                            output_per_million: output,
                        };
                        (name, price)
                    })
                    .collect()
            });
        let name = model.split_once('/').map_or(model, |(_, name)| name);
        let name = ["us.", "eu.", "apac.", "us-gov.", "global."]
            .iter()
            .find_map(|region| name.strip_prefix(region))
            .unwrap_or(name);
        // The longest entry `name` starts with is the last one in order at or before it.
        PRICES
            .range::<str, _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(name)))
            .rev()
            .take_while(|(entry, _)| name.as_bytes().first() == entry.as_bytes().first())
            .find(|(entry, _)| name.starts_with(entry.as_str()))
            .map(|(_, price)| *price)
    }
}

impl Config {
    /// The price of a request for `model` answered by `route` (the deployment, when known):
    /// `[prices]` for the model, then for the route, then the compiled-in price of the route's
    /// model, then of the model's.
    pub fn price(&self, model: &str, route: Option<&str>) -> Option<Price> {
        self.prices
            .get(model)
            .or_else(|| route.and_then(|r| self.prices.get(r)))
            .copied()
            .or_else(|| route.and_then(Price::builtin))
            .or_else(|| Price::builtin(model))
    }
}

impl Config {
    /// Defaults → `file` → environment (`TOLLGATE_LISTEN`, `TOLLGATE_REDIS_URL`,
    /// `TOLLGATE_MASTER_KEY`), then [`Config::validate`].
    pub fn load(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigErrors> {
        let mut merged: toml::Table =
            toml::from_str(DEFAULTS).map_err(|e| ConfigErrors(vec![format!("defaults: {e}")]))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
            merge(&mut merged, table);
        }
        let mut overrides = toml::Table::new();
        for (var, section, field) in [
            ("TOLLGATE_LISTEN", "server", "listen"),
            ("TOLLGATE_REDIS_URL", "redis", "url"),
            ("TOLLGATE_MASTER_KEY", "server", "master_key"),
            ("TOLLGATE_DATABASE_URL", "database", "url"),
        ] {
            if let Some(v) = env.get(var) {
                let t = overrides
                    .entry(section)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(t) = t {
                    t.insert(field.into(), toml::Value::String(v.clone()));
                }
            }
        }
        merge(&mut merged, overrides);
        Self::from_table(merged)
    }

    fn from_table(mut table: toml::Table) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                errors.push(format!("unknown section `{key}`"));
            }
        }
        let Some(config) = Config::sections(&mut table, &mut errors) else {
            return Err(ConfigErrors(errors));
        };
        errors.extend(config.problems());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Every semantic problem (empty when the configuration is usable).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.server.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "server.listen: {:?} is not an address like 127.0.0.1:8080",
                self.server.listen
            ));
        }
        if self.server.idle_timeout_seconds == 0 {
            p.push("server.idle_timeout_seconds: must be at least 1".into());
        }
        if self.server.max_connections == 0 {
            p.push("server.max_connections: must be at least 1".into());
        }
        if self.server.max_body_bytes < 1024 {
            p.push("server.max_body_bytes: must be at least 1024".into());
        }
        if self.embeddings.cache_ttl_seconds == 0 || self.embeddings.max_inputs == 0 {
            p.push("embeddings: cache_ttl_seconds and max_inputs must be at least 1".into());
        }
        let thresholds = std::iter::once((
            "semantic_cache.threshold".to_owned(),
            self.semantic_cache.threshold,
        ))
        .chain(
            self.semantic_cache
                .thresholds
                .iter()
                .map(|(m, t)| (format!("semantic_cache.thresholds.{m:?}"), *t)),
        );
        for (model, version) in &self.embeddings.versions {
            if version.is_empty()
                || !version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                p.push(format!(
                    "embeddings.versions.{model:?}: {version:?} must be letters, digits, '.', '-' or '_'"
                ));
            }
        }
        if self.events.max_deliveries == 0 || self.events.claim_idle_seconds == 0 {
            p.push("events: max_deliveries and claim_idle_seconds must be at least 1".into());
        }
        let sc = &self.semantic_cache;
        if sc.max_error_rate.is_some_and(|r| !(r > 0.0 && r < 1.0)) {
            p.push("semantic_cache.max_error_rate: must be between 0 and 1 (exclusive)".into());
        }
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        let valid = unit(sc.check_rate)
            && unit(f64::from(sc.check_band))
            && unit(f64::from(sc.min_threshold))
            && sc.check_step > 0.0
            && sc.check_step <= 1.0;
        if !valid {
            p.push(
                "semantic_cache: check_rate, check_band and min_threshold must be between 0 and 1, check_step in (0, 1]"
                    .into(),
            );
        }
        if !unit(sc.embedder_share) {
            p.push("semantic_cache.embedder_share: must be between 0 and 1".into());
        }
        for (name, t) in thresholds {
            if !(0.0..=1.0).contains(&t) {
                p.push(format!(
                    "{name}: {t} is not a cosine similarity between 0 and 1"
                ));
            }
        }
        if self.vectors.log_max_len < 100 || self.vectors.max_k == 0 {
            p.push("vectors: log_max_len must be at least 100 and max_k at least 1".into());
        }
        if !self.vectors.embedding_model.contains('/')
            && !self.aliases.contains_key(&self.vectors.embedding_model)
        {
            p.push(format!(
                "vectors.embedding_model: {:?} is neither provider/model nor an alias",
                self.vectors.embedding_model
            ));
        }
        for (name, url, _) in self.redis.concerns() {
            if !url.is_empty()
                && ![
                    "redis://",
                    "rediss://",
                    "unix://",
                    "redis+unix://",
                    "redis+cluster://",
                ]
                .iter()
                .any(|s| url.starts_with(s))
            {
                p.push(format!("redis.{name}: {url:?} must start with redis://, rediss://, unix:// or redis+cluster://"));
            }
        }
        if self.redis.command_timeout_ms == 0 {
            p.push("redis.command_timeout_ms: must be at least 1".into());
        }
        if self.redis.key_prefix.contains(['{', '}']) {
            p.push("redis.key_prefix: must not contain { or }".into());
        }
        if self.cache.default_ttl_seconds == 0 || self.cache.max_ttl_seconds == 0 {
            p.push("cache: TTLs must be at least 1 second".into());
        }
        if self.sessions.ttl_seconds == 0 || self.sessions.idle_ttl_seconds == 0 {
            p.push("sessions: TTLs must be at least 1 second".into());
        }
        if self.sessions.idle_ttl_seconds > self.sessions.ttl_seconds {
            p.push(format!(
                "sessions.idle_ttl_seconds: {} is longer than sessions.ttl_seconds ({}); a session idle in Redis would outlive the conversation",
                self.sessions.idle_ttl_seconds, self.sessions.ttl_seconds
            ));
        }
        if self.limits.expected_instances == 0 {
            p.push("limits.expected_instances: must be at least 1".into());
        }
        if !self.tiers.contains_key(&self.limits.default_tier) {
            p.push(format!(
                "limits.default_tier: no tier named {:?}",
                self.limits.default_tier
            ));
        }
        if !self.database.url.is_empty()
            && !["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|s| self.database.url.starts_with(s))
        {
            p.push(
                "database.url (TOLLGATE_DATABASE_URL): must start with postgres:// or sqlite:"
                    .into(),
            );
        }
        if self.outbox.batch == 0 || self.outbox.claim_idle_seconds == 0 {
            p.push("outbox: batch and claim_idle_seconds must be at least 1".into());
        }
        if self.responses.ttl_seconds == 0 {
            p.push("responses.ttl_seconds: must be at least 1".into());
        }
        if self.summaries.keep_recent_tokens >= self.summaries.token_budget {
            p.push("summaries: keep_recent_tokens must be below token_budget".into());
        }
        if self.limits.concurrency_lease_seconds == 0 {
            p.push("limits.concurrency_lease_seconds: must be at least 1".into());
        }
        for (tier, limits) in &self.tiers {
            for b in limits.budgets.iter().flatten() {
                if let Some(problem) = b.problem() {
                    p.push(format!("tiers.{tier}.budgets: {problem}"));
                }
            }
            if limits
                .queue_wait_seconds
                .is_some_and(|w| !(0.0..=3600.0).contains(&w))
            {
                p.push(format!(
                    "tiers.{tier}.queue_wait_seconds: must be between 0 and 3600"
                ));
            }
            for (what, v) in [
                ("daily_budget_usd", limits.daily_budget_usd),
                ("monthly_budget_usd", limits.monthly_budget_usd),
            ] {
                if v.is_some_and(|v| !(v >= 0.0 && v.is_finite())) {
                    p.push(format!(
                        "tiers.{tier}.{what}: must be a number of dollars, 0 or more"
                    ));
                }
            }
            for (what, v) in [
                ("rpm", limits.rpm),
                ("tpm", limits.tpm),
                ("max_concurrency", limits.max_concurrency),
            ] {
                if v == Some(0) {
                    p.push(format!(
                        "tiers.{tier}.{what}: must be at least 1 (leave it out for no limit)"
                    ));
                }
            }
        }
        for (tenant, section) in &self.tenants {
            for b in &section.budgets {
                if let Some(problem) = b.problem() {
                    p.push(format!("tenants.{tenant:?}.budgets: {problem}"));
                }
            }
        }
        for (model, capacity) in &self.capacity {
            for b in &capacity.budgets {
                if let Some(problem) = b.problem() {
                    p.push(format!("capacity.{model:?}.budgets: {problem}"));
                }
            }
            let known = self.aliases.contains_key(model)
                || model
                    .split_once('/')
                    .is_some_and(|(provider, _)| self.providers.contains_key(provider));
            if !known {
                p.push(format!(
                    "capacity.{model:?}: neither provider/model of a configured provider nor an alias"
                ));
            }
            for (what, v) in [
                ("rpm", capacity.rpm),
                ("tpm", capacity.tpm),
                ("max_concurrency", capacity.max_concurrency),
            ] {
                if v == Some(0) {
                    p.push(format!(
                        "capacity.{model:?}.{what}: must be at least 1 (leave it out for no limit)"
                    ));
                }
            }
        }
        for (name, provider) in &self.providers {
            if name.contains('/') || name.is_empty() {
                p.push(format!(
                    "providers.{name}: a provider name must be non-empty and without '/'"
                ));
            }
            let remote = matches!(
                provider.kind,
                ProviderKind::Openai | ProviderKind::Anthropic | ProviderKind::Azure
            );
            if provider.kind == ProviderKind::Gemini
                && provider.api_key.is_none()
                && provider.api_key_env.is_none()
            {
                p.push(format!(
                    "providers.{name}: set api_key_env (or api_key) for Gemini"
                ));
            }
            if provider.kind == ProviderKind::Vertex && provider.location.is_empty() {
                p.push(format!(
                    "providers.{name}.location: required for Vertex AI (e.g. us-central1)"
                ));
            }
            match provider.base_url.as_deref().unwrap_or("") {
                "" if remote => p.push(format!(
                    "providers.{name}.base_url: required for {:?} providers",
                    provider.kind
                )),
                "" => {}
                url => {
                    if let Err(e) = reqwest::Url::parse(url) {
                        p.push(format!(
                            "providers.{name}.base_url: {url:?} is not a URL: {e}"
                        ));
                    }
                }
            }
            if provider.kind == ProviderKind::Anthropic
                && provider.api_key.is_none()
                && provider.api_key_env.is_none()
            {
                p.push(format!(
                    "providers.{name}: set api_key_env (or api_key) for Anthropic"
                ));
            }
            if provider.kind == ProviderKind::Azure
                && provider.entra.is_none()
                && provider.api_key.is_none()
                && provider.api_key_env.is_none()
            {
                p.push(format!(
                    "providers.{name}: set api_key_env (or api_key), or [providers.{name}.entra], for Azure"
                ));
            }
            if provider.kind != ProviderKind::Azure && provider.entra.is_some() {
                p.push(format!(
                    "providers.{name}.entra: only Azure providers take Entra ID tokens"
                ));
            }
            if !(0.0..=1.0).contains(&provider.error_rate) {
                p.push(format!(
                    "providers.{name}.error_rate: must be between 0 and 1"
                ));
            }
            if provider.tokens_per_second < 0.0 {
                p.push(format!(
                    "providers.{name}.tokens_per_second: must not be negative"
                ));
            }
            for m in &provider.models {
                if m.split_once('/').map(|(p, _)| p) != Some(name.as_str()) {
                    p.push(format!(
                        "providers.{name}.models: {m:?} must be named {name}/<model>"
                    ));
                }
            }
        }
        for (alias, a) in &self.aliases {
            if a.deployments.is_empty() {
                p.push(format!("aliases.{alias}: needs at least one deployment"));
            }
            if a.deployments.iter().all(|d| d.weight == 0) && !a.deployments.is_empty() {
                p.push(format!(
                    "aliases.{alias}: at least one deployment needs a weight above 0"
                ));
            }
            for d in &a.deployments {
                let provider = d.model.split_once('/').map(|(p, _)| p);
                if !provider.is_some_and(|p| self.providers.contains_key(p)) {
                    p.push(format!(
                        "aliases.{alias}: deployment {:?} names no configured provider",
                        d.model
                    ));
                }
            }
        }
        for (model, price) in &self.prices {
            if price.input_per_million < 0.0 || price.output_per_million < 0.0 {
                p.push(format!("prices.{model}: prices must not be negative"));
            }
        }
        p
    }

    /// The per-command timeout.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.redis.command_timeout_ms)
    }
}

fn section<T: DeserializeOwned>(
    name: &str,
    value: toml::Value,
    errors: &mut Vec<String>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let result = serde_ignored::deserialize(value, |path| unknown.push(format!("{name}.{path}")));
    for u in unknown {
        errors.push(format!("unknown field `{u}`"));
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(format!("{name}: {}", e.to_string().trim()));
            None
        }
    }
}

/// Lays `over` onto `base`: tables merge recursively, other values replace.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn default_embedder_share() -> f64 {
    0.15
}

fn default_check_rate() -> f64 {
    0.05
}

fn default_check_band() -> f32 {
    0.05
}

fn default_check_step() -> f64 {
    0.01
}

fn default_min_threshold() -> f32 {
    0.8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        let dir = std::env::temp_dir().join(format!("tollgate-config-{}", uuid_like()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), &HashMap::new())
    }

    fn uuid_like() -> String {
        format!("{:?}{}", std::thread::current().id(), std::process::id())
            .replace(|c: char| !c.is_alphanumeric(), "")
    }

    #[test]
    fn default_config_deserializes_and_validates() {
        let c = Config::load(None, &HashMap::new()).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.limits.on_redis_error, FailPolicy::Open);
        assert!(c.providers.contains_key("mock"));
    }

    #[test]
    fn a_file_changes_only_what_it_names_and_env_wins() {
        let dir = std::env::temp_dir().join(format!("tollgate-config-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:9000\"\n[cache]\ndefault_ttl_seconds = 5\n",
        )
        .unwrap();
        let env = HashMap::from([("TOLLGATE_LISTEN".to_owned(), "127.0.0.1:9100".to_owned())]);
        let c = Config::load(Some(&path), &env).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9100");
        assert_eq!(c.cache.default_ttl_seconds, 5);
        assert_eq!(c.cache.max_ttl_seconds, 604800);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load(
            r#"
            [server]
            listen = "nowhere"
            colour = "blue"
            [cache]
            enabled = "yes"
            [limits]
            default_tier = "gold"
            [providers.openai]
            kind = "openai"
            [aliases.smart]
            deployments = [{ model = "ghost/x", weight = 1 }]
            [bogus]
            x = 1
            "#,
        )
        .unwrap_err();
        let all = err.0.join("\n");
        for expected in [
            "unknown section `bogus`",
            "unknown field `server.colour`",
            "cache: invalid type",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        // Semantic checks run only once the sections parse; fix the type error and see them all.
        let err = load(
            r#"
            [server]
            listen = "nowhere"
            [limits]
            default_tier = "gold"
            [providers.openai]
            kind = "openai"
            [aliases.smart]
            deployments = [{ model = "ghost/x", weight = 1 }]
            [capacity."ghost/x"]
            rpm = 0
            [capacity.smart]
            tpm = 100
            [sessions]
            ttl_seconds = 3600
            idle_ttl_seconds = 7200
            [providers.az]
            kind = "azure"
            base_url = "https://r.openai.azure.com"
            [providers.local-vllm]
            kind = "openai"
            base_url = "localhost-8000/v1"
            "#,
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 9, "{err:?}");
        let all = err.0.join("\n");
        for expected in [
            r#"capacity."ghost/x": neither provider/model"#,
            r#"capacity."ghost/x".rpm: must be at least 1"#,
            "sessions.idle_ttl_seconds: 7200 is longer than sessions.ttl_seconds (3600)",
            "providers.az: set api_key_env (or api_key), or [providers.az.entra], for Azure",
            r#"providers.local-vllm.base_url: "localhost-8000/v1" is not a URL"#,
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn common_models_have_prices_without_configuration() {
        let price =
            |m: &str| Price::builtin(m).map(|p| (p.input_per_million, p.output_per_million));
        assert_eq!(price("openai/gpt-4o"), Some((2.5, 10.0)));
        assert_eq!(price("azure/gpt-4o-2024-08-06"), Some((2.5, 10.0)));
        assert_eq!(price("openai/gpt-4o-mini-2024-07-18"), Some((0.15, 0.6)));
        assert_eq!(
            price("anthropic/claude-3-5-sonnet-20241022"),
            Some((3.0, 15.0))
        );
        assert_eq!(
            price("bedrock/us.anthropic.claude-3-5-sonnet-20240620-v1:0"),
            Some((3.0, 15.0))
        );
        assert_eq!(price("gemini/gemini-2.0-flash-001"), Some((0.1, 0.4)));
        assert_eq!(price("gemini/gemini-2.0-flash-lite"), Some((0.075, 0.3)));
        assert_eq!(price("mock/echo"), None);
        assert_eq!(price("openai/omni-moderation-latest"), None);
        // Configured prices win, for the model asked for and then for the deployment.
        let mut config = Config::load(None, &HashMap::new()).unwrap();
        let set = Price {
            input_per_million: 1.0,
            output_per_million: 1.0,
        };
        config.prices.insert("smart".into(), set);
        assert_eq!(config.price("smart", Some("openai/gpt-4o")), Some(set));
        assert_eq!(
            config
                .price("other", Some("openai/gpt-4o"))
                .map(|p| p.input_per_million),
            Some(2.5)
        );
    }

    #[test]
    fn worker_threads_leave_a_local_redis_a_core() {
        let server = |n: usize| ServerConfig {
            listen: String::new(),
            max_body_bytes: 0,
            shutdown_drain_seconds: 0,
            idle_timeout_seconds: 0,
            max_connections: 0,
            master_key: String::new(),
            worker_threads: n,
        };
        let auto = server(0);
        for (url, cores, threads) in [
            ("", 2, 1),
            ("", 1, 1),
            ("unix:///tmp/redis.sock", 8, 7),
            ("redis://127.0.0.1:6379", 4, 3),
            ("redis://:secret@localhost:6379/0", 4, 3),
            ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", 4, 3),
            ("redis://cache.internal:6379", 4, 4),
            ("rediss://user:pw@10.0.0.5:6380", 2, 2),
        ] {
            assert_eq!(auto.threads(cores, url), threads, "{url} on {cores}");
        }
        assert_eq!(server(3).threads(2, ""), 3, "a number set wins");
    }

    #[test]
    fn a_budget_window_is_a_minute_to_a_month() {
        let budget = |window: &str| WindowBudget {
            window: window.into(),
            usd: 5.0,
            alert_at: vec![0.8],
        };
        for (window, secs) in [
            ("1m", 60),
            ("90m", 5400),
            ("1h", 3600),
            ("7d", 604_800),
            ("31d", 2_678_400),
        ] {
            assert_eq!(
                budget(window).duration(),
                Some(Duration::from_secs(secs)),
                "{window}"
            );
        }
        for bad in ["", "h", "30s", "0m", "32d", "1w", "-1h", "1.5h", "1 h"] {
            assert!(budget(bad).problem().is_some(), "{bad:?}");
        }
        assert!(budget("1h").problem().is_none());
        let mut over = budget("1h");
        over.alert_at = vec![1.5];
        assert!(over.problem().unwrap().contains("alert_at"));
    }

    #[test]
    fn key_limits_override_their_tier_field_by_field() {
        let tier = Limits {
            rpm: Some(60),
            tpm: Some(1000),
            max_concurrency: Some(4),
            queue_wait_seconds: Some(10.0),
            models: BTreeMap::new(),
            daily_budget_usd: Some(5.0),
            monthly_budget_usd: Some(50.0),
            budgets: None,
        };
        let own = Limits {
            rpm: Some(10),
            daily_budget_usd: Some(1.0),
            ..Limits::default()
        };
        let merged = own.over(&tier);
        assert_eq!(
            (merged.rpm, merged.tpm, merged.max_concurrency),
            (Some(10), Some(1000), Some(4))
        );
        assert_eq!(merged.queue_wait_seconds, Some(10.0));
        assert_eq!(
            (merged.daily_budget_usd, merged.monthly_budget_usd),
            (Some(1.0), Some(50.0))
        );
    }
}
