//! The attention kernels behind [`super::attend`].
//!
//! Work is cut into *blocks* of up to [`MAX_NQ`] query vectors that read the same kv head: the
//! heads of that kv head in one row (decode), and those of consecutive rows (prefill). A block
//! makes one pass over the keys (every widened key chunk is used by all its vectors), a softmax
//! per vector over that vector's causal prefix, and one pass over the values per 16 output
//! elements. A vector's result does not depend on the other vectors of its block: positions past
//! its causal limit get weight exactly 0, so row splits across threads give identical results.
//!
//! Everything is `#[inline(always)]` down from [`rows`], so the AVX2 copy compiled in
//! [`super::run_avx2`] vectorizes all of it; `FMA` selects fused multiply-adds there.

use super::{Shape, softmax_unnormalized};
use crate::{GROUP, LayerView, scale_f32};
use std::ops::Range;

/// Lanes of one chunk (one AVX2 register of f32).
pub(super) const VL: usize = 8;
/// Chunks per int8 quantization group.
const CPG: usize = GROUP / VL;
const _: () = assert!(GROUP.is_multiple_of(2 * VL));
/// Most query vectors per block: their accumulators must fit the 16 vector registers.
const MAX_NQ: usize = 6;
/// Most query vectors per block of the int8 intrinsics kernels, whose registers do not depend on
/// it: more vectors share each widened key.
const MAX_NQ_INT8: usize = 24;
/// Most chunks per head row: head dimensions up to 256 (Gemma 3).
pub(super) const MAX_CHUNKS: usize = 32;

/// 8 f32 lanes, aligned so their loads fold into arithmetic instructions.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
pub(super) struct F8(pub(super) [f32; VL]);

/// A cached element type.
trait Lane: Copy + Default + Send + Sync {
    /// Whether rows are quantized in groups of [`GROUP`] (otherwise unscaled).
    const GROUPED: bool;
    /// 8 elements as f32 (without any scale).
    fn widen(s: &[Self; VL]) -> [f32; VL];
    /// The rows as int8 when they are.
    fn int8(s: &[Self]) -> Option<&[i8]>;
}

impl Lane for f32 {
    const GROUPED: bool = false;

    #[inline(always)]
    fn widen(s: &[f32; VL]) -> [f32; VL] {
        *s
    }

    fn int8(_: &[f32]) -> Option<&[i8]> {
        None
    }
}

impl Lane for i8 {
    const GROUPED: bool = true;

    #[inline(always)]
    fn widen(s: &[i8; VL]) -> [f32; VL] {
        // A plain loop of this form becomes one sign-extend and one convert.
        let mut t = [0.0f32; VL];
        for (t, &s) in t.iter_mut().zip(s) {
            *t = f32::from(s);
        }
        t
    }

    fn int8(s: &[i8]) -> Option<&[i8]> {
        Some(s)
    }
}

/// `acc + a * b`, fused when `FMA` (the AVX2 build) and as two operations otherwise (a fused
/// multiply-add without hardware support would be a slow library call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, acc: f32) -> f32 {
    if FMA { a.mul_add(b, acc) } else { acc + a * b }
}

/// Sum of 8 lanes as a short tree.
#[inline(always)]
fn hsum(a: &[f32; VL]) -> f32 {
    let h = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (h[0] + h[2]) + (h[1] + h[3])
}

/// Chunk `c` of a row of `hd` elements, zero-padded past the end.
#[inline(always)]
fn chunk<E: Lane>(row: &[E], c: usize, hd: usize) -> [E; VL] {
    let start = c * VL;
    if start + VL <= hd {
        row[start..start + VL]
            .try_into()
            .unwrap_or([E::default(); VL])
    } else {
        let mut x = [E::default(); VL];
        if start < hd {
            x[..hd - start].copy_from_slice(&row[start..hd]);
        }
        x
    }
}

/// Where one kv head sits in the cache rows.
#[derive(Clone, Copy)]
pub(super) struct Head {
    /// Row width of the cache (all kv heads).
    kw: usize,
    /// Index of the kv head.
    g: usize,
    nkv: usize,
    pub(super) hd: usize,
    pub(super) inv_sqrt: f32,
}

impl Head {
    /// Chunks per row of this head (rounded up).
    #[inline(always)]
    fn chunks(&self) -> usize {
        self.hd.div_ceil(VL)
    }

    /// Scale groups per row of this head (int8 only).
    #[inline(always)]
    fn groups(&self) -> usize {
        self.hd / GROUP
    }

