//! Checking a step message before it is queued: frame size, ids, the hidden-state tensor, drafts
//! and their distributions.
//! What depends on the session (its length, rollback, step order) is checked when the session
//! is checked out ([`crate::sessions::SessionTable::checkout`]).

use crate::error::{Error, Result};
use crate::verify::DraftDist;
use prost::Message;
use seam_edge::runtime::draft::tree::DraftTree;
use seam_shared::proto::common::StepRequest;
use seam_shared::tensor;

/// Bounds a step must fit.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    /// Width of a hidden-state row.
    pub hidden_size: usize,
    /// Vocabulary size (drafts are token ids).
    pub vocab_size: u32,
    /// Most rows in one step.
    pub max_rows: usize,
    /// Most rows whose logits one step may ask for.
    pub max_logit_rows: usize,
    /// Largest encoded step message.
    pub max_frame_bytes: usize,
}

/// A step that passed every check that needs no session state.
#[derive(Debug, Clone)]
pub struct StepPlan {
    pub session: String,
    pub step_id: u64,
    pub start: usize,
    pub rows: usize,
    /// `rows × hidden_size` decoded values.
    pub hidden: Vec<f32>,
    /// Speculative drafts: the tokens at the last `drafts.len()` rows.
    pub drafts: Vec<u32>,
    /// Sampled sessions: the distribution each draft was drawn from.
    pub draft_dists: Vec<DraftDist>,
    pub rollback_to: Option<usize>,
    pub want_logits: bool,
    /// The drafts form a tree (not a chain): how they hang together.
    pub tree: Option<DraftTree>,
    /// The deepest chain of the worker's own drafts the device will use (0: none).
    pub max_proposal_depth: usize,
}

/// Checks `req` against `limits` and decodes its hidden states.
pub fn plan(req: StepRequest, limits: &StepLimits) -> Result<StepPlan> {
    let size = req.encoded_len();
    if size > limits.max_frame_bytes {
        return Err(Error::ResourceExhausted {
            reason: format!(
                "step message of {size} bytes is above the limit of {}",
                limits.max_frame_bytes
            ),
            retry_after: None,
        });
    }
    if req.step_id == 0 {
        return Err(Error::InvalidArgument("step_id must start at 1".into()));
    }
    let hidden = req
        .hidden
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("the step has no hidden states".into()))?;
    let rows = tensor::decode(
        hidden,
        Some(limits.hidden_size),
        limits.max_rows * limits.hidden_size,
    )?;
    let k = req.draft_tokens.len();
    if k > 0 && k + 1 > rows.rows {
        return Err(Error::InvalidArgument(format!(
            "{k} drafts need at least {} rows of hidden states, the step has {}",
            k + 1,
            rows.rows
        )));
    }
    if let Some(&t) = req.draft_tokens.iter().find(|&&t| t >= limits.vocab_size) {
        return Err(Error::InvalidArgument(format!(
            "draft token {t} is outside the vocabulary of {}",
            limits.vocab_size
        )));
    }
    if req.draft_probs_dense.is_some() {
        return Err(Error::InvalidArgument(
            "dense draft distributions are not accepted by this worker; send draft_probs".into(),
        ));
    }
    if !req.draft_probs.is_empty() && req.draft_probs.len() != k {
        return Err(Error::InvalidArgument(format!(
            "{} draft distributions for {k} drafts",
            req.draft_probs.len()
        )));
    }
    let tree = DraftTree::from_wire(&req.draft_tokens, &req.draft_parents)
        .map_err(|e| Error::InvalidArgument(e.0))?;
    let tree = (!tree.is_chain()).then_some(tree);
    if tree.is_some() && !req.draft_probs.is_empty() {
        return Err(Error::InvalidArgument(
            "draft trees are verified for greedy sessions only; sampled sessions send chains"
                .into(),
        ));
    }
    let draft_dists = req
        .draft_probs
        .iter()
        .map(|d| DraftDist::from_wire(d, limits.vocab_size))
        .collect::<Result<Vec<_>>>()?;
    if req.want_logits && rows.rows > limits.max_logit_rows {
        return Err(Error::InvalidArgument(format!(
            "logits asked for {} rows, at most {} per step",
            rows.rows, limits.max_logit_rows
        )));
    }
    if req.max_proposal_depth as usize >= limits.max_rows {
        return Err(Error::InvalidArgument(format!(
            "max_proposal_depth {} is deeper than a step can verify (at most {})",
            req.max_proposal_depth,
            limits.max_rows - 1
        )));
    }
    Ok(StepPlan {
        session: req.session_id,
        step_id: req.step_id,
        start: req.start_position as usize,
        rows: rows.rows,
        hidden: rows.data,
        drafts: req.draft_tokens,
        draft_dists,
        rollback_to: req.rollback_to.map(|n| n as usize),
        want_logits: req.want_logits,
        max_proposal_depth: req.max_proposal_depth as usize,
        tree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use seam_shared::tensor::{WireDtype, encode};

    fn limits() -> StepLimits {
        StepLimits {
            hidden_size: 4,
            vocab_size: 100,
            max_rows: 8,
            max_logit_rows: 8,
            max_frame_bytes: 1 << 20,
        }
    }

    fn step(max_proposal_depth: u32) -> StepRequest {
        StepRequest {
            session_id: "s".into(),
            step_id: 1,
            hidden: Some(encode(&[0.5; 8], 4, WireDtype::F32).unwrap()),
            max_proposal_depth,
            ..Default::default()
        }
    }

    #[test]
    fn a_step_may_ask_for_proposals_a_step_could_verify() {
        assert_eq!(plan(step(0), &limits()).unwrap().max_proposal_depth, 0);
        assert_eq!(plan(step(7), &limits()).unwrap().max_proposal_depth, 7);
        let e = plan(step(8), &limits()).unwrap_err().to_string();
        assert!(e.contains("max_proposal_depth 8"), "{e}");
    }
}
