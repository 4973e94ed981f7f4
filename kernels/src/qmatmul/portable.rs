//! The kernel in plain Rust: the definition the AVX2 kernel must equal bit for bit.

use super::{BLOCK, CODES, GROUP, Tile};

pub(super) fn tile<const RX: usize>(t: &Tile<'_, RX>) -> [[f32; GROUP]; RX] {
    let bytes = t.format.block_bytes();
    let at = t.format.codes_at();
    let six = t.format.bits() == 6;
    let mut acc = [[0.0f32; GROUP]; RX];
    let mut off = [[0.0f32; GROUP]; RX];
    for (b, block) in t.w.chunks_exact(bytes).enumerate() {
        let (d, m) = t.format.params(block);
        let codes = &block[at..at + CODES];
        let extra = &block[at + CODES..];
        // q[c][i]: input i of column c (see `Format`).
        let mut q = [[0u8; BLOCK]; GROUP];
        for (tv, vector) in codes.chunks_exact(32).enumerate() {
            for (j, &byte) in vector.iter().enumerate() {
                let (c, e) = (j / 4, j % 4);
                let (lo, hi) = match t.format.bits() {
                    5 => {
                        let h = extra[j] >> (2 * tv);
                        ((h & 1) << 4, ((h >> 1) & 1) << 4)
                    }
                    6 => (
                        ((extra[j] >> (2 * tv)) & 3) << 4,
                        ((extra[32 + j] >> (2 * tv)) & 3) << 4,
                    ),
                    _ => (0, 0),
                };
                q[c][4 * tv + e] = (byte & 0x0f) | lo;
                q[c][16 + 4 * tv + e] = (byte >> 4) | hi;
            }
        }
        for r in 0..RX {
            let qx = &t.x[r].q[b * BLOCK..][..BLOCK];
            let [dx, sx] = t.x[r].ds[b];
            let dot = |c: usize, inputs: std::ops::Range<usize>| -> i32 {
                q[c][inputs.clone()]
                    .iter()
                    .zip(&qx[inputs])
                    .map(|(&w, &x)| i32::from(w) * i32::from(x))
                    .sum()
            };
            for c in 0..GROUP {
                if six {
                    // Each half with its own scale, the codes' offset taken off exactly.
                    let [first, second] = t.x[r].halves[b];
                    let lo = first + dot(c, 0..BLOCK / 2);
                    let hi = second + dot(c, BLOCK / 2..BLOCK);
                    acc[r][c] = (lo as f32).mul_add(d[c] * dx, acc[r][c]);
                    acc[r][c] = (hi as f32).mul_add(m[c] * dx, acc[r][c]);
                } else {
                    acc[r][c] = (dot(c, 0..BLOCK) as f32).mul_add(d[c] * dx, acc[r][c]);
                    off[r][c] = m[c].mul_add(sx, off[r][c]);
                }
            }
        }
    }
    if six {
        return acc;
    }
    std::array::from_fn(|r| std::array::from_fn(|c| acc[r][c] + off[r][c]))
}
