use super::*;
use crate::runtime::kv_cache::{GROUP, KvDtype, KvGeometry};
use seam_kernels::attention::attend_portable;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Plain f64 reference from raw `[pos][kv_head][hd]` arrays: causal GQA softmax attention.
fn naive(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos_start: usize,
    n_heads: usize,
    nkv: usize,
    hd: usize,
) -> Vec<f64> {
    naive_window(q, k, v, pos_start, (n_heads, nkv, hd), usize::MAX)
}

/// [`naive`] where row `s` sees only positions `t` with `pos_start + s - t < window`.
fn naive_window(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos_start: usize,
    (n_heads, nkv, hd): (usize, usize, usize),
    window: usize,
) -> Vec<f64> {
    let rows = q.len() / (n_heads * hd);
    let mut out = vec![0.0f64; q.len()];
    for s in 0..rows {
        for h in 0..n_heads {
            let g = h / (n_heads / nkv);
            let qh = &q[(s * n_heads + h) * hd..][..hd];
            let n = pos_start + s + 1;
            let lo = n.saturating_sub(window);
            let scores: Vec<f64> = (lo..n)
                .map(|t| {
                    let kt = &k[(t * nkv + g) * hd..][..hd];
                    qh.iter()
                        .zip(kt)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                let acc: f64 = (lo..n)
                    .map(|t| e[t - lo] * v[(t * nkv + g) * hd + d] as f64)
                    .sum();
                out[(s * n_heads + h) * hd + d] = acc / sum;
            }
        }
    }
    out
}

/// The largest absolute difference between `got` and the reference.
fn largest_error(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
}

struct Case {
    geom: KvGeometry,
    n_heads: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Case {
    fn new(n_heads: usize, nkv: usize, hd: usize, positions: usize, seed: u64) -> Case {
        let geom = KvGeometry {
            n_layers: 2,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        let n = positions * nkv * hd;
        Case {
            geom,
            n_heads,
            k: data(n, seed),
            v: data(n, seed + 1),
        }
    }

    /// Cache with all positions written to layer 1 (layer 0 left empty), in chunks of `chunk`.
    fn cache(&self, dtype: KvDtype, chunk: usize) -> KvCache {
        let w = self.geom.row_width();
        let positions = self.k.len() / w;
        let mut c = KvCache::new(self.geom, dtype, positions + 3);
        for p in (0..positions).step_by(chunk) {
            let r = chunk.min(positions - p);
            c.write(1, p, &self.k[p * w..][..r * w], &self.v[p * w..][..r * w])
                .unwrap();
            c.write(0, p, &vec![0.0; r * w], &vec![0.0; r * w]).unwrap();
            c.commit(p + r).unwrap();
        }
        c
    }

    fn run(&self, c: &KvCache, q: &[f32], pos_start: usize, threads: usize) -> Vec<f32> {
        self.run_window(c, q, pos_start, threads, None)
    }

    fn run_window(
        &self,
        c: &KvCache,
        q: &[f32],
        pos_start: usize,
        threads: usize,
        window: Option<usize>,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; q.len()];
        attention(q, c, 1, pos_start, self.n_heads, &mut out, threads, window).unwrap();
        out
    }
}

/// Long contexts, as the model sees them: tiles of positions, the causal split across threads,
/// peaked softmax (large scores).
#[test]
fn f32_cache_matches_naive_reference_at_long_context() {
    let (n_heads, nkv, hd) = (9, 3, 64);
    for &(positions, rows, scale) in &[
        (512, 1, 1.0f32),
        (512, 1, 6.0),
        (300, 37, 4.0),
        (512, 512, 3.0),
    ] {
        let case = Case::new(n_heads, nkv, hd, positions, positions as u64 + 7);
        let c = case.cache(KvDtype::F32, 64);
        let pos_start = positions - rows;
        let q: Vec<f32> = data(rows * n_heads * hd, 5)
            .iter()
            .map(|x| x * scale)
            .collect();
        let want = naive(&q, &case.k, &case.v, pos_start, n_heads, nkv, hd);
        for threads in [1, 2] {
            let worst = largest_error(&case.run(&c, &q, pos_start, threads), &want);
            assert!(
                worst <= 1e-5,
                "positions {positions} rows {rows} scale {scale} threads {threads}: {worst}"
            );
        }
    }
}

#[test]
fn f32_cache_matches_naive_reference() {
    for &(n_heads, nkv, hd, positions, rows) in &[
        (9, 3, 64, 40, 1),
        (9, 3, 64, 40, 40),
        (4, 4, 16, 9, 3),
        (6, 2, 20, 33, 7),
        (2, 1, 2, 5, 5),
    ] {
        let case = Case::new(n_heads, nkv, hd, positions, positions as u64);
        let c = case.cache(KvDtype::F32, 8);
        let pos_start = positions - rows;
        let q = data(rows * n_heads * hd, 99);
        let want = naive(&q, &case.k, &case.v, pos_start, n_heads, nkv, hd);
        let got = case.run(&c, &q, pos_start, 1);
        // Outputs are convex combinations of values in [-1, 1]: error relative to that range.
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= 1e-5, "{g} vs {w}");
        }
    }
}

