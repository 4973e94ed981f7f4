//! The device half of a split request: layers `[0, K)` run here, the layer-K hidden states go to
//! a cloud worker through a [`SplitLink`], and the worker answers each step with the next token.
//!
//! The link is a synchronous interface so that the engine (which runs on a blocking thread) does
//! not care whether it talks to a worker directly or through the gateway.

use super::engine::PREFILL_CHUNK;
use super::kv_cache::KvCache;
use super::model::Model;
use super::sampler::SamplingParams;
use crate::error::{Error, Result};
use seam_shared::proto::common::{StepRequest, StepResponse};
use seam_shared::tensor::{self, WireDtype};
use std::time::Instant;

/// What a split session is opened with.
#[derive(Debug, Clone)]
pub struct OpenSplit {
    /// Split layer K: the device runs `[0, K)`.
    pub layer: u32,
    /// Positions the session will hold (prompt + completion).
    pub max_positions: u32,
    pub sampling: SamplingParams,
    pub deadline: Option<Instant>,
}

/// Bytes and round trips of one split session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Encoded protobuf messages sent.
    pub bytes_sent: u64,
    /// Encoded protobuf messages received.
    pub bytes_received: u64,
    /// Request/response exchanges (open, steps, close).
    pub round_trips: u32,
}

/// A connection to the cloud half of the model.
pub trait SplitLink {
    /// Opens a session; returns its id.
    fn open(&mut self, params: &OpenSplit) -> Result<String>;
    /// Sends one step and waits for its answer (an answer carrying a `StepError` is returned
    /// as it is).
    fn step(&mut self, request: StepRequest) -> Result<StepResponse>;
    /// Closes the session (best effort).
    fn close(&mut self);
    /// Traffic so far.
    fn counters(&self) -> LinkCounters;
}

/// What a finished split request reports.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitReport {
    pub layer: u32,
    pub wire: WireDtype,
    pub counters: LinkCounters,
}

/// A split session in progress: the device's cache for layers `[0, K)` and the token the worker
/// chose last.
pub struct SplitRun<'a> {
    model: &'a mut Model,
    cache: KvCache,
    link: &'a mut dyn SplitLink,
    session: String,
    layer: u32,
    wire: WireDtype,
    step_id: u64,
    next: u32,
}

impl<'a> SplitRun<'a> {
    /// Opens the session and sends the prompt (in chunks); the worker's answer to the last
    /// chunk is the first token. `deadline_hit` is checked between chunks: `Ok(None)` means it
    /// passed.
    pub fn start(
        model: &'a mut Model,
        cache: KvCache,
        link: &'a mut dyn SplitLink,
        open: &OpenSplit,
        wire: WireDtype,
        tokens: &[u32],
        deadline_hit: impl Fn() -> bool,
    ) -> Result<Option<SplitRun<'a>>> {
        let session = link.open(open)?;
        let mut run = SplitRun {
            model,
            cache,
            link,
            session,
            layer: open.layer,
            wire,
            step_id: 0,
            next: 0,
        };
        let mut pos = 0;
        while pos < tokens.len() {
            if deadline_hit() {
                run.link.close();
                return Ok(None);
            }
            let end = (pos + PREFILL_CHUNK).min(tokens.len());
            run.next = run.forward(&tokens[pos..end], pos)?;
            pos = end;
        }
        Ok(Some(run))
    }

    pub fn model(&self) -> &Model {
        self.model
    }

    /// The token the worker chose last.
    pub fn token(&self) -> u32 {
        self.next
    }

    /// Runs `token` (at `position`) through layers `[0, K)` and the worker.
    pub fn advance(&mut self, token: u32, position: usize) -> Result<()> {
        self.next = self.forward(&[token], position)?;
        Ok(())
    }

    /// Device layers for `tokens` at `pos..`, then one step; returns the worker's next token.
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<u32> {
        let h = self.model.embed(tokens)?;
        let h = self
            .model
            .run_layers(0..self.layer, h, pos, &mut self.cache)?;
        self.cache.commit(pos + tokens.len())?;
        self.step_id += 1;
        let request = StepRequest {
            session_id: self.session.clone(),
            step_id: self.step_id,
            start_position: pos as u32,
            hidden: Some(tensor::encode(&h, self.model.n_embd(), self.wire)?),
            ..Default::default()
        };
        let r = self.link.step(request)?;
        check_answer(&r, self.step_id, pos + tokens.len())?;
        Ok(r.next_token)
    }

    /// Device KV bytes held.
    pub fn kv_bytes(&self) -> usize {
        self.cache.len() * self.cache.bytes_per_token()
    }

    /// Closes the session and reports its traffic.
    pub fn finish(self) -> SplitReport {
        self.link.close();
        SplitReport {
            layer: self.layer,
            wire: self.wire,
            counters: self.link.counters(),
        }
    }
}

