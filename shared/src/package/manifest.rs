//! `manifest.toml`: what a model package holds and how its parts fit together.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the decoder package layout this code reads and writes. 2: graphs take 2-D
/// `[S, d]` activations (1 took `[1, S, d]`). 3: a trained draft head replaces the linear
/// early-exit heads.
pub const FORMAT_VERSION: u32 = 3;

/// Version of the encoder package layout ([`super::EncoderManifest`]).
pub const ENCODER_FORMAT_VERSION: u32 = 1;

/// The manifest of a model package, stored as `manifest.toml` at the package root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Layout version; see [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Human-readable model name (from the source checkpoint).
    pub name: String,
    /// Where the weights came from (file name and SHA-256 of the source checkpoint).
    pub source: Source,
    /// Decoder architecture and dimensions.
    pub architecture: Architecture,
    /// How the weights are stored in the graphs.
    pub weights: Weights,
    /// Layer indices where the forward pass may be split between device and cloud, ascending,
    /// each in `1..n_layer`.
    pub split_points: Vec<u32>,
    /// Contiguous layer segments covering `0..n_layer`, in order.
    pub segments: Vec<Segment>,
    /// The graph of the final norm and LM head (hidden state → logits).
    pub head: String,
    /// Q8_0 token-embedding table, rows gathered on the device (exact).
    pub embedding: String,
    /// Hugging Face `tokenizer.json`.
    pub tokenizer: String,
    /// Default KV-cache dtype at rest (`int8` or `f32`).
    pub kv_dtype: String,
    /// Optional chat template (Jinja source from the checkpoint), informational.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// The draft head for speculative split decoding, if the package was imported with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drafter: Option<Drafter>,
    /// State predictors of split layers: the worker drafts through layers `[K, N)` with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predictors: Vec<StatePredictor>,
    /// SHA-256 (hex) of every file of the package except the manifest, by relative path.
    pub files: BTreeMap<String, String>,
}

/// Provenance of the imported weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub file: String,
    pub sha256: String,
}

/// Decoder families a package may hold.
pub const SUPPORTED_FAMILIES: &[&str] = &["llama", "qwen2", "gemma3"];

fn one() -> f32 {
    1.0
}

fn is_one(v: &f32) -> bool {
    *v == 1.0
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Llama-family decoder dimensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Architecture family: `llama`, `qwen2` or `gemma3`. What sets them apart lives in the
    /// graphs (biases, norms, activations), in the q/k rows the import reorders for the
    /// runtime's adjacent-pair rope, and in the fields below; the runtime treats all alike.
    pub family: String,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_ff: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub vocab_size: u32,
    pub context_length: u32,
    pub rope_theta: f32,
    /// Linear RoPE scaling: rotary positions are multiplied by this.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub rope_freq_scale: f32,
    /// Per-pair divisors of the rotary frequencies (Llama 3's RoPE scaling), `head_dim / 2`
    /// of them; empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rope_freq_factors: Vec<f32>,
    /// Layers that attend over a sliding window and turn with [`Self::rope_theta_local`]
    /// (gemma3's local layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_layers: Vec<u32>,
    /// RoPE base of [`Self::local_layers`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta_local: Option<f32>,
    /// Positions a local layer attends over, its own included. 0: the whole context (packages
    /// written before this field capped their context at the window, where that is exact).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sliding_window: u32,
    /// Token embeddings are multiplied by this (gemma: `sqrt(n_embd)`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub embedding_scale: f32,
    pub rms_eps: f32,
    pub bos_token: u32,
    pub eos_token: u32,
    /// Extra end-of-turn tokens that also stop generation (e.g. `<|im_end|>`).
    #[serde(default)]
    pub stop_tokens: Vec<u32>,
}

/// Storage of the weights inside the graphs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// GGUF types of the linear layers, e.g. `q4_1` or `q4_k+q6_k`.
    pub linear: String,
    /// How each GGUF type of the linear layers is kept in the graphs (older packages: empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linear_types: Vec<LinearType>,
    /// LM head, e.g. `q8_0` (kept in 8 bits: Q8_0, or Q5_0, Q3_K, Q6_K widened).
    pub head: String,
    /// GGUF type of the token embedding table, stored as the GGUF has it and decoded row by
    /// row (packages before this field: `q8_0`).
    #[serde(default = "q8_0")]
    pub embedding: String,
    /// Set when the embedding file is the tied LM head's own 8-bit table, stored once for the
    /// head graph (as ONNX external data) and the embedding lookup: `[vocab, n_embd]` bytes
    /// `q + 128` from offset 0, then `[vocab, n_embd / block]` f32 scales from the next
    /// [`HEAD_TABLE_ALIGN`] boundary. The value is the block (elements per scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_head_block: Option<u32>,
    /// How the quantized matmuls compute: `int8` (activations quantized per block to int8,
    /// as llama.cpp does; fast) or `f32` (exact function of the weights; slow, for checks).
    pub compute: String,
}

