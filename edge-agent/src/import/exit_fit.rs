//! Fitting the early-exit heads of a package (see [`crate::runtime::exit_head`]): the model runs
//! over a calibration text, and for every split point K a ridge regression maps the hidden
//! state leaving layer K − 1 to the change the remaining layers make to its direction,
//! `h_N / rms(h_N) − u ≈ [u, 1] · W` with `u = h_K / rms(h_K)`. Only the direction matters: the
//! final norm rescales whatever the head estimates, and without the scales the squares are not
//! dominated by the few rows whose norm is large. The last part of the text is held out: the share of its positions
//! where the head's greedy token equals the full model's is the acceptance the import reports.
//!
//! Position 0 of every window is left out of the fit: the first token's state carries the
//! model's attention sink (values in the thousands in two channels), which would dominate the
//! squares while it is never drafted.

use crate::error::{Error, Result};
use crate::runtime::exit_head::ExitHead;
use crate::runtime::kv_cache::{KvCache, KvDtype, KvGeometry};
use crate::runtime::model::Model;
use crate::runtime::sampler::argmax;

/// Ridge strength, relative to the mean of the Gram matrix's diagonal.
pub const RIDGE: f64 = 1e-3;
/// Tokens per calibration window.
pub const WINDOW: usize = 256;

/// A fitted head and its held-out acceptance.
#[derive(Debug, Clone)]
pub struct ExitFit {
    pub head: ExitHead,
    pub calibration_tokens: usize,
    pub heldout_tokens: usize,
    pub heldout_acceptance: f64,
}

/// Normal equations of one regression: `G = Σ x̃ x̃ᵀ`, `R = Σ x̃ Δᵀ` with `x̃ = [x, 1]`.
struct Normal {
    d: usize,
    g: Vec<f64>,
    r: Vec<f64>,
    rows: usize,
}

impl Normal {
    fn new(d: usize) -> Normal {
        Normal {
            d,
            g: vec![0.0; (d + 1) * (d + 1)],
            r: vec![0.0; (d + 1) * d],
            rows: 0,
        }
    }

    /// Adds the rows of `x` (inputs) and `y` (targets), both `[S, d]`.
    fn add(&mut self, x: &[f32], y: &[f32]) {
        let d = self.d;
        let mut xt = vec![0.0f64; d + 1];
        let mut delta = vec![0.0f64; d];
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact(d)) {
            for i in 0..d {
                xt[i] = xr[i] as f64;
                delta[i] = (yr[i] - xr[i]) as f64;
            }
            xt[d] = 1.0;
            // Upper triangle of G; mirrored in `solve`.
            for i in 0..=d {
                let xi = xt[i];
                let row = &mut self.g[i * (d + 1)..(i + 1) * (d + 1)];
                for (g, xj) in row[i..].iter_mut().zip(&xt[i..]) {
                    *g += xi * xj;
                }
                for (r, dj) in self.r[i * d..(i + 1) * d].iter_mut().zip(&delta) {
                    *r += xi * dj;
                }
            }
            self.rows += 1;
        }
    }

    /// `W = (G + λ·I) \ R`, the bias left unregularised.
    fn solve(&self) -> Result<Vec<f32>> {
        let n = self.d + 1;
        let mut a = self.g.clone();
        for i in 0..n {
            for j in 0..i {
                a[i * n + j] = a[j * n + i];
            }
        }
        let mean_diag = (0..self.d).map(|i| a[i * n + i]).sum::<f64>() / self.d as f64;
        for i in 0..self.d {
            a[i * n + i] += RIDGE * mean_diag;
        }
        let l = cholesky(&a, n)?;
        let w = cholesky_solve(&l, n, &self.r, self.d);
        Ok(w.into_iter().map(|v| v as f32).collect())
    }
}

/// Each row of `rows` (`[S, d]`) divided by its root mean square.
pub fn unit_rms(rows: &[f32], d: usize) -> Vec<f32> {
    let mut out = rows.to_vec();
    for row in out.chunks_exact_mut(d) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
        let inv = 1.0 / ms.sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v = (*v as f64 * inv) as f32);
    }
    out
}

/// Lower-triangular `L` with `L Lᵀ = a` (`n × n`, symmetric positive definite).
fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            let v = a[i * n + j] - dot;
            if i == j {
                if v <= 0.0 || !v.is_finite() {
                    return Err(Error::InvalidArgument(
                        "the calibration states are degenerate (the regression has no unique solution)"
                            .into(),
                    ));
                }
                l[i * n + i] = v.sqrt();
            } else {
                l[i * n + j] = v / l[j * n + j];
            }
        }
    }
    Ok(l)
}

/// Solves `L Lᵀ X = B` for `B` of `n × m` (row-major).
fn cholesky_solve(l: &[f64], n: usize, b: &[f64], m: usize) -> Vec<f64> {
    let mut x = b.to_vec();
    // Forward: L Y = B.
    for i in 0..n {
        for k in 0..i {
            let lik = l[i * n + k];
            for c in 0..m {
                x[i * m + c] -= lik * x[k * m + c];
            }
        }
        let d = l[i * n + i];
        for c in 0..m {
            x[i * m + c] /= d;
        }
    }
    // Backward: Lᵀ X = Y.
    for i in (0..n).rev() {
        for k in i + 1..n {
            let lki = l[k * n + i];
            for c in 0..m {
                x[i * m + c] -= lki * x[k * m + c];
            }
        }
        let d = l[i * n + i];
        for c in 0..m {
            x[i * m + c] /= d;
        }
    }
    x
}

