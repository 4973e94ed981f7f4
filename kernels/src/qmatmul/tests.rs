use super::*;

const FORMATS: [Format; 5] = [
    Format::Q4F16,
    Format::Q4F32,
    Format::Q5F16,
    Format::Q5F32,
    Format::Q6F32,
];

/// A reproducible stream of pseudo-random numbers.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        self.next() as f32 / (1u64 << 30) as f32 - 1.0
    }
}

/// An `n × k` layer of random blocks in `format`, and the weights they stand for (`[n, k]`).
fn weights(format: Format, n: usize, k: usize, rng: &mut Lcg) -> (Vec<u8>, Vec<f64>) {
    let blocks: Vec<(f32, f32, [u8; BLOCK])> = (0..n * k / BLOCK)
        .map(|_| {
            let (d, m) = (0.01 + 0.02 * rng.unit().abs(), -0.1 * rng.unit().abs());
            let (d, m) = if format.f16() {
                (
                    half::f16::from_f32(d).to_f32(),
                    half::f16::from_f32(m).to_f32(),
                )
            } else {
                (d, m)
            };
            (
                d,
                m,
                std::array::from_fn(|_| (rng.next() % (1 << format.bits())) as u8),
            )
        })
        .collect();
    let w = blocks
        .iter()
        .flat_map(|&(d, m, q)| {
            (0..BLOCK).map(move |i| match format {
                // Two halves of 16, `d·(q − 32)` with their own scale (the second in `m`'s place).
                Format::Q6F32 => {
                    f64::from(if i < 16 { d } else { m.abs() }) * (f64::from(q[i]) - 32.0)
                }
                _ => f64::from(d) * f64::from(q[i]) + f64::from(m),
            })
        })
        .collect();
    let bytes = format.pack(n, k, |r, b| {
        let (d, m, q) = blocks[r * k / BLOCK + b];
        match format {
            Format::Q6F32 => (d, m.abs(), q),
            _ => (d, m, q),
        }
    });
    (bytes, w)
}

fn product(format: Format, w: &[u8], n: usize, x: &Quantized, kernel: Kernel) -> Vec<f32> {
    let mut out = vec![0.0; x.rows() * n];
    MatMul::new(format, w, n, x, &mut out).on(kernel).run_all();
    out
}

#[test]
fn f16_conversions_are_exact_for_every_finite_half() {
    for bits in 0..=u16::MAX {
        let h = half::f16::from_bits(bits);
        if h.is_finite() {
            assert_eq!(
                f16_to_f32(bits).to_bits(),
                h.to_f32().to_bits(),
                "{bits:#06x}"
            );
            assert_eq!(f32_to_f16_exact(h.to_f32()), bits, "{bits:#06x}");
        }
    }
}

#[test]
fn formats_round_trip_their_codes() {
    for f in FORMATS {
        assert_eq!(Format::from_code(f.code()), Some(f));
        assert_eq!(Format::new(f.bits(), f.f16()), Some(f));
    }
    assert_eq!(Format::from_code(5), None);
    assert_eq!(Format::new(6, true), None);
    assert_eq!(Format::new(8, false), None);
}

#[test]
#[should_panic(expected = "codes above 4 bits")]
fn a_code_wider_than_the_format_is_refused() {
    Format::Q4F32.pack(GROUP, BLOCK, |_, _| (0.5, 0.0, [16; BLOCK]));
}

#[test]
#[should_panic(expected = "is not an f16 value")]
fn a_scale_that_is_not_an_f16_is_refused() {
    Format::Q4F16.pack(GROUP, BLOCK, |_, _| (0.1, 0.0, [0; BLOCK]));
}

#[test]
fn rounding_is_to_nearest_with_ties_to_even() {
    let mut rng = Lcg(9);
    for v in (0..100_000)
        .map(|_| 130.0 * rng.unit())
        .chain([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, -0.0])
    {
        assert_eq!(round_ties_even(v), v.round_ties_even(), "{v}");
    }
}

