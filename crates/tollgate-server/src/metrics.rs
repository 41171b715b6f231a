//! Prometheus metrics, `tollgate_<subsystem>_<what>_<unit>`. Every label is an enum or a route
//! template of the router (`/v1/sessions/{id}`, never a path as sent), so the number of series
//! is fixed (models are not labels: their numbers are in `/admin/cache/stats`).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label values are snake_case (`hit`, `fail_open_allowed`, `upstream_5xx`), as Prometheus
/// conventions have them: the variant's name with `_` before each later capital and before the
/// first digit after a letter.
macro_rules! snake_case_labels {
    ($($kind:ty),* $(,)?) => {$(
        impl EncodeLabelValue for $kind {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                use std::fmt::Write as _;
                encoder.write_str(&snake_case(&format!("{self:?}")))
            }
        }
    )*};
}

snake_case_labels!(
    StatusClass,
    SemanticSkip,
    CheckOutcome,
    CacheResult,
    TokenKind,
    LimiterDecision,
    QueueOutcome,
    UpstreamErrorKind,
);

fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut previous: Option<char> = None;
    for c in name.chars() {
        let boundary = match previous {
            Some(p) => c.is_ascii_uppercase() || (c.is_ascii_digit() && p.is_ascii_alphabetic()),
            None => false,
        };
        if boundary {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
        previous = Some(c);
    }
    out
}

/// Status class of an answer.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum StatusClass {
    Ok,
    ClientError,
    RateLimited,
    ServerError,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template that matched, or `unmatched`.
    pub route: String,
    pub status: StatusClass,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// What the cache did for a request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Semantic,
    Miss,
    Coalesced,
    Bypass,
    Error,
}

impl CacheResult {
    /// The name traces and logs use.
    pub fn name(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Semantic => "semantic",
            CacheResult::Miss => "miss",
            CacheResult::Coalesced => "coalesced",
            CacheResult::Bypass => "bypass",
            CacheResult::Error => "error",
        }
    }
}

/// Why a request went on without the semantic cache, or a question was not indexed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum SemanticSkip {
    /// Every embedding slot was taken: looked up as a miss at once.
    Busy,
    /// The embedding took longer than the lookup budget.
    Slow,
    /// The gateway was busy and the embedder had spent its share of the time on lookups that
    /// missed: looked up as a miss at once.
    Paced,
    /// After the answer, still no slot: the question was not indexed.
    IndexDropped,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SemanticSkipLabels {
    pub reason: SemanticSkip,
}

/// A semantic candidate checked against the upstream: whether its cached answer was right,
/// and whether it was at or above the threshold (it would have been served).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SemanticCheckLabels {
    pub model: String,
    pub outcome: CheckOutcome,
    pub served: bool,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum CheckOutcome {
    Right,
    Wrong,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub result: CacheResult,
}

/// Prompt or completion.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum TokenKind {
    Prompt,
    Completion,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub kind: TokenKind,
}

/// What a limiter decided.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum LimiterDecision {
    Allowed,
    Denied,
    FailOpenAllowed,
    FailOpenDenied,
    FailClosed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimiterLabels {
    pub decision: LimiterDecision,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// The tier that answered (`0` the most specific), or `miss`.
    pub tier: String,
}

/// How a wait in a concurrency queue ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum QueueOutcome {
    /// A slot was its.
    Admitted,
    /// Its wait ran out first.
    TimedOut,
    /// Another limit refused it, or Redis failed.
    Refused,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub outcome: QueueOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub kind: UpstreamErrorKind,
}

/// Upstream failure kinds (as `ProviderError::kind`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Rejected,
    ContentFilter,
    RateLimited,
    Upstream5xx,
    Timeout,
    Connect,
    Protocol,
    UnknownModel,
}

impl UpstreamErrorKind {
    /// The label of a provider error.
    pub fn of(e: &tollgate_providers::ProviderError) -> Self {
        use tollgate_providers::ProviderError as P;
        match e {
            P::Rejected { .. } => Self::Rejected,
            P::ContentFiltered { .. } => Self::ContentFilter,
            P::RateLimited { .. } => Self::RateLimited,
            P::Upstream { .. } => Self::Upstream5xx,
            P::Timeout => Self::Timeout,
            P::Connect(_) => Self::Connect,
            P::Protocol(_) => Self::Protocol,
            P::UnknownModel(_) => Self::UnknownModel,
        }
    }
}

