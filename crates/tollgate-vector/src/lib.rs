//! In-process vector search: the index engine behind vector collections and the semantic cache.
//! Pure computation: no Redis, no async, no I/O (Redis stays the source of truth; callers rebuild
//! an index from it).
//!
//! [`FlatIndex`] is exact: cosine similarity over every vector that passes the filter, best
//! first. Filters apply *before* ranking, so a filtered search never comes back short because
//! the nearest vectors happened to be filtered out. It is also the oracle that approximate
//! indexes are tested against.

use std::collections::{BTreeMap, HashMap};

/// Metadata a vector carries, for filtering.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// Tag fields: exact-match filters (`lang = "en"`).
    pub tags: BTreeMap<String, String>,
    /// Numeric fields: range filters (`price in [10, 20]`).
    pub numbers: BTreeMap<String, f64>,
}

/// One condition of a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The tag equals one of the values.
    TagIn { field: String, values: Vec<String> },
    /// The number lies in `[min, max]` (either bound optional).
    Range {
        field: String,
        min: Option<f64>,
        max: Option<f64>,
    },
}

/// All conditions must hold (an empty filter passes everything).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub conditions: Vec<Condition>,
}

impl Filter {
    /// True when `meta` satisfies every condition.
    pub fn matches(&self, meta: &Metadata) -> bool {
        self.conditions.iter().all(|c| match c {
            Condition::TagIn { field, values } => {
                meta.tags.get(field).is_some_and(|v| values.contains(v))
            }
            Condition::Range { field, min, max } => meta
                .numbers
                .get(field)
                .is_some_and(|x| min.is_none_or(|m| *x >= m) && max.is_none_or(|m| *x <= m)),
        })
    }
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    /// Cosine similarity, in [-1, 1].
    pub score: f32,
}

/// Why a vector cannot be indexed or searched with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VectorError {
    /// Its length is not the index's dimension.
    WrongDimension { expected: usize, got: usize },
    /// All zeros, or not finite: it has no direction.
    NoDirection,
}

impl std::fmt::Display for VectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VectorError::WrongDimension { expected, got } => {
                write!(f, "expected {expected} dimensions, got {got}")
            }
            VectorError::NoDirection => f.write_str("the vector is zero or not finite"),
        }
    }
}

impl std::error::Error for VectorError {}

/// Scales `v` to unit length (cosine becomes a dot product).
fn normalized(v: &[f32]) -> Result<Vec<f32>, VectorError> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(VectorError::NoDirection);
    }
    Ok(v.iter().map(|x| x / norm).collect())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four independent sums let the compiler vectorize the loop.
    let mut s = [0.0f32; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            s[i] += x[i] * y[i];
        }
    }
    s[0] + s[1] + s[2] + s[3] + tail
}

/// Exact search over every vector: vectors stored contiguously, one slot per id.
#[derive(Debug, Clone)]
pub struct FlatIndex {
    dim: usize,
    data: Vec<f32>,
    ids: Vec<String>,
    meta: Vec<Metadata>,
    slots: HashMap<String, usize>,
}

impl FlatIndex {
    /// An empty index of `dim`-dimensional vectors.
    pub fn new(dim: usize) -> Self {
        FlatIndex {
            dim,
            data: Vec::new(),
            ids: Vec::new(),
            meta: Vec::new(),
            slots: HashMap::new(),
        }
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Adds `id` or replaces its vector and metadata.
    pub fn upsert(&mut self, id: &str, vector: &[f32], meta: Metadata) -> Result<(), VectorError> {
        if vector.len() != self.dim {
            return Err(VectorError::WrongDimension {
                expected: self.dim,
                got: vector.len(),
            });
        }
        let v = normalized(vector)?;
        match self.slots.get(id) {
            Some(&slot) => {
                self.data[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(&v);
                self.meta[slot] = meta;
            }
            None => {
                self.slots.insert(id.to_owned(), self.ids.len());
                self.ids.push(id.to_owned());
                self.data.extend_from_slice(&v);
                self.meta.push(meta);
            }
        }
        Ok(())
    }

    /// Removes `id`; false when it was not there. The last slot moves into the hole (O(dim)).
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(slot) = self.slots.remove(id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        if slot != last {
            let (d, moved) = (self.dim, self.ids[last].clone());
            self.data.copy_within(last * d..(last + 1) * d, slot * d);
            self.ids.swap(slot, last);
            self.meta.swap(slot, last);
            self.slots.insert(moved, slot);
        }
        self.data.truncate(last * self.dim);
        self.ids.pop();
        self.meta.pop();
        true
    }

    /// The `k` vectors most similar to `query` among those passing `filter`, best first (ties
    /// broken by id, so results are deterministic).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, VectorError> {
        if query.len() != self.dim {
            return Err(VectorError::WrongDimension {
                expected: self.dim,
                got: query.len(),
            });
        }
        let q = normalized(query)?;
        let mut scored: Vec<(f32, usize)> = (0..self.ids.len())
            .filter(|&i| filter.matches(&self.meta[i]))
            .map(|i| (dot(&q, &self.data[i * self.dim..(i + 1) * self.dim]), i))
            .collect();
        let by_rank = |a: &(f32, usize), b: &(f32, usize)| {
            b.0.total_cmp(&a.0)
                .then_with(|| self.ids[a.1].cmp(&self.ids[b.1]))
        };
        if scored.len() > k && k > 0 {
            scored.select_nth_unstable_by(k - 1, by_rank);
            scored.truncate(k);
        }
        scored.sort_by(by_rank);
        scored.truncate(k);
        Ok(scored
            .into_iter()
            .map(|(score, i)| Hit {
                id: self.ids[i].clone(),
                score,
            })
            .collect())
    }
}
