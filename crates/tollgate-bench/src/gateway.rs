//! The `gateway` benchmark.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_testkit::{FakeUpstream, FakeUpstreamConfig, RedisServer};

/// Options of `tollgate-bench gateway`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Concurrencies to measure, comma-separated.
    #[arg(long, default_value = "1,32")]
    concurrency: String,
    /// Seconds per cell (after a 1 s warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// The tollgate binary (default: next to this one).
    #[arg(long)]
    tollgate: Option<PathBuf>,
    /// Also measure fresh cacheable questions against a second tollgate with the compiled-in
    /// semantic cache (the local embedding model; its weights must be installed).
    #[arg(long)]
    semantic: bool,
}

/// Options of the hidden `proxy` command.
#[derive(Debug, clap::Args)]
pub(crate) struct ProxyArgs {
    #[arg(long)]
    listen: String,
    /// Full URL requests are forwarded to.
    #[arg(long)]
    upstream: String,
}

/// A forwarding proxy with no logic: the request body goes to the upstream, its answer comes
/// back. What any gateway hop costs on this machine, the floor under tollgate's added latency.
pub(crate) async fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    tollgate_providers::init_tls();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .build()?;
    let upstream: Arc<str> = args.upstream.into();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            match client
                .post(&*upstream)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let bytes = r.bytes().await.unwrap_or_default();
                    (
                        axum::http::StatusCode::from_u16(status)
                            .unwrap_or(axum::http::StatusCode::BAD_GATEWAY),
                        bytes,
                    )
                }
                Err(_) => (
                    axum::http::StatusCode::BAD_GATEWAY,
                    axum::body::Bytes::new(),
                ),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

struct Cell {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    /// CPU per answered request of the process measured and of Redis (µs), when watched.
    cpu: Option<(f64, f64)>,
}

/// What to watch while a cell runs: the CPU of a process (the gateway or the proxy) and of Redis.
#[derive(Clone, Copy)]
struct Watch<'a> {
    pid: u32,
    redis: &'a str,
}

