//! One model serving generation requests one at a time: tokenises, reuses the KV of a repeated
//! prompt prefix, prefills in chunks, decodes with the sampler, streams text, and stops on
//! end-of-turn tokens, stop strings, max tokens, the deadline or cancellation.

use super::budget::{KvBudget, Reservation};
use super::chat_format::ChatFormat;
use super::context::{Fitted, Overflow, fit};
use super::continuation::{Continuation, LocalRun, Resilient, Stage, allocate, recoverable};
use super::draft::policy::MAX_DRAFT;
use super::kv_cache::{KvCache, KvDtype};
use super::model::Model;
use super::sampler::{Sampler, SamplingParams};
use super::split::{OpenSplit, Speculation, SplitLink, SplitReport, SplitRun};
use super::text_stream::TextStream;
use crate::error::{Error, Result};
use seam_shared::tensor::WireDtype;
use std::time::{Duration, Instant};

/// Rows prefilled per forward pass (bounds the transient activations of long prompts).
pub const PREFILL_CHUNK: usize = 256;
/// Largest completion a request may ask for.
pub const MAX_TOKENS_LIMIT: u32 = 4096;

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Text placed before the prompt (a system prompt); its KV is reused across requests.
    pub system: Option<String>,
    /// Chat requests: the conversation's earlier turns, oldest first (between the system
    /// prompt and `prompt`, the user's newest message).
    pub history: Vec<ChatTurn>,
    pub prompt: String,
    /// Wrap system and prompt in the model's chat template.
    pub chat: bool,
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub deadline: Option<Instant>,
    /// Split requests: drafts per verification round trip. `None`: adaptive (trees of the
    /// draft head's branches and the prompt-lookup run for greedy requests, chains for sampled
    /// ones); `Some(0)`: no speculation, one token per round trip; `Some(k)`: always a chain
    /// of `k` (from the draft head, or from lookup when the package has none).
    pub draft_tokens: Option<u32>,
    /// When the prompt and `max_tokens` do not fit the context; `None`: the engine's default.
    pub context_overflow: Option<Overflow>,
}

/// Who said a turn of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    User,
    Assistant,
}

/// One earlier turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTurn {
    pub speaker: Speaker,
    pub text: String,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-turn token.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// A stop string was produced.
    StopString,
    /// The deadline passed.
    Deadline,
    /// The caller went away.
    Cancelled,
}

/// Figures of one finished request.
#[derive(Debug, Clone)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub cached_prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prefill: Duration,
    pub decode: Duration,
    pub first_token: Duration,
    pub total: Duration,
    pub kv_bytes: usize,
    pub kv_bytes_per_token: usize,
    pub finish: FinishReason,
    /// Split requests: the split layer, wire dtype and traffic.
    pub split: Option<SplitReport>,
    /// Why a split request finished (or ran entirely) on the device, if it did.
    pub fallback: Option<String>,
    /// The fallback was forced by a failure or refusal of the cloud half (the gateway, the
    /// link or the worker), not chosen (a sliding window runs on the device by design).
    pub degraded: bool,
    /// Process CPU time (all threads) spent in the decode phase.
    pub decode_cpu: Duration,
    /// How the request was fitted to the context.
    pub context: Fitted,
}

impl GenerateStats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        per_s(self.prompt_tokens - self.cached_prompt_tokens, self.prefill)
    }
    /// Split requests: tokens settled per verification round trip of the decode phase (the
    /// accepted drafts plus the worker's token, end-of-turn included; 0 when local).
    pub fn tokens_per_round_trip(&self) -> f64 {
        self.split
            .as_ref()
            .map_or(0.0, |r| r.speculation.tokens_per_round_trip())
    }

    /// Device CPU time per completion token in the decode phase, milliseconds.
    pub fn cpu_ms_per_token(&self) -> f64 {
        if self.completion_tokens == 0 {
            0.0
        } else {
            self.decode_cpu.as_secs_f64() * 1e3 / self.completion_tokens as f64
        }
    }

    /// Decode speed: tokens after the first over the time they took.
    pub fn decode_tokens_per_s(&self) -> f64 {
        per_s(self.completion_tokens.saturating_sub(1), self.decode)
    }
}

