//! The weights of a BERT checkpoint, read from safetensors: every tensor the encoder needs must
//! be there, in f32, with the shape the configuration implies. Linear weights keep PyTorch's
//! layout, row-major `[out, in]`.

use super::BertConfig;
use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Weights of one transformer layer.
#[derive(Debug, Clone)]
pub struct BertLayer {
    pub q_w: Vec<f32>,
    pub q_b: Vec<f32>,
    pub k_w: Vec<f32>,
    pub k_b: Vec<f32>,
    pub v_w: Vec<f32>,
    pub v_b: Vec<f32>,
    /// Attention output projection.
    pub o_w: Vec<f32>,
    pub o_b: Vec<f32>,
    /// LayerNorm after attention (gamma, beta).
    pub ln1_g: Vec<f32>,
    pub ln1_b: Vec<f32>,
    /// Feed-forward `[intermediate, hidden]` and `[hidden, intermediate]`.
    pub up_w: Vec<f32>,
    pub up_b: Vec<f32>,
    pub down_w: Vec<f32>,
    pub down_b: Vec<f32>,
    /// LayerNorm after the feed-forward block.
    pub ln2_g: Vec<f32>,
    pub ln2_b: Vec<f32>,
}

/// Every weight of a BERT encoder in f32.
#[derive(Debug, Clone)]
pub struct BertWeights {
    pub config: BertConfig,
    /// `[vocab, hidden]`.
    pub word: Vec<f32>,
    /// `[max_positions, hidden]`.
    pub position: Vec<f32>,
    /// `[type_vocab, hidden]`.
    pub token_type: Vec<f32>,
    pub emb_ln_g: Vec<f32>,
    pub emb_ln_b: Vec<f32>,
    pub layers: Vec<BertLayer>,
}

impl BertWeights {
    /// Reads `model.safetensors` for the encoder described by `config`.
    pub fn from_file(path: &Path, config: &BertConfig) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, config)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))
    }

    /// Parses safetensors bytes. Any malformed, truncated or mismatching input is an error,
    /// never a panic.
    pub fn from_bytes(bytes: &[u8], config: &BertConfig) -> Result<Self, String> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| format!("not safetensors: {e}"))?;
        // Some exports prefix every name with `bert.`.
        let prefix = if st.names().iter().any(|n| n.starts_with("bert.")) {
            "bert."
        } else {
            ""
        };
        let get = |name: &str, shape: &[usize]| tensor(&st, &format!("{prefix}{name}"), shape);
        let (h, f, c) = (config.hidden_size, config.intermediate_size, config.clone());
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = |s: &str| format!("encoder.layer.{i}.{s}");
            layers.push(BertLayer {
                q_w: get(&p("attention.self.query.weight"), &[h, h])?,
                q_b: get(&p("attention.self.query.bias"), &[h])?,
                k_w: get(&p("attention.self.key.weight"), &[h, h])?,
                k_b: get(&p("attention.self.key.bias"), &[h])?,
                v_w: get(&p("attention.self.value.weight"), &[h, h])?,
                v_b: get(&p("attention.self.value.bias"), &[h])?,
                o_w: get(&p("attention.output.dense.weight"), &[h, h])?,
                o_b: get(&p("attention.output.dense.bias"), &[h])?,
                ln1_g: get(&p("attention.output.LayerNorm.weight"), &[h])?,
                ln1_b: get(&p("attention.output.LayerNorm.bias"), &[h])?,
                up_w: get(&p("intermediate.dense.weight"), &[f, h])?,
                up_b: get(&p("intermediate.dense.bias"), &[f])?,
                down_w: get(&p("output.dense.weight"), &[h, f])?,
                down_b: get(&p("output.dense.bias"), &[h])?,
                ln2_g: get(&p("output.LayerNorm.weight"), &[h])?,
                ln2_b: get(&p("output.LayerNorm.bias"), &[h])?,
            });
        }
        Ok(BertWeights {
            word: get("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
            position: get(
                "embeddings.position_embeddings.weight",
                &[c.max_position_embeddings, h],
            )?,
            token_type: get(
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, h],
            )?,
            emb_ln_g: get("embeddings.LayerNorm.weight", &[h])?,
            emb_ln_b: get("embeddings.LayerNorm.bias", &[h])?,
            layers,
            config: c,
        })
    }
}

/// The f32 tensor `name` of `shape`, all values finite.
fn tensor(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
    let t = st
        .tensor(name)
        .map_err(|_| format!("tensor `{name}` is missing"))?;
    if t.dtype() != Dtype::F32 {
        return Err(format!("tensor `{name}` is {:?}, expected F32", t.dtype()));
    }
    if t.shape() != shape {
        return Err(format!(
            "tensor `{name}` has shape {:?}, expected {shape:?}",
            t.shape()
        ));
    }
    let values: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if values.len() != shape.iter().product::<usize>() {
        return Err(format!("tensor `{name}` has the wrong number of bytes"));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("tensor `{name}` has a non-finite value at {i}"));
    }
    Ok(values)
}