/// CPU time a process used so far (user + system), from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces), from the state on.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let user: u64 = rest.get(11)?.parse().ok()?;
            let system: u64 = rest.get(12)?.parse().ok()?;
            Some(user + system)
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// CPU time Redis used so far (`INFO cpu`: user + system, its main thread and the others).
async fn redis_cpu(url: &str) -> Duration {
    let info: String = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut conn)
            .await
            .ok()
    }
    .await
    .unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(':')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    Duration::from_secs_f64(field("used_cpu_user") + field("used_cpu_sys"))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    tollgate_providers::init_tls();
    let concurrencies: Vec<usize> = args
        .concurrency
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<Result<_, _>>()?;
    let redis = tokio::task::spawn_blocking(RedisServer::start).await?;
    let upstream = FakeUpstream::start(FakeUpstreamConfig::default()).await;
    let dir = tempfile::tempdir()?;
    let tollgate = crate::start_tollgate(
        args.tollgate.clone(),
        &format!(
            "[semantic_cache]\nenabled = false\n[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = [\"up/m\"]\n\
             [tiers.default]\nrpm = 1000000000\ntpm = 1000000000000\nmax_concurrency = 100000\n",
            upstream.base_url()
        ),
        &redis.url(),
        dir.path(),
    )
    .await?;
    let gateway = tollgate.base.clone();
    let proxy_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut proxy = Command::new(std::env::current_exe()?)
        .args([
            "proxy",
            "--listen",
            &format!("127.0.0.1:{proxy_port}"),
            "--upstream",
        ])
        .arg(format!("{}/chat/completions", upstream.base_url()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let proxy_url = format!("http://127.0.0.1:{proxy_port}/v1/chat/completions");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_kib(tollgate.child.id(), "VmRSS");

    let message = json!([{"role": "user", "content": "Say hello in one short sentence."}]);
    let direct =
        Arc::new(json!({"model": "m", "max_tokens": 32, "temperature": 0, "messages": message}));
    let pass = Arc::new(
        json!({"model": "up/m", "max_tokens": 32, "temperature": 0.7, "messages": message}),
    );
    let hit =
        Arc::new(json!({"model": "up/m", "max_tokens": 32, "temperature": 0, "messages": message}));
    let prime = http
        .post(format!("{gateway}/v1/chat/completions"))
        .body(hit.to_string())
        .send()
        .await?;
    anyhow::ensure!(
        prime.status() == 200,
        "priming request failed: {}",
        prime.text().await?
    );
    let check = http
        .post(format!("{gateway}/v1/chat/completions"))
        .body(hit.to_string())
        .send()
        .await?;
    anyhow::ensure!(
        check
            .headers()
            .get("x-tollgate-cache")
            .is_some_and(|v| v == "hit"),
        "the cache-hit request is not a hit"
    );

    let duration = Duration::from_secs_f64(args.seconds);
    let mut rows = Vec::new();
    for &c in &concurrencies {
        let upstream_url = format!("{}/chat/completions", upstream.base_url());
        let tollgate_url = format!("{gateway}/v1/chat/completions");
        let redis_url = redis.url();
        let watch = |pid: u32| {
            Some(Watch {
                pid,
                redis: &redis_url,
            })
        };
        let d = measure(&http, &upstream_url, direct.clone(), c, duration, None).await;
        let f = measure(
            &http,
            &proxy_url,
            direct.clone(),
            c,
            duration,
            watch(proxy.id()),
        )
        .await;
        let p = measure(
            &http,
            &tollgate_url,
            pass.clone(),
            c,
            duration,
            watch(tollgate.child.id()),
        )
        .await;
        let h = measure(
            &http,
            &tollgate_url,
            hit.clone(),
            c,
            duration,
            watch(tollgate.child.id()),
        )
        .await;
        rows.push((c, d, f, p, h));
    }
    // Redis work per request, counted with MONITOR after the timed cells (it would slow them).
    let tollgate_url = format!("{gateway}/v1/chat/completions");
    let mut streamed = (*pass).clone();
    streamed["stream"] = json!(true);
    let mut counts = Vec::new();
    for (name, body) in [
        ("pass-through, not streamed", pass.clone()),
        ("pass-through, streamed", Arc::new(streamed)),
        ("exact-cache hit", hit.clone()),
    ] {
        counts.push((
            name,
            commands_per_request(&redis.url(), &http, &tollgate_url, &body).await?,
        ));
    }
    let peak_rss = rss_kib(tollgate.child.id(), "VmHWM");
    // Fresh questions with temperature 0 (cacheable, so the default configuration embeds each
    // for the semantic lookup), against the same questions with the semantic cache off.
    let mut semantic_rows = Vec::new();
    if args.semantic {
        // Its own key prefix: its own outbox, bound to its own database.
        let sem_dir = tempfile::tempdir()?;
        let with_semantic = crate::start_tollgate(
            args.tollgate.clone(),
            &format!(
                "[redis]\nkey_prefix = \"tgsem\"\n\
                 [providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = [\"up/m\"]\n\
                 [tiers.default]\nrpm = 1000000000\ntpm = 1000000000000\nmax_concurrency = 100000\n",
                upstream.base_url()
            ),
            &redis.url(),
            sem_dir.path(),
        )
        .await?;
        let fresh = Arc::new(json!({"model": "up/m", "max_tokens": 32, "temperature": 0,
            "messages": [{"role": "user", "content": "Question number {n}: what should I know about it?"}]}));
        // The embedding model loads on the first question.
        let warm = http
            .post(format!("{}/v1/chat/completions", with_semantic.base))
            .body(fresh.to_string().replace("{n}", "warm-up"))
            .send()
            .await?;
        anyhow::ensure!(warm.status() == 200, "semantic warm-up failed");
        for &c in &concurrencies {
            let redis_url = redis.url();
            let off = measure(
                &http,
                &format!("{gateway}/v1/chat/completions"),
                fresh.clone(),
                c,
                duration,
                Some(Watch {
                    pid: tollgate.child.id(),
                    redis: &redis_url,
                }),
            )
            .await;
            let on = measure(
                &http,
                &format!("{}/v1/chat/completions", with_semantic.base),
                fresh.clone(),
                c,
                duration,
                Some(Watch {
                    pid: with_semantic.child.id(),
                    redis: &redis_url,
                }),
            )
            .await;
            semantic_rows.push((c, off, on));
        }
    }
    let upstream_calls = upstream.calls();
    drop(tollgate);
    let _ = proxy.kill();
    let _ = proxy.wait();

    println!("## tollgate in front of a 0 ms mock upstream, against the mock called directly\n");
    println!(
        "{} s per cell after a 1 s warm-up; one load generator (this process), keep-alive connections.\n",
        args.seconds
    );
    println!(
        "| scenario | concurrency | req/s | p50 | p99 | added p50 | added p99 | CPU/request | Redis CPU/request | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (c, d, f, p, h) in &rows {
        let ms = |x: Duration| format!("{:.3} ms", x.as_secs_f64() * 1e3);
        let added = |x: Duration, base: Duration| {
            format!("{:+.3} ms", (x.as_secs_f64() - base.as_secs_f64()) * 1e3)
        };
        let cpu = |cell: &Cell| match cell.cpu {
            Some((process, redis)) => (format!("{process:.0} µs"), format!("{redis:.0} µs")),
            None => (String::new(), String::new()),
        };
        println!(
            "| mock upstream, direct | {c} | {:.0} | {} | {} | | | | | {} |",
            d.rps,
            ms(d.p50),
            ms(d.p99),
            d.errors
        );
        println!(
            "| minimal forwarding proxy (floor) | {c} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            f.rps,
            ms(f.p50),
            ms(f.p99),
            added(f.p50, d.p50),
            added(f.p99, d.p99),
            cpu(f).0,
            cpu(f).1,
            f.errors
        );
        println!(
            "| tollgate pass-through | {c} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            p.rps,
            ms(p.p50),
            ms(p.p99),
            added(p.p50, d.p50),
            added(p.p99, d.p99),
            cpu(p).0,
            cpu(p).1,
            p.errors
        );
        println!(
            "| tollgate exact-cache hit | {c} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            h.rps,
            ms(h.p50),
            ms(h.p99),
            added(h.p50, d.p50),
            added(h.p99, d.p99),
            cpu(h).0,
            cpu(h).1,
            h.errors
        );
    }
    if !semantic_rows.is_empty() {
        println!(
            "\n## Fresh temperature-0 questions (each new): semantic cache off, and the compiled-in defaults\n"
        );
        println!(
            "| concurrency | off: req/s | off: p50 | off: CPU/request | defaults: req/s | defaults: p50 | defaults: CPU/request | throughput ratio | p50 added |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let cpu = |cell: &Cell| {
            cell.cpu
                .map_or(String::new(), |(p, _)| format!("{p:.0} µs"))
        };
        for (c, off, on) in &semantic_rows {
            println!(
                "| {c} | {:.0} | {:.3} ms | {} | {:.0} | {:.3} ms | {} | {:.2}x | {:+.3} ms |",
                off.rps,
                off.p50.as_secs_f64() * 1e3,
                cpu(off),
                on.rps,
                on.p50.as_secs_f64() * 1e3,
                cpu(on),
                on.rps / off.rps.max(1e-9),
                (on.p50.as_secs_f64() - off.p50.as_secs_f64()) * 1e3
            );
        }
    }
    println!("\n| Redis commands per request | sent by tollgate | run inside its scripts |");
    println!("|---|---:|---:|");
    for (name, (sent, inside)) in &counts {
        println!("| {name} | {sent:.1} | {inside:.1} |");
    }
    println!(
        "\ntollgate RSS: {:.1} MiB idle, {:.1} MiB peak. Upstream calls during the run: {upstream_calls} (pass-through only).",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    Ok(())
}

async fn measure(
    http: &reqwest::Client,
    url: &str,
    body: Arc<Value>,
    concurrency: usize,
    duration: Duration,
    watch: Option<Watch<'_>>,
) -> Cell {
    let body: Arc<str> = body.to_string().into();
    // A body with `{n}` in it is a new question every time.
    static FRESH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let fresh = body.contains("{n}");
    let run = |for_how_long: Duration| {
        let mut tasks = Vec::new();
        let deadline = Instant::now() + for_how_long;
        for _ in 0..concurrency {
            let (http, url, body) = (http.clone(), url.to_owned(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(8192);
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let text = if fresh {
                        let n = FRESH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        body.replace("{n}", &n.to_string())
                    } else {
                        body.to_string()
                    };
                    let t = Instant::now();
                    let ok = match http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(text)
                        .send()
                        .await
                    {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        latencies.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            }));
        }
        tasks
    };
    for t in run(Duration::from_secs(1)) {
        let _ = t.await;
    }
    let before = match watch {
        Some(w) => Some((process_cpu(w.pid), redis_cpu(w.redis).await)),
        None => None,
    };
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in run(duration) {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed();
    let cpu = match (watch, before) {
        (Some(w), Some((process, redis))) => {
            let per = |d: Duration| d.as_secs_f64() * 1e6 / all.len().max(1) as f64;
            Some((
                per(process_cpu(w.pid).saturating_sub(process)),
                per(redis_cpu(w.redis).await.saturating_sub(redis)),
            ))
        }
        _ => None,
    };
    all.sort_unstable();
    let pick = |q: f64| crate::percentile(&all, q);
    Cell {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
        errors,
        cpu,
    }
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`); 0 when unreadable.
pub(crate) fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Commands tollgate sends Redis per request, and those its scripts run, over 50 requests sent
/// one after another (the work after each answer, settling and records, included). Background
/// work (polls, the outbox writer) is included.
async fn commands_per_request(
    redis_url: &str,
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> anyhow::Result<(f64, f64)> {
    const N: usize = 50;
    let body = body.to_string();
    let send_all = async {
        for _ in 0..N {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "request failed: {}", r.status());
            r.bytes().await?;
        }
        Ok(())
    };
    let (sent, count) =
        tollgate_testkit::count_commands(redis_url, Duration::from_millis(500), send_all).await;
    sent?;
    Ok((
        count.sent() as f64 / N as f64,
        count.in_scripts() as f64 / N as f64,
    ))
}
