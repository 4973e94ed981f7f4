use super::*;
use proptest::prelude::*;

const LIMIT: usize = 1 << 20;

fn rows(n: usize, cols: usize, seed: u32) -> Vec<f32> {
    (0..n * cols)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            (x as f32 / (1u32 << 24) as f32 - 0.5) * 8.0
        })
        .collect()
}

#[test]
fn f32_round_trips_exactly() {
    let x = rows(3, 16, 1);
    let t = encode(&x, 16, WireDtype::F32).unwrap();
    assert_eq!(t.shape, vec![3, 16]);
    let back = decode(&t, Some(16), LIMIT).unwrap();
    assert_eq!((back.rows, back.cols), (3, 16));
    assert_eq!(back.data, x);
}

#[test]
fn f16_and_int8_stay_within_their_rounding() {
    let x = rows(4, 64, 2);
    let f16 = decode(&encode(&x, 64, WireDtype::F16).unwrap(), Some(64), LIMIT).unwrap();
    for (a, b) in x.iter().zip(&f16.data) {
        assert!((a - b).abs() <= a.abs() * 2f32.powi(-11) + 1e-7, "{a} {b}");
    }
    for group in [0, 16, 64] {
        let t = encode(&x, 64, WireDtype::Int8 { group }).unwrap();
        let g = if group == 0 { 64 } else { group };
        // One f32 scale per row, or an f16 scale per group.
        assert_eq!(t.scales.len() + t.half_scales.len() / 2, 4 * 64 / g);
        assert_eq!(t.scales.is_empty(), group != 0);
        let back = decode(&t, Some(64), LIMIT).unwrap();
        assert_within_int8_rounding(&x, &back.data, 64, g);
    }
}

/// Every value within half a step of its group's scale (f16 scales round up by at most 2⁻¹⁰).
fn assert_within_int8_rounding(x: &[f32], back: &[f32], width: usize, group: usize) {
    for (xr, br) in x.chunks(width).zip(back.chunks(width)) {
        for (xg, bg) in xr.chunks(group).zip(br.chunks(group)) {
            let max = xg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in xg.iter().zip(bg) {
                assert!(
                    (a - b).abs() <= max / 254.0 * 1.001 + 1e-30,
                    "{a} {b} (max {max})"
                );
            }
        }
    }
}

#[test]
fn the_last_group_of_a_row_may_be_shorter() {
    let x = rows(3, 40, 5);
    let t = encode(&x, 40, WireDtype::Int8 { group: 16 }).unwrap();
    // 16 + 16 + 8 per row.
    assert_eq!(t.half_scales.len(), 3 * 3 * 2);
    let back = decode(&t, Some(40), LIMIT).unwrap();
    assert_within_int8_rounding(&x, &back.data, 40, 16);
    // The short group has its own scale: a large value in it does not coarsen the others.
    let mut y = vec![0.01f32; 40];
    y[39] = 100.0;
    let back = decode(
        &encode(&y, 40, WireDtype::Int8 { group: 16 }).unwrap(),
        Some(40),
        LIMIT,
    )
    .unwrap();
    assert!((back.data[0] - 0.01).abs() < 1e-4, "{}", back.data[0]);
}

#[test]
fn scales_beyond_the_f16_range_go_as_f32() {
    let mut x = rows(2, 32, 6);
    x[40] = 1e7;
    let t = encode(&x, 32, WireDtype::Int8 { group: 8 }).unwrap();
    assert!(t.half_scales.is_empty());
    assert_eq!(t.scales.len(), 8);
    let back = decode(&t, Some(32), LIMIT).unwrap();
    assert_within_int8_rounding(&x, &back.data, 32, 8);
}

#[test]
fn payload_bytes_match_the_encoding() {
    let x = rows(5, 576, 3);
    for dtype in [
        WireDtype::F32,
        WireDtype::F16,
        WireDtype::INT8_ROW,
        WireDtype::Int8 { group: 64 },
    ] {
        let t = encode(&x, 576, dtype).unwrap();
        assert_eq!(
            t.data.len() + 4 * t.scales.len() + t.half_scales.len(),
            dtype.payload_bytes(5, 576),
            "{dtype}"
        );
    }
    // The default hidden-state encoding is at most 0.26 of f32.
    assert!(WireDtype::DEFAULT.payload_bytes(1, 576) as f64 / (576.0 * 4.0) <= 0.26);
}

#[test]
fn wire_dtype_names_round_trip() {
    for s in ["f32", "f16", "int8", "int8/32"] {
        assert_eq!(s.parse::<WireDtype>().unwrap().to_string(), s);
    }
    for bad in ["", "int4", "int8/0", "int8/x", "F32"] {
        assert!(bad.parse::<WireDtype>().is_err(), "{bad}");
    }
}

#[test]
fn encoding_refuses_non_finite_and_ragged_input() {
    assert!(encode(&[1.0, f32::NAN], 2, WireDtype::F32).is_err());
    assert!(encode(&[1.0, 2.0, 3.0], 2, WireDtype::F32).is_err());
    assert!(encode(&[], 2, WireDtype::F32).is_err());
}

fn valid() -> Tensor {
    encode(&rows(2, 8, 4), 8, WireDtype::INT8_ROW).unwrap()
}