#[test]
fn quantized_rows_reconstruct_the_activations() {
    let mut rng = Lcg(7);
    let x: Vec<f32> = (0..3 * 64).map(|_| 4.0 * rng.unit()).collect();
    let mut q = Quantized::default();
    q.quantize(&x, 64);
    assert_eq!((q.rows(), q.k()), (3, 64));
    for (b, xb) in x.chunks(BLOCK).enumerate() {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let [d, s] = q.ds[b];
        assert_eq!(d, amax / 127.0);
        let codes = &q.q[b * BLOCK..][..BLOCK];
        assert!(codes.iter().any(|c| c.unsigned_abs() == 127));
        for (&v, &c) in xb.iter().zip(codes) {
            assert!((v - d * f32::from(c)).abs() <= d / 2.0 * 1.0001);
        }
        let sum: i32 = codes.iter().map(|&c| i32::from(c)).sum();
        assert_eq!(s, d * sum as f32);
        let first: i32 = codes[..16].iter().map(|&c| i32::from(c)).sum();
        assert_eq!(q.halves[b], [-32 * first, -32 * (sum - first)]);
    }
    q.quantize(&[0.0; 32], 32);
    assert_eq!((q.ds[0], q.rows()), ([0.0, 0.0], 1));
}

#[test]
fn the_product_is_the_weights_times_the_quantized_activations() {
    for format in FORMATS {
        let mut rng = Lcg(11);
        let (n, k, rows) = (40, 96, 5);
        let (bytes, w) = weights(format, n, k, &mut rng);
        let x: Vec<f32> = (0..rows * k).map(|_| rng.unit()).collect();
        let mut q = Quantized::default();
        q.quantize(&x, k);
        let y = product(format, &bytes, n, &q, Kernel::Portable);
        for r in 0..rows {
            for c in 0..n {
                // Independent of the kernel: the weights times the dequantized activations.
                let exact: f64 = (0..k)
                    .map(|i| {
                        let b = (r * k + i) / BLOCK;
                        w[c * k + i] * f64::from(q.ds[b][0]) * f64::from(q.q[r * k + i])
                    })
                    .sum();
                let scale: f64 = (0..k)
                    .map(|i| (w[c * k + i] * f64::from(x[r * k + i])).abs())
                    .sum();
                let got = f64::from(y[r * n + c]);
                assert!(
                    (got - exact).abs() <= 1e-5 * scale,
                    "{format:?} [{r},{c}]: {got} vs {exact}"
                );
                // And close to the unquantized product (int8 activations: about 1%).
                let plain: f64 = (0..k).map(|i| w[c * k + i] * f64::from(x[r * k + i])).sum();
                assert!(
                    (got - plain).abs() <= 0.01 * scale,
                    "{format:?} [{r},{c}]: {got} vs {plain}"
                );
            }
        }
    }
}

#[test]
fn every_kernel_tiling_and_order_gives_the_same_bits() {
    // Rows and columns beyond one task, with remainders of every tile size (4 + 3, 4 + 2, 1).
    for (format, rows) in FORMATS
        .into_iter()
        .zip([7, 6, 5, 6, 7].map(|r| ROW_CHUNK + r))
    {
        let mut rng = Lcg(3);
        let (n, k) = (GROUP * (GROUPS_PER_TASK + 1), 64);
        let (bytes, _) = weights(format, n, k, &mut rng);
        let x: Vec<f32> = (0..rows * k).map(|_| rng.unit()).collect();
        let mut q = Quantized::default();
        q.quantize(&x, k);
        let whole = product(format, &bytes, n, &q, Kernel::Portable);
        for kernel in Kernel::available() {
            assert_eq!(
                product(format, &bytes, n, &q, kernel),
                whole,
                "{kernel:?} vs portable"
            );
        }
        // Tasks run backwards.
        let mut out = vec![0.0; rows * n];
        let mm = MatMul::new(format, &bytes, n, &q, &mut out);
        (0..mm.tasks()).rev().for_each(|t| mm.run(t));
        assert_eq!(out, whole, "tasks backwards");
        // Each row alone (a decoded token) equals that row in the batch.
        for r in [0, 1, 5, rows - 1] {
            let mut one = Quantized::default();
            one.quantize(&x[r * k..][..k], k);
            for kernel in Kernel::available() {
                let y = product(format, &bytes, n, &one, kernel);
                assert_eq!(y[..], whole[r * n..][..n], "row {r} alone on {kernel:?}");
            }
        }
    }
}

#[test]
fn a_non_finite_activation_poisons_its_row_only() {
    let mut rng = Lcg(5);
    let (n, k) = (16, 64);
    let (bytes, _) = weights(Format::Q4F16, n, k, &mut rng);
    let mut x: Vec<f32> = (0..2 * k).map(|_| rng.unit()).collect();
    x[k + 40] = f32::INFINITY;
    let mut q = Quantized::default();
    q.quantize(&x, k);
    let y = product(Format::Q4F16, &bytes, n, &q, Kernel::best());
    assert!(y[..n].iter().all(|v| v.is_finite()));
    assert!(y[n..].iter().all(|v| v.is_nan()));
}

