//! ggml block formats: decoding to f32 and parsing blocks for repacking.
//!
//! Layouts (little-endian), per 32-element block:
//! - Q4_0: `d: f16`, `qs: [u8; 16]`; element `j` is the low nibble of `qs[j]`, element `j + 16`
//!   the high nibble; `w = d * (q - 8)`.
//! - Q4_1: `d: f16`, `m: f16`, `qs: [u8; 16]` with the same nibble order; `w = d * q + m`.
//! - Q5_0: `d: f16`, `qh: u32` (bit `j` is element `j`'s fifth bit), `qs: [u8; 16]` as Q4_0;
//!   `w = d * (q - 16)`.
//! - Q5_1: `d: f16`, `m: f16`, then as Q5_0; `w = d * q + m`.
//! - Q8_0: `d: f16`, `qs: [i8; 32]`; `w = d * q`.
//!
//! The k-quants (super-blocks of 256) are in [`super::kquant`].

use half::{bf16, f16};

use super::{GgmlType, GgufError, Result};

/// Elements per block of the 32-wide formats.
pub const QK: usize = 32;

/// One Q4_1 block with scale and min widened to f32 (exact: every f16 is an f32) and the
/// 4-bit values unpacked to one per byte, in element order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q41Block {
    /// Scale.
    pub d: f32,
    /// Minimum (offset).
    pub m: f32,
    /// Values `0..=15`, element order.
    pub q: [u8; QK],
}

/// One Q8_0 block with its scale widened to f32 (exact).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q80Block {
    /// Scale.
    pub d: f32,
    /// Values, element order.
    pub q: [i8; QK],
}

fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([bytes[i], bytes[i + 1]]).to_f32()
}

/// Unpacks 16 bytes of nibbles into 32 values in element order.
fn unpack_nibbles(qs: &[u8]) -> [u8; QK] {
    let mut q = [0u8; QK];
    for (j, &b) in qs.iter().enumerate().take(QK / 2) {
        q[j] = b & 0x0f;
        q[j + QK / 2] = b >> 4;
    }
    q
}

pub(super) fn check_blocks(ty: GgmlType, bytes: &[u8], block_bytes: usize) -> Result<usize> {
    if !bytes.len().is_multiple_of(block_bytes) {
        return Err(GgufError::BadBlockData {
            ty,
            reason: format!(
                "{} bytes is not a multiple of the {block_bytes}-byte block",
                bytes.len()
            ),
        });
    }
    Ok(bytes.len() / block_bytes)
}

/// Parses Q4_1 data (20 bytes per block) into blocks.
pub fn q4_1_blocks(bytes: &[u8]) -> Result<Vec<Q41Block>> {
    check_blocks(GgmlType::Q4_1, bytes, 20)?;
    Ok(bytes
        .chunks_exact(20)
        .map(|b| Q41Block {
            d: f16_at(b, 0),
            m: f16_at(b, 2),
            q: unpack_nibbles(&b[4..]),
        })
        .collect())
}

/// Parses Q8_0 data (34 bytes per block) into blocks.
pub fn q8_0_blocks(bytes: &[u8]) -> Result<Vec<Q80Block>> {
    check_blocks(GgmlType::Q8_0, bytes, 34)?;
    Ok(bytes
        .chunks_exact(34)
        .map(|b| {
            let mut q = [0i8; QK];
            for (dst, &src) in q.iter_mut().zip(&b[2..]) {
                *dst = src as i8;
            }
            Q80Block { d: f16_at(b, 0), q }
        })
        .collect())
}

/// Data of an 8-bit-or-narrower type as `w = d·(code − 128) + m` per block of `block` values
/// (32, or 16 for Q6_K and Q3_K), every product and offset exact in f32: what an 8-bit
/// `MatMulNBits` (zero point 128) plus a block-min correction computes.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocks8 {
    /// Values per block.
    pub block: usize,
    /// Per block.
    pub d: Vec<f32>,
    /// Per block of 32 values (zero for types without a min); `None` when every one is zero
    /// by construction.
    pub m: Option<Vec<f32>>,
    /// `q + 128 − zero`, element order.
    pub codes: Vec<u8>,
}

