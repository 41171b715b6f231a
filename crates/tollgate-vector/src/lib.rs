//! In-process vector search: the index engine behind vector collections and the semantic cache.
//! Pure computation: no Redis, no async, no I/O (Redis stays the source of truth; callers rebuild
//! an index from it).
//!
//! # Layout
//! - [`Index`] (`index`): slots, the search planner, the exact scan.
//! - `compact`: the vectors as the index keeps them, in half precision.
//! - `filter`: [`Metadata`], [`Filter`], and their columnar evaluation into a bitset.
//! - `graph`: HNSW over the index's slots, walked with the filter's bitset.
//!
//! Filters apply *before* ranking, on either path, so a filtered search never comes back short
//! because the nearest vectors happened to be filtered out. Similarity is cosine: vectors are
//! normalized when stored, so it is a dot product. Stored vectors take half the memory of
//! `f32` (binary16; a similarity moves by about 1e-5, see `compact`).

mod bitset;
mod compact;
mod filter;
mod graph;
mod index;

pub use filter::{Condition, Filter, Metadata};
pub use index::{Found, Index, IndexConfig, SearchMode};

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
    /// A numeric metadata field (named) is NaN or infinite.
    NotFinite(String),
}

impl std::fmt::Display for VectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VectorError::WrongDimension { expected, got } => {
                write!(f, "expected {expected} dimensions, got {got}")
            }
            VectorError::NoDirection => f.write_str("the vector is zero or not finite"),
            VectorError::NotFinite(field) => write!(f, "metadata number {field} is not finite"),
        }
    }
}

impl std::error::Error for VectorError {}

/// Scales `v` to unit length (cosine becomes a dot product).
pub fn normalized(v: &[f32]) -> Result<Vec<f32>, VectorError> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(VectorError::NoDirection);
    }
    Ok(v.iter().map(|x| x / norm).collect())
}

/// The dot product. Sixteen independent sums keep several vector registers busy without
/// depending on one another, whatever width the target's SIMD has.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut sums = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            sums[i] += x[i] * y[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}
