//! The `patterns` benchmark.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_core::ChatMessage;
use tollgate_redis::{
    CacheConfig, CacheKey, Check, EmbeddingCache, Id, Keys, Limit, RateLimiter, Redis, RedisConfig,
    ResponseCache, ResultCache, SessionConfig, SessionStore, StreamConfig, TokenStreams, Waiter,
    Window,
};

/// Options of `tollgate-bench patterns`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Redis to measure; without it a private redis-server is started. Keys are written under
    /// `tollgate-bench:` and all expire by themselves; nothing else is touched.
    #[arg(long)]
    redis_url: Option<String>,
    /// Concurrent callers sharing the one connection.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

pub(crate) type Op =
    Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) round_trips: &'static str,
    pub(crate) op: Op,
}

pub(crate) struct Measured {
    pub(crate) ops_per_sec: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

pub(crate) fn op<F, Fut>(f: F) -> Op
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (_server, url) = crate::redis_to_measure(args.redis_url.as_deref()).await?;
    let redis = Redis::connect(&RedisConfig::new(&url)).await?;
    let keys = Keys::new("tollgate-bench:")?;
    let scenarios = scenarios(&redis, &keys).await?;
    let baselines = baselines(&redis);

    println!(
        "## Redis patterns: operations/s at concurrency {} over one multiplexed connection\n",
        args.concurrency
    );
    println!(
        "Server: {url}. {} s per scenario; baselines run before and after the patterns.\n",
        args.seconds
    );
    let duration = Duration::from_secs_f64(args.seconds);
    let mut before = Vec::new();
    for b in &baselines {
        before.push(measure(b, args.concurrency, duration).await?);
    }
    let mut results = Vec::new();
    for s in &scenarios {
        results.push(measure(s, args.concurrency, duration).await?);
    }
    let mut after = Vec::new();
    for b in &baselines {
        after.push(measure(b, args.concurrency, duration).await?);
    }
    let evalsha = (before[1].ops_per_sec + after[1].ops_per_sec) / 2.0;
    println!("| operation | round trips | ops/s | p50 | p99 | vs raw EVALSHA |");
    println!("|---|---|---:|---:|---:|---:|");
    for (i, b) in baselines.iter().enumerate() {
        for (when, m) in [("before", &before[i]), ("after", &after[i])] {
            print_row(&format!("{} ({when})", b.name), b.round_trips, m, evalsha);
        }
    }
    for (s, m) in scenarios.iter().zip(&results) {
        print_row(s.name, s.round_trips, m, evalsha);
    }
    let one_rtt: Vec<f64> = scenarios
        .iter()
        .zip(&results)
        .filter(|(s, _)| s.round_trips == "1")
        .map(|(_, m)| m.ops_per_sec / evalsha)
        .collect();
    let worst = one_rtt.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "\nLowest ratio among one-round-trip patterns: {:.0}% of raw EVALSHA (goal: at least 70%).",
        worst * 100.0
    );
    // What the library adds on top of the same Redis work, sent raw by the same client.
    let rate = |name: &str| {
        scenarios
            .iter()
            .zip(&results)
            .find(|(s, _)| s.name == name)
            .map(|(_, m)| m.ops_per_sec)
    };
    let raw = |i: usize| (before[i].ops_per_sec + after[i].ops_per_sec) / 2.0;
    if let (Some(gcra), Some(history)) =
        (rate("rate limit: GCRA"), rate("session: history (last 20)"))
    {
        println!(
            "Library overhead: GCRA through RateLimiter runs at {:.0}% of the same script sent raw; \
             session history at {:.0}% of the same two commands sent raw (decoding included).",
            gcra / raw(2) * 100.0,
            history / raw(3) * 100.0
        );
    }
    Ok(())
}

fn print_row(name: &str, round_trips: &str, m: &Measured, evalsha: f64) {
    println!(
        "| {name} | {round_trips} | {:.0} | {:.0} µs | {:.0} µs | {:.0}% |",
        m.ops_per_sec,
        m.p50.as_secs_f64() * 1e6,
        m.p99.as_secs_f64() * 1e6,
        m.ops_per_sec / evalsha * 100.0
    );
}

