use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tollgate_redis::{Check, Error, Id, Limit, RateLimiter, Waiter};

use crate::{Backend, Ctx, pattern_suite};

const CALLERS: usize = 50;
const CONNS: usize = 3;

/// Runs `CALLERS` concurrent checks of one limit, spread over `CONNS` connections; returns how
/// many were admitted.
async fn admitted(ctx: &Ctx, name: &str, limit: Limit, cost: u64) -> u64 {
    let subject = Id::new("key-1").unwrap();
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..CALLERS {
        let limiter = RateLimiter::new(ctx.conn_for(i), ctx.keys.clone());
        let key = limiter.key(&subject, name).unwrap();
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            let d = limiter.check(&key, limit, cost).await.unwrap();
            if d.allowed {
                admitted.fetch_add(1, Ordering::SeqCst);
            } else {
                assert!(
                    d.retry_after > Duration::ZERO,
                    "a refusal says when to retry: {d:?}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    admitted.load(Ordering::SeqCst)
}

pattern_suite!(
    gcra_admits_exactly_its_limit,
    sliding_log_admits_exactly_its_limit,
    sliding_counter_admits_exactly_its_limit,
    fixed_window_admits_exactly_its_limit,
    token_bucket_admits_exactly_its_capacity,
    concurrency_admits_exactly_its_slots,
    multi_limit_is_all_or_nothing_under_concurrency,
    leases_come_back_when_their_holder_dies,
    reconcile_refunds_and_charges_tokens,
    decisions_report_remaining_and_reset,
    gcra_refills_at_its_rate,
    sliding_log_holds_over_any_window_as_it_slides,
    sliding_log_holds_what_is_in_its_window_not_its_limit,
    sliding_log_is_exact_as_its_ring_wraps_and_resizes,
);

async fn gcra_admits_exactly_its_limit(b: Backend) {
    let ctx = Ctx::new(b, CONNS).await;
    let n = admitted(&ctx, "rpm", Limit::per(17, Duration::from_secs(60)), 1).await;
    assert_eq!(n, 17);
}

async fn sliding_log_admits_exactly_its_limit(b: Backend) {
    let ctx = Ctx::new(b, CONNS).await;
    let n = admitted(
        &ctx,
        "log",
        Limit::SlidingLog {
            limit: 23,
            window: Duration::from_secs(60),
        },
        1,
    )
    .await;
    assert_eq!(n, 23);
}

async fn sliding_counter_admits_exactly_its_limit(b: Backend) {
    let ctx = Ctx::new(b, CONNS).await;
    // An hour-long window: the test cannot straddle a boundary far enough to weigh in.
    let n = admitted(
        &ctx,
        "ctr",
        Limit::SlidingCounter {
            limit: 11,
            window: Duration::from_secs(3600),
        },
        1,
    )
    .await;
    assert_eq!(n, 11);
}

async fn fixed_window_admits_exactly_its_limit(b: Backend) {
    let ctx = Ctx::new(b, CONNS).await;
    // A day-long window, so the burst cannot straddle a boundary.
    let n = admitted(
        &ctx,
        "fix",
        Limit::FixedWindow {
            limit: 29,
            window: Duration::from_secs(86_400),
        },
        1,
    )
    .await;
    assert_eq!(n, 29);
}

async fn token_bucket_admits_exactly_its_capacity(b: Backend) {
    let ctx = Ctx::new(b, CONNS).await;
    // 1000 tokens per hour, 70 per request: exactly 14 fit (980), the refill in the test's
    // lifetime is far below the 50 it would take to fit one more.
    let n = admitted(
        &ctx,
        "tpm",
        Limit::TokenBucket {
            capacity: 1000,
            period: Duration::from_secs(3600),
        },
        70,
    )
    .await;
    assert_eq!(n, 14);
}

async fn concurrency_admits_exactly_its_slots(b: Backend) {
    let ctx = Ctx::new(b, CONNS).await;
    let subject = Id::new("key-1").unwrap();
    let mut tasks = Vec::new();
    for i in 0..CALLERS {
        let limiter = RateLimiter::new(ctx.conn_for(i), ctx.keys.clone());
        let key = limiter.key(&subject, "conc").unwrap();
        tasks.push(tokio::spawn(async move {
            limiter
                .acquire(&key, 7, Duration::from_secs(60))
                .await
                .unwrap()
        }));
    }
    let mut leases = Vec::new();
    for t in tasks {
        let (d, lease) = t.await.unwrap();
        assert_eq!(d.allowed, lease.is_some());
        leases.extend(lease);
    }
    assert_eq!(leases.len(), 7);
    // Releasing one frees exactly one slot.
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let key = limiter.key(&subject, "conc").unwrap();
    assert!(limiter.release(leases.pop().unwrap()).await.unwrap());
    let (d, lease) = limiter
        .acquire(&key, 7, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(d.allowed && lease.is_some());
    let (d, lease) = limiter
        .acquire(&key, 7, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!d.allowed && lease.is_none());
}

async fn multi_limit_is_all_or_nothing_under_concurrency(b: Backend) {
    let ctx = Ctx::new(b, CONNS).await;
    let subject = Id::new("key-9").unwrap();
    let rpm = Limit::per(30, Duration::from_secs(60));
    let tpm = Limit::TokenBucket {
        capacity: 1000,
        period: Duration::from_secs(3600),
    };
    let conc = Limit::Concurrency {
        limit: 40,
        lease: Duration::from_secs(60),
    };
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..CALLERS {
        let limiter = RateLimiter::new(ctx.conn_for(i), ctx.keys.clone());
        let checks = vec![
            Check {
                key: limiter.key(&subject, "rpm").unwrap(),
                limit: rpm,
                cost: 1,
            },
            Check {
                key: limiter.key(&subject, "tpm").unwrap(),
                limit: tpm,
                cost: 90,
            },
            Check {
                key: limiter.key(&subject, "conc").unwrap(),
                limit: conc,
                cost: 1,
            },
        ];
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            let d = limiter.check_all(&checks).await.unwrap();
            assert_eq!(d.decisions.len(), 3);
            if d.allowed {
                assert_eq!(d.leases.len(), 1);
                admitted.fetch_add(1, Ordering::SeqCst);
            } else {
                assert!(d.leases.is_empty());
                assert!(d.retry_after() > Duration::ZERO);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Tokens bind first: 11 x 90 = 990 <= 1000.
    assert_eq!(admitted.load(Ordering::SeqCst), 11);
    // Refused requests charged nothing: the request limit has exactly 30 - 11 left.
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let key = limiter.key(&subject, "rpm").unwrap();
    let d = limiter.check(&key, rpm, 0).await.unwrap();
    assert_eq!(d.remaining, 19);
}

async fn leases_come_back_when_their_holder_dies(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let key = limiter.key(&Id::new("k").unwrap(), "conc").unwrap();
    let lease = Duration::from_millis(300);
    let (_, held) = limiter.acquire(&key, 1, lease).await.unwrap();
    let held = held.unwrap();
    // The holder renews: its slot stays taken past the first lease period.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(limiter.renew(&held).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(limiter.acquire(&key, 1, lease).await.unwrap().1.is_none());
    // The holder "dies" (stops renewing): the slot comes back once the lease runs out.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (d, other) = limiter.acquire(&key, 1, lease).await.unwrap();
    assert!(d.allowed && other.is_some());
    assert!(
        !limiter.renew(&held).await.unwrap(),
        "a lost lease cannot be renewed"
    );
}

async fn reconcile_refunds_and_charges_tokens(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let key = limiter.key(&Id::new("k").unwrap(), "tpm").unwrap();
    let period = Duration::from_secs(3600);
    let tpm = Limit::TokenBucket {
        capacity: 1000,
        period,
    };
    // Reserve an estimate of 600; the real usage was 200: 400 come back.
    assert!(limiter.check(&key, tpm, 600).await.unwrap().allowed);
    assert!(!limiter.check(&key, tpm, 500).await.unwrap().allowed);
    let left = limiter
        .reconcile_tokens(&key, 1000, period, 200 - 600)
        .await
        .unwrap();
    assert!((799..=801).contains(&left), "left {left}");
    assert!(limiter.check(&key, tpm, 500).await.unwrap().allowed);
    // Real usage above the reservation puts the bucket in debt, which blocks until repaid.
    let left = limiter
        .reconcile_tokens(&key, 1000, period, 700)
        .await
        .unwrap();
    assert!(left < 0, "left {left}");
    let d = limiter.check(&key, tpm, 1).await.unwrap();
    assert!(!d.allowed);
    assert!(d.retry_after > Duration::from_secs(60));
}

async fn decisions_report_remaining_and_reset(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let subject = Id::new("k").unwrap();
    let window = Duration::from_secs(60);
    for limit in [
        Limit::per(3, window),
        Limit::SlidingLog { limit: 3, window },
        Limit::SlidingCounter { limit: 3, window },
        Limit::FixedWindow { limit: 3, window },
        Limit::TokenBucket {
            capacity: 3,
            period: window,
        },
    ] {
        let key = limiter.key(&subject, &format!("{limit:?}")).unwrap();
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let d = limiter.check(&key, limit, 1).await.unwrap();
            assert!(d.allowed, "{limit:?}");
            assert_eq!(d.limit, 3);
            assert!(
                d.reset <= window + Duration::from_millis(1),
                "{limit:?}: {d:?}"
            );
            remaining.push(d.remaining);
        }
        assert_eq!(remaining, vec![2, 1, 0], "{limit:?}");
        let d = limiter.check(&key, limit, 1).await.unwrap();
        assert!(!d.allowed, "{limit:?}");
        assert_eq!(d.remaining, 0);
        assert!(
            d.retry_after > Duration::ZERO && d.retry_after <= window + Duration::from_millis(1),
            "{limit:?}: {d:?}"
        );
    }
}

async fn gcra_refills_at_its_rate(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let key = limiter.key(&Id::new("k").unwrap(), "rps").unwrap();
    // 5 per second: one unit every 200 ms.
    let limit = Limit::per(5, Duration::from_secs(1));
    for _ in 0..5 {
        assert!(limiter.check(&key, limit, 1).await.unwrap().allowed);
    }
    let d = limiter.check(&key, limit, 1).await.unwrap();
    assert!(!d.allowed);
    tokio::time::sleep(d.retry_after + Duration::from_millis(20)).await;
    assert!(limiter.check(&key, limit, 1).await.unwrap().allowed);
}

async fn sliding_log_holds_over_any_window_as_it_slides(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let key = limiter.key(&Id::new("k").unwrap(), "rpm").unwrap();
    let window = Duration::from_secs(2);
    let limit = Limit::SlidingLog { limit: 4, window };
    assert!(limiter.check(&key, limit, 1).await.unwrap().allowed);
    assert!(limiter.check(&key, limit, 1).await.unwrap().allowed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d = limiter.check(&key, limit, 2).await.unwrap();
    assert!(d.allowed && d.remaining == 0, "{d:?}");
    // Full: the next unit fits when the first two leave, about a second from now.
    let d = limiter.check(&key, limit, 1).await.unwrap();
    assert!(!d.allowed, "{d:?}");
    assert!(
        d.retry_after > Duration::ZERO && d.retry_after <= Duration::from_secs(1),
        "{d:?}"
    );
    tokio::time::sleep(d.retry_after + Duration::from_millis(50)).await;
    // Two left the window, two are still in it (the ring now wraps over its oldest slots).
    let d = limiter.check(&key, limit, 2).await.unwrap();
    assert!(d.allowed && d.remaining == 0, "{d:?}");
    let d = limiter.check(&key, limit, 1).await.unwrap();
    assert!(!d.allowed, "{d:?}");
    assert!(d.retry_after <= window, "{d:?}");
    // A changed limit reads the same log: raised to 6, the 4 units in the window leave 2.
    let wider = Limit::SlidingLog { limit: 6, window };
    let d = limiter.check(&key, wider, 2).await.unwrap();
    assert!(d.allowed && d.remaining == 0, "{d:?}");
    assert!(!limiter.check(&key, wider, 1).await.unwrap().allowed);
    // Lowered to 3, the 6 in the window count against it until they leave.
    let narrower = Limit::SlidingLog { limit: 3, window };
    let d = limiter.check(&key, narrower, 1).await.unwrap();
    assert!(!d.allowed && d.remaining == 0, "{d:?}");
    assert!(d.retry_after <= window, "{d:?}");
}

/// A large limit costs memory for what is in the window, not for the limit, and a few commands a
/// call however many units the window holds: the log drops what left, and shrinks after a burst.
async fn sliding_log_holds_what_is_in_its_window_not_its_limit(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let key = limiter.key(&Id::new("k").unwrap(), "rpm").unwrap();
    let window = Duration::from_millis(700);
    let limit = Limit::SlidingLog {
        limit: 1_000_000_000,
        window,
    };
    let strlen = || async {
        let n: usize = redis::cmd("STRLEN")
            .arg(key.as_str())
            .query_async(&mut ctx.redis().conn())
            .await
            .unwrap();
        n
    };
    let mut remaining = Vec::new();
    for _ in 0..3000 {
        remaining.push(limiter.check(&key, limit, 1).await.unwrap().remaining);
    }
    // Exact while the ring grows: each unit counted once.
    assert_eq!(remaining[0], 999_999_999);
    let held = 1_000_000_000 - remaining[2999];
    assert!(held <= 3000, "{held}");
    // At most twice the slots the window needs (the ring doubles).
    let len = strlen().await;
    assert!(
        len <= 16 + 8 * 2 * held as usize + 8 * 8,
        "{len} bytes for {held} units"
    );
    tokio::time::sleep(window + Duration::from_millis(50)).await;
    // The burst left the window: the next units see it empty, and the ring halves back.
    for i in 0..12 {
        let d = limiter.check(&key, limit, 1).await.unwrap();
        assert_eq!(d.remaining, 1_000_000_000 - 1 - i, "{d:?}");
    }
    let len = strlen().await;
    assert!(len <= 16 + 8 * 128, "{len} bytes for 12 units");
}

/// The ring wraps, grows and shrinks without losing a unit: a narrow limit, units charged in
/// twos and threes while older ones leave, checked against a model of the window.
async fn sliding_log_is_exact_as_its_ring_wraps_and_resizes(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let key = limiter.key(&Id::new("k").unwrap(), "rpm").unwrap();
    let window = Duration::from_millis(400);
    let limit = Limit::SlidingLog { limit: 40, window };
    let started = std::time::Instant::now();
    // Each admitted unit's stamp (the server's clock) lies between the call's start and end.
    let mut admitted: Vec<(std::time::Instant, std::time::Instant, u64)> = Vec::new();
    while started.elapsed() < Duration::from_millis(1500) {
        let cost = 2 + (admitted.len() as u64 % 2);
        let before = std::time::Instant::now();
        let d = limiter.check(&key, limit, cost).await.unwrap();
        let after = std::time::Instant::now();
        let certain: u64 = admitted
            .iter()
            .filter(|(b, _, _)| after.duration_since(*b) < window)
            .map(|(_, _, c)| c)
            .sum();
        let possible: u64 = admitted
            .iter()
            .filter(|(_, a, _)| before.saturating_duration_since(*a) <= window)
            .map(|(_, _, c)| c)
            .sum();
        if d.allowed {
            assert!(
                certain + cost <= 40,
                "admitted over the limit: {certain} + {cost}"
            );
            admitted.push((before, after, cost));
        } else {
            assert!(
                possible + cost > 40,
                "refused under the limit: {possible} + {cost}"
            );
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(admitted.len() > 20, "{}", admitted.len());
}

#[tokio::test]
async fn rejects_limits_that_cannot_be_met() {
    let ctx = Ctx::new(Backend::Single, 1).await;
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let key = limiter.key(&Id::new("k").unwrap(), "x").unwrap();
    let window = Duration::from_secs(1);
    for (limit, cost) in [
        (Limit::per(0, window), 1),
        (Limit::per(5, Duration::ZERO), 1),
        (
            Limit::TokenBucket {
                capacity: 10,
                period: window,
            },
            11,
        ),
        (
            Limit::Gcra {
                limit: 5,
                period: window,
                burst: 0,
            },
            1,
        ),
    ] {
        assert!(
            matches!(
                limiter.check(&key, limit, cost).await,
                Err(Error::InvalidArgument(_))
            ),
            "{limit:?} cost {cost}"
        );
    }
}

#[tokio::test]
async fn one_limit_checked_twice_in_a_request_is_refused_before_redis() {
    let ctx = Ctx::new(Backend::Single, 1).await;
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let check = Check {
        key: limiter.key(&Id::new("a").unwrap(), "rpm").unwrap(),
        limit: Limit::per(5, Duration::from_secs(1)),
        cost: 1,
    };
    assert!(matches!(
        limiter.check_all(&[check.clone(), check]).await,
        Err(Error::InvalidArgument(_))
    ));
}

pattern_suite!(a_models_capacity_and_each_keys_limits_are_charged_all_or_nothing);

/// A model's capacity (its own hash tag) checked with keys' own limits: on a cluster they live
/// in different slots, so a refusal in one gives back what the other charged.
async fn a_models_capacity_and_each_keys_limits_are_charged_all_or_nothing(b: Backend) {
    let ctx = Ctx::new(b, CONNS).await;
    let minute = Duration::from_secs(60);
    let model = Id::new("openai/gpt-4o").unwrap();
    // 10 keys of 10 requests a minute each, sharing a model that takes 25 a minute.
    let checks = |limiter: &RateLimiter, key: usize| {
        let subject = Id::new(format!("key-{key}")).unwrap();
        vec![
            Check {
                key: limiter.key(&subject, "rpm").unwrap(),
                limit: Limit::SlidingLog {
                    limit: 10,
                    window: minute,
                },
                cost: 1,
            },
            Check {
                key: limiter.model_key(&model, "rpm").unwrap(),
                limit: Limit::SlidingLog {
                    limit: 25,
                    window: minute,
                },
                cost: 1,
            },
            Check {
                key: limiter.model_key(&model, "tpm").unwrap(),
                limit: Limit::TokenBucket {
                    capacity: 100_000,
                    period: minute,
                },
                cost: 100,
            },
        ]
    };
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let limiter = RateLimiter::new(ctx.conn_for(i), ctx.keys.clone());
        let checks = checks(&limiter, i % 10);
        tasks.push(tokio::spawn(async move {
            let d = limiter.check_all(&checks).await.unwrap();
            (i % 10, d.allowed)
        }));
    }
    let mut per_key = [0u64; 10];
    for t in tasks {
        let (key, allowed) = t.await.unwrap();
        per_key[key] += u64::from(allowed);
    }
    // The model's 25 bind (the keys would take 60): exactly 25 pass.
    assert_eq!(per_key.iter().sum::<u64>(), 25, "{per_key:?}");
    // Nothing refused stayed charged: each key has exactly 10 - its admitted left, and the
    // model's tokens hold exactly 25 requests' worth (plus the refill since).
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    for (key, admitted) in per_key.iter().enumerate() {
        let subject = Id::new(format!("key-{key}")).unwrap();
        let probe = Check {
            key: limiter.key(&subject, "rpm").unwrap(),
            limit: Limit::SlidingLog {
                limit: 10,
                window: minute,
            },
            cost: 0,
        };
        let d = limiter.check_all(&[probe]).await.unwrap();
        assert_eq!(d.decisions[0].remaining, 10 - admitted, "key-{key}");
    }
    let mut probe = checks(&limiter, 0);
    probe.retain(|c| matches!(c.limit, Limit::TokenBucket { .. }));
    probe[0].cost = 0;
    let left = limiter.check_all(&probe).await.unwrap().decisions[0].remaining;
    let refill = start.elapsed().as_millis() as u64 * 100_000 / 60_000 + 1;
    assert!((97_500..=97_500 + refill).contains(&left), "{left}");

    // Slots: the model's 2 are shared; what one side refuses, the other gives back.
    let slots = |limiter: &RateLimiter, key: &str| {
        [
            Check {
                key: limiter.key(&Id::new(key).unwrap(), "conc").unwrap(),
                limit: Limit::Concurrency {
                    limit: 1,
                    lease: minute,
                },
                cost: 1,
            },
            Check {
                key: limiter.model_key(&model, "conc").unwrap(),
                limit: Limit::Concurrency {
                    limit: 2,
                    lease: minute,
                },
                cost: 1,
            },
        ]
    };
    let a = limiter.check_all(&slots(&limiter, "a")).await.unwrap();
    let b = limiter.check_all(&slots(&limiter, "b")).await.unwrap();
    assert!(a.allowed && b.allowed);
    assert_eq!(a.leases.len(), 2);
    // The model refuses c: c's own slot is given back, so c gets in once the model has room.
    let c = limiter.check_all(&slots(&limiter, "c")).await.unwrap();
    assert!(!c.allowed && c.decisions[0].allowed && !c.decisions[1].allowed);
    assert!(c.leases.is_empty());
    limiter.settle(&a.leases, &[], minute, 0).await.unwrap();
    let c = limiter.check_all(&slots(&limiter, "c")).await.unwrap();
    assert!(c.allowed, "{c:?}");
    // c's own slot refuses a second request of c: the model's slot it took is given back, so
    // d gets the one b leaves.
    limiter.settle(&b.leases, &[], minute, 0).await.unwrap();
    let again = limiter.check_all(&slots(&limiter, "c")).await.unwrap();
    assert!(!again.allowed && !again.decisions[0].allowed && again.decisions[1].allowed);
    let d = limiter.check_all(&slots(&limiter, "d")).await.unwrap();
    assert!(d.allowed, "{d:?}");
    // Settled across slots in one call: every lease back.
    for leases in [&c.leases, &d.leases] {
        limiter.settle(leases, &[], minute, 0).await.unwrap();
    }
    for key in ["a", "b"] {
        assert!(
            limiter
                .check_all(&slots(&limiter, key))
                .await
                .unwrap()
                .allowed
        );
    }
}

pattern_suite!(settle_gives_back_the_slot_and_settles_every_bucket_in_one_call);

async fn settle_gives_back_the_slot_and_settles_every_bucket_in_one_call(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let subject = Id::new("k").unwrap();
    let period = Duration::from_secs(3600);
    let (tpm, model_tpm, conc) = (
        limiter.key(&subject, "tpm").unwrap(),
        limiter.key(&subject, "m:x:tpm").unwrap(),
        limiter.key(&subject, "conc").unwrap(),
    );
    let checks = [
        Check {
            key: tpm.clone(),
            limit: Limit::TokenBucket {
                capacity: 1000,
                period,
            },
            cost: 800,
        },
        Check {
            key: model_tpm.clone(),
            limit: Limit::TokenBucket {
                capacity: 900,
                period,
            },
            cost: 800,
        },
        Check {
            key: conc.clone(),
            limit: Limit::Concurrency {
                limit: 1,
                lease: period,
            },
            cost: 1,
        },
    ];
    let d = limiter.check_all(&checks).await.unwrap();
    assert!(d.allowed);
    assert!(
        !limiter.check_all(&checks).await.unwrap().allowed,
        "slot and tokens are taken"
    );
    // The request used 100 of the 800 reserved.
    let left = limiter
        .settle(
            &d.leases,
            &[(tpm, 1000), (model_tpm, 900)],
            period,
            100 - 800,
        )
        .await
        .unwrap();
    assert!(
        (899..=901).contains(&left[0]) && (799..=801).contains(&left[1]),
        "{left:?}"
    );
    assert!(
        limiter.check_all(&checks).await.unwrap().allowed,
        "slot free and tokens back"
    );
}

pattern_suite!(slots_go_to_waiters_in_order_of_arrival_and_a_silent_waiter_loses_its_place);

async fn slots_go_to_waiters_in_order_of_arrival_and_a_silent_waiter_loses_its_place(b: Backend) {
    let ctx = Ctx::new(b, CONNS).await;
    let minute = Duration::from_secs(60);
    // Each waiter asks through its own connection, as replicas would.
    let limiters: Vec<RateLimiter> = (0..CONNS)
        .map(|i| RateLimiter::new(ctx.conn_for(i), ctx.keys.clone()))
        .collect();
    let slot = |limiter: &RateLimiter| {
        vec![Check {
            key: limiter.key(&Id::new("gpu").unwrap(), "conc").unwrap(),
            limit: Limit::Concurrency {
                limit: 1,
                lease: minute,
            },
            cost: 1,
        }]
    };
    let checks = slot(&limiters[0]);
    let holder = limiters[0].check_all(&checks).await.unwrap();
    assert!(holder.allowed);
    // Three waiters join in order; the one that will go silent asks with a short grace.
    let grace = Duration::from_secs(30);
    let (first, silent, third) = (
        Waiter::new(grace),
        Waiter::new(Duration::from_millis(300)),
        Waiter::new(grace),
    );
    for (i, w) in [&first, &silent, &third].into_iter().enumerate() {
        let d = limiters[i].check_all_waiting(&checks, w).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.decisions[0].queued, i as u64 + 1);
    }
    // A request that does not wait is refused and takes no place.
    let d = limiters[1].check_all(&checks).await.unwrap();
    assert!(!d.allowed && d.decisions[0].queued == 0);
    // The slot is freed: the third asks first but is not first; the first gets it.
    limiters[0]
        .settle(&holder.leases, &[], minute, 0)
        .await
        .unwrap();
    let d = limiters[2]
        .check_all_waiting(&checks, &third)
        .await
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(d.decisions[0].queued, 3, "behind two waiters still");
    let d = limiters[0]
        .check_all_waiting(&checks, &first)
        .await
        .unwrap();
    assert!(d.allowed, "{d:?}");
    let first_lease = d.leases;
    // Asking again while holding the slot renews it, waiters or not.
    let d = limiters[0]
        .check_all_waiting(&checks, &first)
        .await
        .unwrap();
    assert!(d.allowed && d.leases == first_lease, "{d:?}");
    // A newcomer joins behind those waiting, not ahead of them.
    let late = Waiter::new(grace);
    let d = limiters[1].check_all_waiting(&checks, &late).await.unwrap();
    assert_eq!(d.decisions[0].queued, 3);
    // The silent waiter stops asking; once its grace is over it is gone and the third is next.
    tokio::time::sleep(Duration::from_millis(400)).await;
    limiters[0]
        .settle(&first_lease, &[], minute, 0)
        .await
        .unwrap();
    let d = limiters[2]
        .check_all_waiting(&checks, &third)
        .await
        .unwrap();
    assert!(d.allowed, "{d:?}");
    // A waiter that leaves gives its place up at once.
    limiters[1].leave(&checks, &late).await.unwrap();
    let d = limiters[1]
        .check_all_waiting(&checks, &Waiter::new(grace))
        .await
        .unwrap();
    assert_eq!(d.decisions[0].queued, 1);
}

pattern_suite!(a_waiter_held_up_by_another_slot_keeps_its_place_in_the_one_that_admitted_it);

/// A request that waits for two slots, its key's and its model's (on a cluster: two hash slots,
/// checked by two scripts), keeps its place at the head of the key's queue while the model's
/// holds it up, whoever asks in between: a newcomer queues behind it.
async fn a_waiter_held_up_by_another_slot_keeps_its_place_in_the_one_that_admitted_it(b: Backend) {
    let ctx = Ctx::new(b, CONNS).await;
    let minute = Duration::from_secs(60);
    let limiters: Vec<RateLimiter> = (0..CONNS)
        .map(|i| RateLimiter::new(ctx.conn_for(i), ctx.keys.clone()))
        .collect();
    let slot = |key| Check {
        key,
        limit: Limit::Concurrency {
            limit: 1,
            lease: minute,
        },
        cost: 1,
    };
    let l = &limiters[0];
    let team = slot(l.key(&Id::new("team").unwrap(), "conc").unwrap());
    let big = slot(l.model_key(&Id::new("big").unwrap(), "conc").unwrap());
    let small = slot(l.model_key(&Id::new("small").unwrap(), "conc").unwrap());
    let holds_team = l.check_all(std::slice::from_ref(&team)).await.unwrap();
    let holds_big = l.check_all(std::slice::from_ref(&big)).await.unwrap();
    assert!(holds_team.allowed && holds_big.allowed);

    let grace = Duration::from_secs(30);
    let first = Waiter::new(grace);
    let wants_big = [team.clone(), big.clone()];
    let d = limiters[1]
        .check_all_waiting(&wants_big, &first)
        .await
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(
        d.decisions.iter().map(|d| d.queued).collect::<Vec<_>>(),
        [1, 1]
    );
    // The team's slot frees; the model's does not: the first waiter is admitted by the team's
    // limit only, and must keep its place there.
    l.settle(&holds_team.leases, &[], minute, 0).await.unwrap();
    let d = limiters[1]
        .check_all_waiting(&wants_big, &first)
        .await
        .unwrap();
    assert!(!d.allowed, "{d:?}");
    assert_eq!(d.decisions[1].queued, 1, "{d:?}");
    // A newcomer for the small model (free) is still behind it in the team's queue.
    let newcomer = Waiter::new(grace);
    let wants_small = [team.clone(), small.clone()];
    let d = limiters[2]
        .check_all_waiting(&wants_small, &newcomer)
        .await
        .unwrap();
    assert!(!d.allowed, "the newcomer jumped the queue: {d:?}");
    assert_eq!(d.decisions[0].queued, 2, "{d:?}");
    // Once the model frees, the first waiter gets both, and then the newcomer is next.
    l.settle(&holds_big.leases, &[], minute, 0).await.unwrap();
    let d = limiters[1]
        .check_all_waiting(&wants_big, &first)
        .await
        .unwrap();
    assert!(d.allowed, "{d:?}");
    l.settle(&d.leases, &[], minute, 0).await.unwrap();
    let d = limiters[2]
        .check_all_waiting(&wants_small, &newcomer)
        .await
        .unwrap();
    assert!(d.allowed, "{d:?}");
}
