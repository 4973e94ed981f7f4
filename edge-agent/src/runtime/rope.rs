//! Rotary position embedding, llama.cpp "normal" (interleaved-pair) mode.
//!
//! For each pair `i in 0..head_dim/2`, `(x[2i], x[2i+1])` is rotated by the angle
//! `pos · scale · theta^(-2i/head_dim) / factor_i` (`scale` and `factor` from RoPE scaling,
//! both 1 without it, as llama.cpp computes them). Angles are computed in f64 and stored as f32
//! cos/sin tables.

use super::kv_cache::KvError;

/// Precomputed cos/sin tables for positions `0..max_positions`; later positions are computed on
/// the fly (same f64 formula, slower), so no position is ever rejected.
#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    /// Angle per position of each pair.
    freqs: Vec<f64>,
    max_positions: usize,
    /// `[pos][head_dim / 2]`
    cos: Vec<f32>,
    /// `[pos][head_dim / 2]`
    sin: Vec<f32>,
}

impl Rope {
    /// Builds tables for `head_dim` (even, > 0) and base `theta` (finite, > 0), e.g.
    /// `Rope::new(64, 1e5, 8192)` for SmolLM2-135M.
    pub fn new(head_dim: usize, theta: f64, max_positions: usize) -> Result<Rope, KvError> {
        Rope::scaled(head_dim, theta, 1.0, &[], max_positions)
    }