#[cfg(any(test, feature = "test-util"))]
pub mod testing {
    //! A tiny random BERT checkpoint for tests of the reader and the graph.

    use super::super::BertConfig;
    use safetensors::{Dtype, tensor::TensorView};
    use std::collections::BTreeMap;

    /// A config with two layers of width 32.
    pub fn tiny_config() -> BertConfig {
        BertConfig::from_json(
            r#"{"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,
            "intermediate_size":64,"vocab_size":50,"max_position_embeddings":16,
            "layer_norm_eps":1e-12}"#,
        )
        .expect("tiny config")
    }

    /// safetensors bytes with every tensor of `c`, filled from a fixed pseudo-random sequence.
    pub fn tiny_checkpoint(c: &BertConfig) -> Vec<u8> {
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![c.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![c.max_position_embeddings, h],
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                vec![c.type_vocab_size, h],
            ),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
        ];
        for i in 0..c.num_hidden_layers {
            for (s, shape) in [
                ("attention.self.query.weight", vec![h, h]),
                ("attention.self.query.bias", vec![h]),
                ("attention.self.key.weight", vec![h, h]),
                ("attention.self.key.bias", vec![h]),
                ("attention.self.value.weight", vec![h, h]),
                ("attention.self.value.bias", vec![h]),
                ("attention.output.dense.weight", vec![h, h]),
                ("attention.output.dense.bias", vec![h]),
                ("attention.output.LayerNorm.weight", vec![h]),
                ("attention.output.LayerNorm.bias", vec![h]),
                ("intermediate.dense.weight", vec![f, h]),
                ("intermediate.dense.bias", vec![f]),
                ("output.dense.weight", vec![h, f]),
                ("output.dense.bias", vec![h]),
                ("output.LayerNorm.weight", vec![h]),
                ("output.LayerNorm.bias", vec![h]),
            ] {
                shapes.push((format!("encoder.layer.{i}.{s}"), shape));
            }
        }
        let mut state = 0x2545_f491_u32;
        let data: BTreeMap<String, (Vec<usize>, Vec<u8>)> = shapes
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let is_gamma = name.ends_with("LayerNorm.weight");
                let bytes = (0..n)
                    .flat_map(|_| {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        let u = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                        let v = if is_gamma { 1.0 + 0.2 * u } else { 0.4 * u };
                        v.to_le_bytes()
                    })
                    .collect();
                (name, (shape, bytes))
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = data
            .iter()
            .map(|(name, (shape, bytes))| {
                (
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), bytes).expect("tensor view"),
                )
            })
            .collect();
        safetensors::serialize(views, None).expect("serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{tiny_checkpoint, tiny_config};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_complete_checkpoint_reads() {
        let c = tiny_config();
        let w = BertWeights::from_bytes(&tiny_checkpoint(&c), &c).unwrap();
        assert_eq!(w.layers.len(), 2);
        assert_eq!(w.word.len(), 50 * 32);
        assert_eq!(w.layers[1].up_w.len(), 64 * 32);
    }

    #[test]
    fn a_checkpoint_of_other_dimensions_names_the_tensor() {
        let c = tiny_config();
        let bytes = tiny_checkpoint(&c);
        let mut wider = c.clone();
        wider.intermediate_size = 96;
        let err = BertWeights::from_bytes(&bytes, &wider).unwrap_err();
        assert!(
            err.contains("intermediate.dense.weight") && err.contains("[96, 32]"),
            "{err}"
        );
        let mut deeper = c;
        deeper.num_hidden_layers = 3;
        let err = BertWeights::from_bytes(&bytes, &deeper).unwrap_err();
        assert!(
            err.contains("encoder.layer.2.") && err.contains("missing"),
            "{err}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn truncated_checkpoints_are_errors(cut in 0usize..100_000) {
            let c = tiny_config();
            let bytes = tiny_checkpoint(&c);
            let cut = cut % bytes.len();
            prop_assert!(BertWeights::from_bytes(&bytes[..cut], &c).is_err());
        }

        #[test]
        fn mutated_checkpoints_never_panic(pos in 0usize..100_000, byte in any::<u8>()) {
            let c = tiny_config();
            let mut bytes = tiny_checkpoint(&c);
            let pos = pos % bytes.len();
            bytes[pos] = byte;
            let _ = BertWeights::from_bytes(&bytes, &c);
        }

        #[test]
        fn random_bytes_are_errors(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            prop_assert!(BertWeights::from_bytes(&bytes, &tiny_config()).is_err());
        }
    }
}
