//! `manifest.toml` of a sentence-encoder package: a BERT encoder graph with its tokenizer, and
//! the intent head trained over its embeddings (weights, labels with their domains, the
//! out-of-scope threshold, and the digest of the encoder it was trained on).

use super::manifest::{ENCODER_FORMAT_VERSION, Source, validate_files};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The `kind` key of an encoder package's manifest.
pub const ENCODER_KIND: &str = "encoder";

/// The manifest of an encoder package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderManifest {
    /// Always [`ENCODER_KIND`].
    pub kind: String,
    /// Layout version; see [`ENCODER_FORMAT_VERSION`].
    pub format_version: u32,
    /// Human-readable encoder name, e.g. `all-MiniLM-L6-v2`.
    pub name: String,
    /// Where the weights came from (file name and SHA-256 of the safetensors file).
    pub source: Source,
    pub encoder: EncoderSpec,
    pub head: IntentHeadSpec,
    /// SHA-256 (hex) of every file of the package except the manifest, by relative path.
    pub files: BTreeMap<String, String>,
}

/// The sentence encoder: a BERT graph (`input_ids`, `attention_mask` → mean-pooled,
/// L2-normalised `embeddings`) and its WordPiece tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSpec {
    /// Architecture family; only `bert`.
    pub family: String,
    pub hidden: u32,
    pub layers: u32,
    pub heads: u32,
    pub intermediate: u32,
    pub vocab_size: u32,
    /// Rows of the position-embedding table.
    pub max_positions: u32,
    /// Longest input in tokens (special tokens included); longer texts are truncated.
    pub max_tokens: u32,
    pub layer_norm_eps: f32,
    /// Weight storage of the graph's linear layers and word embeddings: `int8` or `f32`.
    pub weights: String,
    /// Per-channel smoothing of the int8 linear layers' activations, when applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothing: Option<SmoothingSpec>,
    /// The ONNX graph.
    pub graph: String,
    /// Hugging Face `tokenizer.json`, with its own padding and truncation switched off.
    pub tokenizer: String,
    /// [`encoder_digest`] of the graph, the tokenizer and `max_tokens`: what the embeddings
    /// depend on.
    pub digest: String,
}

/// How the int8 graph's linear layers were smoothed (SmoothQuant): each input channel `j` is
/// divided by `max|x_j|^alpha / max|w_j|^(1 − alpha)` and the weight column multiplied by it,
/// with `max|x_j|` measured over `calibration_texts` texts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmoothingSpec {
    pub alpha: f32,
    pub calibration_texts: u32,
}

/// The intent classifier over the embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentHeadSpec {
    /// `logistic_regression`: `softmax(W·e + b)`.
    pub model: String,
    /// safetensors file with `weight` `[classes, hidden]` and `bias` `[classes]`, f32.
    pub weights: String,
    /// `label<TAB>domain` per line, in class order.
    pub labels: String,
    pub classes: u32,
    /// The encoder digest the head was trained on; must equal `encoder.digest`.
    pub encoder_digest: String,
    /// A text whose best probability is below this is out of scope.
    pub oos_threshold: f32,
    /// The false-rejection rate on the calibration split the threshold was chosen for.
    pub target_false_rejection: f32,
    /// The false-rejection rate the threshold gives on the calibration split.
    pub calibration_false_rejection: f32,
    /// L2 regularisation strength used in training.
    pub l2: f32,
    /// Accuracy on the calibration split.
    pub calibration_accuracy: f32,
    /// Training data.
    pub train: DataRef,
    /// Calibration data (threshold, regularisation).
    pub calibration: DataRef,
}

/// A labelled data file used at import time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataRef {
    pub file: String,
    pub sha256: String,
    pub examples: u32,
}

