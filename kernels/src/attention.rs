//! Causal grouped-query attention over a [`LayerView`] of the KV cache.
//!
//! For int8 caches the rows are never dequantized into a buffer. Each row is split in groups of
//! [`GROUP`](crate::GROUP) elements with one scale each: a score is
//! `Σ_g k_scale_g * (Σ_{i in g} q_i·k_i8_i) / sqrt(head_dim)` and output group `g` is
//! `Σ_t p_t * v_scale_{t,g} * v_i8_t`. (With AVX-512 VNNI a query group is 15-bit integers times
//! a scale, each off by at most `max |group| / 64516` plus f32 rounding, and the inner sums are
//! exact integers.) The kernels ([`kernel`]) run over fixed 8-lane chunks with f32 accumulators
//! so they vectorize, and share each pass over the cache among several query vectors (the heads
//! of one kv head, and consecutive rows during prefill). Over an int8 cache on a CPU with AVX2
//! and FMA, the two passes are intrinsics ([`avx2`]) that tile eight
//! keys (scores, through `vpdpbusd` where the CPU has AVX-512 VNNI) or one scale group (values)
//! in registers, for blocks of up to 24 vectors.

use crate::LayerView;
use std::sync::{Mutex, PoisonError};

#[cfg(target_arch = "x86_64")]
mod avx2;
mod kernel;

pub use kernel::At;
use kernel::Part;

/// Lanes of the softmax passes.
const LANES: usize = 16;
/// Minimum `rows * positions` before work is split across threads.
const PARALLEL_MIN_WORK: usize = 4096;
/// Minimum `positions * kv heads` before a single row is split by kv head.
const PARALLEL_MIN_HEAD_WORK: usize = 1024;
/// Largest head dimension the kernels take (Gemma 3's 256).
pub const MAX_HEAD_DIM: usize = kernel::MAX_CHUNKS * 8;

/// Runs `n` independent tasks, each exactly once and possibly at the same time, and returns when
/// all are done. [`attend`] hands it the chunks of rows it splits a pass into, so that the caller
/// decides which threads run them (the threads of a pool that would otherwise spin against new
/// ones, say).
pub trait Parallel: Sync {
    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync));
}

/// [`Parallel`] on scoped threads spawned for the call; the last task runs on the calling thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScopedThreads;

impl Parallel for ScopedThreads {
    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        let Some(last) = n.checked_sub(1) else {
            return;
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..last).map(|i| scope.spawn(move || task(i))).collect();
            task(last);
            for h in handles {
                if let Err(panic) = h.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        });
    }
}

/// Attention for the `q.len() / (n_heads * hd)` rows of `q` at positions `pos_start..`, written
/// to `out` (same length), over `view`, which must hold the K/V of every position up to the last
/// row's. Row `s` attends to positions `0..=pos_start + s`, or with a sliding `window` (≥ 1) to
/// the last `window` of them; query head `h` reads kv head `h / shape.group`. With `threads > 1`
/// and enough work, `parallel` runs the pass in parts: a single row over a long cache (a decoded
/// token) one part per kv head, more rows `threads` chunks of rows of equal causal cost. The
/// result does not depend on the split.
///
/// The caller has validated the shape: `hd <= MAX_HEAD_DIM`, `n_heads = group * nkv`, `q` a
/// whole number of rows, `out` as long as `q`.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    view: &LayerView<'_>,
    shape: &Shape,
    q: &[f32],
    out: &mut [f32],
    pos_start: usize,
    window: Option<usize>,
    threads: usize,
    parallel: &dyn Parallel,
) {
    let width = shape.n_heads * shape.hd;
    assert!(width > 0 && q.len().is_multiple_of(width) && out.len() == q.len());
    let rows = q.len() / width;
    if rows == 0 {
        return;
    }
    let at = (pos_start, window);
    if rows == 1
        && threads > 1
        && shape.nkv > 1
        && (pos_start + 1) * shape.nkv >= PARALLEL_MIN_HEAD_WORK
    {
        // One row (a decoded token) over a long cache: its kv heads' outputs are consecutive,
        // so the heads split instead.
        let per = shape.group * shape.hd;
        let chunks: Vec<Mutex<&mut [f32]>> = out.chunks_mut(per).map(Mutex::new).collect();
        parallel.run(chunks.len(), &|g| {
            let mut out = chunks[g].lock().unwrap_or_else(PoisonError::into_inner);
            let part = Part {
                kv: g..g + 1,
                out_base: g * per,
            };
            run(view, shape, q, &mut out, at, part);
        });
        return;
    }
    let bounds = split_rows(pos_start, rows, threads, rows * (pos_start + rows));
    if bounds.len() <= 2 {
        run(view, shape, q, out, at, Part::all(shape.nkv));
        return;
    }
    // Each chunk's rows of `out`, behind a lock only its own task takes.
    let mut chunks = Vec::with_capacity(bounds.len() - 1);
    let mut out_rest = out;
    for w in bounds.windows(2) {
        let (chunk, rest) = std::mem::take(&mut out_rest).split_at_mut((w[1] - w[0]) * width);
        out_rest = rest;
        chunks.push((w[0], Mutex::new(chunk)));
    }
    parallel.run(chunks.len(), &|i| {
        let (first, chunk) = &chunks[i];
        let mut out = chunk.lock().unwrap_or_else(PoisonError::into_inner);
        let q = &q[first * width..][..out.len()];
        let at = (pos_start + first, window);
        run(view, shape, q, &mut out, at, Part::all(shape.nkv));
    });
}

/// [`attend`] on one thread through the baseline build of the kernels (what CPUs without AVX2
/// run), whatever this CPU has: tests compare it with the dispatched build.
pub fn attend_portable(view: &LayerView<'_>, shape: &Shape, q: &[f32], out: &mut [f32], at: At) {
    kernel::rows::<false>(view, shape, q, out, at, (Part::all(shape.nkv), false));
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
fn run(view: &LayerView<'_>, shape: &Shape, q: &[f32], out: &mut [f32], at: At, part: Part) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[allow(unsafe_code)]
        // SAFETY: `run_avx2` needs AVX2 and FMA, which the CPU was just found to support.
        unsafe {
            run_avx2(view, shape, q, out, at, (part, avx2::has_vnni()));
        }
        return;
    }
    kernel::rows::<false>(view, shape, q, out, at, (part, false));
}

/// The kernels with AVX2 and FMA; the scores through `vpdpbusd` when `vnni` (which the kernel
/// checks the CPU has).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2(
    view: &LayerView<'_>,
    shape: &Shape,
    q: &[f32],
    out: &mut [f32],
    at: At,
    part: (Part, bool),
) {
    kernel::rows::<true>(view, shape, q, out, at, part);
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
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to integer
    let x = if x < -87.0 { -87.0 } else { x };
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // n is in [-126, 0], so the biased exponent is a normal one. `shifted` and `ROUND` share
    // their exponent, so the difference of their bits is n as an integer (a float-to-int cast
    // here would not vectorize).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    p * f32::from_bits(((n_bits + 127) as u32) << 23)
}

#[cfg(test)]
mod tests;
