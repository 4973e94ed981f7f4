//! ggml's k-quant formats: super-blocks of 256 values in sub-blocks of 16 or 32, each sub-block
//! with its own scale (and min) quantized against the super-block's f16 scale(s). Decoding
//! follows ggml's `dequantize_row_q*_K` (`ggml-quants.c`) step for step, in f32.
//!
//! Layouts (little-endian), per super-block:
//! - Q2_K (84 bytes): `scales: [u8; 16]` (low nibble scale, high nibble min), `qs: [u8; 64]`
//!   (2 bits each), `d: f16`, `dmin: f16`; `w = d·sc·q − dmin·m`.
//! - Q3_K (110 bytes): `hmask: [u8; 32]` (the high bit), `qs: [u8; 64]` (low 2 bits),
//!   `scales: [u8; 12]` (16 six-bit scales, biased by 32), `d: f16`; `w = d·(sc − 32)·(q − 4)`
//!   with q's high bit inverted.
//! - Q4_K (144 bytes): `d: f16`, `dmin: f16`, `scales: [u8; 12]` (8 six-bit scales and mins),
//!   `qs: [u8; 128]`; per 64 values, 32 bytes whose low nibbles are the first 32 and high
//!   nibbles the next 32; `w = d·sc·q − dmin·m`.
//! - Q5_K (176 bytes): as Q4_K plus `qh: [u8; 32]` (the fifth bit) before `qs`.
//! - Q6_K (210 bytes): `ql: [u8; 128]` (low 4 bits), `qh: [u8; 64]` (high 2 bits),
//!   `scales: [i8; 16]`, `d: f16`; `w = d·sc·(q − 32)`.

use super::quant::{Blocks8, Q41Block, QK, check_blocks};
use super::{GgmlType, GgufError, Result};
use half::f16;

/// Values per super-block.
pub const QK_K: usize = 256;

fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([bytes[i], bytes[i + 1]]).to_f32()
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K and Q5_K.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn super_blocks(
    ty: GgmlType,
    bytes: &[u8],
    block_bytes: usize,
) -> Result<std::slice::ChunksExact<'_, u8>> {
    check_blocks(ty, bytes, block_bytes)?;
    Ok(bytes.chunks_exact(block_bytes))
}

/// Q4_K super-blocks as eight Q4_1-style blocks of 32 each: scale `d·sc`, min `−dmin·m`
/// (both products of an f16 and a 6-bit integer, exact in f32), values in element order.
pub fn q4_k_blocks(bytes: &[u8]) -> Result<Vec<Q41Block>> {
    let mut out = Vec::with_capacity(bytes.len() / 144 * 8);
    for b in super_blocks(GgmlType::Q4_K, bytes, 144)? {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for (chunk, q32) in qs.chunks_exact(32).enumerate() {
            for half in 0..2 {
                let (sc, m) = scale_min_k4(2 * chunk + half, scales);
                let mut q = [0u8; QK];
                for (dst, &byte) in q.iter_mut().zip(q32) {
                    *dst = if half == 0 { byte & 0x0f } else { byte >> 4 };
                }
                out.push(Q41Block {
                    d: d * f32::from(sc),
                    m: -(dmin * f32::from(m)),
                    q,
                });
            }
        }
    }
    Ok(out)
}

/// Decodes k-quant data of type `ty` (the caller checked the byte count).
pub(super) fn dequantize_k(ty: GgmlType, bytes: &[u8], out: &mut Vec<f32>) -> Result<()> {
    match ty {
        GgmlType::Q2_K => {
            for b in super_blocks(ty, bytes, 84)? {
                let (scales, qs) = (&b[0..16], &b[16..80]);
                let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
                let mut is = 0;
                for q in qs.chunks_exact(32) {
                    for shift in [0, 2, 4, 6] {
                        for part in q.chunks_exact(16) {
                            let sc = scales[is];
                            is += 1;
                            let (dl, ml) = (d * f32::from(sc & 0x0f), dmin * f32::from(sc >> 4));
                            out.extend(part.iter().map(|&x| dl * f32::from((x >> shift) & 3) - ml));
                        }
                    }
                }
            }
        }
        GgmlType::Q4_K => {
            for blk in q4_k_blocks(bytes)? {
                out.extend(blk.q.iter().map(|&q| blk.d * f32::from(q) + blk.m));
            }
        }
        // `d·(q − zero) + m` with ggml's products (`d·sc` first) in ggml's order.
        GgmlType::Q3_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            let b = blocks8_k(ty, bytes)?;
            for (i, (codes, &d)) in b.codes.chunks_exact(b.block).zip(&b.d).enumerate() {
                let m = b.m.as_ref().map_or(0.0, |m| m[i * b.block / QK]);
                out.extend(codes.iter().map(|&c| d * (f32::from(c) - 128.0) + m));
            }
        }
        other => return Err(GgufError::UnsupportedType(other)),
    }
    Ok(())
}