fn per_s(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// A token handed to the caller as it is produced.
#[derive(Debug, Clone)]
pub struct TokenOut {
    pub id: u32,
    pub index: usize,
    /// Text that became safe to show with this token (may be empty).
    pub text: String,
}

/// Whether the caller wants more tokens.
pub type Keep = bool;

/// The KV of a finished local request's prompt and answer, kept for the next requests that
/// share its beginning: the next turn of the conversation (the history it re-sends), or the same
/// system prompt.
struct CachedPrefix {
    /// The tokens whose KV `cache` holds, position by position.
    tokens: Vec<u32>,
    cache: KvCache,
    _reservation: Reservation,
}

/// Finished requests whose KV is kept (within the byte budget, least recently used evicted
/// first).
pub const MAX_CACHED_PREFIXES: usize = 8;

/// The model plus the state kept between requests.
pub struct Engine {
    model: Model,
    kv_dtype: KvDtype,
    budget: KvBudget,
    /// Positions a request may use (the model's context length unless set lower).
    context: usize,
    /// Handling of requests that do not fit, unless they say.
    overflow: Overflow,
    /// Most recently used last.
    prefixes: Vec<CachedPrefix>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(model: Model, kv_dtype: KvDtype, budget: KvBudget) -> Self {
        Engine {
            context: model.arch().context_length as usize,
            overflow: Overflow::Error,
            model,
            kv_dtype,
            budget,
            prefixes: Vec::new(),
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    /// The model, without the engine's state.
    pub fn into_model(self) -> Model {
        self.model
    }

    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// Positions a request may use.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Limits requests to `positions` (16 up to the model's context length), for a device
    /// that bounds each request's KV memory.
    pub fn set_context(&mut self, positions: usize) -> Result<()> {
        let most = self.model.arch().context_length as usize;
        if !(16..=most).contains(&positions) {
            return Err(Error::InvalidArgument(format!(
                "a context of {positions} positions is outside 16..={most} (the model's)"
            )));
        }
        self.context = positions;
        Ok(())
    }

    /// The handling of requests that do not fit and do not say.
    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    pub fn set_overflow(&mut self, overflow: Overflow) {
        self.overflow = overflow;
    }

    pub fn budget(&self) -> &KvBudget {
        &self.budget
    }

    /// The chat markup of the loaded model.
    pub fn chat_format(&self) -> ChatFormat {
        ChatFormat::of(self.model.package().manifest().chat_template.as_deref())
    }

    /// The token ids of a request's full prompt text (after the BOS token for a tokenizer that
    /// adds one, as Gemma's does).
    pub fn prompt_tokens(&self, req: &GenerateRequest) -> Result<Vec<u32>> {
        let text = render_prompt(req, self.chat_format());
        let enc = self
            .model
            .tokenizer()
            .encode(text.as_str(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokens of the prompt's system part: the start that truncation and sliding keep (0 when
    /// the prompt has none, or its tokens do not begin with the system part's own).
    fn system_tokens(&self, req: &GenerateRequest, tokens: &[u32]) -> Result<usize> {
        let Some(text) = render_system(req, self.chat_format()) else {
            return Ok(0);
        };
        let enc = self
            .model
            .tokenizer()
            .encode(text.as_str(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids();
        Ok(if tokens.starts_with(ids) {
            ids.len()
        } else {
            0
        })
    }

    /// A KV cache for `positions` positions of every loaded layer, reserved against the budget
    /// (cached prefixes are evicted first, least recently used first, if the budget is short).
    pub fn allocate_cache(&mut self, positions: usize) -> Result<(KvCache, Reservation)> {
        let layers = self.model.layers();
        self.allocate_cache_for((layers.end - layers.start) as usize, positions)
    }

    /// A KV cache for `positions` positions of the first `n_layers` layers, reserved against the
    /// budget (cached prefixes are evicted first, least recently used first, if it is short).
    pub fn allocate_cache_for(
        &mut self,
        n_layers: usize,
        positions: usize,
    ) -> Result<(KvCache, Reservation)> {
        loop {
            let a = self.model.arch();
            match allocate(&self.budget, a, self.kv_dtype, n_layers, positions) {
                Err(_) if !self.prefixes.is_empty() => {
                    self.prefixes.remove(0);
                }
                r => return r,
            }
        }
    }

    /// The kept request sharing the longest beginning with `tokens`, and how long (at least one
    /// token is left to compute, for its logits).
    fn best_prefix(&self, tokens: &[u32]) -> Option<(usize, usize)> {
        self.prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let n = common_prefix(&p.tokens, tokens)
                    .min(tokens.len().saturating_sub(1))
                    .min(p.cache.len());
                (i, n)
            })
            .filter(|&(_, n)| n > 0)
            .max_by_key(|&(i, n)| (n, i))
    }

    /// Runs one request to the end on the device, handing each token to `on_token` (which
    /// returns `false` to cancel).
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        on_token: impl FnMut(TokenOut) -> Keep,
    ) -> Result<GenerateStats> {
        self.generate_routed(req, Route::Local, on_token)
    }

    /// Runs one request to the end, on the device or split with the cloud as `route` says.
    pub fn generate_routed(
        &mut self,
        req: &GenerateRequest,
        route: Route<'_>,
        on_token: impl FnMut(TokenOut) -> Keep,
    ) -> Result<GenerateStats> {
        let started = Instant::now();
        let overflow = req.context_overflow.unwrap_or(self.overflow);
        validate(req, self.context as u32, overflow)?;
        let mut req = req.clone();
        req.context_overflow = Some(overflow);
        if req.sampling.temperature > 0.0 && req.sampling.seed == 0 {
            // Seed 0 asks for a random answer; the draws themselves are keyed by the seed.
            req.sampling.seed = rand::random::<u64>() | 1;
        }
        let mut tokens = self.prompt_tokens(&req)?;
        if tokens.is_empty() {
            return Err(Error::InvalidArgument(
                "the prompt encodes to no tokens".into(),
            ));
        }
        let max_tokens = req.max_tokens as usize;
        // The system part matters only to a request that does not fit.
        let keep = if tokens.len() + max_tokens > self.context {
            self.system_tokens(&req, &tokens)?
        } else {
            0
        };
        let (fitted, window) = fit(&mut tokens, keep, max_tokens, self.context, overflow)?;
        let capacity = (tokens.len() + max_tokens).min(self.context);
        let mut route = route;
        let mut note = None;
        if window.is_some() && matches!(route, Route::Split { .. }) {
            // The worker's cache does not slide: the whole request runs here.
            route = Route::Local;
            note = Some("a sliding window runs the whole model on the device".to_string());
        }
        let deadline = req.deadline;
        let deadline_hit = move || deadline.is_some_and(|d| Instant::now() >= d);
        match route {
            Route::Local => {
                let (cache, reservation, cached) = self.local_cache(&tokens, capacity)?;
                // The answer's tokens, to keep its KV for the conversation's next turn.
                let mut answer = Vec::new();
                let mut on_token = on_token;
                let on_token = |t: TokenOut| {
                    if t.index == answer.len() {
                        answer.push(t.id);
                    }
                    on_token(t)
                };
                let mut run = LocalRun {
                    model: &mut self.model,
                    cache,
                    logits: Vec::new(),
                    sampler: Sampler::new(req.sampling)?,
                    window,
                };
                let prefilled = run.prefill(&tokens, cached, &deadline_hit)?;
                let prefill = started.elapsed();
                let mut stats = decode(
                    &mut run,
                    &req,
                    &tokens,
                    !prefilled,
                    &deadline_hit,
                    on_token,
                    started,
                    prefill,
                )?;
                stats.cached_prompt_tokens = cached;
                stats.kv_bytes = run.cache.len() * run.cache.bytes_per_token();
                stats.kv_bytes_per_token = run.cache.bytes_per_token();
                stats.context = Fitted {
                    evicted: run.evicted(),
                    ..fitted
                };
                stats.fallback = note;
                if run.evicted() > 0 {
                    // The window dropped positions: the cache no longer holds a prefix.
                    return Ok(stats);
                }
                // Keep the KV of the prompt and the answer for the next requests: the next turn
                // of this conversation re-sends both, a repeated system prompt shares the start.
                let mut cache = run.cache;
                let kept: Vec<u32> = tokens
                    .iter()
                    .chain(&answer)
                    .copied()
                    .take(cache.len())
                    .collect();
                cache.truncate(kept.len())?;
                self.prefixes.push(CachedPrefix {
                    tokens: kept,
                    cache,
                    _reservation: reservation,
                });
                if self.prefixes.len() > MAX_CACHED_PREFIXES {
                    self.prefixes.remove(0);
                }
                Ok(stats)
            }
            Route::Split { layer, wire, link } => {
                if !self
                    .model
                    .package()
                    .manifest()
                    .split_points
                    .contains(&layer)
                {
                    return Err(Error::InvalidArgument(format!(
                        "split layer {layer} is not a split point of this package ({:?})",
                        self.model.package().manifest().split_points
                    )));
                }
                let speculation = self.speculation(req.draft_tokens, layer)?;
                let (cache, split_reservation) =
                    self.allocate_cache_for(layer as usize, capacity)?;
                let bytes_per_token = cache.bytes_per_token();
                let open = OpenSplit {
                    layer,
                    max_positions: capacity as u32,
                    sampling: req.sampling,
                    deadline: req.deadline,
                    // Greedy requests with a draft head send trees of up to this many nodes.
                    max_draft_tokens: speculation
                        .as_ref()
                        .map_or(0, |_| super::draft::MAX_TREE_NODES as u32),
                };
                let run = SplitRun::start(
                    &mut self.model,
                    cache,
                    link,
                    &open,
                    wire,
                    speculation,
                    &tokens,
                    deadline_hit,
                );
                let run = match run {
                    Ok(r) => r,
                    // Not admitted, or the cloud half is unreachable before the first token:
                    // the whole request runs on the device.
                    Err(e) if recoverable(&e) => {
                        tracing::warn!(error = %e, "split unavailable; running the request on the device");
                        let mut stats = self.generate_routed(&req, Route::Local, on_token)?;
                        stats.fallback = Some(e.to_string());
                        stats.degraded = true;
                        return Ok(stats);
                    }
                    Err(e) => return Err(e),
                };
                let prefill = started.elapsed();
                let Some(run) = run else {
                    let mut stats = empty_stats(&tokens, started, FinishReason::Deadline);
                    stats.prefill = prefill;
                    return Ok(stats);
                };
                let mut run = Resilient {
                    stage: Stage::Split(Box::new(run)),
                    history: tokens.clone(),
                    budget: &self.budget,
                    dtype: self.kv_dtype,
                    capacity,
                    sampling: req.sampling,
                    report: None,
                    fallback: None,
                    split_reservation: Some(split_reservation),
                    reservation: None,
                };
                let result = decode(
                    &mut run,
                    &req,
                    &tokens,
                    false,
                    &deadline_hit,
                    on_token,
                    started,
                    prefill,
                );
                let (kv_bytes, bytes_per_token, report) = match run.stage {
                    Stage::Split(r) => (r.kv_bytes(), bytes_per_token, Some((*r).finish())),
                    Stage::Local(l) => (
                        l.cache.len() * l.cache.bytes_per_token(),
                        l.cache.bytes_per_token(),
                        run.report,
                    ),
                    Stage::Switching | Stage::Failed(_) => (0, bytes_per_token, run.report),
                };
                let mut stats = result?;
                stats.kv_bytes = kv_bytes;
                stats.kv_bytes_per_token = bytes_per_token;
                stats.split = report;
                stats.degraded = run.fallback.is_some();
                stats.fallback = run.fallback;
                stats.context = fitted;
                Ok(stats)
            }
        }
    }

    /// How a split request drafts, given what it asked for (see
    /// [`GenerateRequest::draft_tokens`]): with the draft head when the package has one, and
    /// with prompt lookup; the worker's own drafts at split layer `layer` start from its state
    /// predictor's held-out acceptance.
    fn speculation(&self, asked: Option<u32>, layer: u32) -> Result<Option<Speculation>> {
        let drafter = self.model.drafter();
        let prior = drafter.map_or_else(Vec::new, |d| d.heldout_acceptance().to_vec());
        let worker_prior: Vec<f64> = (self.model.package().manifest().predictors.iter())
            .find(|p| p.layer == layer)
            .map_or_else(Vec::new, |p| {
                p.heldout_acceptance.iter().map(|&a| a as f64).collect()
            });
        let head = drafter.is_some();
        match asked {
            Some(0) => Ok(None),
            Some(k) if k as usize > MAX_DRAFT => Err(Error::InvalidArgument(format!(
                "draft_tokens must be at most {MAX_DRAFT}, got {k}"
            ))),
            Some(k) => Ok(Some(Speculation {
                prior,
                max_drafts: k as usize,
                fixed: Some(k as usize),
                head,
                worker_prior,
            })),
            None => Ok(Some(Speculation {
                prior,
                max_drafts: MAX_DRAFT,
                fixed: None,
                head,
                worker_prior,
            })),
        }
    }

    /// The cache of a local request: the kept request sharing the longest beginning with
    /// `tokens` reused in place when the request continues all of it (the next turn of its
    /// conversation) and it is big enough; else a new cache with the shared beginning copied in,
    /// the kept one staying for its own conversation. Returns the cache with its reservation and
    /// the number of prompt positions already computed.
    fn local_cache(
        &mut self,
        tokens: &[u32],
        capacity: usize,
    ) -> Result<(KvCache, Reservation, usize)> {
        let Some((i, common)) = self.best_prefix(tokens) else {
            let (cache, r) = self.allocate_cache(capacity)?;
            return Ok((cache, r, 0));
        };
        let source = self.prefixes.remove(i);
        if common == source.tokens.len() && source.cache.capacity() >= capacity {
            return Ok((source.cache, source._reservation, common));
        }
        // Out of the list while allocating, so that making room does not evict it.
        let (mut cache, r) = match self.allocate_cache(capacity) {
            Ok(c) => c,
            Err(_) => {
                // It holds the bytes needed itself: give it up.
                drop(source);
                let (cache, r) = self.allocate_cache(capacity)?;
                return Ok((cache, r, 0));
            }
        };
        let cached = match cache.copy_prefix_from(&source.cache, common) {
            Ok(()) => cache.commit(common).map(|_| common).unwrap_or(0),
            Err(_) => 0,
        };
        // Just used: most recent.
        self.prefixes.push(source);
        Ok((cache, r, cached))
    }
}

/// How the layers of a request are placed.
pub enum Route<'a> {
    /// Every layer on the device.
    Local,
    /// Layers `[0, layer)` on the device, the rest on a cloud worker reached through `link`,
    /// the hidden states sent as `wire`.
    Split {
        layer: u32,
        wire: WireDtype,
        link: &'a mut dyn SplitLink,
    },
}

fn empty_stats(tokens: &[u32], started: Instant, finish: FinishReason) -> GenerateStats {
    GenerateStats {
        prompt_tokens: tokens.len(),
        cached_prompt_tokens: 0,
        completion_tokens: 0,
        prefill: started.elapsed(),
        decode: Duration::ZERO,
        first_token: Duration::ZERO,
        total: started.elapsed(),
        kv_bytes: 0,
        kv_bytes_per_token: 0,
        finish,
        split: None,
        fallback: None,
        degraded: false,
        decode_cpu: Duration::ZERO,
        context: Fitted::default(),
    }
}

/// The decode loop shared by every route: picks tokens, streams text, and stops on
/// end-of-turn tokens, stop strings, max tokens, the deadline or cancellation.
#[allow(clippy::too_many_arguments)]
fn decode(
    run: &mut dyn Continuation,
    req: &GenerateRequest,
    tokens: &[u32],
    deadline_in_prefill: bool,
    deadline_hit: &dyn Fn() -> bool,
    mut on_token: impl FnMut(TokenOut) -> Keep,
    started: Instant,
    prefill: Duration,
) -> Result<GenerateStats> {
    let mut stats = empty_stats(tokens, started, FinishReason::Length);
    stats.prefill = prefill;
    if deadline_in_prefill {
        stats.finish = FinishReason::Deadline;
        return Ok(stats);
    }
    let eos = stop_ids(run.model().arch());
    let mut stream = TextStream::new(req.stop.clone());
    let mut completion: Vec<u32> = Vec::new();
    let decode_start = Instant::now();
    let cpu_start = super::cpu::process_cpu_time();
    let detokenize = |run: &dyn Continuation, ids: &[u32]| {
        run.model()
            .tokenizer()
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    };
    let finish = loop {
        if completion.len() >= req.max_tokens as usize {
            break FinishReason::Length;
        }
        if deadline_hit() {
            break FinishReason::Deadline;
        }
        let position = tokens.len() + completion.len();
        let next = run.token(position);
        if completion.is_empty() {
            stats.first_token = started.elapsed();
        }
        if eos.contains(&next) {
            break FinishReason::Stop;
        }
        completion.push(next);
        let emit = stream.push(&detokenize(&*run, &completion)?);
        let keep = on_token(TokenOut {
            id: next,
            index: completion.len() - 1,
            text: emit.text,
        });
        if emit.stopped {
            break FinishReason::StopString;
        }
        if !keep {
            break FinishReason::Cancelled;
        }
        if completion.len() < req.max_tokens as usize {
            run.advance(next, position)?;
        }
    };
    if matches!(finish, FinishReason::Length | FinishReason::Stop) {
        let rest = stream.finish(&detokenize(&*run, &completion)?);
        if !rest.is_empty() {
            on_token(TokenOut {
                id: *completion.last().unwrap_or(&0),
                index: completion.len().saturating_sub(1),
                text: rest,
            });
        }
    }
    stats.completion_tokens = completion.len();
    stats.decode = decode_start.elapsed();
    stats.decode_cpu = super::cpu::process_cpu_time().saturating_sub(cpu_start);
    stats.total = started.elapsed();
    stats.finish = finish;
    Ok(stats)
}

/// Checks a request before any work: prompt, limits, deadline, sampling. `max_tokens` is
/// capped by `context` unless the request slides a window over it.
pub fn validate(req: &GenerateRequest, context: u32, overflow: Overflow) -> Result<()> {
    if req.prompt.trim().is_empty() {
        return Err(Error::InvalidArgument("prompt is empty".into()));
    }
    if req.max_tokens == 0 {
        return Err(Error::InvalidArgument(
            "max_tokens must be at least 1".into(),
        ));
    }
    let limit = match req.context_overflow.unwrap_or(overflow) {
        Overflow::SlidingWindow => MAX_TOKENS_LIMIT,
        Overflow::Error | Overflow::TruncateStart => MAX_TOKENS_LIMIT.min(context),
    };
    if req.max_tokens > limit {
        let hint = if limit < MAX_TOKENS_LIMIT {
            " (the context; context_overflow sliding_window lets answers outgrow it)"
        } else {
            ""
        };
        return Err(Error::InvalidArgument(format!(
            "max_tokens {} is above the limit of {limit}{hint}",
            req.max_tokens
        )));
    }
    if req.stop.len() > 16 || req.stop.iter().any(|s| s.len() > 256) {
        return Err(Error::InvalidArgument(
            "at most 16 stop strings of at most 256 bytes".into(),
        ));
    }
    if let Some(d) = req.deadline
        && d <= Instant::now()
    {
        return Err(Error::DeadlineExceeded(Duration::ZERO));
    }
    req.sampling.validate()
}

/// The text the model sees, chat turns in `format`'s markup.
pub fn render_prompt(req: &GenerateRequest, format: ChatFormat) -> String {
    if req.chat {
        let system = render_system(req, format);
        let mut continues = system.is_some();
        let mut text = system.unwrap_or_default();
        let turns = req
            .history
            .iter()
            .map(|t| (t.speaker == Speaker::User, t.text.as_str()))
            .chain(std::iter::once((true, req.prompt.as_str())));
        for (user, t) in turns {
            text.push_str(&format.turn(user, t, continues));
            continues = false;
        }
        text.push_str(format.answer_opening());
        text
    } else {
        match render_system(req, format) {
            Some(s) => format!("{s}{}", req.prompt),
            None => req.prompt.clone(),
        }
    }
}

/// The system part at the start of the rendered prompt, if any.
fn render_system(req: &GenerateRequest, format: ChatFormat) -> Option<String> {
    if req.chat {
        format.system(req.system.as_deref())
    } else {
        req.system.as_ref().map(|s| format!("{s}\n"))
    }
}

fn stop_ids(a: &seam_shared::package::Architecture) -> Vec<u32> {
    let mut ids = a.stop_tokens.clone();
    ids.push(a.eos_token);
    ids
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
