//! Rate limits in the request path.
//!
//! One script call checks and charges every limit of a request (requests and tokens per minute,
//! concurrency, per-model requests and tokens, and the model's capacity shared by every key),
//! all or nothing. On a cluster a model's capacity lives in its own slot: that is one more
//! script, sent at the same time (see [`tollgate_redis::RateLimiter::check_all`]). Tokens are
//! reserved from an estimate and settled with the real usage when the request ends; the
//! [`Admission`] settles itself when dropped, so a request that ends any way at all (a client
//! gone mid-stream included) gives back what it did not use and its concurrency slot.
//!
//! A request refused only for want of concurrency slots waits for one, up to its tier's
//! `queue_wait_seconds` (or less, `x-tollgate-queue-wait`): it takes its place in the slots'
//! queues in Redis and asks again (at once when this instance frees a slot, else within
//! [`QUEUE_POLL`]); slots go to waiters in order of arrival, whichever replica they ask from. A
//! waiter that stops asking (its client left, its gateway died) loses its place within
//! [`QUEUE_GRACE`].
//!
//! Redis unreachable: with `on_redis_error = "open"` an in-process limiter enforces this
//! instance's share (1 / `expected_instances`) of each limit; with `"closed"`, 503.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue};
use tollgate_redis::{Check, Decision, Id, Lease, Limit, LimitKey, MultiDecision, Waiter};

use crate::auth::Principal;
use crate::config::FailPolicy;
use crate::error::ApiError;
use crate::local_limiter::LocalGuard;
use crate::metrics::{LimiterDecision, QueueOutcome};
use crate::state::Gateway;

const MINUTE: Duration = Duration::from_secs(60);

/// Tokens assumed for the answer when a request sets no `max_tokens`.
pub const ASSUMED_OUTPUT_TOKENS: u64 = 512;

/// The longest a queued request goes without asking again (a slot freed by another instance
/// reaches it within this).
pub const QUEUE_POLL: Duration = Duration::from_millis(100);

/// A waiter that has not asked again for this long loses its place in the queue.
pub const QUEUE_GRACE: Duration = Duration::from_secs(2);

/// What was charged for a request; settles on drop.
#[derive(Debug)]
pub struct Admission {
    gw: Option<Arc<Gateway>>,
    leases: Vec<Lease>,
    renewal: Option<crate::lease_keeper::Held>,
    tokens: Vec<(LimitKey, u64)>,
    reserved: u64,
    used: Arc<AtomicU64>,
    local: Option<LocalGuard>,
    /// `x-ratelimit-*` headers for the response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Admission {
    /// An admission with nothing charged (no limits apply).
    pub fn free() -> Self {
        Admission {
            gw: None,
            leases: Vec::new(),
            renewal: None,
            tokens: Vec::new(),
            reserved: 0,
            used: Arc::new(AtomicU64::new(0)),
            local: None,
            headers: Vec::new(),
        }
    }

    /// Records the tokens the request really used upstream (0, the default, refunds the whole
    /// reservation: cache hits and coalesced answers cost the upstream nothing).
    pub fn set_used(&self, tokens: u64) {
        self.used.store(tokens, Ordering::Relaxed);
    }

    /// Tokens reserved.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        drop(self.renewal.take());
        let Some(gw) = self.gw.take() else { return };
        let leases = std::mem::take(&mut self.leases);
        let tokens = std::mem::take(&mut self.tokens);
        let delta = self.used.load(Ordering::Relaxed) as i64 - self.reserved as i64;
        if leases.is_empty() && (tokens.is_empty() || delta == 0) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            // One round trip (one per slot on a cluster): the slots back, the reservations
            // settled.
            let buckets = if delta == 0 { Vec::new() } else { tokens };
            if let Err(e) = gw.limiter.settle(&leases, &buckets, MINUTE, delta).await {
                tracing::debug!(error = %e, "could not settle a request's limits; leases expire, reservations stand");
            }
            if !leases.is_empty() {
                gw.slots_freed.notify_waiters();
            }
        });
    }
}

/// What a request is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// It goes upstream: one request, the estimated tokens (settled later), a concurrency slot.
    Full { estimated_tokens: u64 },
    /// It is answered without the upstream (a cache hit, a coalesced follower): one request.
    RequestOnly,
}

/// The limits of one request, before they are checked.
#[derive(Clone)]
pub struct Planned {
    /// What to check, all or nothing.
    pub checks: Vec<Check>,
    /// What each check is, for a refusal's message.
    names: Vec<String>,
    /// The token buckets charged (settled with the real usage).
    tokens: Vec<(LimitKey, u64)>,
    /// Which decisions feed the request and the token headers.
    requests_at: Vec<usize>,
    tokens_at: Vec<usize>,
    estimate: u64,
    lease_len: Duration,
}

