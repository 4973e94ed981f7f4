//! The draft head as one ONNX graph: the trained MLP (its weights quantized to 8 bits), then the
//! model's own final norm and the 8-bit LM-head rows of the shortlist. Inputs and outputs are named by [`io`].

use super::mlp::{MlpWeights, UNIT_EPS};
use crate::import::graphs::{Dims, act, q8_matmul, rms_norm};
use crate::import::linear::Q8Linear;
use crate::onnx::{Attr, GraphBuilder};

/// Names of the drafter graph's inputs and outputs, shared with the runtime.
pub mod io {
    /// Final-layer state of the previous position, `[S, n_embd]` (any scale).
    pub const FEATURE: &str = "feature";
    /// Embedding of the current token, `[S, n_embd]`.
    pub const EMBED: &str = "embed";
    /// Estimate of the current position's final-layer state, `[S, n_embd]`.
    pub const FEATURE_OUT: &str = "feature_out";
    /// Draft logits over the shortlist, `[S, shortlist]`.
    pub const LOGITS: &str = "logits";
}

/// The graph of `head` reading out through `output_norm` and the shortlist rows `rows` of the
/// LM head.
pub fn drafter_graph(head: &MlpWeights, output_norm: &[f32], rows: &Q8Linear, d: Dims) -> Vec<u8> {
    let (n, h) = (head.d, head.hidden);
    let mut g = GraphBuilder::new("drafter");
    let feature = g.input_f32(io::FEATURE, &act(n));
    let embed = g.input_f32(io::EMBED, &act(n));
    let ones = vec![1.0f32; n];
    let a = rms_norm(&mut g, &feature, &ones, UNIT_EPS as f32);
    let e = rms_norm(&mut g, &embed, &ones, UNIT_EPS as f32);
    let x = g.op("Concat", "", &[&a, &e], vec![Attr::Int("axis", 1)]);
    // The MLP's weights in 8 bits (a quarter of the bytes read per draft); see
    // `Q8Linear::quantize`.
    let level = d.accuracy_level;
    let w_in = Q8Linear::quantize(&head.w_in, 2 * n, n);
    let b_in = g.init_f32("b_in", &[n as i64], &head.b_in);
    let xw = q8_matmul(&mut g, &x, &w_in, "w_in", level);
    let z = g.op("Add", "", &[&xw, &b_in], vec![]);
    let m = rms_norm(&mut g, &z, &ones, UNIT_EPS as f32);
    let w_gate = Q8Linear::quantize(&head.w_gate, n, h);
    let w_up = Q8Linear::quantize(&head.w_up, n, h);
    let w_down = Q8Linear::quantize(&head.w_down, h, n);
    let gate = q8_matmul(&mut g, &m, &w_gate, "w_gate", level);
    let sig = g.op("Sigmoid", "", &[&gate], vec![]);
    let silu = g.op("Mul", "", &[&gate, &sig], vec![]);
    let up = q8_matmul(&mut g, &m, &w_up, "w_up", level);
    let prod = g.op("Mul", "", &[&silu, &up], vec![]);
    let down = q8_matmul(&mut g, &prod, &w_down, "w_down", level);
    let y = g.op("Add", "", &[&down, &z], vec![]);
    g.output_f32(&y, io::FEATURE_OUT, &act(n));
    let normed = rms_norm(&mut g, &y, output_norm, d.eps);
    let logits = q8_matmul(&mut g, &normed, rows, "shortlist", d.accuracy_level);
    g.output_f32(&logits, io::LOGITS, &act(rows.n));
    g.finish("draft head: MLP over [previous feature, token embedding], final norm, shortlist head")
}
