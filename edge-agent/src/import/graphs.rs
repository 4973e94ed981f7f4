//! The ONNX graphs of a llama decoder, cut at attention.
//!
//! Attention runs in Rust over the int8 KV cache, so ONNX Runtime computes everything between
//! two attentions: the tail of one layer (output projection, residual, MLP) and the head of the
//! next (RMSNorm, packed q|k|v projection). Graph inputs and outputs are named by [`io`].

use super::linear::{BLOCK, Linear, Q4Linear, Q8Linear};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::{Attr, Dim, ExternalData, GraphBuilder, MS_DOMAIN, qmatmul, skip_norm};
use seam_shared::package::head_table_layout;

/// Names of graph inputs and outputs, shared with the runtime.
pub mod io {
    /// Hidden state entering a segment, `[S, n_embd]` (input of a segment's first graph and
    /// of the head).
    pub const HIDDEN: &str = "hidden";
    /// Residual stream before the previous layer's attention, `[S, n_embd]`.
    pub const RESIDUAL: &str = "residual";
    /// Attention output of the previous layer before its output projection,
    /// `[S, n_head·head_dim]`.
    pub const ATTN: &str = "attn";
    /// Packed q|k|v projections of a layer, `[S, (n_head + 2·n_head_kv)·head_dim]`.
    pub const QKV: &str = "qkv";
    /// Residual stream entering the next layer, `[S, n_embd]`.
    pub const RESIDUAL_OUT: &str = "residual_out";
    /// Hidden state leaving a segment, `[S, n_embd]`.
    pub const HIDDEN_OUT: &str = "hidden_out";
    /// Logits, `[S, vocab]`.
    pub const LOGITS: &str = "logits";
}

/// Weights of one decoder layer. A projection of several parts (q|k|v, gate|up) is stacked
/// into one matmul per run of parts of one kind ([`Linear::fuse`]): one for a file of one type.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    /// q|k|v.
    pub qkv: Vec<Linear>,
    /// Biases of q|k|v (qwen2), added after the projection.
    pub qkv_bias: Option<Vec<f32>>,
    /// RMSNorm gains of each head's q and of each head's k (gemma), after the projection.
    pub qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// RMSNorm gains of the attention output and of the MLP output before each joins the
    /// residual stream (gemma).
    pub post_norms: Option<(Vec<f32>, Vec<f32>)>,
    pub o: Linear,
    /// gate|up.
    pub gate_up: Vec<Linear>,
    pub down: Linear,
}

/// Dimensions the graphs need.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub n_embd: usize,
    pub n_ff: usize,
    pub qkv: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// The MLP's gate is GELU (tanh form, gemma) rather than SiLU.
    pub gelu: bool,
    pub vocab: usize,
    pub eps: f32,
    /// MatMulNBits `accuracy_level`: 4 = int8 activations (fast), 0 = f32 (exact).
    pub accuracy_level: i64,
}

pub(crate) const SEQ: Dim = Dim::Named("seq");

/// Activations are 2-D `[S, d]` so that `Gemm` can fold each Q4_1 correction into one node.
pub(crate) fn act(d: usize) -> [Dim; 2] {
    [SEQ, Dim::Fixed(d as i64)]
}

/// `y = W·x` for a 4-bit layer with `MatMulNBits` plus the block-sum correction, folded by one
/// `Gemm(sums, C, W_q·x)`; `sums` are the block sums of `x` ([`block_sums`]).
fn q4_matmul(
    g: &mut GraphBuilder,
    x: &str,
    sums: &str,
    w: &Q4Linear,
    stem: &str,
    level: i64,
) -> String {
    let nb = (w.k / BLOCK) as i64;
    let b = g.init_u8(
        &format!("{stem}_q"),
        &[w.n as i64, nb, (BLOCK / 2) as i64],
        w.packed.clone(),
    );
    let s = g.init_f32(&format!("{stem}_d"), &[w.n as i64 * nb], &w.scales);
    let c = g.init_f32(&format!("{stem}_c"), &[nb, w.n as i64], &w.correction_t());
    let mm = nbits(g, x, &b, &s, w.k, w.n, level);
    g.op("Gemm", "", &[sums, &c, &mm], vec![])
}