#[test]
fn decoding_names_what_is_wrong() {
    let cases: Vec<(Tensor, &str)> = vec![
        (
            Tensor {
                dtype: 0,
                ..valid()
            },
            "dtype",
        ),
        (
            Tensor {
                dtype: 9,
                ..valid()
            },
            "dtype",
        ),
        (
            Tensor {
                shape: vec![],
                ..valid()
            },
            "rank",
        ),
        (
            Tensor {
                shape: vec![2, 0],
                ..valid()
            },
            "zero",
        ),
        (
            Tensor {
                shape: vec![4, 4],
                ..valid()
            },
            "expected 8",
        ),
        (
            Tensor {
                data: vec![0; 15].into(),
                ..valid()
            },
            "data bytes",
        ),
        (
            Tensor {
                scales: vec![1.0],
                ..valid()
            },
            "scales",
        ),
        (
            Tensor {
                scales: vec![1.0, f32::NAN],
                ..valid()
            },
            "scale",
        ),
        (
            Tensor {
                scales: vec![1.0, -1.0],
                ..valid()
            },
            "scale",
        ),
        (
            Tensor {
                group_size: 3,
                ..valid()
            },
            "expected 6",
        ),
        (
            Tensor {
                group_size: 9,
                ..valid()
            },
            "group size",
        ),
        (
            Tensor {
                half_scales: vec![0; 4].into(),
                ..valid()
            },
            "both",
        ),
        (
            Tensor {
                scales: vec![],
                half_scales: vec![0; 3].into(),
                ..valid()
            },
            "odd",
        ),
        (
            Tensor {
                scales: vec![],
                ..valid()
            },
            "without scales",
        ),
        (
            Tensor {
                scales: vec![],
                // 1.0 and an f16 infinity.
                half_scales: vec![0x00, 0x3c, 0x00, 0x7c].into(),
                ..valid()
            },
            "scale inf",
        ),
        (
            Tensor {
                scales: vec![f32::MAX, 1.0],
                data: vec![127; 16].into(),
                ..valid()
            },
            "not finite",
        ),
    ];
    for (t, want) in cases {
        let err = decode(&t, Some(8), LIMIT).unwrap_err();
        assert!(matches!(err, Error::TensorInvalid(_)), "{err}");
        assert!(err.to_string().contains(want), "{err} (wanted {want})");
    }
    let mut f32 = encode(&[1.0, 2.0], 2, WireDtype::F32).unwrap();
    f32.data = f32::INFINITY.to_le_bytes().repeat(2).into();
    assert!(decode(&f32, Some(2), LIMIT).is_err());
    f32.scales = vec![1.0];
    assert!(
        decode(&f32, None, LIMIT)
            .unwrap_err()
            .to_string()
            .contains("no scales")
    );
}

#[test]
fn oversized_shapes_are_refused_before_anything_is_read() {
    for shape in [vec![u64::MAX, 2], vec![1 << 40, 1 << 40], vec![1025, 1024]] {
        let t = Tensor { shape, ..valid() };
        assert!(matches!(
            decode(&t, None, LIMIT),
            Err(Error::TensorTooLarge { .. })
        ));
    }
}

proptest! {
    #[test]
    fn any_values_round_trip_within_bounds(
        x in proptest::collection::vec(-1e4f32..1e4, 1..200),
        width in 1usize..8,
    ) {
        let n = x.len() / width * width;
        prop_assume!(n > 0);
        let x = &x[..n];
        let back = decode(&encode(x, width, WireDtype::INT8_ROW).unwrap(), Some(width), LIMIT).unwrap();
        for (xr, br) in x.chunks(width).zip(back.data.chunks(width)) {
            let max = xr.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in xr.iter().zip(br) {
                prop_assert!((a - b).abs() <= max / 254.0 * 1.0001 + 1e-30);
            }
        }
    }

    #[test]
    fn grouped_values_round_trip_within_bounds(
        x in proptest::collection::vec(-1e4f32..1e4, 1..300),
        width in 1usize..70,
        group in 1usize..70,
    ) {
        let n = x.len() / width * width;
        prop_assume!(n > 0 && group <= width);
        let x = &x[..n];
        let t = encode(x, width, WireDtype::Int8 { group }).unwrap();
        prop_assert_eq!(t.data.len() + t.half_scales.len(), WireDtype::Int8 { group }.payload_bytes(n / width, width));
        let back = decode(&t, Some(width), LIMIT).unwrap();
        assert_within_int8_rounding(x, &back.data, width, group);
    }

    #[test]
    fn arbitrary_tensors_never_panic(
        shape in proptest::collection::vec(any::<u64>(), 0..5),
        dtype in -1i32..5,
        data in proptest::collection::vec(any::<u8>(), 0..256),
        scales in proptest::collection::vec(any::<f32>(), 0..16),
        half_scales in proptest::collection::vec(any::<u8>(), 0..33),
        group_size in 0u32..40,
        cols in proptest::option::of(1usize..64),
    ) {
        let t = Tensor { shape, dtype, data: data.into(), scales, group_size, half_scales: half_scales.into() };
        if let Ok(r) = decode(&t, cols, 4096) {
            prop_assert_eq!(r.data.len(), r.rows * r.cols);
            prop_assert!(r.data.iter().all(|x| x.is_finite()));
        }
    }

    #[test]
    fn truncated_or_mutated_valid_tensors_never_panic(
        cut in 0usize..64,
        flip in 0usize..64,
        byte in any::<u8>(),
    ) {
        let mut t = encode(&rows(4, 8, 9), 8, WireDtype::F16).unwrap();
        let mut data = t.data.to_vec();
        if flip < data.len() {
            data[flip] = byte;
        }
        data.truncate(data.len().saturating_sub(cut));
        t.data = data.into();
        let _ = decode(&t, Some(8), 4096);
    }
}
