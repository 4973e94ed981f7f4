//! Limited-memory BFGS with a backtracking (Armijo) line search, written plainly: it minimises
//! a smooth function given its value and gradient. Deterministic: no randomness anywhere.

use crate::error::Result;

/// Stopping rules and memory.
#[derive(Debug, Clone, Copy)]
pub struct LbfgsOptions {
    /// Correction pairs kept.
    pub memory: usize,
    /// Most iterations (each costs one evaluation, more when the line search backtracks).
    pub max_iter: usize,
    /// Stop when the largest gradient component is below this.
    pub grad_tol: f64,
    /// Stop when an iteration improves the value by less than this, relatively.
    pub rel_tol: f64,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        LbfgsOptions {
            memory: 10,
            max_iter: 200,
            grad_tol: 1e-5,
            rel_tol: 1e-7,
        }
    }
}

/// The result of a minimisation.
#[derive(Debug, Clone)]
pub struct Minimum {
    pub x: Vec<f32>,
    pub value: f64,
    pub iterations: usize,
    pub evaluations: usize,
    /// Why the search stopped.
    pub stop: Stop,
}

/// Why a minimisation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The gradient is below `grad_tol`.
    Gradient,
    /// An iteration improved the value by less than `rel_tol`.
    Progress,
    /// The line search found no lower value along the direction (precision exhausted).
    LineSearch,
    /// `max_iter` iterations ran.
    Iterations,
}

/// Minimises `f` (returning the value and the gradient at a point) from `x0`.
pub fn minimize(
    x0: Vec<f32>,
    mut f: impl FnMut(&[f32]) -> Result<(f64, Vec<f32>)>,
    opts: LbfgsOptions,
) -> Result<Minimum> {
    let n = x0.len();
    let mut x = x0;
    let (mut fx, mut g) = f(&x)?;
    let mut evaluations = 1;
    let mut history: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::new();
    let mut iterations = 0;
    let mut stop = Stop::Iterations;
    while iterations < opts.max_iter {
        let gmax = g.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
        if gmax < opts.grad_tol {
            stop = Stop::Gradient;
            break;
        }
        iterations += 1;
        let mut d = direction(&g, &history);
        let mut slope: f64 = d.iter().zip(&g).map(|(a, b)| a * *b as f64).sum();
        if slope >= 0.0 {
            // Not a descent direction (curvature went wrong): restart from steepest descent.
            history.clear();
            d = g.iter().map(|v| -(*v as f64)).collect();
            slope = -d.iter().map(|v| v * v).sum::<f64>();
        }
        let mut step = if history.is_empty() {
            1.0 / slope.abs().sqrt().max(1e-12)
        } else {
            1.0
        };
        let (xn, fnew, gn) = loop {
            let xn: Vec<f32> = x
                .iter()
                .zip(&d)
                .map(|(a, b)| (*a as f64 + step * b) as f32)
                .collect();
            let (fnew, gn) = f(&xn)?;
            evaluations += 1;
            if fnew <= fx + 1e-4 * step * slope {
                break (xn, fnew, gn);
            }
            step *= 0.5;
            if step < 1e-12 {
                return Ok(Minimum {
                    x,
                    value: fx,
                    iterations,
                    evaluations,
                    stop: Stop::LineSearch,
                });
            }
        };
        let s: Vec<f64> = (0..n).map(|i| xn[i] as f64 - x[i] as f64).collect();
        let y: Vec<f64> = (0..n).map(|i| gn[i] as f64 - g[i] as f64).collect();
        let sy: f64 = s.iter().zip(&y).map(|(a, b)| a * b).sum();
        if sy > 1e-12 {
            history.push((s, y, 1.0 / sy));
            if history.len() > opts.memory {
                history.remove(0);
            }
        }
        let improvement = (fx - fnew) / fx.abs().max(1.0);
        x = xn;
        fx = fnew;
        g = gn;
        if improvement < opts.rel_tol {
            stop = Stop::Progress;
            break;
        }
    }
    Ok(Minimum {
        x,
        value: fx,
        iterations,
        evaluations,
        stop,
    })
}

/// `-H·g` by the two-loop recursion over the correction pairs (oldest first).
fn direction(g: &[f32], history: &[(Vec<f64>, Vec<f64>, f64)]) -> Vec<f64> {
    let mut q: Vec<f64> = g.iter().map(|v| *v as f64).collect();
    let mut alpha = vec![0.0; history.len()];
    for (i, (s, y, rho)) in history.iter().enumerate().rev() {
        let a = rho * dot(s, &q);
        alpha[i] = a;
        axpy(-a, y, &mut q);
    }
    if let Some((s, y, _)) = history.last() {
        let gamma = dot(s, y) / dot(y, y).max(1e-300);
        q.iter_mut().for_each(|v| *v *= gamma);
    }
    for (i, (s, y, rho)) in history.iter().enumerate() {
        let b = rho * dot(y, &q);
        axpy(alpha[i] - b, s, &mut q);
    }
    q.iter_mut().for_each(|v| *v = -*v);
    q
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_minimum_of_an_ill_conditioned_quadratic() {
        // f(x) = Σ c_i (x_i - i)², condition number 1000.
        let c: Vec<f64> = (0..20).map(|i| 1.0 + 999.0 * i as f64 / 19.0).collect();
        let f = |x: &[f32]| -> Result<(f64, Vec<f32>)> {
            let mut v = 0.0;
            let mut g = Vec::with_capacity(x.len());
            for (i, (xi, ci)) in x.iter().zip(&c).enumerate() {
                let d = *xi as f64 - i as f64;
                v += ci * d * d;
                g.push((2.0 * ci * d) as f32);
            }
            Ok((v, g))
        };
        let m = minimize(vec![0.0; 20], f, LbfgsOptions::default()).unwrap();
        for (i, v) in m.x.iter().enumerate() {
            assert!((v - i as f32).abs() < 1e-3, "x[{i}] = {v}");
        }
        assert!(m.iterations < 100, "{} iterations", m.iterations);
    }

    #[test]
    fn minimises_rosenbrock() {
        let f = |x: &[f32]| -> Result<(f64, Vec<f32>)> {
            let (a, b) = (x[0] as f64, x[1] as f64);
            let v = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
            let ga = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            let gb = 200.0 * (b - a * a);
            Ok((v, vec![ga as f32, gb as f32]))
        };
        let opts = LbfgsOptions {
            max_iter: 500,
            rel_tol: 0.0,
            ..Default::default()
        };
        let m = minimize(vec![-1.2, 1.0], f, opts).unwrap();
        assert!(m.value < 1e-5, "{m:?}");
    }
}
