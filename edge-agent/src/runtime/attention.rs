//! Causal grouped-query attention over the [`KvCache`].
//!
//! For int8 caches the rows are never dequantized into a buffer: a score is
//! `k_scale * Σ q·k_i8 / sqrt(head_dim)` and the output is `Σ p_t * v_scale_t * v_i8_t`.
//! Inner loops run over fixed 16-lane chunks with f32 accumulators so they vectorize.

use super::kv_cache::{KvCache, KvError, LayerView};

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
    /// The 8 elements as f32 (without any scale).
    fn widen(s: &[Self; VL]) -> [f32; VL];
}

impl Lane for f32 {
    #[inline(always)]
    fn widen(s: &[f32; VL]) -> [f32; VL] {
        *s
    }
}

impl Lane for i8 {
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

/// Writes `sc[j * n + t] = inv_sqrt * k_scale_t * q_j · k_t` for the `NB` heads of `qb`
/// (`[NB, hd]`) and every position `t < n`. Each key chunk is widened once for all heads; the
/// int8 scale is applied to the finished dot product.
#[inline(always)]
fn scores<E: Lane, const NB: usize>(
    k: &[E],
    k_scales: Option<&[f32]>,
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
    for (t, row) in k.chunks_exact(geo.kw).take(n).enumerate() {
        let mut acc = [[0.0f32; VL]; NB];
        for_chunks(&row[geo.off..][..hd], |c, kc| {
            let kc = E::widen(kc);
            for (a, qj) in acc.iter_mut().zip(&qf[c]) {
                for ((a, &q), &x) in a.iter_mut().zip(&qj.0).zip(&kc) {
                    *a += q * x;
                }
            }
        });
        let f = k_scales.map_or(geo.inv_sqrt, |ks| ks[t * geo.nkv + geo.g] * geo.inv_sqrt);
        for (j, a) in acc.iter().enumerate() {
            sc[j * n + t] = hsum(a) * f;
        }
    }
}

/// Processes the rows of `q` (first one at `first_pos`) for every head.
fn rows_kernel<E: Lane>(
    k: &[E],
    v: &[E],
    scales: Option<(&[f32], &[f32])>,
    sh: &Shape,
    q: &[f32],
    out: &mut [f32],
    first_pos: usize,
) {
    // Constant-propagated copy for the common head size.
    if sh.hd == 64 {
        rows_kernel_hd(k, v, scales, sh, 64, q, out, first_pos);
    } else {
        rows_kernel_hd(k, v, scales, sh, sh.hd, q, out, first_pos);
    }
}

/// [`rows_kernel`] body. Per row, kv head and block of up to [`MAX_BLOCK`] query heads: all
/// scores, softmax, then the weighted value sum with the softmax normalization and int8 value
/// scale folded into the weights.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows_kernel_hd<E: Lane>(
    k: &[E],
    v: &[E],
    scales: Option<(&[f32], &[f32])>,
    sh: &Shape,
    hd: usize,
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
    Option<(&'a [f32], &'a [f32])>,
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
    let mut inv = [0.0f32; NB];
    for (sc_h, inv) in sc.chunks_exact_mut(n).zip(inv.iter_mut()) {
        *inv = 1.0 / softmax_unnormalized(sc_h);
    }
    let hd = geo.hd;
    let v_scales = scales.map(|s| s.1);
    let blocks = hd / VL;
    out.fill(0.0);
    let wb = &mut scratch.wb;
    wb.resize(TILE * NB, F8::default());
    for t0 in (0..n).step_by(TILE) {
        let len = TILE.min(n - t0);
        // Broadcast weights of this tile, [position][head].
        for (jj, (sc_h, &inv)) in sc.chunks_exact(n).zip(&inv).enumerate() {
            for (t, &p) in sc_h[t0..][..len].iter().enumerate() {
                let vs = v_scales.map_or(1.0, |vs| vs[(t0 + t) * geo.nkv + geo.g]);
                wb[t * NB + jj] = F8([p * inv * vs; VL]);
            }
        }
        let w = &wb.as_chunks::<NB>().0[..len];
        let rows = &v[t0 * geo.kw..][..len * geo.kw];
        for c in 0..blocks {
            let mut acc = [[0.0f32; VL]; NB];
            for (a, oh) in acc.iter_mut().zip(out.chunks_exact(hd)) {
                a.copy_from_slice(&oh[c * VL..][..VL]);
            }
            for (row, wt) in rows.chunks_exact(geo.kw).zip(w) {
                let Some(vr) = row[geo.off + c * VL..].first_chunk::<VL>() else {
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
                oh[c * VL..][..VL].copy_from_slice(a);
            }
        }
        for d in blocks * VL..hd {
            for (row, wt) in rows.chunks_exact(geo.kw).zip(w) {
                let x = E::widen(&[row[geo.off + d]; VL])[0];
                for (oh, wj) in out.chunks_exact_mut(hd).zip(wt) {
                    oh[d] += wj.0[0] * x;
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
