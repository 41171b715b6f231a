//! Rate limits and quotas, each decided by one Lua script in one round trip on the server's clock.
//!
//! Every algorithm lives once, in `lua/rate_limit.lua`, as a check and a commit; a single check
//! is the one-limit case of [`RateLimiter::check_all`], which checks several limits of one
//! request and charges them all or none. The limits of one request may belong to several
//! subjects (a key's own, and a model's capacity shared by every key): on a single Redis they are
//! checked in one script all the same; on a cluster, where one script touches one slot, each
//! subject's are checked in its slot at once, and a refusal in one slot gives back what the others
//! charged (`lua/rate_refund.lua`). The algorithms:
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
    /// A refused concurrency limit with a queue: the request's place in it (1 first); 0 when
    /// it is not waiting in one.
    pub queued: u64,
}

/// The answer to [`RateLimiter::check_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiDecision {
    /// Every limit allowed it, and every limit was charged. When false, nothing was charged.
    pub allowed: bool,
    /// One decision per check, in order.
    pub decisions: Vec<Decision>,
    /// The concurrency leases taken (one per [`Limit::Concurrency`] check), when all allowed.
    pub leases: Vec<Lease>,
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

/// A request waiting for concurrency slots, in order of arrival, in the queue of each
/// concurrency limit it is checked against ([`RateLimiter::check_all_waiting`]). It keeps its
/// place while it asks again within `grace`; its lease, once admitted, has its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    id: String,
    grace: Duration,
}

