use std::time::{Duration, Instant};

use tollgate_core::ChatMessage;
use tollgate_redis::{
    CacheConfig, CacheKey, Channels, EmbeddingCache, Error, Id, Keys, Limit, Outcome, RateLimiter,
    Redis, RedisConfig, ResponseCache, SessionConfig, SessionStore, StreamConfig, TokenStreams,
};
use tollgate_redis::{EventBus, EventConfig, StartAt};
use tollgate_testkit::{RedisServer, shared_cluster, unique_prefix};

use crate::connect;

async fn check_once(redis: &Redis, keys: &Keys) -> Result<bool, Error> {
    let limiter = RateLimiter::new(redis.clone(), keys.clone());
    let key = limiter.key(&Id::new("k").unwrap(), "rpm").unwrap();
    Ok(limiter
        .check(&key, Limit::per(1000, Duration::from_secs(60)), 1)
        .await?
        .allowed)
}

#[tokio::test]
async fn scripts_are_reloaded_after_script_flush_single_node() {
    let server = RedisServer::start();
    let redis = connect(&server.url()).await;
    let keys = Keys::new(unique_prefix()).unwrap();
    assert!(check_once(&redis, &keys).await.unwrap());
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis.conn())
        .await
        .unwrap();
    assert!(
        check_once(&redis, &keys).await.unwrap(),
        "NOSCRIPT answered by loading the script again"
    );
}

#[tokio::test]
async fn scripts_are_reloaded_after_script_flush_cluster() {
    let cluster = shared_cluster();
    let redis = connect(&cluster.url()).await;
    let keys = Keys::new(unique_prefix()).unwrap();
    assert!(check_once(&redis, &keys).await.unwrap());
    for url in cluster.node_urls() {
        let mut c = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    assert!(check_once(&redis, &keys).await.unwrap());
}

#[tokio::test]
async fn reconnects_by_itself_after_redis_restarts() {
    let mut server = RedisServer::start();
    let redis = Redis::connect(&RedisConfig {
        url: server.url(),
        command_timeout: Duration::from_millis(300),
    })
    .await
    .unwrap();
    let keys = Keys::new(unique_prefix()).unwrap();
    assert!(check_once(&redis, &keys).await.unwrap());
    server.kill();
    let err = check_once(&redis, &keys).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match check_once(&redis, &keys).await {
            Ok(allowed) => {
                assert!(allowed);
                break;
            }
            Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("did not recover within 5 s of the restart: {e:?}"),
        }
    }
}

#[tokio::test]
async fn starts_while_redis_is_down_and_degrades() {
    // Nothing listens on this port (the server was stopped).
    let url = {
        let server = RedisServer::start();
        server.url()
    };
    let redis = Redis::connect(&RedisConfig {
        url,
        command_timeout: Duration::from_millis(200),
    })
    .await
    .unwrap();
    assert!(redis.ping().await.unwrap_err().is_unavailable());
    // The cache turns into a pass-through instead of failing.
    let cache = ResponseCache::new(redis.clone(), Keys::default(), CacheConfig::default());
    let k = CacheKey::new("m", "t", "aa").unwrap();
    let (v, outcome) = cache
        .get_or_compute(&k, None, || async { Ok::<_, String>(b"direct".to_vec()) })
        .await
        .unwrap();
    assert_eq!((v.as_slice(), outcome), (&b"direct"[..], Outcome::Uncached));
}