/// Bound derived from the quantizer: an element of group `g` of a cached row is off by at most
/// `e_g = max|group| / 254 * (1 + 2^-11) + 127 * 2^-25` (half a step of the f16-rounded scale; the
/// second term only matters for f16-subnormal scales). Where the CPU has AVX-512 VNNI, the query is
/// quantized per group too, to 15 bits (an element off by at most `eq_g = max|q in g| / 64516`,
/// plus f32 rounding). The score of position `t` is then off by at most
/// `eps_t = Σ_g (|q_g|_1 * e_{t,g} + eq_g * (|k_{t,g}|_1 + 32 e_{t,g})) / sqrt(hd)`
/// (`|q·k - q̂·k̂| <= |q|·|k - k̂| + |q - q̂|·|k̂|`), which changes each softmax weight by
/// a factor within `e^{±2 eps}` (`eps = max_t eps_t`), so output element `d` (in group `g`) is off
/// by at most `max_t e^v_{t,g} + max|v| * (e^{2 eps} - 1)` (plus f32 rounding slack). Per-group
/// errors are bounded by the group's own maximum, not the row's.
#[test]
fn int8_cache_is_within_quantization_bound() {
    let (n_heads, nkv, hd, positions) = (9, 3, 64, 300);
    let case = Case::new(n_heads, nkv, hd, positions, 5);
    let c = case.cache(KvDtype::Int8, 64);
    let rows = 20;
    let pos_start = positions - rows;
    let q = data(rows * n_heads * hd, 6)
        .iter()
        .map(|x| x * 3.0)
        .collect::<Vec<_>>();
    let want = naive(&q, &case.k, &case.v, pos_start, n_heads, nkv, hd);
    let got = case.run(&c, &q, pos_start, 1);
    let e = |x: &[f32]| {
        let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        max / 254.0 * (1.0 + 1.0 / 2048.0) + 127.0 * 2f64.powi(-25)
    };
    // Per (position, kv head): the error bound of each group.
    let ek: Vec<Vec<f64>> = case
        .k
        .chunks(hd)
        .map(|r| r.chunks(GROUP).map(e).collect())
        .collect();
    let ev: Vec<Vec<f64>> = case
        .v
        .chunks(hd)
        .map(|r| r.chunks(GROUP).map(e).collect())
        .collect();
    let v_max = case.v.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    let (mut dot, mut nq, mut ng, mut worst, mut worst_bound) = (0.0f64, 0.0, 0.0, 0.0f64, 0.0f64);
    for (i, (qh, (gh, wh))) in q
        .chunks(hd)
        .zip(got.chunks(hd).zip(want.chunks(hd)))
        .enumerate()
    {
        let (s, h) = (i / n_heads, i % n_heads);
        let kvh = h / (n_heads / nkv);
        let n = pos_start + s + 1;
        let l1 = |x: &[f32]| x.iter().map(|v| v.abs() as f64).sum::<f64>();
        let q_l1: Vec<f64> = qh.chunks(GROUP).map(l1).collect();
        let eq: Vec<f64> = qh
            .chunks(GROUP)
            .map(|g| g.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64 / 64516.0 * 1.0001)
            .collect();
        let eps = (0..n)
            .map(|t| {
                let et = &ek[t * nkv + kvh];
                let kt = &case.k[(t * nkv + kvh) * hd..][..hd];
                let k_l1 = kt.chunks(GROUP).map(l1);
                let cached = q_l1.iter().zip(et).map(|(a, b)| a * b).sum::<f64>();
                let query = (eq.iter().zip(k_l1).zip(et))
                    .map(|((q, k), e)| q * (k + GROUP as f64 * e))
                    .sum::<f64>();
                (cached + query) / (hd as f64).sqrt()
            })
            .fold(0.0, f64::max);
        for (d, (&g, &w)) in gh.iter().zip(wh).enumerate() {
            let ev_max = (0..n)
                .map(|t| ev[t * nkv + kvh][d / GROUP])
                .fold(0.0, f64::max);
            let bound = ev_max + v_max * ((2.0 * eps).exp() - 1.0) + 1e-5;
            let err = (g as f64 - w).abs();
            assert!(err <= bound, "error {err} above bound {bound}");
            worst = worst.max(err);
            worst_bound = worst_bound.max(bound);
            dot += g as f64 * w;
            nq += w * w;
            ng += g as f64 * g as f64;
        }
    }
    let cos = dot / (nq.sqrt() * ng.sqrt());
    println!(
        "int8 attention: cosine {cos:.7}, max abs error {worst:.2e} (largest bound {worst_bound:.2e})"
    );
    assert!(cos >= 0.9999, "cosine {cos}");
}

