//! Hyperparameters of a llama-family GGUF (`llama`, `qwen2`, `gemma3`), validated against its
//! tensors.

use super::{GgmlType, GgufError, GgufFile, Result};

/// Architectures whose GGUF keys and tensor layout [`LlamaHparams`] understands.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "gemma3"];

/// The decoder families read from `general.architecture`. Both are pre-norm RMSNorm decoders
/// with SwiGLU MLPs and grouped-query attention; they differ where [`Family`]'s methods say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Gemma3,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Gemma3 => "gemma3",
        }
    }

    /// Gemma's layer: RMSNorm of each head's q and k (`attn_q_norm`, `attn_k_norm`), RMSNorm
    /// of the attention and MLP outputs before each joins the residual
    /// (`post_attention_norm`, `post_ffw_norm`), a GELU-gated MLP, and token embeddings scaled
    /// by `sqrt(n_embd)`.
    pub fn gemma(self) -> bool {
        self == Family::Gemma3
    }

    /// The q, k and v projections carry biases (`blk.N.attn_{q,k,v}.bias`).
    pub fn qkv_bias(self) -> bool {
        self == Family::Qwen2
    }

    /// Rotary pairs are the two halves of a head (llama.cpp's NEOX rope), not adjacent values.
    /// llama's converter permutes the q/k rows of its GGUF so that adjacent values pair up;
    /// qwen2's keeps the original rows.
    pub fn neox_rope(self) -> bool {
        matches!(self, Family::Qwen2 | Family::Gemma3)
    }
}

