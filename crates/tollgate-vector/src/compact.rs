//! Vectors as the index keeps them: half-precision floats (IEEE 754 binary16), half the memory
//! of `f32`. A normalized vector's components are at most 1 in size, where binary16 keeps 11
//! significant bits: each is within 2⁻¹¹ of itself relative, and a dot product of two unit
//! vectors moves by about 1e-5 (measured in the tests), far below any threshold's step.
//! Queries stay `f32`; a stored component is widened as it is multiplied, in `f32`.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// `v` as binary16 bits, rounded to nearest.
pub(crate) fn narrow(v: &[f32], out: &mut Vec<u16>) {
    out.extend(v.iter().map(|&x| f16::from_f32(x).to_bits()));
}

/// A stored row back as `f32`.
pub(crate) fn widen(row: &[u16]) -> Vec<f32> {
    let mut out = Vec::new();
    widen_into(row, &mut out);
    out
}

/// [`widen`] into `out`, its allocation reused.
pub(crate) fn widen_into(row: &[u16], out: &mut Vec<f32>) {
    out.resize(row.len(), 0.0);
    f16_slice(row).convert_to_f32_slice(out);
}

/// `q · row`, each stored component widened as it is multiplied (by [`widen_one`], which the
/// compiler vectorizes with the products: no call per block, no buffer). The loop is
/// `crate::dot`'s on purpose: one generic loop with the widening passed in counted the same
/// instructions under valgrind but built graphs 25% slower on the CPU.
pub(crate) fn dot(q: &[f32], row: &[u16]) -> f32 {
    const LANES: usize = 16;
    let mut sums = [0.0f32; LANES];
    let (cq, cr) = (q.chunks_exact(LANES), row.chunks_exact(LANES));
    let tail: f32 = cq
        .remainder()
        .iter()
        .zip(cr.remainder())
        .map(|(x, &h)| x * widen_one(h))
        .sum();
    for (x, h) in cq.zip(cr) {
        for i in 0..LANES {
            sums[i] += x[i] * widen_one(h[i]);
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// One binary16 component as `f32`, without branches: its exponent and mantissa moved into
/// place and rescaled by 2¹¹² (the two formats' exponent biases apart), which also turns its
/// subnormals into normal `f32`s, then its sign. Infinities and NaNs come out wrong, and a
/// normalized vector has none.
#[inline(always)]
fn widen_one(h: u16) -> f32 {
    const RESCALE: f32 = 5.192_297e33; // 2^112
    let h = u32::from(h);
    let magnitude = f32::from_bits((h & 0x7fff) << 13) * RESCALE;
    f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
}

fn f16_slice(bits: &[u16]) -> &[f16] {
    bits.reinterpret_cast::<f16>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vectors of `dim` from a fixed generator (xorshift), components as sentence
    /// embeddings have them: spread around zero.
    fn unit_vectors(n: usize, dim: usize) -> Vec<Vec<f32>> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..n)
            .map(|_| {
                let v: Vec<f32> = (0..dim).map(|_| next()).collect();
                crate::normalized(&v).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_similarity_in_half_precision_is_within_1e_4_of_full() {
        let vectors = unit_vectors(200, 384);
        let (mut worst, mut total, mut pairs) = (0.0f32, 0.0f64, 0);
        for a in &vectors {
            let mut stored = Vec::new();
            narrow(a, &mut stored);
            for b in &vectors {
                let error = (dot(b, &stored) - crate::dot(b, a)).abs();
                worst = worst.max(error);
                total += f64::from(error);
                pairs += 1;
            }
        }
        let mean = total / f64::from(pairs);
        assert!(worst < 1e-4, "worst {worst}");
        assert!(mean < 2e-5, "mean {mean}");
    }

    #[test]
    fn every_finite_half_widens_as_the_standard_conversion_does() {
        for bits in 0..=u16::MAX {
            let want = f16::from_bits(bits);
            if want.is_finite() {
                assert_eq!(
                    widen_one(bits).to_bits(),
                    want.to_f32().to_bits(),
                    "{bits:#06x}"
                );
            }
        }
    }

    #[test]
    fn a_row_comes_back_within_half_precision_and_any_length_works() {
        for dim in [1, 3, 63, 64, 65, 384, 1536] {
            let v = &unit_vectors(1, dim)[0];
            let mut stored = Vec::new();
            narrow(v, &mut stored);
            assert_eq!(stored.len(), dim);
            for (x, y) in v.iter().zip(widen(&stored)) {
                assert!((x - y).abs() <= x.abs() / 2048.0 + 1e-7, "{x} {y}");
            }
            assert!((dot(v, &stored) - 1.0).abs() < 1e-3, "{dim}");
        }
    }
}
