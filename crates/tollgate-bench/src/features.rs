//! The `features` benchmark: 3-group reads of random entities at concurrency 32 against the same
//! three HGETALLs sent raw, and bulk-load throughput in feature values per second.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tollgate_redis::{FeatureStore, Keys, Redis, RedisConfig};

use crate::patterns::{Scenario, measure, op};

/// Options of `tollgate-bench features`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Redis to measure; without it a private redis-server is started.
    #[arg(long)]
    redis_url: Option<String>,
    /// Entities (each with 3 groups of 5 features).
    #[arg(long, default_value_t = 20_000)]
    entities: usize,
    /// Seconds per read scenario.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (_server, url) = crate::redis_to_measure(args.redis_url.as_deref()).await?;
    let redis = Redis::connect(&RedisConfig::new(&url)).await?;
    let store = FeatureStore::new(redis.clone(), Keys::new("tollgate-bench:")?);
    let ttl = Some(Duration::from_secs(600));
    // Bulk load: every entity's three groups, 64 writes in flight.
    let started = Instant::now();
    let rows = args.entities * 3;
    futures::stream::iter(0..rows)
        .map(|i| {
            let store = store.clone();
            async move {
                let features: BTreeMap<String, serde_json::Value> = (0..5)
                    .map(|f| (format!("f{f}"), json!(i * 10 + f)))
                    .collect();
                store
                    .put(
                        "user",
                        &format!("u{}", i / 3),
                        &format!("g{}", i % 3),
                        &features,
                        ttl,
                    )
                    .await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let load = started.elapsed();
    let values = rows * 5;

    let entities = args.entities;
    let s = store.clone();
    let read = Scenario {
        name: "feature store: get 3 groups",
        round_trips: "1",
        op: op(move |i| {
            let s = s.clone();
            async move {
                let id = format!("u{}", (i as usize * 7919) % entities);
                let got = s.get("user", &id, &["g0", "g1", "g2"]).await?;
                anyhow::ensure!(got.iter().all(Option::is_some), "missing group");
                Ok(())
            }
        }),
    };
    let r = redis.clone();
    let raw = Scenario {
        name: "raw pipeline: 3 x HGETALL",
        round_trips: "1",
        op: op(move |i| {
            let mut c = r.conn();
            async move {
                let id = format!("u{}", (i as usize * 7919) % entities);
                let mut pipe = redis::pipe();
                for g in ["g0", "g1", "g2"] {
                    pipe.cmd("HGETALL")
                        .arg(format!("tollgate-bench:{{f:user:{id}}}:{g}"));
                }
                let _: Vec<redis::Value> = pipe.query_async(&mut c).await?;
                Ok(())
            }
        }),
    };
    let duration = Duration::from_secs_f64(args.seconds);
    let raw_m = measure(&raw, 32, duration).await?;
    let read_m = measure(&read, 32, duration).await?;
    let raw_after = measure(&raw, 32, duration).await?;
    let raw_rate = (raw_m.ops_per_sec + raw_after.ops_per_sec) / 2.0;
    println!(
        "## Feature store ({} entities x 3 groups x 5 features, concurrency 32)\n",
        args.entities
    );
    println!("| operation | ops/s | p50 | p99 | vs raw |");
    println!("|---|---:|---:|---:|---:|");
    for (name, m) in [
        (raw.name, &raw_m),
        (read.name, &read_m),
        ("raw pipeline: 3 x HGETALL (after)", &raw_after),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} µs | {:.0} µs | {:.0}% |",
            m.ops_per_sec,
            m.p50.as_secs_f64() * 1e6,
            m.p99.as_secs_f64() * 1e6,
            m.ops_per_sec / raw_rate * 100.0
        );
    }
    println!(
        "\nBulk load: {values} feature values ({rows} groups) in {:.2} s = {:.0} values/s (64 writes in flight).",
        load.as_secs_f64(),
        values as f64 / load.as_secs_f64()
    );
    Ok(())
}
