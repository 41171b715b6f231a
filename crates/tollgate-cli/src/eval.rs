//! `tollgate semantic-eval PAIRS.jsonl.gz`: how well the semantic cache's threshold separates
//! paraphrases from different questions. Every `a` is stored (embedded by the configured model,
//! indexed by the same engine as the semantic cache), then every `b` is looked up among all of
//! them. A hit is right when the pair is labelled 1 and the entry found is that pair's own `a`;
//! every other hit is wrong (it would serve an answer to another question).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Deserialize;
use tollgate_server::Gateway;
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

/// Embeds `texts` in batches, with a progress bar.
async fn embed_all(
    gw: &Gateway,
    model: &str,
    texts: &[&str],
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let router = gw.router();
    let mut out = Vec::with_capacity(texts.len());
    for batch in texts.chunks(32) {
        let (_, e) = router
            .embed(model, batch.iter().map(|t| (*t).to_owned()).collect())
            .await
            .with_context(|| format!("embedding with {model}"))?;
        out.extend(e.vectors);
        bar.inc(batch.len() as u64);
    }
    Ok(out)
}

/// Runs the evaluation and prints the table.
pub(crate) async fn semantic_eval(
    gw: Arc<Gateway>,
    file: &Path,
    model: &str,
    limit: Option<usize>,
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
    let vectors = embed_all(&gw, model, &texts, &bar).await?;
    bar.finish_and_clear();
    let embed_secs = started.elapsed().as_secs_f64();
    let dim = vectors.first().map_or(0, Vec::len);
    let mut index = Index::new(dim);
    for (i, v) in vectors.iter().step_by(2).enumerate() {
        index.upsert(&i.to_string(), v, Default::default())?;
    }
    // The nearest stored `a` of every `b`: (similarity, is it this pair's own a).
    let mut nearest = Vec::with_capacity(pairs.len());
    for (i, v) in vectors.iter().skip(1).step_by(2).enumerate() {
        let hit = index.search(v, 1, &Filter::default())?.into_iter().next();
        nearest.push(hit.map_or((f32::MIN, false), |h| (h.score, h.id == i.to_string())));
    }
    let positives = pairs.iter().filter(|p| p.label == 1).count();
    let default = gw.config.semantic_cache.threshold_for(model);
    let mut thresholds: Vec<f32> = (70..=99).map(|t| t as f32 / 100.0).collect();
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
        for ((score, own), pair) in nearest.iter().zip(&pairs) {
            if *score >= t {
                hits += 1;
                if *own && pair.label == 1 {
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
            "| {t:.2}{mark} | {:.3} | {precision:.3} | {:.3} | {hits} | {right} | {} |",
            hits as f64 / pairs.len() as f64,
            right as f64 / positives.max(1) as f64,
            hits - right
        );
    }
    match chosen {
        Some((t, recall)) => {
            println!("\nlowest threshold with precision >= 0.95: {t:.2} (recall {recall:.3})")
        }
        None => println!("\nno threshold in the sweep reaches precision 0.95"),
    }
    Ok(())
}
