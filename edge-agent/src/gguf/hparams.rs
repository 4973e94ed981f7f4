//! Hyperparameters of a llama-architecture GGUF, validated against its tensors.

use super::{GgufError, GgufFile, Result};

/// Architectures whose GGUF keys and tensor layout [`LlamaHparams`] understands.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// Llama hyperparameters read from `<arch>.*` metadata keys.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaHparams {
    /// Number of transformer blocks (`block_count`).
    pub n_layer: usize,
    /// Hidden size (`embedding_length`).
    pub n_embd: usize,
    /// Feed-forward inner size (`feed_forward_length`).
    pub n_ff: usize,
    /// Query heads (`attention.head_count`).
    pub n_head: usize,
    /// Key/value heads (`attention.head_count_kv`, defaults to `n_head`).
    pub n_head_kv: usize,
    /// Per-head size (`attention.key_length`, defaults to `n_embd / n_head`).
    pub head_dim: usize,
    /// RoPE base frequency (`rope.freq_base`, default 10000).
    pub rope_theta: f32,
    /// RMSNorm epsilon (`attention.layer_norm_rms_epsilon`).
    pub rms_eps: f32,
    /// Vocabulary size (`vocab_size`, else the length of `tokenizer.ggml.tokens`).
    pub vocab_size: usize,
    /// Training context length (`context_length`).
    pub context_length: usize,
    /// `tokenizer.ggml.bos_token_id`, if present.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`, if present.
    pub eos_token_id: Option<u32>,
    /// True when there is no `output.weight` and logits use `token_embd.weight`.
    pub tied_embeddings: bool,
}