/// Checks and charges the limits of one request for `model`; refused only for want of
/// concurrency slots, it waits for them up to its tier's `queue_wait_seconds` (at most `wait`,
/// when the request asks for less).
pub async fn admit(
    gw: &Arc<Gateway>,
    principal: &Principal,
    model: &str,
    charge: Charge,
    wait: Option<Duration>,
) -> Result<Admission, ApiError> {
    let planned = plan(gw, principal, model, charge)?;
    if planned.checks.is_empty() {
        return Ok(Admission::free());
    }
    let tier_wait = principal
        .limits
        .queue_wait_seconds
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or_default();
    let wait = wait.map_or(tier_wait, |w| w.min(tier_wait));
    let slots = planned
        .checks
        .iter()
        .any(|c| matches!(c.limit, Limit::Concurrency { .. }));
    if wait.is_zero() || !slots {
        let decision = gw.limiter.check_all(&planned.checks).await;
        return decide(gw, principal, planned, decision);
    }
    let (decision, queued) = queue(gw, &planned.checks, wait).await;
    let mut admitted = decide(gw, principal, planned, decision);
    if let Some(q) = queued {
        let waited = q.waited.as_millis().to_string();
        let headers = match &mut admitted {
            Ok(a) => &mut a.headers,
            Err(ApiError::RateLimited {
                message, headers, ..
            }) => {
                message.push_str(&format!(
                    "; waited {:.1} s in the queue for a slot",
                    q.waited.as_secs_f64()
                ));
                headers
            }
            Err(_) => return admitted,
        };
        for (name, value) in [
            ("x-tollgate-queue-position", q.position.to_string()),
            ("x-tollgate-queue-wait-ms", waited),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.push((HeaderName::from_static(name), v));
            }
        }
    }
    admitted
}

/// A request to an alias whose deployments have capacities of their own: admitted to the first
/// deployment in `order` (the router's, by weight) that has room, its capacity checked with
/// the request's other limits in one admission. The route it returns starts with that
/// deployment, followed by those without a capacity (a fallback must not overrun one); `None`
/// when no deployment of `order` has a capacity (then [`admit`] as usual). Refused by every
/// deployment's capacity, the 429 names the last one's: such a request does not queue (it
/// would have to wait in every deployment's queue at once).
pub async fn admit_to_deployment(
    gw: &Arc<Gateway>,
    principal: &Principal,
    model: &str,
    charge: Charge,
    wait: Option<Duration>,
    order: Vec<tollgate_providers::Deployment>,
) -> Result<(Admission, Option<Vec<tollgate_providers::Deployment>>), ApiError> {
    let capped = |d: &tollgate_providers::Deployment| gw.config.capacity.contains_key(&d.name);
    if !matches!(charge, Charge::Full { .. }) || !order.iter().any(capped) {
        return Ok((admit(gw, principal, model, charge, wait).await?, None));
    }
    let uncapped: Vec<_> = order.iter().filter(|d| !capped(d)).cloned().collect();
    // The request's own limits, the same whichever deployment takes it.
    let own_limits = plan(gw, principal, model, charge)?;
    let own = own_limits.checks.len();
    let mut refused = None;
    for deployment in &order {
        let mut planned = own_limits.clone();
        planned.capacity(gw, &deployment.name)?;
        if planned.checks.is_empty() {
            return Ok((Admission::free(), Some(order)));
        }
        let decision = gw.limiter.check_all(&planned.checks).await;
        // Refused only by this deployment's capacity: the next one may have room.
        let only_its_own = matches!(&decision, Ok(d) if !d.allowed
            && d.decisions[..own].iter().all(|d| d.allowed));
        if only_its_own {
            refused = Some((planned, decision));
            continue;
        }
        let admission = decide(gw, principal, planned, decision)?;
        let mut route = vec![deployment.clone()];
        route.extend(
            uncapped
                .iter()
                .filter(|d| d.name != deployment.name)
                .cloned(),
        );
        return Ok((admission, Some(route)));
    }
    match refused {
        Some((planned, decision)) => Err(decide(gw, principal, planned, decision)
            .err()
            .unwrap_or_else(|| ApiError::Internal("a refused admission was admitted".into()))),
        None => Ok((admit(gw, principal, model, charge, wait).await?, None)),
    }
}

