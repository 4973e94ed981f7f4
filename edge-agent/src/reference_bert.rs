//! A plainly written f32 BERT sentence encoder, used by tests as an independent reference for
//! the ONNX encoder graph: one text at a time (no padding, no mask), straight from the
//! checkpoint's weights, with loops anyone can check against the BERT paper and
//! sentence-transformers' mean pooling.

use crate::bert::{BertLayer, BertWeights};

/// Dot product with 8 accumulators (quick in unoptimised test builds; still a plain sum).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len() / 8 * 8;
    let mut acc = [0.0f32; 8];
    let mut i = 0;
    while i < n {
        for (j, acc) in acc.iter_mut().enumerate() {
            *acc += a[i + j] * b[i + j];
        }
        i += 8;
    }
    let tail: f32 = a[n..].iter().zip(&b[n..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `x·Wᵀ + b` for every row of `x` (`rows × in`), `w` PyTorch-style `[out, in]`.
fn linear(x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let out = b.len();
    let inp = w.len() / out;
    x.chunks_exact(inp)
        .flat_map(|row| {
            w.chunks_exact(inp)
                .zip(b)
                .map(|(wr, bias)| dot(row, wr) + bias)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn layer_norm(x: &mut [f32], g: &[f32], b: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(g.len()) {
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, gg), bb) in row.iter_mut().zip(g).zip(b) {
            *v = (*v - mean) * inv * gg + bb;
        }
    }
}

/// The exact (erf) GELU, computed in f64.
fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
}

/// erf by its Taylor series for |x| < 3, else by the asymptotic complement (f64, accurate far
/// beyond f32).
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        // erf(x) = 2/sqrt(pi) Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let mut term = a;
        let mut sum = a;
        let x2 = a * a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(x) ≈ exp(-x²)/(x√π) (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶))
        let x2 = a * a;
        let series = 1.0 - 1.0 / (2.0 * x2) + 3.0 / (4.0 * x2 * x2) - 15.0 / (8.0 * x2 * x2 * x2);
        1.0 - (-x2).exp() / (a * std::f64::consts::PI.sqrt()) * series
    };
    if x < 0.0 { -r } else { r }
}

fn attention(x: &[f32], l: &BertLayer, s: usize, heads: usize) -> Vec<f32> {
    let h = l.q_b.len();
    let hd = h / heads;
    let q = linear(x, &l.q_w, &l.q_b);
    let k = linear(x, &l.k_w, &l.k_b);
    let v = linear(x, &l.v_w, &l.v_b);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut ctx = vec![0.0f32; s * h];
    for head in 0..heads {
        let off = head * hd;
        for i in 0..s {
            let qi = &q[i * h + off..i * h + off + hd];
            let scores: Vec<f32> = (0..s)
                .map(|j| dot(qi, &k[j * h + off..j * h + off + hd]) * scale)
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            for (j, p) in e.iter().enumerate() {
                for d in 0..hd {
                    ctx[i * h + off + d] += p / sum * v[j * h + off + d];
                }
            }
        }
    }
    linear(&ctx, &l.o_w, &l.o_b)
}

/// The sentence embedding of `ids` (with `[CLS]`/`[SEP]`): BERT, mean over all tokens, L2 norm.
pub fn embed(w: &BertWeights, ids: &[u32]) -> Vec<f32> {
    let c = &w.config;
    let h = c.hidden_size;
    let s = ids.len();
    let mut x = Vec::with_capacity(s * h);
    for (p, &t) in ids.iter().enumerate() {
        let word = &w.word[t as usize * h..(t as usize + 1) * h];
        let pos = &w.position[p * h..(p + 1) * h];
        let ty = &w.token_type[..h];
        x.extend((0..h).map(|i| word[i] + pos[i] + ty[i]));
    }
    layer_norm(&mut x, &w.emb_ln_g, &w.emb_ln_b, c.layer_norm_eps);
    for l in &w.layers {
        let a = attention(&x, l, s, c.num_attention_heads);
        x.iter_mut().zip(&a).for_each(|(v, d)| *v += d);
        layer_norm(&mut x, &l.ln1_g, &l.ln1_b, c.layer_norm_eps);
        let mut up = linear(&x, &l.up_w, &l.up_b);
        up.iter_mut().for_each(|v| *v = gelu(*v));
        let down = linear(&up, &l.down_w, &l.down_b);
        x.iter_mut().zip(&down).for_each(|(v, d)| *v += d);
        layer_norm(&mut x, &l.ln2_g, &l.ln2_b, c.layer_norm_eps);
    }
    let mut mean = vec![0.0f32; h];
    for row in x.chunks_exact(h) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, v)| *m += v / s as f32);
    }
    let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    mean.iter().map(|v| v / norm).collect()
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        ab += *x as f64 * *y as f64;
        aa += *x as f64 * *x as f64;
        bb += *y as f64 * *y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-300)
}

#[cfg(test)]
mod tests {
    use super::erf;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (-1.5, -0.966_105_146_475_310_7),
            (3.5, 0.999_999_256_901_627_7),
        ] {
            assert!((erf(x) - want).abs() < 1e-9, "erf({x}) = {}", erf(x));
        }
    }
}
