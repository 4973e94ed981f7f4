//! Causal grouped-query attention over the [`KvCache`].
//!
//! For int8 caches the rows are never dequantized into a buffer. Each row is split in groups of
//! [`GROUP`] elements with one scale each: a score is `Σ_g k_scale_g * (Σ_{i in g} q_i·k_i8_i) /
//! sqrt(head_dim)` and output group `g` is `Σ_t p_t * v_scale_{t,g} * v_i8_t`. Inner loops run
//! over fixed 8-lane chunks with f32 accumulators so they vectorize.

use super::kv_cache::{GROUP, KvCache, KvError, LayerView, scale_f32};

/// Lanes per inner-loop chunk.
const LANES: usize = 16;
/// Minimum `rows * positions` before work is split across threads.
const PARALLEL_MIN_WORK: usize = 4096;

/// Computes causal attention for `S` query rows at positions `pos_start..pos_start + S`.
///
/// `q` and `out` are `[S, n_heads * head_dim]`, `q` already rotated. The K/V of those positions
/// must already be written to `cache` for `layer` (commit is not required). Row `s` attends to
/// positions `0..=pos_start + s`; query head `h` reads kv head `h / (n_heads / n_kv_heads)`.
/// With `threads > 1` and enough work, rows are split across scoped threads in chunks of equal
/// causal cost.
pub fn attention(
    q: &[f32],
    cache: &KvCache,
    layer: usize,
    pos_start: usize,
    n_heads: usize,
    out: &mut [f32],
    threads: usize,
) -> Result<(), KvError> {
    let geom = cache.geometry();
    let (hd, nkv) = (geom.head_dim, geom.n_kv_heads);
    if nkv == 0 || n_heads == 0 || !n_heads.is_multiple_of(nkv) {
        return Err(KvError::BadHeadGrouping {
            n_heads,
            n_kv_heads: nkv,
        });
    }
    let width = n_heads * hd;
    if width == 0 || !q.len().is_multiple_of(width) {
        return Err(KvError::NotRowMultiple {
            what: "q",
            len: q.len(),
            width,
        });
    }
    if out.len() != q.len() {
        return Err(KvError::LengthMismatch {
            what: "out",
            expected: q.len(),
            got: out.len(),
        });
    }
    let rows = q.len() / width;
    if rows == 0 {
        return Ok(());
    }
    let view = cache.layer_view(layer, pos_start + rows)?;
    let shape = Shape {
        n_heads,
        nkv,
        hd,
        group: n_heads / nkv,
        inv_sqrt: 1.0 / (hd as f32).sqrt(),
    };
    let bounds = split_rows(pos_start, rows, threads, rows * (pos_start + rows));
    if bounds.len() <= 2 {
        run(&view, &shape, q, out, pos_start);
        return Ok(());
    }
    std::thread::scope(|scope| {
        let (mut q_rest, mut out_rest) = (q, out);
        let mut handles = Vec::with_capacity(bounds.len() - 1);
        for w in bounds.windows(2) {
            let n = (w[1] - w[0]) * width;
            let (qc, qr) = q_rest.split_at(n);
            let (oc, or) = std::mem::take(&mut out_rest).split_at_mut(n);
            (q_rest, out_rest) = (qr, or);
            let (view, shape, first) = (&view, &shape, pos_start + w[0]);
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
    Ok(())
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
struct Shape {
    n_heads: usize,
    nkv: usize,
    hd: usize,
    group: usize,
    inv_sqrt: f32,
}

fn run(view: &LayerView<'_>, shape: &Shape, q: &[f32], out: &mut [f32], first_pos: usize) {
    match *view {
        LayerView::F32 { k, v } => rows_kernel(k, v, None, shape, q, out, first_pos),
        LayerView::Int8 {
            k,
            v,
            k_scales,
            v_scales,
        } => rows_kernel(k, v, Some((k_scales, v_scales)), shape, q, out, first_pos),
    }
}

/// Lanes of the register blocks (two SSE vectors).
const VL: usize = 8;
/// Chunks of [`VL`] lanes per int8 quantization group.
const CPG: usize = GROUP / VL;
const _: () = assert!(GROUP.is_multiple_of(VL));
/// Most query heads whose scores and value sums share one pass over the cache.
const MAX_BLOCK: usize = 4;
/// Positions per value-sum tile: the tile's values stay in L1 across the head-dim blocks.
const TILE: usize = 64;

/// 8 f32 lanes, 16-byte aligned so their loads fold into arithmetic instructions.
#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
struct F8([f32; VL]);

/// Where one kv head sits in the cache rows, and the attention constants.
struct GroupGeo {
    /// Elements per scale group: [`GROUP`] for int8, `hd` (one unscaled group) for f32.
    gsz: usize,
    /// Scale groups per row of one kv head (`hd / gsz`).
    ng: usize,
    /// Row width of the cache (all kv heads).
    kw: usize,
    /// Offset of this kv head in a row.
    off: usize,
    /// Index of this kv head.
    g: usize,
    nkv: usize,
    hd: usize,
    inv_sqrt: f32,
}

/// Per-thread scratch buffers, allocated once per call.
#[derive(Default)]
struct Scratch {
    /// Query block as `[chunk][head]`, zero-padded to whole chunks.
    qf: Vec<F8>,
    /// Broadcast value-sum weights of one tile, `[position][head]`.
    wb: Vec<F8>,
}

/// A cached element type.
trait Lane: Copy + Default + Send + Sync {
    /// Whether rows are quantized in groups of [`GROUP`] (otherwise a row is one group, scale 1).
    const GROUPED: bool;
    /// The 8 elements as f32 (without any scale).
    fn widen(s: &[Self; VL]) -> [f32; VL];
}

impl Lane for f32 {
    const GROUPED: bool = false;

    #[inline(always)]
    fn widen(s: &[f32; VL]) -> [f32; VL] {
        *s
    }
}

impl Lane for i8 {
    const GROUPED: bool = true;

    #[inline(always)]
    fn widen(s: &[i8; VL]) -> [f32; VL] {
        // Built locally from a plain loop: this form vectorizes (unpack + convert).
        let mut t = [0.0f32; VL];
        for (t, &s) in t.iter_mut().zip(s) {
            *t = f32::from(s);
        }
        t
    }
}

/// Calls `f` with each 8-element chunk of `row`, the last one zero-padded.
#[inline(always)]
fn for_chunks<E: Copy + Default>(row: &[E], mut f: impl FnMut(usize, &[E; VL])) {
    let (chunks, rest) = row.as_chunks::<VL>();
    for (c, x) in chunks.iter().enumerate() {
        f(c, x);
    }
    if !rest.is_empty() {
        let mut x = [E::default(); VL];
        x[..rest.len()].copy_from_slice(rest);
        f(chunks.len(), &x);
    }
}

/// Sum of 8 lanes as a short tree.
#[inline(always)]
fn hsum(a: &[f32; VL]) -> f32 {
    let h = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (h[0] + h[2]) + (h[1] + h[3])
}

/// Writes `sc[j * n + t] = inv_sqrt * Σ_g k_scale_{t,g} * q_j · k_t (over group g)` for the `NB`
/// heads of `qb` (`[NB, hd]`) and every position `t < n` (f32: one group, scale 1). Each key
/// chunk is widened once for all heads; each group's scale is applied lane-wise to that group's
/// partial dot products before they are added and reduced.
#[inline(always)]
fn scores<E: Lane, const NB: usize>(
    k: &[E],
    k_scales: Option<&[u16]>,
    geo: &GroupGeo,
    qb: &[f32],
    sc: &mut [f32],
    scratch: &mut Scratch,
) {
    let hd = geo.hd;
    let n = sc.len() / NB;
    let qf = &mut scratch.qf;
    qf.clear();
    qf.resize(hd.div_ceil(VL) * NB, F8::default());
    for (j, qh) in qb.chunks_exact(hd).enumerate() {
        for_chunks(qh, |c, x| qf[c * NB + j] = F8(*x));
    }
    let qf = qf.as_chunks::<NB>().0;
    let rows = k.chunks_exact(geo.kw).take(n).enumerate();
    match k_scales {
        Some(ks) if E::GROUPED => {
            // hd is a whole number of groups and GROUP of chunks: no padding.
            let qg = qf.as_chunks::<CPG>().0;
            for (t, row) in rows {
                let kg = row[geo.off..][..hd]
                    .as_chunks::<VL>()
                    .0
                    .as_chunks::<CPG>()
                    .0;
                let sg = &ks[(t * geo.nkv + geo.g) * geo.ng..][..geo.ng];
                let mut tot = [0.0f32; NB];
                for ((kg, qg), &s) in kg.iter().zip(qg).zip(sg) {
                    let mut acc = [[0.0f32; VL]; NB];
                    for (kc, qc) in kg.iter().zip(qg) {
                        let kc = E::widen(kc);
                        for (a, qj) in acc.iter_mut().zip(qc) {
                            for ((a, &q), &x) in a.iter_mut().zip(&qj.0).zip(&kc) {
                                *a += q * x;
                            }
                        }
                    }
                    // Reduced per group: a lane-wise total would not fit the registers.
                    let s = scale_f32(s);
                    for (tt, a) in tot.iter_mut().zip(&acc) {
                        *tt += s * hsum(a);
                    }
                }
                for (j, &tt) in tot.iter().enumerate() {
                    sc[j * n + t] = tt * geo.inv_sqrt;
                }
            }
        }
        _ => {
            for (t, row) in rows {
                let mut acc = [[0.0f32; VL]; NB];
                for_chunks(&row[geo.off..][..hd], |c, kc| {
                    let kc = E::widen(kc);
                    for (a, qj) in acc.iter_mut().zip(&qf[c]) {
                        for ((a, &q), &x) in a.iter_mut().zip(&qj.0).zip(&kc) {
                            *a += q * x;
                        }
                    }
                });
                for (j, a) in acc.iter().enumerate() {
                    sc[j * n + t] = hsum(a) * geo.inv_sqrt;
                }
            }
        }
    }
}

/// Processes the rows of `q` (first one at `first_pos`) for every head.
fn rows_kernel<E: Lane>(
    k: &[E],
    v: &[E],
    scales: Option<(&[u16], &[u16])>,
    sh: &Shape,
    q: &[f32],
    out: &mut [f32],
    first_pos: usize,
) {
    // Constant-propagated copy for the common head size.
    if sh.hd == 64 {
        let gsz = if E::GROUPED { GROUP } else { 64 };
        rows_kernel_hd(k, v, scales, sh, 64, gsz, q, out, first_pos);
    } else {
        let gsz = if E::GROUPED { GROUP } else { sh.hd };
        rows_kernel_hd(k, v, scales, sh, sh.hd, gsz, q, out, first_pos);
    }
}

/// [`rows_kernel`] body (`gsz` elements per scale group, dividing `hd`). Per row, kv head and
/// block of up to [`MAX_BLOCK`] query heads: all scores, softmax, then the weighted value sum
/// with the softmax normalization and the int8 group scales folded into the weights.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows_kernel_hd<E: Lane>(
    k: &[E],
    v: &[E],
    scales: Option<(&[u16], &[u16])>,
    sh: &Shape,
    hd: usize,
    gsz: usize,
    q: &[f32],
    out: &mut [f32],
    first_pos: usize,
) {
    let (nkv, group) = (sh.nkv, sh.group);
    let (kw, width) = (nkv * hd, sh.n_heads * hd);
    let max_n = first_pos + q.len() / width;
    let mut scores = vec![0.0f32; MAX_BLOCK * max_n];
    let mut scratch = Scratch::default();
    for (s, (q_row, out_row)) in q
        .chunks_exact(width)
        .zip(out.chunks_exact_mut(width))
        .enumerate()
    {
        let n = first_pos + s + 1;
        let groups = q_row
            .chunks_exact(group * hd)
            .zip(out_row.chunks_exact_mut(group * hd));
        for (g, (qg, og)) in groups.enumerate() {
            let geo = GroupGeo {
                gsz,
                ng: hd / gsz,
                kw,
                off: g * hd,
                g,
                nkv,
                hd,
                inv_sqrt: sh.inv_sqrt,
            };
            let mut j = 0;
            while j < group {
                let nb = (group - j).min(MAX_BLOCK);
                let (qb, ob) = (&qg[j * hd..][..nb * hd], &mut og[j * hd..][..nb * hd]);
                let sc = &mut scores[..nb * n];
                let args = (k, v, scales, &geo, n, qb, sc, ob, &mut scratch);
                match nb {
                    1 => head_block::<E, 1>(args),
                    2 => head_block::<E, 2>(args),
                    3 => head_block::<E, 3>(args),
                    _ => head_block::<E, 4>(args),
                }
                j += nb;
            }
        }
    }
}

type BlockArgs<'a, E> = (
    &'a [E],
    &'a [E],
    Option<(&'a [u16], &'a [u16])>,
    &'a GroupGeo,
    usize,
    &'a [f32],
    &'a mut [f32],
    &'a mut [f32],
    &'a mut Scratch,
);

/// Attention of `NB` query heads sharing one kv head, for one query row over `n` positions.
#[inline(always)]
fn head_block<E: Lane, const NB: usize>(args: BlockArgs<'_, E>) {
    let (k, v, scales, geo, n, qb, sc, out, scratch) = args;
    scores::<E, NB>(k, scales.map(|s| s.0), geo, qb, sc, scratch);
    for sc_h in sc.chunks_exact_mut(n) {
        let inv = 1.0 / softmax_unnormalized(sc_h);
        sc_h.iter_mut().for_each(|p| *p *= inv);
    }
    let (hd, gsz, ng) = (geo.hd, geo.gsz, geo.ng);
    let v_scales = scales.map(|s| s.1);
    let blocks = gsz / VL; // whole chunks per group
    out.fill(0.0);
    let wb = &mut scratch.wb;
    wb.resize(TILE * NB, F8::default());
    for t0 in (0..n).step_by(TILE) {
        let len = TILE.min(n - t0);
        let rows = &v[t0 * geo.kw..][..len * geo.kw];
        for gi in 0..ng {
            // Broadcast weights of this tile and group, [position][head].
            for (jj, sc_h) in sc.chunks_exact(n).enumerate() {
                for (t, &p) in sc_h[t0..][..len].iter().enumerate() {
                    let vs = v_scales.map_or(1.0, |vs| {
                        scale_f32(vs[((t0 + t) * geo.nkv + geo.g) * ng + gi])
                    });
                    wb[t * NB + jj] = F8([p * vs; VL]);
                }
            }
            let w = &wb.as_chunks::<NB>().0[..len];
            let g0 = gi * gsz; // first element of the group within a head row
            for c in 0..blocks {
                let o = g0 + c * VL;
                let mut acc = [[0.0f32; VL]; NB];
                for (a, oh) in acc.iter_mut().zip(out.chunks_exact(hd)) {
                    a.copy_from_slice(&oh[o..][..VL]);
                }
                for (row, wt) in rows.chunks_exact(geo.kw).zip(w) {
                    let Some(vr) = row[geo.off + o..].first_chunk::<VL>() else {
                        continue;
                    };
                    let vf = E::widen(vr);
                    for (a, wj) in acc.iter_mut().zip(wt) {
                        for ((a, &w), &x) in a.iter_mut().zip(&wj.0).zip(&vf) {
                            *a += w * x;
                        }
                    }
                }
                for (oh, a) in out.chunks_exact_mut(hd).zip(&acc) {
                    oh[o..][..VL].copy_from_slice(a);
                }
            }
            for d in g0 + blocks * VL..g0 + gsz {
                for (row, wt) in rows.chunks_exact(geo.kw).zip(w) {
                    let x = E::widen(&[row[geo.off + d]; VL])[0];
                    for (oh, wj) in out.chunks_exact_mut(hd).zip(wt) {
                        oh[d] += wj.0[0] * x;
                    }
                }
            }
        }
    }
}

/// Replaces `x` with `exp(x - max x)` and returns the sum. Max, exp and sum are separate
/// lane-wise passes so each one vectorizes.
fn softmax_unnormalized(x: &mut [f32]) -> f32 {
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