/// Q3_K, Q5_K and Q6_K data as [`Blocks8`]: per sub-block (16 values for Q3_K and Q6_K, 32
/// for Q5_K) the scale `d·sc` (an f16 times a small integer, exact in f32), Q5_K's min
/// `−dmin·m`, and codes `q + 128 − zero`.
pub(super) fn blocks8_k(ty: GgmlType, bytes: &[u8]) -> Result<Blocks8> {
    match ty {
        GgmlType::Q3_K => {
            let mut out = Blocks8 {
                block: 16,
                d: Vec::new(),
                m: None,
                codes: Vec::new(),
            };
            for b in super_blocks(ty, bytes, 110)? {
                let (hmask, qs) = (&b[0..32], &b[32..96]);
                let d = f16_at(b, 108);
                let scales = q3_k_scales(&b[96..108]);
                // Sub-blocks in element order: per 128, per shift, the two halves of 16.
                let mut is = 0;
                let mut m = 1u8;
                for q in qs.chunks_exact(32) {
                    for shift in [0, 2, 4, 6] {
                        for (half, part) in q.chunks_exact(16).enumerate() {
                            out.d.push(d * f32::from(scales[is] - 32));
                            is += 1;
                            let hm = &hmask[half * 16..half * 16 + 16];
                            out.codes.extend(part.iter().zip(hm).map(|(&x, &h)| {
                                let high = if h & m != 0 { 4 } else { 0 };
                                // q − 4 with q = low | high, biased to 128.
                                ((x >> shift) & 3) + high + 124
                            }));
                        }
                        m <<= 1;
                    }
                }
            }
            Ok(out)
        }
        GgmlType::Q5_K => {
            let mut out = Blocks8 {
                block: QK,
                d: Vec::new(),
                m: Some(Vec::new()),
                codes: Vec::new(),
            };
            let mins = out.m.as_mut().expect("set above");
            for b in super_blocks(ty, bytes, 176)? {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (scales, qh, ql) = (&b[4..16], &b[16..48], &b[48..176]);
                let (mut u1, mut u2) = (1u8, 2u8);
                for (chunk, q32) in ql.chunks_exact(32).enumerate() {
                    for (sub, (u, high_nibble)) in [(u1, false), (u2, true)].into_iter().enumerate()
                    {
                        let (sc, mn) = scale_min_k4(2 * chunk + sub, scales);
                        out.d.push(d * f32::from(sc));
                        mins.push(-(dmin * f32::from(mn)));
                        out.codes.extend(q32.iter().zip(qh).map(|(&x, &h)| {
                            let low = if high_nibble { x >> 4 } else { x & 0x0f };
                            low + if h & u != 0 { 16 } else { 0 } + 128
                        }));
                    }
                    u1 <<= 2;
                    u2 <<= 2;
                }
            }
            Ok(out)
        }
        GgmlType::Q6_K => {
            let mut out = Blocks8 {
                block: 16,
                d: Vec::new(),
                m: None,
                codes: Vec::new(),
            };
            for b in super_blocks(ty, bytes, 210)? {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                // Sub-block e/16 holds elements e..e+16 in element order.
                out.d.extend(sc.iter().map(|&s| d * f32::from(s as i8)));
                for n in 0..2 {
                    let (ql, qh) = (&ql[n * 64..], &qh[n * 32..]);
                    let mut codes = [0u8; 128];
                    for l in 0..32 {
                        let q = |low: u8, shift: u8| (low | (((qh[l] >> shift) & 3) << 4)) + 96;
                        codes[l] = q(ql[l] & 0x0f, 0);
                        codes[l + 32] = q(ql[l + 32] & 0x0f, 2);
                        codes[l + 64] = q(ql[l] >> 4, 4);
                        codes[l + 96] = q(ql[l + 32] >> 4, 6);
                    }
                    out.codes.extend_from_slice(&codes);
                }
            }
            Ok(out)
        }
        other => Err(GgufError::UnsupportedType(other)),
    }
}