    #[inline(always)]
    pub(super) fn row<'a, E>(&self, data: &'a [E], t: usize) -> &'a [E] {
        &data[t * self.kw + self.g * self.hd..][..self.hd]
    }

    #[inline(always)]
    pub(super) fn scales<'a>(&self, scales: &'a [u16], t: usize) -> &'a [u16] {
        &scales[(t * self.nkv + self.g) * self.groups()..][..self.groups()]
    }
}

/// Per-thread buffers, allocated once per [`rows`] call.
#[derive(Default)]
struct Scratch {
    /// Query vectors of a block as `[chunk][vector]`, zero-padded to whole chunks.
    q: Vec<F8>,
    /// Output vectors of a block as `[chunk][vector]`.
    out: Vec<F8>,
    /// Scores, then weights, `[vector][position]`.
    p: Vec<f32>,
    /// For the VNNI kernel, the query vectors as 15-bit integers per scale group, in two bytes
    /// each (see [`quantize_group`]) plus 128: the high bytes `[vector][hd]`, then the low ones.
    q8: Vec<u8>,
    /// For the VNNI kernel, each vector's group scales times `1 / sqrt(hd)`, `[vector][group]`.
    qs: Vec<f32>,
}

/// Attention for the rows of `q` and every head (see [`At`]).
#[inline(always)]
pub(super) fn rows<const FMA: bool>(
    view: &LayerView<'_>,
    shape: &Shape,
    q: &[f32],
    out: &mut [f32],
    at: At,
    (part, vnni): (Part, bool),
) {
    match *view {
        LayerView::F32 { k, v } => {
            rows_typed::<f32, FMA>(k, v, None, shape, q, out, at, (part, vnni))
        }
        LayerView::Int8 {
            k,
            v,
            k_scales,
            v_scales,
        } => {
            let scales = Some((k_scales, v_scales));
            rows_typed::<i8, FMA>(k, v, scales, shape, q, out, at, (part, vnni))
        }
    }
}

/// Position of the first row, and the sliding window: a row sees at most its last `window`
/// positions (its own included) when set.
pub type At = (usize, Option<usize>);

/// The kv heads a call computes, and the index in the whole rows of `q` where its `out` starts
/// (a call for some heads of one row writes only their part of the row).
#[derive(Debug, Clone)]
pub(super) struct Part {
    pub kv: Range<usize>,
    pub out_base: usize,
}

