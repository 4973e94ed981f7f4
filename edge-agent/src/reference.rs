//! A plainly written f32 llama/qwen2/gemma3 forward pass, used by tests as an independent
//! reference.
//!
//! Every weight is dequantized to f32 once; [`ReferenceModel::logits`] recomputes the whole
//! sequence from scratch (no KV cache), with O(n²) causal attention and plain loops. It is
//! meant to be obviously right, not fast.
//!
//! GGUF stores a linear layer `y = W·x` with dims `[ne0 = in, ne1 = out]`, i.e. row-major
//! `out × in`, so row `o` of the weight is `W[o * in .. (o + 1) * in]`.

use crate::gguf::hparams::LlamaHparams;
use crate::gguf::{GgufFile, Result};

/// Weights of one transformer block, all f32, row-major `out × in`.
struct Layer {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    /// q, k, v biases (qwen2).
    biases: Option<[Vec<f32>; 3]>,
    /// Gemma: per-head q and k norm gains, and the attention-output and MLP-output norm gains.
    gemma: Option<[Vec<f32>; 4]>,
    wo: Vec<f32>,
    ffn_norm: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

/// A llama model with every weight in f32.
pub struct ReferenceModel {
    /// Validated hyperparameters.
    pub hparams: LlamaHparams,
    token_embd: Vec<f32>,
    output: Option<Vec<f32>>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
}

/// Dot product. Unrolled by hand into 8 accumulators only because that runs ~8x faster in
/// unoptimized test builds than an iterator chain; the arithmetic is still a plain sum.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let n = a.len() / 8 * 8;
    let mut acc = [0.0f32; 8];
    let mut i = 0;
    while i < n {
        let (x, y) = (&a[i..i + 8], &b[i..i + 8]);
        acc[0] += x[0] * y[0];
        acc[1] += x[1] * y[1];
        acc[2] += x[2] * y[2];
        acc[3] += x[3] * y[3];
        acc[4] += x[4] * y[4];
        acc[5] += x[5] * y[5];
        acc[6] += x[6] * y[6];
        acc[7] += x[7] * y[7];
        i += 8;
    }
    let tail: f32 = a[n..].iter().zip(&b[n..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `y = W·x` for `W` row-major with rows of `x.len()` elements.
fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks_exact(x.len()).map(|row| dot(row, x)).collect()
}

/// `x / sqrt(mean(x²) + eps) * w`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_sq + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * scale * g).collect()
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh form (as ggml computes it for Gemma).
fn gelu(x: f32) -> f32 {
    let c = (2.0f32 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// How a head's values pair up and turn.
struct RopeSpec<'a> {
    theta: f32,
    /// Linear scaling: positions are multiplied by this.
    scale: f32,
    /// Per-pair frequency divisors (empty: none).
    factors: &'a [f32],
    /// Pairs `(i, i + head_dim/2)` (llama.cpp NEOX rope, qwen2) instead of `(2i, 2i+1)`
    /// (llama.cpp "normal" rope, which GGUF llama Q/K weights are permuted for).
    neox: bool,
}

/// Rotates pair `i` of every head by `pos · scale · theta^(-2i / head_dim) / factor_i`.
fn rope(x: &mut [f32], pos: usize, head_dim: usize, spec: &RopeSpec<'_>) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let mut freq = (spec.theta as f64).powf(-2.0 * i as f64 / head_dim as f64);
            freq *= spec.scale as f64;
            if let Some(&f) = spec.factors.get(i) {
                freq /= f as f64;
            }
            let (sin, cos) = (pos as f64 * freq).sin_cos();
            let (ia, ib) = if spec.neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (a, b) = (head[ia], head[ib]);
            head[ia] = a * cos as f32 - b * sin as f32;
            head[ib] = a * sin as f32 + b * cos as f32;
        }
    }
}

fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

impl ReferenceModel {
    /// Validates the hyperparameters and dequantizes every weight to f32.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let hparams = LlamaHparams::from_gguf(f)?;
        let layers = (0..hparams.n_layer)
            .map(|l| {
                let w = |name: &str| f.tensor_f32(&format!("blk.{l}.{name}.weight"));
                Ok(Layer {
                    attn_norm: w("attn_norm")?,
                    wq: w("attn_q")?,
                    wk: w("attn_k")?,
                    wv: w("attn_v")?,
                    gemma: if hparams.family.gemma() {
                        Some([
                            w("attn_q_norm")?,
                            w("attn_k_norm")?,
                            w("post_attention_norm")?,
                            w("post_ffw_norm")?,
                        ])
                    } else {
                        None
                    },
                    biases: if hparams.family.qkv_bias() {
                        let b = |name: &str| f.tensor_f32(&format!("blk.{l}.{name}.bias"));
                        Some([b("attn_q")?, b("attn_k")?, b("attn_v")?])
                    } else {
                        None
                    },
                    wo: w("attn_output")?,
                    ffn_norm: w("ffn_norm")?,
                    gate: w("ffn_gate")?,
                    up: w("ffn_up")?,
                    down: w("ffn_down")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = if hparams.tied_embeddings {
            None
        } else {
            Some(f.tensor_f32("output.weight")?)
        };
        Ok(Self {
            token_embd: f.tensor_f32("token_embd.weight")?,
            output_norm: f.tensor_f32("output_norm.weight")?,
            output,
            layers,
            hparams,
        })
    }

    /// Logits (length `vocab_size`) for every position of `tokens`, recomputed from scratch.
    ///
    /// # Panics
    /// If a token id is not below `vocab_size`.
    pub fn logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        self.logits_visible(tokens, &|_, _| true)
    }

    /// [`ReferenceModel::logits`] where position `i` attends only to the earlier positions `j`
    /// with `visible(i, j)` (and to itself): the attention of a sliding window, whose dropped
    /// positions a later token no longer sees. Positions (and so the rotary angles) stay those
    /// of `tokens`.
    ///
    /// # Panics
    /// If a token id is not below `vocab_size`.
    pub fn logits_visible(
        &self,
        tokens: &[u32],
        visible: &dyn Fn(usize, usize) -> bool,
    ) -> Vec<Vec<f32>> {
        let hp = &self.hparams;
        let (e, hd) = (hp.n_embd, hp.head_dim);
        let group = hp.n_head / hp.n_head_kv;
        let scale = 1.0 / (hd as f32).sqrt();
        let global = RopeSpec {
            theta: hp.rope_theta,
            scale: hp.rope_freq_scale,
            factors: &hp.rope_freq_factors,
            neox: hp.family.neox_rope(),
        };
        // Gemma 3's local layers: their own base, no scaling.
        let local = RopeSpec {
            theta: hp.rope_theta_swa,
            scale: 1.0,
            factors: &[],
            neox: hp.family.neox_rope(),
        };
        let embed_scale = if hp.family.gemma() {
            (e as f32).sqrt()
        } else {
            1.0
        };
        let per_head_norm = |x: &mut Vec<f32>, w: &[f32]| {
            let normed: Vec<f32> = x
                .chunks_exact(hd)
                .flat_map(|head| rms_norm(head, w, hp.rms_eps))
                .collect();
            *x = normed;
        };
        let add = |mut y: Vec<f32>, b: Option<&Vec<f32>>| {
            if let Some(b) = b {
                y.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
            y
        };
        let mut xs: Vec<Vec<f32>> = tokens
            .iter()
            .map(|&t| {
                let t = t as usize;
                assert!(
                    t < hp.vocab_size,
                    "token id {t} outside vocabulary of {}",
                    hp.vocab_size
                );
                self.token_embd[t * e..(t + 1) * e]
                    .iter()
                    .map(|v| v * embed_scale)
                    .collect()
            })
            .collect();
        for (l, layer) in self.layers.iter().enumerate() {
            let is_local = hp.is_local(l);
            let spec = if is_local { &local } else { &global };
            let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
            for (pos, x) in xs.iter().enumerate() {
                let h = rms_norm(x, &layer.attn_norm, hp.rms_eps);
                let b = layer.biases.as_ref();
                let mut q = add(matvec(&layer.wq, &h), b.map(|b| &b[0]));
                let mut k = add(matvec(&layer.wk, &h), b.map(|b| &b[1]));
                if let Some(g) = &layer.gemma {
                    per_head_norm(&mut q, &g[0]);
                    per_head_norm(&mut k, &g[1]);
                }
                rope(&mut q, pos, hd, spec);
                rope(&mut k, pos, hd, spec);
                qs.push(q);
                ks.push(k);
                vs.push(add(matvec(&layer.wv, &h), b.map(|b| &b[2])));
            }
            for (pos, x) in xs.iter_mut().enumerate() {
                let mut attn = vec![0.0f32; hp.n_head * hd];
                for head in 0..hp.n_head {
                    let kv = head / group;
                    let q = &qs[pos][head * hd..(head + 1) * hd];
                    // A local layer sees the last `sliding_window` positions (llama.cpp's
                    // standard window: pos - j < window).
                    let seen: Vec<usize> = (0..=pos)
                        .filter(|&j| j == pos || visible(pos, j))
                        .filter(|&j| !is_local || pos - j < hp.sliding_window)
                        .collect();
                    let mut scores: Vec<f32> = seen
                        .iter()
                        .map(|&j| dot(q, &ks[j][kv * hd..(kv + 1) * hd]) * scale)
                        .collect();
                    softmax_in_place(&mut scores);
                    let out = &mut attn[head * hd..(head + 1) * hd];
                    for (&j, p) in seen.iter().zip(&scores) {
                        for (o, v) in out.iter_mut().zip(&vs[j][kv * hd..(kv + 1) * hd]) {
                            *o += p * v;
                        }
                    }
                }
                let mut o = matvec(&layer.wo, &attn);
                if let Some(g) = &layer.gemma {
                    o = rms_norm(&o, &g[2], hp.rms_eps);
                }
                for (xi, a) in x.iter_mut().zip(o) {
                    *xi += a;
                }
                let h = rms_norm(x, &layer.ffn_norm, hp.rms_eps);
                let act: Vec<f32> = matvec(&layer.gate, &h)
                    .into_iter()
                    .zip(matvec(&layer.up, &h))
                    .map(|(g, u)| if layer.gemma.is_some() { gelu(g) } else { silu(g) } * u)
                    .collect();
                let mut down = matvec(&layer.down, &act);
                if let Some(g) = &layer.gemma {
                    down = rms_norm(&down, &g[3], hp.rms_eps);
                }
                for (xi, d) in x.iter_mut().zip(down) {
                    *xi += d;
                }
            }
        }
        let head = self.output.as_deref().unwrap_or(&self.token_embd);
        xs.iter()
            .map(|x| matvec(head, &rms_norm(x, &self.output_norm, hp.rms_eps)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::testutil::real_gguf_path;

    #[test]
    fn rope_rotates_pairs_by_position() {
        let plain = RopeSpec {
            theta: 10_000.0,
            scale: 1.0,
            factors: &[],
            neox: false,
        };
        let mut x = vec![1.0, 0.0, 1.0, 0.0];
        rope(&mut x, 0, 4, &plain);
        assert_eq!(x, vec![1.0, 0.0, 1.0, 0.0]);
        rope(&mut x, 1, 4, &plain);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        let a = 0.01f32;
        assert!((x[2] - a.cos()).abs() < 1e-6 && (x[3] - a.sin()).abs() < 1e-6);
        // NEOX pairs value i with i + 2; scaling by 1/2 and a factor of 4 on pair 1.
        let neox = RopeSpec {
            theta: 10_000.0,
            scale: 0.5,
            factors: &[1.0, 4.0],
            neox: true,
        };
        let mut x = vec![1.0, 1.0, 0.0, 0.0];
        rope(&mut x, 2, 4, &neox);
        let b = 0.01f32 / 4.0;
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
        assert!((x[1] - b.cos()).abs() < 1e-6 && (x[3] - b.sin()).abs() < 1e-6);
    }

    #[test]
    fn rms_norm_and_softmax() {
        let y = rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6);
        let mut s = vec![0.0, (2.0f32).ln()];
        softmax_in_place(&mut s);
        assert!((s[0] - 1.0 / 3.0).abs() < 1e-6);
    }

    /// "The capital of France is" under the SmolLM2 tokenizer.
    pub(crate) const FRANCE: [u32; 5] = [504, 3575, 282, 4649, 314];
    const PARIS: u32 = 7042;

    #[test]
    fn real_model_says_paris() {
        let start = std::time::Instant::now();
        let model = ReferenceModel::from_gguf(&GgufFile::open(real_gguf_path()).unwrap()).unwrap();
        eprintln!("load and dequantize took {:?}", start.elapsed());
        let start = std::time::Instant::now();
        let logits = model.logits(&FRANCE);
        let elapsed = start.elapsed();
        assert_eq!(logits.len(), FRANCE.len());
        let last = &logits[FRANCE.len() - 1];
        let mut order: Vec<usize> = (0..last.len()).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let top5: Vec<(usize, f32)> = order[..5].iter().map(|&i| (i, last[i])).collect();
        eprintln!(
            "forward of {} tokens took {elapsed:?}; top-5 {top5:?}",
            FRANCE.len()
        );
        assert_eq!(order[0] as u32, PARIS, "top-5 {top5:?}");
    }
}
