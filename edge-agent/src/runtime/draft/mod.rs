//! Drafting on the device. Two sources propose the tokens a verification round trip carries:
//! the package's draft head ([`drafter`]), fed with the exact final-layer state the worker
//! returned for the last settled token and then with its own estimates, and prompt lookup
//! ([`lookup`]). [`policy`] picks the source and the length from the measured acceptance per
//! chain position, the round trip and the drafting cost. The drafts then run through layers
//! `[0, K)` together with the settled token in one pass, which yields the layer-K states the
//! worker verifies them with.

pub mod drafter;
pub mod grow;
pub mod lookup;
pub mod policy;
pub mod tree;
pub mod upper;

use super::kv_cache::KvCache;
use super::model::{Model, Sequence, TreeKv, TreeRows};
use super::sampler::{Sampler, argmax, draw, draws, uniform};
use crate::error::{Error, Result};
use grow::{Candidate, Grown};
use seam_shared::proto::common::SparseDistribution;
use tree::DraftTree;

/// Most tokens in a sampled draft's distribution: the head of the draft head's nucleus,
/// renormalised. Verification is exact for any draft distribution; this bounds what a step
/// carries.
pub const DRAFT_SUPPORT: usize = 32;

/// A chain of drafts from the draft head.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    pub drafts: Vec<u32>,
    /// Sampled requests: the distribution each draft was drawn from (as sent).
    pub dists: Vec<SparseDistribution>,
}

/// Up to `k` drafts after `token` (settled at `position`) from the draft head, starting from
/// `feature`, the exact final-layer state of the position before `token`. Stops early after
/// an end-of-turn draft.
pub fn head_chain(
    model: &mut Model,
    feature: &[f32],
    token: u32,
    position: usize,
    k: usize,
    sampler: &mut Sampler,
    stop: &[u32],
) -> Result<Chain> {
    let params = sampler.params();
    let mut chain = Chain::default();
    let mut prev = feature.to_vec();
    let mut tok = token;
    for i in 0..k {
        let e = model.embed(&[tok])?;
        let drafter = model
            .drafter_mut()
            .ok_or_else(|| Error::Package("the package has no draft head".into()))?;
        let out = drafter.run(&prev, &e)?;
        let shortlist = drafter.shortlist();
        tok = if params.temperature == 0.0 {
            shortlist[argmax(&out.logits) as usize]
        } else {
            let q = truncated(sampler.distribution(&out.logits), shortlist);
            let as_sent: Vec<(u32, f64)> = q
                .token_ids
                .iter()
                .zip(&q.probs)
                .map(|(&id, &p)| (id, p as f64))
                .collect();
            let pos = (position + 1 + i) as u64;
            let d = draw(&as_sent, uniform(params.seed, pos, draws::DRAFT));
            chain.dists.push(q);
            d
        };
        chain.drafts.push(tok);
        if stop.contains(&tok) {
            break;
        }
        prev = out.features;
    }
    Ok(chain)
}

/// Most nodes of a draft tree (the worker's default `max_draft_tokens`).
pub const MAX_TREE_NODES: usize = 16;

/// Grows a dynamic draft tree after `token` (settled at the row after `feature`'s) from the
/// draft head, a depth at a time (see [`grow`]); end-of-turn drafts are not expanded, and
/// growth stops once no new node could be among the `limit` most likely.
pub fn head_tree(
    model: &mut Model,
    feature: &[f32],
    token: u32,
    limit: usize,
    stop: &[u32],
) -> Result<Grown> {
    let d = model.n_embd();
    let mut candidates: Vec<Candidate> = Vec::new();
    // Rows to expand: (candidate, the head's estimate of the state before it, its token).
    let mut frontier: Vec<(Option<usize>, Vec<f32>, u32)> = vec![(None, feature.to_vec(), token)];
    for _ in 0..grow::DEPTH {
        if frontier.is_empty() || limit == 0 {
            break;
        }
        let tokens: Vec<u32> = frontier.iter().map(|f| f.2).collect();
        let features: Vec<f32> = frontier.iter().flat_map(|f| f.1.iter().copied()).collect();
        let e = model.embed(&tokens)?;
        let head = drafter(model)?;
        let out = head.run(&features, &e)?;
        let shortlist = head.shortlist();
        let width = shortlist.len();
        let mut fresh: Vec<(usize, usize)> = Vec::new();
        for (j, (parent, _, _)) in frontier.iter().enumerate() {
            let row = &out.logits[j * width..(j + 1) * width];
            let base = parent.map_or(0.0, |p| candidates[p].logp);
            let lp = grow::log_softmax(row);
            for k in top_k(row, grow::CHILDREN) {
                candidates.push(Candidate {
                    parent: *parent,
                    token: shortlist[k],
                    logp: base + lp[k],
                });
                fresh.push((candidates.len() - 1, j));
            }
        }
        fresh.retain(|&(i, _)| !stop.contains(&candidates[i].token));
        fresh.sort_by(|a, b| candidates[b.0].logp.total_cmp(&candidates[a.0].logp));
        fresh.truncate(grow::BEAM);
        // A child is never more likely than its parent: past `limit` better nodes, stop.
        if let Some(&(best, _)) = fresh.first() {
            let better = candidates
                .iter()
                .filter(|c| c.logp > candidates[best].logp)
                .count();
            if better >= limit {
                break;
            }
        }
        frontier = fresh
            .into_iter()
            .map(|(i, j)| {
                let f = out.features[j * d..(j + 1) * d].to_vec();
                (Some(i), f, candidates[i].token)
            })
            .collect();
    }
    Ok(Grown::new(candidates))
}

