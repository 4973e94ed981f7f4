//! Quantized linear layers converted from GGUF blocks without re-rounding anything: for Seam's
//! `QMatMul` ([`Q4Linear::blocks`], [`Q8Linear::blocks`]: codes, scale and min as stored) and
//! in the layouts ONNX Runtime's `MatMulNBits` wants (f32-compute graphs, 8-bit layers).
//!
//! GGUF Q4_1 stores `w = d·q + m` per block of 32 with elements 0–15 in the low nibbles and
//! 16–31 in the high nibbles. `MatMulNBits` (4 bits, no zero points) computes `Σ d·(q−8)·x`
//! with consecutive pairs per byte, so the nibbles are repacked and the rest of the function,
//! `Σ_b (m_b + 8·d_b)·S_b(x)` with `S_b(x)` the sum of the activations of block `b`, is added
//! by a `Gemm` over the block sums (see `graphs`). The result is exactly the GGUF function.

/// Elements per quantization block (Q4_1, Q8_0).
pub const BLOCK: usize = 32;

pub use crate::gguf::quant::{Q41Block as Q41, Q80Block as Q80};
use seam_kernels::qmatmul::{Format, GROUP};

/// A linear layer as the graphs compute it: 4 bits (Q4_0, Q4_1, Q4_K), 8 bits, or f32 (F32,
/// and F16 and BF16 widened: `MatMulNBits` has no 16-bit float path).
#[derive(Debug, Clone)]
pub enum Linear {
    Q4(Q4Linear),
    Q8(Q8Linear),
    F32(F32Linear),
}

impl Linear {
    pub fn n(&self) -> usize {
        match self {
            Linear::Q4(l) => l.n,
            Linear::Q8(l) => l.n,
            Linear::F32(l) => l.n,
        }
    }

    /// Stacks consecutive parts that one matmul can compute together (same bits and block; 8-bit
    /// parts only if all or none of them fit a `QMatMul` format, so that a Q5_0 part beside a
    /// Q8_0 one keeps its 5-bit `QMatMul`); the result's outputs, concatenated, are the parts' in
    /// order.
    pub fn fuse(parts: Vec<Linear>) -> Vec<Linear> {
        let mut out: Vec<Linear> = Vec::new();
        for p in parts {
            let merged = match (out.last(), &p) {
                (Some(Linear::Q4(a)), Linear::Q4(b)) => {
                    Some(Linear::Q4(Q4Linear::concat(&[a.clone(), b.clone()])))
                }
                (Some(Linear::Q8(a)), Linear::Q8(b))
                    if a.block == b.block && a.fits_own() == b.fits_own() =>
                {
                    Some(Linear::Q8(Q8Linear::concat(&[a.clone(), b.clone()])))
                }
                (Some(Linear::F32(a)), Linear::F32(b)) if a.k == b.k => {
                    Some(Linear::F32(F32Linear {
                        n: a.n + b.n,
                        k: a.k,
                        w: cat(&[a.clone(), b.clone()], |p| &p.w),
                    }))
                }
                _ => None,
            };
            match merged {
                Some(m) => *out.last_mut().expect("merged with the last") = m,
                None => out.push(p),
            }
        }
        out
    }
}

/// A linear layer `y = W·x` in f32 with `n` outputs and `k` inputs.
#[derive(Debug, Clone)]
pub struct F32Linear {
    pub n: usize,
    pub k: usize,
    /// `[n, k]`, row-major: the GGUF layout.
    pub w: Vec<f32>,
}

impl F32Linear {
    /// `W` transposed to `[k, n]`, the right operand of `MatMul`.
    pub fn transposed(&self) -> Vec<f32> {
        let mut t = vec![0.0; self.n * self.k];
        for (row, w) in self.w.chunks_exact(self.k).enumerate() {
            for (col, &v) in w.iter().enumerate() {
                t[col * self.n + row] = v;
            }
        }
        t
    }
}

