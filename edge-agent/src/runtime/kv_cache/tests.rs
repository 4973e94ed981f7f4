use super::*;
use half::f16;
use proptest::prelude::*;

const GEOM: KvGeometry = KvGeometry {
    n_layers: 3,
    n_kv_heads: 2,
    head_dim: 2 * GROUP,
};
/// Elements of one position of one layer's K (or V) in [`GEOM`].
const W: usize = 2 * 2 * GROUP;

/// Error bound of one quantized group with max magnitude `max`: half a step of the f16-rounded
/// scale (relative rounding `2^-11`), plus `127 * 2^-25` when the scale is an f16 subnormal
/// (absolute rounding `2^-25`, which the clamp to ±127 can expose), plus f32 slack.
fn group_bound(max: f32) -> f32 {
    max / 254.0 * (1.0 + 1.0 / 2048.0) + 127.0 * 2f32.powi(-25) + max * 1e-6
}

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

/// Writes `rows` positions at `pos` to every layer with data derived from (layer, pos).
fn fill(c: &mut KvCache, pos: usize, rows: usize, seed: u64) {
    let w = c.geometry().row_width();
    for l in 0..c.geometry().n_layers {
        let k = data(rows * w, seed + l as u64 * 1000 + pos as u64);
        let v = data(rows * w, seed + l as u64 * 1000 + pos as u64 + 500);
        c.write(l, pos, &k, &v).unwrap();
    }
}

#[test]
fn dtype_names_round_trip() {
    for d in [KvDtype::Int8, KvDtype::F32] {
        assert_eq!(d.to_string().parse::<KvDtype>().unwrap(), d);
    }
    assert_eq!("int8".parse::<KvDtype>().unwrap(), KvDtype::Int8);
    assert!(matches!(
        "fp16".parse::<KvDtype>(),
        Err(KvError::UnknownDtype(_))
    ));
}

#[test]
fn int8_bytes_per_token_ratio_for_smollm2() {
    let g = KvGeometry {
        n_layers: 30,
        n_kv_heads: 3,
        head_dim: 64,
    };
    let i8c = KvCache::new(g, KvDtype::Int8, 16);
    let f32c = KvCache::new(g, KvDtype::F32, 16);
    assert_eq!(i8c.bytes_per_token(), 30 * 2 * 3 * (64 + 2 * 2));
    assert_eq!(f32c.bytes_per_token(), 30 * 2 * 3 * 64 * 4);
    let ratio = i8c.bytes_per_token() as f64 / f32c.bytes_per_token() as f64;
    println!(
        "int8/f32 bytes per token: {} / {} = {ratio:.6}",
        i8c.bytes_per_token(),
        f32c.bytes_per_token()
    );
    assert!(ratio <= 0.27, "ratio {ratio}");
    assert_eq!(i8c.allocated_bytes(), 16 * i8c.bytes_per_token());
}

#[test]
fn int8_quantization_error_is_within_half_a_step_per_group() {
    let mut c = KvCache::new(GEOM, KvDtype::Int8, 4);
    let mut k = data(3 * W, 1);
    k[2 * GROUP..4 * GROUP].fill(0.0); // position 0, head 1: all zero
    k[W..W + GROUP].iter_mut().for_each(|x| *x *= 1e-3); // normal f16 scale, small
    k[W + GROUP..W + 2 * GROUP]
        .iter_mut()
        .for_each(|x| *x *= 1e-4); // scale below 2^-14: an f16 subnormal
    k[W + 2 * GROUP..W + 3 * GROUP]
        .iter_mut()
        .for_each(|x| *x *= 1e-9); // scale rounds to zero
    k[2 * W] = 1e7; // position 2: scale would overflow f16, clamped to f16::MAX
    let v = data(3 * W, 2);
    c.write(1, 0, &k, &v).unwrap();
    for pos in 0..3 {
        for head in 0..2 {
            let got = c.read_k_row(1, pos, head).unwrap();
            let want = &k[(pos * 2 + head) * 2 * GROUP..][..2 * GROUP];
            for (gg, gw) in got.chunks(GROUP).zip(want.chunks(GROUP)) {
                let max = gw.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                if max > 127.0 * 65504.0 {
                    // Beyond f16 range: the largest element saturates at 127 * f16::MAX.
                    assert_eq!(gg[0], 127.0 * 65504.0);
                    continue;
                }
                for (g, w) in gg.iter().zip(gw) {
                    assert!((g - w).abs() <= group_bound(max), "{g} vs {w} (max {max})");
                }
                if max < 1e-6 {
                    assert!(gg.iter().all(|&g| g == 0.0));
                }
            }
        }
    }
}

