//! `tollgate cache warm FILE.jsonl`: sends each line (a chat request) through the gateway's own
//! request path, so the answers land in the exact cache as live traffic would put them there.
//! Bounded concurrency, a progress bar, and every line that fails is reported with its number.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use tollgate_core::ChatRequest;
use tollgate_server::Gateway;
use tollgate_server::auth::Principal;
use tollgate_server::chat::{ChatOptions, chat_completions};
use tollgate_server::config::Limits;
use tollgate_server::metrics::CacheResult;

/// What happened to one line.
enum Outcome {
    Warmed,
    AlreadyCached,
    NotCacheable,
    Failed(String),
}

/// Warms the cache for `tenant` from `file`; returns the number of failed lines.
pub(crate) async fn warm(
    gw: Arc<Gateway>,
    file: &Path,
    tenant: &str,
    concurrency: usize,
) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let lines: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.to_owned()))
        .collect();
    let bar = indicatif::ProgressBar::new(lines.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} requests, {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let principal = Principal {
        subject: "cache-warm".into(),
        tenant: tenant.to_owned(),
        limits: Limits::default(),
        admin: true,
    };
    let results: Vec<(usize, Outcome)> = futures::stream::iter(lines)
        .map(|(number, line)| {
            let (gw, principal, bar) = (gw.clone(), principal.clone(), bar.clone());
            async move {
                let outcome = match serde_json::from_str::<ChatRequest>(&line) {
                    Err(e) => Outcome::Failed(format!("not a chat request: {e}")),
                    Ok(mut req) => {
                        req.stream = false;
                        match chat_completions(&gw, &principal, req, ChatOptions::default()).await {
                            Ok(reply) => match reply.meta.cache {
                                CacheResult::Hit | CacheResult::Semantic => Outcome::AlreadyCached,
                                CacheResult::Miss | CacheResult::Coalesced => Outcome::Warmed,
                                CacheResult::Bypass | CacheResult::Error => Outcome::NotCacheable,
                            },
                            Err(e) => Outcome::Failed(e.to_string()),
                        }
                    }
                };
                bar.inc(1);
                (number, outcome)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|(_, o)| f(o)).count();
    let mut failed: Vec<(usize, &String)> = results
        .iter()
        .filter_map(|(n, o)| {
            if let Outcome::Failed(m) = o {
                Some((*n, m))
            } else {
                None
            }
        })
        .collect();
    failed.sort();
    println!(
        "warmed {}, already cached {}, not cacheable {} (temperature other than 0 and no seed), failed {}",
        count(|o| matches!(o, Outcome::Warmed)),
        count(|o| matches!(o, Outcome::AlreadyCached)),
        count(|o| matches!(o, Outcome::NotCacheable)),
        failed.len()
    );
    for (number, message) in &failed {
        println!("line {number}: {message}");
    }
    Ok(failed.len())
}