/// A 4-bit linear layer `y = W·x` with `n` outputs and `k` inputs.
#[derive(Debug, Clone)]
pub struct Q4Linear {
    pub n: usize,
    pub k: usize,
    /// `[n, k/32, 16]`: element `2i` in the low nibble of byte `i`, `2i+1` in the high nibble.
    pub packed: Vec<u8>,
    /// `[n, k/32]`: the block scales `d`.
    pub scales: Vec<f32>,
    /// `[n, k/32]`: the per-block correction `m + 8·d`.
    pub correction: Vec<f32>,
    /// `[n, k/32]`: the block offsets `m` as stored.
    pub mins: Vec<f32>,
}

impl Q4Linear {
    /// Builds the layer from GGUF Q4_1 blocks in row order (`n` rows of `k/32` blocks).
    pub fn from_q4_1(n: usize, k: usize, blocks: &[Q41]) -> Self {
        assert_eq!(k % BLOCK, 0, "k must be a multiple of {BLOCK}");
        assert_eq!(blocks.len(), n * k / BLOCK, "block count");
        let mut packed = Vec::with_capacity(n * k / 2);
        let mut scales = Vec::with_capacity(blocks.len());
        let mut correction = Vec::with_capacity(blocks.len());
        let mut mins = Vec::with_capacity(blocks.len());
        for b in blocks {
            for pair in b.q.chunks_exact(2) {
                packed.push((pair[0] & 0x0f) | (pair[1] << 4));
            }
            scales.push(b.d);
            correction.push(b.m + 8.0 * b.d);
            mins.push(b.m);
        }
        Q4Linear {
            n,
            k,
            packed,
            scales,
            correction,
            mins,
        }
    }

    /// Stacks layers with the same input size into one (their outputs concatenated).
    pub fn concat(parts: &[Q4Linear]) -> Self {
        let k = parts[0].k;
        assert!(parts.iter().all(|p| p.k == k), "concat needs equal k");
        Q4Linear {
            n: parts.iter().map(|p| p.n).sum(),
            k,
            packed: cat(parts, |p| &p.packed),
            scales: cat(parts, |p| &p.scales),
            correction: cat(parts, |p| &p.correction),
            mins: cat(parts, |p| &p.mins),
        }
    }

    /// The blocks as [`QMatMul`](crate::onnx::qmatmul) reads them ([`Format::pack`]): with `d`
    /// and `m` as f16 where every one of them is an f16 (Q4_0, Q4_1: 5 bits a weight, as GGUF
    /// Q4_1), else as f32 (Q4_K's products of a super-block scale and a 6-bit scale: 6 bits).
    /// `None` unless the outputs are a multiple of [`GROUP`].
    pub fn blocks(&self) -> Option<(Format, Vec<u8>)> {
        if !self.n.is_multiple_of(GROUP) {
            return None;
        }
        let f16 = self.scales.iter().chain(&self.mins).all(|&v| is_f16(v));
        let format = Format::new(4, f16).expect("4-bit formats exist");
        let nb = self.k / BLOCK;
        let bytes = format.pack(self.n, self.k, |row, b| {
            let i = row * nb + b;
            let packed = &self.packed[i * BLOCK / 2..][..BLOCK / 2];
            let codes = std::array::from_fn(|j| (packed[j / 2] >> (4 * (j % 2))) & 0x0f);
            (self.scales[i], self.mins[i], codes)
        });
        Some((format, bytes))
    }

    /// The correction matrix transposed to `[k/32, n]`, ready to multiply the block sums.
    pub fn correction_t(&self) -> Vec<f32> {
        let nb = self.k / BLOCK;
        let mut t = vec![0.0; nb * self.n];
        for row in 0..self.n {
            for b in 0..nb {
                t[b * self.n + row] = self.correction[row * nb + b];
            }
        }
        t
    }

    /// The weight `W[row, col]` this layer computes with (for tests).
    pub fn weight(&self, row: usize, col: usize) -> f32 {
        let nb = self.k / BLOCK;
        let (b, j) = (col / BLOCK, col % BLOCK);
        let byte = self.packed[(row * nb + b) * (BLOCK / 2) + j / 2];
        let q = if j % 2 == 0 { byte & 0x0f } else { byte >> 4 };
        let d = self.scales[row * nb + b];
        d * (q as f32 - 8.0) + self.correction[row * nb + b]
    }
}

