//! Training the draft head with candle (reverse-mode autograd and AdamW from `candle-nn`).
//!
//! The head maps `[unit(f_{t-1}), unit(e(x_t))]` (the final-layer state of the previous
//! position and the embedding of the current token, each scaled to unit root mean square) to an
//! estimate of `f_t`, the final-layer state of the current position:
//!
//! ```text
//! z = [a, e] · W_in + b_in              (2d → d)
//! m = unit(z)
//! y = z + (silu(m · W_gate) ⊙ (m · W_up)) · W_down
//! ```
//!
//! and the model's own final norm and LM head rows of the shortlist turn `y` into draft logits.
//! The loss is the cross-entropy of those logits against the full model's greedy token and
//! against the model's own distribution (its [`TEACHER_TOP`] most likely shortlist tokens,
//! read out of the stored final-layer states through the same rows: distillation, which ranks
//! the alternatives a draft tree branches into), mixed by [`TrainOptions::soft`], plus a feature
//! term `|unit(y) − unit(f_t)|`. Every step unrolls the head over [`UNROLL`]
//! consecutive positions, feeding its own estimate back as the next `a`, as it drafts chains.
//!
//! Deterministic for a seed: weights start from a seeded generator, batches are drawn from
//! another, and candle's CPU kernels are deterministic for a fixed thread count.

use super::data::Corpus;
use crate::error::{Error, Result};
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// Positions one training example unrolls over.
pub const UNROLL: usize = 3;
/// Weight of the feature term against the cross-entropy.
const FEATURE_WEIGHT: f64 = 0.5;
/// Norm epsilon of the head's `unit` (also in its graph).
pub const UNIT_EPS: f64 = 1e-6;

/// Sizes of the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadShape {
    /// Model width `d`.
    pub d: usize,
    /// Width of the gated MLP.
    pub hidden: usize,
}

/// Trained weights, row-major, `x · W` convention (`W` is `[in, out]`).
#[derive(Debug, Clone)]
pub struct HeadWeights {
    pub shape: HeadShape,
    pub w_in: Vec<f32>,
    pub b_in: Vec<f32>,
    pub w_gate: Vec<f32>,
    pub w_up: Vec<f32>,
    pub w_down: Vec<f32>,
}

/// How to train.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    /// Weight of the cross-entropy against the model's distribution (the rest against its
    /// greedy token).
    pub soft: f64,
}

/// What the model contributes to the loss: its final-norm gain and the LM-head rows of the
/// shortlist (`[shortlist, d]`, dequantized exactly).
pub struct Readout<'a> {
    pub norm_gain: &'a [f32],
    pub rows: &'a [f32],
    pub shortlist: usize,
}

