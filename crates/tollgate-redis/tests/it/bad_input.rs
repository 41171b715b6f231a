use std::time::Duration;

use tollgate_core::ChatMessage;
use tollgate_redis::{
    CacheConfig, CacheKey, Error, Id, Limit, RateLimiter, ResponseCache, SessionConfig,
    SessionStore, Stored, StreamConfig, TokenStreams, Window,
};

use crate::{Backend, Ctx, pattern_suite};

/// Ids an attacker might send, aimed at the victim's keys, hash tags or glob patterns.
const HOSTILE: &[&[u8]] = &[
    b"victim:aa",
    b"victim}",
    b"{victim}",
    b"}:e:victim:aa",
    b"*",
    b"vic*",
    b"victim\xff\xfe",
    b"\x00",
    b"%76ictim",
    b"victim ",
    b"v:i:c:t:i:m",
];

pattern_suite!(
    hostile_tenant_ids_cannot_reach_another_tenants_entries,
    hostile_session_ids_work_and_stay_apart,
    values_that_look_like_lua_or_redis_syntax_are_plain_data,
    empty_and_huge_values_are_handled,
    empty_ids_are_rejected_with_a_clear_error,
);

async fn hostile_tenant_ids_cannot_reach_another_tenants_entries(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let cache = ResponseCache::new(ctx.redis(), ctx.keys.clone(), CacheConfig::default());
    let victim = CacheKey::new("m", "victim", "aa").unwrap();
    cache.put(&victim, b"victim's answer", None).await.unwrap();
    for raw in HOSTILE {
        let tenant = String::from_utf8_lossy(raw);
        for hash in ["aa", "ab"] {
            let k = CacheKey::new("m", &tenant, hash).unwrap();
            assert_eq!(
                cache.get(&k).await.unwrap(),
                None,
                "tenant {tenant:?} reached the victim"
            );
            // Their own entries work, and never overwrite the victim's.
            cache.put(&k, b"attacker", None).await.unwrap();
            assert_eq!(
                cache.get(&k).await.unwrap().as_deref(),
                Some(&b"attacker"[..])
            );
        }
    }
    assert_eq!(
        cache.get(&victim).await.unwrap().as_deref(),
        Some(&b"victim's answer"[..])
    );
    // Hash strings are checked: no way to smuggle a key segment in.
    assert!(matches!(
        CacheKey::new("m", "t", "aa:victim"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        CacheKey::new("m", "t", "AA"),
        Err(Error::InvalidArgument(_))
    ));
}

async fn hostile_session_ids_work_and_stay_apart(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = SessionStore::new(ctx.redis(), ctx.keys.clone(), SessionConfig::default());
    s.create("victim", "alice", Some("alice's prompt"))
        .await
        .unwrap();
    for (i, raw) in HOSTILE.iter().enumerate() {
        let id = String::from_utf8_lossy(raw).into_owned();
        s.create(&id, "mallory", None).await.unwrap();
        s.append(
            &id,
            "mallory",
            &[ChatMessage::text("user", format!("m{i}"))],
        )
        .await
        .unwrap();
        let h = s.history(&id, "mallory", Window::All).await.unwrap();
        assert_eq!(h, vec![ChatMessage::text("user", format!("m{i}"))]);
    }
    assert_eq!(
        s.history("victim", "alice", Window::All).await.unwrap(),
        vec![ChatMessage::text("system", "alice's prompt")]
    );
    // Rate-limit subjects too: a hostile subject has its own counters.
    let limiter = RateLimiter::new(ctx.redis(), ctx.keys.clone());
    let limit = Limit::per(1, Duration::from_secs(60));
    let victim_key = limiter.key(&Id::new("victim").unwrap(), "rpm").unwrap();
    for raw in HOSTILE {
        let k = limiter.key(&Id::new(raw).unwrap(), "rpm").unwrap();
        assert!(limiter.check(&k, limit, 1).await.unwrap().allowed);
    }
    assert!(
        limiter.check(&victim_key, limit, 1).await.unwrap().allowed,
        "the victim's limit was untouched"
    );
}

async fn values_that_look_like_lua_or_redis_syntax_are_plain_data(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = SessionStore::new(ctx.redis(), ctx.keys.clone(), SessionConfig::default());
    let nasty = "'); redis.call('FLUSHALL') --\r\n*1\r\n$8\r\nFLUSHALL\r\n";
    s.create("s", nasty, Some(nasty)).await.unwrap();
    s.append("s", nasty, &[ChatMessage::text(nasty, nasty)])
        .await
        .unwrap();
    let h = s.history("s", nasty, Window::All).await.unwrap();
    assert_eq!(
        h,
        vec![
            ChatMessage::text("system", nasty),
            ChatMessage::text(nasty, nasty)
        ]
    );
    let streams = TokenStreams::new(ctx.redis(), ctx.keys.clone(), StreamConfig::default());
    let mut p = streams.create(nasty, nasty.as_bytes()).await.unwrap();
    p.push(nasty.as_bytes()).await.unwrap();
    p.finish(b"").await.unwrap();
    let events = streams
        .reader(nasty)
        .await
        .unwrap()
        .read(0, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(events[1].data, nasty.as_bytes());
}

async fn empty_and_huge_values_are_handled(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let cache = ResponseCache::new(ctx.redis(), ctx.keys.clone(), CacheConfig::default());
    let k = CacheKey::new("m", "t", "01").unwrap();
    cache.put(&k, b"", None).await.unwrap();
    assert_eq!(cache.get(&k).await.unwrap().as_deref(), Some(&b""[..]));
    let huge = vec![0xabu8; 5 << 20];
    assert_eq!(cache.put(&k, &huge, None).await.unwrap(), Stored::TooLarge);
    // A 1 MB message and a 1 MB chunk go through.
    let s = SessionStore::new(ctx.redis(), ctx.keys.clone(), SessionConfig::default());
    let big = "x".repeat(1 << 20);
    s.append_or_create("big", "o", None, &[ChatMessage::text("user", big.clone())])
        .await
        .unwrap();
    assert_eq!(
        s.history("big", "o", Window::All).await.unwrap()[0]
            .text_content()
            .len(),
        big.len()
    );
    let streams = TokenStreams::new(ctx.redis(), ctx.keys.clone(), StreamConfig::default());
    let mut p = streams.create("big", b"").await.unwrap();
    p.push(big.as_bytes()).await.unwrap();
    p.push(b"").await.unwrap();
    let events = streams
        .reader("big")
        .await
        .unwrap()
        .read(0, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(events[1].data.len(), big.len());
    assert!(events[2].data.is_empty());
}

async fn empty_ids_are_rejected_with_a_clear_error(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = SessionStore::new(ctx.redis(), ctx.keys.clone(), SessionConfig::default());
    assert!(matches!(
        s.create("", "o", None).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.create("s", "", None).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        CacheKey::new("", "t", "aa"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        CacheKey::new("m", "t", ""),
        Err(Error::InvalidArgument(_))
    ));
    let streams = TokenStreams::new(ctx.redis(), ctx.keys.clone(), StreamConfig::default());
    assert!(matches!(
        streams.create("", b"").await,
        Err(Error::InvalidArgument(_))
    ));
    let err = Id::new("").unwrap_err();
    assert_eq!(err.to_string(), "invalid argument: an id must not be empty");
}