/// The hidden state leaving each split layer of `points` and the last layer, for one window.
fn states_at(model: &mut Model, tokens: &[u32], points: &[u32]) -> Result<Vec<Vec<f32>>> {
    let a = model.arch().clone();
    let mut bounds = vec![0u32];
    bounds.extend_from_slice(points);
    bounds.push(a.n_layer);
    let mut h = model.embed(tokens)?;
    let mut out = Vec::with_capacity(points.len() + 1);
    for pair in bounds.windows(2) {
        let geometry = KvGeometry {
            n_layers: (pair[1] - pair[0]) as usize,
            n_kv_heads: a.n_head_kv as usize,
            head_dim: a.head_dim as usize,
        };
        let mut cache = KvCache::try_new(geometry, KvDtype::Int8, tokens.len())?;
        h = model.run_layers(pair[0]..pair[1], h, 0, &mut cache)?;
        out.push(h.clone());
    }
    Ok(out)
}

/// Fits a head per split point on `tokens` (the last `heldout` of them held out) and measures
/// its acceptance. `progress(done, total)` is called after each window.
pub fn fit_exit_heads(
    model: &mut Model,
    tokens: &[u32],
    heldout: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<ExitFit>> {
    let points = model.package().manifest().split_points.clone();
    let d = model.n_embd();
    let fit_windows = tokens.len().saturating_sub(heldout) / WINDOW;
    let held_windows = heldout.min(tokens.len()) / WINDOW;
    if fit_windows < 4 || held_windows < 1 {
        return Err(Error::InvalidArgument(format!(
            "the calibration text has {} tokens: at least {} are needed ({} held out)",
            tokens.len(),
            4 * WINDOW + heldout.max(WINDOW),
            heldout.max(WINDOW)
        )));
    }
    let total = fit_windows + held_windows;
    let mut normals: Vec<Normal> = points.iter().map(|_| Normal::new(d)).collect();
    for w in 0..fit_windows {
        let window = &tokens[w * WINDOW..(w + 1) * WINDOW];
        let states = states_at(model, window, &points)?;
        let last = unit_rms(&states[points.len()][d..], d);
        for (normal, x) in normals.iter_mut().zip(&states) {
            normal.add(&unit_rms(&x[d..], d), &last);
        }
        progress(w + 1, total);
    }
    let heads = points
        .iter()
        .zip(&normals)
        .map(|(&layer, n)| ExitHead::new(layer, d, n.solve()?, 0.0))
        .collect::<Result<Vec<_>>>()?;
    // Held-out windows start where the fitted ones stop.
    let start = tokens.len() - held_windows * WINDOW;
    let mut matches = vec![0usize; points.len()];
    let mut positions = 0usize;
    for w in 0..held_windows {
        let window = &tokens[start + w * WINDOW..start + (w + 1) * WINDOW];
        let states = states_at(model, window, &points)?;
        let full = model.logits(&states[points.len()][d..])?;
        let vocab = full.len() / (WINDOW - 1);
        let want: Vec<u32> = full.chunks_exact(vocab).map(argmax).collect();
        for (i, head) in heads.iter().enumerate() {
            let draft = model.logits(&head.apply(&states[i][d..]))?;
            matches[i] += draft
                .chunks_exact(vocab)
                .map(argmax)
                .zip(&want)
                .filter(|(a, b)| a == *b)
                .count();
        }
        positions += want.len();
        progress(fit_windows + w + 1, total);
    }
    Ok(heads
        .into_iter()
        .zip(matches)
        .zip(&normals)
        .map(|((head, m), n)| {
            let acceptance = m as f64 / positions as f64;
            let weights = head.weights().to_vec();
            ExitFit {
                head: ExitHead::new(head.layer(), d, weights, acceptance as f32)
                    .expect("the same shape"),
                calibration_tokens: n.rows,
                heldout_tokens: positions,
                heldout_acceptance: acceptance,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_regression_recovers_an_affine_map() {
        // y = x + x·A + b for a known A and b, with many more rows than unknowns.
        let d = 3;
        let a = [[0.5f32, -1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, -0.5]];
        let b = [0.25f32, -0.5, 1.0];
        let mut n = Normal::new(d);
        let mut state = 12345u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        for _ in 0..2000 {
            let x: Vec<f32> = (0..d).map(|_| rnd() * 3.0).collect();
            let y: Vec<f32> = (0..d)
                .map(|j| x[j] + (0..d).map(|i| x[i] * a[i][j]).sum::<f32>() + b[j])
                .collect();
            n.add(&x, &y);
        }
        let w = n.solve().unwrap();
        for i in 0..d {
            for j in 0..d {
                assert!(
                    (w[i * d + j] - a[i][j]).abs() < 1e-2,
                    "w[{i}][{j}] = {}",
                    w[i * d + j]
                );
            }
        }
        for j in 0..d {
            assert!(
                (w[d * d + j] - b[j]).abs() < 1e-2,
                "bias {j} = {}",
                w[d * d + j]
            );
        }
    }

    #[test]
    fn unit_rms_rows_have_a_root_mean_square_of_one() {
        let rows = unit_rms(&[3.0, 4.0, 0.0, 0.0, 0.0, 0.0], 2);
        // (3, 4) has rms 3.54; the zero row stays zero.
        let r = (rows[0] * rows[0] + rows[1] * rows[1]) / 2.0;
        assert!(
            (r - 1.0).abs() < 1e-6 && rows[0] / rows[1] == 0.75,
            "{rows:?}"
        );
        assert_eq!(&rows[2..], &[0.0; 4]);
    }

    #[test]
    fn degenerate_states_are_an_error_not_a_panic() {
        assert!(cholesky(&[0.0, 0.0, 0.0, 0.0], 2).is_err());
    }
}