/// Trains a head on `corpus`; `progress(step, steps, loss)` is called every few steps.
pub fn train(
    corpus: &Corpus,
    shape: HeadShape,
    readout: &Readout<'_>,
    opts: TrainOptions,
    mut progress: impl FnMut(usize, usize, f32),
) -> Result<HeadWeights> {
    let dev = Device::Cpu;
    let d = shape.d;
    let starts = corpus.starts(UNROLL);
    if starts.is_empty() {
        return Err(Error::InvalidArgument(
            "the drafter's training data holds no run of positions to learn from".into(),
        ));
    }
    let mut init = StdRng::seed_from_u64(opts.seed);
    let mut param = |rows: usize, cols: usize, scale: f64| -> Result<Var> {
        let bound = scale / (rows as f64).sqrt();
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| (init.random::<f64>() * 2.0 - 1.0) as f32 * bound as f32 * 3f32.sqrt())
            .collect();
        Ok(Var::from_tensor(&Tensor::from_vec(
            data,
            (rows, cols),
            &dev,
        )?)?)
    };
    let w_in = param(2 * d, d, 1.0)?;
    let b_in = Var::from_tensor(&Tensor::zeros((1, d), DType::F32, &dev)?)?;
    let w_gate = param(d, shape.hidden, 1.0)?;
    let w_up = param(d, shape.hidden, 1.0)?;
    // The residual branch starts small: the head begins close to an affine map.
    let w_down = param(shape.hidden, d, 0.1)?;
    let vars = vec![
        w_in.clone(),
        b_in.clone(),
        w_gate.clone(),
        w_up.clone(),
        w_down.clone(),
    ];
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let gain = Tensor::from_slice(readout.norm_gain, (1, d), &dev)?;
    // Logits = unit(y) · diag(gain) · Hᵀ: fold the gain into the rows once.
    let head_t = Tensor::from_slice(readout.rows, (readout.shortlist, d), &dev)?
        .broadcast_mul(&gain)?
        .t()?
        .contiguous()?;
    let teacher = teacher_top(corpus, &head_t, &dev)?;
    let mut batches = StdRng::seed_from_u64(opts.seed ^ 0x9e37_79b9_7f4a_7c15);
    let net = Net {
        w_in: w_in.as_tensor(),
        b_in: b_in.as_tensor(),
        w_gate: w_gate.as_tensor(),
        w_up: w_up.as_tensor(),
        w_down: w_down.as_tensor(),
    };
    let started = Instant::now();
    let mut smoothed = f32::NAN;
    for step in 0..opts.steps {
        let picks: Vec<usize> = (0..opts.batch)
            .map(|_| starts[batches.random_range(0..starts.len())])
            .collect();
        let lr = opts.lr * schedule(step, opts.steps);
        opt.set_learning_rate(lr);
        let mut a = gather(&corpus.features, &picks, 0, d, &dev)?;
        let mut total: Option<Tensor> = None;
        for u in 0..UNROLL {
            let e = gather(&corpus.embeddings, &picks, u + 1, d, &dev)?;
            let y = net.forward(&a, &e)?;
            let uy = unit(&y)?;
            let logits = uy.matmul(&head_t)?;
            let (targets, mask) = corpus.targets_at(&picks, u + 1);
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let hard = masked_cross_entropy(&logp, &targets, &mask, &dev)?;
            let soft = teacher.cross_entropy(&logp, &picks, u + 1, &dev)?;
            let ce = ((hard * (1.0 - opts.soft))? + (soft * opts.soft)?)?;
            let f = gather(&corpus.features, &picks, u + 1, d, &dev)?;
            let feat = (uy - &f)?.abs()?.mean_all()?;
            let loss = (ce + (feat * FEATURE_WEIGHT)?)?;
            total = Some(match total {
                None => loss,
                Some(t) => (t + loss)?,
            });
            a = y;
        }
        let loss = (total.expect("UNROLL > 0") / UNROLL as f64)?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        smoothed = if smoothed.is_nan() {
            l
        } else {
            0.98 * smoothed + 0.02 * l
        };
        if step % 50 == 0 || step + 1 == opts.steps {
            progress(step + 1, opts.steps, smoothed);
        }
    }
    tracing::debug!(elapsed = ?started.elapsed(), steps = opts.steps, "drafter trained");
    let out = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
    Ok(HeadWeights {
        shape,
        w_in: out(net.w_in)?,
        b_in: out(net.b_in)?,
        w_gate: out(net.w_gate)?,
        w_up: out(net.w_up)?,
        w_down: out(net.w_down)?,
    })
}

/// Tokens of the model's distribution the head learns at each position.
pub const TEACHER_TOP: usize = 16;

/// The model's [`TEACHER_TOP`] most likely shortlist tokens at every position of a corpus and
/// their probabilities, renormalised over those tokens.
struct Teacher {
    /// `[positions, TEACHER_TOP]` shortlist indices.
    index: Vec<u32>,
    /// `[positions, TEACHER_TOP]`, each row summing to 1.
    prob: Vec<f32>,
}

impl Teacher {
    /// Mean over the rows `pick + offset` of `−Σ p_teacher · log p_head`.
    fn cross_entropy(
        &self,
        logp: &Tensor,
        picks: &[usize],
        offset: usize,
        dev: &Device,
    ) -> Result<Tensor> {
        let n = picks.len();
        let index = Tensor::from_vec(rows(&self.index, picks, offset), (n, TEACHER_TOP), dev)?;
        let prob = Tensor::from_vec(rows(&self.prob, picks, offset), (n, TEACHER_TOP), dev)?;
        Ok(((logp.gather(&index, 1)? * prob)?.sum_all()? * (-1.0 / n as f64))?)
    }
}

/// Rows `pick + offset` of a `[positions, TEACHER_TOP]` table, flat.
fn rows<T: Copy>(table: &[T], picks: &[usize], offset: usize) -> Vec<T> {
    picks
        .iter()
        .flat_map(|&p| {
            let r = p + offset;
            table[r * TEACHER_TOP..(r + 1) * TEACHER_TOP]
                .iter()
                .copied()
        })
        .collect()
}

/// The teacher's distribution at every position of `corpus`: its stored final-layer states
/// (unit rms, so the final norm is the gain already folded into `head_t`) through the readout.
fn teacher_top(corpus: &Corpus, head_t: &Tensor, dev: &Device) -> Result<Teacher> {
    let (d, n) = (corpus.d, corpus.positions());
    let mut index = Vec::with_capacity(n * TEACHER_TOP);
    let mut prob = Vec::with_capacity(n * TEACHER_TOP);
    const CHUNK: usize = 2048;
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let f = Tensor::from_slice(&corpus.features[start * d..end * d], (end - start, d), dev)?;
        for row in unit(&f)?.matmul(head_t)?.to_vec2::<f32>()? {
            let (i, p) = top_probabilities(&row, TEACHER_TOP);
            index.extend(i);
            prob.extend(p);
        }
    }
    Ok(Teacher { index, prob })
}

