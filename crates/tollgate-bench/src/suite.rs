//! The `suite` benchmark: named scenarios through a `tollgate` process, each next to the baseline
//! it is judged against, measured in the same run with the same bounded load generator; and the
//! `soak`: mixed load for minutes, sampling tollgate's RSS and Redis's memory.
//!
//! Scenarios (every one at each concurrency asked for):
//! - `pass-through`: a request tollgate cannot answer from the cache (temperature 0.7); baseline:
//!   the same request sent straight to the upstream.
//! - `exact hit`: the same deterministic request again; baseline: the upstream.
//! - `semantic hit`: a rewording of a cached question (a new upper/lower-case pattern each time,
//!   so neither the exact cache nor the embedding cache can answer: the local MiniLM embeds every
//!   one); baseline: the upstream.
//! - `rate-limited`: a key whose limit is spent; every answer is a 429 with `retry-after`;
//!   baseline: the upstream.
//! - `stream TTFT` and `stream inter-token gap`: streamed pass-through; baseline: the upstream's
//!   own stream.
//! - `session turn`: chat with `x-tollgate-session-id` (history read, exchange written);
//!   baseline: pass-through.
//! - `responses chain`: `POST /v1/responses` with `previous_response_id` (record read, written
//!   before the answer, outbox); baseline: pass-through.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tollgate_testkit::{FakeUpstream, FakeUpstreamConfig, RedisServer};

use crate::percentile;

/// Options of `tollgate-bench suite`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Concurrencies to measure, comma-separated.
    #[arg(long, default_value = "1,16")]
    concurrency: String,
    /// Seconds per cell (after a 1 s warm-up).
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Pause between the upstream's chunks, ms (streams are 16 chunks).
    #[arg(long, default_value_t = 2)]
    chunk_delay_ms: u64,
    /// Only these scenarios (comma-separated names as printed), default all.
    #[arg(long)]
    only: Option<String>,
    /// The tollgate binary (default: next to this one).
    #[arg(long)]
    tollgate: Option<PathBuf>,
    /// The `litellm` executable (`bench/litellm/setup.sh` installs one): adds the LiteLLM proxy's
    /// cells where it has the feature (pass-through, Redis-cached hits, streaming), on the same
    /// upstream and Redis.
    #[arg(long)]
    litellm: Option<PathBuf>,
}

/// Options of `tollgate-bench soak`.
#[derive(Debug, clap::Args)]
pub(crate) struct SoakArgs {
    /// Minutes of load.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds between samples.
    #[arg(long, default_value_t = 30)]
    every: u64,
    /// The tollgate binary (default: next to this one).
    #[arg(long)]
    tollgate: Option<PathBuf>,
}

/// A running tollgate with its upstream and Redis.
struct Rig {
    redis: RedisServer,
    upstream: FakeUpstream,
    tollgate: crate::Tollgate,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn rig(binary: Option<PathBuf>, chunk_delay: Duration, extra: &str) -> anyhow::Result<Rig> {
    tollgate_providers::init_tls();
    let redis = tokio::task::spawn_blocking(RedisServer::start).await?;
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 16,
        chunk_delay,
        fail_first: 0,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir()?;
    let tollgate = crate::start_tollgate(
        binary,
        &format!(
            "[server]\nmaster_key = \"mk\"\n\
             [providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = [\"up/m\"]\n\
             [tiers.default]\nrpm = 1000000000\ntpm = 1000000000000\nmax_concurrency = 100000\n\
             [semantic_cache]\nenabled = true\nthreshold = 0.99\n\
             [summaries]\nenabled = false\n{extra}",
            upstream.base_url()
        ),
        &redis.url(),
        dir.path(),
    )
    .await?;
    let base = tollgate.base.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    Ok(Rig {
        redis,
        upstream,
        tollgate,
        base,
        http,
        _dir: dir,
    })
}

impl Rig {
    async fn key(&self, limits: Value) -> anyhow::Result<String> {
        let created: Value = self
            .http
            .post(format!("{}/admin/keys", self.base))
            .bearer_auth("mk")
            .header("content-type", "application/json")
            .body(json!({"name": "bench", "limits": limits}).to_string())
            .send()
            .await?
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null))?;
        created["key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no key: {created}"))
    }
}

