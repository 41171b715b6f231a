//! The `models` benchmark: the local models as the gateway runs them (through the provider, on
//! their own threads), one request at a time:
//! - embeddings: one short sentence (latency), batches of 32 (sentences/s);
//! - chat: time to first token for a short prompt and decode speed, with the weights
//!   re-quantized to Q8_0 (what tollgate does) against the Q4_1 file as shipped (the baseline,
//!   measured in the same run);
//! - the whole semantic-cache lookup (embed the question, catch up and search the partition,
//!   read the answer from the exact cache) on a real Redis holding 1,000 cached questions,
//!   against the exact-cache read alone.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tollgate_providers::Provider;
use tollgate_providers::local::{CHAT_MODEL, EMBEDDING_MODEL, LocalConfig, LocalProvider};
use tollgate_redis::{
    CacheKey, Keys, Redis, RedisConfig, ResponseCache, SemanticCache, VectorConfig,
};
use tollgate_testkit::letters;

/// Options of `tollgate-bench models`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Tokens generated per chat run.
    #[arg(long, default_value_t = 64)]
    tokens: u32,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    crate::percentile(&xs, 0.5)
}

/// Time to the first content and decode tokens/s (tokens after the first over the time after it).
async fn chat_run(local: &LocalProvider, tokens: u32) -> anyhow::Result<(Duration, f64)> {
    let request = serde_json::from_value(json!({
        "model": CHAT_MODEL, "temperature": 0, "max_tokens": tokens,
        "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
    }))?;
    let started = Instant::now();
    let mut stream = local.chat_stream(request).await?;
    let (mut first, mut completion) = (None, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let has_text = chunk
            .choices
            .first()
            .and_then(|c| c.delta.content.as_deref())
            .is_some_and(|t| !t.is_empty());
        if has_text && first.is_none() {
            first = Some(started.elapsed());
        }
        if let Some(u) = chunk.usage {
            completion = u.completion_tokens;
        }
    }
    let total = started.elapsed();
    let first = first.unwrap_or(total);
    let decode = (completion.saturating_sub(1)) as f64 / (total - first).as_secs_f64().max(1e-9);
    Ok((first, decode))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let local = LocalProvider::start(LocalConfig {
        preload: true,
        ..LocalConfig::default()
    });
    let sentence = vec!["What is the capital of France?".to_owned()];
    // Warm up (and wait for the load).
    local
        .embed(EMBEDDING_MODEL.into(), sentence.clone())
        .await?;
    let mut single = Vec::new();
    for _ in 0..args.rounds {
        let t = Instant::now();
        local
            .embed(EMBEDDING_MODEL.into(), sentence.clone())
            .await?;
        single.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let batch: Vec<String> = (0..32)
        .map(|i| format!("Question number {i}: how do I make my gateway cache answers by meaning?"))
        .collect();
    let mut per_second = Vec::new();
    for _ in 0..args.rounds.div_ceil(4) {
        let t = Instant::now();
        local.embed(EMBEDDING_MODEL.into(), batch.clone()).await?;
        per_second.push(32.0 / t.elapsed().as_secs_f64());
    }
    println!(
        "\nlocal/{EMBEDDING_MODEL}: one short sentence p50 {:.1} ms; batches of 32: {:.0} sentences/s\n",
        median(single),
        median(per_second)
    );

    println!(
        "| local/{CHAT_MODEL} | time to first token (p50) | decode (p50) | vs Q4_1 as shipped |"
    );
    println!("|---|---:|---:|---:|");
    let mut rows = Vec::new();
    for (name, requantize) in [
        ("Q4_1 as shipped (baseline)", false),
        ("re-quantized to Q8_0 (tollgate)", true),
    ] {
        let model = LocalProvider::start(LocalConfig {
            preload: true,
            requantize,
            ..LocalConfig::default()
        });
        chat_run(&model, 4).await?; // warm up, and wait for the load
        let (mut ttft, mut decode) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds.div_ceil(4) {
            let (first, rate) = chat_run(&model, args.tokens).await?;
            ttft.push(first.as_secs_f64() * 1e3);
            decode.push(rate);
        }
        rows.push((name, median(ttft), median(decode)));
    }
    let base = rows[0].2;
    for (name, ttft, decode) in rows {
        println!(
            "| {name} | {ttft:.0} ms | {decode:.1} tok/s | {:.2}× |",
            decode / base
        );
    }
    semantic_lookup(&local, args.rounds * 10).await
}

/// Questions from a few templates, all different.
fn questions(n: usize) -> Vec<String> {
    let verbs = [
        "cook",
        "clean",
        "repair",
        "paint",
        "sell",
        "insure",
        "move",
        "heat",
        "measure",
        "photograph",
    ];
    let things = [
        "a bicycle",
        "an old piano",
        "a wooden floor",
        "a leather sofa",
        "a vegetable garden",
        "a car battery",
        "a kitchen knife",
        "a rooftop terrace",
        "a fish tank",
        "a violin",
    ];
    let places = [
        "in winter",
        "on a budget",
        "in a small flat",
        "without tools",
        "for beginners",
        "in one afternoon",
        "near the sea",
        "with children",
        "in the rain",
        "abroad",
    ];
    (0..n)
        .map(|i| {
            format!(
                "How do I {} {} {}?",
                verbs[i % 10],
                things[(i / 10) % 10],
                places[(i / 100) % 10]
            )
        })
        .collect()
}

async fn semantic_lookup(local: &LocalProvider, lookups: usize) -> anyhow::Result<()> {
    let (_server, url) = crate::redis_to_measure(None).await?;
    let redis = Redis::connect(&RedisConfig::new(&url)).await?;
    let keys = Keys::new("tollgate-bench:")?;
    let cache = ResponseCache::new(redis.clone(), keys.clone(), Default::default());
    let semantic = SemanticCache::new(redis, &keys, VectorConfig::default())?;
    let partition = SemanticCache::partition("bench/model", "tenant", "context", EMBEDDING_MODEL);
    let stored = questions(1000);
    let ttl = Duration::from_secs(600);
    for (i, chunk) in stored.chunks(32).enumerate() {
        let e = local.embed(EMBEDDING_MODEL.into(), chunk.to_vec()).await?;
        for (j, (q, v)) in chunk.iter().zip(e.vectors).enumerate() {
            let hash = format!("{:064x}", i * 32 + j);
            let key = CacheKey::new("bench/model", "tenant", &hash)?;
            cache
                .put(
                    &key,
                    serde_json::json!({"answer": q}).to_string().as_bytes(),
                    Some(ttl),
                )
                .await?;
            semantic.insert(&partition, &hash, v, q, ttl).await?;
        }
    }
    // Paraphrases, none seen before (the embedding cache cannot answer them).
    let (mut whole, mut exact_only, mut search_only, mut hits) =
        (Vec::new(), Vec::new(), Vec::new(), 0usize);
    for i in 0..lookups {
        let q = stored[(i * 7) % stored.len()].to_lowercase().replace(
            "how do i",
            &format!("what is the best way to ({})", letters(i)),
        );
        let t = Instant::now();
        let e = local.embed(EMBEDDING_MODEL.into(), vec![q.clone()]).await?;
        if let Some(hit) = semantic
            .lookup(&partition, &q, e.vectors[0].clone(), 0.8)
            .await?
        {
            let key = CacheKey::new("bench/model", "tenant", &hit.request_hash)?;
            if cache.get(&key).await?.is_some() {
                hits += 1;
            }
        }
        whole.push(t.elapsed().as_secs_f64() * 1e3);
        // The search alone (the question's signature filters it), its embedding at hand.
        let t = Instant::now();
        semantic
            .lookup(&partition, &q, e.vectors[0].clone(), 0.8)
            .await?;
        search_only.push(t.elapsed().as_secs_f64() * 1e3);
        let key = CacheKey::new("bench/model", "tenant", &format!("{:064x}", i % 1000))?;
        let t = Instant::now();
        cache.get(&key).await?;
        exact_only.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let pct = |xs: &mut Vec<f64>, q: f64| {
        xs.sort_by(f64::total_cmp);
        crate::percentile(xs, q)
    };
    println!(
        "\nsemantic lookup, 1,000 cached questions, {lookups} unseen paraphrases ({hits} hits at 0.8):\n"
    );
    println!("| path | p50 | p99 |");
    println!("|---|---:|---:|");
    println!(
        "| exact-cache read alone (baseline) | {:.2} ms | {:.2} ms |",
        pct(&mut exact_only, 0.5),
        pct(&mut exact_only, 0.99)
    );
    println!(
        "| search alone, filtered by the question's signature (one Redis round trip to catch up) | {:.2} ms | {:.2} ms |",
        pct(&mut search_only, 0.5),
        pct(&mut search_only, 0.99)
    );
    println!(
        "| embed + search + read (semantic lookup) | {:.2} ms | {:.2} ms |",
        pct(&mut whole, 0.5),
        pct(&mut whole, 0.99)
    );
    // The checks' own cost: a question's signature.
    let t = Instant::now();
    let mut kept = 0usize;
    for q in &stored {
        kept += tollgate_core::semantic_checks::signature(q).len();
    }
    let per = t.elapsed().as_secs_f64() * 1e9 / stored.len() as f64;
    println!("\nthe checks: {per:.0} ns per question's signature ({kept} bytes of signatures)");
    Ok(())
}