/// 4-bit `MatMulNBits` without zero points (the kernel's default zero point 8).
fn nbits(
    g: &mut GraphBuilder,
    x: &str,
    b: &str,
    s: &str,
    k: usize,
    n: usize,
    level: i64,
) -> String {
    g.op(
        "MatMulNBits",
        MS_DOMAIN,
        &[x, b, s],
        vec![
            Attr::Int("K", k as i64),
            Attr::Int("N", n as i64),
            Attr::Int("bits", 4),
            Attr::Int("block_size", BLOCK as i64),
            Attr::Int("accuracy_level", level),
        ],
    )
}

/// Sums of `x` over each block of 32 features, `[S, k] → [S, k/32]`, as one 4-bit
/// `MatMulNBits` whose row `b` is 1 on block `b` and 0 elsewhere (codes 9 and 8 with scale 1,
/// both exact). It sees `x` exactly as the weight's own `MatMulNBits` does (quantized to int8
/// per block at `accuracy_level` 4), so `W_q·x + C·sums` is the Q4_1 product of that same `x`
/// — what llama.cpp computes with its Q8_1 activations — in one node instead of a reshape and a
/// reduction.
fn block_sums(g: &mut GraphBuilder, x: &str, k: usize, level: i64) -> String {
    let nb = k / BLOCK;
    let half = BLOCK / 2;
    let mut packed = vec![0x88u8; nb * nb * half];
    for r in 0..nb {
        packed[(r * nb + r) * half..][..half].fill(0x99);
    }
    let b = g.init_u8("blocks_q", &[nb as i64, nb as i64, half as i64], packed);
    let s = g.init_f32("blocks_d", &[(nb * nb) as i64], &vec![1.0; nb * nb]);
    nbits(g, x, &b, &s, k, nb, level)
}

pub(crate) fn rms_norm(g: &mut GraphBuilder, x: &str, w: &[f32], eps: f32) -> String {
    let gamma = g.init_f32("norm_w", &[w.len() as i64], w);
    g.op(
        "SimplifiedLayerNormalization",
        "",
        &[x, &gamma],
        vec![
            Attr::Int("axis", -1),
            Attr::Float("epsilon", eps),
            Attr::Int("stash_type", 1),
        ],
    )
}

/// `(norm(x + skip), x + skip)` in one node: Seam's `SkipRmsNorm` in int8-compute graphs
/// (about four times as fast), ONNX Runtime's own in f32-compute ones (`level` 0, the reference
/// function of the file).
fn skip_rms_norm(
    g: &mut GraphBuilder,
    x: &str,
    skip: &str,
    w: &[f32],
    (eps, level): (f32, i64),
) -> (String, String) {
    let gamma = g.init_f32("norm_w", &[w.len() as i64], w);
    if level != 0 {
        return skip_norm::node(g, x, skip, &gamma, eps);
    }
    let normed = g.fresh("normed");
    let sum = g.fresh("residual");
    g.node(
        "SkipSimplifiedLayerNormalization",
        MS_DOMAIN,
        &[x, skip, &gamma],
        &[&normed, "", "", &sum],
        vec![Attr::Float("epsilon", eps)],
    );
    (normed, sum)
}