/// Runs `concurrency` callers looping on the operation for `duration` (after a short warm-up).
pub(crate) async fn measure(
    s: &Scenario,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let warmup = Instant::now() + Duration::from_millis(200);
    while Instant::now() < warmup {
        (s.op)(0).await?;
    }
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let op = s.op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut i = worker as u64 * 1_000_000_000;
            while Instant::now() < deadline {
                let t = Instant::now();
                op(i).await?;
                latencies.push(t.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    let pick = |q: f64| crate::percentile(&all, q);
    Ok(Measured {
        ops_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
    })
}

fn baselines(redis: &Redis) -> Vec<Scenario> {
    let trivial = Arc::new(redis::Script::new("return 1"));
    let rate_limit = Arc::new(redis::Script::new(include_str!(
        "../../tollgate-redis/lua/rate_limit.lua"
    )));
    let r1 = redis.clone();
    let r2 = redis.clone();
    let r3 = redis.clone();
    let r4 = redis.clone();
    vec![
        Scenario {
            name: "raw GET",
            round_trips: "1",
            op: op(move |_| {
                let mut c = r1.conn();
                async move {
                    let _: Option<Vec<u8>> = redis::cmd("GET")
                        .arg("tollgate-bench:raw")
                        .query_async(&mut c)
                        .await?;
                    Ok(())
                }
            }),
        },
        Scenario {
            name: "raw EVALSHA (return 1)",
            round_trips: "1",
            op: op(move |_| {
                let mut c = r2.conn();
                let script = trivial.clone();
                async move {
                    let _: i64 = script.invoke_async(&mut c).await?;
                    Ok(())
                }
            }),
        },
        Scenario {
            name: "raw EVALSHA rate_limit.lua (GCRA, fixed args)",
            round_trips: "1",
            op: op(move |_| {
                let mut c = r3.conn();
                let script = rate_limit.clone();
                async move {
                    let _: redis::Value = script
                        .key("tollgate-bench:{raw}:gcra")
                        .arg(1)
                        .arg("gcra")
                        .arg(1_000_000)
                        .arg(60_000)
                        .arg(1_000_000)
                        .arg(1)
                        .invoke_async(&mut c)
                        .await?;
                    Ok(())
                }
            }),
        },
        Scenario {
            name: "raw HGETALL + XREVRANGE COUNT 20 (pipeline, session s0)",
            round_trips: "1",
            op: op(move |_| {
                let mut c = r4.conn();
                async move {
                    let _: (redis::Value, redis::Value) = redis::pipe()
                        .cmd("HGETALL")
                        .arg("tollgate-bench:{s:s0}:meta")
                        .cmd("XREVRANGE")
                        .arg("tollgate-bench:{s:s0}:msgs")
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(20)
                        .query_async(&mut c)
                        .await?;
                    Ok(())
                }
            }),
        },
    ]
}

async fn scenarios(redis: &Redis, keys: &Keys) -> anyhow::Result<Vec<Scenario>> {
    let limiter = RateLimiter::new(redis.clone(), keys.clone());
    let subject = Id::new("bench-key")?;
    // Limits large enough that the run never exhausts them, small enough to be realistic.
    let big = 1_000_000u64;
    let minute = Duration::from_secs(60);
    let mut out = Vec::new();
    let limits: [(&'static str, Limit, &str); 5] = [
        ("rate limit: GCRA", Limit::per(big, minute), "gcra"),
        (
            "rate limit: sliding log (1 s window)",
            Limit::SlidingLog {
                limit: big,
                window: Duration::from_secs(1),
            },
            "log",
        ),
        (
            "rate limit: sliding counter",
            Limit::SlidingCounter {
                limit: big,
                window: minute,
            },
            "ctr",
        ),
        (
            "rate limit: fixed window",
            Limit::FixedWindow {
                limit: big,
                window: minute,
            },
            "fix",
        ),
        (
            "rate limit: token bucket (reserve)",
            Limit::TokenBucket {
                capacity: big,
                period: minute,
            },
            "tok",
        ),
    ];
    for (name, limit, key_name) in limits {
        let l = limiter.clone();
        let key = limiter.key(&subject, key_name)?;
        out.push(Scenario {
            name,
            round_trips: "1",
            op: op(move |_| {
                let (l, key) = (l.clone(), key.clone());
                async move {
                    l.check(&key, limit, 1).await?;
                    Ok(())
                }
            }),
        });
    }
    {
        let l = limiter.clone();
        let key = limiter.key(&subject, "tok")?;
        out.push(Scenario {
            name: "rate limit: token reconcile",
            round_trips: "1",
            op: op(move |i| {
                let (l, key) = (l.clone(), key.clone());
                async move {
                    l.reconcile_tokens(&key, big, minute, if i % 2 == 0 { 5 } else { -5 })
                        .await?;
                    Ok(())
                }
            }),
        });
    }
    {
        let l = limiter.clone();
        let key = limiter.key(&subject, "conc")?;
        out.push(Scenario {
            name: "concurrency: acquire + release",
            round_trips: "2",
            op: op(move |_| {
                let (l, key) = (l.clone(), key.clone());
                async move {
                    let (_, lease) = l.acquire(&key, 1_000_000, minute).await?;
                    if let Some(lease) = lease {
                        l.release(lease).await?;
                    }
                    Ok(())
                }
            }),
        });
    }
    {
        let l = limiter.clone();
        let checks = vec![
            Check {
                key: limiter.key(&subject, "m-rpm")?,
                limit: Limit::per(big, minute),
                cost: 1,
            },
            Check {
                key: limiter.key(&subject, "m-tpm")?,
                limit: Limit::TokenBucket {
                    capacity: big,
                    period: minute,
                },
                cost: 500,
            },
            Check {
                key: limiter.key(&subject, "m-model-rpm")?,
                limit: Limit::per(big, minute),
                cost: 1,
            },
        ];
        out.push(Scenario {
            name: "multi-limit check (rpm + tpm + model rpm)",
            round_trips: "1",
            op: op(move |_| {
                let (l, checks) = (l.clone(), checks.clone());
                async move {
                    l.check_all(&checks).await?;
                    Ok(())
                }
            }),
        });
    }
    // A request that goes upstream: its admission and its settling, with and without a model's
    // capacity (shared by every key) checked in the same script, and as a request that would
    // queue for its slot (one is free).
    for (name, capacity, waiting) in [
        ("admit + settle: a key's rpm, tpm, slot", false, false),
        ("admit + settle: + the model's rpm, tpm, slot", true, false),
        ("admit + settle: a key's, queueing (slot free)", false, true),
    ] {
        let l = limiter.clone();
        let model = Id::new("openai/gpt-4o")?;
        let mut checks = vec![
            Check {
                key: limiter.key(&subject, "a-rpm")?,
                limit: Limit::SlidingLog {
                    limit: big,
                    window: minute,
                },
                cost: 1,
            },
            Check {
                key: limiter.key(&subject, "a-tpm")?,
                limit: Limit::TokenBucket {
                    capacity: big,
                    period: minute,
                },
                cost: 500,
            },
            Check {
                key: limiter.key(&subject, "a-conc")?,
                limit: Limit::Concurrency {
                    limit: big,
                    lease: minute,
                },
                cost: 1,
            },
        ];
        if capacity {
            let mut model_checks: Vec<Check> = checks
                .iter()
                .zip(["rpm", "tpm", "conc"])
                .map(|(c, n)| {
                    Ok(Check {
                        key: limiter.model_key(&model, n)?,
                        ..c.clone()
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            checks.append(&mut model_checks);
        }
        let buckets: Vec<_> = checks
            .iter()
            .filter(|c| matches!(c.limit, Limit::TokenBucket { .. }))
            .map(|c| (c.key.clone(), big))
            .collect();
        out.push(Scenario {
            name,
            round_trips: "2",
            op: op(move |_| {
                let (l, checks, buckets) = (l.clone(), checks.clone(), buckets.clone());
                async move {
                    let d = if waiting {
                        let waiter = Waiter::new(Duration::from_secs(2));
                        l.check_all_waiting(&checks, &waiter).await?
                    } else {
                        l.check_all(&checks).await?
                    };
                    l.settle(&d.leases, &buckets, minute, -100).await?;
                    Ok(())
                }
            }),
        });
    }
    {
        // The seed's tiers: exact (user and context), precomputed (user), popular (category);
        // only the last is held, so every tier is read.
        let results = ResultCache::new(redis.clone(), keys.clone());
        results
            .put("recs", "popular:books", b"[1,2,3]", minute)
            .await?;
        out.push(Scenario {
            name: "result cache: 3-tier lookup (the last tier answers)",
            round_trips: "1",
            op: op(move |_| {
                let results = results.clone();
                async move {
                    let hit = results
                        .lookup("recs", &["u1:ctx9", "precomp:u1", "popular:books"])
                        .await?;
                    anyhow::ensure!(hit.is_some_and(|h| h.tier == 2), "expected the last tier");
                    Ok(())
                }
            }),
        });
    }
    let cache = ResponseCache::new(redis.clone(), keys.clone(), CacheConfig::default());
    let answer = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Paris is the capital of France."},"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":8,"total_tokens":22}}"#;
    let hit_key = CacheKey::new("openai/gpt-4o-mini", "tenant-1", &"ab".repeat(32))?;
    cache.put(&hit_key, answer, None).await?;
    {
        let (c, k) = (cache.clone(), hit_key.clone());
        out.push(Scenario {
            name: "response cache: get (hit)",
            round_trips: "1",
            op: op(move |_| {
                let (c, k) = (c.clone(), k.clone());
                async move {
                    anyhow::ensure!(c.get(&k).await?.is_some(), "expected a hit");
                    Ok(())
                }
            }),
        });
    }
    {
        let (c, k) = (cache.clone(), hit_key.clone());
        out.push(Scenario {
            name: "response cache: get_or_compute (hit)",
            round_trips: "1",
            op: op(move |_| {
                let (c, k) = (c.clone(), k.clone());
                async move {
                    c.get_or_compute(&k, None, || async {
                        Ok::<_, std::convert::Infallible>(Vec::new())
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                    Ok(())
                }
            }),
        });
    }
    {
        let c = cache.clone();
        out.push(Scenario {
            name: "response cache: put",
            round_trips: "2",
            op: op(move |i| {
                let c = c.clone();
                async move {
                    let k = CacheKey::new("bench-put", "t", &format!("{:x}", i % 10_000))?;
                    c.put(&k, answer, Some(Duration::from_secs(60))).await?;
                    Ok(())
                }
            }),
        });
    }
    let sessions = SessionStore::new(
        redis.clone(),
        keys.clone(),
        SessionConfig {
            max_messages: 50,
            ..SessionConfig::default()
        },
    );
    // Sessions hold 20 messages before anything is measured, so history reads (and the raw
    // baseline that mirrors them) read a full window from the start.
    let turn = [
        ChatMessage::text("user", "What is the capital of France?"),
        ChatMessage::text("assistant", "Paris."),
    ];
    for i in 0..64 {
        sessions
            .create(&format!("s{i}"), "owner", Some("You are helpful."))
            .await?;
        for _ in 0..10 {
            sessions.append(&format!("s{i}"), "owner", &turn).await?;
        }
    }
    {
        let s = sessions.clone();
        let turn = [
            ChatMessage::text("user", "What is the capital of France?"),
            ChatMessage::text("assistant", "Paris."),
        ];
        out.push(Scenario {
            name: "session: append a turn (2 messages)",
            round_trips: "1",
            op: op(move |i| {
                let (s, turn) = (s.clone(), turn.clone());
                async move {
                    s.append(&format!("s{}", i % 64), "owner", &turn).await?;
                    Ok(())
                }
            }),
        });
    }
    {
        let s = sessions.clone();
        out.push(Scenario {
            name: "session: history (last 20)",
            round_trips: "1",
            op: op(move |i| {
                let s = s.clone();
                async move {
                    s.history(&format!("s{}", i % 64), "owner", Window::LastN(20))
                        .await?;
                    Ok(())
                }
            }),
        });
    }
    {
        let streams = TokenStreams::new(
            redis.clone(),
            keys.clone(),
            StreamConfig {
                max_len: 1000,
                ..StreamConfig::default()
            },
        );
        // One producer per stream (the single-writer rule); callers take turns on 64 streams.
        let mut producers = Vec::new();
        for i in 0..64 {
            producers.push(Arc::new(tokio::sync::Mutex::new(
                streams.create(&format!("st{i}"), b"").await?,
            )));
        }
        out.push(Scenario {
            name: "token stream: push a chunk",
            round_trips: "1",
            op: op(move |i| {
                let p = producers[(i % 64) as usize].clone();
                async move {
                    p.lock()
                        .await
                        .push(b"{\"choices\":[{\"delta\":{\"content\":\" token\"}}]}")
                        .await?;
                    Ok(())
                }
            }),
        });
    }
    {
        let emb = EmbeddingCache::new(
            redis.clone(),
            keys.clone(),
            "local/all-minilm-l6-v2",
            "1",
            Duration::from_secs(600),
        )?;
        let texts: Vec<String> = (0..8)
            .map(|i| format!("sentence number {i} to embed"))
            .collect();
        let vector = vec![0.1f32; 384];
        let pairs: Vec<(&str, &[f32])> = texts
            .iter()
            .map(|t| (t.as_str(), vector.as_slice()))
            .collect();
        emb.set_many(&pairs).await?;
        let texts = Arc::new(texts);
        let (e1, t1) = (emb.clone(), texts.clone());
        out.push(Scenario {
            name: "embedding cache: get 8 (384 dims)",
            round_trips: "1",
            op: op(move |_| {
                let (e, t) = (e1.clone(), t1.clone());
                async move {
                    let refs: Vec<&str> = t.iter().map(String::as_str).collect();
                    e.get_many(&refs).await?;
                    Ok(())
                }
            }),
        });
        let vector = Arc::new(vector);
        out.push(Scenario {
            name: "embedding cache: set 8 (384 dims)",
            round_trips: "1",
            op: op(move |_| {
                let (e, t, v) = (emb.clone(), texts.clone(), vector.clone());
                async move {
                    let pairs: Vec<(&str, &[f32])> =
                        t.iter().map(|s| (s.as_str(), v.as_slice())).collect();
                    e.set_many(&pairs).await?;
                    Ok(())
                }
            }),
        });
    }
    Ok(out)
}