impl Waiter {
    /// A new waiter that asks again at least every `grace`.
    pub fn new(grace: Duration) -> Self {
        Waiter {
            id: uuid::Uuid::new_v4().simple().to_string(),
            grace: grace.max(Duration::from_millis(1)),
        }
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

    /// The key of limit `name` of `model`'s capacity, shared by every subject that calls it.
    pub fn model_key(&self, model: &Id, name: &str) -> Result<LimitKey> {
        Ok(LimitKey(self.keys.model_limit(model, &Id::new(name)?)))
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
        Ok((decision, multi.leases.into_iter().next()))
    }

    /// Checks every limit; charges all of them only if all allow. One script, one round trip,
    /// on a single Redis or for limits of one subject (one hash tag); on a cluster, one script
    /// per subject's slot, sent together, and what was charged is given back if any refused.
    pub async fn check_all(&self, checks: &[Check]) -> Result<MultiDecision> {
        self.check_many(checks, None).await
    }

    /// [`RateLimiter::check_all`] for a request that waits for its concurrency slots: refused
    /// only for want of slots, it takes (or keeps) its place in their queues ([`Decision::queued`])
    /// and should ask again, with the same `waiter`, within its grace; a slot freed goes to the
    /// waiters in order of arrival, whichever replica they ask from.
    pub async fn check_all_waiting(
        &self,
        checks: &[Check],
        waiter: &Waiter,
    ) -> Result<MultiDecision> {
        self.check_many(checks, Some(waiter)).await
    }

    /// Takes `waiter` out of the queues of `checks`' concurrency limits (it stopped waiting).
    pub async fn leave(&self, checks: &[Check], waiter: &Waiter) -> Result<()> {
        for check in checks {
            if matches!(check.limit, Limit::Concurrency { .. }) {
                let [q, qd] = Keys::limit_queue(check.key.as_str());
                let mut pipe = redis::pipe();
                pipe.cmd("ZREM").arg(&q).arg(&waiter.id).ignore();
                pipe.cmd("ZREM").arg(&qd).arg(&waiter.id).ignore();
                pipe.query_async::<()>(&mut self.redis.conn()).await?;
            }
        }
        Ok(())
    }

    async fn check_many(&self, checks: &[Check], waiter: Option<&Waiter>) -> Result<MultiDecision> {
        if checks.is_empty() {
            return Ok(MultiDecision {
                allowed: true,
                decisions: vec![],
                leases: Vec::new(),
            });
        }
        let slots = by_slot(checks.iter().map(|c| c.key.as_str()));
        if slots.len() == 1 || !self.redis.is_cluster() {
            let prepared = PreparedChecks::build(checks, waiter)?;
            let mut invocation = scripts::RATE_LIMIT.prepare_invoke();
            prepared.add_to(&mut invocation);
            let reply: Value = invocation.invoke_async(&mut self.redis.conn()).await?;
            return prepared.decision(reply);
        }
        let groups = slots
            .iter()
            .map(|at| {
                let group: Vec<Check> = at.iter().map(|&i| checks[i].clone()).collect();
                PreparedChecks::build(&group, waiter)
            })
            .collect::<Result<Vec<_>>>()?;
        let replies = futures::future::join_all(groups.iter().map(|prepared| async move {
            let mut invocation = scripts::RATE_LIMIT.prepare_invoke();
            prepared.add_to(&mut invocation);
            let reply: Value = invocation.invoke_async(&mut self.redis.conn()).await?;
            prepared.decision(reply)
        }))
        .await;
        let allowed = replies.iter().all(|r| matches!(r, Ok(d) if d.allowed));
        if !allowed {
            // All or nothing: what the other slots charged goes back.
            for (prepared, reply) in groups.iter().zip(&replies) {
                if matches!(reply, Ok(d) if d.allowed) {
                    let mut invocation = scripts::RATE_REFUND.prepare_invoke();
                    prepared.add_to(&mut invocation);
                    let refunded: Result<i64> = invocation
                        .invoke_async(&mut self.redis.conn())
                        .await
                        .map_err(Error::from);
                    if let Err(e) = refunded {
                        tracing::warn!(error = %e, "could not give back limits charged in another slot; they run out by themselves");
                    }
                }
            }
        }
        let mut decisions = vec![None; checks.len()];
        let mut leases = Vec::new();
        for (at, reply) in slots.iter().zip(replies) {
            let multi = reply?;
            for (&i, d) in at.iter().zip(multi.decisions) {
                decisions[i] = Some(d);
            }
            if allowed {
                leases.extend(multi.leases);
            }
        }
        Ok(MultiDecision {
            allowed,
            decisions: decisions.into_iter().flatten().collect(),
            leases,
        })
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
            .settle(&[], &[(key.clone(), capacity)], period, delta)
            .await?;
        left.first()
            .copied()
            .ok_or_else(|| Error::reply("settle", "no bucket in the reply"))
    }

    /// Ends a request's charges: releases its `leases` and settles each token bucket
    /// `(key, capacity)` with `delta = actual - reserved`. One round trip on a single Redis or
    /// for one subject's; on a cluster, one per subject's slot. Returns the tokens left in each
    /// bucket, in order.
    pub async fn settle(
        &self,
        leases: &[Lease],
        buckets: &[(LimitKey, u64)],
        period: Duration,
        delta: i64,
    ) -> Result<Vec<i64>> {
        if leases.is_empty() && buckets.is_empty() {
            return Ok(Vec::new());
        }
        for (_, capacity) in buckets {
            Limit::TokenBucket {
                capacity: *capacity,
                period,
            }
            .validate(0)?;
        }
        let keys = leases
            .iter()
            .map(|l| l.key.as_str())
            .chain(buckets.iter().map(|(k, _)| k.as_str()));
        let slots = if self.redis.is_cluster() {
            by_slot(keys)
        } else {
            vec![(0..leases.len() + buckets.len()).collect()]
        };
        let mut left = vec![0; buckets.len()];
        for at in slots {
            let (held, settled): (Vec<usize>, Vec<usize>) =
                at.into_iter().partition(|&i| i < leases.len());
            let mut invocation = scripts::SETTLE.prepare_invoke();
            invocation.arg(held.len());
            for &i in &held {
                invocation.key(leases[i].key.as_str()).arg(&leases[i].id);
            }
            invocation.arg(millis(period)).arg(delta);
            for &i in &settled {
                let (key, capacity) = &buckets[i - leases.len()];
                invocation.key(key.as_str()).arg(*capacity);
            }
            let slot_left: Vec<i64> = invocation.invoke_async(&mut self.redis.conn()).await?;
            for (&i, tokens) in settled.iter().zip(slot_left) {
                left[i - leases.len()] = tokens;
            }
        }
        Ok(left)
    }
}

/// The positions of `keys` grouped by hash tag (a cluster slot), in order of first appearance.
fn by_slot<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut tags: Vec<Option<&str>> = Vec::new();
    let mut slots: Vec<Vec<usize>> = Vec::new();
    for (i, key) in keys.enumerate() {
        let tag = keys::hash_tag(key);
        match tags.iter().position(|t| *t == tag) {
            Some(s) => slots[s].push(i),
            None => {
                tags.push(tag);
                slots.push(vec![i]);
            }
        }
    }
    slots
}

/// The limits of one request as `rate_limit.lua` takes them (its keys, then its arguments), and
/// the leases it would take: checked alone ([`RateLimiter::check_all`]) or inside another script
/// ([`crate::ResponseCache::lead_admitting`]).
#[derive(Debug, Clone)]
pub struct PreparedChecks {
    keys: Vec<String>,
    /// The queues of the concurrency limits a waiter waits for, after the limits' keys.
    queues: Vec<String>,
    args: Vec<Arg>,
    leases: Vec<Lease>,
    n: usize,
}