/// All of tollgate's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub cache: Family<CacheLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub saved_tokens: Counter,
    pub saved_dollars: Counter<f64, AtomicU64>,
    pub limiter: Family<LimiterLabels, Counter>,
    pub queue_waits: Family<QueueLabels, Histogram>,
    pub queue_waiting: Gauge,
    pub result_lookups: Family<TierLabels, Counter>,
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    pub semantic_skipped: Family<SemanticSkipLabels, Counter>,
    pub semantic_checks: Family<SemanticCheckLabels, Counter>,
    pub semantic_threshold: Family<ModelLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status class",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head, by route",
            latency.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Exact-cache outcomes of chat requests",
            cache.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register("tokens", "Tokens used upstream", tokens.clone());
        let saved_tokens = Counter::default();
        registry.register(
            "cache_saved_tokens",
            "Tokens not spent upstream thanks to cache hits",
            saved_tokens.clone(),
        );
        let saved_dollars = Counter::<f64, AtomicU64>::default();
        registry.register(
            "cache_saved_dollars",
            "Dollars not spent upstream thanks to cache hits",
            saved_dollars.clone(),
        );
        let limiter = Family::<LimiterLabels, Counter>::default();
        registry.register("limiter_decisions", "Rate-limit decisions", limiter.clone());
        let queue_waits = Family::<QueueLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "queue_wait_seconds",
            "Time requests waited in a concurrency queue, by how the wait ended",
            queue_waits.clone(),
        );
        let result_lookups = Family::<TierLabels, Counter>::default();
        registry.register(
            "result_lookups",
            "Tiered result-cache lookups by the tier that answered (0: the most specific), or miss",
            result_lookups.clone(),
        );
        let queue_waiting = Gauge::default();
        registry.register(
            "queue_waiting",
            "Requests of this instance waiting in a concurrency queue now",
            queue_waiting.clone(),
        );
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures by kind",
            upstream_errors.clone(),
        );
        let semantic_skipped = Family::<SemanticSkipLabels, Counter>::default();
        registry.register(
            "semantic_skipped",
            "Requests that went on without the semantic cache (embedder busy or slow), and questions not indexed",
            semantic_skipped.clone(),
        );
        let semantic_checks = Family::<SemanticCheckLabels, Counter>::default();
        registry.register(
            "semantic_checks",
            "Semantic candidates also sent upstream to check their cached answer (one upstream call each), by outcome",
            semantic_checks.clone(),
        );
        let semantic_threshold = Family::<ModelLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "semantic_threshold",
            "A model's semantic threshold as its checks moved it (semantic_cache.max_error_rate)",
            semantic_threshold.clone(),
        );
        Metrics {
            semantic_skipped,
            semantic_checks,
            semantic_threshold,
            registry,
            requests,
            latency,
            cache,
            tokens,
            saved_tokens,
            saved_dollars,
            limiter,
            queue_waits,
            queue_waiting,
            result_lookups,
            upstream_errors,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one answered request.
    pub fn request(&self, route: String, status: u16, took: Duration) {
        let status = match status {
            429 => StatusClass::RateLimited,
            400..=499 => StatusClass::ClientError,
            500..=599 => StatusClass::ServerError,
            _ => StatusClass::Ok,
        };
        self.latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// Counts one cache outcome.
    pub fn cache(&self, result: CacheResult) {
        self.cache.get_or_create(&CacheLabels { result }).inc();
    }

    /// Counts one request that went on without the semantic cache (or one question not
    /// indexed).
    pub fn semantic_skipped(&self, reason: SemanticSkip) {
        self.semantic_skipped
            .get_or_create(&SemanticSkipLabels { reason })
            .inc();
    }

    /// Counts one upstream failure, by kind.
    pub fn upstream_error(&self, e: &tollgate_providers::ProviderError) {
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                kind: UpstreamErrorKind::of(e),
            })
            .inc();
    }

    /// Records one wait in a concurrency queue.
    pub fn queue_waited(&self, outcome: QueueOutcome, waited: Duration) {
        self.queue_waits
            .get_or_create(&QueueLabels { outcome })
            .observe(waited.as_secs_f64());
    }

    /// Counts one tiered result-cache lookup: the tier that answered, or none.
    pub fn result_lookup(&self, tier: Option<usize>) {
        let tier = tier.map_or_else(|| "miss".to_owned(), |t| t.to_string());
        self.result_lookups
            .get_or_create(&TierLabels { tier })
            .inc();
    }

    /// Counts one limiter decision.
    pub fn limiter(&self, decision: LimiterDecision) {
        self.limiter
            .get_or_create(&LimiterLabels { decision })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_snake_case() {
        for (name, label) in [
            ("Hit", "hit"),
            ("FailOpenAllowed", "fail_open_allowed"),
            ("Upstream5xx", "upstream_5xx"),
            ("IndexDropped", "index_dropped"),
            ("Paced", "paced"),
        ] {
            assert_eq!(snake_case(name), label);
        }
        // The upstream error labels are the errors' own kinds.
        let e = tollgate_providers::ProviderError::Upstream {
            status: 502,
            message: String::new(),
        };
        assert_eq!(
            snake_case(&format!("{:?}", UpstreamErrorKind::of(&e))),
            e.kind()
        );
    }
}
