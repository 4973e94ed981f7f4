//! `y = rms_norm(x + skip)·γ` with the sum kept: a transformer layer's residual add and the
//! RMSNorm after it, in one pass over the rows.
//!
//! A row's result is defined exactly, whichever build runs it: the sum of squares goes into
//! [`LANES`] partial sums (element `i` into lane `i mod LANES`, in order), added up as one fixed
//! tree; then `inv = 1/√(Σ/n + ε)` and `y_i = (s_i·inv)·γ_i`, no operation fused. The AVX2 build
//! (chosen at run time) equals the baseline one bit for bit, and a row does not depend on the
//! other rows of the batch.

/// Partial sums of squares per row (one 256-bit vector).
pub const LANES: usize = 8;

/// For each row of `x` and `skip` (`[rows, n]`, `n = gamma.len()`): `sum = x + skip` and
/// `y = sum / √(mean(sum²) + eps) · gamma`. Panics if the lengths disagree.
pub fn skip_rms_norm(
    x: &[f32],
    skip: &[f32],
    gamma: &[f32],
    eps: f32,
    y: &mut [f32],
    sum: &mut [f32],
) {
    let n = gamma.len();
    assert!(
        n > 0 && x.len().is_multiple_of(n),
        "{} values are not rows of {n}",
        x.len()
    );
    assert!(
        skip.len() == x.len() && y.len() == x.len() && sum.len() == x.len(),
        "x, skip, y and sum must have the same length"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe {
            rows_avx2(x, skip, gamma, eps, y, sum)
        };
        return;
    }
    rows(x, skip, gamma, eps, y, sum);
}

/// [`skip_rms_norm`] on the baseline build, whatever this CPU has: tests compare it with the
/// dispatched build.
pub fn skip_rms_norm_portable(
    x: &[f32],
    skip: &[f32],
    gamma: &[f32],
    eps: f32,
    y: &mut [f32],
    sum: &mut [f32],
) {
    rows(x, skip, gamma, eps, y, sum);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn rows_avx2(x: &[f32], skip: &[f32], gamma: &[f32], eps: f32, y: &mut [f32], sum: &mut [f32]) {
    rows(x, skip, gamma, eps, y, sum);
}

#[inline(always)]
fn rows(x: &[f32], skip: &[f32], gamma: &[f32], eps: f32, y: &mut [f32], sum: &mut [f32]) {
    let n = gamma.len();
    let rows = x
        .chunks_exact(n)
        .zip(skip.chunks_exact(n))
        .zip(y.chunks_exact_mut(n).zip(sum.chunks_exact_mut(n)));
    for ((x, skip), (y, sum)) in rows {
        row(x, skip, gamma, eps, y, sum);
    }
}

#[inline(always)]
fn row(x: &[f32], skip: &[f32], gamma: &[f32], eps: f32, y: &mut [f32], sum: &mut [f32]) {
    let mut acc = [0.0f32; LANES];
    let (xs, x_tail) = x.as_chunks::<LANES>();
    let (ks, k_tail) = skip.as_chunks::<LANES>();
    let (ss, s_tail) = sum.as_chunks_mut::<LANES>();
    for ((x, k), s) in xs.iter().zip(ks).zip(ss.iter_mut()) {
        for j in 0..LANES {
            let v = x[j] + k[j];
            s[j] = v;
            acc[j] += v * v;
        }
    }
    for (j, ((x, k), s)) in x_tail.iter().zip(k_tail).zip(s_tail).enumerate() {
        let v = x + k;
        *s = v;
        acc[j] += v * v;
    }
    let total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    let inv = 1.0 / (total / gamma.len() as f32 + eps).sqrt();
    for ((y, s), g) in y.iter_mut().zip(sum.iter()).zip(gamma) {
        *y = (s * inv) * g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Against a plain f64 computation, for widths with and without a tail of the lanes.
    #[test]
    fn matches_an_f64_reference() {
        for n in [576, 64, 13, 1] {
            let rows = 5;
            let (x, skip, gamma) = (data(rows * n, 1), data(rows * n, 2), data(n, 3));
            let (mut y, mut sum) = (vec![f32::NAN; rows * n], vec![f32::NAN; rows * n]);
            skip_rms_norm(&x, &skip, &gamma, 1e-5, &mut y, &mut sum);
            for r in 0..rows {
                let s: Vec<f64> = (0..n)
                    .map(|i| f64::from(x[r * n + i]) + f64::from(skip[r * n + i]))
                    .collect();
                let ms = s.iter().map(|v| v * v).sum::<f64>() / n as f64;
                let inv = 1.0 / (ms + 1e-5).sqrt();
                for i in 0..n {
                    assert_eq!(sum[r * n + i], x[r * n + i] + skip[r * n + i]);
                    let want = s[i] * inv * f64::from(gamma[i]);
                    let got = f64::from(y[r * n + i]);
                    assert!(
                        (got - want).abs() <= 1e-5 * (want.abs() + 1e-3),
                        "n {n} [{r},{i}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// The dispatched build equals the baseline one, and a row alone equals it in a batch.
    #[test]
    fn every_build_and_batch_gives_the_same_bits() {
        let (n, rows) = (576 + 5, 7);
        let (x, skip, gamma) = (data(rows * n, 4), data(rows * n, 5), data(n, 6));
        let run = |portable: bool, x: &[f32], skip: &[f32]| {
            let (mut y, mut sum) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            if portable {
                skip_rms_norm_portable(x, skip, &gamma, 1e-6, &mut y, &mut sum);
            } else {
                skip_rms_norm(x, skip, &gamma, 1e-6, &mut y, &mut sum);
            }
            (y, sum)
        };
        let whole = run(false, &x, &skip);
        assert_eq!(run(true, &x, &skip), whole);
        for r in [0, 3, rows - 1] {
            let (y, sum) = run(false, &x[r * n..][..n], &skip[r * n..][..n]);
            assert_eq!(y[..], whole.0[r * n..][..n]);
            assert_eq!(sum[..], whole.1[r * n..][..n]);
        }
    }
}
