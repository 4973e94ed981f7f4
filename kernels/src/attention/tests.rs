use super::*;

#[test]
fn split_rows_balances_the_causal_triangle() {
    assert_eq!(split_rows(0, 10, 1, 1 << 20), vec![0, 10]);
    assert_eq!(split_rows(0, 10, 4, 100), vec![0, 10]);
    let b = split_rows(0, 512, 2, 512 * 512);
    assert_eq!(b.len(), 3);
    assert!((350..380).contains(&b[1]), "{b:?}"); // ~512/sqrt(2)
    assert_eq!(split_rows(4096, 2, 8, 8192), vec![0, 1, 2]);
}

#[test]
fn exp_neg_is_accurate() {
    let mut worst = 0.0f64;
    for i in 0..=200_000 {
        let x = -(i as f32) * 87.0 / 200_000.0;
        let want = (x as f64).exp();
        worst = worst.max((exp_neg(x) as f64 - want).abs() / want);
    }
    assert!(worst < 5e-7, "relative error {worst}");
    assert!(exp_neg(f32::NAN).is_nan());
    assert!(exp_neg(f32::NEG_INFINITY) < 1e-37);
    assert_eq!(exp_neg(0.0), 1.0);
}

/// Runs the tasks one after another, last first (a split must not depend on who runs a chunk or
/// when), and keeps how many it was given.
#[derive(Default)]
struct Backwards(std::sync::atomic::AtomicUsize);

impl Parallel for Backwards {
    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        self.0.store(n, std::sync::atomic::Ordering::Relaxed);
        (0..n).rev().for_each(task);
    }
}

/// Attention of the last `rows` of `positions` over a pseudo-random int8 cache, whole and split
/// every way `attend` splits (by rows, or one row by kv head), run by threads and backwards.
/// Returns the parts a split over 2 threads made (0: not split).
fn check_splits(positions: usize, rows: usize) -> usize {
    let (nkv, group, hd) = (3, 3, 64);
    let shape = shape(nkv, group, hd);
    let n_heads = shape.n_heads;
    let cache = RandomCache::new(positions, nkv, hd, 0x2545_f491_4f6c_dd1d);
    let view = cache.view();
    let pos_start = positions - rows;
    let q: Vec<f32> = (0..rows * n_heads * hd)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let whole = {
        let mut out = vec![0.0; q.len()];
        attend(
            &view,
            &shape,
            &q,
            &mut out,
            pos_start,
            None,
            1,
            &ScopedThreads,
        );
        out
    };
    let mut parts = 0;
    for threads in [2, 3, 7] {
        let backwards = Backwards::default();
        for parallel in [&ScopedThreads as &dyn Parallel, &backwards] {
            let mut out = vec![f32::NAN; q.len()];
            attend(
                &view, &shape, &q, &mut out, pos_start, None, threads, parallel,
            );
            assert_eq!(out, whole, "{threads} threads");
        }
        if threads == 2 {
            parts = backwards.0.into_inner();
        }
    }
    assert!(whole.iter().all(|x| x.is_finite()) && whole.iter().any(|&x| x != 0.0));
    parts
}

#[test]
fn a_split_pass_equals_the_whole_pass_whoever_runs_the_chunks() {
    assert_eq!(check_splits(200, 120), 2, "rows split in two");
    assert_eq!(check_splits(600, 1), 3, "one row split by its 3 kv heads");
    assert_eq!(check_splits(20, 1), 0, "too little work to split");
}

/// `group` query heads of `hd` elements per kv head.
fn shape(nkv: usize, group: usize, hd: usize) -> Shape {
    Shape {
        n_heads: nkv * group,
        nkv,
        hd,
        group,
        inv_sqrt: 1.0 / (hd as f32).sqrt(),
    }
}

/// Pseudo-random int8 rows and f16 scales around 0.01 for `positions` positions.
struct RandomCache {
    k: Vec<i8>,
    v: Vec<i8>,
    k_scales: Vec<u16>,
    v_scales: Vec<u16>,
}

