//! Seam's hot numeric loops, in a crate of their own so that they are built optimised in every
//! profile: at `-O1` (the workspace's test builds) LLVM does not vectorize them, and the tests'
//! model runs would spend half their time here.
//!
//! The callers validate shapes and lengths; these functions assume them (and panic on slices
//! too short, never read out of bounds).

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod codes;
pub mod kv;
pub mod norm;
pub mod qmatmul;

/// Elements per int8 quantization group of a cached row (one scale each).
pub const GROUP: usize = 32;

/// Borrowed view of the first positions of one layer of a KV cache, as attention reads it.
///
/// `k`/`v` are `[pos][kv_head][head_dim]`; scales are `[pos][kv_head][head_dim / GROUP]`.
#[derive(Debug, Clone, Copy)]
pub enum LayerView<'a> {
    /// int8 values; element `i` of a row reconstructs as `x_i as f32 * scale_f32(scale[i / GROUP])`.
    Int8 {
        k: &'a [i8],
        v: &'a [i8],
        k_scales: &'a [u16],
        v_scales: &'a [u16],
    },
    /// f32 values.
    F32 { k: &'a [f32], v: &'a [f32] },
}

/// Widens a scale stored by the cache (the bits of a finite, non-negative f16) to f32.
///
/// Branch-free so it vectorizes in the attention loops: the f16 exponent and mantissa are placed
/// in an f32 and rebased by `2^(127 - 15)`, which is exact for zero, subnormal and normal halves.
/// Agrees with `f16::from_bits(bits).to_f32()` on every such value.
#[inline(always)]
pub fn scale_f32(bits: u16) -> f32 {
    const REBASE: f32 = f32::from_bits((112 + 127) << 23); // 2^112
    f32::from_bits(u32::from(bits & 0x7fff) << 13) * REBASE
}
