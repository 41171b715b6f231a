//! The index against a naive filter-then-rank written independently.

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

use proptest::prelude::*;
use tollgate_vector::{Condition, Filter, Index, Metadata, VectorError};

fn meta(lang: &str, price: f64) -> Metadata {
    Metadata {
        tags: [("lang".to_owned(), lang.to_owned())].into(),
        numbers: [("price".to_owned(), price)].into(),
    }
}

/// Cosine of two raw vectors, in f64, and a filter evaluated by hand: the top `k` (id and
/// cosine), best first.
fn naive(
    items: &[(String, Vec<f32>, String, f64)],
    q: &[f32],
    k: usize,
    langs: &[&str],
    range: (f64, f64),
) -> Vec<(String, f64)> {
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let mut scored: Vec<(f64, &String)> = items
        .iter()
        .filter(|(_, _, lang, price)| {
            langs.contains(&lang.as_str()) && *price >= range.0 && *price <= range.1
        })
        .map(|(id, v, _, _)| {
            let dot: f64 = v
                .iter()
                .zip(q)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            (dot / (norm(v) * norm(q)), id)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(k)
        .map(|(score, id)| (id.clone(), score))
        .collect()
}

fn vector(dim: usize) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(-1.0f32..1.0, dim)
        .prop_filter("has a direction", |v| v.iter().any(|x| x.abs() > 1e-3))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn filtered_search_returns_exactly_what_filter_then_rank_returns(
        vectors in proptest::collection::vec((vector(8), 0usize..3, 0.0f64..100.0), 1..60),
        q in vector(8),
        k in 1usize..12,
        lo in 0.0f64..60.0,
        width in 0.0f64..100.0,
        langs_mask in 1u8..8,
    ) {
        let names = ["en", "fr", "de"];
        let mut index = Index::new(8);
        let mut items = Vec::new();
        for (i, (v, lang, price)) in vectors.into_iter().enumerate() {
            let id = format!("v{i:03}");
            index.upsert(&id, &v, meta(names[lang], price)).unwrap();
            items.push((id, v, names[lang].to_owned(), price));
        }
        let langs: Vec<&str> = names.iter().enumerate().filter(|(i, _)| langs_mask & (1 << i) != 0).map(|(_, n)| *n).collect();
        let filter = Filter { conditions: vec![
            Condition::TagIn { field: "lang".into(), values: langs.iter().map(|s| s.to_string()).collect() },
            Condition::Range { field: "price".into(), min: Some(lo), max: Some(lo + width) },
        ]};
        let got: Vec<String> = index.search(&q, k, &filter).unwrap().into_iter().map(|h| h.id).collect();
        let want = naive(&items, &q, k, &langs, (lo, lo + width));
        let want_ids: Vec<String> = want.iter().map(|(id, _)| id.clone()).collect();
        // The index keeps vectors in half precision (a cosine moves by at most 2⁻¹¹), so scores
        // that near may rank either way: the same number of hits, and any hit outside the exact
        // top k scores within that of the k-th.
        prop_assert_eq!(got.len(), want.len());
        if got != want_ids {
            let kth = want.last().map_or(0.0, |(_, s)| *s);
            let all = naive(&items, &q, items.len(), &langs, (lo, lo + width));
            for id in got.iter().filter(|id| !want_ids.contains(id)) {
                let score = all.iter().find(|(i, _)| i == id).map(|(_, s)| *s).unwrap();
                prop_assert!(kth - score < 1e-3, "{} at {} below the k-th {}", id, score, kth);
            }
        }
    }

    #[test]
    fn removal_forgets_exactly_the_removed(n in 2usize..40, remove in proptest::collection::vec(0usize..40, 0..20)) {
        let mut index = Index::new(4);
        for i in 0..n {
            index.upsert(&format!("v{i}"), &[i as f32 + 1.0, 1.0, 0.5, -0.5], Metadata::default()).unwrap();
        }
        let mut alive: std::collections::BTreeSet<String> = (0..n).map(|i| format!("v{i}")).collect();
        for r in remove {
            let id = format!("v{r}");
            prop_assert_eq!(index.remove(&id), alive.remove(&id));
        }
        let all: std::collections::BTreeSet<String> = index.search(&[1.0, 0.0, 0.0, 0.0], 1000, &Filter::default()).unwrap().into_iter().map(|h| h.id).collect();
        prop_assert_eq!(all, alive);
    }
}

#[test]
fn upserts_replace_and_bad_vectors_are_refused() {
    let mut index = Index::new(3);
    index
        .upsert("a", &[1.0, 0.0, 0.0], Metadata::default())
        .unwrap();
    index
        .upsert("b", &[0.0, 1.0, 0.0], Metadata::default())
        .unwrap();
    assert_eq!(
        index
            .search(&[1.0, 0.1, 0.0], 1, &Filter::default())
            .unwrap()[0]
            .id,
        "a"
    );
    index
        .upsert("a", &[0.0, 0.0, 1.0], Metadata::default())
        .unwrap();
    assert_eq!(index.len(), 2);
    assert_eq!(
        index
            .search(&[1.0, 0.1, 0.0], 1, &Filter::default())
            .unwrap()[0]
            .id,
        "b"
    );
    assert_eq!(
        index.upsert("c", &[1.0, 2.0], Metadata::default()),
        Err(VectorError::WrongDimension {
            expected: 3,
            got: 2
        })
    );
    assert_eq!(
        index.upsert("c", &[0.0, 0.0, 0.0], Metadata::default()),
        Err(VectorError::NoDirection)
    );
    assert_eq!(
        index.upsert("c", &[f32::NAN, 0.0, 1.0], Metadata::default()),
        Err(VectorError::NoDirection)
    );
    assert!(index.search(&[1.0], 1, &Filter::default()).is_err());
    let score = index
        .search(&[0.0, 2.0, 0.0], 1, &Filter::default())
        .unwrap()[0]
        .score;
    assert!(
        (score - 1.0).abs() < 1e-6,
        "cosine, not a raw dot product: {score}"
    );
}
