//! The kernel with AVX2, FMA and F16C. A group's block is four 256-bit vectors of codes, each
//! holding two steps of four inputs for the eight columns (low and high nibbles); a step is one
//! `vpmaddubsw` against four activation bytes broadcast. The eight steps' 16-bit sums add up
//! exactly (at most `8·2·15·127 = 30480`; 5-bit codes take two sums of four), one `vpmaddwd`
//! widens them to the eight columns'
//! `Σ q·qx`, and one multiply by the eight scales times `dx` and one FMA per accumulator finish
//! the block, as the portable kernel defines it. With VNNI, `vpdpbusd` does a step's products and
//! sums in one instruction, into 32-bit lanes.
//!
//! The VNNI kernel is compiled for AVX-512 F and VL: its vectors stay 256 bits wide (Zen 4 runs
//! 512-bit ones in two halves), but it gets 32 registers instead of 16, so no row's sums spill
//! and the activations' broadcasts fold into `vpdpbusd` (a 512-token prefill 17% faster).
//!
//! Each code vector is unpacked once for all the tile's rows, and the mins' sums (`Σ m·sx`) run
//! in a second pass over the group: with them in the first, four rows' accumulators spilled to
//! the stack. Integer sums are exact in any order and each float sum keeps its block order, so
//! the result is the portable kernel's, bit for bit.

#![allow(unsafe_code)]

use super::{BLOCK, CODES, Format, GROUP, Tile};
use std::arch::x86_64::*;

/// Whether the CPU runs this kernel (`vnni`: with `vpdpbusd` on 256-bit vectors, which
/// AVX-512 VNNI with AVX-512 VL provides, compiled for AVX-512 F).
pub(super) fn available(vnni: bool) -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
        && (!vnni
            || (std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512vl")))
}

/// Proof that the CPU runs the AVX2 kernel (with `vnni`, the VNNI one): made only by
/// [`Cpu::detect`], once per product rather than per tile.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cpu {
    vnni: bool,
}

impl Cpu {
    /// `Some` if the CPU runs the kernel ([`available`]).
    pub(super) fn detect(vnni: bool) -> Option<Cpu> {
        available(vnni).then_some(Cpu { vnni })
    }
}

/// The tile's products on the kernel `cpu` proves the CPU runs.
pub(super) fn tile<const RX: usize>(t: &Tile<'_, RX>, cpu: Cpu) -> [[f32; GROUP]; RX] {
    let blocks = t.x[0].ds.len();
    assert_eq!(t.w.len(), blocks * t.format.block_bytes(), "weight length");
    assert!(
        t.x.iter().all(|x| x.q.len() == blocks * BLOCK
            && x.ds.len() == blocks
            && x.halves.len() == blocks),
        "activation row length"
    );
    // SAFETY: the CPU has AVX2, FMA, F16C and, with `vnni`, AVX-512 F, VL and VNNI (`cpu` is
    // made only where it does), and the group and every row hold `blocks` blocks (checked
    // above), which is all the kernel reads.
    unsafe {
        match (t.format, cpu.vnni) {
            (Format::Q4F16, false) => tile_avx2::<RX, true, 4>(t, blocks),
            (Format::Q4F32, false) => tile_avx2::<RX, false, 4>(t, blocks),
            (Format::Q5F16, false) => tile_avx2::<RX, true, 5>(t, blocks),
            (Format::Q5F32, false) => tile_avx2::<RX, false, 5>(t, blocks),
            (Format::Q6F32, false) => tile_avx2::<RX, false, 6>(t, blocks),
            (Format::Q4F16, true) => tile_vnni::<RX, true, 4>(t, blocks),
            (Format::Q4F32, true) => tile_vnni::<RX, false, 4>(t, blocks),
            (Format::Q5F16, true) => tile_vnni::<RX, true, 5>(t, blocks),
            (Format::Q5F32, true) => tile_vnni::<RX, false, 5>(t, blocks),
            (Format::Q6F32, true) => tile_vnni::<RX, false, 6>(t, blocks),
        }
    }
}

