//! How a request's tokens are produced: the whole model on the device ([`LocalRun`]), or a
//! split run that finishes on the device when the cloud half goes away ([`Resilient`]).

use super::budget::{KvBudget, Reservation};
use super::context::Window;
use super::engine::PREFILL_CHUNK;
use super::kv_cache::{KvCache, KvDtype, KvGeometry};
use super::model::Model;
use super::sampler::{Sampler, SamplingParams};
use super::split::{SplitReport, SplitRun};
use crate::error::{Error, Result};

/// The source of a request's tokens: the whole model here, or the device half of a split.
pub(super) trait Continuation {
    /// The model (for its tokenizer and end-of-turn tokens).
    fn model(&self) -> &Model;
    /// The token at `position` (the first one after the prompt, then one after each advance).
    fn token(&mut self, position: usize) -> u32;
    /// Runs `token`, placed at `position`, through the model.
    fn advance(&mut self, token: u32, position: usize) -> Result<()>;
}

pub(super) struct LocalRun<'a> {
    pub(super) model: &'a mut Model,
    pub(super) cache: KvCache,
    pub(super) logits: Vec<f32>,
    pub(super) sampler: Sampler,
    /// A window sliding over `cache` (positions past its capacity drop the oldest ones).
    pub(super) window: Option<Window>,
}

impl LocalRun<'_> {
    /// Prefills positions `cached..` in chunks; `false` if the deadline passed first.
    pub(super) fn prefill(
        &mut self,
        tokens: &[u32],
        cached: usize,
        deadline_hit: &dyn Fn() -> bool,
    ) -> Result<bool> {
        let chunk = self
            .window
            .map_or(PREFILL_CHUNK, |w| PREFILL_CHUNK.min(w.max_rows()));
        let mut pos = cached;
        while pos < tokens.len() {
            if deadline_hit() {
                return Ok(false);
            }
            let end = (pos + chunk).min(tokens.len());
            self.logits = self.run(&tokens[pos..end], pos)?;
            pos = end;
        }
        Ok(true)
    }

    /// Positions dropped by the window so far.
    pub(super) fn evicted(&self) -> usize {
        self.window.map_or(0, |w| w.evicted())
    }

    /// Runs `tokens` at positions `position..` and commits them: at the same slots, or, with a
    /// window, at slots behind the positions it dropped first.
    fn run(&mut self, tokens: &[u32], position: usize) -> Result<Vec<f32>> {
        let (slot, shift) = match &mut self.window {
            None => (position, 0),
            Some(w) => {
                let p = w.place(position, tokens.len());
                if let Some((at, n)) = p.evict {
                    self.cache.remove(at, n)?;
                }
                (p.slot, w.evicted())
            }
        };
        let logits = self
            .model
            .forward_shifted(tokens, slot, shift, &mut self.cache, false)?;
        self.cache.commit(slot + tokens.len())?;
        Ok(logits)
    }
}

impl Continuation for LocalRun<'_> {
    fn model(&self) -> &Model {
        self.model
    }

    fn token(&mut self, position: usize) -> u32 {
        self.sampler.sample(&self.logits, position as u64)
    }

    fn advance(&mut self, token: u32, position: usize) -> Result<()> {
        self.logits = self.run(&[token], position)?;
        Ok(())
    }
}

impl Continuation for SplitRun<'_> {
    fn model(&self) -> &Model {
        SplitRun::model(self)
    }

    fn token(&mut self, _position: usize) -> u32 {
        SplitRun::token(self)
    }

    fn advance(&mut self, token: u32, position: usize) -> Result<()> {
        SplitRun::advance(self, token, position)
    }
}

/// A KV cache for `positions` positions of `n_layers` layers, reserved against `budget`.
pub(super) fn allocate(
    budget: &KvBudget,
    a: &seam_shared::package::Architecture,
    dtype: KvDtype,
    n_layers: usize,
    positions: usize,
) -> Result<(KvCache, Reservation)> {
    let geometry = KvGeometry {
        n_layers,
        n_kv_heads: a.n_head_kv as usize,
        head_dim: a.head_dim as usize,
    };
    // An empty cache of the same geometry tells the bytes per position.
    let bytes = KvCache::new(geometry, dtype, 0).bytes_per_token() * positions;
    let reservation = budget.try_reserve(bytes)?;
    Ok((KvCache::try_new(geometry, dtype, positions)?, reservation))
}

