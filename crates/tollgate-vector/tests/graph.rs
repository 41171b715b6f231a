//! The graph path against the exact scan, and the index's bookkeeping under churn. Data is
//! clustered like sentence embeddings (points around topic centres), from a fixed seed, so the
//! recall figures asserted here are deterministic.

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

use proptest::prelude::*;
use tollgate_vector::{Condition, Filter, Index, IndexConfig, Metadata, SearchMode};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn vector(&mut self, dim: usize) -> Vec<f32> {
        (0..dim).map(|_| self.next()).collect()
    }
}

/// `n` points around `n / 50` centres.
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..(n / 50).max(1)).map(|_| rng.vector(dim)).collect();
    (0..n)
        .map(|i| {
            let c = &centres[i % centres.len()];
            c.iter().map(|x| x + 0.35 * rng.next()).collect()
        })
        .collect()
}

fn tagged(i: usize) -> Metadata {
    Metadata {
        tags: [("parity".to_owned(), (i % 2).to_string())].into(),
        numbers: [("n".to_owned(), i as f64)].into(),
    }
}

fn small_graph() -> IndexConfig {
    IndexConfig {
        graph_min_len: 500,
        exact_max: 100,
        ..IndexConfig::default()
    }
}

/// Mean recall@k of the graph path against the exact scan.
fn recall(index: &Index, queries: &[Vec<f32>], k: usize, filter: &Filter) -> f64 {
    let mut found = 0;
    for q in queries {
        let graph = index.search_with(q, k, filter, SearchMode::Auto).unwrap();
        assert!(!graph.exact, "the graph path was meant to run");
        let exact = index.search_with(q, k, filter, SearchMode::Exact).unwrap();
        assert!(exact.exact);
        assert_eq!(exact.hits.len(), k);
        found += exact
            .hits
            .iter()
            .filter(|h| graph.hits.iter().any(|g| g.id == h.id))
            .count();
    }
    found as f64 / (queries.len() * k) as f64
}

#[test]
fn graph_search_finds_what_exact_search_finds() {
    let points = clustered(4000, 48, 7);
    let mut index = Index::with_config(48, small_graph());
    for (i, p) in points.iter().enumerate() {
        index.upsert(&format!("p{i}"), p, tagged(i)).unwrap();
    }
    assert!(index.has_graph());
    let queries = clustered(4000, 48, 7)
        .into_iter()
        .take(200)
        .map(|p| p.iter().map(|x| x * 1.01 + 0.01).collect())
        .collect::<Vec<_>>();
    let r1 = recall(&index, &queries, 1, &Filter::default());
    let r10 = recall(&index, &queries, 10, &Filter::default());
    assert!(r1 >= 0.98, "recall@1 {r1}");
    assert!(r10 >= 0.95, "recall@10 {r10}");
    let half = Filter {
        conditions: vec![Condition::TagIn {
            field: "parity".into(),
            values: vec!["1".into()],
        }],
    };
    let filtered = recall(&index, &queries, 10, &half);
    assert!(filtered >= 0.95, "filtered recall@10 {filtered}");
    // Every graph hit passes the filter.
    for q in &queries {
        for hit in index.search(q, 10, &half).unwrap() {
            let n: usize = hit.id[1..].parse().unwrap();
            assert_eq!(n % 2, 1, "{} does not pass the filter", hit.id);
        }
    }
}

#[test]
fn selective_filters_are_answered_exactly_even_with_a_graph() {
    let points = clustered(2000, 16, 3);
    let mut index = Index::with_config(16, small_graph());
    for (i, p) in points.iter().enumerate() {
        index.upsert(&format!("p{i}"), p, tagged(i)).unwrap();
    }
    let narrow = Filter {
        conditions: vec![Condition::Range {
            field: "n".into(),
            min: Some(100.0),
            max: Some(180.0),
        }],
    };
    let found = index
        .search_with(&points[5], 5, &narrow, SearchMode::Auto)
        .unwrap();
    assert!(found.exact, "81 passing vectors are scanned, not walked");
    let exact = index
        .search_with(&points[5], 5, &narrow, SearchMode::Exact)
        .unwrap();
    assert_eq!(found, exact);
}

