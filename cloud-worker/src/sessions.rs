//! The worker's sessions, without I/O: opening (with LRU eviction of idle sessions when the KV
//! budget or the session limit is reached), checking a session's KV cache out for a step and back
//! in, idle expiry and closing. Every method takes `now`; nothing here reads a clock.

use crate::error::{Error, Result};
use seam_edge::runtime::budget::{KvBudget, Reservation};
use seam_edge::runtime::kv_cache::{KvCache, KvDtype, KvGeometry};
use seam_edge::runtime::sampler::SamplingParams;
use seam_shared::proto::common::StepResponse;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Bounds of the table.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_sessions: usize,
    /// Sessions idle this long are dropped by [`SessionTable::sweep`].
    pub idle_ttl: Duration,
    /// Sessions idle this long may be evicted to admit a new one.
    pub evict_after: Duration,
    /// Longest session lifetime (also the default).
    pub max_session: Duration,
    /// Most positions per session (the model's context).
    pub max_positions: usize,
    pub max_draft_tokens: u32,
}

/// The model facts the table needs.
#[derive(Debug, Clone)]
pub struct ModelShape {
    pub n_layer: u32,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Split layers the worker serves.
    pub split_points: Vec<u32>,
    pub kv_dtype: KvDtype,
}

/// A validated request to open a session.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenParams {
    pub id: String,
    pub device_id: String,
    pub split_layer: u32,
    pub sampling: SamplingParams,
    pub max_positions: usize,
    /// Requested lifetime; `None` = the worker's maximum.
    pub lifetime: Option<Duration>,
    pub max_draft_tokens: u32,
}

/// The answer to a successful open.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub kv_len: usize,
    pub kv_bytes_reserved: usize,
    pub max_draft_tokens: u32,
    /// Ids of the sessions evicted to make room.
    pub evicted: Vec<String>,
}

struct Session {
    params: OpenParams,
    /// `None` while a step computes on it.
    cache: Option<KvCache>,
    _reservation: Reservation,
    expires: Instant,
    last_used: Instant,
    /// Closed while a step was computing: dropped when the cache comes back.
    closing: bool,
    last_step_id: u64,
    last_response: Option<StepResponse>,
}

/// What a step gets when it checks a session out.
#[derive(Debug)]
pub enum Checkout {
    /// Compute with this cache (its length is the step's start position).
    Run {
        cache: KvCache,
        split_layer: u32,
        sampling: SamplingParams,
        /// The session drafts: answers carry the final-layer state of their last row.
        drafts: bool,
    },
    /// The step was already answered (a retransmission): send this again.
    Replay(Box<StepResponse>),
}

/// A step's request to check a session out.
#[derive(Debug, Clone, Copy)]
pub struct StepClaim<'a> {
    pub session: &'a str,
    pub step_id: u64,
    pub start: usize,
    pub rows: usize,
    pub drafts: usize,
    pub rollback_to: Option<usize>,
}

/// All sessions of the worker.
pub struct SessionTable {
    sessions: HashMap<String, Session>,
    budget: KvBudget,
    limits: Limits,
    shape: ModelShape,
}