/// Q8_0, Q5_0, Q5_1 (and, in [`super::kquant`], Q3_K, Q5_K, Q6_K) as [`Blocks8`]; `None` for
/// other types.
pub fn blocks8(ty: GgmlType, bytes: &[u8]) -> Result<Option<Blocks8>> {
    let legacy = |bytes_per: usize| check_blocks(ty, bytes, bytes_per);
    let out = match ty {
        GgmlType::Q8_0 => {
            let blocks = q8_0_blocks(bytes)?;
            Blocks8 {
                block: QK,
                d: blocks.iter().map(|b| b.d).collect(),
                m: None,
                codes: blocks
                    .iter()
                    .flat_map(|b| b.q.iter().map(|&q| (i16::from(q) + 128) as u8))
                    .collect(),
            }
        }
        GgmlType::Q5_0 => {
            let n = legacy(22)?;
            let mut out = Blocks8 {
                block: QK,
                d: Vec::with_capacity(n),
                m: None,
                codes: Vec::with_capacity(n * QK),
            };
            for b in bytes.chunks_exact(22) {
                out.d.push(f16_at(b, 0));
                out.codes
                    .extend(unpack_q5(&b[2..6], &b[6..]).iter().map(|&q| q + 112));
            }
            out
        }
        GgmlType::Q5_1 => {
            let n = legacy(24)?;
            let (mut d, mut m, mut codes) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n * QK),
            );
            for b in bytes.chunks_exact(24) {
                d.push(f16_at(b, 0));
                m.push(f16_at(b, 2));
                codes.extend(unpack_q5(&b[4..8], &b[8..]).iter().map(|&q| q + 128));
            }
            Blocks8 {
                block: QK,
                d,
                m: Some(m),
                codes,
            }
        }
        GgmlType::Q3_K | GgmlType::Q5_K | GgmlType::Q6_K => super::kquant::blocks8_k(ty, bytes)?,
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// Q4_0 data (18 bytes per block) as Q4_1-style blocks: `w = d·q − 8·d`.
pub fn q4_0_blocks(bytes: &[u8]) -> Result<Vec<Q41Block>> {
    check_blocks(GgmlType::Q4_0, bytes, 18)?;
    Ok(bytes
        .chunks_exact(18)
        .map(|b| {
            let d = f16_at(b, 0);
            Q41Block {
                d,
                m: -8.0 * d,
                q: unpack_nibbles(&b[2..]),
            }
        })
        .collect())
}

/// The 32 five-bit values of a Q5_0 or Q5_1 block from its `qh` and `qs`.
fn unpack_q5(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = unpack_nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((high >> j) & 1) as u8) << 4;
    }
    q
}

