//! Rate limits and quotas, each decided by one Lua script in one round trip on the server's clock.
//!
//! Every algorithm lives once, in `lua/rate_limit.lua`, as a check and a commit; a single check
//! is the one-limit case of [`RateLimiter::check_all`], which checks several limits of one
//! request and charges them all or none. The algorithms:
//!
//! | [`Limit`] | exact? | memory | use |
//! |---|---|---|---|
//! | `Gcra` | exact | one string | requests per period, with burst |
//! | `SlidingLog` | exact over any window | 8 bytes per unit admitted within the window | requests per minute, as users read it |
//! | `SlidingCounter` | approximate | two counters | large limits, cheap |
//! | `FixedWindow` | exact per window, 2x at a boundary | one hash | quotas per calendar window |
//! | `TokenBucket` | exact | one hash | tokens per minute, reserve-then-reconcile |
//! | `Concurrency` | exact | one member per holder | in-flight requests; slots are leases |
//!
//! Each answer carries what `x-ratelimit-*` and `retry-after` need ([`Decision`]). What to do
//! when Redis is unreachable (fail open or closed) is the caller's policy: this module reports
//! [`Error::Unavailable`] and never guesses.

use std::time::Duration;

use redis::Value;

use crate::conn::Redis;
use crate::error::{Error, Result};
use crate::keys::{self, Id, Keys};
use crate::millis;
use crate::scripts;

/// One limit's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Generic cell rate algorithm: `limit` per `period`, up to `burst` at once.
    Gcra {
        limit: u64,
        period: Duration,
        burst: u64,
    },
    /// Sliding-window log: at most `limit` within any `window`.
    SlidingLog { limit: u64, window: Duration },
    /// Sliding-window counter: about `limit` within any `window` (weighted previous window).
    SlidingCounter { limit: u64, window: Duration },
    /// Fixed window aligned to the epoch: at most `limit` per window.
    FixedWindow { limit: u64, window: Duration },
    /// Token bucket: `capacity` refilled evenly over `period` (e.g. tokens per minute).
    TokenBucket { capacity: u64, period: Duration },
    /// Concurrency semaphore: at most `limit` leases held; a lease lasts `lease` unless renewed.
    Concurrency { limit: u64, lease: Duration },
}

impl Limit {
    /// `limit` requests per `period`, bursting up to the whole limit.
    pub fn per(limit: u64, period: Duration) -> Self {
        Limit::Gcra {
            limit,
            period,
            burst: limit,
        }
    }

    fn capacity(&self) -> u64 {
        match *self {
            Limit::Gcra { burst, .. } => burst,
            Limit::SlidingLog { limit, .. }
            | Limit::SlidingCounter { limit, .. }
            | Limit::FixedWindow { limit, .. }
            | Limit::Concurrency { limit, .. } => limit,
            Limit::TokenBucket { capacity, .. } => capacity,
        }
    }

    fn validate(&self, cost: u64) -> Result<()> {
        let (amount, span) = match *self {
            Limit::Gcra {
                limit,
                period,
                burst,
            } => {
                if burst == 0 {
                    return Err(Error::InvalidArgument("burst must be at least 1".into()));
                }
                (limit, period)
            }
            Limit::SlidingLog { limit, window }
            | Limit::SlidingCounter { limit, window }
            | Limit::FixedWindow { limit, window } => (limit, window),
            Limit::TokenBucket { capacity, period } => (capacity, period),
            Limit::Concurrency { limit, lease } => (limit, lease),
        };
        if amount == 0 {
            return Err(Error::InvalidArgument(
                "a limit must allow at least 1".into(),
            ));
        }
        if span.as_millis() == 0 {
            return Err(Error::InvalidArgument(
                "a limit's period must be at least 1 ms".into(),
            ));
        }
        if cost > self.capacity() {
            return Err(Error::InvalidArgument(format!(
                "cost {cost} exceeds the limit's capacity {}",
                self.capacity()
            )));
        }
        Ok(())
    }
}

/// The key of one limit of one subject (an API key, a user, a model of a key...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey(String);

impl LimitKey {
    /// The Redis key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One limit to check and charge as part of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Which counter.
    pub key: LimitKey,
    /// Its rule.
    pub limit: Limit,
    /// Units to charge (requests, tokens); 1 for concurrency.
    pub cost: u64,
}

/// One limit's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The request may proceed (as far as this limit goes).
    pub allowed: bool,
    /// The limit's capacity (`x-ratelimit-limit-*`).
    pub limit: u64,
    /// Units left after this request (`x-ratelimit-remaining-*`).
    pub remaining: u64,
    /// Until the limit is whole again (`x-ratelimit-reset-*`).
    pub reset: Duration,
    /// Until this request could pass; zero when allowed (`retry-after`).
    pub retry_after: Duration,
}

/// The answer to [`RateLimiter::check_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiDecision {
    /// Every limit allowed it, and every limit was charged. When false, nothing was charged.
    pub allowed: bool,
    /// One decision per check, in order.
    pub decisions: Vec<Decision>,
    /// The concurrency lease taken, when a check was a [`Limit::Concurrency`] and all allowed.
    pub lease: Option<Lease>,
}