/// `y = W·x` for the parts of one projection, concatenated; the block sums of `x` (`k`
/// inputs) are computed once if a part needs them. With int8 activations, 4- and 5-bit parts
/// run on Seam's `QMatMul` ([`qmatmul`]) where their blocks fit it; the rest, and every part of
/// f32-compute graphs (`level` 0), on `MatMulNBits` with exact corrections.
fn project(
    g: &mut GraphBuilder,
    x: &str,
    k: usize,
    parts: &[Linear],
    stem: &str,
    level: i64,
) -> String {
    let own: Vec<_> = parts
        .iter()
        .map(|p| match p {
            _ if level == 0 => None,
            Linear::Q4(w) => w.blocks(),
            Linear::Q8(w) => w.blocks(),
            Linear::F32(_) => None,
        })
        .collect();
    let needs_sums = parts.iter().zip(&own).any(|(p, own)| {
        own.is_none()
            && match p {
                Linear::Q4(_) => true,
                Linear::Q8(l) => l.mins.is_some(),
                Linear::F32(_) => false,
            }
    });
    let sums = needs_sums.then(|| block_sums(g, x, k, level));
    let outs: Vec<String> = parts
        .iter()
        .zip(own)
        .enumerate()
        .map(|(i, (p, own))| {
            let stem = if parts.len() == 1 {
                stem.to_string()
            } else {
                format!("{stem}{i}")
            };
            if let Some((format, blocks)) = own {
                let len = blocks.len() as i64;
                let b = g.init_u8(&format!("{stem}_blocks"), &[len], blocks);
                return qmatmul::node(g, x, &b, k, p.n(), format);
            }
            match p {
                Linear::Q4(w) => q4_matmul(g, x, sums.as_deref().expect("sums"), w, &stem, level),
                Linear::F32(w) => {
                    let t = g.init_f32(
                        &format!("{stem}_w"),
                        &[w.k as i64, w.n as i64],
                        &w.transposed(),
                    );
                    g.op("MatMul", "", &[x, &t], vec![])
                }
                Linear::Q8(w) => {
                    let mm = q8_matmul(g, x, w, &stem, level);
                    match w.mins_t() {
                        Some(c) => {
                            let nb = (w.k / BLOCK) as i64;
                            let c = g.init_f32(&format!("{stem}_m"), &[nb, w.n as i64], &c);
                            g.op(
                                "Gemm",
                                "",
                                &[sums.as_deref().expect("sums"), &c, &mm],
                                vec![],
                            )
                        }
                        None => mm,
                    }
                }
            }
        })
        .collect();
    if outs.len() == 1 {
        return outs.into_iter().next().expect("one part");
    }
    let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
    g.op("Concat", "", &refs, vec![Attr::Int("axis", -1)])
}

/// The gated feed-forward product `act(x·Gᵀ)·(x·Uᵀ)` of `layer` on the (normed) `x`.
///
/// With the blocks in `QMatMul`'s formats, SiLU models get one gated node (`glu`), which writes
/// only the product: the gate and up outputs it spares were each written, then read by a
/// `Sigmoid`/`Mul` pair ONNX Runtime fuses into `QuickGelu` and a `Mul`, about 3 ms a layer of a
/// 512-token prefill. GELU models get two nodes over the halves of the blocks (gate's columns
/// first, whole groups of 8): one node over both would need a `Split` after it, which ONNX
/// Runtime ran 15× slower than after `MatMulNBits`.
fn gated(g: &mut GraphBuilder, x: &str, layer: &LayerWeights, d: Dims) -> String {
    let own = match &layer.gate_up[..] {
        _ if d.accuracy_level == 0 || !d.n_ff.is_multiple_of(seam_kernels::qmatmul::GROUP) => None,
        [Linear::Q4(w)] => w.blocks(),
        [Linear::Q8(w)] => w.blocks(),
        _ => None,
    };
    let (gate, up) = match own {
        Some((format, blocks)) if !d.gelu => {
            let b = g.init_u8("gate_up_blocks", &[blocks.len() as i64], blocks);
            return qmatmul::glu_node(g, x, &b, d.n_embd, d.n_ff, format);
        }
        Some((format, blocks)) => {
            let (gate, up) = blocks.split_at(blocks.len() / 2);
            let mut half = |stem: &str, bytes: &[u8]| {
                let b = g.init_u8(stem, &[bytes.len() as i64], bytes.to_vec());
                qmatmul::node(g, x, &b, d.n_embd, d.n_ff, format)
            };
            (half("gate_blocks", gate), half("up_blocks", up))
        }
        None => {
            let gu = project(g, x, d.n_embd, &layer.gate_up, "gate_up", d.accuracy_level);
            let split = g.init_i64("split", &[2], &[d.n_ff as i64, d.n_ff as i64]);
            let (gate, up) = (g.fresh("gate"), g.fresh("up"));
            g.node(
                "Split",
                "",
                &[&gu, &split],
                &[&gate, &up],
                vec![Attr::Int("axis", -1)],
            );
            (gate, up)
        }
    };
    let act = if d.gelu {
        // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as ggml's GELU.
        g.op("FastGelu", MS_DOMAIN, &[&gate], vec![])
    } else {
        let sig = g.op("Sigmoid", "", &[&gate], vec![]);
        g.op("Mul", "", &[&gate, &sig], vec![])
    };
    g.op("Mul", "", &[&act, &up], vec![])
}