/// How a request waited in the queue.
struct Queued {
    /// Its place when it joined (1: first).
    position: u64,
    waited: Duration,
}

/// Checks `checks`, waiting in the slots' queues while only they refuse, up to `wait`. The
/// decision is the last one; `Queued` when the request waited.
async fn queue(
    gw: &Gateway,
    checks: &[Check],
    wait: Duration,
) -> (tollgate_redis::Result<MultiDecision>, Option<Queued>) {
    let waiter = Waiter::new(QUEUE_GRACE);
    let start = Instant::now();
    let deadline = start + wait;
    let mut queued: Option<Queued> = None;
    let mut _waiting: Option<WaitingGauge> = None;
    let mut pause = Duration::from_millis(5);
    // Leaves the queue if the request goes away while it waits (its client disconnected).
    let mut leave = LeaveOnDrop(Some((gw.limiter.clone(), checks.to_vec(), waiter.clone())));
    loop {
        // Registered before asking, so a slot freed meanwhile on this instance is not missed.
        let freed = gw.slots_freed.notified();
        let decision = gw.limiter.check_all_waiting(checks, &waiter).await;
        let place = match &decision {
            Ok(d) if !d.allowed => d.decisions.iter().map(|d| d.queued).max().unwrap_or(0),
            _ => 0,
        };
        if let Some(q) = &mut queued {
            q.waited = start.elapsed();
        }
        let now = Instant::now();
        if place == 0 || now >= deadline {
            let outcome = match &decision {
                Ok(d) if d.allowed => QueueOutcome::Admitted,
                _ if place > 0 => QueueOutcome::TimedOut,
                _ => QueueOutcome::Refused,
            };
            if outcome == QueueOutcome::Admitted {
                // Its place went with the slot it took.
                leave.0 = None;
            }
            if queued.is_some() {
                gw.metrics.queue_waited(outcome, start.elapsed());
            }
            return (decision, queued);
        }
        if queued.is_none() {
            queued = Some(Queued {
                position: place,
                waited: Duration::ZERO,
            });
            _waiting = Some(WaitingGauge::new(&gw.metrics));
        }
        let pause_until = (now + pause).min(deadline);
        tokio::select! {
            () = freed => {}
            () = tokio::time::sleep_until(pause_until.into()) => {}
        }
        pause = (pause * 2).min(QUEUE_POLL);
    }
}

/// Counts a request in `tollgate_queue_waiting` while it lives.
struct WaitingGauge(prometheus_client::metrics::gauge::Gauge);

impl WaitingGauge {
    fn new(metrics: &crate::metrics::Metrics) -> Self {
        metrics.queue_waiting.inc();
        WaitingGauge(metrics.queue_waiting.clone())
    }
}

impl Drop for WaitingGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Takes a waiter out of its queues when dropped still holding it.
struct LeaveOnDrop(Option<(tollgate_redis::RateLimiter, Vec<Check>, Waiter)>);

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        let Some((limiter, checks, waiter)) = self.0.take() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = limiter.leave(&checks, &waiter).await {
                    tracing::debug!(error = %e, "could not leave a queue; the place lapses by itself");
                }
            });
        }
    }
}

/// The limits `charge` takes of `principal`'s for `model` (a request that could never pass,
/// more tokens than a whole minute's, is refused here).
pub fn plan(
    gw: &Gateway,
    principal: &Principal,
    model: &str,
    charge: Charge,
) -> Result<Planned, ApiError> {
    let (estimate, full) = match charge {
        Charge::Full { estimated_tokens } => (estimated_tokens, true),
        Charge::RequestOnly => (0, false),
    };
    let limits = &principal.limits;
    let model_limits = limits.models.get(model).cloned().unwrap_or_default();
    let subject = Id::new(&principal.subject).map_err(|e| ApiError::Internal(e.to_string()))?;
    let key = |name: &str| {
        gw.limiter
            .key(&subject, name)
            .map_err(|e| ApiError::Internal(e.to_string()))
    };
    let lease_len = Duration::from_secs(gw.config.limits.concurrency_lease_seconds);
    let mut planned = Planned {
        checks: Vec::new(),
        names: Vec::new(),
        tokens: Vec::new(),
        requests_at: Vec::new(),
        tokens_at: Vec::new(),
        estimate,
        lease_len,
    };
    for (scope, rpm, tpm) in [
        ("", limits.rpm, limits.tpm),
        ("model", model_limits.rpm, model_limits.tpm),
    ] {
        let scoped = |what: &str| {
            if scope.is_empty() {
                what.to_owned()
            } else {
                format!("m:{model}:{what}")
            }
        };
        if let Some(rpm) = rpm {
            planned.requests(key(&scoped("rpm"))?, rpm, "requests per minute".into());
        }
        if let Some(tpm) = tpm.filter(|_| full) {
            planned.tokens(
                key(&scoped("tpm"))?,
                tpm,
                "tokens per minute".into(),
                format!("the limit of {tpm} tokens per minute"),
            )?;
        }
    }
    if let Some(max) = limits.max_concurrency.filter(|_| full) {
        planned.slots(key("conc")?, max, "concurrent requests".into());
    }
    // The model's capacity, shared by every key: only what goes upstream uses it.
    if full {
        planned.capacity(gw, model)?;
    }
    Ok(planned)
}

