//! What the AVX2 quantizers ([`crate::kv`], [`crate::qmatmul`]) share.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

/// Stores 32 codes, the 32-bit lanes of `codes` in order, as bytes in `out`. Every lane must
/// be within −128..=127 (the packs saturate, so a larger one would not round-trip).
#[target_feature(enable = "avx2")]
pub(crate) fn store_i8(codes: [__m256i; 4], out: &mut [i8; 32]) {
    // 32-bit to 8-bit within 128-bit lanes, then the lanes' 4-byte groups back in order.
    let words = [
        _mm256_packs_epi32(codes[0], codes[1]),
        _mm256_packs_epi32(codes[2], codes[3]),
    ];
    let bytes = _mm256_packs_epi16(words[0], words[1]);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let bytes = _mm256_permutevar8x32_epi32(bytes, order);
    // SAFETY: `out` is 32 bytes, and unaligned stores are allowed.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), bytes) };
}

/// The largest magnitude among the 32 values of `v` (exact: the maximum does not depend on the
/// order).
#[target_feature(enable = "avx2")]
pub(crate) fn max_abs(v: &[__m256; 4]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let (a, b) = (_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
    let (c, d) = (_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]));
    let m = _mm256_max_ps(_mm256_max_ps(a, b), _mm256_max_ps(c, d));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)))
}
