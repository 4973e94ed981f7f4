//! Choosing the next token from logits: greedy, or temperature + nucleus (top-p) sampling.
//!
//! Every random draw is derived from `(seed, absolute position, draw index)` rather than from the
//! state of a stream, so the device and a cloud worker draw the same token for the same position,
//! and a session replayed after a failover reproduces its answer.

use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling parameters of one request, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax); otherwise logits are divided by it.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 = no cut.
    pub top_p: f32,
    /// Seed of the generator (sampled requests only).
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Rejects values that have no meaning, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 || self.temperature > 100.0 {
            return Err(Error::InvalidArgument(format!(
                "temperature must be in [0, 100], got {}",
                self.temperature
            )));
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(Error::InvalidArgument(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// Picks tokens for one request.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    scratch: Vec<(f32, u32)>,
}

/// A uniform draw in `[0, 1)` for draw `index` at `position` of a stream seeded with `seed`.
pub fn uniform(seed: u64, position: u64, index: u64) -> f64 {
    let key = mix(mix(seed ^ 0x5eed_5eed_5eed_5eed) ^ position) ^ index.rotate_left(32);
    StdRng::seed_from_u64(mix(key)).random::<f64>()
}

/// SplitMix64's finaliser: spreads nearby keys over the whole range.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Candidates considered before falling back to sorting the whole vocabulary.
const FAST_CANDIDATES: usize = 512;

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Sampler {
            params,
            scratch: Vec::new(),
        })
    }

    pub fn params(&self) -> SamplingParams {
        self.params
    }

    /// The token at absolute `position` given the logits of the row before it.
    pub fn sample(&mut self, logits: &[f32], position: u64) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let dist = self.distribution(logits);
        draw(&dist, uniform(self.params.seed, position, draws::TOKEN))
    }

    /// The distribution [`Sampler::sample`] draws from: the tokens of the nucleus, most likely
    /// first, with probabilities summing to 1. Greedy: the argmax with probability 1.
    pub fn distribution(&mut self, logits: &[f32]) -> Vec<(u32, f64)> {
        if self.params.temperature == 0.0 {
            return vec![(argmax(logits), 1.0)];
        }
        let inv_t = 1.0 / self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f64;
        self.scratch.clear();
        for (i, &l) in logits.iter().enumerate() {
            let p = ((l - max) * inv_t).exp();
            total += p as f64;
            self.scratch.push((p, i as u32));
        }
        let by_prob = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let target = self.params.top_p as f64 * total;
        // Most of the mass sits in few tokens: look at the best candidates first.
        let n = self.scratch.len();
        if n > FAST_CANDIDATES {
            self.scratch
                .select_nth_unstable_by(FAST_CANDIDATES - 1, by_prob);
            self.scratch[..FAST_CANDIDATES].sort_unstable_by(by_prob);
            let head: f64 = self.scratch[..FAST_CANDIDATES]
                .iter()
                .map(|c| c.0 as f64)
                .sum();
            if head < target {
                self.scratch.sort_unstable_by(by_prob);
            }
        } else {
            self.scratch.sort_unstable_by(by_prob);
        }
        let mut kept = 0.0f64;
        let mut cut = self.scratch.len();
        for (i, c) in self.scratch.iter().enumerate() {
            kept += c.0 as f64;
            if kept >= target {
                cut = i + 1;
                break;
            }
        }
        self.scratch[..cut]
            .iter()
            .map(|&(p, id)| (id, p as f64 / kept))
            .collect()
    }
}

/// Indices of the independent draws made at one position (see [`uniform`]).
pub mod draws {
    /// The token itself (also the bonus token after fully accepted drafts).
    pub const TOKEN: u64 = 0;
    /// Accepting or rejecting a speculative draft.
    pub const ACCEPT: u64 = 1;
    /// The replacement for a rejected draft, from the residual distribution.
    pub const RESIDUAL: u64 = 2;
    /// The device drawing a draft from its draft distribution.
    pub const DRAFT: u64 = 3;
}

