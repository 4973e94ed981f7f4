//! Verifying speculative drafts (I/O-free): given the full model's distribution at each drafted
//! position, how many drafts stand and which token follows them.
//!
//! Greedy sessions accept while the draft is the argmax. Sampled sessions use rejection
//! sampling: draft `d` drawn by the device from `q` is accepted with probability
//! `min(1, p(d) / q(d))`; the first rejected one is replaced by a draw from
//! `norm(max(0, p − q))`; after `k` accepted drafts the bonus token is drawn from `p`. The
//! tokens that come out are distributed exactly as the full model's, whatever `q` was. Every
//! draw is keyed by `(seed, position, purpose)` ([`seam_edge::runtime::sampler::draws`]).

use crate::error::{Error, Result};
use seam_edge::runtime::draft::tree::DraftTree;
use seam_edge::runtime::sampler::{draw, draws, uniform};
use seam_shared::proto::common::SparseDistribution;

/// A draft distribution as the device sent it: support and probabilities, normalised here.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftDist(pub Vec<(u32, f64)>);

impl DraftDist {
    /// Checks a wire distribution: ids inside the vocabulary and unique, probabilities finite
    /// in `[0, 1]` summing to 1 within 1e-3. The probabilities are taken as f32 (as sent) and
    /// divided by their sum, exactly as the device does before drawing.
    pub fn from_wire(d: &SparseDistribution, vocab: u32) -> Result<DraftDist> {
        if d.token_ids.len() != d.probs.len() || d.token_ids.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "a draft distribution has {} ids and {} probabilities (equal and non-zero expected)",
                d.token_ids.len(),
                d.probs.len()
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(d.token_ids.len());
        let mut out = Vec::with_capacity(d.token_ids.len());
        for (&id, &p) in d.token_ids.iter().zip(&d.probs) {
            if id >= vocab || !seen.insert(id) {
                return Err(Error::InvalidArgument(format!(
                    "draft distribution token {id} is outside the vocabulary of {vocab} or repeated"
                )));
            }
            if !p.is_finite() || !(0.0..=1.0).contains(&p) {
                return Err(Error::InvalidArgument(format!(
                    "draft probability {p} of token {id} is not in [0, 1]"
                )));
            }
            out.push((id, p as f64));
        }
        let sum: f64 = out.iter().map(|x| x.1).sum();
        if (sum - 1.0).abs() > 1e-3 {
            return Err(Error::InvalidArgument(format!(
                "draft probabilities sum to {sum}, not 1"
            )));
        }
        out.iter_mut().for_each(|x| x.1 /= sum);
        Ok(DraftDist(out))
    }

    /// Probability of `token`.
    pub fn prob(&self, token: u32) -> f64 {
        self.0.iter().find(|x| x.0 == token).map_or(0.0, |x| x.1)
    }
}

/// What a verification settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Leading drafts accepted.
    pub accepted: usize,
    /// The token after them: the replacement of the first rejected draft, or the bonus.
    pub next: u32,
}

/// Greedy verification: `argmax[i]` is the full model's choice at draft `i`'s position
/// (`argmax.len() == drafts.len() + 1`; the last one is the bonus).
pub fn verify_greedy(drafts: &[u32], argmax: &[u32]) -> Verdict {
    let accepted = drafts
        .iter()
        .zip(argmax)
        .take_while(|(d, a)| d == a)
        .count();
    Verdict {
        accepted,
        next: argmax[accepted],
    }
}

/// Greedy verification of a draft tree: from the committed row down, the child whose token is
/// the argmax of its parent's distribution is accepted. `root_argmax` is the full model's choice
/// after the committed row, `node_argmax[i]` its choice after draft `i`. Returns the accepted
/// nodes (root's child first) and the token after the last of them.
pub fn verify_tree_greedy(
    tree: &DraftTree,
    root_argmax: u32,
    node_argmax: &[u32],
) -> (Vec<usize>, u32) {
    let mut path = Vec::new();
    let mut want = root_argmax;
    let mut at = None;
    while let Some(child) = tree.children(at).find(|&c| tree.tokens[c] == want) {
        path.push(child);
        want = node_argmax[child];
        at = Some(child);
    }
    (path, want)
}

/// Rejection-sampling verification. `p[i]` is the full model's distribution at draft `i`'s
/// position (`p.len() == drafts.len() + 1`), `q[i]` the distribution draft `i` was drawn from,
/// `first_position` the absolute position of draft 0.
pub fn verify_sampled(
    drafts: &[u32],
    q: &[DraftDist],
    p: &[Vec<(u32, f64)>],
    seed: u64,
    first_position: u64,
) -> Result<Verdict> {
    for (i, (d, q)) in drafts.iter().zip(q).enumerate() {
        let position = first_position + i as u64;
        let qd = q.prob(*d);
        if qd <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "draft {i} (token {d}) has no mass in its own draft distribution"
            )));
        }
        let pd = p[i].iter().find(|x| x.0 == *d).map_or(0.0, |x| x.1);
        if uniform(seed, position, draws::ACCEPT) < (pd / qd).min(1.0) {
            continue;
        }
        return Ok(Verdict {
            accepted: i,
            next: draw_residual(&p[i], q, uniform(seed, position, draws::RESIDUAL)),
        });
    }
    let k = drafts.len();
    Ok(Verdict {
        accepted: k,
        next: draw(
            &p[k],
            uniform(seed, first_position + k as u64, draws::TOKEN),
        ),
    })
}

/// A draw from `norm(max(0, p − q))`. When the residual has no mass (p ≤ q everywhere, which
/// only rounding can make meet a rejection), from `p`.
fn draw_residual(p: &[(u32, f64)], q: &DraftDist, u: f64) -> u32 {
    let residual: Vec<(u32, f64)> = p
        .iter()
        .map(|&(id, pv)| (id, (pv - q.prob(id)).max(0.0)))
        .filter(|x| x.1 > 0.0)
        .collect();
    if residual.is_empty() {
        draw(p, u)
    } else {
        draw(&residual, u)
    }
}

#[cfg(test)]
mod tests;