#[tokio::test]
async fn every_call_has_a_timeout() {
    let server = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let redis = Redis::connect(&RedisConfig {
        url: server.url(),
        command_timeout: Duration::from_millis(100),
    })
    .await
    .unwrap();
    redis.ping().await.unwrap();
    // Make the server stall for longer than the timeout, from another connection.
    let stall = tokio::spawn({
        let url = server.url();
        async move {
            let mut c = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            // This connection's own client may give up first; the server stalls all the same.
            let _: Result<(), _> = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg("1")
                .query_async(&mut c)
                .await;
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = redis.ping().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    stall.await.unwrap();
}

/// A hung Redis costs one timeout per timeout, not one per command: after a call goes
/// unanswered the next ones are refused at once ("skipped"), one probe per timeout goes
/// through, and the first answer after Redis wakes up closes the breaker.
#[tokio::test]
async fn a_redis_that_stops_answering_is_skipped_until_a_probe_gets_an_answer() {
    let server = RedisServer::start();
    let redis = Redis::connect(&RedisConfig {
        url: server.url(),
        command_timeout: Duration::from_millis(200),
    })
    .await
    .unwrap();
    redis.ping().await.unwrap();
    server.freeze(true);
    let first = redis.ping().await.unwrap_err();
    assert!(first.is_unavailable(), "{first:?}");
    assert!(!first.to_string().contains("skipped"), "{first}");
    let next = redis.ping().await.unwrap_err();
    assert!(next.is_unavailable(), "{next:?}");
    assert!(next.to_string().contains("skipped"), "{next}");
    server.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = redis.ping().await {
        assert!(
            e.is_unavailable() && Instant::now() < deadline,
            "did not recover: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.ping().await.unwrap();
}

#[tokio::test]
async fn a_bad_url_is_a_clear_error() {
    for url in ["not a url", "redis+cluster://", "http://localhost"] {
        let err = Redis::connect(&RedisConfig::new(url)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{url}: {err:?}");
    }
}

/// Runs every pattern once on a private server, then checks that every key left behind expires.
#[tokio::test]
async fn every_key_written_has_a_ttl() {
    let server = RedisServer::start();
    let redis = connect(&server.url()).await;
    let keys = Keys::new(unique_prefix()).unwrap();
    let cache = ResponseCache::new(redis.clone(), keys.clone(), CacheConfig::default());
    let k = CacheKey::new("m", "t", "aa").unwrap();
    cache
        .get_or_compute(&k, None, || async { Ok::<_, String>(b"v".to_vec()) })
        .await
        .unwrap();
    cache.invalidate_model("m").await.unwrap();
    cache.put(&k, b"v2", None).await.unwrap();
    let sessions = SessionStore::new(redis.clone(), keys.clone(), SessionConfig::default());
    sessions
        .append_or_create("s", "o", Some("sys"), &[ChatMessage::text("user", "hi")])
        .await
        .unwrap();
    let streams = TokenStreams::new(redis.clone(), keys.clone(), StreamConfig::default());
    let mut p = streams.create("st", b"").await.unwrap();
    p.push(b"x").await.unwrap();
    p.finish(b"").await.unwrap();
    let limiter = RateLimiter::new(redis.clone(), keys.clone());
    let subject = Id::new("k").unwrap();
    let window = Duration::from_secs(60);
    for (name, limit, cost) in [
        ("gcra", Limit::per(5, window), 1),
        ("log", Limit::SlidingLog { limit: 5, window }, 1),
        ("ctr", Limit::SlidingCounter { limit: 5, window }, 1),
        ("fix", Limit::FixedWindow { limit: 5, window }, 1),
        (
            "tok",
            Limit::TokenBucket {
                capacity: 500,
                period: window,
            },
            100,
        ),
    ] {
        limiter
            .check(&limiter.key(&subject, name).unwrap(), limit, cost)
            .await
            .unwrap();
    }
    let tok = limiter.key(&subject, "tok").unwrap();
    limiter
        .reconcile_tokens(&tok, 500, window, 50)
        .await
        .unwrap();
    let (_, lease) = limiter
        .acquire(&limiter.key(&subject, "conc").unwrap(), 2, window)
        .await
        .unwrap();
    limiter.renew(&lease.unwrap()).await.unwrap();
    EmbeddingCache::new(redis.clone(), keys.clone(), "m", "1", window)
        .unwrap()
        .set_many(&[("t", &[1.0][..])])
        .await
        .unwrap();
    Channels::new(redis.clone(), keys.clone())
        .publish("c", b"x")
        .await
        .unwrap();
    let events = EventBus::new(redis.clone(), keys.clone(), EventConfig::default());
    events.create_group("ev", "g", StartAt::New).await.unwrap();
    events.publish("ev", &[("k", b"v")]).await.unwrap();
    let mut consumer = events.consumer("ev", "g", "c").await.unwrap();
    let delivered = consumer.next().await.unwrap();
    consumer.dead_letter(&delivered[0], "test").await.unwrap();

    let mut conn = redis.conn();
    let all: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys.prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    // 6 limits, session meta + messages, cache entry + generation + stats, stream, embedding,
    // event stream + dead letters (the released single-flight lease is gone, as it should be).
    assert_eq!(all.len(), 15, "expected a key per pattern, found {all:?}");
    for key in all {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(pttl > 0, "{key} has no TTL ({pttl})");
    }
}