/// One argument of `rate_limit.lua`, written into the command as it is (no `String` per number).
#[derive(Debug, Clone)]
enum Arg {
    Word(&'static str),
    Number(u64),
    Text(String),
}

impl redis::ToRedisArgs for Arg {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        match self {
            Arg::Word(word) => word.write_redis_args(out),
            Arg::Number(n) => n.write_redis_args(out),
            Arg::Text(text) => text.write_redis_args(out),
        }
    }
}

impl PreparedChecks {
    /// Validates `checks` for one script in any deployment: one hash tag, each key once, sane
    /// costs.
    pub fn of(checks: &[Check]) -> Result<PreparedChecks> {
        if by_slot(checks.iter().map(|c| c.key.as_str())).len() > 1 {
            return Err(Error::InvalidArgument(
                "limits checked together must belong to one subject (one hash tag)".into(),
            ));
        }
        Self::build(checks, None)
    }

    /// Validates `checks` (each key once, sane costs), whatever their hash tags.
    fn build(checks: &[Check], waiter: Option<&Waiter>) -> Result<PreparedChecks> {
        for (i, check) in checks.iter().enumerate() {
            if checks[..i].iter().any(|c| c.key == check.key) {
                return Err(Error::InvalidArgument(format!(
                    "limit {} is checked twice",
                    check.key.as_str()
                )));
            }
        }
        let mut prepared = PreparedChecks {
            keys: Vec::with_capacity(checks.len()),
            queues: Vec::new(),
            args: Vec::with_capacity(1 + 5 * checks.len()),
            leases: Vec::new(),
            n: checks.len(),
        };
        prepared.args.push(Arg::Number(checks.len() as u64));
        for check in checks {
            check.limit.validate(check.cost)?;
            let cost = Arg::Number(check.cost);
            // The kinds measured over a window: limit, window, cost.
            let windowed = |kind: &'static str, limit: u64, window: Duration| {
                [
                    Arg::Word(kind),
                    Arg::Number(limit),
                    Arg::Number(millis(window)),
                    cost.clone(),
                    Arg::Number(0),
                ]
            };
            let args = match check.limit {
                Limit::Gcra {
                    limit,
                    period,
                    burst,
                } => [
                    Arg::Word("gcra"),
                    Arg::Number(limit),
                    Arg::Number(millis(period)),
                    Arg::Number(burst),
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
                    // Only a lease needs a unique member: a waiter's, when one waits for it.
                    let (id, grace) = match waiter {
                        Some(w) => {
                            prepared
                                .queues
                                .extend(Keys::limit_queue(check.key.as_str()));
                            (w.id.clone(), millis(w.grace))
                        }
                        None => (uuid::Uuid::new_v4().simple().to_string(), 0),
                    };
                    let arg = Arg::Text(id.clone());
                    prepared.leases.push(Lease {
                        key: check.key.clone(),
                        id,
                        duration,
                    });
                    [
                        Arg::Word("lease"),
                        Arg::Number(limit),
                        Arg::Number(millis(duration)),
                        arg,
                        Arg::Number(grace),
                    ]
                }
            };
            prepared.keys.push(check.key.as_str().to_owned());
            prepared.args.extend(args);
        }
        Ok(prepared)
    }

    /// Adds the keys and then the arguments to `invocation`.
    pub(crate) fn add_to(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        for key in self.keys.iter().chain(&self.queues) {
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
            leases: if allowed {
                self.leases.clone()
            } else {
                Vec::new()
            },
        })
    }
}

fn parse_multi(reply: Value, n: usize) -> Result<(bool, Vec<Decision>)> {
    let fields: Vec<i64> =
        redis::from_redis_value(reply).map_err(|e| Error::reply("rate_limit", e.to_string()))?;
    if fields.len() != 1 + 6 * n {
        return Err(Error::reply(
            "rate_limit",
            format!("{} fields for {n} limits", fields.len()),
        ));
    }
    let decisions = fields[1..]
        .chunks_exact(6)
        .map(|d| Decision {
            allowed: d[0] == 1,
            limit: d[1].max(0) as u64,
            remaining: d[2].max(0) as u64,
            reset: Duration::from_millis(d[3].max(0) as u64),
            retry_after: Duration::from_millis(d[4].max(0) as u64),
            queued: d[5].max(0) as u64,
        })
        .collect();
    Ok((fields[0] == 1, decisions))
}