/// The token `u ∈ [0, 1)` falls on in `dist` (probabilities in order; their sum is used, so
/// they need not be exactly normalised).
pub fn draw(dist: &[(u32, f64)], u: f64) -> u32 {
    let total: f64 = dist.iter().map(|d| d.1).sum();
    let mut r = u * total;
    for &(id, p) in dist {
        r -= p;
        if r < 0.0 {
            return id;
        }
    }
    // Rounding left a sliver past the end: the last token with any mass.
    dist.iter().rev().find(|d| d.1 > 0.0).map_or(0, |d| d.0)
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            seed,
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(params(0.0, 1.0, 0)).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0], 0), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 20.0).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 1.0, seed)).unwrap();
            (0..50).map(|p| s.sample(&logits, p)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0f32, (2.0f32).ln(), (5.0f32).ln()]; // p = 1/8, 2/8, 5/8
        let mut s = Sampler::new(params(1.0, 1.0, 1)).unwrap();
        let mut counts = [0usize; 3];
        let n = 40_000;
        for p in 0..n {
            counts[s.sample(&logits, p) as usize] += 1;
        }
        for (c, p) in counts.iter().zip([0.125, 0.25, 0.625]) {
            let f = *c as f64 / n as f64;
            assert!((f - p).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn top_p_cuts_the_tail() {
        let logits = [(0.5f32).ln(), (0.3f32).ln(), (0.2f32).ln()];
        let mut s = Sampler::new(params(1.0, 0.75, 3)).unwrap();
        for p in 0..2000 {
            assert_ne!(s.sample(&logits, p), 2);
        }
    }

    #[test]
    fn large_vocabulary_with_flat_distribution_uses_the_full_sort() {
        let logits = vec![0.0f32; 5000];
        let mut s = Sampler::new(params(1.0, 0.99, 11)).unwrap();
        let picks: std::collections::HashSet<u32> =
            (0..3000).map(|p| s.sample(&logits, p)).collect();
        assert!(
            picks.iter().any(|&t| t as usize >= FAST_CANDIDATES),
            "only the head was sampled"
        );
    }

    #[test]
    fn a_position_draws_the_same_token_whatever_came_before() {
        let logits: Vec<f32> = (0..300).map(|i| ((i * 13) % 29) as f32 / 7.0).collect();
        let mut a = Sampler::new(params(0.8, 0.95, 5)).unwrap();
        let mut b = Sampler::new(params(0.8, 0.95, 5)).unwrap();
        let first: Vec<u32> = (0..20).map(|p| a.sample(&logits, p)).collect();
        let again: Vec<u32> = (10..20).rev().map(|p| b.sample(&logits, p)).collect();
        assert_eq!(again, first[10..].iter().rev().copied().collect::<Vec<_>>());
    }

    #[test]
    fn uniform_draws_are_spread_and_keyed() {
        let n = 20_000;
        let mean = (0..n).map(|p| uniform(3, p, 0)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert_ne!(uniform(3, 1, 0), uniform(3, 1, 1));
        assert_ne!(uniform(3, 1, 0), uniform(4, 1, 0));
        assert_eq!(uniform(3, 1, 0), uniform(3, 1, 0));
    }

    #[test]
    fn the_distribution_is_the_nucleus_normalised_most_likely_first() {
        let logits = [(0.5f32).ln(), (0.3f32).ln(), (0.2f32).ln()];
        let mut s = Sampler::new(params(1.0, 0.75, 3)).unwrap();
        let d = s.distribution(&logits);
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!(
            (d[0].1 - 0.625).abs() < 1e-6 && (d[1].1 - 0.375).abs() < 1e-6,
            "{d:?}"
        );
        let mut g = Sampler::new(params(0.0, 1.0, 3)).unwrap();
        assert_eq!(g.distribution(&logits), vec![(0, 1.0)]);
    }

    #[test]
    fn draw_walks_the_cumulative_mass() {
        let dist = [(7u32, 0.25), (3, 0.5), (9, 0.25)];
        assert_eq!(draw(&dist, 0.0), 7);
        assert_eq!(draw(&dist, 0.2499), 7);
        assert_eq!(draw(&dist, 0.25), 3);
        assert_eq!(draw(&dist, 0.7499), 3);
        assert_eq!(draw(&dist, 0.75), 9);
        assert_eq!(draw(&dist, 0.999_999), 9);
        // Unnormalised weights are scaled by their sum.
        assert_eq!(draw(&[(1, 2.0), (2, 2.0)], 0.6), 2);
    }

    #[test]
    fn nonsense_parameters_are_rejected() {
        assert!(Sampler::new(params(-0.1, 1.0, 0)).is_err());
        assert!(Sampler::new(params(f32::NAN, 1.0, 0)).is_err());
        assert!(Sampler::new(params(1.0, 0.0, 0)).is_err());
        assert!(Sampler::new(params(1.0, 1.5, 0)).is_err());
    }
}