#[test]
fn int8_outlier_only_coarsens_its_own_group() {
    let mut c = KvCache::new(GEOM, KvDtype::Int8, 1);
    let mut k = data(W, 40);
    k[5] = 100.0; // one outlier channel in the first half of (position 0, head 0)
    c.write(0, 0, &k, &k).unwrap();
    let got = c.read_k_row(0, 0, 0).unwrap();
    let max_abs = |x: &[f32]| x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = |r: std::ops::Range<usize>| {
        got[r.clone()]
            .iter()
            .zip(&k[r])
            .fold(0.0f32, |m, (g, w)| m.max((g - w).abs()))
    };
    let (e0, e1) = (err(0..GROUP), err(GROUP..2 * GROUP));
    let (b0, b1) = (
        group_bound(max_abs(&k[..GROUP])),
        group_bound(max_abs(&k[GROUP..2 * GROUP])),
    );
    println!(
        "outlier group: error {e0:.2e} (bound {b0:.2e}); other group: {e1:.2e} (bound {b1:.2e})"
    );
    assert!(e0 <= b0 && e1 <= b1);
    // With one scale per row the other half would be off by up to 100 / 254 ≈ 0.39.
    assert!(b1 < 0.004 && e1 < 0.004, "{e1}");
}

#[test]
fn scale_widening_matches_half() {
    for bits in 0..=f16::MAX.to_bits() {
        assert_eq!(
            scale_f32(bits).to_bits(),
            f16::from_bits(bits).to_f32().to_bits(),
            "{bits:#06x}"
        );
    }
}

#[test]
fn int8_needs_whole_groups() {
    let g = KvGeometry {
        head_dim: GROUP + 8,
        ..GEOM
    };
    let want = KvError::HeadDimNotGrouped {
        head_dim: GROUP + 8,
        group: GROUP,
    };
    assert_eq!(
        KvCache::try_new(g, KvDtype::Int8, 2).err(),
        Some(want.clone())
    );
    let mut c = KvCache::new(g, KvDtype::Int8, 2);
    let x = data(g.row_width(), 41);
    assert_eq!(c.write(0, 0, &x, &x), Err(want.clone()));
    assert_eq!(c.layer_view(0, 0).err(), Some(want));
    let mut f = KvCache::try_new(g, KvDtype::F32, 2).unwrap();
    f.write(0, 0, &x, &x).unwrap();
}

#[test]
fn f32_rows_round_trip_exactly() {
    let mut c = KvCache::new(GEOM, KvDtype::F32, 4);
    let (k, v) = (data(3 * W, 3), data(3 * W, 4));
    c.write(2, 0, &k, &v).unwrap();
    let hd = GEOM.head_dim;
    assert_eq!(c.read_k_row(2, 2, 1).unwrap(), k[5 * hd..6 * hd]);
    assert_eq!(c.read_v_row(2, 1, 0).unwrap(), v[2 * hd..3 * hd]);
}

#[test]
fn write_errors_leave_cache_untouched() {
    let mut c = KvCache::new(GEOM, KvDtype::Int8, 4);
    let ok = data(W, 5);
    let err = |r: Result<(), KvError>| r.unwrap_err();
    assert!(matches!(
        err(c.write(3, 0, &ok, &ok)),
        KvError::LayerOutOfRange { .. }
    ));
    assert!(matches!(
        err(c.write(0, 0, &ok[..W - 1], &ok[..W - 1])),
        KvError::NotRowMultiple { .. }
    ));
    assert!(matches!(
        err(c.write(0, 0, &ok, &ok[..W / 2])),
        KvError::LengthMismatch { .. }
    ));
    assert!(matches!(
        err(c.write(0, 1, &ok, &ok)),
        KvError::WriteGap { pos: 1, len: 0 }
    ));
    let big = data(5 * W, 6);
    assert!(matches!(
        err(c.write(0, 0, &big, &big)),
        KvError::OutOfCapacity { .. }
    ));
    let mut nan = ok.clone();
    nan[3] = f32::NAN;
    assert_eq!(
        err(c.write(0, 0, &ok, &nan)),
        KvError::NonFinite {
            what: "v",
            index: 3
        }
    );
    nan[3] = f32::INFINITY;
    assert_eq!(
        err(c.write(0, 0, &nan, &ok)),
        KvError::NonFinite {
            what: "k",
            index: 3
        }
    );
    assert_eq!(c.written(0), 0);
    assert!(c.read_k_row(0, 0, 0).is_err());
    assert!(
        err(c.write(0, 0, &ok, &nan))
            .to_string()
            .contains("non-finite")
    );
}

