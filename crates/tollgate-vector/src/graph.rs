//! HNSW (Malkov & Yashunin, 2016): a layered proximity graph over the index's slots, searched
//! greedily from the top layer down. Only links live here; the vectors stay in the index's
//! contiguous slot array ([`Vectors`]).
//!
//! Invariants: a slot is in the graph once, at the level drawn when it was inserted; removed
//! slots stay in the graph as waypoints (their links still route searches) and are kept out of
//! results by the caller's `accept`. Deterministic: levels come from a seeded generator, so the
//! same inserts build the same graph.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::compact;

/// Slot vectors, `dim` each, normalized (so closeness is a dot product), in half precision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vectors<'a> {
    pub(crate) data: &'a [u16],
    pub(crate) dim: usize,
}

impl Vectors<'_> {
    /// A slot's vector as stored.
    fn stored(&self, slot: u32) -> &[u16] {
        let start = slot as usize * self.dim;
        &self.data[start..start + self.dim]
    }

    /// A slot's vector, widened to query with.
    fn row(&self, slot: u32) -> Vec<f32> {
        compact::widen(self.stored(slot))
    }

    /// Distance as the graph sees it: lower is closer (minus the cosine).
    fn distance(&self, query: &[f32], slot: u32) -> f32 {
        -compact::dot(query, self.stored(slot))
    }
}

/// A slot at a distance; ordered by distance, then slot (a total order, so heaps are
/// deterministic).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Near {
    pub(crate) distance: f32,
    pub(crate) slot: u32,
}

impl Eq for Near {}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.slot.cmp(&other.slot))
    }
}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

thread_local! {
    /// Visit marks for one search at a time on this thread: `marks[slot] == epoch` means visited.
    /// Bumping the epoch clears every mark in O(1).
    static VISITED: RefCell<(Vec<u32>, u32)> = const { RefCell::new((Vec::new(), 0)) };
}

#[derive(Debug, Clone)]
pub(crate) struct Graph {
    /// Links per slot on the upper layers.
    m: usize,
    /// Links per slot on layer 0 (2·m, as the paper advises).
    m0: usize,
    ef_construction: usize,
    level_mult: f64,
    /// Layer 0, `m0 + 1` words a slot: the count, then the neighbours.
    layer0: Vec<u32>,
    /// Layers 1.. of each slot (empty for the ~94% of slots that live on layer 0 only).
    upper: Vec<Vec<Vec<u32>>>,
    /// The entry point and its level.
    entry: Option<(u32, usize)>,
    rng: u64,
}