/// [`super::silu_mul`] compiled with AVX2 (the same bits), which `cpu` proves the CPU has.
pub(super) fn silu_mul<const RX: usize>(
    _cpu: Cpu,
    g: &mut [[f32; GROUP]; RX],
    u: &[[f32; GROUP]; RX],
) {
    // SAFETY: the CPU has AVX2 (a `Cpu` is made only where it does).
    unsafe { silu_mul_avx2(g, u) }
}

#[target_feature(enable = "avx2")]
fn silu_mul_avx2<const RX: usize>(g: &mut [[f32; GROUP]; RX], u: &[[f32; GROUP]; RX]) {
    super::silu_mul(g, u);
}

/// Whether the CPU has AVX2 ([`quantize`], [`silu_mul`]).
pub(super) fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// [`super::Part::quantize_portable`] with AVX2, bit for bit: the same scale (the maximum is
/// exact in any order), the same products, rounding and clamp per value, and an exact integer
/// sum. Panics without AVX2 or unless `x` and `q` hold the blocks of `ds`.
pub(super) fn quantize(x: &[f32], q: &mut [i8], ds: &mut [[f32; 2]], halves: &mut [[i32; 2]]) {
    assert!(has_avx2(), "the AVX2 quantizer needs AVX2");
    assert!(
        x.len() == ds.len() * BLOCK && q.len() == x.len() && halves.len() == ds.len(),
        "block counts"
    );
    // SAFETY: the CPU has AVX2 (checked above).
    unsafe { quantize_avx2(x, q, ds, halves) }
}

/// The sums of each of the eight vectors' lanes, in their order (exact in any order).
#[target_feature(enable = "avx2")]
fn sums_i32(v: &[__m256i; BATCH]) -> __m256i {
    let pairs = [
        _mm256_hadd_epi32(v[0], v[1]),
        _mm256_hadd_epi32(v[2], v[3]),
        _mm256_hadd_epi32(v[4], v[5]),
        _mm256_hadd_epi32(v[6], v[7]),
    ];
    // Each 128-bit half: the half sums of vectors 0..4, then of 4..8.
    let quads = [
        _mm256_hadd_epi32(pairs[0], pairs[1]),
        _mm256_hadd_epi32(pairs[2], pairs[3]),
    ];
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(quads[0], quads[1]),
        _mm256_permute2x128_si256::<0x31>(quads[0], quads[1]),
    )
}

/// Blocks quantized together: their maxima first, then their scales and inverses in one vector
/// division each, then their codes, then their sums. One block at a time waited on two scalar
/// divisions and two horizontal sums in a row, three times as long.
const BATCH: usize = 8;