#[test]
fn threads_give_identical_results() {
    let case = Case::new(9, 3, 64, 200, 11);
    for dtype in [KvDtype::Int8, KvDtype::F32] {
        let c = case.cache(dtype, 50);
        for (pos_start, rows) in [(0, 200), (150, 50), (199, 1)] {
            let q = data(rows * 9 * 64, 12);
            let one = case.run(&c, &q, pos_start, 1);
            for threads in [2, 3, 7] {
                assert_eq!(
                    case.run(&c, &q, pos_start, threads),
                    one,
                    "threads {threads}"
                );
            }
        }
    }
}

#[test]
fn attention_after_rollback_and_prefix_copy_matches_fresh() {
    let case = Case::new(9, 3, 64, 30, 21);
    let w = case.geom.row_width();
    for dtype in [KvDtype::Int8, KvDtype::F32] {
        let fresh = case.cache(dtype, 30);
        let q = data(5 * 9 * 64, 22);
        let want = case.run(&fresh, &q, 25, 1);

        // Rollback: write garbage drafts past 20, truncate, rewrite.
        let mut rolled = case.cache(dtype, 10);
        rolled.truncate(20).unwrap();
        let junk = data(10 * w, 23);
        for l in 0..2 {
            rolled.write(l, 20, &junk, &junk).unwrap();
        }
        rolled.truncate(20).unwrap();
        rolled
            .write(0, 20, &vec![0.0; 10 * w], &vec![0.0; 10 * w])
            .unwrap();
        rolled
            .write(1, 20, &case.k[20 * w..], &case.v[20 * w..])
            .unwrap();
        assert_eq!(case.run(&rolled, &q, 25, 1), want);

        // Prefix copy of 12 positions, then the rest written without commit.
        let mut copied = KvCache::new(case.geom, dtype, 64);
        copied.copy_prefix_from(&fresh, 12).unwrap();
        copied
            .write(1, 12, &case.k[12 * w..], &case.v[12 * w..])
            .unwrap();
        assert_eq!(case.run(&copied, &q, 25, 2), want);
    }
}