impl RandomCache {
    fn new(positions: usize, nkv: usize, hd: usize, seed: u64) -> RandomCache {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut rows = || {
            (0..positions * nkv * hd)
                .map(|_| next() as i8)
                .collect::<Vec<_>>()
        };
        let (k, v) = (rows(), rows());
        let groups = positions * nkv * hd / crate::GROUP;
        let mut scales = || {
            (0..groups)
                .map(|_| 0x2100 + (next() % 256) as u16)
                .collect::<Vec<_>>()
        };
        let (k_scales, v_scales) = (scales(), scales());
        RandomCache {
            k,
            v,
            k_scales,
            v_scales,
        }
    }

    fn view(&self) -> LayerView<'_> {
        LayerView::Int8 {
            k: &self.k,
            v: &self.v,
            k_scales: &self.k_scales,
            v_scales: &self.v_scales,
        }
    }
}

/// The speculative drafts a worker verifies in one batch must settle as the tokens decoded one
/// at a time would: every row of a batch equals the same row attended alone, bit for bit, for
/// any block and key tile the row lands in (rows past a tile of 8 keys, blocks of 24 vectors,
/// sliding windows), for SmolLM2's heads (3 per kv head of 64) and Gemma 3's (4 of 256).
#[test]
fn a_row_alone_equals_the_row_in_a_batch() {
    for (nkv, group, hd) in [(3, 3, 64), (1, 4, 256)] {
        let shape = shape(nkv, group, hd);
        let positions = 45;
        let cache = RandomCache::new(positions, nkv, hd, 0x9e37_79b9_7f4a_7c15);
        let view = cache.view();
        let width = shape.n_heads * hd;
        let q: Vec<f32> = (0..positions * width)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        for window in [None, Some(5), Some(17)] {
            for first in [0, 3] {
                let rows = positions - first;
                let q = &q[first * width..];
                let mut batch = vec![f32::NAN; q.len()];
                attend(
                    &view,
                    &shape,
                    q,
                    &mut batch,
                    first,
                    window,
                    1,
                    &ScopedThreads,
                );
                for r in 0..rows {
                    let mut alone = vec![f32::NAN; width];
                    let row = &q[r * width..][..width];
                    attend(
                        &view,
                        &shape,
                        row,
                        &mut alone,
                        first + r,
                        window,
                        1,
                        &ScopedThreads,
                    );
                    assert_eq!(
                        alone,
                        batch[r * width..][..width],
                        "hd {hd}, window {window:?}, row {r} of {rows} from {first}"
                    );
                }
            }
        }
    }
}

/// Over an int8 cache, attention is the f64 attention of the dequantized keys and values within
/// f32 rounding in every build: the portable one, AVX2, and AVX2 with AVX-512 VNNI where the CPU
/// has them (whose 15-bit queries are off by at most `max |q| / 64516` per group). Heads of 2, 3
/// and 8 groups, 13 rows (blocks of 4 to 15 vectors) and one (a decoded token: 1 to 4), partial
/// tiles.
#[test]
fn int8_attention_is_the_attention_of_the_dequantized_cache() {
    let cases = [(3, 3, 64), (2, 1, 96), (1, 4, 256)];
    for ((nkv, group, hd), rows) in cases.into_iter().flat_map(|c| [(c, 13), (c, 1)]) {
        let shape = shape(nkv, group, hd);
        let positions = 45;
        let pos_start = positions - rows;
        let cache = RandomCache::new(positions, nkv, hd, 0x0bad_cafe_f00d_0001);
        let view = cache.view();
        let q: Vec<f32> = (0..rows * shape.n_heads * hd)
            .map(|i| (((i * 7919) % 2001) as f32 / 1000.0 - 1.0) * 3.0)
            .collect();
        let want = reference(&cache, &shape, &q, pos_start);
        // A 15-bit query group is off by at most `max |q| / 64516` per element, a score by
        // `eps = Σ_g that * |k_g|_1 / sqrt(hd)` at most, a weight by a factor in `e^{±2 eps}`.
        let k_l1 = cache
            .k
            .chunks(crate::GROUP)
            .zip(&cache.k_scales)
            .map(|(k, &s)| {
                k.iter().map(|&x| (x as f64).abs()).sum::<f64>() * crate::scale_f32(s) as f64
            });
        let k_l1_max = k_l1.fold(0.0, f64::max);
        let q_max = q.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
        let eps = (hd / crate::GROUP) as f64 * q_max / 64516.0 * k_l1_max / (hd as f64).sqrt();
        let v_max = cache
            .v
            .chunks(crate::GROUP)
            .zip(&cache.v_scales)
            .map(|(v, &s)| {
                v.iter().map(|&x| (x as f64).abs()).fold(0.0, f64::max) * crate::scale_f32(s) as f64
            });
        let vnni_bound = v_max.fold(0.0, f64::max) * ((2.0 * eps).exp() - 1.0) + 1e-5;
        let builds = every_build(&view, &shape, &q, pos_start);
        for (name, got) in &builds {
            let worst = got
                .iter()
                .zip(&want)
                .map(|(&g, &w)| (g as f64 - w).abs())
                .fold(0.0, f64::max);
            let bound = if *name == "vnni" { vnni_bound } else { 1e-5 };
            assert!(
                worst <= bound,
                "{name}, hd {hd}: error {worst} above {bound}"
            );
        }
    }
}