#[target_feature(enable = "avx2")]
fn quantize_avx2(x: &[f32], q: &mut [i8], ds: &mut [[f32; 2]], halves: &mut [[i32; 2]]) {
    let zero = _mm256_setzero_ps();
    let magic = _mm256_set1_ps(super::ROUND_MAGIC); // as `round_ties_even`
    let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let batches = x
        .chunks(BATCH * BLOCK)
        .zip(q.chunks_mut(BATCH * BLOCK))
        .zip(halves.chunks_mut(BATCH));
    for (((xb, qb), halves), ds) in batches.zip(ds.chunks_mut(BATCH)) {
        let n = ds.len();
        let load = |j: usize| -> [__m256; 4] {
            // SAFETY: block `j < n` of the batch is 32 floats.
            std::array::from_fn(|i| unsafe { _mm256_loadu_ps(xb.as_ptr().add(BLOCK * j + 8 * i)) })
        };
        let (mut amax, mut finite) = ([0.0f32; BATCH], [false; BATCH]);
        for j in 0..n {
            let v = load(j);
            // `x - x` is 0 for finite values and NaN for NaN and infinities, and NaN stays NaN
            // in a sum.
            let nan = v
                .iter()
                .fold(zero, |s, &v| _mm256_add_ps(s, _mm256_sub_ps(v, v)));
            finite[j] = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(nan, zero)) == 0xff;
            amax[j] = crate::codes::max_abs(&v);
        }
        // SAFETY: `amax` holds eight floats.
        let scale = _mm256_div_ps(
            unsafe { _mm256_loadu_ps(amax.as_ptr()) },
            _mm256_set1_ps(127.0),
        );
        // `1/scale` where `scale > 0`, else 0.
        let inv = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(scale, zero),
            _mm256_div_ps(_mm256_set1_ps(1.0), scale),
        );
        let (mut scales, mut invs) = ([0.0f32; BATCH], [0.0f32; BATCH]);
        // SAFETY: both hold eight floats.
        unsafe {
            _mm256_storeu_ps(scales.as_mut_ptr(), scale);
            _mm256_storeu_ps(invs.as_mut_ptr(), inv);
        }
        let (mut first, mut second) = (
            [_mm256_setzero_si256(); BATCH],
            [_mm256_setzero_si256(); BATCH],
        );
        for j in 0..n {
            let qj = &mut qb[BLOCK * j..][..BLOCK];
            if !finite[j] {
                qj.fill(0);
                continue;
            }
            let inv = _mm256_set1_ps(invs[j]);
            // A plain loop: a closure that is not inlined does not get the target features.
            let mut codes = [_mm256_setzero_si256(); 4];
            for (c, v) in codes.iter_mut().zip(load(j)) {
                let r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v, inv), magic), magic);
                *c = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
            }
            first[j] = _mm256_add_epi32(codes[0], codes[1]);
            second[j] = _mm256_add_epi32(codes[2], codes[3]);
            crate::codes::store_i8(codes, qj.try_into().expect("32 codes"));
        }
        let (first, second) = (sums_i32(&first), sums_i32(&second));
        let sum = _mm256_add_epi32(first, second);
        let (mut sums, mut firsts, mut seconds) = ([0.0f32; BATCH], [0i32; BATCH], [0i32; BATCH]);
        // SAFETY: each holds eight 32-bit values.
        unsafe {
            _mm256_storeu_ps(
                sums.as_mut_ptr(),
                _mm256_mul_ps(scale, _mm256_cvtepi32_ps(sum)),
            );
            _mm256_storeu_si256(firsts.as_mut_ptr().cast(), first);
            _mm256_storeu_si256(seconds.as_mut_ptr().cast(), second);
        }
        for (j, (ds, halves)) in ds.iter_mut().zip(halves.iter_mut()).enumerate() {
            (*ds, *halves) = if finite[j] {
                (
                    [scales[j], sums[j]],
                    [
                        -super::SIX_OFFSET * firsts[j],
                        -super::SIX_OFFSET * seconds[j],
                    ],
                )
            } else {
                ([f32::NAN; 2], [0; 2])
            };
        }
    }
}

/// # Safety
/// Needs AVX2, FMA and F16C, and `blocks` blocks in the group and in every row of `t`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<const RX: usize, const F16: bool, const BITS: u32>(
    t: &Tile<'_, RX>,
    blocks: usize,
) -> [[f32; GROUP]; RX] {
    // SAFETY: as this function's.
    unsafe { tile_body::<RX, F16, BITS, false>(t, blocks) }
}

/// [`tile_avx2`] with `vpdpbusd`, compiled for AVX-512 so that the tile has 32 vector registers
/// (the vectors stay 256-bit wide: Zen 4 splits 512-bit ones in two).
///
/// # Safety
/// Needs AVX2, FMA, F16C, AVX-512 F, VL and VNNI, and `blocks` blocks in the group and in every
/// row of `t`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn tile_vnni<const RX: usize, const F16: bool, const BITS: u32>(
    t: &Tile<'_, RX>,
    blocks: usize,
) -> [[f32; GROUP]; RX] {
    // SAFETY: as this function's.
    unsafe { tile_body::<RX, F16, BITS, true>(t, blocks) }
}

