//! `tollgate semantic-eval PAIRS.jsonl.gz`: how well the semantic cache's threshold separates
//! paraphrases from different questions. Every `a` is stored (embedded by the configured model,
//! indexed by the same engine as the semantic cache), then every `b` is looked up among all of
//! them. A hit is right when the pair is labelled 1 and the entry found is that pair's own `a`;
//! every other hit is wrong (it would serve an answer to another question).
//!
//! Entries are questions, as in the cache: an `a` that several pairs share is stored once (the
//! exact cache keys identical requests alike), and finding a stored question identical to `b`
//! is right (its answer is `b`'s answer; in the gateway it would be an exact hit).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use tollgate_providers::Router;
use tollgate_vector::{Filter, Index};

#[derive(Debug, Deserialize)]
struct Pair {
    a: String,
    b: String,
    label: u8,
}

/// Reads `{"a", "b", "label"}` lines (gzip when the name ends in `.gz`); a bad line is an error
/// naming it.
fn read_pairs(file: &Path, limit: Option<usize>) -> anyhow::Result<Vec<Pair>> {
    let raw = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let mut text = String::new();
    if file.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_string(&mut text)
            .with_context(|| format!("{} is not gzip text", file.display()))?;
    } else {
        text = String::from_utf8(raw).context("the file is not UTF-8")?;
    }
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let pair: Pair = serde_json::from_str(line)
            .with_context(|| format!("line {}: expected {{\"a\", \"b\", \"label\"}}", n + 1))?;
        if pair.a.trim().is_empty() || pair.b.trim().is_empty() || pair.label > 1 {
            bail!("line {}: empty text or a label other than 0 and 1", n + 1);
        }
        pairs.push(pair);
        if limit.is_some_and(|l| pairs.len() >= l) {
            break;
        }
    }
    if pairs.is_empty() {
        bail!("{} holds no pairs", file.display());
    }
    Ok(pairs)
}

/// Embeds `texts` in batches, with a progress bar. Texts go in order of length, so a batch's
/// inputs pad to about the same length (less wasted work); the vectors come back in `texts`' order.
async fn embed_all(
    router: &Router,
    model: &str,
    texts: &[&str],
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut out = vec![Vec::new(); texts.len()];
    for batch in order.chunks(32) {
        let (_, e) = router
            .embed(model, batch.iter().map(|&i| texts[i].to_owned()).collect())
            .await
            .with_context(|| format!("embedding with {model}"))?;
        for (&i, v) in batch.iter().zip(e.vectors) {
            out[i] = v;
        }
        bar.inc(batch.len() as u64);
    }
    Ok(out)
}

/// Runs the evaluation and prints the table, marking `default` (the configured threshold).
pub(crate) async fn semantic_eval(
    router: &Router,
    file: &Path,
    model: &str,
    default: f32,
    limit: Option<usize>,
    show_wrong: usize,
) -> anyhow::Result<()> {
    let pairs = read_pairs(file, limit)?;
    let texts: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.a.as_str(), p.b.as_str()])
        .collect();
    let bar = indicatif::ProgressBar::new(texts.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} texts embedded, {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let vectors = embed_all(router, model, &texts, &bar).await?;
    bar.finish_and_clear();
    let embed_secs = started.elapsed().as_secs_f64();
    let dim = vectors.first().map_or(0, Vec::len);
    let mut index = Index::new(dim);
    // Each distinct question once, named by its first pair.
    let mut first_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, (pair, v)) in pairs.iter().zip(vectors.iter().step_by(2)).enumerate() {
        if let std::collections::hash_map::Entry::Vacant(e) = first_of.entry(pair.a.as_str()) {
            e.insert(i);
            index.upsert(&i.to_string(), v, Default::default())?;
        }
    }
    // The nearest stored question of every `b`: (similarity, is it the right answer, its text).
    let mut nearest = Vec::with_capacity(pairs.len());
    for (pair, v) in pairs.iter().zip(vectors.iter().skip(1).step_by(2)) {
        let hit = index.search(v, 1, &Filter::default())?.into_iter().next();
        nearest.push(hit.map_or((f32::MIN, false, ""), |h| {
            let found = h.id.parse::<usize>().map_or("", |j| pairs[j].a.as_str());
            let right = (pair.label == 1 && found == pair.a) || found == pair.b;
            (h.score, right, found)
        }));
    }
    let positives = pairs.iter().filter(|p| p.label == 1).count();
    // Every hundredth from 0.70, then every thousandth above 0.99, where precision climbs.
    let mut thresholds: Vec<f32> = (70..=99)
        .map(|t| t as f32 / 100.0)
        .chain((991..=999).map(|t| t as f32 / 1000.0))
        .collect();
    if !thresholds.iter().any(|t| (t - default).abs() < 1e-6) {
        thresholds.push(default);
        thresholds.sort_by(f32::total_cmp);
    }
    println!(
        "{} pairs ({positives} positives) from {}; embeddings: {model}, {dim} dimensions, {:.0} texts/s\n",
        pairs.len(),
        file.display(),
        texts.len() as f64 / embed_secs
    );
    println!("| threshold | hit rate | precision | recall | hits | right | wrong |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut chosen = None;
    for t in thresholds {
        let (mut hits, mut right) = (0usize, 0usize);
        for (score, is_right, _) in &nearest {
            if *score >= t {
                hits += 1;
                if *is_right {
                    right += 1;
                }
            }
        }
        let precision = if hits == 0 {
            1.0
        } else {
            right as f64 / hits as f64
        };
        if precision >= 0.95 && chosen.is_none() {
            chosen = Some((t, right as f64 / positives.max(1) as f64));
        }
        let mark = if (t - default).abs() < 1e-6 {
            " (default)"
        } else {
            ""
        };
        println!(
            "| {t:.3}{mark} | {:.3} | {precision:.3} | {:.3} | {hits} | {right} | {} |",
            hits as f64 / pairs.len() as f64,
            right as f64 / positives.max(1) as f64,
            hits - right
        );
    }
    match chosen {
        Some((t, recall)) => {
            println!("\nlowest threshold with precision >= 0.95: {t:.3} (recall {recall:.3})")
        }
        None => println!("\nno threshold in the sweep reaches precision 0.95"),
    }
    let wrong: Vec<_> = nearest
        .iter()
        .zip(&pairs)
        .filter(|((score, right, _), _)| *score >= default && !right)
        .take(show_wrong)
        .collect();
    if !wrong.is_empty() {
        println!("\nwrong hits at {default:.2} (the question looked up, the stored one found):");
        for ((score, _, found), pair) in wrong {
            println!(
                "- {score:.3} (label {}): {:?} -> {:?}",
                pair.label, pair.b, found
            );
        }
    }
    Ok(())
}