/// Turns an answer into the next token or the worker's error.
pub fn check_answer(r: &StepResponse, step_id: u64, kv_len: usize) -> Result<()> {
    if let Some(e) = &r.error {
        return Err(Error::Remote {
            code: tonic::Code::from(e.code),
            message: e.message.clone(),
            retry_after_ms: e.retry_after_ms,
        });
    }
    if r.step_id != step_id || r.kv_len as usize != kv_len {
        return Err(Error::Unavailable(format!(
            "the worker answered step {} at length {}, expected step {step_id} at length {kv_len}",
            r.step_id, r.kv_len
        )));
    }
    Ok(())
}

/// Perplexity of `tokens` with layers `[0, K)` here and the rest on the worker, over the same
/// windows as [`super::perplexity::perplexity`]. Each window starts the session over
/// (`rollback_to = 0`) and asks for the logits of the scored rows, in steps of at most
/// `rows_per_step` rows.
#[allow(clippy::too_many_arguments)]
pub fn split_perplexity(
    model: &mut Model,
    link: &mut dyn SplitLink,
    layer: u32,
    wire: WireDtype,
    tokens: &[u32],
    ctx: usize,
    max_windows: Option<usize>,
    rows_per_step: usize,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<(super::perplexity::Perplexity, LinkCounters)> {
    let windows = super::perplexity::window_count(model, tokens, ctx, max_windows)?;
    let a = model.arch().clone();
    let geometry = super::kv_cache::KvGeometry {
        n_layers: layer as usize,
        n_kv_heads: a.n_head_kv as usize,
        head_dim: a.head_dim as usize,
    };
    let vocab = a.vocab_size as usize;
    let session = link.open(&OpenSplit {
        layer,
        max_positions: ctx as u32,
        sampling: SamplingParams::default(),
        deadline: None,
    })?;
    let mut cache = KvCache::try_new(geometry, super::kv_cache::KvDtype::Int8, ctx)?;
    let first = ctx / 2;
    let (mut nll, mut count, mut step_id) = (0.0f64, 0usize, 0u64);
    for w in 0..windows {
        let window = &tokens[w * ctx..(w + 1) * ctx];
        cache.truncate(0)?;
        let h = model.embed(window)?;
        let h = model.run_layers(0..layer, h, 0, &mut cache)?;
        cache.commit(ctx)?;
        let d = model.n_embd();
        let mut pos = 0;
        while pos < ctx {
            let end = (pos + rows_per_step).min(ctx);
            step_id += 1;
            let want = end > first;
            let request = StepRequest {
                session_id: session.clone(),
                step_id,
                start_position: pos as u32,
                hidden: Some(tensor::encode(&h[pos * d..end * d], d, wire)?),
                rollback_to: (pos == 0).then_some(0),
                want_logits: want,
                ..Default::default()
            };
            let r = link.step(request)?;
            check_answer(&r, step_id, end)?;
            if want {
                let logits = r
                    .logits
                    .as_ref()
                    .ok_or_else(|| Error::Unavailable("the worker sent no logits".into()))?;
                let rows = tensor::decode(logits, Some(vocab), (end - pos) * vocab)?;
                for j in first.max(pos)..end.min(ctx - 1) {
                    let row = &rows.data[(j - pos) * vocab..(j - pos + 1) * vocab];
                    nll -= super::perplexity::log_softmax_at(row, window[j + 1] as usize);
                    count += 1;
                }
            }
            pos = end;
        }
        progress(w + 1, windows, (nll / count as f64).exp());
    }
    link.close();
    Ok((
        super::perplexity::Perplexity {
            perplexity: (nll / count as f64).exp(),
            windows,
            scored_tokens: count,
            text_tokens: tokens.len(),
            ctx,
            kv: format!("int8, split at {layer} ({wire} wire)"),
        },
        link.counters(),
    ))
}