/// Decodes `n_elements` values of type `ty` from `bytes`, which must hold exactly
/// `n_elements / block_elems` blocks. Every type with a known block layout is supported:
/// F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    let (block_elems, block_bytes) = ty.block_layout().ok_or(GgufError::UnsupportedType(ty))?;
    if !n_elements.is_multiple_of(block_elems) {
        return Err(GgufError::BadBlockData {
            ty,
            reason: format!(
                "{n_elements} elements is not a multiple of the block size {block_elems}"
            ),
        });
    }
    let expected = n_elements / block_elems * block_bytes;
    if bytes.len() != expected {
        return Err(GgufError::BadBlockData {
            ty,
            reason: format!(
                "{n_elements} elements need {expected} bytes, got {}",
                bytes.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(n_elements);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = f16_at(b, 0);
                out.extend(
                    unpack_nibbles(&b[2..])
                        .iter()
                        .map(|&q| d * (q as f32 - 8.0)),
                );
            }
        }
        GgmlType::Q4_1 => {
            for blk in q4_1_blocks(bytes)? {
                out.extend(blk.q.iter().map(|&q| blk.d * q as f32 + blk.m));
            }
        }
        GgmlType::Q8_0 => {
            for blk in q8_0_blocks(bytes)? {
                out.extend(blk.q.iter().map(|&q| blk.d * q as f32));
            }
        }
        GgmlType::Q5_0 => {
            for b in bytes.chunks_exact(22) {
                let d = f16_at(b, 0);
                let q = unpack_q5(&b[2..6], &b[6..]);
                out.extend(q.iter().map(|&q| d * (f32::from(q) - 16.0)));
            }
        }
        GgmlType::Q5_1 => {
            for b in bytes.chunks_exact(24) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let q = unpack_q5(&b[4..8], &b[8..]);
                out.extend(q.iter().map(|&q| d * f32::from(q) + m));
            }
        }
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            super::kquant::dequantize_k(ty, bytes, &mut out)?
        }
        other => return Err(GgufError::UnsupportedType(other)),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    /// Hand-packs a Q4_1 block: values 0..32 reduced mod 16 in element order.
    fn q4_1_block(d: f32, m: f32) -> Vec<u8> {
        let mut b = [h(d), h(m)].concat();
        b.extend((0..16u8).map(|j| j | (j << 4)));
        b
    }

    #[test]
    fn q4_1_uses_low_nibbles_first_then_high() {
        let mut bytes = [h(0.5), h(-1.0)].concat();
        bytes.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let w = dequantize(GgmlType::Q4_1, &bytes, 32).unwrap();
        for j in 0..16 {
            assert_eq!(w[j], 0.5 * j as f32 - 1.0);
            assert_eq!(w[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
        let blocks = q4_1_blocks(&[q4_1_block(2.0, 0.25), q4_1_block(1.0, 0.0)].concat()).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            (blocks[0].d, blocks[0].m, blocks[0].q[3], blocks[0].q[19]),
            (2.0, 0.25, 3, 3)
        );
    }

    #[test]
    fn q8_0_is_scale_times_signed_value() {
        let mut bytes = h(0.25).to_vec();
        bytes.extend((0..32i32).map(|j| ((j - 16) * 7) as i8 as u8));
        let w = dequantize(GgmlType::Q8_0, &bytes, 32).unwrap();
        for (j, x) in w.iter().enumerate() {
            assert_eq!(*x, 0.25 * ((j as i32 - 16) * 7) as f32);
        }
        assert_eq!(q8_0_blocks(&bytes).unwrap()[0].q[0], -112);
    }

    #[test]
    fn q4_0_subtracts_eight() {
        let mut bytes = h(2.0).to_vec();
        bytes.extend([0x8fu8; 16]);
        let w = dequantize(GgmlType::Q4_0, &bytes, 32).unwrap();
        assert_eq!(&w[..2], &[14.0, 14.0]);
        assert_eq!(&w[16..18], &[0.0, 0.0]);
    }

    #[test]
    fn float_formats() {
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            dequantize(GgmlType::F32, &f32s, 2).unwrap(),
            vec![1.5, -2.0]
        );
        assert_eq!(
            dequantize(GgmlType::F16, &[h(0.125), h(-3.0)].concat(), 2).unwrap(),
            vec![0.125, -3.0]
        );
        let bf: Vec<u8> = [bf16::from_f32(6.5), bf16::from_f32(-0.5)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::BF16, &bf, 2).unwrap(), vec![6.5, -0.5]);
    }

    #[test]
    fn size_mismatch_and_unsupported_types_are_errors() {
        let block = q4_1_block(1.0, 0.0);
        assert!(dequantize(GgmlType::Q4_1, &block, 64).is_err());
        assert!(dequantize(GgmlType::Q4_1, &block, 31).is_err());
        assert!(dequantize(GgmlType::Q4_1, &block[..19], 32).is_err());
        assert!(q4_1_blocks(&block[..19]).is_err());
        assert!(q8_0_blocks(&[0u8; 35]).is_err());
        let err = dequantize(GgmlType::Other(99), &[], 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported tensor type ggml type 99 for dequantization"
        );
    }

    #[test]
    fn q5_0_and_q5_1_take_the_fifth_bit_from_qh() {
        let mut b = vec![0u8; 22];
        b[0..2].copy_from_slice(&h(2.0));
        b[2] = 1; // qh bit 0: element 0's fifth bit
        b[6] = 0x13; // element 0 low bits 3, element 16 low bits 1 (no fifth bit)
        let w = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        assert_eq!(w[0], 2.0 * (19.0 - 16.0));
        assert_eq!(w[16], 2.0 * (1.0 - 16.0));
        let mut b = vec![0u8; 24];
        b[0..2].copy_from_slice(&h(1.0));
        b[2..4].copy_from_slice(&h(-1.0));
        b[7] = 0x80; // qh bit 31: element 31's fifth bit
        b[8] = 0x03;
        b[23] = 0x20; // element 31 = 2 | 16
        let w = dequantize(GgmlType::Q5_1, &b, 32).unwrap();
        assert_eq!((w[0], w[31], w[1]), (2.0, 17.0, -1.0));
        assert!(dequantize(GgmlType::Q5_1, &b[..23], 32).is_err());
    }

    #[test]
    fn q4_0_blocks_carry_the_offset_as_a_min() {
        let mut b = vec![0u8; 18];
        b[0..2].copy_from_slice(&h(0.5));
        b[2] = 0xf0;
        let blk = q4_0_blocks(&b).unwrap()[0];
        assert_eq!((blk.d, blk.m, blk.q[0], blk.q[16]), (0.5, -4.0, 0, 15));
        let w = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        for (i, q) in blk.q.iter().enumerate() {
            assert_eq!(blk.d * f32::from(*q) + blk.m, w[i]);
        }
    }

    proptest::proptest! {
        /// Every block type: whole blocks decode to their element count; a buffer cut short or
        /// overlong by any amount, or an element count that is not whole blocks, is refused
        /// (never a panic), by the decoder and by each import path that reads that type.
        #[test]
        fn truncated_and_overlong_blocks_are_refused(
            which in 0..GgmlType::BLOCK_TYPES.len(),
            blocks in 1usize..4,
            delta in -40i64..40,
            fill in proptest::prelude::any::<u8>(),
        ) {
            let ty = GgmlType::BLOCK_TYPES[which];
            let (elems, bytes) = ty.block_layout().unwrap();
            let n = blocks * elems;
            // A fill byte that makes f16 scales finite, so whole blocks decode.
            let data = vec![fill & 0x3b; blocks * bytes];
            let decoded = dequantize(ty, &data, n).unwrap();
            proptest::prop_assert_eq!(decoded.len(), n);
            let len = (data.len() as i64 + delta).max(0) as usize;
            let mut other = data.clone();
            other.resize(len, fill & 0x3b);
            if len != data.len() {
                proptest::prop_assert!(dequantize(ty, &other, n).is_err());
                if !len.is_multiple_of(bytes) {
                    if blocks8(ty, &data).unwrap().is_some() {
                        proptest::prop_assert!(blocks8(ty, &other).is_err());
                    }
                    match ty {
                        GgmlType::Q4_0 => proptest::prop_assert!(q4_0_blocks(&other).is_err()),
                        GgmlType::Q4_1 => proptest::prop_assert!(q4_1_blocks(&other).is_err()),
                        GgmlType::Q4_K => proptest::prop_assert!(
                            crate::gguf::kquant::q4_k_blocks(&other).is_err()
                        ),
                        _ => {}
                    }
                }
            }
            if elems > 1 {
                proptest::prop_assert!(dequantize(ty, &data, n - 1).is_err());
            }
        }
    }
}
