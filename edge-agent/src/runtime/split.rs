//! The device half of a split request: layers `[0, K)` run here, the layer-K hidden states go to
//! a cloud worker through a [`SplitLink`], and the worker answers each step with the next token.
//!
//! The link is a synchronous interface so that the engine (which runs on a blocking thread) does
//! not care whether it talks to a worker directly or through the gateway.

use super::draft::draft;
use super::draft_len::DraftPolicy;
use super::engine::PREFILL_CHUNK;
use super::kv_cache::KvCache;
use super::model::Model;
use super::sampler::{Sampler, SamplingParams};
use crate::error::{Error, Result};
use seam_shared::proto::common::{StepRequest, StepResponse};
use seam_shared::tensor::{self, WireDtype};
use std::collections::VecDeque;
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
    /// Most drafts the session's steps will carry (0: no speculation).
    pub max_draft_tokens: u32,
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
    pub speculation: SpeculationStats,
}

/// Drafting figures of one split request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpeculationStats {
    /// Whether the request drafted at all.
    pub enabled: bool,
    pub drafted: u64,
    pub accepted: u64,
    /// Round trips that settled tokens: the last prompt chunk and every decode step.
    pub token_steps: u32,
}

impl SpeculationStats {
    /// Share of drafts the worker accepted (0 without drafts).
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// How a split request drafts.
#[derive(Debug, Clone, Copy)]
pub struct Speculation {
    /// Acceptance to start the draft-length policy from (the exit head's held-out figure).
    pub prior: f64,
    /// Most drafts per step.
    pub max_drafts: usize,
    /// A fixed draft length instead of the adaptive policy.
    pub fixed: Option<usize>,
}

/// A split session in progress: the device's cache for layers `[0, K)` and the tokens the last
/// step settled.
pub struct SplitRun<'a> {
    model: &'a mut Model,
    cache: KvCache,
    link: &'a mut dyn SplitLink,
    session: String,
    layer: u32,
    wire: WireDtype,
    step_id: u64,
    /// Tokens settled and not yet handed out, in order. All but the last are accepted drafts,
    /// already in both caches; the last is in neither.
    settled: VecDeque<u32>,
    /// Drafting: the policy, the sampler drafts are drawn with, and the end-of-turn tokens.
    speculation: Option<(Speculation, DraftPolicy)>,
    sampler: Sampler,
    stop: Vec<u32>,
    /// Positions the session holds at most.
    limit: usize,
    stats: SpeculationStats,
}

