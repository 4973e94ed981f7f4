//! Tokens per round trip of the dynamic draft trees the device sends ([`crate::runtime::draft::grow`]),
//! measured on held-out greedy answers with the graph the device runs: at every start position
//! the tree is grown from the exact previous state as in service, and a round trip settles the
//! longest path of the first `n` nodes that the answer follows, plus the worker's token.

use super::data::Corpus;
use super::graph;
use crate::error::{Error, Result};
use crate::onnx::session_from_memory;
use crate::runtime::draft::grow::{self, Candidate, Grown};
use crate::runtime::draft::top_k;
use crate::runtime::model::Model;
use ort::value::TensorRef;

/// Rows run through the head at once.
const CHUNK: usize = 1024;

/// Mean tokens per round trip with trees of each size in `sizes`; as on the device, drafts in
/// `stop` (end of turn) are not expanded.
pub fn tree_tokens(
    model: &Model,
    graph_bytes: &[u8],
    shortlist: &[u32],
    heldout: &Corpus,
    stop: &[u32],
    sizes: &[usize],
) -> Result<Vec<f64>> {
    let d = heldout.d;
    let mut session = session_from_memory(graph_bytes)?;
    let starts = heldout.starts(grow::DEPTH);
    if starts.is_empty() {
        return Err(Error::InvalidArgument(
            "no held-out answer is long enough to measure draft trees".into(),
        ));
    }
    let mut candidates: Vec<Vec<Candidate>> = vec![Vec::new(); starts.len()];
    // Rows to expand: (start, candidate or none, the state before it, its token).
    let mut frontier: Vec<(usize, Option<usize>, Vec<f32>, u32)> = starts
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let f = heldout.features[s * d..(s + 1) * d].to_vec();
            (i, None, f, heldout.tokens[s + 1])
        })
        .collect();
    for _ in 0..grow::DEPTH {
        let mut fresh: Vec<Vec<(usize, Vec<f32>)>> = vec![Vec::new(); starts.len()];
        for chunk in frontier.chunks(CHUNK) {
            let n = chunk.len();
            let feature: Vec<f32> = chunk.iter().flat_map(|r| r.2.iter().copied()).collect();
            let tokens: Vec<u32> = chunk.iter().map(|r| r.3).collect();
            let embed = model.embed(&tokens)?;
            let out = session.run(ort::inputs![
                graph::io::FEATURE => TensorRef::from_array_view(([n, d], &feature[..]))?,
                graph::io::EMBED => TensorRef::from_array_view(([n, d], &embed[..]))?,
            ])?;
            let logits = out[graph::io::LOGITS].try_extract_tensor::<f32>()?.1;
            let next = out[graph::io::FEATURE_OUT].try_extract_tensor::<f32>()?.1;
            for (j, row) in logits.chunks_exact(shortlist.len()).enumerate() {
                let (i, parent, _, _) = chunk[j];
                let base = parent.map_or(0.0, |p| candidates[i][p].logp);
                let lp = grow::log_softmax(row);
                for k in top_k(row, grow::CHILDREN) {
                    candidates[i].push(Candidate {
                        parent,
                        token: shortlist[k],
                        logp: base + lp[k],
                    });
                    let at = candidates[i].len() - 1;
                    fresh[i].push((at, next[j * d..(j + 1) * d].to_vec()));
                }
            }
        }
        frontier.clear();
        for (i, mut f) in fresh.into_iter().enumerate() {
            f.retain(|(c, _)| !stop.contains(&candidates[i][*c].token));
            f.sort_by(|a, b| candidates[i][b.0].logp.total_cmp(&candidates[i][a.0].logp));
            for (c, feature) in f.into_iter().take(grow::BEAM) {
                frontier.push((i, Some(c), feature, candidates[i][c].token));
            }
        }
    }
    let grown: Vec<Grown> = candidates.into_iter().map(Grown::new).collect();
    Ok(sizes
        .iter()
        .map(|&size| {
            let settled: usize = grown
                .iter()
                .zip(&starts)
                .map(|(g, &s)| 1 + followed(g, size, &heldout.targets[s + 1..]))
                .sum();
            settled as f64 / starts.len() as f64
        })
        .collect())
}

/// Drafts of the first `size` nodes of `grown` that stand when the answer goes on with
/// `targets`.
fn followed(grown: &Grown, size: usize, targets: &[u32]) -> usize {
    let (tree, _) = grown.tree(size);
    let mut at = None;
    let mut depth = 0;
    while let Some(&t) = targets.get(depth) {
        match tree.children(at).find(|&c| tree.tokens[c] == t) {
            Some(c) => {
                at = Some(c);
                depth += 1;
            }
            None => break,
        }
    }
    depth
}
