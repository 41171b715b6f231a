//! Model routing: a model name is `provider/model` (served by the provider of that name) or an
//! alias that routes to weighted deployments. A call tries one deployment, picked by weight,
//! retrying retryable errors with jittered exponential backoff, then falls back to the others
//! in order. Retries happen only before the first chunk: a stream that has started is never
//! replayed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tollgate_core::{ChatCompletion, ChatRequest};
use tracing::Instrument;

use crate::{ChunkStream, Embeddings, Provider, ProviderError};

/// Retry behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries per deployment after the first attempt.
    pub max_retries: u32,
    /// First backoff; doubles each retry, with full jitter.
    pub base_backoff: Duration,
    /// Backoff cap (also caps an upstream's `retry-after`).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// One place a model is served.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// Name reported in `x-tollgate-route`.
    pub name: String,
    /// Who serves it.
    pub provider: Arc<dyn Provider>,
    /// The model name the upstream knows.
    pub upstream_model: String,
    /// Share of traffic among the alias's deployments.
    pub weight: u32,
}

/// A started generation and where it runs.
pub struct Routed {
    /// The chunks.
    pub stream: ChunkStream,
    /// The deployment that answered.
    pub deployment: String,
    /// Attempts made, the successful one included.
    pub attempts: u32,
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("deployment", &self.deployment)
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// Providers by name, and aliases.
#[derive(Debug, Default, Clone)]
pub struct Router {
    providers: BTreeMap<String, Arc<dyn Provider>>,
    aliases: BTreeMap<String, Vec<Deployment>>,
    retry: RetryPolicy,
    health: Arc<Health>,
}

/// Recent outcomes and latencies per deployment, for routing away from failing or slow ones.
/// Shared by the routers rebuilt from one another ([`Router::with_aliases`]), so a rebuild keeps
/// what was learned.
#[derive(Debug, Default)]
pub struct Health {
    windows: std::sync::Mutex<BTreeMap<String, Window>>,
    latency: std::sync::Mutex<BTreeMap<String, Latency>>,
}

/// Time to the upstream's answer head (first byte), smoothed.
#[derive(Debug, Clone, Copy)]
struct Latency {
    /// Exponentially weighted mean, in ms.
    mean_ms: f64,
    samples: u32,
    updated: std::time::Instant,
}

/// Weight of the newest sample in the latency mean.
const LATENCY_ALPHA: f64 = 0.2;
/// Samples needed before a deployment's latency counts.
const LATENCY_MIN_SAMPLES: u32 = 5;
/// Slow: this many times the fastest peer's mean, and at least `SLOW_MARGIN_MS` more.
const SLOW_FACTOR: f64 = 3.0;
const SLOW_MARGIN_MS: f64 = 50.0;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: std::time::Instant,
    ok: u32,
    failed: u32,
}

/// Outcomes are counted over windows of this length.
const HEALTH_WINDOW: Duration = Duration::from_secs(30);

impl Health {
    fn record(&self, deployment: &str, ok: bool) {
        let Ok(mut w) = self.windows.lock() else {
            return;
        };
        let now = std::time::Instant::now();
        let entry = w.entry(deployment.to_owned()).or_insert(Window {
            started: now,
            ok: 0,
            failed: 0,
        });
        if now.duration_since(entry.started) > HEALTH_WINDOW {
            *entry = Window {
                started: now,
                ok: 0,
                failed: 0,
            };
        }
        if ok {
            entry.ok += 1;
        } else {
            entry.failed += 1;
        }
    }