/// An 8-bit linear layer: Q8_0 (e.g. the tied LM head), or a narrower GGUF type widened to 8
/// bits without changing a value (Q5_0, Q5_1, Q3_K, Q5_K, Q6_K), which `QMatMul` takes back in 5
/// or 6 bits ([`Q8Linear::blocks`]; `MatMulNBits` has no 3-, 5- or 6-bit path).
#[derive(Debug, Clone)]
pub struct Q8Linear {
    pub n: usize,
    pub k: usize,
    /// Inputs per block: 32, or 16 (Q3_K, Q6_K).
    pub block: usize,
    /// `[n, k/block, block]`: `q + 128` as unsigned bytes (MatMulNBits' default zero point is
    /// 128).
    pub packed: Vec<u8>,
    /// `[n, k/block]`: the block scales `d`.
    pub scales: Vec<f32>,
    /// `[n, k/32]`: per-block mins (Q5_1, Q5_K), added as `Σ_b m_b·S_b(x)` like Q4_1's
    /// correction.
    pub mins: Option<Vec<f32>>,
}

impl Q8Linear {
    pub fn from_q8_0(n: usize, k: usize, blocks: &[Q80]) -> Self {
        assert_eq!(k % BLOCK, 0, "k must be a multiple of {BLOCK}");
        assert_eq!(blocks.len(), n * k / BLOCK, "block count");
        Q8Linear {
            n,
            k,
            block: BLOCK,
            packed: blocks
                .iter()
                .flat_map(|b| b.q.iter().map(|&q| (q as i16 + 128) as u8))
                .collect(),
            scales: blocks.iter().map(|b| b.d).collect(),
            mins: None,
        }
    }

    /// The layer from a GGUF tensor's blocks in row order (`n` rows of `k` values).
    pub fn from_blocks(n: usize, k: usize, b: crate::gguf::quant::Blocks8) -> Self {
        assert_eq!(b.codes.len(), n * k, "value count");
        assert_eq!(b.d.len(), n * k / b.block, "block count");
        Q8Linear {
            n,
            k,
            block: b.block,
            packed: b.codes,
            scales: b.d,
            mins: b.m,
        }
    }

    /// The layer as [`QMatMul`](crate::onnx::qmatmul) reads 5-bit codes ([`Format::pack`]),
    /// where every block's values are 5-bit codes times its scale plus its min: codes in 0..31
    /// (Q5_1, Q5_K) as they are, codes in −16..15 of a block without a min (Q5_0) as `q + 16`
    /// with the min `−16·d`, exact. Scales and mins as f16 where every one is an f16. `None`
    /// for anything else (Q8_0, Q6_K, Q3_K's blocks of 16) or outputs not a multiple of
    /// [`GROUP`].
    fn blocks5(&self) -> Option<(Format, Vec<u8>)> {
        if !self.n.is_multiple_of(GROUP) {
            return None;
        }
        let blocks: Vec<(f32, f32, [u8; BLOCK])> = (0..self.scales.len())
            .map(|i| self.block5(i))
            .collect::<Option<_>>()?;
        let f16 = blocks.iter().all(|&(d, m, _)| is_f16(d) && is_f16(m));
        let format = Format::new(5, f16).expect("5-bit formats exist");
        let nb = self.k / BLOCK;
        Some((
            format,
            format.pack(self.n, self.k, |r, b| blocks[r * nb + b]),
        ))
    }

