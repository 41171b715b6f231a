//! `tollgate semantic-eval PAIRS.jsonl.gz`: how well the semantic cache tells paraphrases from
//! different questions. Every `a` is stored (embedded by the configured model, indexed by the same
//! engine as the semantic cache), then every `b` is looked up among all of them.
//!
//! Entries are questions, as in the cache: an `a` that several pairs share is stored once (the
//! exact cache keys identical requests alike), and finding a stored question identical to `b` is
//! right (its answer is `b`'s answer; in the gateway it would be an exact hit).
//!
//! Each hit is one of five outcomes:
//! - **own right**: the pair's own `a`, labelled a duplicate (or text identical to `b`);
//! - **own wrong**: the pair's own `a`, labelled different;
//! - **other, duplicate**: another stored question that the file's labels make a duplicate of
//!   `b` (joined through label-1 pairs);
//! - **other, different**: another stored question that a label-0 pair says is different;
//! - **other, unlabelled**: another stored question the labels say nothing about.
//!
//! The strict count calls every hit but "own right" wrong, which understates precision: many
//! "other" hits found another paraphrase. The labelled count leaves the unlabelled ones out.
//!
//! `--split tune|test` keeps half of the questions (by a hash of `a`, so no question's pairs fall
//! on both sides): choose thresholds on `tune`, report them on `test`. `--paraphrases FILE` adds
//! the recall on a set of paraphrase pairs from another source (`[{"origin", "similar"}]`, all
//! positives), so a change that only fits Quora shows.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use tollgate_core::semantic_checks::{self, signature};
use tollgate_providers::Router;
use tollgate_vector::{Condition, Filter, Index};

#[derive(Debug, Clone, Deserialize)]
struct Pair {
    a: String,
    b: String,
    label: u8,
}

impl Pair {
    /// Both questions as the semantic cache reads them ([`semantic_checks::question`]).
    fn into_asked(self) -> Pair {
        // A question of punctuation alone is kept as written (the cache skips it).
        let read = |t: String| {
            let q = semantic_checks::question(&t);
            if q.is_empty() { t } else { q }
        };
        Pair {
            a: read(self.a),
            b: read(self.b),
            label: self.label,
        }
    }
}

/// Which questions an evaluation keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Split {
    /// Every pair.
    All,
    /// The half of the questions to choose settings on.
    Tune,
    /// The other half, to report on.
    Test,
}

impl Split {
    /// Whether the pair whose stored question is `a` belongs to this split (FNV-1a of `a`).
    fn keeps(self, a: &str) -> bool {
        let hash = a.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        match self {
            Split::All => true,
            Split::Tune => hash % 2 == 0,
            Split::Test => hash % 2 == 1,
        }
    }
}