    fn record_latency(&self, deployment: &str, took: Duration) {
        let Ok(mut l) = self.latency.lock() else {
            return;
        };
        let ms = took.as_secs_f64() * 1e3;
        let now = std::time::Instant::now();
        let entry = l.entry(deployment.to_owned()).or_insert(Latency {
            mean_ms: ms,
            samples: 0,
            updated: now,
        });
        if now.duration_since(entry.updated) > HEALTH_WINDOW {
            // Stale: start over, so a deployment demoted for being slow can show it recovered.
            *entry = Latency {
                mean_ms: ms,
                samples: 0,
                updated: now,
            };
        }
        entry.mean_ms = if entry.samples == 0 {
            ms
        } else {
            LATENCY_ALPHA * ms + (1.0 - LATENCY_ALPHA) * entry.mean_ms
        };
        entry.samples += 1;
        entry.updated = now;
    }

    /// The smoothed latency of `deployment`, once it has enough recent samples.
    fn latency_ms(&self, deployment: &str) -> Option<f64> {
        let l = self.latency.lock().ok()?;
        l.get(deployment)
            .filter(|x| x.samples >= LATENCY_MIN_SAMPLES && x.updated.elapsed() <= HEALTH_WINDOW)
            .map(|x| x.mean_ms)
    }

    /// Puts failing deployments last and slow ones (against the fastest of `deployments`) just
    /// before them; otherwise the order stays (the weighted pick stays first).
    fn order(&self, deployments: &mut [Deployment]) {
        let latencies: Vec<Option<f64>> = deployments
            .iter()
            .map(|d| self.latency_ms(&d.name))
            .collect();
        let fastest = latencies
            .iter()
            .flatten()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let mut keyed: Vec<(bool, bool, Deployment)> = deployments
            .iter()
            .zip(&latencies)
            .map(|(d, l)| {
                let slow =
                    l.is_some_and(|ms| ms > fastest * SLOW_FACTOR && ms > fastest + SLOW_MARGIN_MS);
                (self.is_unhealthy(&d.name), slow, d.clone())
            })
            .collect();
        keyed.sort_by_key(|(unhealthy, slow, _)| (*unhealthy, *slow));
        for (slot, (_, _, d)) in deployments.iter_mut().zip(keyed) {
            *slot = d;
        }
    }

    /// Unhealthy: at least 5 failures in the window, and more failures than successes.
    pub fn is_unhealthy(&self, deployment: &str) -> bool {
        let Ok(w) = self.windows.lock() else {
            return false;
        };
        w.get(deployment).is_some_and(|x| {
            x.started.elapsed() <= HEALTH_WINDOW && x.failed >= 5 && x.failed > x.ok
        })
    }
}

impl Router {
    /// An empty router with `retry`.
    pub fn new(retry: RetryPolicy) -> Self {
        Router {
            retry,
            ..Router::default()
        }
    }

    /// Serves `name/*` with `provider`.
    pub fn add_provider(&mut self, name: &str, provider: Arc<dyn Provider>) {
        self.providers.insert(name.to_owned(), provider);
    }

    /// The provider registered under `name`.
    pub fn provider(&self, name: &str) -> Option<Arc<dyn Provider>> {
        self.providers.get(name).cloned()
    }

    /// A copy with `aliases` replacing every alias (providers, retries and health kept).
    pub fn with_aliases(&self, aliases: BTreeMap<String, Vec<Deployment>>) -> Router {
        Router {
            aliases,
            ..self.clone()
        }
    }

    /// The aliases as configured.
    pub fn alias_map(&self) -> &BTreeMap<String, Vec<Deployment>> {
        &self.aliases
    }

    /// Routes `alias` to `deployments`.
    pub fn add_alias(&mut self, alias: &str, deployments: Vec<Deployment>) {
        self.aliases.insert(alias.to_owned(), deployments);
    }

