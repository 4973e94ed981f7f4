//! The intent head: multinomial logistic regression over a sentence embedding,
//! `p = softmax(W·e + b)`, stored in the package as safetensors (`weight` `[classes, dim]`,
//! `bias` `[classes]`, f32).

use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// A linear softmax classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct IntentHead {
    pub classes: usize,
    pub dim: usize,
    /// Row-major `[classes, dim]`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl IntentHead {
    /// Class probabilities of one embedding.
    pub fn probabilities(&self, e: &[f32]) -> Vec<f32> {
        debug_assert_eq!(e.len(), self.dim);
        let logits: Vec<f32> = self
            .weight
            .chunks_exact(self.dim)
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(e).map(|(w, x)| w * x).sum::<f32>() + b)
            .collect();
        softmax(&logits)
    }

    /// The safetensors bytes of the head.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let w: Vec<u8> = self.weight.iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> = self.bias.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bad = |e: safetensors::SafeTensorError| Error::Package(e.to_string());
        let tensors = vec![
            (
                "bias",
                TensorView::new(Dtype::F32, vec![self.classes], &b).map_err(bad)?,
            ),
            (
                "weight",
                TensorView::new(Dtype::F32, vec![self.classes, self.dim], &w).map_err(bad)?,
            ),
        ];
        safetensors::serialize(tensors, None).map_err(|e| Error::Package(e.to_string()))
    }

    /// Reads a head of `classes × dim` from safetensors bytes.
    pub fn from_bytes(bytes: &[u8], classes: usize, dim: usize) -> Result<Self> {
        let bad = |m: String| Error::Package(format!("intent head: {m}"));
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor `{name}` is missing")))?;
            if t.dtype() != Dtype::F32 || t.shape() != shape {
                return Err(bad(format!(
                    "`{name}` is {:?} {:?}, expected F32 {shape:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!("`{name}` has non-finite values")));
            }
            Ok(v)
        };
        Ok(IntentHead {
            classes,
            dim,
            weight: read("weight", &[classes, dim])?,
            bias: read("bias", &[classes])?,
        })
    }
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|v| v / sum).collect()
}

/// Indices of the `k` largest values, largest first (ties by index).
pub fn top_k(p: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// The out-of-scope threshold for a target false-rejection rate: the largest threshold such
/// that at most `target · n` of the in-scope `confidences` fall below it. Returns the threshold
/// and the false-rejection rate it gives on `confidences`.
pub fn calibrate_threshold(confidences: &[f32], target: f32) -> (f32, f32) {
    if confidences.is_empty() {
        return (0.0, 0.0);
    }
    let mut sorted = confidences.to_vec();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len();
    let k = ((target.clamp(0.0, 1.0) * n as f32).floor() as usize).min(n - 1);
    let threshold = sorted[k];
    let rejected = sorted.iter().filter(|&&c| c < threshold).count();
    (threshold, rejected as f32 / n as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_shape_checks() {
        let h = IntentHead {
            classes: 3,
            dim: 2,
            weight: vec![1.0, 0.0, 0.0, 1.0, -1.0, -1.0],
            bias: vec![0.0, 0.5, 0.0],
        };
        let bytes = h.to_bytes().unwrap();
        assert_eq!(IntentHead::from_bytes(&bytes, 3, 2).unwrap(), h);
        let err = IntentHead::from_bytes(&bytes, 4, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected F32 [4, 2]"), "{err}");
        assert!(IntentHead::from_bytes(&bytes[..bytes.len() - 3], 3, 2).is_err());
        let p = h.probabilities(&[1.0, 0.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(top_k(&p, 2), vec![0, 1]);
    }

    #[test]
    fn threshold_meets_the_target_rate() {
        let c: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        let (t, frr) = calibrate_threshold(&c, 0.05);
        assert_eq!(t, 0.05);
        assert_eq!(frr, 0.05);
        let (t, frr) = calibrate_threshold(&c, 0.0);
        assert_eq!((t, frr), (0.0, 0.0));
        let (_, frr) = calibrate_threshold(&[0.5; 10], 0.3);
        assert_eq!(frr, 0.0);
    }
}
