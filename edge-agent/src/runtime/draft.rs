//! Drafting on the device: layers `[0, K)` and the exit head propose the next tokens, and the
//! layer-K states the worker needs to verify them come out of the same passes.

use super::kv_cache::KvCache;
use super::model::Model;
use super::sampler::{Sampler, argmax, draw, draws, uniform};
use crate::error::Result;
use seam_shared::proto::common::SparseDistribution;
use std::time::{Duration, Instant};

/// Most tokens in a sampled draft's distribution: the head of the exit head's nucleus,
/// renormalised. Verification is exact for any draft distribution; this bounds what a step
/// carries.
pub const DRAFT_SUPPORT: usize = 32;

/// The layer-K states of a committed token and of the drafts that follow it.
#[derive(Debug, Clone)]
pub struct Drafted {
    /// `[1 + drafts, n_embd]`: the committed token's row, then one row per draft.
    pub hidden: Vec<f32>,
    pub drafts: Vec<u32>,
    /// Sampled requests: the distribution each draft was drawn from (as sent).
    pub dists: Vec<SparseDistribution>,
    /// Time spent on the drafts themselves (exit head and the drafts' own layer passes).
    pub draft_time: Duration,
}

/// Runs `token` (at `position`) through layers `[0, layer)` and drafts up to `k` tokens after
/// it, each through the same layers in turn; stops early after an end-of-turn draft. Commits
/// every row to `cache`: the caller truncates it to what the worker accepts.
#[allow(clippy::too_many_arguments)]
pub fn draft(
    model: &mut Model,
    cache: &mut KvCache,
    layer: u32,
    token: u32,
    position: usize,
    k: usize,
    sampler: &mut Sampler,
    stop: &[u32],
) -> Result<Drafted> {
    let params = sampler.params();
    let mut out = Drafted {
        hidden: Vec::with_capacity((k + 1) * model.n_embd()),
        drafts: Vec::with_capacity(k),
        dists: Vec::new(),
        draft_time: Duration::ZERO,
    };
    let mut tok = token;
    let mut pos = position;
    loop {
        let started = Instant::now();
        let h = model.embed(&[tok])?;
        let h = model.run_layers(0..layer, h, pos, cache)?;
        cache.commit(pos + 1)?;
        out.hidden.extend_from_slice(&h);
        if !out.drafts.is_empty() {
            out.draft_time += started.elapsed();
        }
        if out.drafts.len() == k || out.drafts.last().is_some_and(|d| stop.contains(d)) {
            return Ok(out);
        }
        let started = Instant::now();
        let logits = model.draft_logits(layer, &h)?;
        pos += 1;
        tok = if params.temperature == 0.0 {
            argmax(&logits)
        } else {
            let q = truncated(sampler.distribution(&logits));
            let as_sent: Vec<(u32, f64)> = q
                .token_ids
                .iter()
                .zip(&q.probs)
                .map(|(&id, &p)| (id, p as f64))
                .collect();
            let d = draw(&as_sent, uniform(params.seed, pos as u64, draws::DRAFT));
            out.dists.push(q);
            d
        };
        out.drafts.push(tok);
        out.draft_time += started.elapsed();
    }
}

/// The first [`DRAFT_SUPPORT`] tokens of `dist` (most likely first), renormalised, in f32 as
/// they travel.
fn truncated(mut dist: Vec<(u32, f64)>) -> SparseDistribution {
    dist.truncate(DRAFT_SUPPORT);
    let total: f64 = dist.iter().map(|d| d.1).sum();
    SparseDistribution {
        token_ids: dist.iter().map(|d| d.0).collect(),
        probs: dist.iter().map(|d| (d.1 / total) as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_head_and_sums_to_one() {
        let dist: Vec<(u32, f64)> = (0..100).map(|i| (i, 1.0 / 100.0)).collect();
        let q = truncated(dist);
        assert_eq!(q.token_ids.len(), DRAFT_SUPPORT);
        assert_eq!(q.token_ids[0], 0);
        let sum: f32 = q.probs.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
    }
}
