//! The `vectors` benchmark: the in-process index at 100k × 384 against an exact brute-force scan
//! of the same index in the same run (the baseline), with recall measured against that scan.
//!
//! Data: points around topic centres, like sentence embeddings (clusters of near-paraphrases
//! inside broad topics), from a fixed seed. Two query sets: *near* queries are a stored point
//! moved slightly (what a semantic cache looks up: a paraphrase of something stored), *fresh*
//! queries are new points of the same topics (harder: the nearest neighbour is one of many
//! almost equidistant points).

use std::time::{Duration, Instant};

use tollgate_vector::{Condition, Filter, Index, IndexConfig, Metadata, SearchMode};

/// Options of `tollgate-bench vectors`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Vectors in the index.
    #[arg(long, default_value_t = 100_000)]
    vectors: usize,
    /// Dimensions (all-MiniLM-L6-v2 has 384).
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Queries per scenario.
    #[arg(long, default_value_t = 500)]
    queries: usize,
    /// Beam width of graph searches (the index's default without it).
    #[arg(long)]
    ef_search: Option<usize>,
}

struct Rng(u64);

impl Rng {
    /// Uniform in [-1, 1).
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn below(&mut self, n: usize) -> usize {
        ((self.next() + 1.0) / 2.0 * n as f32) as usize % n
    }
}

fn around(rng: &mut Rng, centre: &[f32], spread: f32) -> Vec<f32> {
    centre.iter().map(|x| x + spread * rng.next()).collect()
}

struct Row {
    scenario: &'static str,
    took: Vec<Duration>,
    recall: Option<f64>,
    exact: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let (n, dim) = (args.vectors, args.dim);
    let mut rng = Rng(0x5EED);
    // 200 topics, each with clusters of 10 near-paraphrases.
    let topics: Vec<Vec<f32>> = (0..200)
        .map(|_| (0..dim).map(|_| rng.next()).collect())
        .collect();
    let clusters: Vec<Vec<f32>> = (0..n.div_ceil(10))
        .map(|c| around(&mut rng, &topics[c % topics.len()], 0.6))
        .collect();
    let points: Vec<Vec<f32>> = (0..n)
        .map(|i| around(&mut rng, &clusters[i / 10], 0.25))
        .collect();
    let meta = |i: usize| Metadata {
        tags: [("lang".to_owned(), format!("l{}", i % 8))].into(),
        numbers: [("price".to_owned(), (i % 1000) as f64)].into(),
    };

    let rss_before = crate::gateway::rss_kib(std::process::id(), "VmRSS");
    let started = Instant::now();
    let mut config = IndexConfig::default();
    if let Some(ef) = args.ef_search {
        config.ef_search = ef;
    }
    let ef_search = config.ef_search;
    let mut index = Index::with_config(dim, config);
    for (i, p) in points.iter().enumerate() {
        index.upsert(&format!("doc-{i}"), p, meta(i))?;
    }
    let build = started.elapsed();
    // What the index holds (vectors, metadata, graph), as the process's resident memory grew.
    let index_kib = crate::gateway::rss_kib(std::process::id(), "VmRSS").saturating_sub(rss_before);

    let near: Vec<Vec<f32>> = (0..args.queries)
        .map(|_| {
            let i = rng.below(n);
            around(&mut rng, &points[i], 0.1)
        })
        .collect();
    let fresh: Vec<Vec<f32>> = (0..args.queries)
        .map(|_| {
            let c = rng.below(clusters.len());
            around(&mut rng, &clusters[c], 0.25)
        })
        .collect();
    let none = Filter::default();
    let rare = Filter {
        conditions: vec![Condition::Range {
            field: "price".into(),
            min: Some(0.0),
            max: Some(39.0),
        }],
    };
    let one_lang = Filter {
        conditions: vec![Condition::TagIn {
            field: "lang".into(),
            values: vec!["l3".into()],
        }],
    };
    let half = Filter {
        conditions: vec![
            Condition::TagIn {
                field: "lang".into(),
                values: (0..4).map(|l| format!("l{l}")).collect(),
            },
            Condition::Range {
                field: "price".into(),
                min: Some(0.0),
                max: Some(799.0),
            },
        ],
    };

    let measure =
        |scenario, queries: &[Vec<f32>], k, filter: &Filter, mode| -> anyhow::Result<Row> {
            let mut took = Vec::with_capacity(queries.len());
            let (mut found, mut wanted, mut exact) = (0usize, 0usize, true);
            for q in queries {
                let t = Instant::now();
                let result = index.search_with(q, k, filter, mode)?;
                took.push(t.elapsed());
                exact &= result.exact;
                if mode == SearchMode::Auto && !result.exact {
                    let truth = index.search_with(q, k, filter, SearchMode::Exact)?;
                    wanted += truth.hits.len();
                    found += truth
                        .hits
                        .iter()
                        .filter(|h| result.hits.iter().any(|g| g.id == h.id))
                        .count();
                }
            }
            took.sort();
            Ok(Row {
                scenario,
                took,
                recall: (wanted > 0).then(|| found as f64 / wanted as f64),
                exact,
            })
        };

    let rows = [
        measure(
            "exact scan, no filter, k=1 (baseline)",
            &near,
            1,
            &none,
            SearchMode::Exact,
        )?,
        measure(
            "near query, no filter, k=1 (semantic cache)",
            &near,
            1,
            &none,
            SearchMode::Auto,
        )?,
        measure(
            "fresh query, no filter, k=1",
            &fresh,
            1,
            &none,
            SearchMode::Auto,
        )?,
        measure(
            "fresh query, no filter, k=10",
            &fresh,
            10,
            &none,
            SearchMode::Auto,
        )?,
        measure(
            "filter passes 4% (range), k=10",
            &fresh,
            10,
            &rare,
            SearchMode::Auto,
        )?,
        measure(
            "filter passes 12.5% (tag), k=10",
            &fresh,
            10,
            &one_lang,
            SearchMode::Auto,
        )?,
        measure(
            "filter passes 40% (tag + range), k=10",
            &fresh,
            10,
            &half,
            SearchMode::Auto,
        )?,
        measure(
            "exact scan, filter passes 40%, k=10",
            &fresh,
            10,
            &half,
            SearchMode::Exact,
        )?,
    ];

    println!(
        "\n{n} vectors × {dim} dims, ef_search {ef_search}; built in {:.1} s ({:.0} inserts/s); {} queries per row, one at a time",
        build.as_secs_f64(),
        n as f64 / build.as_secs_f64(),
        args.queries
    );
    println!(
        "index in memory: {:.1} MiB, {:.0} bytes per vector (its vectors alone: {} bytes in half precision)\n",
        index_kib as f64 / 1024.0,
        index_kib as f64 * 1024.0 / n as f64,
        dim * 2
    );
    println!("| scenario | path | p50 | p99 | speed-up vs baseline p50 | recall vs exact |");
    println!("|---|---|---:|---:|---:|---:|");
    let pct = crate::percentile::<Duration>;
    let base = pct(&rows[0].took, 0.5);
    for row in &rows {
        let p50 = pct(&row.took, 0.5);
        println!(
            "| {} | {} | {:.3} ms | {:.3} ms | {:.1}× | {} |",
            row.scenario,
            if row.exact { "exact" } else { "graph" },
            p50.as_secs_f64() * 1e3,
            pct(&row.took, 0.99).as_secs_f64() * 1e3,
            base.as_secs_f64() / p50.as_secs_f64(),
            row.recall.map_or("exact".to_owned(), |r| format!("{r:.4}")),
        );
    }
    Ok(())
}