/// The quantizer the CPU runs equals the portable definition bit for bit: ordinary blocks,
/// halves that round to even (`127·(i + 0.5)/127` codes), a zero block, tiny and huge values,
/// and blocks with a NaN or an infinity (zero codes, NaN scale).
#[test]
fn the_quantizer_equals_the_portable_one() {
    let mut rng = Lcg(11);
    let k = 32 * 12;
    let mut x: Vec<f32> = (0..3 * k).map(|_| rng.unit() * 4.0).collect();
    // Block 1: exact halves once scaled (the maximum 127 makes the scale 1).
    for (i, v) in x[32..64].iter_mut().enumerate() {
        *v = if i == 0 { 127.0 } else { i as f32 - 0.5 - 16.0 };
    }
    x[64..96].fill(0.0);
    x[96..128].iter_mut().for_each(|v| *v *= 1e-40);
    x[128..160].iter_mut().for_each(|v| *v *= 3e38);
    x[170] = f32::NAN;
    x[200] = f32::NEG_INFINITY;
    x[k + 5] = -0.0;
    let quantized = |portable: bool| {
        let mut q = Quantized::default();
        for part in q.parts(&x, k) {
            if portable {
                part.quantize_portable();
            } else {
                part.quantize();
            }
        }
        q
    };
    let (want, got) = (quantized(true), quantized(false));
    assert_eq!(got.q, want.q);
    let bits =
        |q: &Quantized| -> Vec<[u32; 2]> { q.ds.iter().map(|d| d.map(f32::to_bits)).collect() };
    assert_eq!(bits(&got), bits(&want));
    assert_eq!(got.halves, want.halves);
    // The blocks above as intended: halves to even, zeros, NaN scales for non-finite blocks.
    assert_eq!(want.q[33..37], [-16, -14, -14, -12]); // -15.5, -14.5, -13.5, -12.5
    assert!(want.q[64..96].iter().all(|&c| c == 0) && want.ds[2] == [0.0, 0.0]);
    assert!(want.ds[5][0].is_nan() && want.ds[6][0].is_nan() && want.ds[7][0].is_finite());
    assert!(want.q.iter().all(|&c| c != i8::MIN));
}

/// The gated product equals `silu(gate)·up` of the two products side by side, bit for bit, on
/// every kernel and format and for batches of any size (tails of the 4-row tiles included).
#[test]
fn the_gated_product_is_silu_of_the_gate_times_up() {
    let mut rng = Lcg(17);
    let (n, k) = (24, 96);
    for format in FORMATS {
        let (bytes, _) = weights(format, 2 * n, k, &mut rng);
        for rows in [1, 6, 70] {
            let x: Vec<f32> = (0..rows * k).map(|_| rng.unit() * 3.0).collect();
            let mut q = Quantized::default();
            q.quantize(&x, k);
            let both = product(format, &bytes, 2 * n, &q, Kernel::Portable);
            let want: Vec<f32> = (0..rows * n)
                .map(|i| {
                    let (r, c) = (i / n, i % n);
                    silu(both[r * 2 * n + c]) * both[r * 2 * n + n + c]
                })
                .collect();
            for kernel in Kernel::available() {
                let mut got = vec![f32::NAN; rows * n];
                MatMul::glu(format, &bytes, n, &q, &mut got)
                    .on(kernel)
                    .run_all();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{format:?}, {rows} rows, {kernel:?}"
                );
            }
        }
    }
}

#[test]
fn silu_is_x_times_the_logistic() {
    for i in -2000..=2000 {
        let x = i as f32 / 40.0;
        let want = f64::from(x) / (1.0 + (-f64::from(x)).exp());
        let got = f64::from(silu(x));
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1e-30),
            "silu({x}) = {got}, want {want}"
        );
    }
    assert!(silu(f32::NAN).is_nan());
    assert_eq!(silu(0.0), 0.0);
    assert_eq!(silu(200.0), 200.0);
    assert!(silu(-200.0).abs() < 1e-30);
}

/// A task writes its outputs once: running it again (a second thread given the same index)
/// panics instead of writing beside the first.
#[test]
#[should_panic(expected = "task 1 runs twice")]
fn a_task_runs_once() {
    let mut rng = Lcg(5);
    let (n, k) = (GROUP * (GROUPS_PER_TASK + 1), 64);
    let (bytes, _) = weights(Format::Q4F32, n, k, &mut rng);
    let mut q = Quantized::default();
    q.quantize(&vec![0.5; 2 * k], k);
    let mut out = vec![0.0; 2 * n];
    let mm = MatMul::new(Format::Q4F32, &bytes, n, &q, &mut out);
    mm.run(1);
    mm.run(1);
}