/// A LiteLLM proxy process on the rig's upstream (and Redis, for its cache).
struct LiteLlm {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for LiteLlm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn litellm(bin: &std::path::Path, rig: &Rig, cache: bool) -> anyhow::Result<LiteLlm> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    let redis_port = rig.redis.port();
    let cache_settings = if cache {
        format!(
            "  cache: true\n  cache_params:\n    type: redis\n    host: 127.0.0.1\n    port: {redis_port}\n    ttl: 600\n"
        )
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: up/m\n    litellm_params:\n      model: openai/m\n      api_base: {}\n      api_key: sk-not-used\n\
             litellm_settings:\n  telemetry: false\n  drop_params: true\n  set_verbose: false\n{cache_settings}general_settings: {{}}\n",
            rig.upstream.base_url()
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(bin)
        .args(["--config"])
        .arg(&config)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--telemetry",
            "False",
        ])
        .env_remove("DATABASE_URL")
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_TELEMETRY", "False")
        .env("LITELLM_LOG", "ERROR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        let up = rig
            .http
            .get(format!("{base}/health/liveliness"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if up {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(90),
            "LiteLLM did not start"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(LiteLlm {
        child,
        base,
        _dir: dir,
    })
}

/// One request of a scenario.
#[derive(Clone)]
struct Req {
    url: String,
    body: String,
    headers: Vec<(String, String)>,
    /// Read as a stream: time to first content, gaps between contents.
    stream: bool,
    /// The status that counts as success.
    expect: u16,
}

/// Builds worker `w`'s `i`th request; `prev` is what its previous answer said (a response id).
type Make = Arc<dyn Fn(usize, u64, Option<&str>) -> Req + Send + Sync>;

/// The same request every time.
fn fixed(req: Req) -> Make {
    Arc::new(move |_, _, _| req.clone())
}

#[derive(Default)]
struct Cell {
    rps: f64,
    latency: Vec<Duration>,
    ttft: Vec<Duration>,
    gaps: Vec<Duration>,
    errors: u64,
    /// Answers served from the semantic cache (`x-tollgate-cache: semantic`).
    semantic: u64,
    /// The first unexpected answer, to explain the errors.
    first_error: Option<String>,
}

async fn run_cell(
    http: &reqwest::Client,
    make: Make,
    concurrency: usize,
    duration: Duration,
) -> Cell {
    let once = |for_how_long: Duration| {
        let deadline = Instant::now() + for_how_long;
        (0..concurrency)
            .map(|w| {
                let (http, make) = (http.clone(), make.clone());
                tokio::spawn(async move {
                    let mut cell = Cell::default();
                    let mut prev: Option<String> = None;
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let req = make(w, i, prev.as_deref());
                        i += 1;
                        let mut builder = http
                            .post(&req.url)
                            .header("content-type", "application/json")
                            .body(req.body.clone());
                        for (k, v) in &req.headers {
                            builder = builder.header(k, v);
                        }
                        let t = Instant::now();
                        let Ok(r) = builder.send().await else {
                            cell.errors += 1;
                            continue;
                        };
                        if r.status().as_u16() != req.expect {
                            cell.errors += 1;
                            let status = r.status();
                            let body = r.bytes().await.unwrap_or_default();
                            cell.first_error.get_or_insert_with(|| {
                                format!(
                                    "{status}: {}",
                                    String::from_utf8_lossy(&body[..body.len().min(300)])
                                )
                            });
                            continue;
                        }
                        if r.headers()
                            .get("x-tollgate-cache")
                            .is_some_and(|v| v == "semantic")
                        {
                            cell.semantic += 1;
                        }
                        if req.stream {
                            let mut body = r.bytes_stream();
                            let (mut first, mut last) = (None, None);
                            while let Some(Ok(chunk)) = body.next().await {
                                if chunk.windows(9).any(|w| w == b"\"content\"") {
                                    let now = Instant::now();
                                    if first.is_none() {
                                        first = Some(now - t);
                                    } else if let Some(l) = last {
                                        cell.gaps.push(now - l);
                                    }
                                    last = Some(now);
                                }
                            }
                            if let Some(f) = first {
                                cell.ttft.push(f);
                            }
                        } else {
                            let Ok(bytes) = r.bytes().await else {
                                cell.errors += 1;
                                continue;
                            };
                            prev = serde_json::from_slice::<Value>(&bytes)
                                .ok()
                                .and_then(|v| v["id"].as_str().map(str::to_owned));
                        }
                        cell.latency.push(t.elapsed());
                    }
                    cell
                })
            })
            .collect::<Vec<_>>()
    };
    for t in once(Duration::from_secs(1)) {
        let _ = t.await;
    }
    let started = Instant::now();
    let mut all = Cell::default();
    for t in once(duration) {
        if let Ok(c) = t.await {
            all.latency.extend(c.latency);
            all.ttft.extend(c.ttft);
            all.gaps.extend(c.gaps);
            all.errors += c.errors;
            all.semantic += c.semantic;
            if all.first_error.is_none() {
                all.first_error = c.first_error;
            }
        }
    }
    all.rps = all.latency.len() as f64 / started.elapsed().as_secs_f64();
    all.latency.sort_unstable();
    all.ttft.sort_unstable();
    all.gaps.sort_unstable();
    all
}

/// The time-to-first-token and inter-token-gap rows of streamed cell `s` against `direct`.
fn stream_rows(prefix: &str, c: usize, s: &Cell, direct: &Cell) {
    for (name, mine, theirs) in [
        ("stream TTFT", &s.ttft, &direct.ttft),
        ("stream inter-token gap", &s.gaps, &direct.gaps),
    ] {
        println!(
            "| {prefix}{name} | {c} | {:.0} | {} | {} | upstream stream direct | {:.0} | {} | p50 {:+.2} ms | {} |",
            s.rps,
            ms(percentile(mine, 0.5)),
            ms(percentile(mine, 0.99)),
            direct.rps,
            ms(percentile(theirs, 0.5)),
            (percentile(mine, 0.5).as_secs_f64() - percentile(theirs, 0.5).as_secs_f64()) * 1e3,
            s.errors
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A question with a new upper/lower-case pattern for each `n`: the same words (MiniLM is
/// uncased, so it embeds them the same), a different text for every cache.
fn recased(question: &str, n: u64) -> String {
    question
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if (n >> (i % 60)) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let concurrencies: Vec<usize> = args
        .concurrency
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<Result<_, _>>()?;
    let rig = rig(
        args.tollgate.clone(),
        Duration::from_millis(args.chunk_delay_ms),
        "",
    )
    .await?;
    let key = rig.key(json!({})).await?;
    let limited = rig.key(json!({"rpm": 1})).await?;
    let auth = vec![("authorization".to_owned(), format!("Bearer {key}"))];
    let upstream_url = format!("{}/chat/completions", rig.upstream.base_url());
    let chat_url = format!("{}/v1/chat/completions", rig.base);
    let question = "How do I increase the traffic of my blog?";

    // Prime: the cached answer, the semantic entry, the spent limit.
    let prime = |body: Value, headers: Vec<(String, String)>| {
        let mut b = rig
            .http
            .post(&chat_url)
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            b = b.header(k, v);
        }
        b.send()
    };
    let hit_body = json!({"model": "up/m", "temperature": 0, "messages": [{"role": "user", "content": question}]});
    prime(hit_body.clone(), auth.clone()).await?.bytes().await?;
    prime(
        json!({"model": "up/m", "messages": [{"role": "user", "content": "x"}]}),
        vec![("authorization".into(), format!("Bearer {limited}"))],
    )
    .await?
    .bytes()
    .await?;
    let probe = prime(
        json!({"model": "up/m", "temperature": 0, "messages": [{"role": "user", "content": recased(question, 12345)}]}),
        auth.clone(),
    )
    .await?;
    let semantic_ok = probe
        .headers()
        .get("x-tollgate-cache")
        .is_some_and(|v| v == "semantic");
    probe.bytes().await?;

    let plain = |url: &str, body: Value, headers: &[(String, String)]| Req {
        url: url.to_owned(),
        body: body.to_string(),
        headers: headers.to_vec(),
        stream: false,
        expect: 200,
    };
    let pass_body = json!({"model": "up/m", "temperature": 0.7, "messages": [{"role": "user", "content": question}]});
    let direct_body = json!({"model": "m", "temperature": 0.7, "messages": [{"role": "user", "content": question}]});
    let streamed = |mut body: Value| {
        body["stream"] = json!(true);
        body
    };
    let direct = fixed(plain(&upstream_url, direct_body.clone(), &[]));
    let direct_stream = fixed(Req {
        stream: true,
        ..plain(&upstream_url, streamed(direct_body.clone()), &[])
    });
    let pass = fixed(plain(&chat_url, pass_body.clone(), &auth));
    let stream = fixed(Req {
        stream: true,
        ..plain(&chat_url, streamed(pass_body.clone()), &auth)
    });
    let hit = fixed(plain(&chat_url, hit_body.clone(), &auth));
    let counter = Arc::new(AtomicU64::new(1 << 20));
    let semantic: Make = {
        let (u, a, counter) = (chat_url.clone(), auth.clone(), counter.clone());
        Arc::new(move |_, _, _| {
            let n = counter.fetch_add(7919, Ordering::Relaxed);
            let body = json!({"model": "up/m", "temperature": 0, "messages": [{"role": "user", "content": recased(question, n)}]});
            plain(&u, body, &a)
        })
    };
    let limited_make = fixed(Req {
        expect: 429,
        ..plain(
            &chat_url,
            pass_body.clone(),
            &[("authorization".to_owned(), format!("Bearer {limited}"))],
        )
    });
    let session: Make = {
        let (u, a) = (chat_url.clone(), auth.clone());
        let run_id = uuid_like();
        Arc::new(move |w, i, _| {
            let mut headers = a.clone();
            // A fresh session every 20 turns keeps the history (and the prompt) bounded.
            headers.push((
                "x-tollgate-session-id".into(),
                format!("bench-{run_id}-{w}-{}", i / 20),
            ));
            let body = json!({"model": "up/m", "temperature": 0.7, "messages": [{"role": "user", "content": format!("turn {i}")}]});
            plain(&u, body, &headers)
        })
    };
    let responses: Make = {
        let (u, a) = (format!("{}/v1/responses", rig.base), auth.clone());
        Arc::new(move |_, i, prev| {
            let mut body =
                json!({"model": "up/m", "temperature": 0.7, "input": format!("step {i}")});
            // A new chain every 20 steps, as for sessions.
            if let Some(p) = prev.filter(|_| i % 20 != 0) {
                body["previous_response_id"] = json!(p);
            }
            plain(&u, body, &a)
        })
    };

    let wanted = |name: &str| {
        args.only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|w| w.trim() == name))
    };
    let duration = Duration::from_secs_f64(args.seconds);
    println!("## tollgate-bench suite\n");
    println!(
        "{} s per cell after a 1 s warm-up, one load generator (this process), keep-alive; fake upstream with 16 chunks {} ms apart; Redis and tollgate on the same machine.\n",
        args.seconds, args.chunk_delay_ms
    );
    if !semantic_ok {
        println!(
            "(the semantic cache did not answer the priming rewording: local models missing? `make models`)\n"
        );
    }
    println!(
        "| scenario | c | req/s | p50 | p99 | baseline | baseline req/s | baseline p50 | ratio (req/s) | errors |"
    );
    println!("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|");
    let mut served = Vec::new();
    for &c in &concurrencies {
        let base = run_cell(&rig.http, direct.clone(), c, duration).await;
        let pass_cell = run_cell(&rig.http, pass.clone(), c, duration).await;
        let row = |name: &str, cell: &Cell, base_name: &str, base: &Cell| {
            println!(
                "| {name} | {c} | {:.0} | {} | {} | {base_name} | {:.0} | {} | {:.2}× | {} |",
                cell.rps,
                ms(percentile(&cell.latency, 0.5)),
                ms(percentile(&cell.latency, 0.99)),
                base.rps,
                ms(percentile(&base.latency, 0.5)),
                cell.rps / base.rps.max(1e-9),
                cell.errors
            );
        };
        if wanted("pass-through") {
            row("pass-through", &pass_cell, "upstream direct", &base);
        }
        if wanted("exact hit") {
            let cell = run_cell(&rig.http, hit.clone(), c, duration).await;
            row("exact hit", &cell, "upstream direct", &base);
        }
        if wanted("semantic hit") && semantic_ok {
            let cell = run_cell(&rig.http, semantic.clone(), c, duration).await;
            row("semantic hit", &cell, "upstream direct", &base);
            // Under load the lookup is skipped rather than waited for: say how many were hits.
            served.push(format!(
                "semantic hit at concurrency {c}: {} of {} answers served from the semantic cache ({:.0}/s)",
                cell.semantic,
                cell.latency.len(),
                cell.semantic as f64 * cell.rps / (cell.latency.len().max(1) as f64)
            ));
        }
        if wanted("rate-limited") {
            let cell = run_cell(&rig.http, limited_make.clone(), c, duration).await;
            row("rate-limited (429)", &cell, "upstream direct", &base);
        }
        if wanted("session turn") {
            let cell = run_cell(&rig.http, session.clone(), c, duration).await;
            row("session turn", &cell, "pass-through", &pass_cell);
        }
        if wanted("responses chain") {
            let cell = run_cell(&rig.http, responses.clone(), c, duration).await;
            row("responses chain", &cell, "pass-through", &pass_cell);
        }
        if wanted("stream") {
            let d = run_cell(&rig.http, direct_stream.clone(), c, duration).await;
            let s = run_cell(&rig.http, stream.clone(), c, duration).await;
            stream_rows("", c, &s, &d);
        }
    }
    if !served.is_empty() {
        println!();
        for line in &served {
            println!("- {line}");
        }
    }
    if let Some(bin) = &args.litellm {
        litellm_cells(bin, &rig, &args, &concurrencies, duration, question).await?;
    }
    println!("\nUpstream calls during the run: {}.", rig.upstream.calls());
    Ok(())
}

/// The LiteLLM proxy on the same upstream and Redis, at the same concurrencies: pass-through,
/// hits from its Redis cache, and streaming (what it has of the suite's scenarios).
async fn litellm_cells(
    bin: &std::path::Path,
    rig: &Rig,
    args: &Args,
    concurrencies: &[usize],
    duration: Duration,
    question: &str,
) -> anyhow::Result<()> {
    let plain = LiteLlm::start_both(bin, rig).await?;
    let (nocache, cached) = (&plain.0, &plain.1);
    let upstream_url = format!("{}/chat/completions", rig.upstream.base_url());
    let body = |temperature: f64, stream: bool| {
        json!({"model": "up/m", "temperature": temperature, "stream": stream,
               "messages": [{"role": "user", "content": question}]})
        .to_string()
    };
    let req = |url: String, body: String, stream: bool| Req {
        url,
        body,
        headers: Vec::new(),
        stream,
        expect: 200,
    };
    let to = |base: &str| format!("{base}/v1/chat/completions");
    let direct = fixed(req(upstream_url.clone(), body(0.7, false), false));
    let pass = fixed(req(to(&nocache.base), body(0.7, false), false));
    let hit = fixed(req(to(&cached.base), body(0.0, false), false));
    let stream = fixed(req(to(&nocache.base), body(0.7, true), true));
    let direct_stream = fixed(req(upstream_url, body(0.7, true), true));
    // Prime LiteLLM's cache.
    rig.http
        .post(to(&cached.base))
        .header("content-type", "application/json")
        .body(body(0.0, false))
        .send()
        .await?
        .bytes()
        .await?;
    let version = Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "\n### The LiteLLM proxy side by side ({version}, one worker, same upstream, Redis and load generator)\n"
    );
    println!(
        "| scenario | c | req/s | p50 | p99 | baseline | baseline req/s | baseline p50 | ratio (req/s) | errors |"
    );
    println!("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|");
    for &c in concurrencies {
        let base = run_cell(&rig.http, direct.clone(), c, duration).await;
        for (name, make) in [
            ("LiteLLM pass-through", &pass),
            ("LiteLLM exact hit (Redis cache)", &hit),
        ] {
            let cell = run_cell(&rig.http, make.clone(), c, duration).await;
            println!(
                "| {name} | {c} | {:.0} | {} | {} | upstream direct | {:.0} | {} | {:.2}× | {} |",
                cell.rps,
                ms(percentile(&cell.latency, 0.5)),
                ms(percentile(&cell.latency, 0.99)),
                base.rps,
                ms(percentile(&base.latency, 0.5)),
                cell.rps / base.rps.max(1e-9),
                cell.errors
            );
            if let Some(e) = &cell.first_error {
                eprintln!("{name}: {e}");
            }
        }
        if args.only.as_deref().is_none_or(|o| o.contains("stream")) {
            let d = run_cell(&rig.http, direct_stream.clone(), c, duration).await;
            let s = run_cell(&rig.http, stream.clone(), c, duration).await;
            stream_rows("LiteLLM ", c, &s, &d);
        }
    }
    Ok(())
}

impl LiteLlm {
    /// One proxy without a cache and one with its Redis cache.
    async fn start_both(bin: &std::path::Path, rig: &Rig) -> anyhow::Result<(LiteLlm, LiteLlm)> {
        Ok((
            litellm(bin, rig, false).await?,
            litellm(bin, rig, true).await?,
        ))
    }
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// `tollgate-bench soak`: mixed load (pass-through, hits, sessions, responses chains, streams)
/// for minutes; RSS and Redis memory sampled as it runs.
pub(crate) async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    // Retention short enough to reach its steady state within the soak: memory is flat only
    // once what was written starts expiring as fast as it is written.
    let retention = "[cache]\ndefault_ttl_seconds = 60\n[streams]\nttl_after_end_seconds = 60\n\
                     [responses]\nttl_seconds = 120\n[sessions]\nidle_ttl_seconds = 120\n";
    let rig = rig(args.tollgate.clone(), Duration::from_millis(1), retention).await?;
    let key = rig.key(json!({})).await?;
    let chat = format!("{}/v1/chat/completions", rig.base);
    let resp = format!("{}/v1/responses", rig.base);
    let end = Instant::now() + Duration::from_secs_f64(args.minutes * 60.0);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let (http, chat, resp, key) = (rig.http.clone(), chat.clone(), resp.clone(), key.clone());
        let (done, failed) = (done.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut prev: Option<String> = None;
            let mut i = 0u64;
            while Instant::now() < end {
                let (url, mut body, session) = match i % 5 {
                    0 => (&chat, json!({"model": "up/m", "temperature": 0, "messages": [{"role": "user", "content": format!("popular {}", i % 50)}]}), None),
                    1 => (&chat, json!({"model": "up/m", "temperature": 0.7, "messages": [{"role": "user", "content": format!("w{w} fresh {i}")}]}), None),
                    2 => (&chat, json!({"model": "up/m", "stream": true, "temperature": 0.7, "messages": [{"role": "user", "content": "stream"}]}), None),
                    3 => (&chat, json!({"model": "up/m", "messages": [{"role": "user", "content": format!("turn {i}")}]}), Some(format!("soak-{w}-{}", i / 100))),
                    _ => (&resp, json!({"model": "up/m", "input": format!("step {i}")}), None),
                };
                if i % 5 == 4
                    && let Some(p) = prev.as_ref().filter(|_| i % 100 != 4)
                {
                    body["previous_response_id"] = json!(p);
                }
                let mut req = http
                    .post(url.as_str())
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.to_string());
                if let Some(s) = session {
                    req = req.header("x-tollgate-session-id", s);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let bytes = r.bytes().await.unwrap_or_default();
                        if i % 5 == 4 {
                            prev = serde_json::from_slice::<Value>(&bytes)
                                .ok()
                                .and_then(|v| v["id"].as_str().map(str::to_owned));
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        }));
    }
    let mut redis = redis::Client::open(rig.redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    println!(
        "## tollgate-bench soak: {} min, concurrency {}\n\nMix: cached questions, fresh ones, streams, session turns, Responses chains. Retention: cache and finished streams 60 s, responses and idle sessions 120 s.\n",
        args.minutes, args.concurrency
    );
    println!(
        "| minute | requests | failed | req/s (interval) | tollgate RSS MiB | Redis used_memory MiB | Redis keys |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let start = Instant::now();
    let mut last = (0u64, Instant::now());
    loop {
        let now = Instant::now();
        let n = done.load(Ordering::Relaxed);
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut redis)
            .await?;
        let used = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1_048_576.0;
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut redis).await?;
        println!(
            "| {:.1} | {n} | {} | {:.0} | {:.1} | {:.1} | {keys} |",
            start.elapsed().as_secs_f64() / 60.0,
            failed.load(Ordering::Relaxed),
            (n - last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-9),
            crate::gateway::rss_kib(rig.tollgate.child.id(), "VmRSS") as f64 / 1024.0,
            used,
        );
        last = (n, now);
        if now >= end {
            break;
        }
        tokio::time::sleep(
            Duration::from_secs(args.every)
                .min(end.saturating_duration_since(now) + Duration::from_millis(10)),
        )
        .await;
    }
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}
