//! Early-exit heads: an affine map from the hidden state at split layer K to an estimate of the
//! final hidden state, so that layers `[0, K)` plus the model's own final norm and LM head draft
//! tokens for the cloud to verify. Fitted at import ([`crate::import::exit_fit`]); see
//! [`seam_shared::package::ExitHead`] for the file layout.

use crate::error::{Error, Result};
use seam_shared::package::{ExitHead as ExitHeadSpec, Package};

/// A loaded exit head.
#[derive(Debug, Clone)]
pub struct ExitHead {
    layer: u32,
    d: usize,
    /// `(d + 1) × d`, row-major: the estimate of `x` is `x + [x, 1] · w`.
    w: Vec<f32>,
    heldout_acceptance: f32,
}

impl ExitHead {
    /// Reads and checks the head described by `spec` in `package`.
    pub fn load(package: &Package, spec: &ExitHeadSpec, d: usize) -> Result<ExitHead> {
        let path = package.path(&spec.file);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let expected = (d + 1) * d * 4;
        if bytes.len() != expected {
            return Err(Error::Package(format!(
                "{} has {} bytes, expected {expected} for a {}×{d} exit head",
                spec.file,
                bytes.len(),
                d + 1
            )));
        }
        let w: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if w.iter().any(|v| !v.is_finite()) {
            return Err(Error::Package(format!(
                "{} holds a value that is not finite",
                spec.file
            )));
        }
        ExitHead::new(spec.layer, d, w, spec.heldout_acceptance)
    }

    /// A head from its weights (`(d + 1) × d` values).
    pub fn new(layer: u32, d: usize, w: Vec<f32>, heldout_acceptance: f32) -> Result<ExitHead> {
        if w.len() != (d + 1) * d {
            return Err(Error::InvalidArgument(format!(
                "an exit head of width {d} needs {} weights, got {}",
                (d + 1) * d,
                w.len()
            )));
        }
        Ok(ExitHead {
            layer,
            d,
            w,
            heldout_acceptance,
        })
    }

    pub fn layer(&self) -> u32 {
        self.layer
    }

    /// Greedy agreement with the full model measured at import.
    pub fn heldout_acceptance(&self) -> f32 {
        self.heldout_acceptance
    }

    /// The weights, `(d + 1) × d` row-major (what the package file holds).
    pub fn weights(&self) -> &[f32] {
        &self.w
    }

    /// Estimates of the direction of the final hidden state for each row of `hidden`
    /// (`[S, d]`): `u + [u, 1] · W` with `u` the row scaled to unit root mean square (the
    /// final norm makes the scale irrelevant).
    pub fn apply(&self, hidden: &[f32]) -> Vec<f32> {
        let d = self.d;
        let units = crate::import::exit_fit::unit_rms(hidden, d);
        let mut out = units.clone();
        for (x, y) in units.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            // Bias row first, then one row of `w` per input feature: the inner loop runs over
            // contiguous output columns and vectorises.
            for (o, b) in y.iter_mut().zip(&self.w[d * d..]) {
                *o += b;
            }
            for (xi, row) in x.iter().zip(self.w.chunks_exact(d)) {
                for (o, wv) in y.iter_mut().zip(row) {
                    *o += xi * wv;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_adds_the_affine_map_to_the_identity() {
        let d = 2;
        // w = [[1, 0], [0, 2], [0.5, -1]] (two feature rows, then the bias row).
        let head = ExitHead::new(8, d, vec![1.0, 0.0, 0.0, 2.0, 0.5, -1.0], 0.5).unwrap();
        // Rows of rms 1 as they are, and one of rms 2 that is scaled down to (1, 1) first.
        let r2 = std::f32::consts::SQRT_2;
        let out = head.apply(&[1.0, 1.0, -r2, 0.0, 2.0, 2.0]);
        // u + [u0, u1, 1]·w.
        let want = [
            [1.0 + 1.0 + 0.5, 1.0 + 2.0 - 1.0],
            [-r2 - r2 + 0.5, 0.0 + 0.0 - 1.0],
            [2.5, 2.0],
        ];
        for (got, want) in out.chunks_exact(2).zip(want) {
            assert!(
                (got[0] - want[0]).abs() < 1e-5 && (got[1] - want[1]).abs() < 1e-5,
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn a_head_with_the_wrong_number_of_weights_is_refused() {
        let err = ExitHead::new(8, 3, vec![0.0; 9], 0.5).unwrap_err();
        assert!(err.to_string().contains("needs 12 weights"), "{err}");
    }
}
