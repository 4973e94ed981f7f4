use super::*;

/// A reproducible stream of pseudo-random numbers, uniform in [-1, 1).
struct Xorshift(u64);

impl Xorshift {
    fn unit(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// The rounding is `f32::round` bit for bit over the range a group's values over their scale can
/// take: halves (both signs), neighbours of halves, integers, and random values.
#[test]
fn rounding_equals_f32_round() {
    let mut values: Vec<f32> = vec![
        0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 126.5, -126.5, 127.49, 300.5,
    ];
    for i in -300i32..=300 {
        let h = i as f32 + 0.5;
        values.extend([h, -h, h.next_up(), h.next_down(), i as f32]);
    }
    let mut rng = Xorshift(5);
    values.extend((0..100_000).map(|_| rng.unit() * 150.0));
    for v in values {
        assert_eq!(
            round_half_away(v).to_bits(),
            v.round().to_bits(),
            "{v} ({:#x})",
            v.to_bits()
        );
    }
}

/// Groups that reach every branch: random magnitudes from f16-subnormal scales to ones that
/// overflow f16, all-zero groups, groups whose scale rounds to zero, and groups of exact halves
/// of their step (where rounding away from zero differs from ties to even).
fn groups() -> Vec<f32> {
    let mut rng = Xorshift(17);
    let mut x = Vec::new();
    for magnitude in [1e-9, 1e-6, 3e-5, 1e-3, 0.5, 1.0, 40.0, 7e3, 1e7, 3e9, 1e30] {
        for _ in 0..20 {
            x.extend((0..GROUP).map(|_| rng.unit() * magnitude));
        }
    }
    x.extend([0.0; GROUP]);
    x.extend([-0.0; GROUP]);
    // The largest value fixes the scale at 1 (127/127); the others sit on halves and next to them.
    let mut halves = vec![127.0f32];
    for i in 0..GROUP - 1 {
        let h = (i as f32 - 15.0) * 3.0 + 0.5;
        halves.push(match i % 3 {
            0 => h,
            1 => h.next_up(),
            _ => -h,
        });
    }
    x.extend(&halves);
    x
}

#[test]
fn the_avx2_build_gives_the_portable_codes_and_scales() {
    let x = groups();
    let n = x.len() / GROUP;
    let (mut q, mut s) = (vec![0i8; x.len()], vec![0u16; n]);
    quantize_portable(&x, &mut q, &mut s);
    let (mut q2, mut s2) = (vec![1i8; x.len()], vec![1u16; n]);
    quantize(&x, &mut q2, &mut s2);
    for g in 0..n {
        assert_eq!(s[g], s2[g], "scale of group {g}");
        assert_eq!(
            q[g * GROUP..][..GROUP],
            q2[g * GROUP..][..GROUP],
            "group {g}"
        );
    }
}

/// The definition, value by value with `f32::round`: the scale is `max|x|/127` rounded to f16 (clamped to
/// `f16::MAX`), a code is `x / s` rounded half away from zero and clamped to ±127, and a group
/// whose scale rounds to zero is zeros.
#[test]
fn the_codes_follow_the_definition() {
    let x = groups();
    let n = x.len() / GROUP;
    let (mut q, mut s) = (vec![0i8; x.len()], vec![0u16; n]);
    quantize(&x, &mut q, &mut s);
    for g in 0..n {
        let xs = &x[g * GROUP..][..GROUP];
        let max = xs
            .iter()
            .map(|v| v.abs())
            .reduce(f32::max)
            .expect("a group");
        let scale = match f16::from_f32(max / 127.0) {
            s if s.is_infinite() => f16::MAX,
            s => s,
        };
        assert_eq!(s[g], scale.to_bits(), "scale of group {g}");
        for (i, &v) in xs.iter().enumerate() {
            let want = if scale.to_f32() == 0.0 {
                0.0
            } else {
                (v / scale.to_f32()).round().clamp(-127.0, 127.0)
            };
            assert_eq!(
                f32::from(q[g * GROUP + i]),
                want,
                "group {g}, value {i}: {v}"
            );
        }
    }
}

#[test]
fn lengths_that_disagree_panic() {
    let result = std::panic::catch_unwind(|| {
        quantize(&[0.0; GROUP], &mut [0; GROUP], &mut [0; 2]);
    });
    assert!(result.is_err());
}