impl Planned {
    /// `model`'s capacity (a model asked for, or a deployment an alias routes to), if it has
    /// one configured.
    fn capacity(&mut self, gw: &Gateway, model: &str) -> Result<(), ApiError> {
        let Some(capacity) = gw.config.capacity.get(model) else {
            return Ok(());
        };
        let id = Id::new(model).map_err(|e| ApiError::Internal(e.to_string()))?;
        let key = |name: &str| {
            gw.limiter
                .model_key(&id, name)
                .map_err(|e| ApiError::Internal(e.to_string()))
        };
        if let Some(rpm) = capacity.rpm {
            let name = format!("{model}'s capacity in requests per minute");
            self.requests(key("rpm")?, rpm, name);
        }
        if let Some(tpm) = capacity.tpm {
            self.tokens(
                key("tpm")?,
                tpm,
                format!("{model}'s capacity in tokens per minute"),
                format!("{model}'s capacity of {tpm} tokens per minute"),
            )?;
        }
        if let Some(max) = capacity.max_concurrency {
            let name = format!("{model}'s capacity in concurrent requests");
            self.slots(key("conc")?, max, name);
        }
        Ok(())
    }

    /// At most `rpm` requests in any 60 seconds, as users read a per-minute limit.
    fn requests(&mut self, key: LimitKey, rpm: u64, name: String) {
        self.requests_at.push(self.checks.len());
        self.names.push(name);
        self.checks.push(Check {
            key,
            limit: Limit::SlidingLog {
                limit: rpm,
                window: MINUTE,
            },
            cost: 1,
        });
    }

    /// `tpm` tokens a minute, the request's estimate reserved (settled with the real usage).
    /// A request that could never pass (`more_than` names what it exceeds) is refused here.
    fn tokens(
        &mut self,
        key: LimitKey,
        tpm: u64,
        name: String,
        more_than: String,
    ) -> Result<(), ApiError> {
        let estimate = self.estimate;
        if estimate > tpm {
            return Err(ApiError::RateLimited {
                message: format!(
                    "request too large: it may use {estimate} tokens (prompt + max_tokens), more than {more_than}; lower max_tokens"
                ),
                retry_after: MINUTE,
                headers: Vec::new(),
            });
        }
        self.tokens_at.push(self.checks.len());
        self.names.push(name);
        self.tokens.push((key.clone(), tpm));
        self.checks.push(Check {
            key,
            limit: Limit::TokenBucket {
                capacity: tpm,
                period: MINUTE,
            },
            cost: estimate,
        });
        Ok(())
    }

    /// At most `max` requests at once: a lease, renewed while the request runs.
    fn slots(&mut self, key: LimitKey, max: u64, name: String) {
        self.names.push(name);
        self.checks.push(Check {
            key,
            limit: Limit::Concurrency {
                limit: max,
                lease: self.lease_len,
            },
            cost: 1,
        });
    }
}

