//! The sentence encoder at run time: WordPiece tokenization with our own limits (no padding by
//! the tokenizer, truncation at `max_tokens` reported per text) and the ONNX graph run over
//! length-sorted batches padded to their longest text.

use crate::error::{Error, Result};
use crate::import::encoder_graph::io;
use crate::onnx::session_from_file;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::Path;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Largest text accepted, in bytes (tokenization time grows with it; the encoder sees at most
/// `max_tokens` of it anyway).
pub const MAX_TEXT_BYTES: usize = 64 << 10;

/// Texts per graph run.
pub const RUN_BATCH: usize = 32;

/// The tokens of one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids with `[CLS]` and `[SEP]`, at most `max_tokens`.
    pub ids: Vec<i64>,
    /// Whether the text was longer than `max_tokens` and was cut.
    pub truncated: bool,
}

/// One text's embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// L2-normalised vector of `hidden` values.
    pub values: Vec<f32>,
    /// Encoder tokens used (special tokens included).
    pub tokens: usize,
    pub truncated: bool,
}

/// A loaded encoder. Running needs `&mut` (one run at a time).
pub struct Encoder {
    session: Session,
    tokenizer: Tokenizer,
    max_tokens: usize,
    hidden: usize,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("max_tokens", &self.max_tokens)
            .field("hidden", &self.hidden)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// Loads the graph and the tokenizer. ONNX Runtime must be initialised
    /// ([`seam_shared::ort_env::init`]).
    pub fn load(graph: &Path, tokenizer: &Path, max_tokens: usize, hidden: usize) -> Result<Self> {
        let tokenizer = load_tokenizer(tokenizer, max_tokens)?;
        let session = session_from_file(graph)?;
        Ok(Encoder {
            session,
            tokenizer,
            max_tokens,
            hidden,
        })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// The tokens of `text`; empty or oversized texts are refused.
    pub fn tokenize(&self, text: &str) -> Result<Tokens> {
        if text.trim().is_empty() {
            return Err(Error::InvalidArgument("text is empty".into()));
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(Error::InvalidArgument(format!(
                "text of {} bytes is above the limit of {MAX_TEXT_BYTES}",
                text.len()
            )));
        }
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Tokens {
            ids: enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
            truncated: !enc.get_overflowing().is_empty(),
        })
    }

    /// Embeddings of `texts`, in order.
    pub fn embed(&mut self, texts: &[&str]) -> Result<Vec<Embedding>> {
        let tokens = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<Vec<_>>>()?;
        self.embed_tokens(&tokens)
    }

    /// Embeddings of already tokenized texts, in order.
    pub fn embed_tokens(&mut self, tokens: &[Tokens]) -> Result<Vec<Embedding>> {
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| tokens[i].ids.len());
        let mut out: Vec<Option<Embedding>> = vec![None; tokens.len()];
        for chunk in order.chunks(RUN_BATCH) {
            let batch: Vec<&Tokens> = chunk.iter().map(|&i| &tokens[i]).collect();
            let vectors = self.run(&batch)?;
            for (&i, values) in chunk.iter().zip(vectors) {
                out[i] = Some(Embedding {
                    values,
                    tokens: tokens[i].ids.len(),
                    truncated: tokens[i].truncated,
                });
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// One graph run over `batch`, padded to its longest text.
    fn run(&mut self, batch: &[&Tokens]) -> Result<Vec<Vec<f32>>> {
        let b = batch.len();
        let s = batch.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        if b == 0 || s == 0 {
            return Ok(Vec::new());
        }
        if s > self.max_tokens {
            return Err(Error::InvalidArgument(format!(
                "{s} tokens exceed the encoder's maximum of {}",
                self.max_tokens
            )));
        }
        let mut ids = vec![0i64; b * s];
        let mut mask = vec![0i64; b * s];
        for (r, t) in batch.iter().enumerate() {
            ids[r * s..r * s + t.ids.len()].copy_from_slice(&t.ids);
            mask[r * s..r * s + t.ids.len()].fill(1);
        }
        let out = self.session.run(ort::inputs![
            io::INPUT_IDS => TensorRef::from_array_view(([b, s], &ids[..]))?,
            io::ATTENTION_MASK => TensorRef::from_array_view(([b, s], &mask[..]))?,
        ])?;
        let (_, values) = out[io::EMBEDDINGS].try_extract_tensor::<f32>()?;
        if values.len() != b * self.hidden {
            return Err(Error::Package(format!(
                "the encoder returned {} values for {b} texts of width {}",
                values.len(),
                self.hidden
            )));
        }
        Ok(values
            .chunks_exact(self.hidden)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// The tokenizer in `path` with its own padding off and truncation at `max_tokens` (special
/// tokens included).
pub fn load_tokenizer(path: &Path, max_tokens: usize) -> Result<Tokenizer> {
    let mut t = Tokenizer::from_file(path)
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    t.with_padding(None);
    t.with_truncation(Some(TruncationParams {
        max_length: max_tokens,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
        direction: TruncationDirection::Right,
    }))
    .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(t)
}
