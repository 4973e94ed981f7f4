//! The kernel in plain Rust: the definition the AVX2 kernel must equal bit for bit.

use super::{BLOCK, CODES, GROUP, Tile};

pub(super) fn tile<const RX: usize>(t: &Tile<'_, RX>) -> [[f32; GROUP]; RX] {
    let bytes = t.format.block_bytes();
    let at = t.format.codes_at();
    let mut acc = [[0.0f32; GROUP]; RX];
    let mut off = [[0.0f32; GROUP]; RX];
    for (b, block) in t.w.chunks_exact(bytes).enumerate() {
        let (d, m) = t.format.params(block);
        let codes = &block[at..at + CODES];
        let fifth = (t.format.bits() == 5).then(|| &block[at + CODES..]);
        // q[c][i]: input i of column c (see `Format`).
        let mut q = [[0u8; BLOCK]; GROUP];
        for (tv, vector) in codes.chunks_exact(32).enumerate() {
            for (j, &byte) in vector.iter().enumerate() {
                let (c, e) = (j / 4, j % 4);
                let high = fifth.map_or(0, |h| h[j] >> (2 * tv));
                q[c][4 * tv + e] = (byte & 0x0f) | ((high & 1) << 4);
                q[c][16 + 4 * tv + e] = (byte >> 4) | (((high >> 1) & 1) << 4);
            }
        }
        for r in 0..RX {
            let qx = &t.x[r].q[b * BLOCK..][..BLOCK];
            let [dx, sx] = t.x[r].ds[b];
            for c in 0..GROUP {
                let dot: i32 = q[c]
                    .iter()
                    .zip(qx)
                    .map(|(&w, &x)| i32::from(w) * i32::from(x))
                    .sum();
                acc[r][c] = (dot as f32).mul_add(d[c] * dx, acc[r][c]);
                off[r][c] = m[c].mul_add(sx, off[r][c]);
            }
        }
    }
    std::array::from_fn(|r| std::array::from_fn(|c| acc[r][c] + off[r][c]))
}
