//! Pre-allocated key/value cache for one decoding session.
//!
//! At rest the cache is int8: each (position, kv-head) row of `head_dim` values is split into
//! groups of [`GROUP`] consecutive elements, each with its own scale stored as the bits of an IEEE
//! half (`u16`). For `head_dim = 64` that is 64 + 2 * 2 = 68 bytes per row, against 256 in f32. An
//! f32 mode with the same layout exists for comparison. Storage is laid out
//! `[layer][k|v][pos][kv_head][head_dim]` (scales `[layer][k|v][pos][kv_head][head_dim / GROUP]`)
//! and allocated once for a fixed capacity: writing, committing, rolling back and copying a prefix
//! never reallocate.
//!
//! Quantization of one group `x`: `s = f16(max|x| / 127)` (clamped to `f16::MAX`), then
//! `q = round(x / s)` clamped to `[-127, 127]`, using the rounded `s` so the reconstruction
//! `q * s` is within `s / 2` of `x` (plus at most `127 * 2^-25` where `s` is an f16 subnormal). A
//! group whose rounded scale is zero is stored as zeros ([`seam_kernels::kv`]). Grouping keeps one
//! outlier channel from coarsening the other half of the row.
//!
//! Bookkeeping: `len` is the committed length (positions every layer holds). Each layer also has a
//! `written` mark (`len <= written[l] <= capacity`): positions written for that layer but not yet
//! committed, which attention may read before [`KvCache::commit`].

use std::fmt;
use std::str::FromStr;

use half::f16;

/// Elements per int8 quantization group (int8 caches need `head_dim % GROUP == 0`), the view
/// attention reads, and the scale widening it uses: shared with the kernels.
pub use seam_kernels::{GROUP, LayerView, scale_f32};

/// Element type of the cache at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// int8 values with one f16 scale per [`GROUP`] elements of a (position, kv-head) row.
    Int8,
    /// Plain f32 values (reference mode).
    F32,
}

impl KvDtype {
    /// The name used on the command line and in manifests: `"int8"` or `"f32"`.
    pub fn as_str(self) -> &'static str {
        match self {
            KvDtype::Int8 => "int8",
            KvDtype::F32 => "f32",
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KvDtype {
    type Err = KvError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "int8" => Ok(KvDtype::Int8),
            "f32" => Ok(KvDtype::F32),
            other => Err(KvError::UnknownDtype(other.to_owned())),
        }
    }
}

/// Shape of the cache: identical for every position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvGeometry {
    /// Number of decoder layers held in this cache.
    pub n_layers: usize,
    /// Number of key/value heads (GQA groups).
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
}

