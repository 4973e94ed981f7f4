//! One model serving generation requests one at a time: tokenises, reuses the KV of a repeated
//! prompt prefix, prefills in chunks, decodes with the sampler, streams text, and stops on
//! end-of-turn tokens, stop strings, max tokens, the deadline or cancellation.

use super::budget::{KvBudget, Reservation};
use super::kv_cache::{KvCache, KvDtype, KvGeometry};
use super::model::Model;
use super::sampler::{Sampler, SamplingParams};
use super::text_stream::TextStream;
use crate::error::{Error, Result};
use std::time::{Duration, Instant};

/// Rows prefilled per forward pass (bounds the transient activations of long prompts).
const PREFILL_CHUNK: usize = 256;
/// Largest completion a request may ask for.
pub const MAX_TOKENS_LIMIT: u32 = 4096;

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Text placed before the prompt (a system prompt); its KV is reused across requests.
    pub system: Option<String>,
    pub prompt: String,
    /// Wrap system and prompt in the model's chat template.
    pub chat: bool,
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub deadline: Option<Instant>,
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
}

impl GenerateStats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        per_s(self.prompt_tokens - self.cached_prompt_tokens, self.prefill)
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

struct CachedPrefix {
    tokens: Vec<u32>,
    cache: KvCache,
    _reservation: Reservation,
}

/// The model plus the state kept between requests.
pub struct Engine {
    model: Model,
    kv_dtype: KvDtype,
    budget: KvBudget,
    prefix: Option<CachedPrefix>,
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
            model,
            kv_dtype,
            budget,
            prefix: None,
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    pub fn budget(&self) -> &KvBudget {
        &self.budget
    }

