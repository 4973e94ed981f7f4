//! The score and value passes over an int8 cache with AVX2 and FMA intrinsics: what the
//! auto-vectorized loops of [`super::kernel`] compute (with AVX-512 VNNI, the scores of the query
//! quantized to 15 bits), in an order that keeps every accumulator in a register.
//!
//! - Scores take eight keys at a time: they are widened and scaled once into a buffer that every
//!   query vector of the block reads, each vector keeps one accumulator per key (eight FMA chains
//!   side by side), and one `vhaddps` tree turns the eight accumulators into the eight scores.
//!   With AVX-512 VNNI, the queries are 15-bit integers per scale group in two bytes
//!   (`kernel::quantize_group`), the keys' bytes are transposed so that lane `i` is key `i`, and
//!   `vpdpbusd` adds four products of a broadcast query to all eight keys' exact integer sums at
//!   once: half the instructions of the FMAs (a `vpdpbusd` does 32 multiply-adds, an FMA 8,
//!   and each query element takes two bytes).
//! - Values take tiles of keys: their rows are widened and multiplied by their group scales
//!   once into a buffer (16 KiB), then each pair of query vectors adds one scale group (four
//!   registers each) of every key of the tile, weighted by its softmax weight: eight
//!   accumulators, no spills.
//!
//! A vector's result depends only on its own query, the keys and its weights: the sum for a key
//! is the same FMA chain (or exact integer) and the same tree whichever of the eight slots the
//! key lands in, and the value sums run over positions in order. Blocks of any size, and any
//! split across threads, give the same bits.

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
            store_scores(&mut p[j * n + t..][..m], s);
        }
        t += m;
    }
}

/// The query vectors of a block for [`scores_vnni`], as 15-bit integers per scale group in two
/// bytes (see `kernel::quantize_group`).
#[derive(Clone, Copy)]
pub(super) struct Query<'a> {
    /// The high bytes plus 128, `[vector][hd]`.
    pub hi: &'a [u8],
    /// The low bytes plus 128, `[vector][hd]`.
    pub lo: &'a [u8],
    /// Group scales times `1 / sqrt(hd)`, `[vector][group]`.
    pub scales: &'a [f32],
    /// Vectors.
    pub n: usize,
}

/// [`scores`] for 15-bit queries through `vpdpbusd`: `p[j * n + t] = Σ_g (dot_g * k_scale_g) *
/// q_scale_g` for `t0 <= t < n`, `dot_g` the integer dot product of group `g` of query `j` and
/// key `t`, exact. Panics unless the CPU has AVX2, FMA, AVX-512 F, VL and VNNI and
/// [`fits`]`(head.hd)`.
pub(super) fn scores_vnni(
    k: &[i8],
    k_scales: &[u16],
    head: Head,
    q: Query<'_>,
    span: (usize, usize),
    p: &mut [f32],
) {
    check(head.hd);
    assert!(
        has_vnni(),
        "the VNNI attention kernel needs AVX-512 F, VL and VNNI"
    );
    let groups = head.hd / GROUP;
    assert!(q.hi.len() >= q.n * head.hd && q.lo.len() >= q.n * head.hd);
    assert!(q.scales.len() >= q.n * groups && p.len() >= q.n * span.1);
    // SAFETY: the CPU has AVX2, FMA, AVX-512 F, VL and VNNI, the sizes were checked above and
    // `groups` is 1..=8 (`fits`).
    unsafe {
        match groups {
            1 => scores_vnni_g::<1>(k, k_scales, head, q, span, p),
            2 => scores_vnni_g::<2>(k, k_scales, head, q, span, p),
            3 => scores_vnni_g::<3>(k, k_scales, head, q, span, p),
            4 => scores_vnni_g::<4>(k, k_scales, head, q, span, p),
            5 => scores_vnni_g::<5>(k, k_scales, head, q, span, p),
            6 => scores_vnni_g::<6>(k, k_scales, head, q, span, p),
            7 => scores_vnni_g::<7>(k, k_scales, head, q, span, p),
            _ => scores_vnni_g::<8>(k, k_scales, head, q, span, p),
        }
    }
}

/// Whether the CPU has the AVX-512 extensions [`scores_vnni`] uses (on 256-bit vectors).
pub(crate) fn has_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// The group scales of eight keys from `t` (slots past `m` keys repeat the last), `[group][key]`.
#[inline(always)]
fn key_scales<const G: usize>(
    k_scales: &[u16],
    head: Head,
    t: usize,
    m: usize,
) -> [[f32; KEYS]; G] {
    let mut ks = [[0.0f32; KEYS]; G];
    for i in 0..KEYS {
        let key = head.scales(k_scales, t + i.min(m - 1));
        for (ks, &s) in ks.iter_mut().zip(key) {
            ks[i] = scale_f32(s);
        }
    }
    ks
}