/// `attend` through every build this CPU runs: the portable one, AVX2, AVX2 with AVX-512 VNNI.
fn every_build(
    view: &LayerView<'_>,
    shape: &Shape,
    q: &[f32],
    pos_start: usize,
) -> Vec<(&'static str, Vec<f32>)> {
    let mut builds = Vec::new();
    let mut out = vec![f32::NAN; q.len()];
    attend_portable(view, shape, q, &mut out, (pos_start, None));
    builds.push(("portable", out));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        let vnni = [false, avx2::has_vnni()];
        for (name, vnni) in ["avx2", "vnni"]
            .into_iter()
            .zip(vnni)
            .take(1 + vnni[1] as usize)
        {
            let mut out = vec![f32::NAN; q.len()];
            let part = (Part::all(shape.nkv), vnni);
            #[allow(unsafe_code)]
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe {
                run_avx2(view, shape, q, &mut out, (pos_start, None), part)
            };
            builds.push((name, out));
        }
    }
    builds
}

/// A query vector with a NaN or an infinity gives NaN outputs in every build (the VNNI kernel's
/// quantizer does not turn it into numbers), and the other vectors are unaffected.
#[test]
fn a_non_finite_query_gives_nan_in_every_build() {
    let (nkv, group, hd) = (3, 3, 64);
    let shape = shape(nkv, group, hd);
    let cache = RandomCache::new(20, nkv, hd, 7);
    let width = shape.n_heads * hd;
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut q: Vec<f32> = (0..2 * width).map(|i| (i % 7) as f32 / 7.0 - 0.5).collect();
        q[hd + 5] = bad; // row 0, head 1
        for (name, out) in every_build(&cache.view(), &shape, &q, 18) {
            for (v, o) in out.chunks(hd).enumerate() {
                if v == 1 {
                    assert!(o.iter().all(|x| x.is_nan()), "{name}, {bad}: {o:?}");
                } else {
                    assert!(o.iter().all(|x| x.is_finite()), "{name}, {bad}, vector {v}");
                }
            }
        }
    }
}

/// Plain f64 attention of `q` over the dequantized cache.
fn reference(cache: &RandomCache, shape: &Shape, q: &[f32], pos_start: usize) -> Vec<f64> {
    let (nkv, hd, g32) = (shape.nkv, shape.hd, crate::GROUP);
    let dequant = |x: &[i8], s: &[u16]| -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, &v)| v as f64 * crate::scale_f32(s[i / g32]) as f64)
            .collect()
    };
    let (k, v) = (
        dequant(&cache.k, &cache.k_scales),
        dequant(&cache.v, &cache.v_scales),
    );
    let q: Vec<f64> = q.iter().map(|&x| x as f64).collect();
    let width = shape.n_heads * hd;
    let mut out = vec![0.0f64; q.len()];
    for (r, (qr, or)) in q.chunks(width).zip(out.chunks_mut(width)).enumerate() {
        let n = pos_start + r + 1;
        for (h, (qh, oh)) in qr.chunks(hd).zip(or.chunks_mut(hd)).enumerate() {
            let kvh = h / shape.group;
            let at = |t: usize| (t * nkv + kvh) * hd;
            let scores: Vec<f64> = (0..n)
                .map(|t| {
                    let dot: f64 = qh.iter().zip(&k[at(t)..][..hd]).map(|(a, b)| a * b).sum();
                    dot / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (d, o) in oh.iter_mut().enumerate() {
                *o = (0..n).map(|t| e[t] * v[at(t) + d]).sum::<f64>() / sum;
            }
        }
    }
    out
}