impl KvGeometry {
    /// Elements of one position of K (or V) in one layer: `n_kv_heads * head_dim`.
    pub fn row_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Errors from the KV cache, RoPE and attention.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KvError {
    /// A dtype name other than `int8` or `f32`.
    #[error("unknown kv dtype {0:?} (expected \"int8\" or \"f32\")")]
    UnknownDtype(String),
    /// Layer index beyond the geometry.
    #[error("layer {layer} out of range (cache has {n_layers} layers)")]
    LayerOutOfRange { layer: usize, n_layers: usize },
    /// KV head index beyond the geometry.
    #[error("kv head {head} out of range (cache has {n_kv_heads} kv heads)")]
    HeadOutOfRange { head: usize, n_kv_heads: usize },
    /// Positions `pos..pos + rows` do not fit in the capacity.
    #[error("positions {pos}..{} exceed kv cache capacity {capacity}", pos + rows)]
    OutOfCapacity {
        pos: usize,
        rows: usize,
        capacity: usize,
    },
    /// A write that would leave unwritten positions before it.
    #[error("write at position {pos} would leave a gap after the {len} positions written")]
    WriteGap { pos: usize, len: usize },
    /// A buffer whose length is not a whole number of rows.
    #[error("{what} has {len} elements, not a multiple of the row width {width}")]
    NotRowMultiple {
        what: &'static str,
        len: usize,
        width: usize,
    },
    /// A buffer whose length differs from the one required.
    #[error("{what} has {got} elements, expected {expected}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// NaN or infinity in data to be cached.
    #[error("{what} contains a non-finite value at index {index}")]
    NonFinite { what: &'static str, index: usize },
    /// Reading or committing positions a layer has not been written for.
    #[error("layer {layer} holds {written} positions, {needed} needed")]
    NotWritten {
        layer: usize,
        needed: usize,
        written: usize,
    },
    /// Truncating to a length above the current one.
    #[error("cannot truncate kv cache of length {len} to {requested}")]
    TruncateBeyondLength { requested: usize, len: usize },
    /// Removing positions the cache does not hold.
    #[error("cannot remove positions {start}..{end} from a kv cache of length {len}")]
    RemoveBeyondLength {
        start: usize,
        end: usize,
        len: usize,
    },
    /// Copying more positions than the source holds.
    #[error("prefix of {n} positions requested, source holds {available}")]
    PrefixTooLong { n: usize, available: usize },
    /// Copying between caches of different geometry or dtype.
    #[error("incompatible kv caches: {0}")]
    Incompatible(String),
    /// Query heads that are not a positive multiple of the kv heads.
    #[error("{n_heads} query heads cannot be grouped over {n_kv_heads} kv heads")]
    BadHeadGrouping { n_heads: usize, n_kv_heads: usize },
    /// An int8 cache whose head dimension is not a whole number of quantization groups.
    #[error("head_dim {head_dim} is not a multiple of the int8 kv group size {group}")]
    HeadDimNotGrouped { head_dim: usize, group: usize },
    /// A head dimension above what the attention kernels handle.
    #[error("head_dim {head_dim} is above the largest supported ({max})")]
    HeadDimTooLarge { head_dim: usize, max: usize },
    /// A sliding window that lets a position see nothing.
    #[error("an attention window of 0 positions")]
    EmptyWindow,
    /// Invalid RoPE configuration.
    #[error("invalid rope configuration: {0}")]
    BadRope(&'static str),
}

enum Storage {
    /// `scales` holds f16 bits, `[row][kv_head][group]`.
    Int8 {
        data: Vec<i8>,
        scales: Vec<u16>,
    },
    F32 {
        data: Vec<f32>,
    },
}

/// KV cache for one sequence, allocated once for `capacity` positions.
pub struct KvCache {
    geom: KvGeometry,
    dtype: KvDtype,
    capacity: usize,
    len: usize,
    written: Vec<usize>,
    storage: Storage,
}

impl fmt::Debug for KvCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvCache")
            .field("geometry", &self.geom)
            .field("dtype", &self.dtype)
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl KvCache {
    /// Allocates a zeroed cache for `capacity` positions. Memory is `capacity * bytes_per_token()`.
    ///
    /// An int8 cache needs `head_dim % GROUP == 0`; otherwise every [`KvCache::write`] and
    /// [`KvCache::layer_view`] fails with [`KvError::HeadDimNotGrouped`]. Use [`KvCache::try_new`]
    /// to get that error up front.
    pub fn new(geom: KvGeometry, dtype: KvDtype, capacity: usize) -> KvCache {
        let rows = geom.n_layers * 2 * capacity;
        let storage = match dtype {
            KvDtype::Int8 => Storage::Int8 {
                data: vec![0; rows * geom.row_width()],
                scales: vec![0; rows * geom.n_kv_heads * groups(geom.head_dim)],
            },
            KvDtype::F32 => Storage::F32 {
                data: vec![0.0; rows * geom.row_width()],
            },
        };
        KvCache {
            geom,
            dtype,
            capacity,
            len: 0,
            written: vec![0; geom.n_layers],
            storage,
        }
    }

    /// [`KvCache::new`], failing for an int8 cache whose `head_dim` is not a multiple of
    /// [`GROUP`].
    pub fn try_new(geom: KvGeometry, dtype: KvDtype, capacity: usize) -> Result<KvCache, KvError> {
        check_grouping(geom, dtype)?;
        Ok(KvCache::new(geom, dtype, capacity))
    }

    /// Committed length: positions held by every layer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is committed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fixed number of positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Element type at rest.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Shape of the cache.
    pub fn geometry(&self) -> KvGeometry {
        self.geom
    }

    /// Positions written for `layer` (committed or not), or 0 for an unknown layer.
    pub fn written(&self, layer: usize) -> usize {
        self.written.get(layer).copied().unwrap_or(0)
    }

    /// Storage bytes for one position across all layers, K and V, scales included.
    pub fn bytes_per_token(&self) -> usize {
        let per_head = match self.dtype {
            KvDtype::Int8 => self.geom.head_dim + groups(self.geom.head_dim) * size_of::<u16>(),
            KvDtype::F32 => self.geom.head_dim * size_of::<f32>(),
        };
        self.geom.n_layers * 2 * self.geom.n_kv_heads * per_head
    }

    /// Bytes held by the pre-allocated storage (`capacity * bytes_per_token()`).
    pub fn allocated_bytes(&self) -> usize {
        self.capacity * self.bytes_per_token()
    }

    /// Writes K and V (`[S, n_kv_heads * head_dim]` each) of `layer` for positions `pos..pos+S`.
    ///
    /// Requires `pos <= len()` and `pos + S <= capacity()`; all values must be finite. Nothing
    /// is modified on error. Uncommitted positions of this layer after `pos + S` are forgotten.
    pub fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<(), KvError> {
        self.check_layer(layer)?;
        check_grouping(self.geom, self.dtype)?;
        let width = self.geom.row_width();
        if width == 0 || !k.len().is_multiple_of(width) {
            return Err(KvError::NotRowMultiple {
                what: "k",
                len: k.len(),
                width,
            });
        }
        if v.len() != k.len() {
            return Err(KvError::LengthMismatch {
                what: "v",
                expected: k.len(),
                got: v.len(),
            });
        }
        let rows = k.len() / width;
        // Rows may follow what this layer holds, committed or not (a draft tree's rows follow
        // the uncommitted row of the token they hang from).
        let written = self.written[layer];
        if pos > written {
            return Err(KvError::WriteGap { pos, len: written });
        }
        if pos + rows > self.capacity {
            return Err(KvError::OutOfCapacity {
                pos,
                rows,
                capacity: self.capacity,
            });
        }
        check_finite("k", k)?;
        check_finite("v", v)?;
        if rows == 0 {
            return Ok(());
        }
        let sw = self.scale_width();
        for (kv, src) in [k, v].into_iter().enumerate() {
            let row0 = self.block(layer, kv) + pos;
            match &mut self.storage {
                Storage::F32 { data } => {
                    data[row0 * width..][..src.len()].copy_from_slice(src);
                }
                Storage::Int8 { data, scales } => seam_kernels::kv::quantize(
                    src,
                    &mut data[row0 * width..][..src.len()],
                    &mut scales[row0 * sw..][..rows * sw],
                ),
            }
        }
        self.written[layer] = (pos + rows).max(self.len);
        Ok(())
    }

    /// Sets the committed length once every layer holds positions `0..new_len`.
    ///
    /// Fails if `new_len > capacity()` or some layer has not been written that far. A smaller
    /// `new_len` than `len()` acts as [`KvCache::truncate`].
    pub fn commit(&mut self, new_len: usize) -> Result<(), KvError> {
        if new_len > self.capacity {
            return Err(KvError::OutOfCapacity {
                pos: 0,
                rows: new_len,
                capacity: self.capacity,
            });
        }
        if new_len < self.len {
            return self.truncate(new_len);
        }
        if let Some((layer, &written)) =
            self.written.iter().enumerate().find(|(_, w)| **w < new_len)
        {
            return Err(KvError::NotWritten {
                layer,
                needed: new_len,
                written,
            });
        }
        self.len = new_len;
        Ok(())
    }

    /// Rolls back to `len` positions (O(layers), no data is touched). Fails if `len > len()`.
    pub fn truncate(&mut self, len: usize) -> Result<(), KvError> {
        if len > self.len {
            return Err(KvError::TruncateBeyondLength {
                requested: len,
                len: self.len,
            });
        }
        self.len = len;
        self.written.iter_mut().for_each(|w| *w = len);
        Ok(())
    }

    /// Drops committed positions `start..start + n` of every layer and moves the later ones
    /// down in their place (a sliding window). Their K rows keep the rotation of the positions
    /// they were computed at, so attention over them keeps its relative distances. Uncommitted
    /// rows are forgotten.
    pub fn remove(&mut self, start: usize, n: usize) -> Result<(), KvError> {
        let end = start.saturating_add(n);
        if end > self.len {
            return Err(KvError::RemoveBeyondLength {
                start,
                end,
                len: self.len,
            });
        }
        let (width, sw, tail) = (self.geom.row_width(), self.scale_width(), self.len - end);
        for layer in 0..self.geom.n_layers {
            for kv in 0..2 {
                let row0 = self.block(layer, kv);
                let (from, to) = (row0 + end, row0 + start);
                match &mut self.storage {
                    Storage::F32 { data } => {
                        data.copy_within(from * width..(from + tail) * width, to * width);
                    }
                    Storage::Int8 { data, scales } => {
                        data.copy_within(from * width..(from + tail) * width, to * width);
                        scales.copy_within(from * sw..(from + tail) * sw, to * sw);
                    }
                }
            }
        }
        self.len -= n;
        self.written.iter_mut().for_each(|w| *w = self.len);
        Ok(())
    }

    /// Replaces this cache's contents with the first `n` positions of `other` (all layers).
    ///
    /// Geometry and dtype must match; `n <= other.len()` and `n <= self.capacity()`. Afterwards
    /// `self.len() == n`.
    pub fn copy_prefix_from(&mut self, other: &KvCache, n: usize) -> Result<(), KvError> {
        if self.geom != other.geom || self.dtype != other.dtype {
            return Err(KvError::Incompatible(format!(
                "{:?}/{} vs {:?}/{}",
                self.geom, self.dtype, other.geom, other.dtype
            )));
        }
        if n > other.len {
            return Err(KvError::PrefixTooLong {
                n,
                available: other.len,
            });
        }
        if n > self.capacity {
            return Err(KvError::OutOfCapacity {
                pos: 0,
                rows: n,
                capacity: self.capacity,
            });
        }
        let (width, sw) = (self.geom.row_width(), self.scale_width());
        for layer in 0..self.geom.n_layers {
            for kv in 0..2 {
                let (dst0, src0) = (self.block(layer, kv), other.block(layer, kv));
                match (&mut self.storage, &other.storage) {
                    (Storage::F32 { data: d }, Storage::F32 { data: s }) => {
                        d[dst0 * width..][..n * width]
                            .copy_from_slice(&s[src0 * width..][..n * width]);
                    }
                    (
                        Storage::Int8 {
                            data: d,
                            scales: ds,
                        },
                        Storage::Int8 {
                            data: s,
                            scales: ss,
                        },
                    ) => {
                        d[dst0 * width..][..n * width]
                            .copy_from_slice(&s[src0 * width..][..n * width]);
                        ds[dst0 * sw..][..n * sw].copy_from_slice(&ss[src0 * sw..][..n * sw]);
                    }
                    _ => unreachable!("dtype equality checked above"),
                }
            }
        }
        self.len = n;
        self.written.iter_mut().for_each(|w| *w = n);
        Ok(())
    }

    /// Borrows positions `0..n_pos` of `layer`; they must have been written (not necessarily
    /// committed).
    pub fn layer_view(&self, layer: usize, n_pos: usize) -> Result<LayerView<'_>, KvError> {
        self.check_layer(layer)?;
        check_grouping(self.geom, self.dtype)?;
        if n_pos > self.written[layer] {
            return Err(KvError::NotWritten {
                layer,
                needed: n_pos,
                written: self.written[layer],
            });
        }
        let (width, sw) = (self.geom.row_width(), self.scale_width());
        let (kb, vb) = (self.block(layer, 0), self.block(layer, 1));
        Ok(match &self.storage {
            Storage::F32 { data } => LayerView::F32 {
                k: &data[kb * width..][..n_pos * width],
                v: &data[vb * width..][..n_pos * width],
            },
            Storage::Int8 { data, scales } => LayerView::Int8 {
                k: &data[kb * width..][..n_pos * width],
                v: &data[vb * width..][..n_pos * width],
                k_scales: &scales[kb * sw..][..n_pos * sw],
                v_scales: &scales[vb * sw..][..n_pos * sw],
            },
        })
    }

    /// Reconstructed f32 key of (`layer`, `pos`, `head`); `pos` must have been written.
    pub fn read_k_row(&self, layer: usize, pos: usize, head: usize) -> Result<Vec<f32>, KvError> {
        self.read_row(layer, 0, pos, head)
    }

    /// Reconstructed f32 value of (`layer`, `pos`, `head`); `pos` must have been written.
    pub fn read_v_row(&self, layer: usize, pos: usize, head: usize) -> Result<Vec<f32>, KvError> {
        self.read_row(layer, 1, pos, head)
    }

    fn read_row(
        &self,
        layer: usize,
        kv: usize,
        pos: usize,
        head: usize,
    ) -> Result<Vec<f32>, KvError> {
        self.check_layer(layer)?;
        let (hd, nkv) = (self.geom.head_dim, self.geom.n_kv_heads);
        if head >= nkv {
            return Err(KvError::HeadOutOfRange {
                head,
                n_kv_heads: nkv,
            });
        }
        if pos >= self.written[layer] {
            return Err(KvError::NotWritten {
                layer,
                needed: pos + 1,
                written: self.written[layer],
            });
        }
        let idx = (self.block(layer, kv) + pos) * nkv + head;
        Ok(match &self.storage {
            Storage::F32 { data } => data[idx * hd..][..hd].to_vec(),
            Storage::Int8 { data, scales } => {
                let sc = &scales[idx * groups(hd)..][..groups(hd)];
                data[idx * hd..][..hd]
                    .chunks(GROUP)
                    .zip(sc)
                    .flat_map(|(q, &s)| {
                        let s = f16::from_bits(s).to_f32();
                        q.iter().map(move |&x| f32::from(x) * s)
                    })
                    .collect()
            }
        })
    }

    /// Scales per position of one layer's K (or V): `n_kv_heads * head_dim / GROUP`.
    fn scale_width(&self) -> usize {
        self.geom.n_kv_heads * groups(self.geom.head_dim)
    }

    /// First row (in positions) of the `[layer][kv]` block.
    fn block(&self, layer: usize, kv: usize) -> usize {
        (layer * 2 + kv) * self.capacity
    }

    fn check_layer(&self, layer: usize) -> Result<(), KvError> {
        if layer < self.geom.n_layers {
            Ok(())
        } else {
            Err(KvError::LayerOutOfRange {
                layer,
                n_layers: self.geom.n_layers,
            })
        }
    }
}

fn check_finite(what: &'static str, x: &[f32]) -> Result<(), KvError> {
    // A pass without early exits vectorizes (a prefill checks every layer's keys and values).
    if x.chunks(256)
        .all(|c| c.iter().fold(true, |all, v| all & v.is_finite()))
    {
        return Ok(());
    }
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(KvError::NonFinite { what, index }),
        None => Ok(()),
    }
}

/// Quantization groups per row of `head_dim` (rounded up; int8 caches require an exact fit).
fn groups(head_dim: usize) -> usize {
    head_dim.div_ceil(GROUP)
}

fn check_grouping(geom: KvGeometry, dtype: KvDtype) -> Result<(), KvError> {
    if dtype == KvDtype::Int8 && !geom.head_dim.is_multiple_of(GROUP) {
        return Err(KvError::HeadDimNotGrouped {
            head_dim: geom.head_dim,
            group: GROUP,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
