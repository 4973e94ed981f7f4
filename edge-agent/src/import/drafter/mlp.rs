//! The gated MLP both drafters are made of (the draft head and the state predictor), as candle
//! trains it: seeded parameters, AdamW, the forward pass, and the helpers their training loops
//! share.
//!
//! ```text
//! z = [unit(a), unit(e)] · W_in + b_in      (2d → d)
//! m = unit(z)
//! y = z + (silu(m · W_gate) ⊙ (m · W_up)) · W_down
//! ```

use crate::error::{Error, Result};
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Norm epsilon of `unit` (also in the drafters' graphs).
pub const UNIT_EPS: f64 = 1e-6;

/// Trained weights, row-major, `x · W` convention (`W` is `[in, out]`).
#[derive(Debug, Clone)]
pub struct MlpWeights {
    /// Model width `d`.
    pub d: usize,
    /// Width of the gated MLP.
    pub hidden: usize,
    pub w_in: Vec<f32>,
    pub b_in: Vec<f32>,
    pub w_gate: Vec<f32>,
    pub w_up: Vec<f32>,
    pub w_down: Vec<f32>,
}

/// The MLP's parameters, in the order `w_in, b_in, w_gate, w_up, w_down`.
pub struct GatedMlp {
    d: usize,
    hidden: usize,
    vars: [Var; 5],
}

impl GatedMlp {
    /// Parameters drawn from `seed`: uniform with variance `1 / fan-in`, the residual branch's
    /// output at a tenth of that so that the net starts close to an affine map, `b_in` zero.
    pub fn new(d: usize, hidden: usize, seed: u64) -> Result<GatedMlp> {
        let dev = Device::Cpu;
        let mut init = StdRng::seed_from_u64(seed);
        let mut param = |rows: usize, cols: usize, scale: f64| -> Result<Var> {
            let bound = scale * (3.0 / rows as f64).sqrt();
            let v: Vec<f32> = (0..rows * cols)
                .map(|_| ((init.random::<f64>() * 2.0 - 1.0) * bound) as f32)
                .collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, (rows, cols), &dev)?)?)
        };
        let w_in = param(2 * d, d, 1.0)?;
        let b_in = Var::from_tensor(&Tensor::zeros((1, d), DType::F32, &dev)?)?;
        let w_gate = param(d, hidden, 1.0)?;
        let w_up = param(d, hidden, 1.0)?;
        let w_down = param(hidden, d, 0.1)?;
        Ok(GatedMlp {
            d,
            hidden,
            vars: [w_in, b_in, w_gate, w_up, w_down],
        })
    }

    /// The net with `w`'s weights (held fixed unless an optimizer is made for it).
    pub fn from_weights(w: &MlpWeights) -> Result<GatedMlp> {
        let (d, h) = (w.d, w.hidden);
        let var = |v: &[f32], rows: usize, cols: usize| -> Result<Var> {
            Ok(Var::from_tensor(&Tensor::from_slice(
                v,
                (rows, cols),
                &Device::Cpu,
            )?)?)
        };
        Ok(GatedMlp {
            d,
            hidden: h,
            vars: [
                var(&w.w_in, 2 * d, d)?,
                var(&w.b_in, 1, d)?,
                var(&w.w_gate, d, h)?,
                var(&w.w_up, d, h)?,
                var(&w.w_down, h, d)?,
            ],
        })
    }

    /// AdamW over every parameter, at learning rate `lr`, weight decay 1e-4.
    pub fn optimizer(&self, lr: f64) -> Result<AdamW> {
        Ok(AdamW::new(
            self.vars.to_vec(),
            ParamsAdamW {
                lr,
                weight_decay: 1e-4,
                ..Default::default()
            },
        )?)
    }

    /// `y` for `a` (the previous state, any scale) and `e` (the token's embedding), both
    /// `[B, d]`.
    pub fn forward(&self, a: &Tensor, e: &Tensor) -> Result<Tensor> {
        let [w_in, b_in, w_gate, w_up, w_down] = &self.vars;
        let x = Tensor::cat(&[unit(a)?, unit(e)?], 1)?;
        let z = x.matmul(w_in)?.broadcast_add(b_in)?;
        let m = unit(&z)?;
        let act = (candle_nn::ops::silu(&m.matmul(w_gate)?)? * m.matmul(w_up)?)?;
        Ok((z + act.matmul(w_down)?)?)
    }

    /// The weights as they stand.
    pub fn weights(&self) -> Result<MlpWeights> {
        let out = |v: &Var| -> Result<Vec<f32>> { Ok(v.flatten_all()?.to_vec1::<f32>()?) };
        let [w_in, b_in, w_gate, w_up, w_down] = &self.vars;
        Ok(MlpWeights {
            d: self.d,
            hidden: self.hidden,
            w_in: out(w_in)?,
            b_in: out(b_in)?,
            w_gate: out(w_gate)?,
            w_up: out(w_up)?,
            w_down: out(w_down)?,
        })
    }
}

