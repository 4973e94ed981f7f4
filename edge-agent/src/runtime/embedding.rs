//! The token embedding table of a package: rows decoded on the device, one per token.
//!
//! Either the GGUF's own table (any type whose blocks tile a row), or, for a tied LM head kept
//! in 8 bits, the head's table itself (see [`Weights::embedding_head_block`]): one copy of the
//! vocabulary's rows serves both the head graph and the lookup.

use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use seam_shared::package::{Manifest, Weights, head_table_layout};
use std::ops::Range;
use std::path::Path;

/// A loaded embedding table.
#[derive(Debug)]
pub struct Embedding {
    bytes: Vec<u8>,
    layout: Layout,
    d: usize,
    vocab: usize,
}

#[derive(Debug)]
enum Layout {
    /// GGUF blocks, `row` bytes per token.
    Gguf { ty: GgmlType, row: usize },
    /// A shared 8-bit head table: quants `q + 128`, then f32 scales per `block` elements.
    Head {
        block: usize,
        quants: Range<usize>,
        scales: Range<usize>,
    },
}

impl Embedding {
    /// Reads and checks the embedding file of `manifest` at `path`.
    pub fn load(path: &Path, manifest: &Manifest) -> Result<Embedding> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let a = &manifest.architecture;
        let (d, vocab) = (a.n_embd as usize, a.vocab_size as usize);
        let layout = layout(&manifest.weights, d, vocab)?;
        let expected = match &layout {
            Layout::Gguf { row, .. } => vocab * row,
            Layout::Head { scales, .. } => scales.end,
        };
        if bytes.len() != expected {
            return Err(Error::Package(format!(
                "{} has {} bytes, expected {expected} for a {} table of {vocab}×{d}",
                manifest.embedding,
                bytes.len(),
                manifest.weights.embedding
            )));
        }
        Ok(Embedding {
            bytes,
            layout,
            d,
            vocab,
        })
    }

    /// Appends the row of `token` to `out`.
    pub fn row(&self, token: u32, out: &mut Vec<f32>) -> Result<()> {
        let t = token as usize;
        if t >= self.vocab {
            return Err(Error::InvalidArgument(format!(
                "token id {t} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        let d = self.d;
        match &self.layout {
            Layout::Gguf { ty, row } => {
                let bytes = &self.bytes[t * row..][..*row];
                out.extend(crate::gguf::quant::dequantize(*ty, bytes, d)?);
            }
            Layout::Head {
                block,
                quants,
                scales,
            } => {
                let q = &self.bytes[quants.start + t * d..][..d];
                let per_row = d / block;
                let s = &self.bytes[scales.start + t * per_row * 4..][..per_row * 4];
                for (qb, sb) in q.chunks_exact(*block).zip(s.chunks_exact(4)) {
                    let scale = f32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
                    out.extend(qb.iter().map(|&v| (i32::from(v) - 128) as f32 * scale));
                }
            }
        }
        Ok(())
    }
}

fn layout(w: &Weights, d: usize, vocab: usize) -> Result<Layout> {
    // The block is 16 or 32 and divides a row: the manifest was validated when opened.
    if let Some(block) = w.embedding_head_block {
        let block = block as usize;
        let (quants, scales) = head_table_layout(vocab, d, block);
        return Ok(Layout::Head {
            block,
            quants,
            scales,
        });
    }
    let ty = GgmlType::from_name(&w.embedding)
        .filter(|t| t.block_layout().is_some())
        .ok_or_else(|| {
            Error::Package(format!(
                "unknown embedding type {:?} in the manifest",
                w.embedding
            ))
        })?;
    let (elems, bytes) = ty.block_layout().expect("checked above");
    if !d.is_multiple_of(elems) {
        return Err(Error::Package(format!(
            "embedding rows of {d} values are not whole {ty} blocks of {elems}"
        )));
    }
    Ok(Layout::Gguf {
        ty,
        row: d / elems * bytes,
    })
}
