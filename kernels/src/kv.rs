//! The int8 KV cache's quantizer: each group `x` of [`GROUP`] values becomes `s = f16(max|x| /
//! 127)` (clamped to `f16::MAX`) and `q = round(x / s)` clamped to `[-127, 127]`, with the rounded
//! `s`, halves away from zero as `f32::round`; a group whose rounded scale is zero is stored as
//! zeros. A prefill writes every layer's keys and values through here (about 200,000 values a
//! layer for 512 tokens); the AVX2 build gives the portable one's bytes and scales, bit for bit.

use crate::GROUP;
use half::f16;

/// Quantizes the groups of `x` into `q` and their scales (as f16 bits) into `scales`. Every
/// value must be finite (the cache checks); panics unless `x` and `q` hold `scales.len()` groups.
pub fn quantize(x: &[f32], q: &mut [i8], scales: &mut [u16]) {
    assert!(
        x.len() == scales.len() * GROUP && q.len() == x.len(),
        "{} values and {} codes for {} groups",
        x.len(),
        q.len(),
        scales.len()
    );
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        avx2::quantize(x, q, scales);
        return;
    }
    quantize_portable(x, q, scales);
}

/// [`quantize`] without vector instructions, the definition the AVX2 build is checked against.
fn quantize_portable(x: &[f32], q: &mut [i8], scales: &mut [u16]) {
    let groups = x.chunks_exact(GROUP).zip(q.chunks_exact_mut(GROUP));
    for ((x, q), s) in groups.zip(scales.iter_mut()) {
        let Some(scale) = group_scale(x.iter().fold(0.0f32, |m, v| m.max(v.abs()))) else {
            q.fill(0);
            *s = 0;
            continue;
        };
        for (o, &v) in q.iter_mut().zip(x) {
            // The clamp makes the cast exact; `as` would saturate anyway.
            *o = round_half_away(v / scale.to_f32()).clamp(-127.0, 127.0) as i8;
        }
        *s = scale.to_bits();
    }
}

/// The rounded scale of a group whose largest magnitude is `max`, `None` where it rounds to zero.
fn group_scale(max: f32) -> Option<f16> {
    let mut half = f16::from_f32(max / 127.0);
    if half.is_infinite() {
        half = f16::MAX;
    }
    (half.to_f32() != 0.0).then_some(half)
}

/// `v` rounded to the nearest integer, halves away from zero, exactly as `f32::round`, for
/// `|v| < 2^22` (a group's values over its scale stay within a few hundred). `f32::round` is a
/// call to `roundf` per value on baseline x86-64.
#[inline(always)]
fn round_half_away(v: f32) -> f32 {
    let t = v as i32 as f32;
    let f = v - t; // exact: `t` is `v` without its fraction bits
    let r = if f >= 0.5 {
        t + 1.0
    } else if f <= -0.5 {
        t - 1.0
    } else {
        t
    };
    r.copysign(v) // −0.3 rounds to −0.0, as `f32::round` gives
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #![allow(unsafe_code)]

    use super::{GROUP, group_scale};
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    /// [`super::quantize_portable`] with AVX2. Panics without AVX2 or unless `x` and `q` hold
    /// the groups of `scales`.
    pub(super) fn quantize(x: &[f32], q: &mut [i8], scales: &mut [u16]) {
        assert!(available(), "the AVX2 quantizer needs AVX2");
        assert!(
            x.len() == scales.len() * GROUP && q.len() == x.len(),
            "group counts"
        );
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe { quantize_avx2(x, q, scales) }
    }

    /// The same operations as the portable loop, eight lanes at a time: the maximum is exact in
    /// any order, the division is IEEE's, truncation toward zero and the two half comparisons
    /// give `round_half_away`'s integer (its sign of zero does not reach a code), and the clamp
    /// keeps the 32- to 8-bit packs exact.
    #[target_feature(enable = "avx2")]
    fn quantize_avx2(x: &[f32], q: &mut [i8], scales: &mut [u16]) {
        const { assert!(GROUP == 32) };
        let (half, minus_half) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
        let one = _mm256_set1_ps(1.0);
        let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
        let groups = x.chunks_exact(GROUP).zip(q.chunks_exact_mut(GROUP));
        for ((xg, qg), s) in groups.zip(scales.iter_mut()) {
            // SAFETY: a group is 32 floats.
            let v: [__m256; 4] =
                std::array::from_fn(|i| unsafe { _mm256_loadu_ps(xg.as_ptr().add(8 * i)) });
            let Some(scale) = group_scale(crate::codes::max_abs(&v)) else {
                qg.fill(0);
                *s = 0;
                continue;
            };
            let div = _mm256_set1_ps(scale.to_f32());
            // A plain loop: a closure that is not inlined does not get the target features.
            let mut codes = [_mm256_setzero_si256(); 4];
            for (c, &v) in codes.iter_mut().zip(&v) {
                let v = _mm256_div_ps(v, div);
                let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
                let f = _mm256_sub_ps(v, t);
                let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(f, half), one);
                let down = _mm256_and_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(f, minus_half), one);
                let r = _mm256_sub_ps(_mm256_add_ps(t, up), down);
                *c = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
            }
            crate::codes::store_i8(codes, qg.try_into().expect("32 codes"));
            *s = scale.to_bits();
        }
    }
}

#[cfg(test)]
mod tests;
