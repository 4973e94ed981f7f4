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

/// A cached element type, widened to f32 in the inner loops.
trait Lane: Copy + Send + Sync {
    /// Returns `src` as f32: the slice itself for f32, else widened into `buf`.
    fn as_f32<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];
}

impl Lane for f32 {
    #[inline(always)]
    fn as_f32<'a>(src: &'a [f32], _buf: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl Lane for i8 {
    #[inline(always)]
    fn as_f32<'a>(src: &'a [i8], buf: &'a mut [f32]) -> &'a [f32] {
        let (bc, br) = buf.as_chunks_mut::<LANES>();
        let (sc, sr) = src.as_chunks::<LANES>();
        for (b, s) in bc.iter_mut().zip(sc) {
            // Built locally and stored whole so it vectorizes (see `axpy`).
            let mut t = [0.0f32; LANES];
            for (t, &s) in t.iter_mut().zip(s) {
                *t = f32::from(s);
            }
            *b = t;
        }
        for (b, &s) in br.iter_mut().zip(sr) {
            *b = f32::from(s);
        }
        buf
    }
}

/// Processes the rows of `q` (first one at `first_pos`) for every head.
///
/// The query heads sharing a kv head are handled together so each cached row is widened once
/// and read once per group.
fn rows_kernel<E: Lane>(
    k: &[E],
    v: &[E],
    scales: Option<(&[f32], &[f32])>,
    sh: &Shape,
    q: &[f32],
    out: &mut [f32],
    first_pos: usize,
) {
    let (hd, nkv, group) = (sh.hd, sh.nkv, sh.group);
    let (kw, width) = (nkv * hd, sh.n_heads * hd);
    let max_n = first_pos + q.len() / width;
    let mut scores = vec![0.0f32; group * max_n];
    let mut buf = vec![0.0f32; hd];
    let mut inv_sums = vec![0.0f32; group];
    for (s, (q_row, out_row)) in q
        .chunks_exact(width)
        .zip(out.chunks_exact_mut(width))
        .enumerate()
    {
        let n = first_pos + s + 1;
        let (k_rows, v_rows) = (k[..n * kw].chunks_exact(kw), v[..n * kw].chunks_exact(kw));
        let groups = q_row
            .chunks_exact(group * hd)
            .zip(out_row.chunks_exact_mut(group * hd));
        for (g, (qg, og)) in groups.enumerate() {
            let sc = &mut scores[..group * n];
            // Scores, [head in group][position]; the int8 scale is folded in per position.
            for (t, kr) in k_rows.clone().enumerate() {
                let kf = E::as_f32(&kr[g * hd..][..hd], &mut buf);
                let mut f = sh.inv_sqrt;
                if let Some((ks, _)) = scales {
                    f *= ks[t * nkv + g];
                }
                for (j, qh) in qg.chunks_exact(hd).enumerate() {
                    sc[j * n + t] = dot(qh, kf) * f;
                }
            }
            for (sc_h, inv) in sc.chunks_exact_mut(n).zip(inv_sums.iter_mut()) {
                *inv = 1.0 / softmax_unnormalized(sc_h);
            }
            // Weighted sum of values; the int8 scale is folded into the weight.
            og.fill(0.0);
            for (t, vr) in v_rows.clone().enumerate() {
                let vf = E::as_f32(&vr[g * hd..][..hd], &mut buf);
                let vs = scales.map_or(1.0, |(_, vs)| vs[t * nkv + g]);
                for (j, oh) in og.chunks_exact_mut(hd).enumerate() {
                    axpy(oh, sc[j * n + t] * vs, vf);
                }
            }
            for (oh, &inv) in og.chunks_exact_mut(hd).zip(&inv_sums) {
                oh.iter_mut().for_each(|o| *o *= inv);
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

/// `Σ a_i * b_i` over equal-length slices, in 16 f32 accumulators.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ac, ar) = a.as_chunks::<LANES>();
    let (bc, br) = b.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for (x, y) in ac.iter().zip(bc) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(&x, &y)| x * y).sum();
    // Tree reduction: a serial 16-add chain would dominate for head_dim 64.
    let mut quad = [0.0f32; 4];
    for c in acc.as_chunks::<4>().0 {
        for (q, &v) in quad.iter_mut().zip(c) {
            *q += v;
        }
    }
    ((quad[0] + quad[2]) + (quad[1] + quad[3])) + tail
}

/// `out += w * b` over equal-length slices.
#[inline(always)]
fn axpy(out: &mut [f32], w: f32, b: &[f32]) {
    let (oc, or) = out.as_chunks_mut::<LANES>();
    let (bc, br) = b.as_chunks::<LANES>();
    for (o, y) in oc.iter_mut().zip(bc) {
        // Work on a local copy: without it LLVM loses the no-alias fact after inlining and
        // emits scalar loads and stores.
        let mut t = *o;
        for (t, &y) in t.iter_mut().zip(y) {
            *t += w * y;
        }
        *o = t;
    }
    for (o, &y) in or.iter_mut().zip(br) {
        *o += w * y;
    }
}

#[cfg(test)]
mod tests;