/// Whether a split request that failed this way can finish on the device: the link, the
/// gateway or the worker went away (or lost the session), not a bug or a bad request.
pub(super) fn recoverable(e: &Error) -> bool {
    match e {
        Error::Unavailable(_) | Error::GoLocal { .. } => true,
        Error::Remote { code, .. } => matches!(
            code,
            tonic::Code::Unavailable
                | tonic::Code::NotFound
                | tonic::Code::Aborted
                | tonic::Code::DeadlineExceeded
                | tonic::Code::ResourceExhausted
        ),
        _ => false,
    }
}

pub(super) enum Stage<'a> {
    Split(Box<SplitRun<'a>>),
    Local(Box<LocalRun<'a>>),
    /// Between the two, only inside `fall_back`.
    Switching,
    /// The local continuation could not be set up (the error went to the caller).
    Failed(&'a mut Model),
}

/// A split run that finishes on the device when the cloud half goes away mid-answer: it keeps
/// the tokens so far and, on a recoverable failure, prefills them through every local layer and
/// continues locally. Greedy output is unchanged (the same model decides every token).
pub(super) struct Resilient<'a> {
    pub(super) stage: Stage<'a>,
    /// Prompt and every token handed out so far.
    pub(super) history: Vec<u32>,
    pub(super) budget: &'a KvBudget,
    pub(super) dtype: KvDtype,
    pub(super) capacity: usize,
    pub(super) sampling: SamplingParams,
    pub(super) report: Option<SplitReport>,
    pub(super) fallback: Option<String>,
    /// The split cache's reservation, released when the run falls back.
    pub(super) split_reservation: Option<Reservation>,
    pub(super) reservation: Option<Reservation>,
}

impl Resilient<'_> {
    fn fall_back(&mut self, why: &Error) -> Result<()> {
        let stage = std::mem::replace(&mut self.stage, Stage::Switching);
        let Stage::Split(run) = stage else {
            self.stage = stage;
            return Err(Error::Unavailable("fallback outside a split run".into()));
        };
        let (model, report) = (*run).abandon();
        self.report = Some(report);
        // The split cache is gone with the run: its reservation can go before the local one.
        drop(self.split_reservation.take());
        tracing::warn!(error = %why, positions = self.history.len(), "the cloud half went away; finishing on the device");
        let n_layers = (model.layers().end - model.layers().start) as usize;
        let allocated = allocate(
            self.budget,
            model.arch(),
            self.dtype,
            n_layers,
            self.capacity,
        )
        .and_then(|(cache, r)| Ok((cache, r, Sampler::new(self.sampling)?)));
        let (cache, reservation, sampler) = match allocated {
            Ok(a) => a,
            Err(e) => {
                self.stage = Stage::Failed(model);
                return Err(e);
            }
        };
        self.fallback = Some(format!("finished on the device: {why}"));
        self.reservation = Some(reservation);
        let mut local = LocalRun {
            model,
            cache,
            logits: Vec::new(),
            sampler,
            window: None,
        };
        let prefilled = local.prefill(&self.history, 0, &|| false);
        self.stage = Stage::Local(Box::new(local));
        prefilled.map(|_| ())
    }
}

impl Continuation for Resilient<'_> {
    fn model(&self) -> &Model {
        match &self.stage {
            Stage::Split(r) => r.model(),
            Stage::Local(r) => r.model,
            Stage::Failed(m) => m,
            Stage::Switching => unreachable!("only inside fall_back"),
        }
    }

    fn token(&mut self, position: usize) -> u32 {
        match &mut self.stage {
            Stage::Split(r) => SplitRun::token(r),
            Stage::Local(r) => r.token(position),
            Stage::Switching | Stage::Failed(_) => 0,
        }
    }

    fn advance(&mut self, token: u32, position: usize) -> Result<()> {
        self.history.push(token);
        let failed = match &mut self.stage {
            Stage::Split(r) => match r.advance(token, position) {
                Ok(()) => return Ok(()),
                Err(e) if recoverable(&e) => e,
                Err(e) => return Err(e),
            },
            Stage::Local(r) => return r.advance(token, position),
            Stage::Switching | Stage::Failed(_) => {
                return Err(Error::Unavailable(
                    "the run failed while switching to local".into(),
                ));
            }
        };
        self.fall_back(&failed)
    }
}