/// The `k` largest logits' indices (largest first) and their softmax renormalised over those
/// `k`; a row shorter than `k` is padded with its first index at probability 0.
fn top_probabilities(logits: &[f32], k: usize) -> (Vec<u32>, Vec<f32>) {
    let desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, desc);
        order.truncate(k);
    }
    order.sort_unstable_by(desc);
    let max = logits[order[0] as usize];
    let e: Vec<f32> = order
        .iter()
        .map(|&i| (logits[i as usize] - max).exp())
        .collect();
    let z: f32 = e.iter().sum();
    let mut prob: Vec<f32> = e.iter().map(|v| v / z).collect();
    prob.resize(k, 0.0);
    order.resize(k, order[0]);
    (order, prob)
}

/// Learning-rate factor: a short warm-up, then cosine decay to a tenth.
fn schedule(step: usize, steps: usize) -> f64 {
    let warm = (steps / 20).max(1);
    if step < warm {
        return (step + 1) as f64 / warm as f64;
    }
    let t = (step - warm) as f64 / (steps - warm).max(1) as f64;
    0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

struct Net<'a> {
    w_in: &'a Tensor,
    b_in: &'a Tensor,
    w_gate: &'a Tensor,
    w_up: &'a Tensor,
    w_down: &'a Tensor,
}

impl Net<'_> {
    /// `a`: previous feature (any scale), `e`: token embedding; both `[B, d]`.
    fn forward(&self, a: &Tensor, e: &Tensor) -> Result<Tensor> {
        let x = Tensor::cat(&[unit(a)?, unit(e)?], 1)?;
        let z = x.matmul(self.w_in)?.broadcast_add(self.b_in)?;
        let m = unit(&z)?;
        let g = m.matmul(self.w_gate)?;
        let u = m.matmul(self.w_up)?;
        let act = (candle_nn::ops::silu(&g)? * u)?;
        Ok((z + act.matmul(self.w_down)?)?)
    }
}

/// Each row scaled to unit root mean square.
fn unit(x: &Tensor) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + UNIT_EPS)?.sqrt()?)?)
}

/// Mean over the rows where `mask` is 1 of `−logp[target]`.
fn masked_cross_entropy(
    logp: &Tensor,
    targets: &[u32],
    mask: &[f32],
    dev: &Device,
) -> Result<Tensor> {
    let n = targets.len();
    let idx = Tensor::from_slice(targets, (n, 1), dev)?;
    let picked = logp.gather(&idx, 1)?.squeeze(1)?;
    let m = Tensor::from_slice(mask, n, dev)?;
    let count = mask.iter().sum::<f32>().max(1.0) as f64;
    Ok(((picked * m)?.sum_all()? * (-1.0 / count))?)
}

/// Rows `pick + offset` of `table` (`[positions, d]`) as a `[B, d]` tensor.
fn gather(table: &[f32], picks: &[usize], offset: usize, d: usize, dev: &Device) -> Result<Tensor> {
    let mut out = Vec::with_capacity(picks.len() * d);
    for &p in picks {
        out.extend_from_slice(&table[(p + offset) * d..(p + offset + 1) * d]);
    }
    Ok(Tensor::from_vec(out, (picks.len(), d), dev)?)
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Training(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_teacher_keeps_its_most_likely_tokens_with_renormalised_probabilities() {
        let logits = [0.0, 3.0, 1.0, 3.0f32.ln() + 3.0, -5.0];
        let (index, prob) = top_probabilities(&logits, 3);
        assert_eq!(index, [3, 1, 2]);
        // e^(ln 3 + 3) : e^3 : e^1 = 3 : 1 : e^-2.
        let z = 4.0 + (-2.0f32).exp();
        for (p, want) in prob.iter().zip([3.0 / z, 1.0 / z, (-2.0f32).exp() / z]) {
            assert!((p - want).abs() < 1e-6, "{prob:?}");
        }
        // A shortlist shorter than k is padded at probability 0.
        let (index, prob) = top_probabilities(&[1.0, 2.0], 3);
        assert_eq!(index, [1, 0, 1]);
        assert_eq!(prob[2], 0.0);
        assert!((prob.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn the_schedule_warms_up_then_decays_to_a_tenth() {
        assert!(schedule(0, 1000) < 0.05);
        assert!((schedule(50, 1000) - 1.0).abs() < 1e-9);
        assert!((schedule(999, 1000) - 0.1).abs() < 1e-3);
    }
}
