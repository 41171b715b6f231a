//! The index: vectors in contiguous slots, metadata by column, and, once the collection is large
//! enough, an HNSW graph over the same slots.
//!
//! A search evaluates its filter first (a bitset of the live slots that pass), then plans:
//! - few passing slots (or no graph yet): an exact scan of exactly those slots. Exact, and
//!   cheaper than a graph walk when the filter is selective;
//! - many passing slots: a graph walk that keeps only passing slots, with a wider beam the more
//!   the filter removes. Approximate (recall measured by `tollgate-bench vectors`).
//!
//! Removed or replaced vectors leave a dead slot behind (still a waypoint in the graph, never a
//! result); when dead slots outnumber live ones the index rebuilds itself from the live ones.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::bitset::Bitset;
use crate::filter::{Columns, Filter, Metadata};
use crate::graph::{Graph, Vectors};
use crate::{Hit, VectorError, compact, normalized};

/// Tuning of an [`Index`]; the defaults suit sentence embeddings (384–1536 dimensions).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexConfig {
    /// HNSW links per slot (twice as many on layer 0).
    pub m: usize,
    /// Beam width while building the graph.
    pub ef_construction: usize,
    /// Beam width while searching (at least `k`).
    pub ef_search: usize,
    /// The graph is built once the index holds this many vectors; below, every search is exact.
    pub graph_min_len: usize,
    /// A search whose filter passes at most this many vectors scans them exactly (at 384
    /// dimensions, about 0.4 ms on one core).
    pub exact_max: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            m: 16,
            ef_construction: 128,
            ef_search: 96,
            graph_min_len: 4096,
            exact_max: 6000,
        }
    }
}

/// How a search may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// Exact when that is cheap, the graph otherwise.
    #[default]
    Auto,
    /// Always an exact scan of the passing vectors.
    Exact,
}

/// What a search found, and whether it was exact.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Best first; ties broken by id.
    pub hits: Vec<Hit>,
    /// True when every passing vector was compared (the hits are the true top k).
    pub exact: bool,
}

/// A vector index with filters applied before ranking. See the module docs.
#[derive(Debug, Clone)]
pub struct Index {
    dim: usize,
    config: IndexConfig,
    /// `dim` normalized components per slot in half precision (binary16 bits; see
    /// `compact`), dead slots included.
    data: Vec<u16>,
    /// Per slot: its id (empty when dead) and metadata.
    ids: Vec<String>,
    meta: Vec<Metadata>,
    live: Bitset,
    slots: HashMap<String, usize>,
    columns: Columns,
    graph: Option<Graph>,
}

impl Index {
    /// An empty index of `dim`-dimensional vectors with the default tuning.
    pub fn new(dim: usize) -> Self {
        Index::with_config(dim, IndexConfig::default())
    }