fn q8_0() -> String {
    "q8_0".into()
}

/// Alignment of the scales in a shared head table (see [`Weights::embedding_head_block`]).
pub const HEAD_TABLE_ALIGN: usize = 4096;

/// Byte ranges of the quants and the scales of a shared head table of `rows × cols` with
/// `block` elements per scale.
pub fn head_table_layout(
    rows: usize,
    cols: usize,
    block: usize,
) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let quants = 0..rows * cols;
    let start = quants.end.next_multiple_of(HEAD_TABLE_ALIGN);
    (quants, start..start + rows * (cols / block) * 4)
}

/// One GGUF type of a package's linear layers and how the graphs keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearType {
    /// The GGUF type, e.g. `q6_k`.
    pub gguf: String,
    /// Linear weight tensors of that type.
    pub tensors: u32,
    /// What the graphs hold: `4-bit` or `5-bit` blocks for Seam's `QMatMul`, `4-bit` or
    /// `8-bit` blocks for `MatMulNBits` (exact either way), `f32`; `widened` when that is more
    /// bits than the GGUF type has.
    pub stored: String,
    pub widened: bool,
}

/// The draft head (EAGLE-style), trained at import on the model's own states: from the
/// final-layer state of the previous position and the embedding of the current token it
/// estimates the current position's final-layer state, read out through the model's final
/// norm and the LM-head rows of a token shortlist.
///
/// `graph` is an ONNX graph with inputs `feature`, `embed` (`[S, n_embd]`) and outputs
/// `feature_out` (`[S, n_embd]`) and `logits` (`[S, shortlist_size]`); `shortlist` holds the
/// token id of each logit as little-endian u32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drafter {
    pub graph: String,
    pub shortlist: String,
    pub shortlist_size: u32,
    /// Positions trained on.
    pub train_positions: u32,
    /// Held-out positions (greedy answers to prompts never trained on) measured.
    pub heldout_positions: u32,
    /// Share of drafts that stand at each chain position 1, 2, … given the ones before stood.
    pub heldout_acceptance: Vec<f32>,
    /// Seed of the training run.
    pub seed: u64,
}

/// The state predictor of one split layer `K`: a small network (ONNX graph, `state`, `embed` →
/// `state_out`) estimating the layer-K state of a token from the layer-K state of the row
/// before it and the token's embedding. The worker runs layers `[K, N)` on its estimates to
/// draft (see `seam_edge::runtime::draft::upper`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatePredictor {
    pub layer: u32,
    pub graph: String,
    /// Share of drafts that stand at each chain position 1, 2, … given the ones before stood
    /// (greedy answers to prompts never trained on, through the package's own graphs).
    pub heldout_acceptance: Vec<f32>,
}

/// A run of layers `[start, end)` and the graphs that compute it, in execution order.
///
/// The first graph takes the hidden state entering layer `start` and yields the packed
/// q|k|v projections of layer `start`; each middle graph takes the residual stream and the
/// attention output of the previous layer and yields the next residual and packed q|k|v; the
/// last graph finishes layer `end - 1` and yields the hidden state leaving the segment.
/// Attention itself runs on the device's KV cache between graphs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub start: u32,
    pub end: u32,
    pub graphs: Vec<String>,
}

