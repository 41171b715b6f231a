use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tollgate_redis::{
    CacheConfig, CacheKey, Check, ComputeError, Id, Lead, Limit, Outcome, PreparedChecks,
    RateLimiter, ResponseCache, Stored,
};

use crate::{Backend, Ctx, pattern_suite};

fn cache(ctx: &Ctx, i: usize, config: CacheConfig) -> ResponseCache {
    ResponseCache::new(ctx.conn_for(i), ctx.keys.clone(), config)
}

fn key(tenant: &str, hash: &str) -> CacheKey {
    CacheKey::new("openai/gpt-4o-mini", tenant, hash).unwrap()
}

pattern_suite!(
    twenty_concurrent_callers_compute_once,
    a_dead_computer_is_taken_over_after_its_lease_expires,
    a_long_computation_keeps_its_lease,
    a_failed_computation_caches_nothing_and_lets_another_try,
    invalidating_a_model_drops_every_entry_at_once,
    a_value_computed_across_an_invalidation_is_not_stored,
    tenants_do_not_share_entries,
    hits_and_misses_are_counted_per_model,
    large_values_are_compressed_and_oversized_ones_skipped,
    entries_expire_with_their_ttl,
);

async fn twenty_concurrent_callers_compute_once(b: Backend) {
    let ctx = Ctx::new(b, 4).await;
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let cache = cache(&ctx, i, CacheConfig::default());
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_compute(&key("t1", "abc123"), None, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, String>(b"the answer".to_vec())
                })
                .await
                .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        let (value, outcome) = t.await.unwrap();
        assert_eq!(value, b"the answer");
        outcomes.push(outcome);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the computation ran once");
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Computed).count(),
        1
    );
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Computed | Outcome::Waited | Outcome::Hit))
    );
}

async fn a_dead_computer_is_taken_over_after_its_lease_expires(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let config = CacheConfig {
        lease: Duration::from_millis(600),
        ..CacheConfig::default()
    };
    let k = key("t1", "dead");
    // The first computer takes the lease and never finishes: its task is aborted mid-way, as a
    // process crash would end it (no release, no more renewals).
    let first = cache(&ctx, 0, config.clone());
    let k1 = k.clone();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let doomed = tokio::spawn(async move {
        first
            .get_or_compute(&k1, None, || async move {
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
                Ok::<_, String>(b"never".to_vec())
            })
            .await
    });
    started_rx.await.unwrap();
    doomed.abort();
    let second = cache(&ctx, 1, config);
    let started = std::time::Instant::now();
    let (value, outcome) = second
        .get_or_compute(&k, None, || async {
            Ok::<_, String>(b"taken over".to_vec())
        })
        .await
        .unwrap();
    assert_eq!(value, b"taken over");
    assert_eq!(outcome, Outcome::Computed);
    // It waited for the lease rather than computing alongside a live leader. (A bound on how
    // long, not a timing assertion: the lease must have been respected.)
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "took over after {:?}",
        started.elapsed()
    );
}

