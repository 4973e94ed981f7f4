//! Training the intent head: multinomial logistic regression with L2 regularisation on the
//! weights, fitted by L-BFGS from zero (deterministic: no random initialisation, no shuffling).
//!
//! The loss and its gradient over the whole training set are one small ONNX graph run by ONNX
//! Runtime (two matrix products of `n × dim × classes`), so training takes seconds on any build
//! profile; the optimiser itself is [`super::lbfgs`].

use super::head::IntentHead;
use super::lbfgs::{LbfgsOptions, Minimum, Stop, minimize};
use crate::error::{Error, Result};
use crate::onnx::session_from_memory;
use crate::onnx::{Attr, Dim, GraphBuilder};
use ort::value::TensorRef;

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// L2 penalty `λ/2·‖W‖²` added to the mean cross-entropy.
    pub l2: f32,
    pub lbfgs: LbfgsOptions,
}

/// A trained head and how the optimisation went.
#[derive(Debug, Clone)]
pub struct Trained {
    pub head: IntentHead,
    pub loss: f64,
    pub iterations: usize,
    pub stop: Stop,
}

/// The graph `(x [n,d], y [n,c] one-hot, w [c,d], b [c]) → (mean cross-entropy, dW, db)`.
fn gradient_graph(n: usize) -> Vec<u8> {
    let mut g = GraphBuilder::new("logistic_regression_gradient");
    let (nd, dd, cd) = (Dim::Named("n"), Dim::Named("d"), Dim::Named("c"));
    let x = g.input_f32("x", &[nd, dd]);
    let y = g.input_f32("y", &[nd, cd]);
    let w = g.input_f32("w", &[cd, dd]);
    let b = g.input_f32("b", &[cd]);
    let logits = g.op("Gemm", "", &[&x, &w, &b], vec![Attr::Int("transB", 1)]);
    let logp = g.op("LogSoftmax", "", &[&logits], vec![Attr::Int("axis", 1)]);
    let picked = g.op("Mul", "", &[&y, &logp], vec![]);
    let total = g.op("ReduceSum", "", &[&picked], vec![Attr::Int("keepdims", 0)]);
    let neg_inv_n = g.init_f32("neg_inv_n", &[], &[-1.0 / n as f32]);
    let loss = g.op("Mul", "", &[&total, &neg_inv_n], vec![]);
    let p = g.op("Exp", "", &[&logp], vec![]);
    let diff = g.op("Sub", "", &[&p, &y], vec![]);
    let inv_n = g.init_f32("inv_n", &[], &[1.0 / n as f32]);
    let gl = g.op("Mul", "", &[&diff, &inv_n], vec![]);
    let dw = g.op("Gemm", "", &[&gl, &x], vec![Attr::Int("transA", 1)]);
    let axis0 = g.init_i64("axis0", &[1], &[0]);
    let db = g.op(
        "ReduceSum",
        "",
        &[&gl, &axis0],
        vec![Attr::Int("keepdims", 0)],
    );
    g.output_f32(&loss, "loss", &[]);
    g.output_f32(&dw, "dw", &[cd, dd]);
    g.output_f32(&db, "db", &[cd]);
    g.finish("mean cross-entropy of a softmax classifier and its gradient")
}

/// Fits a head on `x` (`n × dim`, row-major) with class indices `y`.
pub fn train_head(
    x: &[f32],
    y: &[usize],
    dim: usize,
    classes: usize,
    opts: TrainOptions,
) -> Result<Trained> {
    let n = y.len();
    if n == 0 || x.len() != n * dim {
        return Err(Error::Dataset(format!(
            "{} embedding values do not make {n} rows of {dim}",
            x.len()
        )));
    }
    if let Some(bad) = y.iter().find(|&&c| c >= classes) {
        return Err(Error::Dataset(format!(
            "class {bad} is outside 0..{classes}"
        )));
    }
    let mut onehot = vec![0.0f32; n * classes];
    for (i, &c) in y.iter().enumerate() {
        onehot[i * classes + c] = 1.0;
    }
    let mut session = session_from_memory(&gradient_graph(n))?;
    let wlen = classes * dim;
    let l2 = opts.l2 as f64;
    let objective = |p: &[f32]| -> Result<(f64, Vec<f32>)> {
        let (w, b) = p.split_at(wlen);
        let out = session.run(ort::inputs![
            "x" => TensorRef::from_array_view(([n, dim], x))?,
            "y" => TensorRef::from_array_view(([n, classes], &onehot[..]))?,
            "w" => TensorRef::from_array_view(([classes, dim], w))?,
            "b" => TensorRef::from_array_view(([classes], b))?,
        ])?;
        let loss = out["loss"].try_extract_tensor::<f32>()?.1[0] as f64;
        let mut grad = out["dw"].try_extract_tensor::<f32>()?.1.to_vec();
        grad.extend_from_slice(out["db"].try_extract_tensor::<f32>()?.1);
        let mut penalty = 0.0f64;
        for (gw, wv) in grad[..wlen].iter_mut().zip(w) {
            penalty += (*wv as f64) * (*wv as f64);
            *gw += opts.l2 * wv;
        }
        let value = loss + 0.5 * l2 * penalty;
        if !value.is_finite() {
            return Err(Error::Dataset("training diverged (non-finite loss)".into()));
        }
        Ok((value, grad))
    };
    let Minimum {
        x: params,
        value,
        iterations,
        stop,
        ..
    } = minimize(vec![0.0; wlen + classes], objective, opts.lbfgs)?;
    let (w, b) = params.split_at(wlen);
    Ok(Trained {
        head: IntentHead {
            classes,
            dim,
            weight: w.to_vec(),
            bias: b.to_vec(),
        },
        loss: value,
        iterations,
        stop,
    })
}

/// Share of rows of `x` whose most probable class is `y`.
pub fn accuracy(head: &IntentHead, x: &[f32], y: &[usize]) -> f32 {
    let hits = x
        .chunks_exact(head.dim)
        .zip(y)
        .filter(|(e, c)| argmax(&head.probabilities(e)) == **c)
        .count();
    hits as f32 / y.len().max(1) as f32
}

fn argmax(p: &[f32]) -> usize {
    super::head::top_k(p, 1).first().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_clusters_are_learned() {
        seam_shared::ort_env::init(1).unwrap();
        // Three classes around three directions in 4-d, 30 points each.
        let centers = [
            [1.0, 0.0, 0.0, 0.2],
            [0.0, 1.0, 0.0, 0.2],
            [0.0, 0.0, 1.0, 0.2],
        ];
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..90 {
            let c = i % 3;
            let jitter = ((i * 7919) % 13) as f32 / 13.0 - 0.5;
            for (k, v) in centers[c].iter().enumerate() {
                x.push(v + 0.2 * jitter * if k == c { 1.0 } else { -0.5 });
            }
            y.push(c);
        }
        let opts = TrainOptions {
            l2: 1e-3,
            lbfgs: LbfgsOptions::default(),
        };
        let t = train_head(&x, &y, 4, 3, opts).unwrap();
        assert_eq!(accuracy(&t.head, &x, &y), 1.0);
        assert!(t.loss < 0.3, "loss {}", t.loss);
        // Deterministic: the same data gives the same head.
        let again = train_head(&x, &y, 4, 3, opts).unwrap();
        assert_eq!(t.head, again.head);
    }
}