/// The admission of a request whose `planned` limits were checked, to `decision`: its headers,
/// its lease kept alive; or the 429 naming what refused it. Redis failed: the policy for Redis
/// being away.
pub fn decide(
    gw: &Arc<Gateway>,
    principal: &Principal,
    planned: Planned,
    decision: tollgate_redis::Result<tollgate_redis::MultiDecision>,
) -> Result<Admission, ApiError> {
    let Planned {
        checks,
        names,
        tokens,
        requests_at,
        tokens_at,
        estimate,
        lease_len: _,
    } = planned;
    if checks.is_empty() {
        return Ok(Admission::free());
    }
    let decision = match decision {
        Ok(d) => d,
        // Whatever failed (unreachable, full, read-only, a reply not understood), the limits
        // follow their policy for Redis being away.
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter failed; following the policy for Redis being away");
            return fail_over(gw, principal, &checks, estimate);
        }
    };
    let mut headers = Vec::new();
    let mut policies = Vec::new();
    for (family, names, at) in [
        ("requests", REQUEST_HEADERS, &requests_at),
        ("tokens", TOKEN_HEADERS, &tokens_at),
    ] {
        if let Some(d) = binding(at.iter().map(|&i| &decision.decisions[i])) {
            push_headers(&mut headers, names, d);
            // What the numbers mean (the IETF RateLimit-Policy form): requests within any
            // 60-second window; tokens from a bucket refilled over 60 seconds.
            policies.push(format!("\"{family}\";q={};w=60", d.limit));
        }
    }
    if let Ok(v) = HeaderValue::from_str(&policies.join(", "))
        && !policies.is_empty()
    {
        headers.push((HeaderName::from_static("ratelimit-policy"), v));
    }
    if !decision.allowed {
        gw.metrics.limiter(LimiterDecision::Denied);
        let which: Vec<&str> = names
            .iter()
            .zip(&decision.decisions)
            .filter(|(_, d)| !d.allowed)
            .map(|(name, _)| name.as_str())
            .collect();
        return Err(ApiError::RateLimited {
            message: format!(
                "rate limit exceeded ({}); retry after the time in the retry-after header",
                which.join(", ")
            ),
            retry_after: decision.retry_after().max(Duration::from_millis(1)),
            headers,
        });
    }
    gw.metrics.limiter(LimiterDecision::Allowed);
    // The concurrency slots are renewed while the request runs.
    let renewal = (!decision.leases.is_empty()).then(|| gw.leases.hold(decision.leases.clone()));
    Ok(Admission {
        gw: Some(gw.clone()),
        leases: decision.leases,
        renewal,
        tokens,
        reserved: estimate,
        used: Arc::new(AtomicU64::new(0)),
        local: None,
        headers,
    })
}

/// The limit the headers should describe: one that refused (the longest wait), else the one
/// with the least left.
fn binding<'a>(decisions: impl Iterator<Item = &'a Decision>) -> Option<&'a Decision> {
    decisions.min_by_key(|d| (d.allowed, std::cmp::Reverse(d.retry_after), d.remaining))
}

/// The `x-ratelimit-{limit,remaining,reset}-*` headers of a family of limits.
const REQUEST_HEADERS: [&str; 3] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
];
const TOKEN_HEADERS: [&str; 3] = [
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
];

fn push_headers(
    headers: &mut Vec<(HeaderName, HeaderValue)>,
    names: [&'static str; 3],
    d: &Decision,
) {
    let [limit, remaining, reset] = names.map(HeaderName::from_static);
    headers.push((limit, HeaderValue::from(d.limit)));
    headers.push((remaining, HeaderValue::from(d.remaining)));
    if let Ok(v) = HeaderValue::from_str(&format_duration(d.reset)) {
        headers.push((reset, v));
    }
}

/// OpenAI's spelling of a reset time: `350ms`, `1s`, `6m0s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}s", ms.div_ceil(1000))
    } else {
        let s = ms.div_ceil(1000);
        format!("{}m{}s", s / 60, s % 60)
    }
}

fn fail_over(
    gw: &Arc<Gateway>,
    principal: &Principal,
    checks: &[Check],
    estimate: u64,
) -> Result<Admission, ApiError> {
    // Each kind of limit may have its own policy; one closed limit closes the request.
    let l = &gw.config.limits;
    let closed = checks.iter().any(|c| {
        let own = match c.limit {
            Limit::Concurrency { .. } => l.concurrency_on_redis_error,
            Limit::TokenBucket { .. } => l.tokens_on_redis_error,
            _ => l.requests_on_redis_error,
        };
        own.unwrap_or(l.on_redis_error) == FailPolicy::Closed
    });
    if closed {
        gw.metrics.limiter(LimiterDecision::FailClosed);
        return Err(ApiError::Unavailable("rate limiter unavailable".into()));
    }
    let share = l.expected_instances.max(1);
    match gw
        .local_limits
        .check(&principal.subject, checks, estimate, share)
    {
        Ok(guard) => {
            gw.metrics.limiter(LimiterDecision::FailOpenAllowed);
            let mut a = Admission::free();
            a.local = Some(guard);
            Ok(a)
        }
        Err(retry_after) => {
            gw.metrics.limiter(LimiterDecision::FailOpenDenied);
            Err(ApiError::RateLimited {
                message: "rate limit exceeded".into(),
                retry_after,
                headers: Vec::new(),
            })
        }
    }
}
