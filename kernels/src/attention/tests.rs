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