impl Manifest {
    /// Checks the internal consistency of the manifest (not the files on disk).
    pub fn validate(&self) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (expected {FORMAT_VERSION})",
                self.format_version
            ));
        }
        let a = &self.architecture;
        if !SUPPORTED_FAMILIES.contains(&a.family.as_str()) {
            return Err(format!(
                "architecture.family `{}` is not supported",
                a.family
            ));
        }
        for (name, v) in [
            ("n_layer", a.n_layer),
            ("n_embd", a.n_embd),
            ("n_ff", a.n_ff),
            ("n_head", a.n_head),
            ("n_head_kv", a.n_head_kv),
            ("head_dim", a.head_dim),
            ("vocab_size", a.vocab_size),
            ("context_length", a.context_length),
        ] {
            if v == 0 {
                return Err(format!("architecture.{name} must be positive"));
            }
        }
        if !a.n_head.is_multiple_of(a.n_head_kv) {
            return Err("architecture: n_head must be a multiple of n_head_kv".into());
        }
        if let Some(l) = a.local_layers.iter().find(|&&l| l >= a.n_layer) {
            return Err(format!(
                "architecture.local_layers: layer {l} is outside the {} layers",
                a.n_layer
            ));
        }
        if !a.local_layers.is_empty()
            && !a.rope_theta_local.is_some_and(|t| t.is_finite() && t > 0.0)
        {
            return Err("architecture.rope_theta_local must be finite and positive when there are local layers".into());
        }
        if a.sliding_window > 0 && a.local_layers.is_empty() {
            return Err(
                "architecture.sliding_window is set but no layer is local (local_layers)".into(),
            );
        }
        if !(a.embedding_scale.is_finite() && a.embedding_scale > 0.0) {
            return Err("architecture.embedding_scale must be finite and positive".into());
        }
        if !a.head_dim.is_multiple_of(2) {
            return Err("architecture.head_dim must be even (rotary pairs)".into());
        }
        if !(a.rope_freq_scale.is_finite() && a.rope_freq_scale > 0.0) {
            return Err("architecture.rope_freq_scale must be finite and positive".into());
        }
        if !a.rope_freq_factors.is_empty()
            && (a.rope_freq_factors.len() as u32 != a.head_dim / 2
                || a.rope_freq_factors
                    .iter()
                    .any(|f| !(f.is_finite() && *f > 0.0)))
        {
            return Err(format!(
                "architecture.rope_freq_factors must be {} finite positive values (one per rotary pair)",
                a.head_dim / 2
            ));
        }
        if !(a.rope_theta.is_finite()
            && a.rope_theta > 0.0
            && a.rms_eps.is_finite()
            && a.rms_eps > 0.0)
        {
            return Err("architecture.rope_theta and rms_eps must be positive".into());
        }
        if let Some(block) = self.weights.embedding_head_block
            && !(matches!(block, 16 | 32) && self.architecture.n_embd.is_multiple_of(block))
        {
            return Err(format!(
                "weights.embedding_head_block {block} must be 16 or 32 and divide n_embd {}",
                self.architecture.n_embd
            ));
        }
        if !matches!(self.weights.compute.as_str(), "int8" | "f32") {
            return Err(format!(
                "weights.compute `{}` must be int8 or f32",
                self.weights.compute
            ));
        }
        if !matches!(self.kv_dtype.as_str(), "int8" | "f32") {
            return Err(format!("kv_dtype `{}` must be int8 or f32", self.kv_dtype));
        }
        let mut prev = 0;
        for &p in &self.split_points {
            if p <= prev || p >= a.n_layer {
                return Err(format!(
                    "split_points must be ascending and inside 1..{}, got {:?}",
                    a.n_layer, self.split_points
                ));
            }
            prev = p;
        }
        let mut next = 0;
        for s in &self.segments {
            if s.start != next || s.end <= s.start || s.end > a.n_layer {
                return Err(format!(
                    "segments must cover 0..{} contiguously; segment {}..{} breaks that",
                    a.n_layer, s.start, s.end
                ));
            }
            if s.graphs.len() != (s.end - s.start) as usize + 1 {
                return Err(format!(
                    "segment {}..{} must list {} graphs",
                    s.start,
                    s.end,
                    s.end - s.start + 1
                ));
            }
            if s.start != 0 && !self.split_points.contains(&s.start) {
                return Err(format!("segment start {} is not a split point", s.start));
            }
            next = s.end;
        }
        if next != a.n_layer {
            return Err(format!("segments end at layer {next}, not {}", a.n_layer));
        }
        if let Some(dr) = &self.drafter {
            if dr.shortlist_size == 0 || dr.shortlist_size > a.vocab_size {
                return Err(format!(
                    "drafter.shortlist_size {} must be in 1..={}",
                    dr.shortlist_size, a.vocab_size
                ));
            }
            if dr
                .heldout_acceptance
                .iter()
                .any(|x| !(0.0..=1.0).contains(x))
            {
                return Err("drafter.heldout_acceptance values must be in [0, 1]".into());
            }
        }
        let mut layers = std::collections::BTreeSet::new();
        for p in &self.predictors {
            if !self.split_points.contains(&p.layer) {
                return Err(format!(
                    "predictor layer {} is not a split point {:?}",
                    p.layer, self.split_points
                ));
            }
            if !layers.insert(p.layer) {
                return Err(format!("two predictors for layer {}", p.layer));
            }
            if p.heldout_acceptance
                .iter()
                .any(|x| !(0.0..=1.0).contains(x))
            {
                return Err("predictor heldout_acceptance values must be in [0, 1]".into());
            }
        }
        let referenced = self
            .segments
            .iter()
            .flat_map(|s| s.graphs.iter())
            .chain([&self.head, &self.embedding, &self.tokenizer])
            .chain(self.drafter.iter().flat_map(|d| [&d.graph, &d.shortlist]))
            .chain(self.predictors.iter().map(|p| &p.graph));
        for f in referenced {
            if !self.files.contains_key(f) {
                return Err(format!("`{f}` is used but not listed in [files]"));
            }
        }
        validate_files(&self.files)
    }

    /// The segment that starts at `layer`, if any.
    pub fn segment_starting_at(&self, layer: u32) -> Option<&Segment> {
        self.segments.iter().find(|s| s.start == layer)
    }
}

/// Every path stays inside the package and every checksum is a SHA-256 hex digest.
pub(crate) fn validate_files(files: &BTreeMap<String, String>) -> Result<(), String> {
    for (path, sha) in files {
        if path.contains("..") || path.starts_with('/') || path.contains('\\') {
            return Err(format!("file path `{path}` must stay inside the package"));
        }
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("files.`{path}` is not a SHA-256 hex digest"));
        }
    }
    Ok(())
}