/// The digest of an encoder: SHA-256 over the graph's and the tokenizer's SHA-256 and the
/// maximum input length, so a head can tell whether it was trained on these embeddings.
pub fn encoder_digest(graph_sha: &str, tokenizer_sha: &str, max_tokens: u32) -> String {
    let text = format!("graph {graph_sha}\ntokenizer {tokenizer_sha}\nmax_tokens {max_tokens}\n");
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl EncoderManifest {
    /// Checks the internal consistency of the manifest (not the files on disk).
    pub fn validate(&self) -> Result<(), String> {
        if self.kind != ENCODER_KIND {
            return Err(format!("kind `{}` must be `{ENCODER_KIND}`", self.kind));
        }
        if self.format_version != ENCODER_FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (expected {ENCODER_FORMAT_VERSION})",
                self.format_version
            ));
        }
        let e = &self.encoder;
        if e.family != "bert" {
            return Err(format!("encoder.family `{}` is not supported", e.family));
        }
        for (name, v) in [
            ("hidden", e.hidden),
            ("layers", e.layers),
            ("heads", e.heads),
            ("intermediate", e.intermediate),
            ("vocab_size", e.vocab_size),
            ("max_positions", e.max_positions),
        ] {
            if v == 0 {
                return Err(format!("encoder.{name} must be positive"));
            }
        }
        if !e.hidden.is_multiple_of(e.heads) {
            return Err("encoder.hidden must be a multiple of encoder.heads".into());
        }
        if e.max_tokens < 3 || e.max_tokens > e.max_positions {
            return Err(format!(
                "encoder.max_tokens {} must be in 3..={}",
                e.max_tokens, e.max_positions
            ));
        }
        if !(e.layer_norm_eps.is_finite() && e.layer_norm_eps > 0.0) {
            return Err("encoder.layer_norm_eps must be positive".into());
        }
        if !matches!(e.weights.as_str(), "int8" | "f32") {
            return Err(format!(
                "encoder.weights `{}` must be int8 or f32",
                e.weights
            ));
        }
        if let Some(sm) = &e.smoothing {
            if e.weights != "int8" {
                return Err("encoder.smoothing applies to int8 weights only".into());
            }
            if !(sm.alpha > 0.0 && sm.alpha < 1.0) {
                return Err(format!(
                    "encoder.smoothing.alpha {} must be in (0, 1)",
                    sm.alpha
                ));
            }
            if sm.calibration_texts == 0 {
                return Err("encoder.smoothing.calibration_texts must be positive".into());
            }
        }
        let h = &self.head;
        if h.model != "logistic_regression" {
            return Err(format!("head.model `{}` is not supported", h.model));
        }
        if h.classes < 2 {
            return Err("head.classes must be at least 2".into());
        }
        if h.encoder_digest != e.digest {
            return Err(format!(
                "head.encoder_digest {} differs from encoder.digest {}: the head was trained on another encoder",
                h.encoder_digest, e.digest
            ));
        }
        for (name, v) in [
            ("oos_threshold", h.oos_threshold),
            ("target_false_rejection", h.target_false_rejection),
            ("calibration_false_rejection", h.calibration_false_rejection),
            ("calibration_accuracy", h.calibration_accuracy),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("head.{name} {v} must be in [0, 1]"));
            }
        }
        if !(h.l2.is_finite() && h.l2 >= 0.0) {
            return Err("head.l2 must be a non-negative number".into());
        }
        for f in [&e.graph, &e.tokenizer, &h.weights, &h.labels] {
            if !self.files.contains_key(f) {
                return Err(format!("`{f}` is used but not listed in [files]"));
            }
        }
        let expected = encoder_digest(
            &self.files[&e.graph],
            &self.files[&e.tokenizer],
            e.max_tokens,
        );
        if expected != e.digest {
            return Err(format!(
                "encoder.digest {} does not match its graph, tokenizer and max_tokens ({expected})",
                e.digest
            ));
        }
        validate_files(&self.files)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tiny() -> EncoderManifest {
        let mut files = BTreeMap::new();
        for f in ["g.onnx", "t.json", "h.safetensors", "l.tsv"] {
            files.insert(f.to_string(), "ab".repeat(32));
        }
        let digest = encoder_digest(&"ab".repeat(32), &"ab".repeat(32), 8);
        EncoderManifest {
            kind: ENCODER_KIND.into(),
            format_version: ENCODER_FORMAT_VERSION,
            name: "tiny".into(),
            source: Source {
                file: "model.safetensors".into(),
                sha256: "0".repeat(64),
            },
            encoder: EncoderSpec {
                family: "bert".into(),
                hidden: 8,
                layers: 1,
                heads: 2,
                intermediate: 16,
                vocab_size: 10,
                max_positions: 16,
                max_tokens: 8,
                layer_norm_eps: 1e-12,
                smoothing: Some(SmoothingSpec {
                    alpha: 0.5,
                    calibration_texts: 4,
                }),
                weights: "int8".into(),
                graph: "g.onnx".into(),
                tokenizer: "t.json".into(),
                digest: digest.clone(),
            },
            head: IntentHeadSpec {
                model: "logistic_regression".into(),
                weights: "h.safetensors".into(),
                labels: "l.tsv".into(),
                classes: 3,
                encoder_digest: digest,
                oos_threshold: 0.5,
                target_false_rejection: 0.05,
                calibration_false_rejection: 0.05,
                l2: 1e-4,
                calibration_accuracy: 0.9,
                train: DataRef {
                    file: "train.tsv".into(),
                    sha256: "0".repeat(64),
                    examples: 30,
                },
                calibration: DataRef {
                    file: "dev.tsv".into(),
                    sha256: "0".repeat(64),
                    examples: 9,
                },
            },
            files,
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let ok = tiny();
        assert_eq!(ok.validate(), Ok(()));

        let mut m = ok.clone();
        m.head.encoder_digest = "cd".repeat(32);
        assert!(m.validate().unwrap_err().contains("another encoder"));

        let mut m = ok.clone();
        m.files.insert("g.onnx".into(), "cd".repeat(32));
        assert!(m.validate().unwrap_err().contains("does not match"));

        let mut m = ok.clone();
        m.encoder.max_tokens = 17;
        assert!(m.validate().unwrap_err().contains("max_tokens"));

        let mut m = ok.clone();
        m.head.oos_threshold = 1.5;
        assert!(m.validate().unwrap_err().contains("oos_threshold"));

        let mut m = ok.clone();
        m.files.remove("l.tsv");
        assert!(m.validate().unwrap_err().contains("`l.tsv`"));

        let mut m = ok.clone();
        m.encoder.weights = "int4".into();
        assert!(m.validate().unwrap_err().contains("int4"));

        let mut m = ok.clone();
        m.encoder.weights = "f32".into();
        assert!(m.validate().unwrap_err().contains("int8 weights only"));

        let mut m = ok.clone();
        m.encoder.smoothing.as_mut().unwrap().alpha = f32::NAN;
        assert!(m.validate().unwrap_err().contains("alpha"));

        let mut m = ok;
        m.encoder.smoothing.as_mut().unwrap().calibration_texts = 0;
        assert!(m.validate().unwrap_err().contains("calibration_texts"));
    }
}
