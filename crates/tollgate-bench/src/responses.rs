//! The `responses` benchmark: reading a stored response through the gateway against a bare Redis
//! GET of the same key, and the outbox's records per second into PostgreSQL against rows
//! inserted one transaction each, all measured in the same run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tollgate_db::{Database, Outbox, OutboxConfig, Record, ResponseRow, UsageRow};
use tollgate_redis::{Keys, Redis, RedisConfig};
use tollgate_testkit::{PostgresDb, RedisServer};

use crate::percentile;

/// Options of `tollgate-bench responses`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Reads per measurement round (5 rounds, the three paths interleaved).
    #[arg(long, default_value_t = 2000)]
    reads: usize,
    /// Outbox entries to write into PostgreSQL (two records each: a usage row and a response).
    #[arg(long, default_value_t = 25_000)]
    entries: usize,
    /// Writers draining the outbox at once.
    #[arg(long, default_value = "1,2")]
    writers: String,
    /// The tollgate binary (default: next to this one).
    #[arg(long)]
    tollgate: Option<PathBuf>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    tollgate_providers::init_tls();
    let redis = tokio::task::spawn_blocking(RedisServer::start).await?;
    reads(&args, &redis).await?;
    outbox(&args, &redis).await
}

/// Sequential latencies of `f`, in µs, sorted.
async fn timed<F, Fut>(n: usize, mut f: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        f().await?;
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

async fn reads(args: &Args, redis: &RedisServer) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tollgate = crate::start_tollgate(
        args.tollgate.clone(),
        "[semantic_cache]\nenabled = false\n",
        &redis.url(),
        dir.path(),
    )
    .await?;
    let base = tollgate.base.clone();
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let created: Value = http
        .post(format!("{base}/v1/responses"))
        .header("content-type", "application/json")
        .body(json!({"model": "mock/echo", "input": "a question whose answer is read back many times", "temperature": 0}).to_string())
        .send()
        .await?
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null))?;
    let id = created["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no response id: {created}"))?
        .to_owned();
    let get_url = format!("{base}/v1/responses/{id}");
    let health_url = format!("{base}/healthz");
    let key = format!("tg:{{r:{id}}}");
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;

    let (mut bare, mut hop, mut get) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        bare.extend(
            timed(args.reads, || {
                let mut conn = conn.clone();
                let key = key.clone();
                async move {
                    let v: Option<Vec<u8>> =
                        redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
                    anyhow::ensure!(v.is_some(), "the response is not in Redis");
                    Ok(())
                }
            })
            .await?,
        );
        hop.extend(
            timed(args.reads, || {
                let (http, url) = (http.clone(), health_url.clone());
                async move {
                    http.get(&url).send().await?.bytes().await?;
                    Ok(())
                }
            })
            .await?,
        );
        get.extend(
            timed(args.reads, || {
                let (http, url) = (http.clone(), get_url.clone());
                async move {
                    let r = http.get(&url).send().await?;
                    anyhow::ensure!(r.status() == 200, "GET failed: {}", r.status());
                    r.bytes().await?;
                    Ok(())
                }
            })
            .await?,
        );
    }
    let _ = redis::cmd("PING").query_async::<String>(&mut conn).await;
    drop(tollgate);
    for v in [&mut bare, &mut hop, &mut get] {
        v.sort_by(f64::total_cmp);
    }
    let p = |v: &[f64], q| percentile(v, q);
    println!(
        "## GET /v1/responses/{{id}} (Redis path), one at a time, {} reads each",
        5 * args.reads
    );
    println!();
    println!("| path | p50 µs | p99 µs |");
    println!("|---|---:|---:|");
    println!(
        "| bare Redis GET of the record (baseline) | {:.0} | {:.0} |",
        p(&bare, 0.5),
        p(&bare, 0.99)
    );
    println!(
        "| HTTP GET /healthz (the HTTP hop alone) | {:.0} | {:.0} |",
        p(&hop, 0.5),
        p(&hop, 0.99)
    );
    println!(
        "| GET /v1/responses/{{id}} | {:.0} | {:.0} |",
        p(&get, 0.5),
        p(&get, 0.99)
    );
    println!();
    println!(
        "added over a bare Redis GET: p50 {:.3} ms (goal <= 0.5 ms); of which the HTTP hop {:.3} ms",
        (p(&get, 0.5) - p(&bare, 0.5)) / 1000.0,
        (p(&hop, 0.5) - p(&bare, 0.5)).max(0.0) / 1000.0
    );
    println!();
    Ok(())
}

