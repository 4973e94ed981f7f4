//! Causal grouped-query attention over a [`LayerView`] of the KV cache.
//!
//! For int8 caches the rows are never dequantized into a buffer. Each row is split in groups of
//! [`GROUP`](crate::GROUP) elements with one scale each: a score is
//! `Σ_g k_scale_g * (Σ_{i in g} q_i·k_i8_i) / sqrt(head_dim)` and output group `g` is
//! `Σ_t p_t * v_scale_{t,g} * v_i8_t`. The kernels ([`kernel`]) run over fixed 8-lane chunks
//! with f32 accumulators so they vectorize, and share each pass over the cache among several
//! query vectors (the heads of one kv head, and consecutive rows during prefill).

use crate::LayerView;

mod kernel;

pub use kernel::At;

/// Lanes of the softmax passes.
const LANES: usize = 16;
/// Minimum `rows * positions` before work is split across threads.
const PARALLEL_MIN_WORK: usize = 4096;
/// Largest head dimension the kernels take (Gemma 3's 256).
pub const MAX_HEAD_DIM: usize = kernel::MAX_CHUNKS * 8;

/// Attention for the `q.len() / (n_heads * hd)` rows of `q` at positions `pos_start..`, written
/// to `out` (same length), over `view`, which must hold the K/V of every position up to the last
/// row's. Row `s` attends to positions `0..=pos_start + s`, or with a sliding `window` (≥ 1) to
/// the last `window` of them; query head `h` reads kv head `h / shape.group`. With `threads > 1`
/// and enough work, rows are split across scoped threads in chunks of equal causal cost; the
/// result does not depend on the split.
///
/// The caller has validated the shape: `hd <= MAX_HEAD_DIM`, `n_heads = group * nkv`, `q` a
/// whole number of rows, `out` as long as `q`.
pub fn attend(
    view: &LayerView<'_>,
    shape: &Shape,
    q: &[f32],
    out: &mut [f32],
    pos_start: usize,
    window: Option<usize>,
    threads: usize,
) {
    let width = shape.n_heads * shape.hd;
    assert!(width > 0 && q.len().is_multiple_of(width) && out.len() == q.len());
    let rows = q.len() / width;
    if rows == 0 {
        return;
    }
    let bounds = split_rows(pos_start, rows, threads, rows * (pos_start + rows));
    if bounds.len() <= 2 {
        run(view, shape, q, out, (pos_start, window));
        return;
    }
    std::thread::scope(|scope| {
        let (mut q_rest, mut out_rest) = (q, out);
        let mut handles = Vec::with_capacity(bounds.len() - 1);
        for w in bounds.windows(2) {
            let n = (w[1] - w[0]) * width;
            let (qc, qr) = q_rest.split_at(n);
            let (oc, or) = std::mem::take(&mut out_rest).split_at_mut(n);
            (q_rest, out_rest) = (qr, or);
            let first = (pos_start + w[0], window);
            if w[1] == rows {
                // The last chunk runs on the calling thread.
                run(view, shape, qc, oc, first);
            } else {
                handles.push(scope.spawn(move || run(view, shape, qc, oc, first)));
            }
        }
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

/// [`attend`] on one thread through the baseline build of the kernels (what CPUs without AVX2
/// run), whatever this CPU has: tests compare it with the dispatched build.
pub fn attend_portable(view: &LayerView<'_>, shape: &Shape, q: &[f32], out: &mut [f32], at: At) {
    kernel::rows::<false>(view, shape, q, out, at);
}

/// Row boundaries `[0, .., rows]` giving each thread about the same causal cost
/// (row `s` costs `pos_start + s + 1`). One chunk when the work is small.
fn split_rows(pos_start: usize, rows: usize, threads: usize, work: usize) -> Vec<usize> {
    let threads = threads.clamp(1, rows);
    if threads == 1 || work < PARALLEL_MIN_WORK {
        return vec![0, rows];
    }
    let cost = |r: usize| r * pos_start + r * (r + 1) / 2; // cost of rows 0..r
    let total = cost(rows);
    let mut bounds = vec![0];
    let mut r = 0;
    for t in 1..threads {
        let target = total * t / threads;
        while r < rows && cost(r) < target {
            r += 1;
        }
        if r > *bounds.last().unwrap_or(&0) && r < rows {
            bounds.push(r);
        }
    }
    bounds.push(rows);
    bounds
}

/// Attention dimensions shared by all rows.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub n_heads: usize,
    pub nkv: usize,
    pub hd: usize,
    /// Query heads per kv head.
    pub group: usize,
    pub inv_sqrt: f32,
}

/// Runs the kernels with the widest vector instructions the CPU has: the same code, compiled a
/// second time with AVX2 and FMA enabled and chosen at run time, is several times faster than the
/// baseline (SSE2) build on x86-64.
fn run(view: &LayerView<'_>, shape: &Shape, q: &[f32], out: &mut [f32], at: kernel::At) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[allow(unsafe_code)]
        // SAFETY: `run_avx2` needs AVX2 and FMA, which the CPU was just found to support.
        unsafe {
            run_avx2(view, shape, q, out, at);
        }
        return;
    }
    kernel::rows::<false>(view, shape, q, out, at);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2(view: &LayerView<'_>, shape: &Shape, q: &[f32], out: &mut [f32], at: kernel::At) {
    kernel::rows::<true>(view, shape, q, out, at);
}

/// Replaces `x` with `exp(x - max x)` and returns the sum. Max, exp and sum are separate
/// lane-wise passes so each one vectorizes.
#[inline(always)]
pub(crate) fn softmax_unnormalized(x: &mut [f32]) -> f32 {
    let (chunks, rest) = x.as_chunks::<LANES>();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for v in x.iter_mut() {
        *v = exp_neg(*v - max);
    }
    let (chunks, rest) = x.as_chunks::<LANES>();
    let mut sums = [0.0f32; LANES];
    for c in chunks {
        for (s, &v) in sums.iter_mut().zip(c) {
            *s += v;
        }
    }
    sums.iter().chain(rest).sum()
}

/// `e^x` for `x <= 0` (relative error about 2e-7), branch-free so it vectorizes. Results below
/// `e^-87` are not exact but tiny; NaN stays NaN.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to integer
    let x = if x < -87.0 { -87.0 } else { x };
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // n is in [-126, 0], so the biased exponent is a normal one.
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests;
