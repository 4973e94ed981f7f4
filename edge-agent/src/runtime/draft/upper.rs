//! Drafting through the model's own upper layers, on the worker. A small network of the package
//! (the *state predictor* of a split layer K, trained at import) estimates the layer-K state of
//! the token the worker just chose from the exact layer-K state of the row before it and the
//! token's embedding. Layers `[K, N)` then run on that estimate over the session's exact KV, and
//! the LM head reads the next token out: a draft made by the real model from an estimated input
//! instead of by a head that has to stand in for all of it. The predictor feeds its own
//! estimates after the first draft, as the draft head does.
//!
//! [`propose`] grows a chain this way, one pass of layers `[K, N)` per depth, and offers the
//! runner-up tokens of every depth as leaves beside it. The candidates go back to the device,
//! which runs layers `[0, K)` on the ones it sends (exactly) and has them verified in the next
//! round trip as any draft tree. The passes write the session's KV past its committed length
//! only; [`propose`] rolls that back.

use super::grow::{Candidate, log_softmax};
use super::top_k;
use crate::error::{Error, Result};
use crate::onnx::session_from_file;
use crate::runtime::kv_cache::KvCache;
use crate::runtime::model::Model;
use ort::session::Session;
use ort::value::TensorRef;
use seam_shared::package::{Package, StatePredictor as PredictorSpec};

/// Names of the predictor graph's inputs and outputs, shared with the import.
pub mod io {
    /// Layer-K state of the previous position, `[S, n_embd]`.
    pub const STATE: &str = "state";
    /// Embedding of the current token, `[S, n_embd]`.
    pub const EMBED: &str = "embed";
    /// Estimate of the current position's layer-K state, `[S, n_embd]`.
    pub const STATE_OUT: &str = "state_out";
}

/// A loaded state predictor of one split layer.
pub struct Predictor {
    session: Session,
    layer: u32,
    d: usize,
    heldout_acceptance: Vec<f64>,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl Predictor {
    /// Loads the predictor `spec` of `package`.
    pub fn load(package: &Package, spec: &PredictorSpec, d: usize) -> Result<Predictor> {
        Ok(Predictor {
            session: session_from_file(&package.path(&spec.graph))?,
            layer: spec.layer,
            d,
            heldout_acceptance: spec.heldout_acceptance.iter().map(|&a| a as f64).collect(),
        })
    }

    /// From the graph's bytes (the import measures a predictor before writing it).
    pub fn from_graph(graph: &[u8], layer: u32, d: usize) -> Result<Predictor> {
        Ok(Predictor {
            session: crate::onnx::session_from_memory(graph)?,
            layer,
            d,
            heldout_acceptance: Vec::new(),
        })
    }

    /// The split layer whose state it predicts.
    pub fn layer(&self) -> u32 {
        self.layer
    }

    /// Acceptance per chain position measured at import.
    pub fn heldout_acceptance(&self) -> &[f64] {
        &self.heldout_acceptance
    }

    /// Estimates of the layer-K states of rows whose previous rows' states are `states` and
    /// whose tokens embed to `embeds` (both `[S, d]`).
    pub fn run(&mut self, states: &[f32], embeds: &[f32]) -> Result<Vec<f32>> {
        let s = states.len() / self.d.max(1);
        if s == 0 || states.len() != s * self.d || embeds.len() != states.len() {
            return Err(Error::InvalidArgument(format!(
                "a state predictor step needs [S, {}] states and embeddings, got {} and {} values",
                self.d,
                states.len(),
                embeds.len()
            )));
        }
        let out = self.session.run(ort::inputs![
            io::STATE => TensorRef::from_array_view(([s, self.d], states))?,
            io::EMBED => TensorRef::from_array_view(([s, self.d], embeds))?,
        ])?;
        Ok(out[io::STATE_OUT].try_extract_tensor::<f32>()?.1.to_vec())
    }
}

/// How far [`propose`] drafts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProposeLimits {
    /// Deepest draft (passes of layers `[K, N)`).
    pub depth: usize,
    /// Runner-up tokens offered as leaves at every depth.
    pub siblings: usize,
    /// Stop once the chain's path probability falls below this.
    pub min_path: f64,
}

impl Default for ProposeLimits {
    fn default() -> Self {
        ProposeLimits {
            depth: 6,
            siblings: 2,
            min_path: 0.05,
        }
    }
}

/// Drafts after `token` (not yet in `cache`, at position `cache.len()`), whose previous row's
/// exact layer-K state is `state`: candidates in the order grown (parents first), with the
/// model's probability of each path. `cache` holds the session's layers `[K, N)`; it is left
/// at its committed length. `stop` tokens end the chain.
pub fn propose(
    model: &mut Model,
    predictor: &mut Predictor,
    cache: &mut KvCache,
    state: &[f32],
    token: u32,
    stop: &[u32],
    limits: ProposeLimits,
) -> Result<Vec<Candidate>> {
    let committed = cache.len();
    let out = grow_chain(model, predictor, cache, state, token, stop, limits);
    cache.truncate(committed)?;
    out
}

fn grow_chain(
    model: &mut Model,
    predictor: &mut Predictor,
    cache: &mut KvCache,
    state: &[f32],
    token: u32,
    stop: &[u32],
    limits: ProposeLimits,
) -> Result<Vec<Candidate>> {
    let layers = predictor.layer()..model.arch().n_layer;
    let room = cache.capacity().saturating_sub(cache.len());
    let mut candidates: Vec<Candidate> = Vec::new();
    let (mut state, mut token) = (state.to_vec(), token);
    let (mut parent, mut logp) = (None, 0.0f64);
    for depth in 0..limits.depth.min(room) {
        let estimate = predictor.run(&state, &model.embed(&[token])?)?;
        let pos = cache.len() + depth;
        let h = model.run_layers(layers.clone(), estimate.clone(), pos, cache)?;
        let logits = model.logits(&h)?;
        let lp = log_softmax(&logits);
        let best = top_k(&logits, 1 + limits.siblings);
        let first = candidates.len();
        for &t in &best {
            candidates.push(Candidate {
                parent,
                token: t as u32,
                logp: logp + lp[t],
            });
        }
        let Some(&main) = best.first() else {
            break;
        };
        logp += lp[main];
        token = main as u32;
        parent = Some(first);
        state = estimate;
        if logp.exp() < limits.min_path || stop.contains(&token) {
            break;
        }
    }
    Ok(candidates)
}