#[test]
fn commit_and_truncate_rules() {
    let mut c = KvCache::new(GEOM, KvDtype::F32, 8);
    fill(&mut c, 0, 3, 7);
    assert!(matches!(c.commit(9), Err(KvError::OutOfCapacity { .. })));
    assert!(matches!(
        c.commit(4),
        Err(KvError::NotWritten { layer: 0, .. })
    ));
    c.commit(3).unwrap();
    assert_eq!(c.len(), 3);
    assert!(matches!(
        c.truncate(4),
        Err(KvError::TruncateBeyondLength { .. })
    ));
    c.truncate(1).unwrap();
    assert_eq!((c.len(), c.written(0), c.written(2)), (1, 1, 1));
    assert!(c.read_k_row(0, 1, 0).is_err());
    // A partially written step cannot be committed until every layer has it.
    let w = GEOM.row_width();
    c.write(0, 1, &data(w, 8), &data(w, 9)).unwrap();
    assert!(matches!(
        c.commit(2),
        Err(KvError::NotWritten { layer: 1, .. })
    ));
}

#[test]
fn truncate_and_rewrite_equals_fresh_cache() {
    for dtype in [KvDtype::Int8, KvDtype::F32] {
        let mut fresh = KvCache::new(GEOM, dtype, 8);
        fill(&mut fresh, 0, 4, 10);
        fresh.commit(4).unwrap();
        fill(&mut fresh, 4, 3, 20);
        fresh.commit(7).unwrap();

        let mut rolled = KvCache::new(GEOM, dtype, 8);
        fill(&mut rolled, 0, 4, 10);
        rolled.commit(4).unwrap();
        fill(&mut rolled, 4, 4, 99); // rejected draft
        rolled.commit(8).unwrap();
        rolled.truncate(4).unwrap();
        fill(&mut rolled, 4, 3, 20);
        rolled.commit(7).unwrap();
        for l in 0..3 {
            for p in 0..7 {
                for h in 0..2 {
                    assert_eq!(rolled.read_k_row(l, p, h), fresh.read_k_row(l, p, h));
                    assert_eq!(rolled.read_v_row(l, p, h), fresh.read_v_row(l, p, h));
                }
            }
        }
    }
}

#[test]
fn copy_prefix_equals_recomputing_it() {
    for dtype in [KvDtype::Int8, KvDtype::F32] {
        let mut src = KvCache::new(GEOM, dtype, 10);
        fill(&mut src, 0, 6, 30);
        src.commit(6).unwrap();
        let mut dst = KvCache::new(GEOM, dtype, 5);
        fill(&mut dst, 0, 2, 77);
        dst.commit(2).unwrap();
        assert!(matches!(
            dst.copy_prefix_from(&src, 6),
            Err(KvError::OutOfCapacity { .. })
        ));
        assert!(matches!(
            dst.copy_prefix_from(&src, 7),
            Err(KvError::PrefixTooLong { .. })
        ));
        dst.copy_prefix_from(&src, 4).unwrap();
        assert_eq!(dst.len(), 4);
        for l in 0..3 {
            for p in 0..4 {
                for h in 0..2 {
                    assert_eq!(dst.read_k_row(l, p, h), src.read_k_row(l, p, h));
                    assert_eq!(dst.read_v_row(l, p, h), src.read_v_row(l, p, h));
                }
            }
        }
        assert!(dst.read_k_row(0, 4, 0).is_err());
    }
    let a = KvCache::new(GEOM, KvDtype::Int8, 4);
    let mut b = KvCache::new(GEOM, KvDtype::F32, 4);
    assert!(matches!(
        b.copy_prefix_from(&a, 0),
        Err(KvError::Incompatible(_))
    ));
    let mut c = KvCache::new(
        KvGeometry {
            n_layers: 2,
            ..GEOM
        },
        KvDtype::Int8,
        4,
    );
    assert!(matches!(
        c.copy_prefix_from(&a, 0),
        Err(KvError::Incompatible(_))
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        layer: usize,
        back: usize,
        rows: usize,
    },
    Commit(usize),
    Truncate(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4usize, 0..3usize, 0..5usize).prop_map(|(layer, back, rows)| Op::Write {
            layer,
            back,
            rows
        }),
        (0..12usize).prop_map(Op::Commit),
        (0..12usize).prop_map(Op::Truncate),
    ]
}