fn records(i: usize, body: &str) -> Vec<Record> {
    vec![
        Record::Usage(UsageRow {
            id: format!("use_{i}"),
            key_id: format!("key_{}", i % 50),
            tenant: "t".into(),
            model: "openai/gpt-4o-mini".into(),
            prompt_tokens: 120,
            completion_tokens: 80,
            cost_nanos: 66_000,
            served: tollgate_db::Served::Upstream,
            created_ms: tollgate_db::now_ms(),
        }),
        Record::Response(ResponseRow {
            id: format!("resp_{i}"),
            owner: format!("key_{}", i % 50),
            version: 1,
            created_ms: tollgate_db::now_ms(),
            body: body.to_owned(),
        }),
    ]
}

async fn outbox(args: &Args, redis: &RedisServer) -> anyhow::Result<()> {
    let writers: Vec<usize> = args
        .writers
        .split(',')
        .map(|w| w.trim().parse())
        .collect::<Result<_, _>>()?;
    let body = json!({"owner": "key", "version": 1, "response": {"output": "x".repeat(800)}, "context": {"messages": []}}).to_string();
    println!(
        "## Outbox into PostgreSQL ({} entries of 2 records: a usage row and a ~1 KB response)",
        args.entries
    );
    println!();
    println!("| writer | records | seconds | records/s | vs one row per transaction |");
    println!("|---|---:|---:|---:|---:|");

    // Baseline: the same rows, one INSERT and one commit each, no outbox.
    let pg = tokio::task::spawn_blocking(PostgresDb::create).await?;
    let db = Database::connect(&pg.url()).await?;
    let n = 2000;
    let start = Instant::now();
    for i in 0..n / 2 {
        for record in records(i, &body) {
            db.write(vec![record]).await?;
        }
    }
    let baseline = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "| one row per transaction (baseline) | {n} | {:.2} | {baseline:.0} | 1.00× |",
        start.elapsed().as_secs_f64()
    );
    drop(db);
    drop(pg);

    let redis_conn = Redis::connect(&RedisConfig::new(redis.url())).await?;
    for &w in &writers {
        let pg = tokio::task::spawn_blocking(PostgresDb::create).await?;
        let db = Database::connect(&pg.url()).await?;
        let keys = Keys::new(format!("bench{w}:"))?;
        let config = OutboxConfig {
            block: Duration::from_millis(50),
            ..OutboxConfig::default()
        };
        let outbox = Outbox::new(redis_conn.clone(), keys, &config, None);
        let start = Instant::now();
        let mut pushes = futures::stream::iter(0..args.entries)
            .map(|i| {
                let (outbox, body) = (outbox.clone(), body.clone());
                async move { outbox.push(records(i, &body)).await }
            })
            .buffer_unordered(64);
        while let Some(r) = pushes.next().await {
            r?;
        }
        let pushed = start.elapsed();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..w {
            let mut writer = outbox.writer(db.clone(), &format!("w{k}")).await?;
            let outbox = outbox.clone();
            tasks.push(tokio::spawn(async move {
                while outbox.backlog().await? > 0 {
                    writer.step().await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let took = start.elapsed().as_secs_f64();
        let records = 2 * args.entries;
        let count = db
            .spend(None, 0)
            .await?
            .iter()
            .map(|r| r.requests)
            .sum::<i64>();
        anyhow::ensure!(
            count as usize == args.entries,
            "{count} usage rows written, not {}",
            args.entries
        );
        let rate = records as f64 / took;
        println!(
            "| outbox, {w} writer(s), batches of {} entries | {records} | {took:.2} | {rate:.0} | {:.1}× |",
            OutboxConfig::default().batch,
            rate / baseline
        );
        eprintln!(
            "(pushing {} entries into the outbox, 64 at a time: {:.0} entries/s)",
            args.entries,
            args.entries as f64 / pushed.as_secs_f64()
        );
    }
    println!();
    println!("goal: >= 5,000 records/s into PostgreSQL with batching");
    Ok(())
}