    /// The layer in the narrowest `QMatMul` format that holds it exactly: 5 bits
    /// ([`Q8Linear::blocks5`]), or 6 bits for blocks of 16 without mins whose codes are in
    /// −32..31 (Q6_K, Q3_K): codes `q + 32` with the two scales of each 32 inputs, `w =
    /// d·(q + 32 − 32)`. `None` for Q8_0 and outputs not a multiple of [`GROUP`].
    pub fn blocks(&self) -> Option<(Format, Vec<u8>)> {
        if !self.n.is_multiple_of(GROUP) {
            return None;
        }
        if let Some(five) = self.blocks5() {
            return Some(five);
        }
        if !self.fits6() {
            return None;
        }
        let format = Format::Q6F32;
        let nb = self.k / BLOCK;
        Some((
            format,
            format.pack(self.n, self.k, |r, b| {
                let i = r * nb + b;
                let codes = &self.packed[i * BLOCK..][..BLOCK];
                // `q + 128` stored, `q + 32` packed.
                let q = std::array::from_fn(|j| codes[j] - 96);
                (self.scales[2 * i], self.scales[2 * i + 1], q)
            }),
        ))
    }

    /// Whether [`Q8Linear::blocks`] takes every block, whatever the outputs: 5-bit codes, or
    /// 6-bit ones.
    pub fn fits_own(&self) -> bool {
        (0..self.scales.len()).all(|i| self.block5(i).is_some()) || self.fits6()
    }

    /// Blocks of 16 without mins, every code in −32..31.
    fn fits6(&self) -> bool {
        self.block == 16
            && self.mins.is_none()
            && self.packed.iter().all(|&c| (96..160).contains(&c))
    }

    /// Block `i` as `(d, m, 5-bit codes)` with the same values, if it has such a form.
    fn block5(&self, i: usize) -> Option<(f32, f32, [u8; BLOCK])> {
        if self.block != BLOCK {
            return None;
        }
        let codes = &self.packed[i * BLOCK..][..BLOCK];
        let d = self.scales[i];
        let m = self.mins.as_ref().map_or(0.0, |m| m[i]);
        let c: [i16; BLOCK] = std::array::from_fn(|j| i16::from(codes[j]) - 128);
        if c.iter().all(|c| (0..32).contains(c)) {
            Some((d, m, c.map(|c| c as u8)))
        } else if m == 0.0 && c.iter().all(|c| (-16..16).contains(c)) {
            Some((d, -16.0 * d, c.map(|c| (c + 16) as u8)))
        } else {
            None
        }
    }

    /// Stacks layers with the same input size and block into one (outputs concatenated); mins
    /// of a part without them are zero.
    pub fn concat(parts: &[Q8Linear]) -> Self {
        let (k, block) = (parts[0].k, parts[0].block);
        assert!(
            parts.iter().all(|p| p.k == k && p.block == block),
            "concat needs equal k and block"
        );
        let mins = parts.iter().any(|p| p.mins.is_some()).then(|| {
            parts
                .iter()
                .flat_map(|p| {
                    p.mins
                        .clone()
                        .unwrap_or_else(|| vec![0.0; p.n * p.k / BLOCK])
                })
                .collect()
        });
        Q8Linear {
            n: parts.iter().map(|p| p.n).sum(),
            k,
            block,
            packed: cat(parts, |p| &p.packed),
            scales: cat(parts, |p| &p.scales),
            mins,
        }
    }

    /// The mins transposed to `[k/32, n]`, ready to multiply the block sums.
    pub fn mins_t(&self) -> Option<Vec<f32>> {
        let m = self.mins.as_ref()?;
        let nb = self.k / BLOCK;
        let mut t = vec![0.0; nb * self.n];
        for row in 0..self.n {
            for b in 0..nb {
                t[b * self.n + row] = m[row * nb + b];
            }
        }
        Some(t)
    }

    /// The weight `W[row, col]` this layer computes with (for tests).
    pub fn weight(&self, row: usize, col: usize) -> f32 {
        let code = self.packed[row * self.k + col];
        let d = self.scales[(row * self.k + col) / self.block];
        let m = self
            .mins
            .as_ref()
            .map_or(0.0, |m| m[(row * self.k + col) / BLOCK]);
        d * (f32::from(code) - 128.0) + m
    }