    /// Aliases, for `GET /v1/models`.
    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.aliases.keys().map(String::as_str)
    }

    /// The deployments to try for `model`, in order: one picked by weight, then the rest.
    pub fn resolve(&self, model: &str) -> Result<Vec<Deployment>, ProviderError> {
        if let Some(deployments) = self.aliases.get(model) {
            let mut order = deployments.clone();
            let total: u64 = order.iter().map(|d| u64::from(d.weight)).sum();
            if total > 0 {
                let mut pick = rand::rng().random_range(0..total);
                let first = order
                    .iter()
                    .position(|d| {
                        let w = u64::from(d.weight);
                        if pick < w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                let chosen = order.remove(first);
                order.insert(0, chosen);
            }
            return Ok(order);
        }
        if let Some((provider, upstream)) = model.split_once('/')
            && let Some(p) = self.providers.get(provider)
            && !upstream.is_empty()
        {
            return Ok(vec![Deployment {
                name: model.to_owned(),
                provider: p.clone(),
                upstream_model: upstream.to_owned(),
                weight: 1,
            }]);
        }
        Err(ProviderError::UnknownModel(model.to_owned()))
    }

    /// True when `model` can be served.
    /// The version of `model`'s vectors, when its provider knows it (an alias: none, its
    /// deployments should agree).
    pub fn embedding_version(&self, model: &str) -> Option<String> {
        let (provider, name) = model.split_once('/')?;
        self.providers.get(provider)?.embedding_version(name)
    }

    pub fn knows(&self, model: &str) -> bool {
        self.aliases.contains_key(model)
            || model
                .split_once('/')
                .is_some_and(|(p, m)| !m.is_empty() && self.providers.contains_key(p))
    }

    /// Starts a generation for `request.model`, with retries and fallback.
    pub async fn chat_stream(&self, request: &ChatRequest) -> Result<Routed, ProviderError> {
        let deployments = self.resolve(&request.model)?;
        self.chat_stream_via(deployments, request).await
    }

    /// Starts a generation on `deployments`, in order (healthy ones first), with retries on
    /// each and fallback to the next.
    pub async fn chat_stream_via(
        &self,
        deployments: Vec<Deployment>,
        request: &ChatRequest,
    ) -> Result<Routed, ProviderError> {
        let unknown = ProviderError::UnknownModel(request.model.clone());
        let (stream, deployment, attempts) = self
            .first_success(deployments, unknown, |d| {
                let mut upstream_request = request.clone();
                upstream_request.model = d.upstream_model.clone();
                d.provider.chat_stream(upstream_request)
            })
            .await?;
        Ok(Routed {
            stream,
            deployment,
            attempts,
        })
    }

    /// A whole answer from `deployments`, in order, with the same retries and fallback as
    /// [`Router::chat_stream_via`]; for a caller that needs no chunks. Returns the deployment
    /// that answered.
    pub async fn chat_via(
        &self,
        deployments: Vec<Deployment>,
        request: &ChatRequest,
    ) -> Result<(ChatCompletion, String), ProviderError> {
        let unknown = ProviderError::UnknownModel(request.model.clone());
        let (completion, deployment, _) = self
            .first_success(deployments, unknown, |d| {
                let mut upstream_request = request.clone();
                upstream_request.model = d.upstream_model.clone();
                d.provider.chat(upstream_request)
            })
            .await?;
        Ok((completion, deployment))
    }

    /// Embeds `texts` with `model` (an alias or `provider/model`), with the same retries and
    /// fallback as generations. Returns the deployment that answered.
    pub async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
    ) -> Result<(String, Embeddings), ProviderError> {
        let deployments = self.resolve(model)?;
        let unknown = ProviderError::UnknownModel(model.to_owned());
        let expected = texts.len();
        let (embeddings, deployment, _) = self
            .first_success(deployments, unknown, |d| {
                let call = d.provider.embed(d.upstream_model.clone(), texts.clone());
                async move {
                    let e = call.await?;
                    if e.vectors.len() != expected {
                        return Err(ProviderError::Protocol(format!(
                            "{} embeddings for {expected} inputs",
                            e.vectors.len()
                        )));
                    }
                    Ok(e)
                }
            })
            .await?;
        Ok((deployment, embeddings))
    }

    /// Calls `deployments` in order (failing and slow ones last), each up to `max_retries` more
    /// times after a retryable error (waiting out the upstream's `retry-after`, else a jittered
    /// backoff), recording health and latency. Returns the answer, the deployment that gave it
    /// and the attempts made; the last retryable error (`none_left` if none) when all failed.
    async fn first_success<T, F, Fut>(
        &self,
        mut deployments: Vec<Deployment>,
        none_left: ProviderError,
        mut call: F,
    ) -> Result<(T, String, u32), ProviderError>
    where
        F: FnMut(&Deployment) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        self.health.order(&mut deployments);
        let mut attempts = 0;
        let mut last_error = none_left;
        for deployment in deployments {
            for retry in 0..=self.retry.max_retries {
                attempts += 1;
                let started = std::time::Instant::now();
                // Until the upstream's answer starts (a stream's chunks come after).
                let span = tracing::info_span!(
                    target: "otel",
                    "upstream",
                    "otel.name" = format!("upstream {}", deployment.name),
                    "otel.kind" = "client",
                    "gen_ai.request.model" = %deployment.upstream_model,
                    "tollgate.deployment" = %deployment.name,
                    "tollgate.attempt" = attempts,
                    "error.type" = tracing::field::Empty,
                    "otel.status_code" = tracing::field::Empty,
                );
                let answered = call(&deployment).instrument(span.clone()).await;
                if let Err(e) = &answered {
                    span.record("error.type", e.kind());
                    span.record("otel.status_code", "ERROR");
                }
                match answered {
                    Ok(answer) => {
                        self.health.record(&deployment.name, true);
                        self.health
                            .record_latency(&deployment.name, started.elapsed());
                        return Ok((answer, deployment.name.clone(), attempts));
                    }
                    Err(e) if e.is_retryable() => {
                        self.health.record(&deployment.name, false);
                        tracing::warn!(deployment = %deployment.name, error = %e, attempt = attempts, "upstream attempt failed");
                        let wait = match &e {
                            ProviderError::RateLimited {
                                retry_after: Some(d),
                            } => *d,
                            _ => self.backoff(retry),
                        };
                        last_error = e;
                        if retry < self.retry.max_retries {
                            tokio::time::sleep(wait.min(self.retry.max_backoff)).await;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last_error)
    }

    /// The deployment for `provider/model` (for routes chosen outside aliases).
    pub fn deployment_for(&self, name: &str, model: &str) -> Option<Deployment> {
        let (provider, upstream) = model.split_once('/')?;
        let p = self.providers.get(provider)?;
        Some(Deployment {
            name: name.to_owned(),
            provider: p.clone(),
            upstream_model: upstream.to_owned(),
            weight: 1,
        })
    }

    /// Full jitter: uniform in [0, min(cap, base * 2^retry)].
    fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .retry
            .base_backoff
            .saturating_mul(1 << retry.min(16))
            .min(self.retry.max_backoff);
        ceiling.mul_f64(rand::rng().random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{MockConfig, MockProvider};
    use futures::StreamExt;
    use serde_json::json;

    fn request(model: &str) -> ChatRequest {
        serde_json::from_value(
            json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap()
    }

    fn quick() -> RetryPolicy {
        RetryPolicy {
            max_retries: 2,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        }
    }

    #[tokio::test]
    async fn falls_back_after_retries_are_exhausted() {
        let broken = Arc::new(MockProvider::new(MockConfig {
            error_rate: 1.0,
            ..MockConfig::default()
        }));
        let healthy = Arc::new(MockProvider::new(MockConfig::default()));
        let mut router = Router::new(quick());
        router.add_alias(
            "smart",
            vec![
                Deployment {
                    name: "broken".into(),
                    provider: broken.clone(),
                    upstream_model: "x".into(),
                    weight: 1,
                },
                Deployment {
                    name: "healthy".into(),
                    provider: healthy.clone(),
                    upstream_model: "x".into(),
                    weight: 0,
                },
            ],
        );
        let routed = router.chat_stream(&request("smart")).await.unwrap();
        assert_eq!(routed.deployment, "healthy");
        assert_eq!(routed.attempts, 4);
        assert_eq!(broken.calls(), 3);
        assert!(
            routed
                .stream
                .collect::<Vec<_>>()
                .await
                .iter()
                .all(Result::is_ok)
        );
    }

    #[tokio::test]
    async fn rejections_are_not_retried_and_unknown_models_are_named() {
        let router = Router::new(quick());
        match router.chat_stream(&request("nobody/x")).await {
            Err(ProviderError::UnknownModel(m)) => assert_eq!(m, "nobody/x"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn slow_deployments_are_tried_after_fast_ones() {
        let slow = Arc::new(MockProvider::new(MockConfig {
            first_token_latency: Duration::from_millis(200),
            ..MockConfig::default()
        }));
        let fast = Arc::new(MockProvider::new(MockConfig::default()));
        let router = Router::new(quick());
        let deployment = |name: &str, provider: &Arc<MockProvider>| Deployment {
            name: name.into(),
            provider: provider.clone(),
            upstream_model: "x".into(),
            weight: 1,
        };
        let slow_first = vec![deployment("slow", &slow), deployment("fast", &fast)];
        let fast_first = vec![deployment("fast", &fast), deployment("slow", &slow)];
        // Until both have enough samples, the order given is kept.
        for _ in 0..LATENCY_MIN_SAMPLES {
            let a = router
                .chat_stream_via(slow_first.clone(), &request("x"))
                .await
                .unwrap();
            assert_eq!(a.deployment, "slow");
            let b = router
                .chat_stream_via(fast_first.clone(), &request("x"))
                .await
                .unwrap();
            assert_eq!(b.deployment, "fast");
        }
        // Now the slow one goes behind the fast one whatever the weighted pick said.
        for _ in 0..5 {
            let routed = router
                .chat_stream_via(slow_first.clone(), &request("x"))
                .await
                .unwrap();
            assert_eq!(routed.deployment, "fast");
        }
        assert_eq!(slow.calls(), u64::from(LATENCY_MIN_SAMPLES));
    }

    #[tokio::test]
    async fn failing_deployments_are_tried_last() {
        let broken = Arc::new(MockProvider::new(MockConfig {
            error_rate: 1.0,
            ..MockConfig::default()
        }));
        let healthy = Arc::new(MockProvider::new(MockConfig::default()));
        let mut router = Router::new(RetryPolicy {
            max_retries: 0,
            ..quick()
        });
        router.add_alias(
            "m",
            vec![
                Deployment {
                    name: "broken".into(),
                    provider: broken.clone(),
                    upstream_model: "x".into(),
                    weight: 1,
                },
                Deployment {
                    name: "healthy".into(),
                    provider: healthy.clone(),
                    upstream_model: "x".into(),
                    weight: 0,
                },
            ],
        );
        for _ in 0..10 {
            assert_eq!(
                router.chat_stream(&request("m")).await.unwrap().deployment,
                "healthy"
            );
        }
        // After five failures the broken deployment is skipped to the back: no more attempts on it.
        assert_eq!(broken.calls(), 5);
    }

    #[tokio::test]
    async fn weights_split_traffic() {
        let a = Arc::new(MockProvider::new(MockConfig::default()));
        let b = Arc::new(MockProvider::new(MockConfig::default()));
        let mut router = Router::new(quick());
        router.add_alias(
            "split",
            vec![
                Deployment {
                    name: "a".into(),
                    provider: a.clone(),
                    upstream_model: "x".into(),
                    weight: 9,
                },
                Deployment {
                    name: "b".into(),
                    provider: b.clone(),
                    upstream_model: "x".into(),
                    weight: 1,
                },
            ],
        );
        for _ in 0..2000 {
            router.chat_stream(&request("split")).await.unwrap();
        }
        let share = a.calls() as f64 / 2000.0;
        assert!((0.85..0.95).contains(&share), "a got {share}");
    }
}