/// The qkv projection of `layer` on the (normed) `x`.
fn qkv(g: &mut GraphBuilder, x: &str, layer: &LayerWeights, d: Dims) -> String {
    let mut y = project(g, x, d.n_embd, &layer.qkv, "qkv", d.accuracy_level);
    if let Some(b) = &layer.qkv_bias {
        let b = g.init_f32("qkv_b", &[b.len() as i64], b);
        y = g.op("Add", "", &[&y, &b], vec![]);
    }
    if let Some((qn, kn)) = &layer.qk_norm {
        let (qw, kw) = (d.n_head * d.head_dim, d.n_head_kv * d.head_dim);
        let split = g.init_i64("qkv_split", &[3], &[qw as i64, kw as i64, kw as i64]);
        let (q, k, v) = (g.fresh("q"), g.fresh("k"), g.fresh("v"));
        g.node(
            "Split",
            "",
            &[&y, &split],
            &[&q, &k, &v],
            vec![Attr::Int("axis", -1)],
        );
        let q = head_norm(g, &q, d.n_head, qn, d);
        let k = head_norm(g, &k, d.n_head_kv, kn, d);
        y = g.op("Concat", "", &[&q, &k, &v], vec![Attr::Int("axis", -1)]);
    }
    y
}

/// RMSNorm over each head of `x` (`[S, heads·head_dim]`) with the gains `w` (`[head_dim]`).
fn head_norm(g: &mut GraphBuilder, x: &str, heads: usize, w: &[f32], d: Dims) -> String {
    let by_head = g.init_i64("heads", &[3], &[0, heads as i64, d.head_dim as i64]);
    let x3 = g.op("Reshape", "", &[x, &by_head], vec![]);
    let normed = rms_norm(g, &x3, w, d.eps);
    let flat = g.init_i64("rows", &[2], &[0, (heads * d.head_dim) as i64]);
    g.op("Reshape", "", &[&normed, &flat], vec![])
}

/// Output projection, residual, MLP of `layer`; returns `(mlp_out, residual_mid)` whose sum is
/// the residual stream leaving the layer.
fn layer_tail(
    g: &mut GraphBuilder,
    residual: &str,
    attn: &str,
    layer: &LayerWeights,
    d: Dims,
) -> (String, String) {
    let level = d.accuracy_level;
    let mut o = project(
        g,
        attn,
        d.n_head * d.head_dim,
        std::slice::from_ref(&layer.o),
        "o",
        level,
    );
    if let Some((post_attn, _)) = &layer.post_norms {
        o = rms_norm(g, &o, post_attn, d.eps);
    }
    let (x, mid) = skip_rms_norm(g, &o, residual, &layer.ffn_norm, (d.eps, d.accuracy_level));
    let h = gated(g, &x, layer, d);
    let mut down = project(
        g,
        &h,
        d.n_ff,
        std::slice::from_ref(&layer.down),
        "down",
        level,
    );
    if let Some((_, post_ffn)) = &layer.post_norms {
        down = rms_norm(g, &down, post_ffn, d.eps);
    }
    (down, mid)
}

