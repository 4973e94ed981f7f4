//! The score and value passes over an int8 cache with AVX2 and FMA intrinsics: what the
//! auto-vectorized loops of [`super::kernel`] compute, in an order that keeps every accumulator
//! in a register.
//!
//! - Scores take eight keys at a time: they are widened and scaled once into a buffer that every
//!   query vector of the block reads, each vector keeps one accumulator per key (eight FMA chains
//!   side by side), and one `vhaddps` tree turns the eight accumulators into the eight scores.
//! - Values take tiles of keys: their rows are widened and multiplied by their group scales
//!   once into a buffer (16 KiB), then each pair of query vectors adds one scale group (four
//!   registers each) of every key of the tile, weighted by its softmax weight: eight
//!   accumulators, no spills.
//!
//! A vector's result depends only on its own query, the keys and its weights: the sum for a key
//! is the same FMA chain and the same tree whichever of the eight slots the key lands in, and the
//! value sums run over positions in order. Blocks of any size, and any split across threads, give
//! the same bits.

#![allow(unsafe_code)]

use super::kernel::{F8, Head, MAX_CHUNKS, VL};
use crate::{GROUP, scale_f32};
use std::arch::x86_64::*;

/// Keys per score tile.
const KEYS: usize = 8;
/// Chunks of one scale group.
const CPG: usize = GROUP / VL;

/// Whether these kernels take a head of `hd` elements.
pub(super) fn fits(hd: usize) -> bool {
    hd > 0 && hd.is_multiple_of(GROUP) && hd <= MAX_CHUNKS * VL
}

/// Panics unless the CPU has AVX2 and FMA (std caches the checks) and [`fits`]`(hd)`.
fn check(hd: usize) {
    assert!(
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && fits(hd),
        "the AVX2 attention kernels need AVX2 and FMA, and a head of a whole number of groups \
         up to {} elements (got {hd})",
        MAX_CHUNKS * VL
    );
}

/// `p[j * n + t] = inv_sqrt * q_j · (k_t with its group scales applied)` for `t0 <= t < n`, as
/// [`super::kernel`]'s `scores`, for the `nq` vectors of `qf` laid out `[chunk][vector]`.
/// Panics unless the CPU has AVX2 and FMA and [`fits`]`(head.hd)`.
pub(super) fn scores(
    k: &[i8],
    k_scales: &[u16],
    head: Head,
    qf: &[F8],
    nq: usize,
    span: (usize, usize),
    p: &mut [f32],
) {
    check(head.hd);
    // SAFETY: the CPU has AVX2 and FMA (checked above).
    unsafe { scores_avx2(k, k_scales, head, qf, nq, span, p) }
}

/// # Safety
/// Needs AVX2 and FMA, and [`fits`]`(head.hd)`.
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_avx2(
    k: &[i8],
    k_scales: &[u16],
    head: Head,
    qf: &[F8],
    nq: usize,
    (t0, n): (usize, usize),
    p: &mut [f32],
) {
    let nch = head.hd / VL;
    assert!(qf.len() >= nch * nq && p.len() >= nq * n);
    let mut kt = [_mm256_setzero_ps(); KEYS * MAX_CHUNKS];
    let mut t = t0;
    while t < n {
        let m = KEYS.min(n - t);
        // Slots past the last key repeat it; their scores are not stored.
        for (i, tile) in kt.chunks_exact_mut(MAX_CHUNKS).enumerate() {
            let key = t + i.min(m - 1);
            let row = head.row(k, key);
            let ks = head.scales(k_scales, key);
            for (c, kc) in tile.iter_mut().enumerate().take(nch) {
                let x = widen(&row[c * VL..][..VL]);
                *kc = _mm256_mul_ps(x, _mm256_set1_ps(scale_f32(ks[c / CPG])));
            }
        }
        for j in 0..nq {
            let mut acc = [_mm256_setzero_ps(); KEYS];
            for c in 0..nch {
                // SAFETY: a chunk is 8 floats.
                let q = unsafe { _mm256_loadu_ps(qf[c * nq + j].0.as_ptr()) };
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(q, kt[i * MAX_CHUNKS + c], *a);
                }
            }
            let s = _mm256_mul_ps(sum_lanes(&acc), _mm256_set1_ps(head.inv_sqrt));
            let out = &mut p[j * n + t..][..m];
            if m == KEYS {
                // SAFETY: `out` is 8 floats.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
            } else {
                // A partial tile through a buffer (a copy of `m` floats is a call to memcpy).
                let mut lanes = [0.0f32; KEYS];
                // SAFETY: `lanes` is 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
                out.copy_from_slice(&lanes[..m]);
            }
        }
        t += m;
    }
}

/// Eight int8 values as f32.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn widen(x: &[i8]) -> __m256 {
    assert!(x.len() >= VL);
    // SAFETY: `x` holds at least 8 bytes (checked above); the load is unaligned.
    let x = unsafe { _mm_loadl_epi64(x.as_ptr().cast()) };
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x))
}