async fn a_long_computation_keeps_its_lease(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let config = CacheConfig {
        lease: Duration::from_millis(300),
        ..CacheConfig::default()
    };
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let cache = cache(&ctx, i, config.clone());
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_compute(&key("t1", "10ab"), None, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // Three lease periods: only renewal keeps the others waiting.
                    tokio::time::sleep(Duration::from_millis(900)).await;
                    Ok::<_, String>(b"slow".to_vec())
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, b"slow");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

async fn a_failed_computation_caches_nothing_and_lets_another_try(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let cache = cache(&ctx, 0, CacheConfig::default());
    let k = key("t1", "fa11");
    let err = cache
        .get_or_compute(&k, None, || async { Err::<Vec<u8>, _>("upstream 500") })
        .await
        .unwrap_err();
    assert!(matches!(err, ComputeError::Compute("upstream 500")));
    assert_eq!(cache.get(&k).await.unwrap(), None);
    // The lease was released at once: the next caller leads without waiting for expiry.
    let (v, o) = cache
        .get_or_compute(&k, None, || async { Ok::<_, String>(b"ok".to_vec()) })
        .await
        .unwrap();
    assert_eq!((v.as_slice(), o), (&b"ok"[..], Outcome::Computed));
}

async fn invalidating_a_model_drops_every_entry_at_once(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let cache = cache(&ctx, 0, CacheConfig::default());
    for i in 0..20 {
        assert_eq!(
            cache
                .put(&key(&format!("t{i}"), "aa"), b"v", None)
                .await
                .unwrap(),
            Stored::Yes
        );
    }
    let other = CacheKey::new("other-model", "t0", "aa").unwrap();
    cache.put(&other, b"kept", None).await.unwrap();
    assert_eq!(
        cache.invalidate_model("openai/gpt-4o-mini").await.unwrap(),
        1
    );
    for i in 0..20 {
        assert_eq!(cache.get(&key(&format!("t{i}"), "aa")).await.unwrap(), None);
    }
    assert_eq!(
        cache.get(&other).await.unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    // New entries work under the new generation.
    cache.put(&key("t0", "aa"), b"fresh", None).await.unwrap();
    assert_eq!(
        cache.get(&key("t0", "aa")).await.unwrap().as_deref(),
        Some(&b"fresh"[..])
    );
}

async fn a_value_computed_across_an_invalidation_is_not_stored(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let cache = cache(&ctx, 0, CacheConfig::default());
    let k = key("t1", "ace0");
    let invalidator = cache.clone();
    let (v, _) = cache
        .get_or_compute(&k, None, || async move {
            invalidator
                .invalidate_model("openai/gpt-4o-mini")
                .await
                .unwrap();
            Ok::<_, String>(b"computed from old data".to_vec())
        })
        .await
        .unwrap();
    assert_eq!(v, b"computed from old data");
    assert_eq!(cache.get(&k).await.unwrap(), None);
}

async fn tenants_do_not_share_entries(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let cache = cache(&ctx, 0, CacheConfig::default());
    cache
        .put(&key("tenant-a", "ff"), b"a's answer", None)
        .await
        .unwrap();
    assert_eq!(cache.get(&key("tenant-b", "ff")).await.unwrap(), None);
    assert_eq!(
        cache.get(&key("tenant-a", "ff")).await.unwrap().as_deref(),
        Some(&b"a's answer"[..])
    );
}

async fn hits_and_misses_are_counted_per_model(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let cache = cache(&ctx, 0, CacheConfig::default());
    let k = key("t", "01");
    assert_eq!(cache.get(&k).await.unwrap(), None);
    cache.put(&k, b"x", None).await.unwrap();
    for _ in 0..3 {
        assert!(cache.get(&k).await.unwrap().is_some());
    }
    let stats = cache.stats("openai/gpt-4o-mini").await.unwrap();
    assert_eq!((stats.hits, stats.misses), (3, 1));
    assert_eq!(cache.stats("never-used").await.unwrap().hits, 0);
}

async fn large_values_are_compressed_and_oversized_ones_skipped(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let config = CacheConfig {
        max_value_bytes: 1 << 20,
        ..CacheConfig::default()
    };
    let cache = cache(&ctx, 0, config);
    let big: Vec<u8> = "a fairly repetitive completion. "
        .repeat(20_000)
        .into_bytes();
    assert_eq!(
        cache.put(&key("t", "02"), &big, None).await.unwrap(),
        Stored::Yes
    );
    assert_eq!(
        cache.get(&key("t", "02")).await.unwrap().as_deref(),
        Some(big.as_slice())
    );
    let too_big = vec![7u8; (1 << 20) + 1];
    assert_eq!(
        cache.put(&key("t", "03"), &too_big, None).await.unwrap(),
        Stored::TooLarge
    );
    assert_eq!(cache.get(&key("t", "03")).await.unwrap(), None);
    // Empty values are values.
    cache.put(&key("t", "04"), b"", None).await.unwrap();
    assert_eq!(
        cache.get(&key("t", "04")).await.unwrap().as_deref(),
        Some(&b""[..])
    );
}

async fn entries_expire_with_their_ttl(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let cache = cache(&ctx, 0, CacheConfig::default());
    let k = key("t", "05");
    cache
        .put(&k, b"short-lived", Some(Duration::from_millis(150)))
        .await
        .unwrap();
    assert!(cache.get(&k).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cache.get(&k).await.unwrap(), None);
}

pattern_suite!(
    followers_learn_the_leaders_token_and_then_hit,
    a_hit_is_admitted_by_its_lookup_on_one_redis_and_left_to_the_caller_on_a_cluster
);

/// On one Redis a hit's limits are checked and charged by the lookup's own script (all or
/// nothing, as `check_all` would); anything but a hit charges nothing. A cluster keeps the two
/// apart (their keys are in different slots): the decision is the caller's.
async fn a_hit_is_admitted_by_its_lookup_on_one_redis_and_left_to_the_caller_on_a_cluster(
    b: Backend,
) {
    let ctx = Ctx::new(b, 1).await;
    let cache = cache(&ctx, 0, CacheConfig::default());
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let rpm = limiter.key(&Id::new("key_1").unwrap(), "rpm").unwrap();
    let checks = [Check {
        key: rpm.clone(),
        limit: Limit::SlidingLog {
            limit: 2,
            window: Duration::from_secs(60),
        },
        cost: 1,
    }];
    let limits = PreparedChecks::of(&checks).unwrap();
    let k = key("t", "0a");
    // A miss takes the lease and charges nothing.
    let (lead, decided) = cache
        .lead_admitting(&k, "tok", true, &limits)
        .await
        .unwrap();
    assert!(matches!(lead, Lead::Leader { .. }), "{lead:?}");
    assert!(decided.is_none());
    cache.put(&k, b"answer", None).await.unwrap();
    let single = matches!(b, Backend::Single);
    for n in 1..=3 {
        let (lead, decided) = cache
            .lead_admitting(&k, "tok2", true, &limits)
            .await
            .unwrap();
        assert!(matches!(&lead, Lead::Hit(v) if v == b"answer"), "{lead:?}");
        match (single, decided) {
            (true, Some(d)) => {
                assert_eq!(d.allowed, n <= 2, "hit {n}: {d:?}");
                assert_eq!(d.decisions[0].remaining, 2u64.saturating_sub(n));
            }
            (false, None) => {}
            (_, other) => panic!("hit {n}: decision {other:?}"),
        }
    }
    // What the hits charged is what check_all sees: two requests on one Redis (the refused
    // third charged nothing), none on a cluster.
    let seen = limiter.check_all(&checks).await.unwrap();
    assert_eq!(seen.allowed, !single);
}

async fn followers_learn_the_leaders_token_and_then_hit(b: Backend) {
    use tollgate_redis::Lead;
    let ctx = Ctx::new(b, 2).await;
    let a = cache(&ctx, 0, CacheConfig::default());
    let other = cache(&ctx, 1, CacheConfig::default());
    let k = key("t", "1ead");
    let Lead::Leader { generation } = a.lead(&k, "stream-abc", true).await.unwrap() else {
        panic!("first caller leads")
    };
    assert_eq!(
        other.lead(&k, "stream-def", true).await.unwrap(),
        Lead::Follower {
            holder: "stream-abc".into()
        }
    );
    assert_eq!(
        a.complete(
            &k,
            &generation,
            b"answer",
            None,
            "stream-abc",
            Some((10, 5))
        )
        .await
        .unwrap(),
        Stored::Yes
    );
    assert_eq!(
        other.lead(&k, "stream-ghi", true).await.unwrap(),
        Lead::Hit(b"answer".to_vec())
    );
    // An abandoned lease frees the key for the next leader at once.
    let k2 = key("t", "2ead");
    assert!(matches!(
        a.lead(&k2, "s1", false).await.unwrap(),
        Lead::Leader { .. }
    ));
    assert!(a.abandon(&k2, "s1").await.unwrap());
    assert!(matches!(
        other.lead(&k2, "s2", false).await.unwrap(),
        Lead::Leader { .. }
    ));
    // The counted hit above added what the entry saves.
    let stats = a.stats("openai/gpt-4o-mini").await.unwrap();
    assert_eq!(
        (stats.saved_prompt_tokens, stats.saved_completion_tokens),
        (10, 5)
    );
    assert_eq!(
        a.models().await.unwrap(),
        vec!["openai/gpt-4o-mini".to_owned()]
    );
}

pattern_suite!(a_dead_leaders_lease_is_taken_over_once);

/// A follower that knows the leader is dead takes its lease over at once (not after the lease
/// expires); of several that try, one gets it; the dead leader's token no longer holds it.
async fn a_dead_leaders_lease_is_taken_over_once(b: Backend) {
    use tollgate_redis::Lead;
    let ctx = Ctx::new(b, 3).await;
    let dead = cache(&ctx, 0, CacheConfig::default());
    let k = key("t", "dead");
    let Lead::Leader { generation } = dead.lead(&k, "st-dead", true).await.unwrap() else {
        panic!("first caller leads")
    };
    let takers = (1..3).map(|i| {
        let c = cache(&ctx, i, CacheConfig::default());
        let k = k.clone();
        async move {
            c.take_over(&k, "st-dead", &format!("st-{i}"))
                .await
                .unwrap()
        }
    });
    let taken = futures::future::join_all(takers).await;
    let winners: Vec<&String> = taken.iter().flatten().collect();
    assert_eq!(winners, vec![&generation], "{taken:?}");
    assert!(!dead.renew(&k, "st-dead").await.unwrap());
    let winner = if taken[0].is_some() { "st-1" } else { "st-2" };
    let next = cache(&ctx, 1, CacheConfig::default());
    assert_eq!(
        next.lead(&k, "st-late", true).await.unwrap(),
        Lead::Follower {
            holder: winner.into()
        }
    );
    assert_eq!(
        next.complete(&k, &generation, b"answer", None, winner, None)
            .await
            .unwrap(),
        Stored::Yes
    );
    assert_eq!(
        next.lead(&k, "st-after", true).await.unwrap(),
        Lead::Hit(b"answer".to_vec())
    );
}