#[test]
fn attention_rejects_bad_inputs() {
    let case = Case::new(9, 3, 64, 10, 31);
    let c = case.cache(KvDtype::Int8, 10);
    let q = data(9 * 64, 32);
    let mut out = vec![0.0; 9 * 64];
    let e = |r: Result<(), KvError>| r.unwrap_err();
    assert!(matches!(
        e(attention(&q, &c, 1, 10, 9, &mut out, 1, None)),
        KvError::NotWritten { .. }
    ));
    assert!(matches!(
        e(attention(&q, &c, 2, 0, 9, &mut out, 1, None)),
        KvError::LayerOutOfRange { .. }
    ));
    assert!(matches!(
        e(attention(&q, &c, 1, 0, 8, &mut out, 1, None)),
        KvError::BadHeadGrouping { .. }
    ));
    assert!(matches!(
        e(attention(&q[1..], &c, 1, 0, 9, &mut out, 1, None)),
        KvError::NotRowMultiple { .. }
    ));
    assert!(matches!(
        e(attention(&q, &c, 1, 0, 9, &mut out[1..], 1, None)),
        KvError::LengthMismatch { .. }
    ));
    attention(&[], &c, 1, 0, 9, &mut [], 4, None).unwrap();
}

/// The baseline build of the kernels (what CPUs without AVX2 run) against the reference and
/// against the dispatched build.
#[test]
fn portable_kernels_match_the_reference_and_the_dispatched_build() {
    let (n_heads, nkv, hd, positions, rows) = (9, 3, 64, 70, 9);
    let case = Case::new(n_heads, nkv, hd, positions, 41);
    let pos_start = positions - rows;
    let q = data(rows * n_heads * hd, 42);
    let shape = Shape {
        n_heads,
        nkv,
        hd,
        group: n_heads / nkv,
        inv_sqrt: 1.0 / (hd as f32).sqrt(),
    };
    let want = naive(&q, &case.k, &case.v, pos_start, n_heads, nkv, hd);
    for dtype in [KvDtype::F32, KvDtype::Int8] {
        let c = case.cache(dtype, 16);
        let view = c.layer_view(1, positions).unwrap();
        let mut portable = vec![f32::NAN; q.len()];
        attend_portable(&view, &shape, &q, &mut portable, (pos_start, None));
        let dispatched = case.run(&c, &q, pos_start, 1);
        for (p, d) in portable.iter().zip(&dispatched) {
            assert!((p - d).abs() <= 1e-5, "{dtype}: {p} vs {d}");
        }
        if dtype == KvDtype::F32 {
            for (p, w) in portable.iter().zip(&want) {
                assert!((*p as f64 - w).abs() <= 1e-5, "{p} vs {w}");
            }
        }
    }
}

/// A sliding window: each row sees its last `window` positions, in prefill (rows spanning the
/// window's edge, split across threads) and decode, for both cache types.
#[test]
fn a_sliding_window_sees_only_the_last_positions() {
    let (n_heads, nkv, hd) = (4, 2, 64);
    let positions = 150;
    let case = Case::new(n_heads, nkv, hd, positions, 31);
    for (dtype, tol) in [(KvDtype::F32, 1e-5), (KvDtype::Int8, 2e-2)] {
        let c = case.cache(dtype, 32);
        for (rows, window) in [(150, 16), (40, 7), (1, 64), (1, 1), (150, 149), (3, 500)] {
            let pos_start = positions - rows;
            let q = data(rows * n_heads * hd, rows as u64);
            let want = naive_window(&q, &case.k, &case.v, pos_start, (n_heads, nkv, hd), window);
            let full = naive(&q, &case.k, &case.v, pos_start, n_heads, nkv, hd);
            for threads in [1, 2] {
                let got = case.run_window(&c, &q, pos_start, threads, Some(window));
                let worst = largest_error(&got, &want);
                assert!(
                    worst <= tol,
                    "{dtype:?} rows {rows} window {window}: {worst}"
                );
                if window < positions {
                    // The window changes the answer: the reference is not the full one.
                    let apart = full.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-3);
                    assert!(apart, "{dtype:?} rows {rows} window {window}");
                }
            }
        }
    }
    let mut out = vec![0.0; n_heads * hd];
    let c = case.cache(KvDtype::F32, 32);
    let q = data(n_heads * hd, 1);
    let err = attention(&q, &c, 1, 10, n_heads, &mut out, 1, Some(0)).unwrap_err();
    assert!(matches!(err, KvError::EmptyWindow), "{err}");
}