/// # Safety
/// Inlined only into [`tile_avx2`] and [`tile_vnni`] (with `VNNI`), whose features and bounds
/// it needs.
#[inline(always)]
unsafe fn tile_body<const RX: usize, const F16: bool, const BITS: u32, const VNNI: bool>(
    t: &Tile<'_, RX>,
    blocks: usize,
) -> [[f32; GROUP]; RX] {
    let (five, six) = (BITS == 5, BITS == 6);
    // SAFETY: the callers have the features the intrinsics need; block `b` of the group and of
    // each row is in bounds (see `tile`), and unaligned loads are allowed.
    unsafe {
        let bytes = t.format.block_bytes();
        let at = t.format.codes_at();
        let w = t.w.as_ptr();
        let qx: [*const i8; RX] = std::array::from_fn(|r| t.x[r].q.as_ptr());
        let ds: [*const f32; RX] = std::array::from_fn(|r| t.x[r].ds.as_ptr().cast());
        let halves: [*const i32; RX] = std::array::from_fn(|r| t.x[r].halves.as_ptr().cast());
        let top = _mm256_set1_epi8(0x30);
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let fifth = _mm256_set1_epi8(0x10);
        let params = |b: usize| {
            let block = w.add(b * bytes);
            if F16 {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(block.cast())),
                    _mm256_cvtph_ps(_mm_loadu_si128(block.add(16).cast())),
                )
            } else {
                (
                    _mm256_loadu_ps(block.cast()),
                    _mm256_loadu_ps(block.add(32).cast()),
                )
            }
        };
        // The products first: each code vector is unpacked once and used by every row at once, so
        // that only the rows' sums stay in registers (with `off` beside them, four rows would spill).
        let mut acc = [_mm256_setzero_ps(); RX];
        for b in 0..blocks {
            let block = w.add(b * bytes);
            // A 6-bit block's second pair of scales is its second half's, not mins.
            let (d, m) = params(b);
            let h = if five || six {
                _mm256_loadu_si256(block.add(at + CODES).cast())
            } else {
                _mm256_setzero_si256()
            };
            let h_hi = if six {
                _mm256_loadu_si256(block.add(at + CODES + 32).cast())
            } else {
                _mm256_setzero_si256()
            };
            let x: [*const i8; RX] = std::array::from_fn(|r| qx[r].add(b * BLOCK));
            let step =
                |r: usize, i: usize| _mm256_set1_epi32(x[r].add(i).cast::<i32>().read_unaligned());
            // 32-bit sums (VNNI), or 16-bit sums widened every two (5-bit) or four code vectors.
            // 6-bit codes: each half's sum starts from its offset (`−32·Σqx`, exact).
            let init = |h: usize| -> [__m256i; RX] {
                std::array::from_fn(|r| {
                    if six {
                        _mm256_set1_epi32(*halves[r].add(2 * b + h))
                    } else {
                        _mm256_setzero_si256()
                    }
                })
            };
            let mut dot = init(0);
            // With VNNI, a second chain per row (the high nibbles), so that each waits on half as
            // many `vpdpbusd`s (one row, a decoded token, ran 15% slower with one).
            let mut dot_hi = init(1);
            let mut sum = [_mm256_setzero_si256(); RX];
            for v in 0..4 {
                let codes = _mm256_loadu_si256(block.add(at + 32 * v).cast());
                let mut lo = _mm256_and_si256(codes, low);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(codes), low);
                if five {
                    // Bits 2v and 2v + 1 of each byte moved to bit 4 (16-bit shifts: by at most 4
                    // left or 3 right, bit 4 of a byte comes from the same byte) and kept alone.
                    let (l, hh) = match v {
                        0 => (_mm256_slli_epi16::<4>(h), _mm256_slli_epi16::<3>(h)),
                        1 => (_mm256_slli_epi16::<2>(h), _mm256_slli_epi16::<1>(h)),
                        2 => (h, _mm256_srli_epi16::<1>(h)),
                        _ => (_mm256_srli_epi16::<2>(h), _mm256_srli_epi16::<3>(h)),
                    };
                    lo = _mm256_or_si256(lo, _mm256_and_si256(l, fifth));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(hh, fifth));
                }
                if six {
                    // Bits 2v and 2v + 1 of each byte moved to bits 4 and 5 (16-bit shifts by
                    // at most 4 left or 2 right keep them within their byte) and kept alone.
                    let place = |h: __m256i| match v {
                        0 => _mm256_slli_epi16::<4>(h),
                        1 => _mm256_slli_epi16::<2>(h),
                        2 => h,
                        _ => _mm256_srli_epi16::<2>(h),
                    };
                    lo = _mm256_or_si256(lo, _mm256_and_si256(place(h), top));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(place(h_hi), top));
                }
                for r in 0..RX {
                    if VNNI {
                        dot[r] = _mm256_dpbusd_epi32(dot[r], lo, step(r, 4 * v));
                        dot_hi[r] = _mm256_dpbusd_epi32(dot_hi[r], hi, step(r, 16 + 4 * v));
                    } else if six {
                        // The halves apart, widened at once (two 16-bit results of 6-bit codes
                        // could overflow with a third).
                        let lo = _mm256_maddubs_epi16(lo, step(r, 4 * v));
                        let hi = _mm256_maddubs_epi16(hi, step(r, 16 + 4 * v));
                        dot[r] = _mm256_add_epi32(dot[r], _mm256_madd_epi16(lo, ones));
                        dot_hi[r] = _mm256_add_epi32(dot_hi[r], _mm256_madd_epi16(hi, ones));
                    } else {
                        sum[r] = _mm256_add_epi16(sum[r], _mm256_maddubs_epi16(lo, step(r, 4 * v)));
                        sum[r] =
                            _mm256_add_epi16(sum[r], _mm256_maddubs_epi16(hi, step(r, 16 + 4 * v)));
                        // At most four 16-bit results of 5-bit codes in one sum.
                        if v == 3 || (five && v == 1) {
                            dot[r] = _mm256_add_epi32(dot[r], _mm256_madd_epi16(sum[r], ones));
                            sum[r] = _mm256_setzero_si256();
                        }
                    }
                }
            }
            if six {
                for r in 0..RX {
                    let dx = _mm256_set1_ps(*ds[r].add(2 * b));
                    let (lo, hi) = (dot[r], dot_hi[r]);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), _mm256_mul_ps(d, dx), acc[r]);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_mul_ps(m, dx), acc[r]);
                }
                continue;
            }
            for r in 0..RX {
                let dx = *ds[r].add(2 * b);
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(dx));
                let dot = if VNNI {
                    _mm256_add_epi32(dot[r], dot_hi[r])
                } else {
                    dot[r]
                };
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r]);
            }
        }
        if six {
            return std::array::from_fn(|r| {
                let mut y = [0.0f32; GROUP];
                // `y` holds 8 floats.
                _mm256_storeu_ps(y.as_mut_ptr(), acc[r]);
                y
            });
        }
        // Then the mins, in their own pass.
        let mut off = [_mm256_setzero_ps(); RX];
        for b in 0..blocks {
            let (_, m) = params(b);
            for r in 0..RX {
                let sx = *ds[r].add(2 * b + 1);
                off[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(sx), off[r]);
            }
        }
        std::array::from_fn(|r| {
            let mut y = [0.0f32; GROUP];
            // `y` holds 8 floats.
            _mm256_storeu_ps(y.as_mut_ptr(), _mm256_add_ps(acc[r], off[r]));
            y
        })
    }
}