/// What `semantic-eval` reads and prints.
#[derive(Debug)]
pub(crate) struct EvalOptions {
    /// The labelled pairs (`{"a", "b", "label"}` lines, gzip when `.gz`).
    pub file: PathBuf,
    /// The embedding model.
    pub model: String,
    /// The configured threshold, marked in the table.
    pub default: f32,
    /// Only the first N pairs (before the split).
    pub limit: Option<usize>,
    pub split: Split,
    /// Paraphrase pairs from another source, all positives.
    pub paraphrases: Option<PathBuf>,
    /// Examples of wrong hits to print at the default threshold.
    pub show_wrong: usize,
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

/// Reads `[{"origin", "similar"}]` as positive pairs.
fn read_paraphrases(file: &Path) -> anyhow::Result<Vec<Pair>> {
    #[derive(Deserialize)]
    struct Paraphrase {
        origin: String,
        similar: String,
    }
    let raw = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let list: Vec<Paraphrase> = serde_json::from_slice(&raw).with_context(|| {
        format!(
            "{}: expected a JSON array of {{\"origin\", \"similar\"}}",
            file.display()
        )
    })?;
    if list.is_empty() {
        bail!("{} holds no pairs", file.display());
    }
    Ok(list
        .into_iter()
        .map(|p| Pair {
            a: p.origin,
            b: p.similar,
            label: 1,
        })
        .collect())
}

/// Embeds `texts` in batches, with a progress bar. Texts go in order of length, so a batch's
/// inputs pad to about the same length (less wasted work); the vectors come back in `texts`' order.
async fn embed_all(router: &Router, model: &str, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
    let bar = indicatif::ProgressBar::new(texts.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} texts embedded, {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
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
    bar.finish_and_clear();
    Ok(out)
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    OwnRight,
    OwnWrong,
    OtherDuplicate,
    OtherDifferent,
    OtherUnlabelled,
}

/// The nearest stored question of one lookup.
#[derive(Debug)]
struct Nearest {
    score: f32,
    outcome: Outcome,
    /// The pair looked up.
    pair: usize,
    /// The stored question found.
    found: usize,
}

/// What the file's labels say about two texts: groups of duplicates (joined through label-1
/// pairs) and the label-0 pairs.
struct Labels<'a> {
    group: HashMap<&'a str, usize>,
    different: std::collections::HashSet<(&'a str, &'a str)>,
}

impl<'a> Labels<'a> {
    fn new(pairs: &'a [Pair]) -> Self {
        let mut id: HashMap<&str, usize> = HashMap::new();
        let mut parent: Vec<usize> = Vec::new();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        let mut different = std::collections::HashSet::new();
        for p in pairs {
            for t in [p.a.as_str(), p.b.as_str()] {
                let next = parent.len();
                if *id.entry(t).or_insert(next) == next {
                    parent.push(next);
                }
            }
            if p.label == 1 {
                let (x, y) = (
                    root(&mut parent, id[p.a.as_str()]),
                    root(&mut parent, id[p.b.as_str()]),
                );
                parent[x] = y;
            } else {
                different.insert((p.a.as_str(), p.b.as_str()));
                different.insert((p.b.as_str(), p.a.as_str()));
            }
        }
        let group = id
            .iter()
            .map(|(t, &i)| (*t, root(&mut parent, i)))
            .collect();
        Labels { group, different }
    }

    fn outcome(&self, pair: &Pair, found: &str) -> Outcome {
        if found == pair.b {
            return Outcome::OwnRight;
        }
        if found == pair.a {
            return if pair.label == 1 {
                Outcome::OwnRight
            } else {
                Outcome::OwnWrong
            };
        }
        if self
            .group
            .get(found)
            .is_some_and(|g| self.group.get(pair.b.as_str()) == Some(g))
        {
            Outcome::OtherDuplicate
        } else if self.different.contains(&(found, pair.b.as_str())) {
            Outcome::OtherDifferent
        } else {
            Outcome::OtherUnlabelled
        }
    }
}

/// The tag that holds a stored question's [`signature`], as the semantic cache keeps it.
const SIGNATURE: &str = "sig";

/// Every pair's `a` and `b` embedded (`[a0, b0, a1, b1, ...]`), the dimension and texts per second.
async fn embed_pairs(
    router: &Router,
    model: &str,
    pairs: &[Pair],
) -> anyhow::Result<(Vec<Vec<f32>>, usize, f64)> {
    let texts: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.a.as_str(), p.b.as_str()])
        .collect();
    let started = std::time::Instant::now();
    let vectors = embed_all(router, model, &texts).await?;
    let rate = texts.len() as f64 / started.elapsed().as_secs_f64();
    let dim = vectors.first().map_or(0, Vec::len);
    Ok((vectors, dim, rate))
}