impl Graph {
    pub(crate) fn new(m: usize, ef_construction: usize) -> Self {
        let m = m.max(2);
        Graph {
            m,
            m0: 2 * m,
            ef_construction: ef_construction.max(m),
            level_mult: 1.0 / (m as f64).ln(),
            layer0: Vec::new(),
            upper: Vec::new(),
            entry: None,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn links(&self, slot: u32, level: usize) -> &[u32] {
        if level == 0 {
            let start = slot as usize * (self.m0 + 1);
            let count = self.layer0[start] as usize;
            &self.layer0[start + 1..start + 1 + count]
        } else {
            &self.upper[slot as usize][level - 1]
        }
    }

    fn set_links(&mut self, slot: u32, level: usize, links: &[u32]) {
        if level == 0 {
            let start = slot as usize * (self.m0 + 1);
            self.layer0[start] = links.len() as u32;
            self.layer0[start + 1..start + 1 + links.len()].copy_from_slice(links);
        } else {
            let list = &mut self.upper[slot as usize][level - 1];
            list.clear();
            list.extend_from_slice(links);
        }
    }

    /// A level drawn from the geometric distribution `floor(-ln(U) · 1/ln(m))` (xorshift64*).
    fn draw_level(&mut self) -> usize {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let bits = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        let uniform = (bits as f64 + 1.0) / (1u64 << 53) as f64;
        ((-uniform.ln() * self.level_mult) as usize).min(16)
    }

    /// Adds `slot`, whose vector is already in `vectors`.
    pub(crate) fn insert(&mut self, vectors: Vectors<'_>, slot: u32) {
        let level = self.draw_level();
        let needed = (slot as usize + 1) * (self.m0 + 1);
        if self.layer0.len() < needed {
            self.layer0.resize(needed, 0);
        }
        if self.upper.len() <= slot as usize {
            self.upper.resize(slot as usize + 1, Vec::new());
        }
        self.upper[slot as usize] = vec![Vec::new(); level];
        let Some((entry, top)) = self.entry else {
            self.entry = Some((slot, level));
            return;
        };
        let query = vectors.row(slot);
        let query = query.as_slice();
        let mut nearest = Near {
            distance: vectors.distance(query, entry),
            slot: entry,
        };
        for l in (level + 1..=top).rev() {
            nearest = self.greedy(vectors, query, nearest, l);
        }
        let mut entries = vec![nearest];
        for l in (0..=level.min(top)).rev() {
            let found =
                self.search_layer(vectors, query, &entries, self.ef_construction, l, |_| true);
            let chosen = self.select(vectors, &found, self.m);
            self.set_links(slot, l, &chosen);
            let cap = if l == 0 { self.m0 } else { self.m };
            for &neighbour in &chosen {
                self.connect(vectors, neighbour, slot, l, cap);
            }
            entries = found;
        }
        if level > top {
            self.entry = Some((slot, level));
        }
    }

    /// Links `from` to `to` on `level`, pruning `from`'s links back to `cap` with the same
    /// heuristic when full.
    fn connect(&mut self, vectors: Vectors<'_>, from: u32, to: u32, level: usize, cap: usize) {
        let current = self.links(from, level);
        if current.len() < cap {
            let mut links = current.to_vec();
            links.push(to);
            self.set_links(from, level, &links);
            return;
        }
        let base = vectors.row(from);
        let mut candidates: Vec<Near> = current
            .iter()
            .chain(std::iter::once(&to))
            .map(|&s| Near {
                distance: vectors.distance(&base, s),
                slot: s,
            })
            .collect();
        candidates.sort();
        let kept = self.select(vectors, &candidates, cap);
        self.set_links(from, level, &kept);
    }

    /// The paper's neighbour heuristic: take candidates nearest first, keeping one only when it
    /// is closer to the base than to every one kept, so links spread in all directions.
    /// `candidates` are sorted nearest first.
    fn select(&self, vectors: Vectors<'_>, candidates: &[Near], m: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        // One buffer for every candidate compared (the first is kept with nothing to compare).
        let mut row = Vec::new();
        for c in candidates {
            if kept.len() >= m {
                break;
            }
            if !kept.is_empty() {
                compact::widen_into(vectors.stored(c.slot), &mut row);
                if !kept.iter().all(|&k| vectors.distance(&row, k) > c.distance) {
                    continue;
                }
            }
            kept.push(c.slot);
        }
        kept
    }

    fn greedy(&self, vectors: Vectors<'_>, query: &[f32], mut nearest: Near, level: usize) -> Near {
        loop {
            let mut moved = false;
            for &s in self.links(nearest.slot, level) {
                let distance = vectors.distance(query, s);
                if distance < nearest.distance {
                    nearest = Near { distance, slot: s };
                    moved = true;
                }
            }
            if !moved {
                return nearest;
            }
        }
    }

    /// Best-first search of one layer keeping the `ef` nearest *accepted* slots (others are
    /// walked through but not kept). Returns them nearest first.
    fn search_layer(
        &self,
        vectors: Vectors<'_>,
        query: &[f32],
        entries: &[Near],
        ef: usize,
        level: usize,
        accept: impl Fn(u32) -> bool,
    ) -> Vec<Near> {
        VISITED.with(|cell| {
            let mut visited = cell.borrow_mut();
            let (marks, epoch) = &mut *visited;
            let slots = self.upper.len();
            if marks.len() < slots {
                marks.resize(slots, 0);
            }
            *epoch = epoch.wrapping_add(1);
            if *epoch == 0 {
                marks.fill(0);
                *epoch = 1;
            }
            let epoch = *epoch;
            let mut candidates: BinaryHeap<Reverse<Near>> = BinaryHeap::new();
            let mut kept: BinaryHeap<Near> = BinaryHeap::new();
            for &e in entries {
                marks[e.slot as usize] = epoch;
                candidates.push(Reverse(e));
                if accept(e.slot) {
                    kept.push(e);
                }
            }
            while kept.len() > ef {
                kept.pop();
            }
            while let Some(Reverse(c)) = candidates.pop() {
                if kept.len() >= ef && kept.peek().is_some_and(|w| c.distance > w.distance) {
                    break;
                }
                for &s in self.links(c.slot, level) {
                    let mark = &mut marks[s as usize];
                    if *mark == epoch {
                        continue;
                    }
                    *mark = epoch;
                    let distance = vectors.distance(query, s);
                    if kept.len() < ef || kept.peek().is_some_and(|w| distance < w.distance) {
                        let near = Near { distance, slot: s };
                        candidates.push(Reverse(near));
                        if accept(s) {
                            kept.push(near);
                            if kept.len() > ef {
                                kept.pop();
                            }
                        }
                    }
                }
            }
            kept.into_sorted_vec()
        })
    }

    /// The `ef` nearest accepted slots to `query`, nearest first.
    pub(crate) fn search(
        &self,
        vectors: Vectors<'_>,
        query: &[f32],
        ef: usize,
        accept: impl Fn(u32) -> bool,
    ) -> Vec<Near> {
        let Some((entry, top)) = self.entry else {
            return Vec::new();
        };
        let mut nearest = Near {
            distance: vectors.distance(query, entry),
            slot: entry,
        };
        for l in (1..=top).rev() {
            nearest = self.greedy(vectors, query, nearest, l);
        }
        self.search_layer(vectors, query, &[nearest], ef, 0, accept)
    }
}