/// Llama hyperparameters read from `<arch>.*` metadata keys.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaHparams {
    /// `general.architecture`.
    pub family: Family,
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
    /// Linear RoPE scaling: positions are multiplied by this (`1 / rope.scaling.factor` when
    /// `rope.scaling.type` is `linear`, else 1).
    pub rope_freq_scale: f32,
    /// Per-pair divisors of the rotary frequencies (`rope_freqs.weight`, `head_dim / 2`
    /// values: how llama.cpp's converter writes Llama 3's RoPE scaling); empty: none.
    pub rope_freq_factors: Vec<f32>,
    /// Sliding-window attention (`attention.sliding_window`, gemma3): local layers see the
    /// last this many positions; 0: every layer sees the whole context.
    pub sliding_window: usize,
    /// Every this many layers, the last is global and the others local (gemma3: 6, or
    /// `attention.sliding_window_pattern`).
    pub swa_pattern: usize,
    /// RoPE base of the local layers (`rope.freq_base_swa`, default 10000).
    pub rope_theta_swa: f32,
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
        let family = match arch {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "gemma3" => Family::Gemma3,
            other => return Err(GgufError::UnsupportedArchitecture(other.to_string())),
        };
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
        let rope_freq_scale = match f.get(&key("rope.scaling.type")) {
            None => 1.0,
            Some(_) => match f.get_str(&key("rope.scaling.type"))? {
                "none" => 1.0,
                "linear" => {
                    let factor = f.get_f32(&key("rope.scaling.factor"))?;
                    if !(factor.is_finite() && factor > 0.0) {
                        return bad(format!(
                            "rope.scaling.factor {factor} must be finite and positive"
                        ));
                    }
                    1.0 / factor
                }
                other => {
                    return bad(format!(
                        "RoPE scaling {other:?} is not supported (supported: \"none\", \"linear\", and Llama 3's rope_freqs.weight)"
                    ));
                }
            },
        };
        let rope_freq_factors = match f.tensor("rope_freqs.weight") {
            Err(_) => Vec::new(),
            Ok(t) => {
                if t.dims != [head_dim as u64 / 2] || t.ty != GgmlType::F32 {
                    return Err(GgufError::BadTensor {
                        name: t.name.clone(),
                        reason: format!(
                            "{} {:?}, expected F32 [{}] (one factor per rotary pair)",
                            t.ty,
                            t.dims,
                            head_dim / 2
                        ),
                    });
                }
                let factors = f.tensor_f32("rope_freqs.weight")?;
                if let Some(v) = factors.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                    return bad(format!(
                        "rope_freqs.weight holds {v}: factors must be finite and positive"
                    ));
                }
                factors
            }
        };
        let (mut sliding_window, mut swa_pattern, mut rope_theta_swa) = (0, 0, rope_theta);
        if family == Family::Gemma3 {
            if let Some(w) = f.get_u32_opt(&key("attention.sliding_window"))? {
                sliding_window = w as usize;
            }
            swa_pattern = match f.get(&key("attention.sliding_window_pattern")) {
                None => 6,
                Some(_) => match f.get_u32(&key("attention.sliding_window_pattern")) {
                    Ok(n) if n > 0 => n as usize,
                    _ => {
                        return bad(
                            "attention.sliding_window_pattern must be a positive integer (per-layer arrays are not supported)"
                                .into(),
                        );
                    }
                },
            };
            rope_theta_swa = match f.get(&key("rope.freq_base_swa")) {
                Some(_) => f.get_f32(&key("rope.freq_base_swa"))?,
                None => 10_000.0,
            };
            if f.get(&key("final_logit_softcapping")).is_some()
                && f.get_f32(&key("final_logit_softcapping"))? != 0.0
            {
                return bad("final logit soft-capping is not supported".into());
            }
        }
        let hp = LlamaHparams {
            family,
            n_layer: usize_of("block_count")?,
            n_embd,
            n_ff: usize_of("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            rope_theta,
            rope_freq_scale,
            rope_freq_factors,
            sliding_window,
            swa_pattern,
            rope_theta_swa,
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
            && hp.rope_theta > 0.0
            && hp.rope_theta_swa.is_finite()
            && hp.rope_theta_swa > 0.0)
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
            if self.family.qkv_bias() {
                for (name, n) in [("attn_q", q), ("attn_k", kv), ("attn_v", kv)] {
                    out.push((format!("blk.{l}.{name}.bias"), vec![n]));
                }
            }
            if self.family.gemma() {
                let hd = self.head_dim as u64;
                for (name, n) in [
                    ("attn_q_norm", hd),
                    ("attn_k_norm", hd),
                    ("post_attention_norm", e),
                    ("post_ffw_norm", e),
                ] {
                    out.push((format!("blk.{l}.{name}.weight"), vec![n]));
                }
            }
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

    /// Whether `layer` attends over a sliding window (and turns with [`Self::rope_theta_swa`]).
    pub fn is_local(&self, layer: usize) -> bool {
        self.sliding_window > 0 && layer % self.swa_pattern < self.swa_pattern - 1
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
        tiny_with(arch, n_head_kv, q_out, |w| w)
    }

    /// A one-layer model of width 4 (2 heads of 2) with zero weights; `extra` adds keys or
    /// tensors. Keys are under `arch` (unknown architectures get llama's).
    fn tiny_with(
        arch: &str,
        n_head_kv: u32,
        q_out: u64,
        extra: impl FnOnce(Writer) -> Writer,
    ) -> Vec<u8> {
        let p = if SUPPORTED_ARCHITECTURES.contains(&arch) {
            arch
        } else {
            "llama"
        };
        let mut w = Writer::default()
            .kv("general.architecture", Value::String(arch.into()))
            .kv(&format!("{p}.block_count"), Value::U32(1))
            .kv(&format!("{p}.embedding_length"), Value::U32(4))
            .kv(&format!("{p}.feed_forward_length"), Value::U32(8))
            .kv(&format!("{p}.attention.head_count"), Value::U32(2))
            .kv(
                &format!("{p}.attention.head_count_kv"),
                Value::U32(n_head_kv),
            )
            .kv(
                &format!("{p}.attention.layer_norm_rms_epsilon"),
                Value::F32(1e-5),
            )
            .kv(&format!("{p}.context_length"), Value::U32(16))
            .kv(&format!("{p}.vocab_size"), Value::U32(3));
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
        extra(w).to_bytes()
    }

    fn qkv_biases(w: Writer) -> Writer {
        w.tensor("blk.0.attn_q.bias", &[4], GgmlType::F32, vec![0; 16])
            .tensor("blk.0.attn_k.bias", &[2], GgmlType::F32, vec![0; 8])
            .tensor("blk.0.attn_v.bias", &[2], GgmlType::F32, vec![0; 8])
    }

    #[test]
    fn reads_a_tiny_qwen2_with_its_biases() {
        let hp = LlamaHparams::from_gguf(
            &GgufFile::parse(tiny_with("qwen2", 1, 4, qkv_biases)).unwrap(),
        )
        .unwrap();
        assert_eq!(hp.family, Family::Qwen2);
        assert!(hp.family.qkv_bias() && hp.family.neox_rope());
        let err =
            LlamaHparams::from_gguf(&GgufFile::parse(tiny("qwen2", 1, 4)).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("blk.0.attn_q.bias"),
            "a qwen2 file without biases: {err}"
        );
    }

    #[test]
    fn reads_rope_scaling() {
        let factors: Vec<u8> = [1.0f32, 8.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        // Two heads of width 2: one rotary pair.
        let hp = LlamaHparams::from_gguf(
            &GgufFile::parse(tiny_with("llama", 1, 4, |w| {
                w.tensor(
                    "rope_freqs.weight",
                    &[1],
                    GgmlType::F32,
                    factors[4..].to_vec(),
                )
                .kv("llama.rope.scaling.type", Value::String("linear".into()))
                .kv("llama.rope.scaling.factor", Value::F32(4.0))
            }))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (hp.rope_freq_scale, hp.rope_freq_factors),
            (0.25, vec![8.0])
        );
        let err = LlamaHparams::from_gguf(
            &GgufFile::parse(tiny_with("llama", 1, 4, |w| {
                w.tensor("rope_freqs.weight", &[2], GgmlType::F32, factors.clone())
            }))
            .unwrap(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("one factor per rotary pair"),
            "{err}"
        );
        let err = LlamaHparams::from_gguf(
            &GgufFile::parse(tiny_with("llama", 1, 4, |w| {
                w.kv("llama.rope.scaling.type", Value::String("yarn".into()))
            }))
            .unwrap(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("RoPE scaling \"yarn\" is not supported"),
            "{err}"
        );
        let err = LlamaHparams::from_gguf(
            &GgufFile::parse(tiny_with("llama", 1, 4, |w| {
                w.tensor(
                    "rope_freqs.weight",
                    &[1],
                    GgmlType::F32,
                    0f32.to_le_bytes().to_vec(),
                )
            }))
            .unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("finite and positive"), "{err}");
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
            LlamaHparams::from_gguf(&GgufFile::parse(tiny("mamba", 1, 4)).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported architecture \"mamba\" (supported: \"llama\", \"qwen2\", \"gemma3\")"
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
            family: Family::Llama,
            n_layer: 30,
            n_embd: 576,
            n_ff: 1536,
            n_head: 9,
            n_head_kv: 3,
            head_dim: 64,
            rope_theta: 100_000.0,
            rope_freq_scale: 1.0,
            rope_freq_factors: Vec::new(),
            sliding_window: 0,
            swa_pattern: 0,
            rope_theta_swa: 100_000.0,
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
