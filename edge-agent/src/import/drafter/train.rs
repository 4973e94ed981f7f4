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
use super::mlp::{Batches, GatedMlp, MlpWeights, Smoothed, mean, rows, unit};
use crate::error::{Error, Result};
use candle_core::{D, Device, Tensor};
use candle_nn::Optimizer;
use std::time::Instant;

/// Positions one training example unrolls over.
pub const UNROLL: usize = 3;
/// Weight of the feature term against the cross-entropy.
const FEATURE_WEIGHT: f64 = 0.5;

/// How to train.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// Width of the gated MLP.
    pub hidden: usize,
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
    readout: &Readout<'_>,
    opts: TrainOptions,
    mut progress: impl FnMut(usize, usize, f32),
) -> Result<MlpWeights> {
    let dev = Device::Cpu;
    let d = corpus.d;
    let starts = corpus.starts(UNROLL);
    if starts.is_empty() {
        return Err(Error::InvalidArgument(
            "the drafter's training data holds no run of positions to learn from".into(),
        ));
    }
    let net = GatedMlp::new(d, opts.hidden, opts.seed)?;
    let mut opt = net.optimizer(opts.lr)?;
    let gain = Tensor::from_slice(readout.norm_gain, (1, d), &dev)?;
    // Logits = unit(y) · diag(gain) · Hᵀ: fold the gain into the rows once.
    let head_t = Tensor::from_slice(readout.rows, (readout.shortlist, d), &dev)?
        .broadcast_mul(&gain)?
        .t()?
        .contiguous()?;
    let teacher = teacher_top(corpus, &head_t, &dev)?;
    let mut batches = Batches::new(opts.seed, &starts, opts.batch);
    let started = Instant::now();
    let mut smoothed = Smoothed::default();
    for step in 0..opts.steps {
        let picks = batches.draw();
        opt.set_learning_rate(opts.lr * schedule(step, opts.steps));
        let mut a = rows(&corpus.features, &picks, 0, d)?;
        let mut losses = Vec::with_capacity(UNROLL);
        for u in 1..=UNROLL {
            let e = rows(&corpus.embeddings, &picks, u as isize, d)?;
            let y = net.forward(&a, &e)?;
            let uy = unit(&y)?;
            let logits = uy.matmul(&head_t)?;
            let (targets, mask) = corpus.targets_at(&picks, u);
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let hard = masked_cross_entropy(&logp, &targets, &mask, &dev)?;
            let soft = teacher.cross_entropy(&logp, &picks, u, &dev)?;
            let ce = ((hard * (1.0 - opts.soft))? + (soft * opts.soft)?)?;
            let f = rows(&corpus.features, &picks, u as isize, d)?;
            let feat = (uy - &f)?.abs()?.mean_all()?;
            losses.push((ce + (feat * FEATURE_WEIGHT)?)?);
            a = y;
        }
        let loss = mean(losses)?;
        opt.backward_step(&loss)?;
        let l = smoothed.update(loss.to_scalar::<f32>()?);
        if step % 50 == 0 || step + 1 == opts.steps {
            progress(step + 1, opts.steps, l);
        }
    }
    tracing::debug!(elapsed = ?started.elapsed(), steps = opts.steps, "drafter trained");
    net.weights()
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
        let index = Tensor::from_vec(top_rows(&self.index, picks, offset), (n, TEACHER_TOP), dev)?;
        let prob = Tensor::from_vec(top_rows(&self.prob, picks, offset), (n, TEACHER_TOP), dev)?;
        Ok(((logp.gather(&index, 1)? * prob)?.sum_all()? * (-1.0 / n as f64))?)
    }
}

/// Rows `pick + offset` of a `[positions, TEACHER_TOP]` table, flat.
fn top_rows<T: Copy>(table: &[T], picks: &[usize], offset: usize) -> Vec<T> {
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