impl Part {
    /// Every kv head, `out` as long as `q`.
    pub fn all(nkv: usize) -> Part {
        Part {
            kv: 0..nkv,
            out_base: 0,
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows_typed<E: Lane, const FMA: bool>(
    k: &[E],
    v: &[E],
    scales: Option<(&[u16], &[u16])>,
    sh: &Shape,
    q: &[f32],
    out: &mut [f32],
    at: At,
    part: (Part, bool),
) {
    // A copy with the common head size as a constant, so chunk bounds fold away.
    if sh.hd == 64 {
        rows_hd::<E, FMA>(k, v, scales, sh, 64, q, out, at, part);
    } else {
        rows_hd::<E, FMA>(k, v, scales, sh, sh.hd, q, out, at, part);
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows_hd<E: Lane, const FMA: bool>(
    k: &[E],
    v: &[E],
    scales: Option<(&[u16], &[u16])>,
    sh: &Shape,
    hd: usize,
    q: &[f32],
    out: &mut [f32],
    (first_pos, window): At,
    (part, vnni): (Part, bool),
) {
    let width = sh.n_heads * hd;
    let n_rows = q.len() / width;
    // The intrinsics kernels, in the AVX2 build (`FMA`) over an int8 cache.
    #[cfg(target_arch = "x86_64")]
    let int8 = match (E::int8(k), E::int8(v), scales) {
        (Some(k), Some(v), Some(scales)) if FMA && super::avx2::fits(hd) => Some((k, v, scales)),
        _ => None,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let int8: Option<(&[i8], &[i8], (&[u16], &[u16]))> = None;
    #[cfg(not(target_arch = "x86_64"))]
    let _ = vnni;
    let max_nq = if int8.is_some() { MAX_NQ_INT8 } else { MAX_NQ };
    // Rows per block: as many whole rows of one kv head's query heads as fit.
    let rows_per_block = (max_nq / sh.group).max(1);
    let mut scratch = Scratch::default();
    let mut vectors = Vec::with_capacity(max_nq);
    for r0 in (0..n_rows).step_by(rows_per_block) {
        let r1 = (r0 + rows_per_block).min(n_rows);
        for g in part.kv.clone() {
            let head = Head {
                kw: sh.nkv * hd,
                g,
                nkv: sh.nkv,
                hd,
                inv_sqrt: sh.inv_sqrt,
            };
            // (offset of the vector in q/out, first and end of the positions it attends to)
            vectors.clear();
            for r in r0..r1 {
                let end = first_pos + r + 1;
                let start = window.map_or(0, |w| end.saturating_sub(w));
                for j in 0..sh.group {
                    let offset = r * width + (g * sh.group + j) * hd;
                    vectors.push((offset, start, end));
                }
            }
            for block in vectors.chunks(max_nq) {
                let out = (&mut *out, part.out_base);
                let args = (k, v, scales, head, block, q, out, &mut scratch);
                #[cfg(target_arch = "x86_64")]
                if let Some((k, v, scales)) = int8 {
                    let args = (k, v, None, head, block, q, args.6, args.7);
                    run_block_int8(args, scales, vnni);
                    continue;
                }
                match block.len() {
                    1 => run_block::<E, 1, FMA>(args),
                    2 => run_block::<E, 2, FMA>(args),
                    3 => run_block::<E, 3, FMA>(args),
                    4 => run_block::<E, 4, FMA>(args),
                    5 => run_block::<E, 5, FMA>(args),
                    _ => run_block::<E, 6, FMA>(args),
                }
            }
        }
    }
}

type BlockArgs<'a, E> = (
    &'a [E],
    &'a [E],
    Option<(&'a [u16], &'a [u16])>,
    Head,
    &'a [(usize, usize, usize)],
    &'a [f32],
    (&'a mut [f32], usize),
    &'a mut Scratch,
);

/// One block of `NQ` query vectors over one kv head, through the generic kernels.
#[inline(always)]
fn run_block<E: Lane, const NQ: usize, const FMA: bool>(args: BlockArgs<'_, E>) {
    let (k, v, scales, head, vectors, q, (out, out_base), scratch) = args;
    let span = gather(head, vectors, q, scratch, false);
    let qf = scratch.q.as_chunks::<NQ>().0;
    scores::<E, NQ, FMA>(k, scales.map(|s| s.0), head, qf, span, &mut scratch.p);
    normalize(vectors, span.1, &mut scratch.p);
    values::<E, NQ, FMA>(
        v,
        scales.map(|s| s.1),
        head,
        &scratch.p,
        span,
        &mut scratch.out,
    );
    scatter(head, vectors, &scratch.out, out, out_base);
}

/// One block of any number of query vectors over one kv head of an int8 cache, through the
/// intrinsics kernels (which panic without AVX2 and FMA, or unless `avx2::fits(hd)`), the scores
/// through `vpdpbusd` over 15-bit queries when `vnni` (which panics without AVX-512 VNNI).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn run_block_int8(args: BlockArgs<'_, i8>, (k_scales, v_scales): (&[u16], &[u16]), vnni: bool) {
    let (k, v, _, head, vectors, q, (out, out_base), scratch) = args;
    let nq = vectors.len();
    let span = gather(head, vectors, q, scratch, vnni);
    if vnni {
        let query = super::avx2::Query {
            hi: &scratch.q8[..nq * head.hd],
            lo: &scratch.q8[nq * head.hd..],
            scales: &scratch.qs,
            n: nq,
        };
        super::avx2::scores_vnni(k, k_scales, head, query, span, &mut scratch.p);
    } else {
        super::avx2::scores(k, k_scales, head, &scratch.q, nq, span, &mut scratch.p);
    }
    normalize(vectors, span.1, &mut scratch.p);
    super::avx2::values(v, v_scales, head, &scratch.p, nq, span, &mut scratch.out);
    scatter(head, vectors, &scratch.out, out, out_base);
}

/// Gathers the block's query vectors into `scratch.q` as `[chunk][vector]`, sizes the scores
/// (`[vector][position]`) and the outputs, and returns the positions the block reads. With
/// `quantize` (for the VNNI kernel; `hd` a whole number of groups), the vectors go to
/// `scratch.q8` and `scratch.qs` instead, each group as 15-bit integers times a scale.
#[inline(always)]
fn gather(
    head: Head,
    vectors: &[(usize, usize, usize)],
    q: &[f32],
    scratch: &mut Scratch,
    quantize: bool,
) -> (usize, usize) {
    let nq = vectors.len();
    let (hd, nch) = (head.hd, head.chunks());
    let n = vectors.iter().map(|v| v.2).max().unwrap_or(0);
    let t0 = vectors.iter().map(|v| v.1).min().unwrap_or(0);
    if quantize {
        let groups = head.groups();
        scratch.q8.clear();
        scratch.q8.resize(2 * nq * hd, 0);
        scratch.qs.clear();
        scratch.qs.resize(nq * groups, 0.0);
        let (hi, lo) = scratch.q8.split_at_mut(nq * hd);
        for (j, &(offset, _, _)) in vectors.iter().enumerate() {
            let qv = &q[offset..][..groups * GROUP];
            for (g, x) in qv.chunks_exact(GROUP).enumerate() {
                let at = j * hd + g * GROUP;
                let bytes = (&mut hi[at..][..GROUP], &mut lo[at..][..GROUP]);
                let x = x.try_into().unwrap_or(&[0.0; GROUP]);
                scratch.qs[j * groups + g] = quantize_group(x, bytes) * head.inv_sqrt;
            }
        }
    } else {
        let qf = &mut scratch.q;
        qf.clear();
        qf.resize(nch * nq, F8::default());
        for (j, &(offset, _, _)) in vectors.iter().enumerate() {
            let qv = &q[offset..][..hd];
            for c in 0..nch {
                qf[c * nq + j] = F8(chunk(qv, c, hd));
            }
        }
    }
    scratch.p.clear();
    scratch.p.resize(nq * n, 0.0);
    scratch.out.clear();
    scratch.out.resize(nch * nq, F8::default());
    (t0, n)
}

/// Largest 15-bit query integer: `254 * 127`, so that its two bytes are both in `[-127, 127]`.
const Q15: f32 = 32_258.0;

/// Query groups whose largest magnitude is below this (2^-100) count as zeros: `Q15 / max` and
/// `max / Q15` stay normal floats above it.
const TINY: f32 = 7.888_609e-31;

/// Quantizes `x` to integers `Q_i = round(x_i / scale)` in `[-Q15, Q15]`, `scale = max |x| / Q15`,
/// and returns the scale. `Q_i = 254 * h_i + l_i` with `h_i`, `l_i` in `[-127, 127]`, stored
/// plus 128 in `hi` and `lo` (the unsigned operand of `vpdpbusd`): a dot product with int8 keys
/// is `254 * Σ h·k + Σ l·k`, exact in 32 bits. An element is off by at most half a step,
/// `max |x| / 64516` (plus f32 rounding). A group whose largest magnitude is below [`TINY`]
/// counts as zeros (scale 0); one with a NaN or an infinity gets zeros and a NaN scale, so that
/// its scores are NaN as in the float kernels. Rounds to nearest (ties to even) by adding and
/// subtracting 1.5 * 2^23, the same in every build.
#[inline(always)]
fn quantize_group(x: &[f32; GROUP], (hi, lo): (&mut [u8], &mut [u8])) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    // Lane-wise maxima first, so that it vectorizes; `v * 0` is 0 but for NaN and infinities.
    let (mut lanes, mut nonzero) = ([0.0f32; VL], [0.0f32; VL]);
    for c in x.chunks_exact(VL) {
        for ((m, z), &v) in lanes.iter_mut().zip(&mut nonzero).zip(c) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
            *z += v * 0.0;
        }
    }
    let amax = lanes.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
    if !nonzero.iter().all(|&z| z == 0.0) {
        hi.fill(128);
        lo.fill(128);
        return f32::NAN;
    }
    let (scale, inv) = if amax >= TINY {
        (amax / Q15, Q15 / amax)
    } else {
        (0.0, 0.0)
    };
    // Fixed-size loops (not `array::from_fn`, whose closures do not get the caller's target
    // features), so that each vectorizes. A byte is read from the bits of an integer plus
    // 1.5 * 2^23 + 128: the low mantissa bits hold it.
    let (mut q, mut top) = ([0.0f32; GROUP], [0.0f32; GROUP]);
    for ((q, t), &x) in q.iter_mut().zip(&mut top).zip(x) {
        *q = ((x * inv + ROUND) - ROUND).clamp(-Q15, Q15);
        *t = (*q * (1.0 / 254.0) + ROUND) - ROUND;
    }
    let (mut h, mut l) = ([0u8; GROUP], [0u8; GROUP]);
    for (((h, l), &q), &t) in h.iter_mut().zip(&mut l).zip(&q).zip(&top) {
        *h = ((t + (ROUND + 128.0)).to_bits() & 0xff) as u8;
        *l = ((q - 254.0 * t + (ROUND + 128.0)).to_bits() & 0xff) as u8;
    }
    hi.copy_from_slice(&h);
    lo.copy_from_slice(&l);
    scale
}

/// The softmax of each vector's scores over its own positions; the others' weights become 0.
#[inline(always)]
fn normalize(vectors: &[(usize, usize, usize)], n: usize, p: &mut [f32]) {
    for (j, &(_, start, limit)) in vectors.iter().enumerate() {
        let row = &mut p[j * n..][..n];
        let inv = 1.0 / softmax_unnormalized(&mut row[start..limit]);
        row[start..limit].iter_mut().for_each(|x| *x *= inv);
        row[..start].fill(0.0);
        row[limit..].fill(0.0);
    }
}

/// Writes the block's outputs (`[chunk][vector]`) to the vectors' places in `out`.
#[inline(always)]
fn scatter(
    head: Head,
    vectors: &[(usize, usize, usize)],
    of: &[F8],
    out: &mut [f32],
    out_base: usize,
) {
    let nq = vectors.len();
    for (j, &(offset, _, _)) in vectors.iter().enumerate() {
        let ov = &mut out[offset - out_base..][..head.hd];
        for (c, o) in ov.chunks_mut(VL).enumerate() {
            o.copy_from_slice(&of[c * nq + j].0[..o.len()]);
        }
    }
}

/// `p[j * n + t] = inv_sqrt * q_j · (k_t with its group scales applied)` for `t0 <= t < n`.
/// Each key row is widened and scaled once, into registers, for all `NQ` vectors.
#[inline(always)]
fn scores<E: Lane, const NQ: usize, const FMA: bool>(
    k: &[E],
    k_scales: Option<&[u16]>,
    head: Head,
    qf: &[[F8; NQ]],
    (t0, n): (usize, usize),
    p: &mut [f32],
) {
    let (hd, nch) = (head.hd, head.chunks());
    for t in t0..n {
        let row = head.row(k, t);
        let mut kf = [[0.0f32; VL]; MAX_CHUNKS];
        for (c, kc) in kf.iter_mut().enumerate().take(nch) {
            *kc = E::widen(&chunk(row, c, hd));
        }
        if let Some(ks) = k_scales.filter(|_| E::GROUPED) {
            let ks = head.scales(ks, t);
            for (c, kc) in kf.iter_mut().enumerate().take(nch) {
                let s = scale_f32(ks[c / CPG]);
                kc.iter_mut().for_each(|x| *x *= s);
            }
        }
        for j in 0..NQ {
            let mut acc = [0.0f32; VL];
            for (kc, qc) in kf.iter().zip(qf).take(nch) {
                for ((a, &q), &x) in acc.iter_mut().zip(&qc[j].0).zip(kc) {
                    *a = madd::<FMA>(q, x, *a);
                }
            }
            p[j * n + t] = hsum(&acc) * head.inv_sqrt;
        }
    }
}

/// `out[c][j] = Σ_{t0 <= t < n} p[j * n + t] * v_scale_{t, group of c} * v_t[chunk c]`, two
/// chunks (16 elements, within one scale group) at a time so the accumulators stay in
/// registers.
#[inline(always)]
fn values<E: Lane, const NQ: usize, const FMA: bool>(
    v: &[E],
    v_scales: Option<&[u16]>,
    head: Head,
    p: &[f32],
    (t0, n): (usize, usize),
    out: &mut [F8],
) {
    let (hd, nch) = (head.hd, head.chunks());
    for c0 in (0..nch).step_by(2) {
        let mut acc = [[[0.0f32; VL]; 2]; NQ];
        for t in t0..n {
            let row = head.row(v, t);
            let v0 = E::widen(&chunk(row, c0, hd));
            let v1 = E::widen(&chunk(row, c0 + 1, hd));
            let s = match v_scales {
                Some(vs) if E::GROUPED => scale_f32(head.scales(vs, t)[c0 / CPG]),
                _ => 1.0,
            };
            for (j, a) in acc.iter_mut().enumerate() {
                let w = p[j * n + t] * s;
                for (a, &x) in a[0].iter_mut().zip(&v0) {
                    *a = madd::<FMA>(w, x, *a);
                }
                for (a, &x) in a[1].iter_mut().zip(&v1) {
                    *a = madd::<FMA>(w, x, *a);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            out[c0 * NQ + j] = F8(a[0]);
            if c0 + 1 < nch {
                out[(c0 + 1) * NQ + j] = F8(a[1]);
            }
        }
    }
}
