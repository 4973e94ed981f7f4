//! Causal grouped-query attention over the [`KvCache`]: the inputs checked here, the arithmetic
//! in [`seam_kernels::attention`] (int8 rows read in place, never dequantized into a buffer).

use super::kv_cache::{KvCache, KvError};
use crate::onnx::OrtPool;
use seam_kernels::attention::{MAX_HEAD_DIM, Shape, attend};

/// Computes causal attention for `S` query rows at positions `pos_start..pos_start + S`.
///
/// `q` and `out` are `[S, n_heads * head_dim]`, `q` already rotated. The K/V of those positions
/// must already be written to `cache` for `layer` (commit is not required). Row `s` attends to
/// positions `0..=pos_start + s`, or with a sliding `window` to the last `window` of them (its
/// own included); query head `h` reads kv head `h / (n_heads / n_kv_heads)`.
/// With `threads > 1` and enough work, ONNX Runtime's pool threads ([`OrtPool`]) run the pass in
/// parts: rows in chunks of equal causal cost, or a single row over a long cache by kv head.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    cache: &KvCache,
    layer: usize,
    pos_start: usize,
    n_heads: usize,
    out: &mut [f32],
    threads: usize,
    window: Option<usize>,
) -> Result<(), KvError> {
    let geom = cache.geometry();
    let (hd, nkv) = (geom.head_dim, geom.n_kv_heads);
    if nkv == 0 || n_heads == 0 || !n_heads.is_multiple_of(nkv) {
        return Err(KvError::BadHeadGrouping {
            n_heads,
            n_kv_heads: nkv,
        });
    }
    if hd > MAX_HEAD_DIM {
        return Err(KvError::HeadDimTooLarge {
            head_dim: hd,
            max: MAX_HEAD_DIM,
        });
    }
    let width = n_heads * hd;
    if width == 0 || !q.len().is_multiple_of(width) {
        return Err(KvError::NotRowMultiple {
            what: "q",
            len: q.len(),
            width,
        });
    }
    if out.len() != q.len() {
        return Err(KvError::LengthMismatch {
            what: "out",
            expected: q.len(),
            got: out.len(),
        });
    }
    let rows = q.len() / width;
    if rows == 0 {
        return Ok(());
    }
    let view = cache.layer_view(layer, pos_start + rows)?;
    let shape = Shape {
        n_heads,
        nkv,
        hd,
        group: n_heads / nkv,
        inv_sqrt: 1.0 / (hd as f32).sqrt(),
    };
    if window == Some(0) {
        return Err(KvError::EmptyWindow);
    }
    attend(&view, &shape, q, out, pos_start, window, threads, &OrtPool);
    Ok(())
}

#[cfg(test)]
mod tests;