/// Stores each distinct `a` of `pairs` once (with its signature as a tag) and looks every `b`
/// up: the nearest stored question, or with `checked` the nearest with `b`'s signature, as the
/// semantic cache looks up.
fn lookups(
    pairs: &[Pair],
    vectors: &[Vec<f32>],
    dim: usize,
    labels: &Labels<'_>,
    checked: bool,
) -> anyhow::Result<Vec<Nearest>> {
    let mut index = Index::new(dim);
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    for (i, (pair, v)) in pairs.iter().zip(vectors.iter().step_by(2)).enumerate() {
        if let std::collections::hash_map::Entry::Vacant(e) = first_of.entry(pair.a.as_str()) {
            e.insert(i);
            let mut meta = tollgate_vector::Metadata::default();
            meta.tags.insert(SIGNATURE.into(), signature(&pair.a));
            index.upsert(&i.to_string(), v, meta)?;
        }
    }
    let mut nearest = Vec::with_capacity(pairs.len());
    for (i, (pair, v)) in pairs
        .iter()
        .zip(vectors.iter().skip(1).step_by(2))
        .enumerate()
    {
        let mut filter = Filter::default();
        if checked {
            filter.conditions.push(Condition::TagIn {
                field: SIGNATURE.into(),
                values: vec![signature(&pair.b)],
            });
        }
        let Some(hit) = index.search(v, 1, &filter)?.into_iter().next() else {
            continue;
        };
        let found: usize = hit.id.parse().context("an index id")?;
        nearest.push(Nearest {
            score: hit.score,
            outcome: labels.outcome(pair, &pairs[found].a),
            pair: i,
            found,
        });
    }
    Ok(nearest)
}

/// The counts of each outcome among the hits at or above a threshold.
#[derive(Debug, Default)]
struct Counts {
    own_right: usize,
    own_wrong: usize,
    other_duplicate: usize,
    other_different: usize,
    other_unlabelled: usize,
}

impl Counts {
    fn at(nearest: &[Nearest], t: f32) -> Self {
        let mut c = Counts::default();
        for n in nearest.iter().filter(|n| n.score >= t) {
            *match n.outcome {
                Outcome::OwnRight => &mut c.own_right,
                Outcome::OwnWrong => &mut c.own_wrong,
                Outcome::OtherDuplicate => &mut c.other_duplicate,
                Outcome::OtherDifferent => &mut c.other_different,
                Outcome::OtherUnlabelled => &mut c.other_unlabelled,
            } += 1;
        }
        c
    }

    fn hits(&self) -> usize {
        self.own_right
            + self.own_wrong
            + self.other_duplicate
            + self.other_different
            + self.other_unlabelled
    }

    /// Right hits over all hits: every hit but its own right answer counts wrong.
    fn strict_precision(&self) -> f64 {
        ratio(self.own_right, self.hits())
    }

    /// Right hits over the hits the labels settle (unlabelled ones left out).
    fn labelled_precision(&self) -> f64 {
        let right = self.own_right + self.other_duplicate;
        ratio(right, right + self.own_wrong + self.other_different)
    }
}

fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 { 1.0 } else { n as f64 / d as f64 }
}

/// One threshold sweep's inputs.
struct Sweep<'a> {
    nearest: &'a [Nearest],
    positives: usize,
    thresholds: &'a [f32],
    default: f32,
    /// The paraphrase set's lookups and its number of pairs.
    paraphrases: Option<(&'a [Nearest], usize)>,
}

impl Sweep<'_> {
    /// Prints the table and the lowest thresholds reaching precision 0.95, strict and labelled.
    fn print(&self) {
        let paraphrase_column = if self.paraphrases.is_some() {
            " paraphrase recall |"
        } else {
            ""
        };
        println!(
            "| threshold | hits | strict precision | strict recall | own right | own wrong | other: duplicate | other: different | other: unlabelled | labelled precision | labelled recall |{paraphrase_column}"
        );
        println!(
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{}",
            if self.paraphrases.is_some() {
                "---:|"
            } else {
                ""
            }
        );
        let (mut strict_choice, mut labelled_choice) = (None, None);
        for &t in self.thresholds {
            let c = Counts::at(self.nearest, t);
            let strict_recall = ratio(c.own_right, self.positives);
            let labelled_recall = ratio(c.own_right + c.other_duplicate, self.positives);
            if c.strict_precision() >= 0.95 && strict_choice.is_none() {
                strict_choice = Some((t, strict_recall));
            }
            if c.labelled_precision() >= 0.95 && labelled_choice.is_none() {
                labelled_choice = Some((t, labelled_recall));
            }
            let mark = if (t - self.default).abs() < 1e-6 {
                " (default)"
            } else {
                ""
            };
            let paraphrase = self.paraphrases.map_or(String::new(), |(n, len)| {
                format!(" {:.3} |", ratio(Counts::at(n, t).own_right, len))
            });
            println!(
                "| {t:.3}{mark} | {} | {:.3} | {strict_recall:.3} | {} | {} | {} | {} | {} | {:.3} | {labelled_recall:.3} |{paraphrase}",
                c.hits(),
                c.strict_precision(),
                c.own_right,
                c.own_wrong,
                c.other_duplicate,
                c.other_different,
                c.other_unlabelled,
                c.labelled_precision(),
            );
        }
        println!();
        for (what, choice) in [("strict", strict_choice), ("labelled", labelled_choice)] {
            match choice {
                Some((t, recall)) => println!(
                    "lowest threshold with {what} precision >= 0.95: {t:.3} ({what} recall {recall:.3})"
                ),
                None => println!("no threshold in the sweep reaches {what} precision 0.95"),
            }
        }
    }
}