fn drafter(model: &mut Model) -> Result<&mut drafter::Drafter> {
    model
        .drafter_mut()
        .ok_or_else(|| Error::Package("the package has no draft head".into()))
}

/// Indices of the `n` largest values, largest first.
pub fn top_k(values: &[f32], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let n = n.min(values.len());
    if n == 0 {
        return idx;
    }
    idx.select_nth_unstable_by(n - 1, |&a, &b| values[b].total_cmp(&values[a]));
    idx.truncate(n);
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    idx
}

/// Runs `token` (at `position`) and the drafts of `tree` after it through layers `[0, layer)`
/// in one pass (a chain at consecutive positions, a tree with its own attention mask; see
/// [`Sequence`]) and commits the token's row to `cache`; the drafts' rows stay past the
/// committed length until the worker's verdict ([`keep_accepted`]). Returns the layer-K
/// states, `[1 + drafts, n_embd]`, and the tree nodes' K/V.
pub fn layer_states(
    model: &mut Model,
    cache: &mut KvCache,
    layer: u32,
    token: u32,
    tree: &DraftTree,
    position: usize,
) -> Result<(Vec<f32>, TreeKv)> {
    let mut tokens = Vec::with_capacity(1 + tree.len());
    tokens.push(token);
    tokens.extend_from_slice(&tree.tokens);
    let h = model.embed(&tokens)?;
    let mut kv = TreeKv::default();
    let h = {
        let mut seq = Sequence::new(position, tokens.len(), cache);
        if !tree.is_chain() {
            seq.tree = Some(TreeRows { tree, kv: &mut kv });
        }
        model.run_layers_batch(0..layer, h, &mut [seq])?
    };
    cache.commit(position + 1)?;
    Ok((h, kv))
}

/// After the worker's verdict: keeps the accepted drafts' rows (`path`, tree nodes from the
/// root's child down) right after the token at `position`, and forgets the rest.
pub fn keep_accepted(
    cache: &mut KvCache,
    tree: &DraftTree,
    kv: &TreeKv,
    path: &[usize],
    position: usize,
) -> Result<()> {
    if !tree.is_chain() {
        kv.place_path(cache, position + 1, path)?;
    }
    cache.commit(position + 1 + path.len())?;
    Ok(())
}

/// Draft distributions for sampled lookup drafts: all mass on the proposed token (the device
/// "drew" it from a point mass, so rejection sampling stays exact).
pub fn point_masses(drafts: &[u32]) -> Vec<SparseDistribution> {
    drafts
        .iter()
        .map(|&t| SparseDistribution {
            token_ids: vec![t],
            probs: vec![1.0],
        })
        .collect()
}

/// The first [`DRAFT_SUPPORT`] entries of `dist` (shortlist indices, most likely first) as
/// token ids, renormalised, in f32 as they travel.
fn truncated(mut dist: Vec<(u32, f64)>, shortlist: &[u32]) -> SparseDistribution {
    dist.truncate(DRAFT_SUPPORT);
    let total: f64 = dist.iter().map(|d| d.1).sum();
    SparseDistribution {
        token_ids: dist.iter().map(|d| shortlist[d.0 as usize]).collect(),
        probs: dist.iter().map(|d| (d.1 / total) as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_ranks_the_largest_first() {
        assert_eq!(top_k(&[0.1, 3.0, -1.0, 2.0], 2), vec![1, 3]);
        assert_eq!(top_k(&[1.0], 3), vec![0]);
    }

    #[test]
    fn truncation_keeps_the_head_maps_to_token_ids_and_sums_to_one() {
        let dist: Vec<(u32, f64)> = (0..100).map(|i| (i, 1.0 / 100.0)).collect();
        let shortlist: Vec<u32> = (0..100).map(|i| 1000 + i).collect();
        let q = truncated(dist, &shortlist);
        assert_eq!(q.token_ids.len(), DRAFT_SUPPORT);
        assert_eq!(q.token_ids[0], 1000);
        let sum: f32 = q.probs.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
    }
}