impl<'a> SplitRun<'a> {
    /// Opens the session and sends the prompt (in chunks); the worker's answer to the last
    /// chunk is the first token. `deadline_hit` is checked between chunks: `Ok(None)` means it
    /// passed.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        model: &'a mut Model,
        cache: KvCache,
        link: &'a mut dyn SplitLink,
        open: &OpenSplit,
        wire: WireDtype,
        speculation: Option<Speculation>,
        tokens: &[u32],
        deadline_hit: impl Fn() -> bool,
    ) -> Result<Option<SplitRun<'a>>> {
        let session = link.open(open)?;
        let arch = model.arch();
        let mut stop = arch.stop_tokens.clone();
        stop.push(arch.eos_token);
        let mut run = SplitRun {
            model,
            cache,
            link,
            session,
            layer: open.layer,
            wire,
            step_id: 0,
            settled: VecDeque::new(),
            speculation: speculation.map(|s| (s, DraftPolicy::new(s.prior, s.max_drafts))),
            sampler: Sampler::new(open.sampling)?,
            stop,
            limit: open.max_positions as usize,
            stats: SpeculationStats {
                enabled: speculation.is_some(),
                ..SpeculationStats::default()
            },
        };
        let mut pos = 0;
        let mut first = 0;
        while pos < tokens.len() {
            if deadline_hit() {
                run.link.close();
                return Ok(None);
            }
            let end = (pos + PREFILL_CHUNK).min(tokens.len());
            first = run.forward(&tokens[pos..end], pos)?;
            pos = end;
        }
        run.settled.push_back(first);
        run.stats.token_steps = 1;
        Ok(Some(run))
    }

    pub fn model(&self) -> &Model {
        self.model
    }

    /// The next settled token.
    pub fn token(&self) -> u32 {
        self.settled.front().copied().unwrap_or(0)
    }

    /// Hands `token` (at `position`) out. When it was the last settled token, runs it through
    /// layers `[0, K)` with the next drafts and verifies them on the worker.
    pub fn advance(&mut self, token: u32, position: usize) -> Result<()> {
        self.settled.pop_front();
        if !self.settled.is_empty() {
            return Ok(());
        }
        // Drafts go at positions position + 1 ..= position + k, inside the session.
        let room = self.limit.saturating_sub(position + 1);
        let k = match &self.speculation {
            Some((s, policy)) => s.fixed.unwrap_or_else(|| policy.choose(room)).min(room),
            None => 0,
        };
        self.stats.token_steps += 1;
        if k == 0 {
            let sent = Instant::now();
            let next = self.forward(&[token], position)?;
            self.settled.push_back(next);
            // Keep the round trip current, so that drafting resumes when the link slows down.
            if let Some((_, policy)) = &mut self.speculation {
                policy.observe(0, 0, sent.elapsed().as_secs_f64(), 0.0);
            }
            return Ok(());
        }
        self.speculate(token, position, k)
    }

    /// One verification round trip: drafts `k` tokens after `token`, ships them with their
    /// layer-K states, keeps what the worker accepts and rolls the rest back.
    fn speculate(&mut self, token: u32, position: usize, k: usize) -> Result<()> {
        let drafted = draft(
            self.model,
            &mut self.cache,
            self.layer,
            token,
            position,
            k,
            &mut self.sampler,
            &self.stop,
        )?;
        let k = drafted.drafts.len();
        self.step_id += 1;
        let request = StepRequest {
            session_id: self.session.clone(),
            step_id: self.step_id,
            start_position: position as u32,
            hidden: Some(tensor::encode(
                &drafted.hidden,
                self.model.n_embd(),
                self.wire,
            )?),
            draft_tokens: drafted.drafts.clone(),
            draft_probs: drafted.dists,
            ..Default::default()
        };
        let sent = Instant::now();
        let r = self.link.step(request)?;
        let step_time = sent.elapsed();
        let accepted = r.accepted as usize;
        if accepted > k {
            return Err(Error::Unavailable(format!(
                "the worker accepted {accepted} of {k} drafts"
            )));
        }
        check_answer(&r, self.step_id, position + 1 + accepted)?;
        // O(1) rollback: the rejected drafts' rows are forgotten.
        self.cache.truncate(position + 1 + accepted)?;
        self.settled.extend(&drafted.drafts[..accepted]);
        self.settled.push_back(r.next_token);
        self.stats.drafted += k as u64;
        self.stats.accepted += accepted as u64;
        if let Some((_, policy)) = &mut self.speculation {
            let per_draft = drafted.draft_time.as_secs_f64() / k.max(1) as f64;
            policy.observe(k, accepted, step_time.as_secs_f64(), per_draft);
        }
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

    /// Gives up the session (closing it, best effort) and hands the model back, with the
    /// traffic so far: the request goes on without the cloud.
    pub fn abandon(self) -> (&'a mut Model, SplitReport) {
        self.link.close();
        let report = SplitReport {
            layer: self.layer,
            wire: self.wire,
            counters: self.link.counters(),
            speculation: self.stats,
        };
        (self.model, report)
    }

    /// Closes the session and reports its traffic.
    pub fn finish(self) -> SplitReport {
        self.link.close();
        SplitReport {
            layer: self.layer,
            wire: self.wire,
            counters: self.link.counters(),
            speculation: self.stats,
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
        max_draft_tokens: 0,
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