/// Lane `i` of the result is the sum of the lanes of `a[i]`, as
/// `((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))` whatever `i` is.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn sum_lanes(a: &[__m256; KEYS]) -> __m256 {
    let r01 = _mm256_hadd_ps(a[0], a[1]);
    let r23 = _mm256_hadd_ps(a[2], a[3]);
    let r45 = _mm256_hadd_ps(a[4], a[5]);
    let r67 = _mm256_hadd_ps(a[6], a[7]);
    // Lanes 0..4: the first four lanes' sums of a0..a3; lanes 4..8: their last four.
    let s03 = _mm256_hadd_ps(r01, r23);
    let s47 = _mm256_hadd_ps(r45, r67);
    let first = _mm256_permute2f128_ps::<0x20>(s03, s47);
    let last = _mm256_permute2f128_ps::<0x31>(s03, s47);
    _mm256_add_ps(first, last)
}

/// `out[c][j] = Σ_{t0 <= t < n} p[j * n + t] * v_scale_{t, group of c} * v_t[chunk c]`, as
/// [`super::kernel`]'s `values`, for `nq` vectors, `out` laid out `[chunk][vector]`.
/// Panics unless the CPU has AVX2 and FMA and [`fits`]`(head.hd)`.
pub(super) fn values(
    v: &[i8],
    v_scales: &[u16],
    head: Head,
    p: &[f32],
    nq: usize,
    span: (usize, usize),
    out: &mut [F8],
) {
    check(head.hd);
    // SAFETY: the CPU has AVX2 and FMA (checked above).
    unsafe { values_avx2(v, v_scales, head, p, nq, span, out) }
}

/// # Safety
/// Needs AVX2 and FMA, and [`fits`]`(head.hd)`.
#[target_feature(enable = "avx2,fma")]
unsafe fn values_avx2(
    v: &[i8],
    v_scales: &[u16],
    head: Head,
    p: &[f32],
    nq: usize,
    (t0, n): (usize, usize),
    out: &mut [F8],
) {
    let nch = head.hd / VL;
    assert!(p.len() >= nq * n && out.len() >= nch * nq);
    out[..nch * nq].fill(F8::default());
    // Keys per tile: the tile's rows, widened and scaled, fill `vf` (16 KiB).
    let tile = TILE_CHUNKS / nch;
    let mut vf = [_mm256_setzero_ps(); TILE_CHUNKS];
    let mut t = t0;
    while t < n {
        let m = tile.min(n - t);
        for (i, chunks) in vf.chunks_exact_mut(nch).take(m).enumerate() {
            let row = head.row(v, t + i);
            let vs = head.scales(v_scales, t + i);
            for (c, x) in chunks.iter_mut().enumerate() {
                let s = _mm256_set1_ps(scale_f32(vs[c / CPG]));
                *x = _mm256_mul_ps(widen(&row[c * VL..][..VL]), s);
            }
        }
        for g in 0..nch / CPG {
            for j0 in (0..nq).step_by(2) {
                let at = (g, j0, nq, n, t);
                match nq - j0 {
                    1 => values_group::<1>(&vf[..m * nch], nch, p, at, out),
                    _ => values_group::<2>(&vf[..m * nch], nch, p, at, out),
                }
            }
        }
        t += m;
    }
}

/// Chunks of widened values per tile of keys.
const TILE_CHUNKS: usize = 512;

/// Adds the keys of `vf` (rows of `nch` chunks, from position `t`) to scale group `g` of vectors
/// `j0..j0 + J` of `nq` in `out`, weighted by their rows of `p` (`n` positions each).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn values_group<const J: usize>(
    vf: &[__m256],
    nch: usize,
    p: &[f32],
    (g, j0, nq, n, t): (usize, usize, usize, usize, usize),
    out: &mut [F8],
) {
    let at = |j: usize, c: usize| (g * CPG + c) * nq + j0 + j;
    // SAFETY (loads and stores): a chunk is 8 floats.
    let mut acc: [[__m256; CPG]; J] = std::array::from_fn(|j| {
        std::array::from_fn(|c| unsafe { _mm256_loadu_ps(out[at(j, c)].0.as_ptr()) })
    });
    let keys = vf.len() / nch;
    let p: [&[f32]; J] = std::array::from_fn(|j| &p[(j0 + j) * n + t..][..keys]);
    for (i, row) in vf.chunks_exact(nch).enumerate() {
        let x = &row[g * CPG..][..CPG];
        let w: [__m256; J] = std::array::from_fn(|j| _mm256_set1_ps(p[j][i]));
        for (a, w) in acc.iter_mut().zip(&w) {
            for (a, x) in a.iter_mut().zip(x) {
                *a = _mm256_fmadd_ps(*w, *x, *a);
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        for (c, a) in a.iter().enumerate() {
            unsafe { _mm256_storeu_ps(out[at(j, c)].0.as_mut_ptr(), *a) };
        }
    }
}