    /// The token ids of a request's full prompt text.
    pub fn prompt_tokens(&self, req: &GenerateRequest) -> Result<Vec<u32>> {
        let text = render_prompt(req);
        let enc = self
            .model
            .tokenizer()
            .encode(text.as_str(), false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A KV cache for `positions` positions of every loaded layer, reserved against the budget
    /// (the cached prefix is evicted first if the budget is short).
    pub fn allocate_cache(&mut self, positions: usize) -> Result<(KvCache, Reservation)> {
        let a = self.model.arch();
        let layers = self.model.layers();
        let geometry = KvGeometry {
            n_layers: (layers.end - layers.start) as usize,
            n_kv_heads: a.n_head_kv as usize,
            head_dim: a.head_dim as usize,
        };
        // An empty cache of the same geometry tells the bytes per position.
        let bytes = KvCache::new(geometry, self.kv_dtype, 0).bytes_per_token() * positions;
        let reservation = match self.budget.try_reserve(bytes) {
            Ok(r) => r,
            Err(_) if self.prefix.is_some() => {
                self.prefix = None;
                self.budget.try_reserve(bytes)?
            }
            Err(e) => return Err(e),
        };
        Ok((
            KvCache::try_new(geometry, self.kv_dtype, positions)?,
            reservation,
        ))
    }

    /// Runs one request to the end, handing each token to `on_token` (which returns `false`
    /// to cancel).
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        mut on_token: impl FnMut(TokenOut) -> Keep,
    ) -> Result<GenerateStats> {
        let started = Instant::now();
        validate(req, self.model.arch().context_length)?;
        let mut sampler = Sampler::new(req.sampling)?;
        let tokens = self.prompt_tokens(req)?;
        if tokens.is_empty() {
            return Err(Error::InvalidArgument(
                "the prompt encodes to no tokens".into(),
            ));
        }
        let context = self.model.arch().context_length as usize;
        let capacity = tokens.len() + req.max_tokens as usize;
        if capacity > context {
            return Err(Error::InvalidArgument(format!(
                "prompt ({} tokens) + max_tokens ({}) exceeds the context of {context}",
                tokens.len(),
                req.max_tokens
            )));
        }

        // Reuse the KV of the longest common prefix with the previous prompt (at least one
        // token must be computed to get logits): in place when the old cache is big enough,
        // else copied into a new one.
        let (mut cache, reservation, cached) = match self.prefix.take() {
            Some(p) if p.cache.capacity() >= capacity && common_prefix(&p.tokens, &tokens) > 0 => {
                let common = common_prefix(&p.tokens, &tokens).min(tokens.len() - 1);
                let mut cache = p.cache;
                cache.truncate(common)?;
                (cache, p._reservation, common)
            }
            previous => {
                self.prefix = previous;
                let (mut cache, r) = self.allocate_cache(capacity)?;
                let cached = self.copy_prefix_into(&mut cache, &tokens);
                (cache, r, cached)
            }
        };
        self.prefix = None;

        let deadline_hit = |now: Instant| req.deadline.is_some_and(|d| now >= d);
        let mut finish = None;
        let mut logits = Vec::new();
        let mut pos = cached;
        while pos < tokens.len() {
            if deadline_hit(Instant::now()) {
                finish = Some(FinishReason::Deadline);
                break;
            }
            let end = (pos + PREFILL_CHUNK).min(tokens.len());
            logits = self
                .model
                .forward(&tokens[pos..end], pos, &mut cache, false)?;
            cache.commit(end)?;
            pos = end;
        }
        let prefill = started.elapsed();

        let eos = stop_ids(self.model.arch());
        let mut stream = TextStream::new(req.stop.clone());
        let mut completion: Vec<u32> = Vec::new();
        let mut first_token = Duration::ZERO;
        let decode_start = Instant::now();
        while finish.is_none() {
            if completion.len() >= req.max_tokens as usize {
                finish = Some(FinishReason::Length);
                break;
            }
            if deadline_hit(Instant::now()) {
                finish = Some(FinishReason::Deadline);
                break;
            }
            let next = sampler.sample(&logits, (tokens.len() + completion.len()) as u64);
            if completion.is_empty() {
                first_token = started.elapsed();
            }
            if eos.contains(&next) {
                finish = Some(FinishReason::Stop);
                break;
            }
            completion.push(next);
            let full = self
                .model
                .tokenizer()
                .decode(&completion, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            let emit = stream.push(&full);
            let keep = on_token(TokenOut {
                id: next,
                index: completion.len() - 1,
                text: emit.text,
            });
            if emit.stopped {
                finish = Some(FinishReason::StopString);
                break;
            }
            if !keep {
                finish = Some(FinishReason::Cancelled);
                break;
            }
            if completion.len() >= req.max_tokens as usize {
                continue;
            }
            let p = tokens.len() + completion.len() - 1;
            logits = self.model.forward(&[next], p, &mut cache, false)?;
            cache.commit(p + 1)?;
        }
        let finish = finish.unwrap_or(FinishReason::Length);
        if matches!(finish, FinishReason::Length | FinishReason::Stop) {
            let full = self
                .model
                .tokenizer()
                .decode(&completion, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            let rest = stream.finish(&full);
            if !rest.is_empty() {
                on_token(TokenOut {
                    id: *completion.last().unwrap_or(&0),
                    index: completion.len().saturating_sub(1),
                    text: rest,
                });
            }
        }
        let stats = GenerateStats {
            prompt_tokens: tokens.len(),
            cached_prompt_tokens: cached,
            completion_tokens: completion.len(),
            prefill,
            decode: decode_start.elapsed(),
            first_token,
            total: started.elapsed(),
            kv_bytes: cache.len() * cache.bytes_per_token(),
            kv_bytes_per_token: cache.bytes_per_token(),
            finish,
        };
        // Keep the prompt's KV for the next request (a repeated system prompt).
        let prompt_len = tokens.len().min(cache.len());
        cache.truncate(prompt_len)?;
        self.prefix = Some(CachedPrefix {
            tokens: tokens[..prompt_len].to_vec(),
            cache,
            _reservation: reservation,
        });
        Ok(stats)
    }

    /// Copies the KV of the cached prefix shared with `tokens` into `cache`; returns how many
    /// positions were copied.
    fn copy_prefix_into(&mut self, cache: &mut KvCache, tokens: &[u32]) -> usize {
        let Some(p) = self.prefix.take() else {
            return 0;
        };
        let common = common_prefix(&p.tokens, tokens)
            .min(tokens.len() - 1)
            .min(p.cache.len());
        if common == 0 || cache.copy_prefix_from(&p.cache, common).is_err() {
            return 0;
        }
        cache.commit(common).map(|_| common).unwrap_or(0)
    }
}

/// Checks a request before any work: prompt, limits, deadline, sampling.
pub fn validate(req: &GenerateRequest, context: u32) -> Result<()> {
    if req.prompt.trim().is_empty() {
        return Err(Error::InvalidArgument("prompt is empty".into()));
    }
    if req.max_tokens == 0 {
        return Err(Error::InvalidArgument(
            "max_tokens must be at least 1".into(),
        ));
    }
    let limit = MAX_TOKENS_LIMIT.min(context);
    if req.max_tokens > limit {
        return Err(Error::InvalidArgument(format!(
            "max_tokens {} is above the limit of {limit}",
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

/// The text the model sees.
pub fn render_prompt(req: &GenerateRequest) -> String {
    if req.chat {
        let system = req
            .system
            .as_deref()
            .unwrap_or("You are a helpful AI assistant named SmolLM, trained by Hugging Face");
        format!(
            "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            req.prompt
        )
    } else {
        match &req.system {
            Some(s) => format!("{s}\n{}", req.prompt),
            None => req.prompt.clone(),
        }
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