#[test]
fn churn_compacts_and_keeps_exactly_the_live_vectors() {
    let points = clustered(3000, 16, 11);
    let mut index = Index::with_config(16, small_graph());
    for (i, p) in points.iter().enumerate() {
        index.upsert(&format!("p{i}"), p, tagged(i)).unwrap();
    }
    // Replace a third with new vectors, remove most of the rest: dead slots pile up and the
    // index rebuilds itself along the way.
    for i in (0..3000).step_by(3) {
        index
            .upsert(&format!("p{i}"), &points[(i + 1) % 3000], tagged(i))
            .unwrap();
    }
    for i in (0..3000).filter(|i| i % 3 != 0 && i % 10 != 1) {
        assert!(index.remove(&format!("p{i}")));
    }
    assert!(!index.remove("p2"), "already removed");
    let live: std::collections::BTreeSet<String> = (0..3000)
        .filter(|i| i % 3 == 0 || i % 10 == 1)
        .map(|i| format!("p{i}"))
        .collect();
    assert_eq!(index.len(), live.len());
    let all = index
        .search_with(&points[0], 5000, &Filter::default(), SearchMode::Exact)
        .unwrap();
    let got: std::collections::BTreeSet<String> = all.hits.into_iter().map(|h| h.id).collect();
    assert_eq!(got, live);
    // A replaced vector is found at its new place, with its metadata.
    let (_, meta) = index.get("p3").unwrap();
    assert_eq!(meta.numbers["n"], 3.0);
    let best = index.search(&points[4], 1, &Filter::default()).unwrap();
    assert_eq!(best[0].id, "p3");
}

fn metadata() -> impl Strategy<Value = Metadata> {
    (
        proptest::option::of(0usize..3),
        proptest::option::of(-5.0f64..5.0),
    )
        .prop_map(|(tag, n)| Metadata {
            tags: tag
                .map(|t| ("t".to_owned(), ["a", "b", "c"][t].to_owned()))
                .into_iter()
                .collect(),
            numbers: n.map(|n| ("x".to_owned(), n)).into_iter().collect(),
        })
}

fn condition() -> impl Strategy<Value = Condition> {
    prop_oneof![
        proptest::collection::vec(0usize..4, 0..3).prop_map(|vs| Condition::TagIn {
            field: "t".into(),
            values: vs
                .into_iter()
                .map(|v| ["a", "b", "c", "d"][v].to_owned())
                .collect(),
        }),
        (
            proptest::option::of(-6.0f64..6.0),
            proptest::option::of(-6.0f64..6.0),
            proptest::bool::ANY
        )
            .prop_map(|(min, max, other)| Condition::Range {
                field: if other { "y" } else { "x" }.into(),
                min,
                max,
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The columnar evaluation passes exactly the vectors the row-at-a-time definition passes,
    /// absent fields and open ranges included.
    #[test]
    fn columnar_filters_agree_with_matches(
        metas in proptest::collection::vec(metadata(), 1..40),
        conditions in proptest::collection::vec(condition(), 0..3),
        removed in proptest::collection::vec(0usize..40, 0..5),
    ) {
        let mut index = Index::new(2);
        for (i, m) in metas.iter().enumerate() {
            index.upsert(&format!("v{i:02}"), &[1.0, i as f32], m.clone()).unwrap();
        }
        for r in &removed {
            index.remove(&format!("v{r:02}"));
        }
        let filter = Filter { conditions };
        let got: std::collections::BTreeSet<String> = index
            .search(&[1.0, 0.0], 100, &filter).unwrap().into_iter().map(|h| h.id).collect();
        let want: std::collections::BTreeSet<String> = metas.iter().enumerate()
            .filter(|(i, m)| !removed.contains(i) && filter.matches(m))
            .map(|(i, _)| format!("v{i:02}"))
            .collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn non_finite_metadata_is_refused() {
    let mut index = Index::new(2);
    let meta = Metadata {
        numbers: [("price".to_owned(), f64::NAN)].into(),
        ..Metadata::default()
    };
    assert_eq!(
        index.upsert("a", &[1.0, 0.0], meta),
        Err(tollgate_vector::VectorError::NotFinite("price".into()))
    );
    assert!(index.is_empty());
}