    /// Quantizes `x·W` weights (`w` is `[k, n]` row-major, as trained) to 8 bits per block of
    /// 32 inputs, symmetric (the draft head's weights: its output is only a proposal, checked
    /// by the full model, so rounding them costs acceptance, never exactness).
    pub fn quantize(w: &[f32], k: usize, n: usize) -> Q8Linear {
        assert_eq!(k % BLOCK, 0, "k must be a multiple of {BLOCK}");
        assert_eq!(w.len(), k * n, "weight count");
        let mut packed = Vec::with_capacity(n * k);
        let mut scales = Vec::with_capacity(n * k / BLOCK);
        let mut block = [0f32; BLOCK];
        for out in 0..n {
            for b in 0..k / BLOCK {
                for (j, v) in block.iter_mut().enumerate() {
                    *v = w[(b * BLOCK + j) * n + out];
                }
                let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = if max > 0.0 { max / 127.0 } else { 1.0 };
                scales.push(d);
                packed.extend(
                    block
                        .iter()
                        .map(|v| ((v / d).round().clamp(-127.0, 127.0) as i16 + 128) as u8),
                );
            }
        }
        Q8Linear {
            n,
            k,
            block: BLOCK,
            packed,
            scales,
            mins: None,
        }
    }

    /// The weight restricted to output rows `rows`, in that order (the same bytes).
    pub fn select_rows(&self, rows: &[u32]) -> Q8Linear {
        let nb = self.k / self.block;
        let mut packed = Vec::with_capacity(rows.len() * self.k);
        let mut scales = Vec::with_capacity(rows.len() * nb);
        for &r in rows {
            let r = r as usize;
            packed.extend_from_slice(&self.packed[r * self.k..(r + 1) * self.k]);
            scales.extend_from_slice(&self.scales[r * nb..(r + 1) * nb]);
        }
        Q8Linear {
            n: rows.len(),
            k: self.k,
            block: self.block,
            packed,
            scales,
            mins: self.mins.as_ref().map(|m| {
                let nm = self.k / BLOCK;
                rows.iter()
                    .flat_map(|&r| m[r as usize * nm..(r as usize + 1) * nm].iter().copied())
                    .collect()
            }),
        }
    }

    /// The weights as f32, `[n, k]` row-major (exact: `d·q + m`).
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.n)
            .flat_map(|row| (0..self.k).map(move |col| (row, col)))
            .map(|(row, col)| self.weight(row, col))
            .collect()
    }
}

/// One field of every part, concatenated in order.
/// Whether `v` is a finite f16 value (so that f16 holds it exactly).
fn is_f16(v: f32) -> bool {
    v.is_finite() && half::f16::from_f32(v).to_f32().to_bits() == v.to_bits()
}

