//! `config.json` of a BERT checkpoint: the dimensions the importer needs, checked against what
//! the encoder graph supports.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// Largest `config.json` read (real ones are under 1 KiB).
const MAX_CONFIG_BYTES: u64 = 64 << 10;

/// The dimensions of a BERT encoder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_position")]
    pub position_embedding_type: String,
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_act() -> String {
    "gelu".into()
}
fn default_position() -> String {
    "absolute".into()
}
fn default_model_type() -> String {
    "bert".into()
}

impl BertConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(Error::Checkpoint(format!(
                "{}: {} bytes is too large for a config.json",
                path.display(),
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Checkpoint(m) => Error::Checkpoint(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let c: BertConfig = serde_json::from_str(text)
            .map_err(|e| Error::Checkpoint(format!("not a BERT config.json: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Checkpoint(m));
        if self.model_type != "bert" {
            return bad(format!(
                "model_type `{}` is not supported (bert only)",
                self.model_type
            ));
        }
        if self.hidden_act != "gelu" {
            return bad(format!(
                "hidden_act `{}` is not supported (gelu only)",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return bad(format!(
                "position_embedding_type `{}` is not supported (absolute only)",
                self.position_embedding_type
            ));
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 || v > 1 << 20 {
                return bad(format!("{name} = {v} is out of range"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad("hidden_size must be a multiple of num_attention_heads".into());
        }
        // int8 weights are quantized in blocks of 32 along the input dimension.
        if !self.hidden_size.is_multiple_of(32) || !self.intermediate_size.is_multiple_of(32) {
            return bad("hidden_size and intermediate_size must be multiples of 32".into());
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad("layer_norm_eps must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{"architectures":["BertModel"],"hidden_act":"gelu","hidden_size":384,
        "intermediate_size":1536,"layer_norm_eps":1e-12,"max_position_embeddings":512,
        "model_type":"bert","num_attention_heads":12,"num_hidden_layers":6,"pad_token_id":0,
        "position_embedding_type":"absolute","type_vocab_size":2,"vocab_size":30522}"#;

    #[test]
    fn minilm_config_parses() {
        let c = BertConfig::from_json(MINILM).unwrap();
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.head_dim()),
            (384, 6, 32)
        );
    }

    #[test]
    fn unsupported_configs_are_named() {
        for (from, to, needle) in [
            ("\"gelu\"", "\"relu\"", "hidden_act"),
            (
                "\"num_attention_heads\":12",
                "\"num_attention_heads\":7",
                "multiple",
            ),
            ("\"model_type\":\"bert\"", "\"model_type\":\"t5\"", "t5"),
            ("\"hidden_size\":384,", "", "hidden_size"),
            ("1e-12", "-1", "layer_norm_eps"),
        ] {
            let err = BertConfig::from_json(&MINILM.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