/// Runs the evaluation and prints the tables, marking the configured threshold.
pub(crate) async fn semantic_eval(router: &Router, o: &EvalOptions) -> anyhow::Result<()> {
    // Questions as the semantic cache reads them; the split still goes by the file's text.
    let read = read_pairs(&o.file, o.limit)?;
    let kept: Vec<bool> = read.iter().map(|p| o.split.keeps(&p.a)).collect();
    let all: Vec<Pair> = read.into_iter().map(Pair::into_asked).collect();
    // The labels of the whole file settle "other" hits; only the split is looked up.
    let labels = Labels::new(&all);
    let pairs: Vec<Pair> = all
        .iter()
        .zip(&kept)
        .filter(|(_, kept)| **kept)
        .map(|(p, _)| p.clone())
        .collect();
    if pairs.is_empty() {
        bail!(
            "the {:?} split of {} holds no pairs",
            o.split,
            o.file.display()
        );
    }
    let (vectors, dim, rate) = embed_pairs(router, &o.model, &pairs).await?;
    // The paraphrase set: its pairs, labels and vectors.
    let paraphrases = match &o.paraphrases {
        Some(file) => {
            let pairs: Vec<Pair> = read_paraphrases(file)?
                .into_iter()
                .map(Pair::into_asked)
                .collect();
            let (vectors, _, _) = embed_pairs(router, &o.model, &pairs).await?;
            Some((file, pairs, vectors))
        }
        None => None,
    };
    let positives = pairs.iter().filter(|p| p.label == 1).count();
    let split = match o.split {
        Split::All => "all pairs",
        Split::Tune => "the tune half (by question)",
        Split::Test => "the test half (by question)",
    };
    println!(
        "{} pairs ({positives} positives) from {}, {split}; embeddings: {}, {dim} dimensions, {rate:.0} texts/s",
        pairs.len(),
        o.file.display(),
        o.model,
    );
    if let Some((file, p, _)) = &paraphrases {
        println!(
            "paraphrase recall: {} pairs from {}",
            p.len(),
            file.display()
        );
    }
    // Every hundredth from 0.70, then every thousandth above 0.99, where precision climbs.
    let mut thresholds: Vec<f32> = (70..=99)
        .map(|t| t as f32 / 100.0)
        .chain((991..=999).map(|t| t as f32 / 1000.0))
        .collect();
    if !thresholds.iter().any(|t| (t - o.default).abs() < 1e-6) {
        thresholds.push(o.default);
        thresholds.sort_by(f32::total_cmp);
    }
    let mut served = Vec::new();
    for checked in [false, true] {
        let nearest = lookups(&pairs, &vectors, dim, &labels, checked)?;
        let paraphrase_lookups = match &paraphrases {
            Some((_, p, v)) => Some((lookups(p, v, dim, &Labels::new(p), checked)?, p.len())),
            None => None,
        };
        println!(
            "\n{}\n",
            if checked {
                "With the checks (the nearest stored question with the same numbers and negation; the cache's behaviour):"
            } else {
                "Without the checks (the nearest stored question):"
            }
        );
        Sweep {
            nearest: &nearest,
            positives,
            thresholds: &thresholds,
            default: o.default,
            paraphrases: paraphrase_lookups
                .as_ref()
                .map(|(n, len)| (n.as_slice(), *len)),
        }
        .print();
        served = nearest;
    }
    let wrong: Vec<&Nearest> = served
        .iter()
        .filter(|n| {
            n.score >= o.default && matches!(n.outcome, Outcome::OwnWrong | Outcome::OtherDifferent)
        })
        .take(o.show_wrong)
        .collect();
    if !wrong.is_empty() {
        println!(
            "\nwrong hits by the labels at {:.3}, with the checks (the question looked up, the stored one found):",
            o.default
        );
        for n in wrong {
            println!(
                "- {:.3}: {:?} -> {:?}",
                n.score, pairs[n.pair].b, pairs[n.found].a
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, b: &str, label: u8) -> Pair {
        Pair {
            a: a.into(),
            b: b.into(),
            label,
        }
    }

    #[test]
    fn each_hit_is_settled_by_the_labels_where_they_say_something() {
        let pairs = vec![
            pair("how to bake bread", "how do I bake bread", 1),
            pair("how do I bake bread", "bread baking at home", 1),
            pair("how to bake bread", "how to bake a cake", 0),
            pair("what is rust", "what is go", 0),
        ];
        let labels = Labels::new(&pairs);
        // The own question: right or wrong by the pair's label; identical text is right.
        assert_eq!(
            labels.outcome(&pairs[0], "how to bake bread"),
            Outcome::OwnRight
        );
        assert_eq!(
            labels.outcome(&pairs[2], "how to bake bread"),
            Outcome::OwnWrong
        );
        assert_eq!(
            labels.outcome(&pairs[2], "how to bake a cake"),
            Outcome::OwnRight
        );
        // Another question: a duplicate through two label-1 pairs, different by a label-0 pair,
        // or unknown.
        assert_eq!(
            labels.outcome(&pairs[1], "how to bake bread"),
            Outcome::OtherDuplicate
        );
        assert_eq!(
            labels.outcome(&pairs[3], "how to bake a cake"),
            Outcome::OtherUnlabelled
        );
        let cake = pair("what is go", "what is rust", 1);
        assert_eq!(
            labels.outcome(&cake, "how to bake bread"),
            Outcome::OtherUnlabelled
        );
        let asked = pair("x", "how to bake a cake", 1);
        assert_eq!(
            labels.outcome(&asked, "how to bake bread"),
            Outcome::OtherDifferent
        );
    }

    #[test]
    fn the_halves_split_questions_not_pairs() {
        let questions: Vec<String> = (0..1000).map(|i| format!("question {i}")).collect();
        let tune = questions.iter().filter(|q| Split::Tune.keeps(q)).count();
        let test = questions.iter().filter(|q| Split::Test.keeps(q)).count();
        assert_eq!(tune + test, 1000);
        assert!((400..600).contains(&tune), "{tune}");
        assert!(questions.iter().all(|q| Split::All.keeps(q)));
    }

    #[test]
    fn precision_is_counted_strictly_and_by_the_labels() {
        let n = |score, outcome| Nearest {
            score,
            outcome,
            pair: 0,
            found: 0,
        };
        let nearest = [
            n(0.99, Outcome::OwnRight),
            n(0.98, Outcome::OtherDuplicate),
            n(0.97, Outcome::OtherUnlabelled),
            n(0.96, Outcome::OwnWrong),
            n(0.50, Outcome::OtherDifferent),
        ];
        let c = Counts::at(&nearest, 0.96);
        assert_eq!(c.hits(), 4);
        assert!((c.strict_precision() - 0.25).abs() < 1e-9);
        assert!((c.labelled_precision() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(Counts::at(&nearest, 1.0).hits(), 0);
        assert!((Counts::at(&nearest, 1.0).strict_precision() - 1.0).abs() < 1e-9);
    }
}