/// First graph of a segment: `hidden → qkv` of `layer`.
pub fn pre_graph(layer: &LayerWeights, index: usize, d: Dims) -> Vec<u8> {
    let mut g = GraphBuilder::new(format!("pre_{index}"));
    let h = g.input_f32(io::HIDDEN, &act(d.n_embd));
    let x = rms_norm(&mut g, &h, &layer.attn_norm, d.eps);
    let q = qkv(&mut g, &x, layer, d);
    g.output_f32(&q, io::QKV, &act(d.qkv));
    g.finish(&format!(
        "layer {index}: attention norm and q|k|v projection"
    ))
}

/// Middle graph: finishes `prev` (layer `index − 1`) and starts `next` (layer `index`):
/// `(residual, attn) → (residual_out, qkv)`.
pub fn mid_graph(prev: &LayerWeights, next: &LayerWeights, index: usize, d: Dims) -> Vec<u8> {
    let mut g = GraphBuilder::new(format!("mid_{index}"));
    let residual = g.input_f32(io::RESIDUAL, &act(d.n_embd));
    let attn = g.input_f32(io::ATTN, &act(d.n_head * d.head_dim));
    let (down, mid) = layer_tail(&mut g, &residual, &attn, prev, d);
    let (x, out) = skip_rms_norm(
        &mut g,
        &down,
        &mid,
        &next.attn_norm,
        (d.eps, d.accuracy_level),
    );
    let q = qkv(&mut g, &x, next, d);
    g.output_f32(&out, io::RESIDUAL_OUT, &act(d.n_embd));
    g.output_f32(&q, io::QKV, &act(d.qkv));
    g.finish(&format!(
        "end of layer {} and start of layer {index}",
        index - 1
    ))
}

/// Last graph of a segment: finishes layer `index`: `(residual, attn) → hidden_out`.
pub fn post_graph(layer: &LayerWeights, index: usize, d: Dims) -> Vec<u8> {
    let mut g = GraphBuilder::new(format!("post_{index}"));
    let residual = g.input_f32(io::RESIDUAL, &act(d.n_embd));
    let attn = g.input_f32(io::ATTN, &act(d.n_head * d.head_dim));
    let (down, mid) = layer_tail(&mut g, &residual, &attn, layer, d);
    let out = g.op("Add", "", &[&down, &mid], vec![]);
    g.output_f32(&out, io::HIDDEN_OUT, &act(d.n_embd));
    g.finish(&format!("end of layer {index}"))
}

/// Final RMSNorm and the LM head (8-bit, an untied 5- or 6-bit head on `QMatMul` like a layer, or f32
/// for a float head): `hidden → logits`. With
/// `table`, the 8-bit head's weights are that file beside the graph, laid out by
/// [`head_table_layout`] (the tied embedding reads the same file), instead of inside it.
pub fn head_graph(output_norm: &[f32], head: &Linear, d: Dims, table: Option<&str>) -> Vec<u8> {
    let mut g = GraphBuilder::new("head");
    let h = g.input_f32(io::HIDDEN, &act(d.n_embd));
    let x = rms_norm(&mut g, &h, output_norm, d.eps);
    let logits = match (table, head) {
        (Some(location), Linear::Q8(w)) => {
            let (quants, scales) = head_table_layout(w.n, w.k, w.block);
            let nb = (w.k / w.block) as i64;
            let at = |range| ExternalData {
                location: location.to_string(),
                range,
            };
            let b = g.init_external(
                "head_q",
                &[w.n as i64, nb, w.block as i64],
                DataType::Uint8,
                &at(quants),
            );
            let s = g.init_external("head_d", &[w.n as i64 * nb], DataType::Float, &at(scales));
            nbits8(&mut g, &x, (&b, &s), (w.n, w.k, w.block), d.accuracy_level)
        }
        _ => project(
            &mut g,
            &x,
            d.n_embd,
            std::slice::from_ref(head),
            "head",
            d.accuracy_level,
        ),
    };
    g.output_f32(&logits, io::LOGITS, &act(d.vocab));
    g.finish("final norm and LM head")
}