impl MultiDecision {
    /// How long to wait before retrying: the longest wait among the limits that refused.
    pub fn retry_after(&self) -> Duration {
        self.decisions
            .iter()
            .filter(|d| !d.allowed)
            .map(|d| d.retry_after)
            .max()
            .unwrap_or_default()
    }
}

/// A held concurrency slot. Renew it before `lease` runs out; release it when done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    key: LimitKey,
    id: String,
    duration: Duration,
}

impl Lease {
    /// The lease's id (unique per acquisition).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Rate limits on one Redis.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    redis: Redis,
    keys: Keys,
}

impl RateLimiter {
    /// Limits stored under `keys`' prefix.
    pub fn new(redis: Redis, keys: Keys) -> Self {
        RateLimiter { redis, keys }
    }

    /// The key of limit `name` of `subject`. All limits of one subject share a hash tag, so they
    /// can be checked together in a cluster.
    pub fn key(&self, subject: &Id, name: &str) -> Result<LimitKey> {
        Ok(LimitKey(self.keys.rate_limit(subject, &Id::new(name)?)))
    }

    /// Checks one limit and charges `cost` if it allows. For [`Limit::Concurrency`] use
    /// [`RateLimiter::acquire`], which hands back the lease.
    pub async fn check(&self, key: &LimitKey, limit: Limit, cost: u64) -> Result<Decision> {
        let multi = self
            .check_all(&[Check {
                key: key.clone(),
                limit,
                cost,
            }])
            .await?;
        multi
            .decisions
            .into_iter()
            .next()
            .ok_or_else(|| Error::reply("rate_limit", "no decision"))
    }

    /// Takes a concurrency slot: `Some(lease)` when one was free.
    pub async fn acquire(
        &self,
        key: &LimitKey,
        limit: u64,
        lease: Duration,
    ) -> Result<(Decision, Option<Lease>)> {
        let multi = self
            .check_all(&[Check {
                key: key.clone(),
                limit: Limit::Concurrency { limit, lease },
                cost: 1,
            }])
            .await?;
        let decision = multi
            .decisions
            .first()
            .copied()
            .ok_or_else(|| Error::reply("rate_limit", "no decision"))?;
        Ok((decision, multi.lease))
    }

    /// Checks every limit; charges all of them only if all allow (one script, one round trip).
    /// The keys must share one hash tag (true of all limits of one subject).
    pub async fn check_all(&self, checks: &[Check]) -> Result<MultiDecision> {
        if checks.is_empty() {
            return Ok(MultiDecision {
                allowed: true,
                decisions: vec![],
                lease: None,
            });
        }
        let prepared = PreparedChecks::of(checks)?;
        let mut invocation = scripts::RATE_LIMIT.prepare_invoke();
        prepared.add_to(&mut invocation);
        let reply: Value = invocation.invoke_async(&mut self.redis.conn()).await?;
        prepared.decision(reply)
    }

    /// Extends a held lease by its duration; `false` when it was already lost (expired).
    pub async fn renew(&self, lease: &Lease) -> Result<bool> {
        let renewed: i64 = scripts::LEASE_RENEW
            .key(lease.key.as_str())
            .arg(&lease.id)
            .arg(millis(lease.duration))
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(renewed == 1)
    }

    /// Gives a slot back; `false` when it had already expired.
    pub async fn release(&self, lease: Lease) -> Result<bool> {
        let removed: i64 = redis::cmd("ZREM")
            .arg(lease.key.as_str())
            .arg(&lease.id)
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(removed == 1)
    }

    /// Settles a token reservation: `delta = actual - reserved` tokens are charged (positive) or
    /// refunded (negative). Returns the tokens left (negative while in debt).
    pub async fn reconcile_tokens(
        &self,
        key: &LimitKey,
        capacity: u64,
        period: Duration,
        delta: i64,
    ) -> Result<i64> {
        let left = self
            .settle(None, &[(key.clone(), capacity)], period, delta)
            .await?;
        left.first()
            .copied()
            .ok_or_else(|| Error::reply("settle", "no bucket in the reply"))
    }

    /// Ends a request's charges in one round trip: releases `lease` (if any) and settles each
    /// token bucket `(key, capacity)` with `delta = actual - reserved`. The keys must belong to
    /// one subject. Returns the tokens left in each bucket.
    pub async fn settle(
        &self,
        lease: Option<&Lease>,
        buckets: &[(LimitKey, u64)],
        period: Duration,
        delta: i64,
    ) -> Result<Vec<i64>> {
        if lease.is_none() && buckets.is_empty() {
            return Ok(Vec::new());
        }
        for (_, capacity) in buckets {
            Limit::TokenBucket {
                capacity: *capacity,
                period,
            }
            .validate(0)?;
        }
        let tag = lease
            .map(|l| l.key.as_str())
            .or_else(|| buckets.first().map(|(k, _)| k.as_str()))
            .and_then(keys::hash_tag);
        if buckets
            .iter()
            .any(|(k, _)| keys::hash_tag(k.as_str()) != tag)
        {
            return Err(Error::InvalidArgument(
                "a lease and buckets settled together must belong to one subject".into(),
            ));
        }
        let mut invocation = scripts::SETTLE.prepare_invoke();
        match lease {
            Some(l) => invocation.key(l.key.as_str()).arg(&l.id),
            None => invocation.arg(""),
        };
        invocation.arg(millis(period)).arg(delta);
        for (key, capacity) in buckets {
            invocation.key(key.as_str()).arg(*capacity);
        }
        let left: Vec<i64> = invocation.invoke_async(&mut self.redis.conn()).await?;
        Ok(left)
    }
}