/// Stores the scores of one vector for `m` keys (a partial tile through a buffer: a copy of `m`
/// floats is a call to memcpy).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn store_scores(out: &mut [f32], s: __m256) {
    if out.len() == KEYS {
        // SAFETY: `out` is 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    } else {
        let mut lanes = [0.0f32; KEYS];
        // SAFETY: `lanes` is 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
        out.copy_from_slice(&lanes[..out.len()]);
    }
}

/// [`scores_vnni`] for heads of `G` groups. A tile's eight keys are transposed group by group
/// so that lane `i` of a register is key `i`: register `d` holds bytes `4d..4d + 4` of the group
/// of each key, and one `vpdpbusd` with four query bytes broadcast adds four products to each
/// key's sum. The query bytes are stored plus 128 (`vpdpbusd` takes one unsigned operand), so
/// the high and the low sums each start from `-128 Σ k`; the dot product is
/// `254 * high + low`, rounded once to f32 by one fused multiply-add.
///
/// # Safety
/// Needs AVX2, FMA, AVX-512 F, VL and VNNI, `G * GROUP == head.hd`, and `q` and `p` as
/// [`scores_vnni`] checks them.
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
unsafe fn scores_vnni_g<const G: usize>(
    k: &[i8],
    k_scales: &[u16],
    head: Head,
    q: Query<'_>,
    (t0, n): (usize, usize),
    p: &mut [f32],
) {
    let bias = _mm256_set1_epi8(i8::MIN); // bytes of 128 as the unsigned operand
    let mut t = t0;
    while t < n {
        let m = KEYS.min(n - t);
        let mut kt = [[_mm256_setzero_si256(); KEYS]; G];
        let mut start = [_mm256_setzero_si256(); G];
        for (g, (kt, start)) in kt.iter_mut().zip(&mut start).enumerate() {
            // (Loops, not closures: a closure does not get this function's target features.)
            let mut rows = [_mm256_setzero_si256(); KEYS];
            for (i, r) in rows.iter_mut().enumerate() {
                let row = &head.row(k, t + i.min(m - 1))[g * GROUP..][..GROUP];
                // SAFETY: `row` is 32 bytes; the load is unaligned.
                *r = unsafe { _mm256_loadu_si256(row.as_ptr().cast()) };
            }
            *kt = transpose(rows);
            let mut sum = _mm256_setzero_si256();
            for &x in kt.iter() {
                sum = _mm256_dpbusd_epi32(sum, bias, x);
            }
            *start = _mm256_sub_epi32(_mm256_setzero_si256(), sum);
        }
        let ks = key_scales(k_scales, head, t, m);
        let tile = (&kt, &start, &ks);
        let mut j = 0;
        while j + 2 <= q.n {
            // SAFETY: as this function's.
            unsafe { tile_vectors::<G, 2>(tile, q, j, &mut p[j * n + t..], (n, m)) };
            j += 2;
        }
        if j < q.n {
            // SAFETY: as this function's.
            unsafe { tile_vectors::<G, 1>(tile, q, j, &mut p[j * n + t..], (n, m)) };
        }
        t += m;
    }
}

/// The scores of vectors `j..j + J` for one tile of keys (`kt`, `start` and `ks` as in
/// [`scores_vnni_g`]), to `p` (`m` scores a vector, `n` apart). Two vectors at a time give each
/// transposed key register two uses and four independent sums per group.
///
/// # Safety
/// As [`scores_vnni_g`]'s.
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
#[inline]
unsafe fn tile_vectors<const G: usize, const J: usize>(
    (kt, start, ks): (&[[__m256i; KEYS]; G], &[__m256i; G], &[[f32; KEYS]; G]),
    q: Query<'_>,
    j: usize,
    p: &mut [f32],
    (n, m): (usize, usize),
) {
    let hd = G * GROUP;
    let (hi, lo) = (&q.hi[j * hd..][..J * hd], &q.lo[j * hd..][..J * hd]);
    let mut s = [_mm256_setzero_ps(); J];
    for g in 0..G {
        let mut high = [start[g]; J];
        let mut low = [start[g]; J];
        for (d, &x) in kt[g].iter().enumerate() {
            for v in 0..J {
                let at = v * hd + g * GROUP + 4 * d;
                high[v] = _mm256_dpbusd_epi32(high[v], four(hi, at), x);
                low[v] = _mm256_dpbusd_epi32(low[v], four(lo, at), x);
            }
        }
        // SAFETY: `ks[g]` is 8 floats.
        let kscale = unsafe { _mm256_loadu_ps(ks[g].as_ptr()) };
        for v in 0..J {
            let dot = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(high[v]),
                _mm256_set1_ps(254.0),
                _mm256_cvtepi32_ps(low[v]),
            );
            let dot = _mm256_mul_ps(dot, kscale);
            s[v] = _mm256_fmadd_ps(dot, _mm256_set1_ps(q.scales[(j + v) * G + g]), s[v]);
        }
    }
    for (v, s) in s.iter().enumerate() {
        store_scores(&mut p[v * n..][..m], *s);
    }
}