impl SessionTable {
    pub fn new(budget: KvBudget, limits: Limits, shape: ModelShape) -> SessionTable {
        SessionTable {
            sessions: HashMap::new(),
            budget,
            limits,
            shape,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn budget(&self) -> &KvBudget {
        &self.budget
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Geometry of the KV cache of a session split at `layer` (it holds layers `layer..n`).
    pub fn geometry(&self, layer: u32) -> KvGeometry {
        KvGeometry {
            n_layers: (self.shape.n_layer - layer) as usize,
            n_kv_heads: self.shape.n_kv_heads,
            head_dim: self.shape.head_dim,
        }
    }

    /// KV bytes per position of a session split at `layer`.
    pub fn bytes_per_position(&self, layer: u32) -> usize {
        KvCache::new(self.geometry(layer), self.shape.kv_dtype, 0).bytes_per_token()
    }

    /// Opens `p.id`, or returns it unchanged if it is already open with the same parameters.
    pub fn open(&mut self, p: OpenParams, now: Instant) -> Result<Opened> {
        self.check_params(&p)?;
        if let Some(s) = self.sessions.get_mut(&p.id) {
            if s.params != p {
                return Err(Error::AlreadyExists(format!(
                    "session {} is open with other parameters",
                    p.id
                )));
            }
            s.last_used = now;
            return Ok(Opened {
                kv_len: s.cache.as_ref().map_or(0, KvCache::len),
                kv_bytes_reserved: s._reservation.bytes(),
                max_draft_tokens: p.max_draft_tokens,
                evicted: Vec::new(),
            });
        }
        let bytes = self.bytes_per_position(p.split_layer) * p.max_positions;
        let mut evicted = Vec::new();
        let reservation = loop {
            let full = self.sessions.len() >= self.limits.max_sessions;
            let reserved = if full {
                None
            } else {
                self.budget.try_reserve(bytes).ok()
            };
            if let Some(r) = reserved {
                break r;
            }
            match self.least_recently_used_idle(now) {
                Some(victim) => {
                    self.sessions.remove(&victim);
                    evicted.push(victim);
                }
                None => return Err(self.refusal(bytes, full, now)),
            }
        };
        let cache = KvCache::try_new(
            self.geometry(p.split_layer),
            self.shape.kv_dtype,
            p.max_positions,
        )?;
        let lifetime = p
            .lifetime
            .unwrap_or(self.limits.max_session)
            .min(self.limits.max_session);
        let opened = Opened {
            kv_len: 0,
            kv_bytes_reserved: bytes,
            max_draft_tokens: p.max_draft_tokens,
            evicted,
        };
        self.sessions.insert(
            p.id.clone(),
            Session {
                params: p,
                cache: Some(cache),
                _reservation: reservation,
                expires: now + lifetime,
                last_used: now,
                closing: false,
                last_step_id: 0,
                last_response: None,
            },
        );
        Ok(opened)
    }

    fn check_params(&self, p: &OpenParams) -> Result<()> {
        if p.id.is_empty() || p.id.len() > 128 {
            return Err(Error::InvalidArgument(
                "session_id must have 1 to 128 bytes".into(),
            ));
        }
        if !self.shape.split_points.contains(&p.split_layer) {
            return Err(Error::InvalidArgument(format!(
                "split layer {} is not a split point of this package (split points {:?})",
                p.split_layer, self.shape.split_points
            )));
        }
        if p.max_positions == 0 || p.max_positions > self.limits.max_positions {
            return Err(Error::InvalidArgument(format!(
                "max_positions must be in 1..={}, got {}",
                self.limits.max_positions, p.max_positions
            )));
        }
        if p.max_draft_tokens > self.limits.max_draft_tokens {
            return Err(Error::InvalidArgument(format!(
                "max_draft_tokens must be at most {}, got {}",
                self.limits.max_draft_tokens, p.max_draft_tokens
            )));
        }
        p.sampling
            .validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    /// The idle session used longest ago, if any may be evicted (ties: the smallest id, so
    /// that the choice does not depend on the map's order).
    fn least_recently_used_idle(&self, now: Instant) -> Option<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| {
                s.cache.is_some() && now.duration_since(s.last_used) >= self.limits.evict_after
            })
            .min_by(|(a_id, a), (b_id, b)| a.last_used.cmp(&b.last_used).then(a_id.cmp(b_id)))
            .map(|(id, _)| id.clone())
    }

    /// RESOURCE_EXHAUSTED with the time until the first session becomes evictable.
    fn refusal(&self, bytes: usize, full: bool, now: Instant) -> Error {
        let retry_after = self
            .sessions
            .values()
            .map(|s| (s.last_used + self.limits.evict_after).saturating_duration_since(now))
            .min()
            .unwrap_or(self.limits.evict_after)
            .max(Duration::from_millis(100));
        let reason = if full {
            format!(
                "{} sessions open (the limit) and none idle",
                self.sessions.len()
            )
        } else {
            format!(
                "KV budget: {bytes} bytes needed, {} of {} in use and no idle session to evict",
                self.budget.used(),
                self.budget.limit()
            )
        };
        Error::ResourceExhausted {
            reason,
            retry_after: Some(retry_after),
        }
    }

    /// Checks the session of a step out for computation, after applying its rollback.
    pub fn checkout(&mut self, c: StepClaim<'_>, now: Instant) -> Result<Checkout> {
        let s = self
            .sessions
            .get_mut(c.session)
            .filter(|s| !s.closing)
            .ok_or_else(|| Error::NotFound(format!("no session {:?}", c.session)))?;
        if c.step_id == s.last_step_id
            && let Some(r) = &s.last_response
        {
            return Ok(Checkout::Replay(Box::new(r.clone())));
        }
        if c.step_id <= s.last_step_id {
            return Err(Error::FailedPrecondition(format!(
                "step {} is not after the last step {}",
                c.step_id, s.last_step_id
            )));
        }
        if c.drafts > s.params.max_draft_tokens as usize {
            return Err(Error::InvalidArgument(format!(
                "{} drafts, the session allows {}",
                c.drafts, s.params.max_draft_tokens
            )));
        }
        let cache = s
            .cache
            .as_mut()
            .ok_or_else(|| Error::FailedPrecondition("the session has a step in flight".into()))?;
        if let Some(n) = c.rollback_to {
            if n > cache.len() {
                return Err(Error::FailedPrecondition(format!(
                    "rollback to {n} is beyond the session's {} positions",
                    cache.len()
                )));
            }
            cache.truncate(n)?;
        }
        if c.start != cache.len() {
            return Err(Error::FailedPrecondition(format!(
                "step starts at position {}, the session holds {}",
                c.start,
                cache.len()
            )));
        }
        if c.start + c.rows > cache.capacity() {
            return Err(Error::InvalidArgument(format!(
                "positions {}..{} exceed the session's max_positions {}",
                c.start,
                c.start + c.rows,
                cache.capacity()
            )));
        }
        s.last_used = now;
        let cache = s
            .cache
            .take()
            .ok_or_else(|| Error::FailedPrecondition("the session has a step in flight".into()))?;
        Ok(Checkout::Run {
            cache,
            split_layer: s.params.split_layer,
            sampling: s.params.sampling,
            drafts: s.params.max_draft_tokens > 0,
        })
    }

    /// Returns a checked-out cache. With `answer`, the step succeeded and is remembered for
    /// retransmissions.
    pub fn checkin(
        &mut self,
        id: &str,
        cache: KvCache,
        answer: Option<&StepResponse>,
        now: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        if s.closing {
            self.sessions.remove(id);
            return;
        }
        s.cache = Some(cache);
        s.last_used = now;
        if let Some(r) = answer {
            s.last_step_id = r.step_id;
            s.last_response = Some(r.clone());
        }
    }

    /// KV length of a session (for error answers), 0 if unknown or in flight.
    pub fn kv_len(&self, id: &str) -> usize {
        self.sessions
            .get(id)
            .and_then(|s| s.cache.as_ref())
            .map_or(0, KvCache::len)
    }

    /// Closes a session; returns the positions it held, or `None` if it did not exist.
    pub fn close(&mut self, id: &str) -> Option<usize> {
        let s = self.sessions.get_mut(id)?;
        match &s.cache {
            Some(c) => {
                let n = c.len();
                self.sessions.remove(id);
                Some(n)
            }
            None => {
                s.closing = true;
                Some(0)
            }
        }
    }

    /// Drops sessions idle longer than the TTL or past their lifetime; returns their ids.
    pub fn sweep(&mut self, now: Instant) -> Vec<String> {
        let ttl = self.limits.idle_ttl;
        let dead: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.cache.is_some() && (now >= s.expires || now.duration_since(s.last_used) >= ttl)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            self.sessions.remove(id);
        }
        dead
    }

    /// Device owning a session.
    pub fn device(&self, id: &str) -> Option<&str> {
        self.sessions.get(id).map(|s| s.params.device_id.as_str())
    }
}

#[cfg(test)]
mod tests;