impl LlamaHparams {
    /// Reads and validates the hyperparameters, including every tensor shape they imply.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch = f.get_str("general.architecture")?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(GgufError::UnsupportedArchitecture(arch.to_string()));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let usize_of = |k: &str| f.get_u32(&key(k)).map(|v| v as usize);
        let n_embd = usize_of("embedding_length")?;
        let n_head = usize_of("attention.head_count")?;
        let n_head_kv = match f.get(&key("attention.head_count_kv")) {
            Some(_) => usize_of("attention.head_count_kv")?,
            None => n_head,
        };
        let bad = |m: String| Err(GgufError::BadHparams(m));
        if n_embd == 0 || n_head == 0 || n_head_kv == 0 {
            return bad(format!(
                "n_embd {n_embd}, n_head {n_head}, n_head_kv {n_head_kv} must be nonzero"
            ));
        }
        if !n_head.is_multiple_of(n_head_kv) {
            return bad(format!(
                "n_head {n_head} is not a multiple of n_head_kv {n_head_kv}"
            ));
        }
        let head_dim = match f.get_u32_opt(&key("attention.key_length"))? {
            Some(k) => k as usize,
            None if n_embd.is_multiple_of(n_head) => n_embd / n_head,
            None => {
                return bad(format!(
                    "n_embd {n_embd} is not a multiple of n_head {n_head}"
                ));
            }
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {head_dim} must be even and nonzero"));
        }
        if let Some(v) = f.get_u32_opt(&key("attention.value_length"))?
            && v as usize != head_dim
        {
            return bad(format!(
                "value_length {v} differs from key_length {head_dim}"
            ));
        }
        if let Some(rot) = f.get_u32_opt(&key("rope.dimension_count"))?
            && rot as usize != head_dim
        {
            return bad(format!(
                "partial rotary (rope.dimension_count {rot}, head_dim {head_dim}) is not supported"
            ));
        }
        let vocab_size = match f.get_u32_opt(&key("vocab_size"))? {
            Some(v) => v as usize,
            None => f.get_string_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_theta = match f.get(&key("rope.freq_base")) {
            Some(_) => f.get_f32(&key("rope.freq_base"))?,
            None => 10_000.0,
        };
        let hp = LlamaHparams {
            n_layer: usize_of("block_count")?,
            n_embd,
            n_ff: usize_of("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            rope_theta,
            rms_eps: f.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            vocab_size,
            context_length: usize_of("context_length")?,
            bos_token_id: f.get_u32_opt("tokenizer.ggml.bos_token_id")?,
            eos_token_id: f.get_u32_opt("tokenizer.ggml.eos_token_id")?,
            tied_embeddings: f.tensor("output.weight").is_err(),
        };
        if hp.n_layer == 0 || hp.n_ff == 0 || hp.vocab_size == 0 {
            return bad(format!(
                "n_layer {}, n_ff {}, vocab {} must be nonzero",
                hp.n_layer, hp.n_ff, hp.vocab_size
            ));
        }
        // Each block has 9 tensors: a block count the file cannot hold is refused before
        // anything is sized by it (found by fuzzing: a block_count of 2^31 allocated without
        // bound).
        if hp.n_layer > f.tensors.len() / 9 {
            return bad(format!(
                "block_count {} needs {} tensors, the file has {}",
                hp.n_layer,
                hp.n_layer.saturating_mul(9).saturating_add(2),
                f.tensors.len()
            ));
        }
        if !(hp.rms_eps.is_finite()
            && hp.rms_eps > 0.0
            && hp.rope_theta.is_finite()
            && hp.rope_theta > 0.0)
        {
            return bad(format!(
                "rms_eps {} and rope_theta {} must be finite and positive",
                hp.rms_eps, hp.rope_theta
            ));
        }
        hp.check_shapes(f)?;
        Ok(hp)
    }

    /// Expected GGUF dims (ne0 first) of every tensor the llama graph uses.
    pub fn expected_shapes(&self) -> Vec<(String, Vec<u64>)> {
        let (e, ff, v) = (self.n_embd as u64, self.n_ff as u64, self.vocab_size as u64);
        let q = (self.n_head * self.head_dim) as u64;
        let kv = (self.n_head_kv * self.head_dim) as u64;
        let mut out = vec![
            ("token_embd.weight".to_string(), vec![e, v]),
            ("output_norm.weight".into(), vec![e]),
        ];
        if !self.tied_embeddings {
            out.push(("output.weight".into(), vec![e, v]));
        }
        for l in 0..self.n_layer {
            for (name, dims) in [
                ("attn_norm", vec![e]),
                ("attn_q", vec![e, q]),
                ("attn_k", vec![e, kv]),
                ("attn_v", vec![e, kv]),
                ("attn_output", vec![q, e]),
                ("ffn_norm", vec![e]),
                ("ffn_gate", vec![e, ff]),
                ("ffn_up", vec![e, ff]),
                ("ffn_down", vec![ff, e]),
            ] {
                out.push((format!("blk.{l}.{name}.weight"), dims));
            }
        }
        out
    }

    fn check_shapes(&self, f: &GgufFile) -> Result<()> {
        for (name, dims) in self.expected_shapes() {
            let t = f.tensor(&name)?;
            // ggml drops trailing 1-sized dims inconsistently; compare with them stripped.
            let mut got = t.dims.clone();
            while got.len() > dims.len() && got.last() == Some(&1) {
                got.pop();
            }
            if got != dims {
                return Err(GgufError::BadTensor {
                    name,
                    reason: format!(
                        "dims {:?} do not match hyperparameters, expected {dims:?}",
                        t.dims
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{Writer, real_gguf_path};
    use super::super::{GgmlType, Value};
    use super::*;

    fn tiny(arch: &str, n_head_kv: u32, q_out: u64) -> Vec<u8> {
        let mut w = Writer::default()
            .kv("general.architecture", Value::String(arch.into()))
            .kv("llama.block_count", Value::U32(1))
            .kv("llama.embedding_length", Value::U32(4))
            .kv("llama.feed_forward_length", Value::U32(8))
            .kv("llama.attention.head_count", Value::U32(2))
            .kv("llama.attention.head_count_kv", Value::U32(n_head_kv))
            .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
            .kv("llama.context_length", Value::U32(16))
            .kv("llama.vocab_size", Value::U32(3));
        let f32s = |n: u64| vec![0u8; n as usize * 4];
        for (name, dims) in [("token_embd", vec![4, 3]), ("output_norm", vec![4])] {
            w = w.tensor(
                &format!("{name}.weight"),
                &dims,
                GgmlType::F32,
                f32s(dims.iter().product()),
            );
        }
        for (name, dims) in [
            ("attn_norm", vec![4]),
            ("attn_q", vec![4, q_out]),
            ("attn_k", vec![4, 2]),
            ("attn_v", vec![4, 2]),
            ("attn_output", vec![4, 4]),
            ("ffn_norm", vec![4]),
            ("ffn_gate", vec![4, 8]),
            ("ffn_up", vec![4, 8]),
            ("ffn_down", vec![8, 4]),
        ] {
            w = w.tensor(
                &format!("blk.0.{name}.weight"),
                &dims,
                GgmlType::F32,
                f32s(dims.iter().product()),
            );
        }
        w.to_bytes()
    }

    #[test]
    fn reads_a_tiny_llama() {
        let hp = LlamaHparams::from_gguf(&GgufFile::parse(tiny("llama", 1, 4)).unwrap()).unwrap();
        assert_eq!(
            (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim),
            (1, 4, 2, 1, 2)
        );
        assert_eq!(
            (hp.rope_theta, hp.vocab_size, hp.bos_token_id),
            (10_000.0, 3, None)
        );
        assert!(hp.tied_embeddings);
    }

    #[test]
    fn a_block_count_the_file_cannot_hold_is_refused_before_sizing_anything() {
        let mut bytes = tiny("llama", 1, 4);
        // The block count's value: the 4 bytes after its key and type.
        let key = b"llama.block_count";
        let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
        bytes[at..at + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        let err = LlamaHparams::from_gguf(&GgufFile::parse(bytes).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("block_count 2147483647 needs"),
            "{err}"
        );
    }

    #[test]
    fn rejects_other_architectures_and_bad_dims() {
        let err =
            LlamaHparams::from_gguf(&GgufFile::parse(tiny("qwen2", 1, 4)).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported architecture \"qwen2\" (supported: \"llama\")"
        );
        let err =
            LlamaHparams::from_gguf(&GgufFile::parse(tiny("llama", 1, 6)).unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("tensor blk.0.attn_q.weight: dims [4, 6]"),
            "{err}"
        );
        let err =
            LlamaHparams::from_gguf(&GgufFile::parse(tiny("llama", 3, 4)).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("not a multiple of n_head_kv 3"),
            "{err}"
        );
    }

    #[test]
    fn reads_the_real_model_file() {
        let f = GgufFile::open(real_gguf_path()).unwrap();
        let hp = LlamaHparams::from_gguf(&f).unwrap();
        let want = LlamaHparams {
            n_layer: 30,
            n_embd: 576,
            n_ff: 1536,
            n_head: 9,
            n_head_kv: 3,
            head_dim: 64,
            rope_theta: 100_000.0,
            rms_eps: 1e-5,
            vocab_size: 49152,
            context_length: 8192,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            tied_embeddings: true,
        };
        assert_eq!(hp, want);
    }
}