/// The parts' `field`s, concatenated.
fn cat<P, T: Copy>(parts: &[P], field: impl Fn(&P) -> &[T]) -> Vec<T> {
    parts
        .iter()
        .flat_map(|p| field(p).iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_weights_dequantize_within_half_a_step() {
        let (k, n) = (64, 3);
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let q = Q8Linear::quantize(&w, k, n);
        let back = q.dequantize();
        // `back` is `[n, k]`: row `o` holds the weights into output `o`.
        for o in 0..n {
            for i in 0..k {
                let d = q.scales[o * (k / BLOCK) + i / BLOCK];
                assert!((back[o * k + i] - w[i * n + o]).abs() <= d / 2.0 + 1e-6);
            }
        }
    }

    fn block(seed: u32) -> Q41 {
        let mut q = [0u8; BLOCK];
        for (j, v) in q.iter_mut().enumerate() {
            *v = ((seed as usize * 7 + j * 5) % 16) as u8;
        }
        Q41 {
            d: 0.01 * (seed as f32 + 1.0),
            m: -0.05 * seed as f32,
            q,
        }
    }

    #[test]
    fn repacked_weights_equal_the_gguf_function() {
        let (n, k) = (3, 64);
        let blocks: Vec<Q41> = (0..(n * k / BLOCK) as u32).map(block).collect();
        let lin = Q4Linear::from_q4_1(n, k, &blocks);
        for row in 0..n {
            for col in 0..k {
                let b = blocks[row * 2 + col / BLOCK];
                let expected = b.d * b.q[col % BLOCK] as f32 + b.m;
                assert!(
                    (lin.weight(row, col) - expected).abs() < 1e-6,
                    "{row},{col}"
                );
            }
        }
    }

    #[test]
    fn concat_stacks_rows_and_transposes_corrections() {
        let a = Q4Linear::from_q4_1(1, 64, &[block(1), block(2)]);
        let b = Q4Linear::from_q4_1(2, 64, &[block(3), block(4), block(5), block(6)]);
        let c = Q4Linear::concat(&[a.clone(), b.clone()]);
        assert_eq!((c.n, c.k), (3, 64));
        assert_eq!(c.weight(2, 40), b.weight(1, 40));
        let t = c.correction_t();
        assert_eq!(t[3 + 2], c.correction[2 * 2 + 1]);
    }

    #[test]
    fn q8_offsets_by_128() {
        let mut q = [0i8; BLOCK];
        q[0] = -128;
        q[1] = 127;
        let l = Q8Linear::from_q8_0(1, 32, &[Q80 { d: 0.5, q }]);
        assert_eq!(l.packed[0], 0);
        assert_eq!(l.packed[1], 255);
        assert_eq!(l.packed[2], 128);
    }

    #[test]
    fn q4_0_and_q4_k_rows_repack_to_their_gguf_values() {
        use crate::gguf::GgmlType;
        use crate::gguf::quant::dequantize;
        // Bytes with finite scales: every f16 field set to a small value.
        let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
        let (n, k) = (2, 256);
        let mut q40 = Vec::new();
        for i in 0..n * k / BLOCK {
            q40.extend(f16(0.01 * (i as f32 + 1.0)));
            q40.extend((0..16).map(|j| (i * 31 + j * 7) as u8));
        }
        let mut q4k = Vec::new();
        for i in 0..n {
            q4k.extend(f16(0.02 * (i as f32 + 1.0)));
            q4k.extend(f16(0.005));
            q4k.extend((0..12).map(|j| (j * 37 + i * 11) as u8));
            q4k.extend((0..128).map(|j| (j * 13 + i * 5) as u8));
        }
        for (ty, bytes, blocks) in [
            (
                GgmlType::Q4_0,
                &q40,
                crate::gguf::quant::q4_0_blocks(&q40).unwrap(),
            ),
            (
                GgmlType::Q4_K,
                &q4k,
                crate::gguf::kquant::q4_k_blocks(&q4k).unwrap(),
            ),
        ] {
            let want = dequantize(ty, bytes, n * k).unwrap();
            let lin = Q4Linear::from_q4_1(n, k, &blocks);
            for row in 0..n {
                for col in 0..k {
                    let (got, w) = (lin.weight(row, col), want[row * k + col]);
                    assert!(
                        (got - w).abs() <= 1e-6 * w.abs().max(1.0),
                        "{ty} {row},{col}"
                    );
                }
            }
        }
    }

    /// For Q8_0, Q5_0 and Q5_1 the decoder is written apart; the k-quants' decoder is this
    /// 8-bit form, checked against llama.cpp's in `tests/tests/gguf_quants.rs`.
    #[test]
    fn wider_types_widen_to_8_bits_and_5_bit_types_pack_in_5_without_changing_a_value() {
        use crate::gguf::GgmlType;
        use crate::gguf::quant::{blocks8, dequantize};
        use seam_kernels::qmatmul::{Kernel, MatMul, Quantized};
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut byte = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        for (ty, scale_at) in [
            (GgmlType::Q8_0, &[0usize][..]),
            (GgmlType::Q5_0, &[0]),
            (GgmlType::Q5_1, &[0, 2]),
            (GgmlType::Q3_K, &[108]),
            (GgmlType::Q5_K, &[0, 2]),
            (GgmlType::Q6_K, &[208]),
        ] {
            let (elems, bytes) = ty.block_layout().unwrap();
            let (n, k) = (GROUP, 256);
            let blocks = n * k / elems;
            let mut data: Vec<u8> = (0..blocks * bytes).map(|_| byte()).collect();
            for (i, b) in data.chunks_exact_mut(bytes).enumerate() {
                for &at in scale_at {
                    let v = half::f16::from_f32(
                        0.01 * (i as f32 + 1.0) * if at == 0 { 1.0 } else { -0.5 },
                    );
                    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
            let want = dequantize(ty, &data, n * k).unwrap();
            let lin = Q8Linear::from_blocks(n, k, blocks8(ty, &data).unwrap().unwrap());
            for (i, w) in want.iter().enumerate() {
                assert_eq!(lin.weight(i / k, i % k), *w, "{ty} value {i}");
            }
            assert!(want.iter().any(|w| *w != 0.0));
            // The 5-bit types also pack for QMatMul, Q3_K and Q6_K in 6 bits; its product with
            // each one-hot input is that input's column of weights (up to the rounding of d·dx
            // and m·sx).
            let bits = match ty {
                GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => Some(5),
                GgmlType::Q3_K | GgmlType::Q6_K => Some(6),
                _ => None,
            };
            let Some((format, packed)) = lin.blocks() else {
                assert_eq!(bits, None, "{ty} packs for QMatMul");
                continue;
            };
            assert_eq!(Some(format.bits()), bits, "{ty}");
            let mut x = Quantized::default();
            for col in 0..k {
                let mut one_hot = vec![0.0; k];
                one_hot[col] = 1.0;
                x.quantize(&one_hot, k);
                let mut y = vec![0.0; n];
                MatMul::new(format, &packed, n, &x, &mut y)
                    .on(Kernel::Portable)
                    .run_all();
                for (row, &got) in y.iter().enumerate() {
                    let w = want[row * k + col];
                    assert!(
                        (got - w).abs() <= 1e-5 * (w.abs() + 0.01),
                        "{ty} [{row},{col}]: {got} vs {w}"
                    );
                }
            }
        }
        assert!(blocks8(GgmlType::Q4_1, &[0; 20]).unwrap().is_none());
        assert!(blocks8(GgmlType::Q6_K, &[0; 209]).is_err());
    }

    #[test]
    fn fusing_stacks_runs_of_one_kind() {
        let q4 = |n| Linear::Q4(Q4Linear::from_q4_1(n, 64, &vec![block(1); n * 2]));
        // Codes 2 (5-bit) or 100 (8-bit), as `q + 128`.
        let q8c = |n, block, code: u8| {
            Linear::Q8(Q8Linear {
                n,
                k: 64,
                block,
                packed: vec![128 + code; n * 64],
                scales: vec![1.0; n * 64 / block],
                mins: None,
            })
        };
        let q8 = |n, block| q8c(n, block, 2);
        let f32 = |n| {
            Linear::F32(F32Linear {
                n,
                k: 64,
                w: (0..n * 64).map(|i| i as f32).collect(),
            })
        };
        let f = Linear::fuse(vec![
            q4(2),
            q4(1),
            q8(1, 32),
            q8(2, 32),
            q8c(1, 32, 100),
            q8c(1, 32, 100),
            q8(1, 16),
            q4(1),
            f32(1),
            f32(2),
        ]);
        let kind = |l: &Linear| match l {
            Linear::Q4(_) => "q4",
            Linear::Q8(_) => "q8",
            Linear::F32(_) => "f32",
        };
        let shape: Vec<(&str, usize)> = f.iter().map(|l| (kind(l), l.n())).collect();
        assert_eq!(
            shape,
            [
                ("q4", 3),
                ("q8", 3),
                ("q8", 2),
                ("q8", 1),
                ("q4", 1),
                ("f32", 3)
            ]
        );
        // 5-bit codes stay apart from 8-bit ones, which would widen them; small codes in blocks
        // of 16 take 6 bits.
        let own = |l: &Linear| matches!(l, Linear::Q8(w) if w.fits_own());
        assert_eq!(
            f.iter().map(own).collect::<Vec<_>>(),
            [false, true, false, true, false, false]
        );
        // Rows stacked in order; the transpose puts row r's value at column r.
        let Linear::F32(w) = &f[5] else {
            unreachable!()
        };
        assert_eq!(w.w[64], 0.0);
        assert_eq!(w.transposed()[1], 0.0);
        assert_eq!(w.transposed()[3 * 5 + 2], 64.0 + 5.0);
    }
}
