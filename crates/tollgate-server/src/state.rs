//! The gateway's shared state, built once from the configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_providers::anthropic::Anthropic;
use tollgate_providers::azure::{AzureAuth, AzureOpenAi, ClientSecret, EntraCredential};
use tollgate_providers::bedrock::{AwsCredentials, Bedrock};
use tollgate_providers::gemini::{Gemini, GeminiApi, ServiceAccount};
use tollgate_providers::local::{LocalConfig, LocalProvider};
use tollgate_providers::mock::{MockConfig, MockProvider};
use tollgate_providers::openai_compat::{OpenAiCompat, Timeouts};
use tollgate_providers::{Deployment, Provider, RetryPolicy, Router};
use tollgate_redis::{
    ApiKeyRecord, ApiKeys, CacheConfig, DeploymentStatus, EventBus, EventConfig, FeatureStore,
    Keys, ModelEntry, RateLimiter, Redis, RedisConfig, Registry, ResponseCache, ResponseStore,
    SemanticCache, SessionConfig, SessionStore, SpendLedger, StreamConfig, TokenStreams,
    VectorCollections, VectorConfig,
};

use crate::config::{Config, EntraSection, ProviderKind, ProviderSection};
use crate::local_limiter::LocalLimiter;
use crate::metrics::Metrics;
use crate::tokens::OpenAiTokenCounter;
use tollgate_core::TokenCounter;

/// What every handler shares.
pub type AppState = Arc<Gateway>;

/// The gateway: configuration, Redis-backed stores, providers, metrics.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    /// The main Redis (readiness).
    pub redis: Redis,
    /// Rebuilt when the model registry changes; see [`Gateway::router`].
    router: std::sync::RwLock<Arc<Router>>,
    /// Aliases from the configuration (the registry's models are laid over them).
    config_aliases: std::collections::BTreeMap<String, Vec<Deployment>>,
    pub registry: Registry,
    registry_models: std::sync::RwLock<Arc<std::collections::BTreeMap<String, ModelEntry>>>,
    registry_version: std::sync::atomic::AtomicU64,
    pub cache: ResponseCache,
    pub limiter: RateLimiter,
    /// The concurrency slots of the requests in flight, renewed together.
    pub leases: crate::lease_keeper::LeaseKeeper,
    pub sessions: SessionStore,
    pub streams: TokenStreams,
    pub api_keys: ApiKeys,
    pub events: EventBus,
    pub features: FeatureStore,
    /// Tiered caches of model results (`/v1/results`), on the cache's Redis.
    pub results: tollgate_redis::ResultCache,
    pub vectors: VectorCollections,
    pub semantic: SemanticCache,
    /// Embeddings the semantic cache may run at once (`semantic_cache.embedding_slots`).
    pub semantic_slots: Arc<tokio::sync::Semaphore>,
    /// How long a question's embedding takes, typically (an average of the recent ones, in
    /// microseconds); 0 until the embedding model has answered once (it may be loading).
    pub semantic_embed_us: std::sync::atomic::AtomicU64,
    /// How much of the machine an in-process embedder may take for the semantic cache
    /// (`semantic_cache.embedder_share`); `None` for a model served elsewhere.
    pub embedder_pacer: Option<Arc<crate::chat::pacer::EmbedderPacer>>,
    /// Stored responses of the Responses API.
    pub responses: ResponseStore,
    /// Spend per key, for budgets and reports.
    pub spend: SpendLedger,
    /// The database and the outbox to it; `None` when the gateway keeps no durable records.
    pub durable: Option<Durable>,
    /// Summaries being written (so one conversation is summarized once at a time).
    pub summarizing: Mutex<std::collections::HashSet<String>>,
    /// The cache's Redis, which also holds the embedding cache.
    pub embedding_redis: Redis,
    /// The outbox's Redis (`redis.outbox_url`).
    pub outbox_redis: Redis,
    pub keys: Keys,
    pub metrics: Metrics,
    pub local_limits: LocalLimiter,
    /// Woken when this instance gives concurrency slots back, so its queued requests ask again
    /// at once (those of other instances ask again within their polling interval).
    pub slots_freed: tokio::sync::Notify,
    /// The client budget alerts are POSTed with (`alerts.webhook_url`).
    pub webhooks: reqwest::Client,
    /// Counts prompt tokens for limit estimates and session windows.
    pub counter: Arc<dyn TokenCounter>,
    key_cache: Mutex<HashMap<String, (Instant, Option<ApiKeyRecord>)>>,
    /// The key store's revocation version the key cache was last checked against.
    keys_version: std::sync::atomic::AtomicU64,
}