/// The limits of one request as `rate_limit.lua` takes them (its keys, then its arguments), and
/// the lease it would take: checked alone ([`RateLimiter::check_all`]) or inside another script
/// ([`crate::ResponseCache::lead_admitting`]).
#[derive(Debug, Clone)]
pub struct PreparedChecks {
    keys: Vec<String>,
    args: Vec<String>,
    lease: Option<Lease>,
    n: usize,
}

impl PreparedChecks {
    /// Validates `checks` (one hash tag, at most one concurrency limit, sane costs).
    pub fn of(checks: &[Check]) -> Result<PreparedChecks> {
        let tag = checks.first().map(|c| keys::hash_tag(c.key.as_str()));
        if checks
            .iter()
            .any(|c| Some(keys::hash_tag(c.key.as_str())) != tag)
        {
            return Err(Error::InvalidArgument(
                "limits checked together must belong to one subject (one hash tag)".into(),
            ));
        }
        if checks
            .iter()
            .filter(|c| matches!(c.limit, Limit::Concurrency { .. }))
            .count()
            > 1
        {
            return Err(Error::InvalidArgument(
                "at most one concurrency limit per check".into(),
            ));
        }
        let mut prepared = PreparedChecks {
            keys: Vec::with_capacity(checks.len()),
            args: vec![checks.len().to_string()],
            lease: None,
            n: checks.len(),
        };
        for check in checks {
            check.limit.validate(check.cost)?;
            let cost = check.cost.to_string();
            // The kinds measured over a window: limit, window, cost.
            let windowed = |kind: &str, limit: u64, window: Duration| {
                [
                    kind.to_owned(),
                    limit.to_string(),
                    millis(window).to_string(),
                    cost.clone(),
                    "0".to_owned(),
                ]
            };
            let [kind, a, b, c, d] = match check.limit {
                Limit::Gcra {
                    limit,
                    period,
                    burst,
                } => [
                    "gcra".into(),
                    limit.to_string(),
                    millis(period).to_string(),
                    burst.to_string(),
                    cost.clone(),
                ],
                Limit::SlidingLog { limit, window } => windowed("swlog", limit, window),
                Limit::SlidingCounter { limit, window } => windowed("swcounter", limit, window),
                Limit::FixedWindow { limit, window } => windowed("fixed", limit, window),
                Limit::TokenBucket { capacity, period } => windowed("tokens", capacity, period),
                Limit::Concurrency {
                    limit,
                    lease: duration,
                } => {
                    // Only a lease needs a unique member.
                    let id = uuid::Uuid::new_v4().simple().to_string();
                    prepared.lease = Some(Lease {
                        key: check.key.clone(),
                        id: id.clone(),
                        duration,
                    });
                    [
                        "lease".into(),
                        limit.to_string(),
                        millis(duration).to_string(),
                        id,
                        "0".into(),
                    ]
                }
            };
            prepared.keys.push(check.key.as_str().to_owned());
            prepared.args.extend([kind, a, b, c, d]);
        }
        Ok(prepared)
    }

    /// Adds the keys and then the arguments to `invocation`.
    pub(crate) fn add_to(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        for key in &self.keys {
            invocation.key(key);
        }
        for arg in &self.args {
            invocation.arg(arg);
        }
    }

    /// The decision in `reply` (the script's flat reply).
    pub(crate) fn decision(&self, reply: Value) -> Result<MultiDecision> {
        let (allowed, decisions) = parse_multi(reply, self.n)?;
        Ok(MultiDecision {
            allowed,
            decisions,
            lease: if allowed { self.lease.clone() } else { None },
        })
    }
}

fn parse_multi(reply: Value, n: usize) -> Result<(bool, Vec<Decision>)> {
    let fields: Vec<i64> =
        redis::from_redis_value(reply).map_err(|e| Error::reply("rate_limit", e.to_string()))?;
    if fields.len() != 1 + 5 * n {
        return Err(Error::reply(
            "rate_limit",
            format!("{} fields for {n} limits", fields.len()),
        ));
    }
    let decisions = fields[1..]
        .chunks_exact(5)
        .map(|d| Decision {
            allowed: d[0] == 1,
            limit: d[1].max(0) as u64,
            remaining: d[2].max(0) as u64,
            reset: Duration::from_millis(d[3].max(0) as u64),
            retry_after: Duration::from_millis(d[4].max(0) as u64),
        })
        .collect();
    Ok((fields[0] == 1, decisions))
}