proptest! {
    /// Random write/commit/truncate sequences never panic, keep `len <= written <= capacity`,
    /// and every readable row holds the last value written there (checked in f32 mode against
    /// a shadow model).
    #[test]
    fn random_ops_keep_invariants(ops in proptest::collection::vec(op(), 1..40)) {
        let cap = 8;
        let mut c = KvCache::new(GEOM, KvDtype::F32, cap);
        let w = GEOM.row_width();
        let mut shadow = vec![vec![None::<Vec<f32>>; cap]; GEOM.n_layers];
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Op::Write { layer, back, rows } => {
                    let pos = c.len().saturating_sub(back);
                    let k = data(rows * w, i as u64);
                    let res = c.write(layer, pos, &k, &k);
                    let valid = layer < GEOM.n_layers && pos + rows <= cap;
                    prop_assert_eq!(res.is_ok(), valid);
                    if valid {
                        for r in 0..rows {
                            shadow[layer][pos + r] = Some(k[r * w..][..w].to_vec());
                        }
                    }
                }
                Op::Commit(n) => {
                    let valid = n <= cap && (n <= c.len() || (0..GEOM.n_layers).all(|l| c.written(l) >= n));
                    prop_assert_eq!(c.commit(n).is_ok(), valid);
                }
                Op::Truncate(n) => {
                    let valid = n <= c.len();
                    prop_assert_eq!(c.truncate(n).is_ok(), valid);
                }
            }
            for (l, rows) in shadow.iter().enumerate() {
                let written = c.written(l);
                prop_assert!(c.len() <= written && written <= cap);
                for (p, row) in rows.iter().enumerate().take(written) {
                    let want = row.as_ref().expect("written rows were written");
                    prop_assert_eq!(&c.read_k_row(l, p, 1).unwrap()[..], &want[W / 2..]);
                }
                prop_assert!(c.read_k_row(l, written, 0).is_err());
            }
        }
    }
}

proptest! {
    /// After removing a range, every later row reads back exactly as it did before, at its
    /// new place, in both dtypes; rows before the range are untouched.
    #[test]
    fn remove_moves_later_rows_down_unchanged(
        len in 1usize..24,
        start_frac in 0.0f64..1.0,
        n_frac in 0.0f64..1.0,
        int8 in any::<bool>(),
    ) {
        let dtype = if int8 { KvDtype::Int8 } else { KvDtype::F32 };
        let mut c = KvCache::new(GEOM, dtype, 32);
        fill(&mut c, 0, len, 7);
        c.commit(len).unwrap();
        let start = ((len as f64) * start_frac) as usize;
        let n = (((len - start) as f64) * n_frac) as usize;
        let rows = |c: &KvCache, l: usize, p: usize| {
            (0..GEOM.n_kv_heads)
                .map(|h| (c.read_k_row(l, p, h).unwrap(), c.read_v_row(l, p, h).unwrap()))
                .collect::<Vec<_>>()
        };
        let before: Vec<Vec<_>> = (0..GEOM.n_layers)
            .map(|l| (0..len).map(|p| rows(&c, l, p)).collect())
            .collect();
        c.remove(start, n).unwrap();
        prop_assert_eq!(c.len(), len - n);
        for (l, layer) in before.iter().enumerate() {
            for p in 0..len - n {
                let was = if p < start { p } else { p + n };
                prop_assert_eq!(&rows(&c, l, p), &layer[was], "layer {} row {}", l, p);
            }
        }
        // The freed room takes new rows.
        fill(&mut c, len - n, n, 99);
        c.commit(len).unwrap();
    }
}

#[test]
fn remove_refuses_positions_beyond_the_length() {
    let mut c = KvCache::new(GEOM, KvDtype::Int8, 8);
    fill(&mut c, 0, 4, 1);
    c.commit(4).unwrap();
    assert!(matches!(
        c.remove(2, 3),
        Err(KvError::RemoveBeyondLength {
            start: 2,
            end: 5,
            len: 4
        })
    ));
    assert!(c.remove(usize::MAX, 2).is_err());
    assert_eq!(c.len(), 4);
    c.remove(4, 0).unwrap();
    assert_eq!(c.len(), 4);
}