/// The 16 six-bit scales of a Q3_K super-block (biased by 32) from their 12 packed bytes.
fn q3_k_scales(packed: &[u8]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let word =
        |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (a0, a1, tmp) = (word(0), word(4), word(8));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0i8; 16];
    for (i, w) in aux.iter().enumerate() {
        for (j, byte) in w.to_le_bytes().iter().enumerate() {
            out[i * 4 + j] = *byte as i8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! Blocks packed by hand from the layouts above, with the values worked out by hand.

    use super::super::quant::dequantize;
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_k_scales_mins_and_nibble_order() {
        let mut b = vec![0u8; 144];
        b[0..2].copy_from_slice(&h(1.0));
        b[2..4].copy_from_slice(&h(0.5));
        let scales = &mut b[4..16];
        scales[0] = 2 | 0x40; // sub-block 0: scale 2; its top bits give sub-block 4's scale 16
        scales[4] = 3; // sub-block 0: min 3
        scales[1] = 1; // sub-block 1: scale 1, min 0
        scales[8] = 0x21; // sub-block 4: scale 1 | 16, min 2
        let qs = &mut b[16..144];
        qs[0] = 0x75; // element 0 (low nibble, sub-block 0) = 5; element 32 (high) = 7
        qs[64] = 0x0f; // element 128 (sub-block 4) = 15
        let w = dequantize(GgmlType::Q4_K, &b, 256).unwrap();
        assert_eq!(w[0], 2.0 * 5.0 - 0.5 * 3.0);
        assert_eq!(w[1], -1.5);
        assert_eq!(w[32], 7.0);
        assert_eq!(w[128], 17.0 * 15.0 - 0.5 * 2.0);
        // The Q4_1-style blocks of the import give the same values.
        let blocks = q4_k_blocks(&b).unwrap();
        assert_eq!(blocks.len(), 8);
        assert_eq!((blocks[0].d, blocks[0].m, blocks[0].q[0]), (2.0, -1.5, 5));
        assert_eq!((blocks[4].d, blocks[4].m, blocks[4].q[0]), (17.0, -1.0, 15));
    }

    #[test]
    fn q5_k_adds_the_fifth_bit() {
        let mut b = vec![0u8; 176];
        b[0..2].copy_from_slice(&h(0.5));
        b[4] = 1; // sub-block 0: scale 1, min 0
        b[5] = 2; // sub-block 1: scale 2
        b[16] = 0b11; // qh[0]: fifth bit of element 0 (u1) and of element 32 (u2)
        b[48] = 0x21; // element 0 = 1 + 16, element 32 = 2 + 16
        let w = dequantize(GgmlType::Q5_K, &b, 256).unwrap();
        assert_eq!(w[0], 0.5 * 17.0);
        assert_eq!(w[32], 1.0 * 18.0);
        assert_eq!(w[1], 0.0);
    }

    #[test]
    fn q6_k_signed_scales_and_six_bit_values() {
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&h(0.5));
        b[0] = 0xa3; // ql[0]: element 0 low 4 bits 3, element 64 low 4 bits 10
        b[128] = 0b0001_0010; // qh[0]: element 0 high bits 2, element 64 high bits 1
        b[192] = 2; // scale of elements 0..16
        b[196] = (-3i8) as u8; // scale of elements 64..80
        let w = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
        assert_eq!(w[0], 0.5 * 2.0 * (35.0 - 32.0));
        assert_eq!(w[64], 0.5 * -3.0 * (26.0 - 32.0));
    }

    #[test]
    fn q2_k_two_bit_values_shifted_per_group() {
        let mut b = vec![0u8; 84];
        b[0] = 0x32; // elements 0..16: scale 2, min 3
        b[2] = 0x01; // elements 32..48 (shift 2): scale 1, min 0
        b[16] = 0b0111; // element 0 = 3, element 32 = 1
        b[80..82].copy_from_slice(&h(1.0));
        b[82..84].copy_from_slice(&h(0.25));
        let w = dequantize(GgmlType::Q2_K, &b, 256).unwrap();
        assert_eq!(w[0], 2.0 * 3.0 - 0.75);
        assert_eq!(w[32], 1.0);
    }

    #[test]
    fn q3_k_scales_unpack_and_the_inverted_high_bit() {
        let mut b = vec![0u8; 110];
        b[0..32].fill(0xff); // every high bit set: nothing subtracted
        b[0] = 0xfe; // ... except element 0's
        b[32] = 0b11; // element 0's low bits = 3
        b[33] = 0b10; // element 1's = 2
        // All 16 scales 33 (= 32 + 1): low nibbles 1, top two bits 2.
        b[96..104].fill(0x11);
        b[104..108].fill(0xaa);
        b[108..110].copy_from_slice(&h(1.0));
        let w = dequantize(GgmlType::Q3_K, &b, 256).unwrap();
        assert_eq!(w[0], 3.0 - 4.0);
        assert_eq!(w[1], 2.0);
        assert_eq!(q3_k_scales(&b[96..108]), [33; 16]);
    }

    #[test]
    fn super_blocks_must_be_whole() {
        for (ty, bytes) in [
            (GgmlType::Q2_K, 84),
            (GgmlType::Q3_K, 110),
            (GgmlType::Q4_K, 144),
            (GgmlType::Q5_K, 176),
            (GgmlType::Q6_K, 210),
        ] {
            let b = vec![0u8; 2 * bytes];
            assert_eq!(dequantize(ty, &b, 512).unwrap().len(), 512);
            assert!(dequantize(ty, &b[..2 * bytes - 1], 512).is_err(), "{ty}");
            assert!(dequantize(ty, &b, 256).is_err(), "{ty}");
            assert!(dequantize(ty, &b, 300).is_err(), "{ty}");
        }
        assert!(q4_k_blocks(&[0u8; 143]).is_err());
    }
}