/// Root mean square of each row, `[B, 1]`.
pub fn rms(x: &Tensor) -> Result<Tensor> {
    Ok((x.sqr()?.mean_keepdim(D::Minus1)? + UNIT_EPS)?.sqrt()?)
}

/// Each row scaled to unit root mean square.
pub fn unit(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_div(&rms(x)?)?)
}

/// Rows `pick + offset` of a `[positions, d]` table, as a `[picks, d]` tensor.
pub fn rows(table: &[f32], picks: &[usize], offset: isize, d: usize) -> Result<Tensor> {
    let mut v = Vec::with_capacity(picks.len() * d);
    for &p in picks {
        let q = (p as isize + offset) as usize;
        v.extend_from_slice(&table[q * d..(q + 1) * d]);
    }
    Ok(Tensor::from_vec(v, (picks.len(), d), &Device::Cpu)?)
}

/// The random batches of a training run seeded with `seed` (a generator apart from the
/// parameters'): `batch` rows drawn from `starts`, once per call.
pub struct Batches<'a> {
    rng: StdRng,
    starts: &'a [usize],
    batch: usize,
}

impl<'a> Batches<'a> {
    pub fn new(seed: u64, starts: &'a [usize], batch: usize) -> Batches<'a> {
        Batches {
            rng: StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            starts,
            batch,
        }
    }

    pub fn draw(&mut self) -> Vec<usize> {
        (0..self.batch)
            .map(|_| self.starts[self.rng.random_range(0..self.starts.len())])
            .collect()
    }
}

/// The mean of the losses of an unrolled chain, one per position.
pub fn mean(losses: Vec<Tensor>) -> Result<Tensor> {
    let n = losses.len();
    let mut it = losses.into_iter();
    let first = it
        .next()
        .ok_or_else(|| Error::Training("no loss to average".into()))?;
    let total = it.try_fold(first, |t, l| t + l)?;
    Ok((total / n as f64)?)
}

/// A training loop's loss, smoothed for its progress reports.
#[derive(Debug, Clone, Copy)]
pub struct Smoothed(f32);

impl Default for Smoothed {
    fn default() -> Self {
        Smoothed(f32::NAN)
    }
}

impl Smoothed {
    /// Takes the newest step's loss; returns the smoothed value.
    pub fn update(&mut self, loss: f32) -> f32 {
        self.0 = if self.0.is_nan() {
            loss
        } else {
            0.98 * self.0 + 0.02 * loss
        };
        self.0
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Training(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_trip_and_the_seed_decides_them() {
        let a = GatedMlp::new(4, 6, 7).unwrap().weights().unwrap();
        let b = GatedMlp::new(4, 6, 7).unwrap().weights().unwrap();
        let c = GatedMlp::new(4, 6, 8).unwrap().weights().unwrap();
        assert_eq!(a.w_in, b.w_in);
        assert_ne!(a.w_in, c.w_in);
        assert_eq!((a.w_in.len(), a.w_gate.len(), a.w_down.len()), (32, 24, 24));
        assert!(a.b_in.iter().all(|&v| v == 0.0));
        let back = GatedMlp::from_weights(&a).unwrap().weights().unwrap();
        assert_eq!(back.w_down, a.w_down);
    }

    #[test]
    fn the_mean_of_a_chain_and_the_smoothed_loss() {
        let t = |v: f32| Tensor::new(v, &Device::Cpu).unwrap();
        let m = mean(vec![t(1.0), t(2.0), t(6.0)]).unwrap();
        assert_eq!(m.to_scalar::<f32>().unwrap(), 3.0);
        assert!(mean(Vec::new()).is_err());
        let mut s = Smoothed::default();
        assert_eq!(s.update(2.0), 2.0);
        assert!((s.update(1.0) - 1.98).abs() < 1e-6);
    }
}