/// Bytes `at..at + 4` of `bytes` in every 32-bit lane.
#[target_feature(enable = "avx2")]
#[inline]
fn four(bytes: &[u8], at: usize) -> __m256i {
    let four: [u8; 4] = bytes[at..][..4].try_into().unwrap_or([0; 4]);
    _mm256_set1_epi32(i32::from_le_bytes(four))
}

/// The 8×8 transpose of 32-bit lanes: lane `i` of result `d` is lane `d` of `r[i]`.
#[target_feature(enable = "avx2")]
#[inline]
fn transpose(r: [__m256i; KEYS]) -> [__m256i; KEYS] {
    // Pairs: [r0.0 r1.0 r0.1 r1.1 | r0.4 r1.4 r0.5 r1.5] and [.2 .3 | .6 .7].
    let lo01 = _mm256_unpacklo_epi32(r[0], r[1]);
    let hi01 = _mm256_unpackhi_epi32(r[0], r[1]);
    let lo23 = _mm256_unpacklo_epi32(r[2], r[3]);
    let hi23 = _mm256_unpackhi_epi32(r[2], r[3]);
    let lo45 = _mm256_unpacklo_epi32(r[4], r[5]);
    let hi45 = _mm256_unpackhi_epi32(r[4], r[5]);
    let lo67 = _mm256_unpacklo_epi32(r[6], r[7]);
    let hi67 = _mm256_unpackhi_epi32(r[6], r[7]);
    // Quads: lane d of r0..r3 in the low half, lane d + 4 in the high half.
    let d0 = _mm256_unpacklo_epi64(lo01, lo23);
    let d1 = _mm256_unpackhi_epi64(lo01, lo23);
    let d2 = _mm256_unpacklo_epi64(hi01, hi23);
    let d3 = _mm256_unpackhi_epi64(hi01, hi23);
    let e0 = _mm256_unpacklo_epi64(lo45, lo67);
    let e1 = _mm256_unpackhi_epi64(lo45, lo67);
    let e2 = _mm256_unpacklo_epi64(hi45, hi67);
    let e3 = _mm256_unpackhi_epi64(hi45, hi67);
    [
        _mm256_permute2x128_si256::<0x20>(d0, e0),
        _mm256_permute2x128_si256::<0x20>(d1, e1),
        _mm256_permute2x128_si256::<0x20>(d2, e2),
        _mm256_permute2x128_si256::<0x20>(d3, e3),
        _mm256_permute2x128_si256::<0x31>(d0, e0),
        _mm256_permute2x128_si256::<0x31>(d1, e1),
        _mm256_permute2x128_si256::<0x31>(d2, e2),
        _mm256_permute2x128_si256::<0x31>(d3, e3),
    ]
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
    // (Loops, not `array::from_fn`: a closure does not get this function's target features.)
    let mut acc = [[_mm256_setzero_ps(); CPG]; J];
    for (j, a) in acc.iter_mut().enumerate() {
        for (c, a) in a.iter_mut().enumerate() {
            // SAFETY: a chunk is 8 floats.
            *a = unsafe { _mm256_loadu_ps(out[at(j, c)].0.as_ptr()) };
        }
    }
    let keys = vf.len() / nch;
    let mut weights: [&[f32]; J] = [&[]; J];
    for (j, w) in weights.iter_mut().enumerate() {
        *w = &p[(j0 + j) * n + t..][..keys];
    }
    for (i, row) in vf.chunks_exact(nch).enumerate() {
        let x = &row[g * CPG..][..CPG];
        let mut w = [_mm256_setzero_ps(); J];
        for (w, p) in w.iter_mut().zip(&weights) {
            *w = _mm256_set1_ps(p[i]);
        }
        for (a, w) in acc.iter_mut().zip(&w) {
            for (a, x) in a.iter_mut().zip(x) {
                *a = _mm256_fmadd_ps(*w, *x, *a);
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        for (c, a) in a.iter().enumerate() {
            // SAFETY: a chunk is 8 floats.
            unsafe { _mm256_storeu_ps(out[at(j, c)].0.as_mut_ptr(), *a) };
        }
    }
}