    pub fn with_config(dim: usize, config: IndexConfig) -> Self {
        Index {
            dim,
            config,
            data: Vec::new(),
            ids: Vec::new(),
            meta: Vec::new(),
            live: Bitset::new(),
            slots: HashMap::new(),
            columns: Columns::default(),
            graph: None,
        }
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// True once searches may use the graph.
    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// The stored vector (normalized, within half precision) and metadata of `id`.
    pub fn get(&self, id: &str) -> Option<(Vec<f32>, &Metadata)> {
        self.slots
            .get(id)
            .map(|&slot| (compact::widen(self.row(slot)), &self.meta[slot]))
    }

    fn row(&self, slot: usize) -> &[u16] {
        &self.data[slot * self.dim..(slot + 1) * self.dim]
    }

    fn check_dim(&self, got: usize) -> Result<(), VectorError> {
        if got == self.dim {
            Ok(())
        } else {
            Err(VectorError::WrongDimension {
                expected: self.dim,
                got,
            })
        }
    }

    /// Adds `id` or replaces its vector and metadata.
    pub fn upsert(&mut self, id: &str, vector: &[f32], meta: Metadata) -> Result<(), VectorError> {
        self.check_dim(vector.len())?;
        if let Some((field, _)) = meta.numbers.iter().find(|(_, x)| !x.is_finite()) {
            return Err(VectorError::NotFinite(field.clone()));
        }
        let mut v = Vec::with_capacity(self.dim);
        compact::narrow(&normalized(vector)?, &mut v);
        if let Some(&slot) = self.slots.get(id) {
            if self.row(slot) == v.as_slice() {
                // Same vector: only the metadata changes, the graph stays as it is.
                self.columns.remove(slot, &self.meta[slot]);
                self.columns.insert(slot, &meta);
                self.meta[slot] = meta;
                return Ok(());
            }
            self.kill(slot);
        }
        let slot = self.ids.len();
        self.data.extend_from_slice(&v);
        self.ids.push(id.to_owned());
        self.columns.insert(slot, &meta);
        self.meta.push(meta);
        self.live.insert(slot);
        self.slots.insert(id.to_owned(), slot);
        let vectors = Vectors {
            data: &self.data,
            dim: self.dim,
        };
        match &mut self.graph {
            Some(graph) => graph.insert(vectors, slot as u32),
            None if self.slots.len() >= self.config.graph_min_len => self.build_graph(),
            None => {}
        }
        self.compact_if_mostly_dead();
        Ok(())
    }

    /// Removes `id`; false when it was not there.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(&slot) = self.slots.get(id) else {
            return false;
        };
        self.kill(slot);
        self.compact_if_mostly_dead();
        true
    }

    fn kill(&mut self, slot: usize) {
        let id = std::mem::take(&mut self.ids[slot]);
        self.slots.remove(&id);
        self.live.remove(slot);
        let meta = std::mem::take(&mut self.meta[slot]);
        self.columns.remove(slot, &meta);
    }

    fn build_graph(&mut self) {
        let mut graph = Graph::new(self.config.m, self.config.ef_construction);
        let vectors = Vectors {
            data: &self.data,
            dim: self.dim,
        };
        for slot in 0..self.ids.len() {
            graph.insert(vectors, slot as u32);
        }
        self.graph = Some(graph);
    }

    /// Rebuilds from the live slots when dead ones outnumber them (amortized: a rebuild of n
    /// vectors follows at least n removals).
    fn compact_if_mostly_dead(&mut self) {
        let dead = self.ids.len() - self.len();
        if dead < 1024 || dead <= self.len() {
            return;
        }
        let mut fresh = Index::with_config(self.dim, self.config.clone());
        for slot in self.live.iter() {
            let start = slot * self.dim;
            fresh
                .data
                .extend_from_slice(&self.data[start..start + self.dim]);
            let new_slot = fresh.ids.len();
            fresh.ids.push(std::mem::take(&mut self.ids[slot]));
            fresh.columns.insert(new_slot, &self.meta[slot]);
            fresh.meta.push(std::mem::take(&mut self.meta[slot]));
            fresh.live.insert(new_slot);
            fresh.slots.insert(fresh.ids[new_slot].clone(), new_slot);
        }
        if fresh.len() >= fresh.config.graph_min_len {
            fresh.build_graph();
        }
        *self = fresh;
    }

    /// The `k` vectors most similar to `query` (cosine) among those passing `filter`.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, VectorError> {
        Ok(self.search_with(query, k, filter, SearchMode::Auto)?.hits)
    }

    /// [`Index::search`] with a chosen mode, telling whether the answer is exact.
    pub fn search_with(
        &self,
        query: &[f32],
        k: usize,
        filter: &Filter,
        mode: SearchMode,
    ) -> Result<Found, VectorError> {
        self.check_dim(query.len())?;
        let q = normalized(query)?;
        if k == 0 {
            return Ok(Found {
                hits: Vec::new(),
                exact: true,
            });
        }
        let filtered;
        let pass = if filter.conditions.is_empty() {
            &self.live
        } else {
            filtered = self.columns.evaluate(filter, &self.live);
            &filtered
        };
        let passing = pass.len();
        let graph = match &self.graph {
            Some(graph) if mode == SearchMode::Auto && passing > self.config.exact_max => graph,
            _ => {
                return Ok(Found {
                    hits: self.scan(&q, k, pass),
                    exact: true,
                });
            }
        };
        // The walk keeps going until it holds `ef` passing slots, so a filter costs visits, not
        // recall. A wider beam for sparse filters was measured and costs more than it gains.
        let ef = self.config.ef_search.max(k);
        let vectors = Vectors {
            data: &self.data,
            dim: self.dim,
        };
        let near = graph.search(vectors, &q, ef, |slot| pass.contains(slot as usize));
        let mut hits: Vec<Hit> = near
            .into_iter()
            .map(|n| Hit {
                id: self.ids[n.slot as usize].clone(),
                score: -n.distance,
            })
            .collect();
        hits.sort_by(rank);
        hits.truncate(k);
        Ok(Found { hits, exact: false })
    }

    /// Exact top `k` among `pass`, keeping only k candidates at a time.
    fn scan(&self, q: &[f32], k: usize, pass: &Bitset) -> Vec<Hit> {
        let mut worst_first: BinaryHeap<Candidate<'_>> = BinaryHeap::with_capacity(k + 1);
        for slot in pass.iter() {
            let c = Candidate {
                score: compact::dot(q, self.row(slot)),
                id: &self.ids[slot],
            };
            if worst_first.len() < k {
                worst_first.push(c);
            } else if worst_first.peek().is_some_and(|w| c < *w) {
                worst_first.pop();
                worst_first.push(c);
            }
        }
        worst_first
            .into_sorted_vec()
            .into_iter()
            .map(|c| Hit {
                id: c.id.to_owned(),
                score: c.score,
            })
            .collect()
    }
}

/// Best first: higher score, then smaller id.
fn rank(a: &Hit, b: &Hit) -> Ordering {
    b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id))
}

/// Ordered worst last: `a < b` when `a` ranks before `b`.
struct Candidate<'a> {
    score: f32,
    id: &'a str,
}

impl Ord for Candidate<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then_with(|| self.id.cmp(other.id))
    }
}

impl PartialOrd for Candidate<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate<'_> {}