/// Where durable records go.
#[derive(Debug, Clone)]
pub struct Durable {
    pub db: tollgate_db::Database,
    pub outbox: tollgate_db::Outbox,
}

/// Why the gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("redis ({what}): {source}")]
    Redis {
        what: &'static str,
        source: tollgate_redis::Error,
    },
    #[error("provider {name}: {message}")]
    Provider { name: String, message: String },
}

/// How long an API key lookup is trusted without asking Redis again. Revocations reach every
/// instance sooner, announced and polled (`serve::keep_keys_fresh`); this bounds a revocation
/// missed by both.
const KEY_CACHE_TTL: Duration = Duration::from_secs(10);

impl Gateway {
    /// Connects to Redis (`redis_url` is the resolved main URL, e.g. the embedded server's) and
    /// builds providers and stores.
    pub async fn build(config: Config, redis_url: &str) -> Result<Gateway, BuildError> {
        let timeout = config.command_timeout();
        let connect = |url: String, what: &'static str| async move {
            Redis::connect(&RedisConfig {
                url,
                command_timeout: timeout,
            })
            .await
            .map_err(|source| BuildError::Redis { what, source })
        };
        let own = |url: &str| {
            if url.is_empty() {
                redis_url.to_owned()
            } else {
                url.to_owned()
            }
        };
        let redis = connect(redis_url.to_owned(), "main").await?;
        let cache_redis = connect(own(&config.redis.cache_url), "cache").await?;
        let limits_redis = connect(own(&config.redis.limits_url), "limits").await?;
        let sessions_redis = connect(own(&config.redis.sessions_url), "sessions").await?;
        let streams_redis = connect(own(&config.redis.streams_url), "streams").await?;
        let features_redis = connect(own(&config.redis.features_url), "features").await?;
        let vectors_redis = connect(own(&config.redis.vectors_url), "vectors").await?;
        let events_redis = connect(own(&config.redis.events_url), "events").await?;
        let outbox_redis = connect(own(&config.redis.outbox_url), "outbox").await?;
        let keys =
            Keys::new(config.redis.key_prefix.clone()).map_err(|source| BuildError::Redis {
                what: "key prefix",
                source,
            })?;
        let cache = ResponseCache::new(
            cache_redis.clone(),
            keys.clone(),
            CacheConfig {
                default_ttl: Duration::from_secs(config.cache.default_ttl_seconds),
                max_ttl: Duration::from_secs(config.cache.max_ttl_seconds),
                max_value_bytes: config.cache.max_value_bytes,
                // A leader renews its lease every third of it from the moment it leads: one that
                // dies frees its identical requests as soon as a dead stream would show.
                lease: Duration::from_secs(config.streams.producer_timeout_seconds.max(1)),
                wait_timeout: Duration::from_secs(config.cache.coalesce_wait_seconds),
                ..CacheConfig::default()
            },
        );
        tokio::task::spawn_blocking(OpenAiTokenCounter::warm_up)
            .await
            .ok();
        let counter: Arc<dyn TokenCounter> = Arc::new(OpenAiTokenCounter);
        let sessions_redis_for_responses = sessions_redis.clone();
        let limits_redis_for_spend = limits_redis.clone();
        let sessions = SessionStore::with_counter(
            sessions_redis,
            keys.clone(),
            SessionConfig {
                // Without a database, Redis is a session's only copy.
                idle_ttl: Duration::from_secs(config.sessions.ttl_seconds),
                max_messages: config.sessions.max_messages,
            },
            counter.clone(),
        );
        let streams = TokenStreams::new(
            streams_redis,
            keys.clone(),
            StreamConfig {
                max_len: config.streams.max_len,
                ttl_active: Duration::from_secs(config.streams.ttl_active_seconds),
                ttl_after_end: Duration::from_secs(config.streams.ttl_after_end_seconds),
                producer_timeout: Duration::from_secs(config.streams.producer_timeout_seconds),
            },
        );
        let router = build_router(&config)?;
        let config_aliases = router.alias_map().clone();
        let limiter = RateLimiter::new(limits_redis.clone(), keys.clone());
        Ok(Gateway {
            router: std::sync::RwLock::new(Arc::new(router)),
            config_aliases,
            registry: Registry::new(redis.clone(), keys.clone()),
            registry_models: std::sync::RwLock::new(Arc::default()),
            registry_version: std::sync::atomic::AtomicU64::new(u64::MAX),
            leases: crate::lease_keeper::LeaseKeeper::new(
                limiter.clone(),
                Duration::from_secs(config.limits.concurrency_lease_seconds),
            ),
            limiter,
            api_keys: ApiKeys::new(limits_redis, keys.clone()),
            events: EventBus::new(
                events_redis,
                keys.clone(),
                EventConfig {
                    max_deliveries: config.events.max_deliveries,
                    claim_idle: Duration::from_secs(config.events.claim_idle_seconds),
                    block: Duration::from_millis(config.events.max_block_ms),
                    ..EventConfig::default()
                },
            ),
            features: FeatureStore::new(features_redis, keys.clone()).with_default_ttl(
                Some(config.features.default_ttl_seconds)
                    .filter(|&s| s > 0)
                    .map(Duration::from_secs),
            ),
            vectors: VectorCollections::new(
                vectors_redis,
                keys.clone(),
                VectorConfig {
                    log_max_len: config.vectors.log_max_len,
                    ..VectorConfig::default()
                },
            ),
            semantic_slots: Arc::new(tokio::sync::Semaphore::new(
                config.semantic_cache.embedding_slots.max(1),
            )),
            semantic_embed_us: std::sync::atomic::AtomicU64::new(0),
            embedder_pacer: config
                .semantic_cache
                .embedding_model
                .starts_with("local/")
                .then(|| {
                    Arc::new(crate::chat::pacer::EmbedderPacer::new(
                        config.semantic_cache.embedder_share,
                    ))
                }),
            semantic: SemanticCache::new(
                cache_redis.clone(),
                &keys,
                VectorConfig {
                    max_expiring_items: Some(
                        config.semantic_cache.max_entries_per_partition.max(1),
                    ),
                    max_loaded_items: Some(config.semantic_cache.max_loaded_entries.max(1)),
                    ..VectorConfig::default()
                },
            )
            .map_err(|source| BuildError::Redis {
                what: "semantic cache",
                source,
            })?,
            results: tollgate_redis::ResultCache::new(cache_redis.clone(), keys.clone()),
            embedding_redis: cache_redis,
            outbox_redis,
            responses: ResponseStore::new(
                sessions_redis_for_responses,
                keys.clone(),
                Duration::from_secs(config.responses.ttl_seconds),
            ),
            spend: SpendLedger::new(limits_redis_for_spend, keys.clone()),
            durable: None,
            summarizing: Mutex::new(std::collections::HashSet::new()),
            keys,
            redis,
            cache,
            sessions,
            streams,
            metrics: Metrics::default(),
            counter,
            local_limits: LocalLimiter::default(),
            slots_freed: tokio::sync::Notify::new(),
            webhooks: {
                tollgate_providers::init_tls();
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| BuildError::Provider {
                        name: "alerts.webhook_url".into(),
                        message: e.to_string(),
                    })?
            },
            key_cache: Mutex::new(HashMap::new()),
            keys_version: std::sync::atomic::AtomicU64::new(u64::MAX),
            config,
        })
    }

    /// Keeps durable records in `db`, through an outbox on its Redis (written by
    /// the writer every `tollgate serve` runs, in this process or another).
    pub fn with_database(mut self, db: tollgate_db::Database) -> Self {
        let outbox = tollgate_db::Outbox::new(
            self.outbox_redis.clone(),
            self.keys.clone(),
            &self.outbox_config(),
            Some(db.clone()),
        );
        self.durable = Some(Durable { db, outbox });
        // The database keeps sessions; Redis keeps the ones in use.
        let idle = self
            .config
            .sessions
            .idle_ttl_seconds
            .min(self.config.sessions.ttl_seconds);
        self.sessions = self.sessions.with_idle_ttl(Duration::from_secs(idle));
        self
    }

    /// The outbox's settings from the configuration.
    pub fn outbox_config(&self) -> tollgate_db::OutboxConfig {
        tollgate_db::OutboxConfig {
            batch: self.config.outbox.batch,
            claim_idle: Duration::from_secs(self.config.outbox.claim_idle_seconds),
            linger: Duration::from_millis(self.config.outbox.linger_ms),
            ..tollgate_db::OutboxConfig::default()
        }
    }

    /// The router in force (cheap: an `Arc` clone).
    pub fn router(&self) -> Arc<Router> {
        self.router
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The registry entry of `model`, if the registry has one.
    pub fn registry_entry(&self, model: &str) -> Option<ModelEntry> {
        self.registry_models
            .read()
            .ok()
            .and_then(|m| m.get(model).cloned())
    }

    /// The deployments for `model` with the experiment's arm for `user` first, when `model` is in
    /// the registry with an experiment; the arm's name goes into the cache key.
    pub fn pinned_route(
        &self,
        model: &str,
        user: Option<&str>,
    ) -> Option<(String, Vec<Deployment>)> {
        let entry = self.registry_entry(model)?;
        let arm = entry.arm_for(user?)?;
        let router = self.router();
        let mut route = vec![router.deployment_for(&arm.name, &arm.model)?];
        for d in router.resolve(model).ok()? {
            if d.name != arm.name {
                route.push(d);
            }
        }
        Some((arm.name.clone(), route))
    }

    /// Applies the registry if its version moved: rebuilds the router from the configured aliases
    /// and the registry's models (which win over aliases of the same name). Returns whether it
    /// changed anything.
    pub async fn sync_registry(&self) -> Result<bool, tollgate_redis::Error> {
        use std::sync::atomic::Ordering;
        let version = self.registry.version().await?;
        // u64::MAX until the first load: an empty registry (version 0) is loaded once, not polled.
        if version == self.registry_version.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let (version, models) = self.registry.load().await?;
        let router = self.router();
        let mut aliases = self.config_aliases.clone();
        let mut entries = std::collections::BTreeMap::new();
        for entry in models {
            let deployments: Vec<Deployment> = entry
                .deployments
                .iter()
                .filter(|d| d.status == DeploymentStatus::Active)
                .filter_map(|d| {
                    router.deployment_for(&d.name, &d.model).map(|mut dep| {
                        dep.weight = d.weight;
                        dep
                    })
                })
                .collect();
            if deployments.is_empty() {
                tracing::warn!(model = %entry.name, "registry model has no usable deployment (unknown provider?)");
                continue;
            }
            aliases.insert(entry.name.clone(), deployments);
            entries.insert(entry.name.clone(), entry);
        }
        let rebuilt = Arc::new(router.with_aliases(aliases));
        if let Ok(mut r) = self.router.write() {
            *r = rebuilt;
        }
        if let Ok(mut m) = self.registry_models.write() {
            *m = Arc::new(entries);
        }
        self.registry_version.store(version, Ordering::Relaxed);
        tracing::info!(version, "model registry applied");
        Ok(true)
    }

    /// The master key, when one is set.
    pub fn master_key(&self) -> Option<&str> {
        Some(self.config.server.master_key.as_str()).filter(|k| !k.is_empty())
    }

    /// The record of a presented API key (`None`: unknown or revoked). Lookups are cached for a
    /// few seconds; while Redis is unreachable a cached answer is used however old.
    pub async fn lookup_key(
        &self,
        secret: &str,
    ) -> Result<Option<ApiKeyRecord>, tollgate_redis::Error> {
        let hash = tollgate_redis::api_keys::key_hash(secret);
        let cached = self
            .key_cache
            .lock()
            .ok()
            .and_then(|c| c.get(&hash).cloned());
        if let Some((at, record)) = &cached
            && at.elapsed() < KEY_CACHE_TTL
        {
            return Ok(record.clone());
        }
        match self.api_keys.authenticate(secret).await {
            Ok(record) => {
                if let Ok(mut c) = self.key_cache.lock() {
                    if c.len() > 100_000 {
                        c.clear();
                    }
                    c.insert(hash, (Instant::now(), record.clone()));
                }
                Ok(record)
            }
            Err(e) if e.is_unavailable() => match cached {
                Some((_, record)) => Ok(record),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Drops cached key lookups when a key was revoked anywhere since the last check (the
    /// revocation version moved). Returns whether it dropped them.
    pub async fn sync_keys(&self) -> Result<bool, tollgate_redis::Error> {
        use std::sync::atomic::Ordering;
        let version = self.api_keys.version().await?;
        let seen = self.keys_version.swap(version, Ordering::Relaxed);
        if seen == version || seen == u64::MAX {
            return Ok(false);
        }
        self.forget_keys();
        Ok(true)
    }

    /// Forgets cached key lookups (after a revocation on this instance).
    pub fn forget_keys(&self) {
        if let Ok(mut c) = self.key_cache.lock() {
            c.clear();
        }
    }
}

/// The providers and aliases of `config`, without Redis (for tools that only call models).
pub fn build_router(config: &Config) -> Result<Router, BuildError> {
    let mut router = Router::new(RetryPolicy {
        max_retries: config.retry.max_retries,
        base_backoff: Duration::from_millis(config.retry.base_backoff_ms),
        max_backoff: Duration::from_millis(config.retry.max_backoff_ms),
    });
    for (name, section) in &config.providers {
        router.add_provider(name, build_provider(name, section)?);
    }
    for (alias, a) in &config.aliases {
        let mut deployments = Vec::new();
        for d in &a.deployments {
            let (provider, upstream) = d.model.split_once('/').unwrap_or((d.model.as_str(), ""));
            let provider = router
                .provider(provider)
                .ok_or_else(|| BuildError::Provider {
                    name: alias.clone(),
                    message: format!("deployment {:?} names no configured provider", d.model),
                })?;
            deployments.push(Deployment {
                name: d.model.clone(),
                provider,
                upstream_model: upstream.to_owned(),
                weight: d.weight,
            });
        }
        router.add_alias(alias, deployments);
    }
    Ok(router)
}

fn build_provider(name: &str, s: &ProviderSection) -> Result<Arc<dyn Provider>, BuildError> {
    let timeouts = Timeouts {
        connect: Duration::from_millis(s.connect_timeout_ms),
        first_byte: Duration::from_millis(s.first_byte_timeout_ms),
        idle: Duration::from_millis(s.idle_timeout_ms),
        whole: Duration::from_millis(s.whole_timeout_ms),
    };
    let api_key = s
        .api_key
        .clone()
        .or_else(|| s.api_key_env.as_deref().and_then(|v| std::env::var(v).ok()))
        .filter(|k| !k.is_empty());
    let err = |e: tollgate_providers::ProviderError| BuildError::Provider {
        name: name.to_owned(),
        message: e.to_string(),
    };
    Ok(match s.kind {
        ProviderKind::Mock => Arc::new(MockProvider::new(MockConfig {
            first_token_latency: Duration::from_millis(s.first_token_latency_ms),
            tokens_per_second: s.tokens_per_second,
            error_rate: s.error_rate,
            ..MockConfig::default()
        })),
        ProviderKind::Openai => Arc::new(
            OpenAiCompat::new(s.base_url.as_deref().unwrap_or_default(), api_key, timeouts)
                .map_err(err)?,
        ),
        ProviderKind::Local => {
            let mut local = LocalConfig::default();
            if !s.model_dir.is_empty() {
                local.model_dir = s.model_dir.clone().into();
            }
            local.preload = s.preload;
            if !tollgate_providers::local::weights_present(&local) {
                tracing::warn!(
                    dir = %local.model_dir.display(),
                    "local model weights not found; `make models` (scripts/install-models.sh) installs them"
                );
            }
            Arc::new(LocalProvider::start(local))
        }
        ProviderKind::Anthropic => {
            let key = api_key.ok_or_else(|| BuildError::Provider {
                name: name.to_owned(),
                message: format!(
                    "no API key: set {}",
                    s.api_key_env.as_deref().unwrap_or("api_key")
                ),
            })?;
            Arc::new(
                Anthropic::new(s.base_url.as_deref().unwrap_or_default(), key, timeouts)
                    .map_err(err)?,
            )
        }
        ProviderKind::Azure => {
            let auth = match (&s.entra, api_key) {
                (Some(entra), _) => AzureAuth::Entra(entra_credential(name, entra)?),
                (None, Some(key)) => AzureAuth::ApiKey(key),
                (None, None) => {
                    return Err(BuildError::Provider {
                        name: name.to_owned(),
                        message: format!(
                            "no API key: set {}, or [providers.{name}.entra]",
                            s.api_key_env.as_deref().unwrap_or("api_key")
                        ),
                    });
                }
            };
            Arc::new(
                AzureOpenAi::new(
                    s.base_url.as_deref().unwrap_or_default(),
                    &s.api_version,
                    auth,
                    timeouts,
                )
                .map_err(err)?,
            )
        }
        ProviderKind::Gemini => {
            let api_key = api_key.ok_or_else(|| BuildError::Provider {
                name: name.to_owned(),
                message: format!(
                    "no API key: set {}",
                    s.api_key_env.as_deref().unwrap_or("api_key")
                ),
            })?;
            let base_url = s
                .base_url
                .clone()
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| tollgate_providers::gemini::DEFAULT_BASE_URL.to_owned());
            Arc::new(Gemini::new(GeminiApi::AiStudio { base_url, api_key }, timeouts).map_err(err)?)
        }
        ProviderKind::Vertex => Arc::new(Gemini::new(vertex_api(name, s)?, timeouts).map_err(err)?),
        ProviderKind::Bedrock => {
            let (region, credentials) = bedrock_access(name, s)?;
            let endpoint = s.base_url.clone().unwrap_or_default();
            Arc::new(Bedrock::new(&region, &endpoint, credentials, timeouts).map_err(err)?)
        }
    })
}

/// A Bedrock provider's region (configured, else `AWS_REGION`, else `AWS_DEFAULT_REGION`) and
/// credentials (a configured shared credentials file at its profile, else the standard chain).
fn bedrock_access(name: &str, s: &ProviderSection) -> Result<(String, AwsCredentials), BuildError> {
    let fail = |message: &str| BuildError::Provider {
        name: name.to_owned(),
        message: message.to_owned(),
    };
    let env = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
    let region = Some(s.region.clone())
        .filter(|r| !r.is_empty())
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .ok_or_else(|| fail("no region: set region, or AWS_REGION"))?;
    let credentials = if s.credentials_file.is_empty() {
        AwsCredentials::from_environment().ok_or_else(|| {
            fail("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or credentials_file")
        })?
    } else {
        AwsCredentials::SharedFile {
            path: s.credentials_file.clone().into(),
            profile: Some(s.profile.clone())
                .filter(|p| !p.is_empty())
                .or_else(|| env("AWS_PROFILE"))
                .unwrap_or_else(|| "default".into()),
        }
    };
    Ok((region, credentials))
}

/// A Vertex AI provider: its service account (the configured key file, else
/// `GOOGLE_APPLICATION_CREDENTIALS`'s), project (else the account's) and location.
fn vertex_api(name: &str, s: &ProviderSection) -> Result<GeminiApi, BuildError> {
    let fail = |message: String| BuildError::Provider {
        name: name.to_owned(),
        message,
    };
    let file = Some(s.credentials_file.clone())
        .filter(|f| !f.is_empty())
        .or_else(|| std::env::var("GOOGLE_APPLICATION_CREDENTIALS").ok())
        .ok_or_else(|| {
            fail(
                "no service account: set credentials_file or GOOGLE_APPLICATION_CREDENTIALS".into(),
            )
        })?;
    let text = std::fs::read_to_string(&file).map_err(|e| fail(format!("{file}: {e}")))?;
    let account = ServiceAccount::from_json(&text).map_err(|e| fail(format!("{file}: {e}")))?;
    let project = Some(s.project.clone())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| account.project_id.clone());
    if project.is_empty() {
        return Err(fail("no project: set project".into()));
    }
    let base_url = s
        .base_url
        .clone()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| format!("https://{}-aiplatform.googleapis.com", s.location));
    Ok(GeminiApi::Vertex {
        base_url,
        project,
        location: s.location.clone(),
        account,
    })
}

/// The Entra ID credential a provider's `entra` section names, the standard `AZURE_*`
/// variables filling what it leaves out.
fn entra_credential(name: &str, e: &EntraSection) -> Result<EntraCredential, BuildError> {
    let missing = |what: &str| BuildError::Provider {
        name: name.to_owned(),
        message: format!("Entra ID: {what}"),
    };
    let env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    if let Some(file) = &e.token_file {
        return Ok(EntraCredential::TokenFile(file.into()));
    }
    if let Some(var) = &e.token_env {
        let token = env(var).ok_or_else(|| missing(&format!("{var} is not set")))?;
        return Ok(EntraCredential::Token(token));
    }
    let tenant_id = e
        .tenant_id
        .clone()
        .or_else(|| env("AZURE_TENANT_ID"))
        .ok_or_else(|| missing("set tenant_id (or AZURE_TENANT_ID)"))?;
    let client_id = e
        .client_id
        .clone()
        .or_else(|| env("AZURE_CLIENT_ID"))
        .ok_or_else(|| missing("set client_id (or AZURE_CLIENT_ID)"))?;
    let secret = if let Some(var) = &e.client_secret_env {
        ClientSecret::Secret(env(var).ok_or_else(|| missing(&format!("{var} is not set")))?)
    } else if let Some(file) = e
        .federated_token_file
        .clone()
        .or_else(|| env("AZURE_FEDERATED_TOKEN_FILE"))
    {
        ClientSecret::FederatedTokenFile(file.into())
    } else if let Some(secret) = env("AZURE_CLIENT_SECRET") {
        ClientSecret::Secret(secret)
    } else {
        return Err(missing(
            "set token_file, token_env, client_secret_env or federated_token_file (or AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE)",
        ));
    };
    Ok(EntraCredential::Application {
        authority: e
            .authority
            .clone()
            .unwrap_or_else(|| tollgate_providers::azure::DEFAULT_AUTHORITY.to_owned()),
        tenant_id,
        client_id,
        secret,
    })
}