    /// [`Rope::new`] with RoPE scaling: positions multiplied by `scale` (linear scaling) and
    /// pair `i`'s frequency divided by `factors[i]` (Llama 3; empty: none).
    pub fn scaled(
        head_dim: usize,
        theta: f64,
        scale: f64,
        factors: &[f32],
        max_positions: usize,
    ) -> Result<Rope, KvError> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(KvError::BadRope("head_dim must be even and non-zero"));
        }
        if !(theta.is_finite() && theta > 0.0) {
            return Err(KvError::BadRope("theta must be finite and positive"));
        }
        if !(scale.is_finite() && scale > 0.0) {
            return Err(KvError::BadRope("scale must be finite and positive"));
        }
        let half = head_dim / 2;
        if !factors.is_empty()
            && (factors.len() != half || factors.iter().any(|f| !(f.is_finite() && *f > 0.0)))
        {
            return Err(KvError::BadRope(
                "frequency factors must be one finite positive value per pair",
            ));
        }
        let freqs: Vec<f64> = (0..half)
            .map(|i| {
                let f = theta.powf(-2.0 * i as f64 / head_dim as f64) * scale;
                factors.get(i).map_or(f, |&d| f / d as f64)
            })
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for f in &freqs {
                let (s, c) = (pos as f64 * f).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        Ok(Rope {
            head_dim,
            freqs,
            max_positions,
            cos,
            sin,
        })
    }

    /// Head dimension the tables were built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Rotates `x` (`[S, n_heads * head_dim]`) in place; row `s` is at position `pos_start + s`.
    ///
    /// Fails if `head_dim` differs from the tables' or `x` is not a whole number of rows.
    pub fn apply(
        &self,
        x: &mut [f32],
        n_heads: usize,
        head_dim: usize,
        pos_start: usize,
    ) -> Result<(), KvError> {
        if head_dim != self.head_dim {
            return Err(KvError::LengthMismatch {
                what: "rope head_dim",
                expected: self.head_dim,
                got: head_dim,
            });
        }
        let width = n_heads * head_dim;
        if width == 0 || !x.len().is_multiple_of(width) {
            return Err(KvError::NotRowMultiple {
                what: "rope input",
                len: x.len(),
                width,
            });
        }
        let half = head_dim / 2;
        let mut cos_buf = Vec::new();
        let mut sin_buf = Vec::new();
        for (s, row) in x.chunks_exact_mut(width).enumerate() {
            let pos = pos_start + s;
            let (cos, sin) = if pos < self.max_positions {
                (
                    &self.cos[pos * half..][..half],
                    &self.sin[pos * half..][..half],
                )
            } else {
                cos_buf.clear();
                sin_buf.clear();
                for f in &self.freqs {
                    let (sn, cs) = (pos as f64 * f).sin_cos();
                    cos_buf.push(cs as f32);
                    sin_buf.push(sn as f32);
                }
                (&cos_buf[..], &sin_buf[..])
            };
            for head in row.chunks_exact_mut(head_dim) {
                let (pairs, _) = head.as_chunks_mut::<2>();
                for ((p, &c), &s) in pairs.iter_mut().zip(cos).zip(sin) {
                    let [x0, x1] = *p;
                    *p = [x0 * c - x1 * s, x0 * s + x1 * c];
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent reference: treat each pair as a complex number and multiply by e^{i·angle}.
    fn naive(x: &[f32], head_dim: usize, pos: usize, theta: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for head in x.chunks(head_dim) {
            for (i, pair) in head.chunks(2).enumerate() {
                let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
                let (re, im) = (pair[0] as f64, pair[1] as f64);
                let (wr, wi) = ((pos as f64 * freq).cos(), (pos as f64 * freq).sin());
                out.push((re * wr - im * wi) as f32);
                out.push((re * wi + im * wr) as f32);
            }
        }
        out
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn matches_complex_reference_in_and_beyond_table() {
        let (n_heads, hd, theta) = (3, 64, 1e5);
        let rope = Rope::new(hd, theta, 64).unwrap();
        let rows = 5;
        for pos_start in [0, 1, 17, 62, 500, 8000] {
            let orig = data(rows * n_heads * hd, pos_start as u32);
            let mut x = orig.clone();
            rope.apply(&mut x, n_heads, hd, pos_start).unwrap();
            for s in 0..rows {
                let w = n_heads * hd;
                let want = naive(&orig[s * w..][..w], hd, pos_start + s, theta);
                for (a, b) in x[s * w..][..w].iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "pos {} {a} vs {b}",
                        pos_start + s
                    );
                }
            }
        }
    }

    #[test]
    fn scaling_divides_each_pair_frequency() {
        // Scaled by 1/4 with factors: pair i turns like the unscaled pair at pos / (4 f_i).
        let (hd, theta) = (8, 1e4);
        let factors = [1.0f32, 2.0, 8.0, 1.0];
        let plain = Rope::new(hd, theta, 64).unwrap();
        let scaled = Rope::scaled(hd, theta, 0.25, &factors, 16).unwrap();
        for pos in [0usize, 8, 16, 64, 640] {
            let orig = data(hd, pos as u32);
            let mut x = orig.clone();
            scaled.apply(&mut x, 1, hd, pos).unwrap();
            for (i, f) in factors.iter().enumerate() {
                let mut pair = [0.0f32; 8];
                pair[2 * i..2 * i + 2].copy_from_slice(&orig[2 * i..2 * i + 2]);
                // An integer position the plain rope turns the same amount: pos / (4 f).
                let div = 4 * *f as usize;
                if !pos.is_multiple_of(div) {
                    continue;
                }
                plain.apply(&mut pair, 1, hd, pos / div).unwrap();
                for j in 2 * i..2 * i + 2 {
                    assert!((x[j] - pair[j]).abs() < 1e-5, "pos {pos} pair {i}");
                }
            }
        }
        assert!(Rope::scaled(8, theta, 1.0, &[1.0, 2.0], 4).is_err());
        assert!(Rope::scaled(8, theta, 1.0, &[1.0, 2.0, 0.0, 1.0], 4).is_err());
        assert!(Rope::scaled(8, theta, f64::INFINITY, &[], 4).is_err());
    }

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        let rope = Rope::new(8, 10000.0, 16).unwrap();
        let orig = data(16, 7);
        let mut x = orig.clone();
        rope.apply(&mut x, 2, 8, 0).unwrap();
        assert_eq!(x[..8], orig[..8]);
        let n0: f32 = orig[8..].iter().map(|v| v * v).sum();
        let n1: f32 = x[8..].iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4 * n0);
    }

    #[test]
    fn rejects_bad_config_and_shapes() {
        assert!(Rope::new(63, 1e4, 8).is_err());
        assert!(Rope::new(0, 1e4, 8).is_err());
        assert!(Rope::new(64, f64::NAN, 8).is_err());
        let rope = Rope::new(64, 1e4, 8).unwrap();
        assert!(rope.apply(&mut [0.0; 64], 1, 32, 0).is_err());
        assert!(rope.apply(&mut [0.0; 100], 1, 64, 0).is_err());
    }
}