/// `y = W·x` for a Q8_0 weight: 8-bit `MatMulNBits` with its default zero point 128.
pub(crate) fn q8_matmul(
    g: &mut GraphBuilder,
    x: &str,
    w: &Q8Linear,
    stem: &str,
    level: i64,
) -> String {
    let nb = (w.k / w.block) as i64;
    let b = g.init_u8(
        &format!("{stem}_q"),
        &[w.n as i64, nb, w.block as i64],
        w.packed.clone(),
    );
    let s = g.init_f32(&format!("{stem}_d"), &[w.n as i64 * nb], &w.scales);
    nbits8(g, x, (&b, &s), (w.n, w.k, w.block), level)
}

/// 8-bit `MatMulNBits` of `x` with the weight initializers `b` (quants) and `s` (scales) of an
/// `n × k` weight in blocks of `block`.
fn nbits8(
    g: &mut GraphBuilder,
    x: &str,
    (b, s): (&str, &str),
    (n, k, block): (usize, usize, usize),
    level: i64,
) -> String {
    g.op(
        "MatMulNBits",
        MS_DOMAIN,
        &[x, b, s],
        vec![
            Attr::Int("K", k as i64),
            Attr::Int("N", n as i64),
            Attr::Int("bits", 8),
            Attr::Int("block_size", block as i64),
            Attr::Int("accuracy_level", level),
        ],
    )
}

/// The bytes of `w`'s table in the layout of [`head_table_layout`].
pub fn head_table_bytes(w: &Q8Linear) -> Vec<u8> {
    let (quants, scales) = head_table_layout(w.n, w.k, w.block);
    let mut bytes = vec![0u8; scales.end];
    bytes[quants].copy_from_slice(&w.packed);
    for (dst, s) in bytes[scales].chunks_exact_mut(4).zip(&w.scales) {
        dst.copy_from_slice(&s.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::session_from_memory;
    use ort::value::TensorRef;

    /// Runs [`block_sums`] alone on `x` (`[rows, k]`).
    fn run_block_sums(x: &[f32], rows: usize, k: usize, level: i64) -> Vec<f32> {
        seam_shared::ort_env::init(1).unwrap();
        let mut g = GraphBuilder::new("sums");
        let input = g.input_f32("x", &act(k));
        let sums = block_sums(&mut g, &input, k, level);
        g.output_f32(&sums, "sums", &act(k / BLOCK));
        let mut session = session_from_memory(&g.finish("block sums")).unwrap();
        let out = session
            .run(ort::inputs!["x" => TensorRef::from_array_view(([rows, k], x)).unwrap()])
            .unwrap();
        out["sums"].try_extract_tensor::<f32>().unwrap().1.to_vec()
    }

    /// Sums of every block of 32 of `x`, rows after rows (`[rows, k/32]`).
    fn plain_sums(x: &[f32]) -> Vec<f32> {
        x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect()
    }

    #[test]
    fn block_sum_selector_sums_each_block_and_nothing_else() {
        let (rows, k) = (3, 6 * BLOCK);
        // Distinct magnitudes per block, so a weight leaking into another block shows.
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01 * (1 + (i % k) / BLOCK) as f32)
            .collect();
        let expected = plain_sums(&x);
        let exact = run_block_sums(&x, rows, k, 0);
        assert_eq!(exact.len(), expected.len());
        for (got, want) in exact.iter().zip(&expected) {
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{got} vs {want}"
            );
        }
        // With int8 activations the sums are those of the quantized x: within one int8 step
        // (max|x_block| / 127) times 32 of the exact ones.
        let fast = run_block_sums(&x, rows, k, 4);
        for (b, (got, want)) in fast.iter().zip(&expected).enumerate() {
            let block = &x[b * BLOCK..][..BLOCK];
            let step = block.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            assert!(
                (got - want).abs() <= step * BLOCK as f32 / 2.0 + 1e-5,
                "{got} vs {want}"
            );
        }
    }
}
