//! The device half of a split request: layers `[0, K)` run here, the layer-K hidden states go to
//! a cloud worker through a [`SplitLink`], and the worker answers each step with the next token.
//!
//! The link is a synchronous interface so that the engine (which runs on a blocking thread) does
//! not care whether it talks to a worker directly or through the gateway.

use super::draft::grow::{Candidate, Grown};
use super::draft::policy::{DraftPolicy, Grower, MAX_DRAFT, Plan, Source};
use super::draft::tree::DraftTree;
use super::draft::{
    MAX_TREE_NODES, head_chain, head_tree, keep_accepted, layer_states, lookup, point_masses,
};
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
    /// Sessions re-opened after the cloud half failed mid-answer (the answer so far replayed).
    pub replays: u32,
}

/// Drafting figures of one split request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpeculationStats {
    /// Whether the request drafted at all.
    pub enabled: bool,
    pub drafted: u64,
    pub accepted: u64,
    /// Drafts proposed by prompt lookup (included in `drafted`), and those accepted.
    pub lookup_drafted: u64,
    pub lookup_accepted: u64,
    /// Drafts the worker made through its own layers (included in `drafted`), and those
    /// accepted.
    pub worker_drafted: u64,
    pub worker_accepted: u64,
    /// Round trips that settled tokens: the last prompt chunk and every decode step.
    pub token_steps: u32,
    /// Verification round trips of the decode phase, and the tokens they settled (accepted
    /// drafts plus the worker's token each).
    pub decode_round_trips: u32,
    pub decode_tokens: u32,
    /// Per chain position: round trips that reached it (every earlier draft stood) with a
    /// draft there, and those whose draft there stood too.
    pub tried_at: [u32; MAX_DRAFT],
    pub accepted_at: [u32; MAX_DRAFT],
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

    /// Tokens settled per verification round trip of the decode phase (0 before any).
    pub fn tokens_per_round_trip(&self) -> f64 {
        if self.decode_round_trips == 0 {
            0.0
        } else {
            self.decode_tokens as f64 / self.decode_round_trips as f64
        }
    }

    /// Conditional acceptance at each chain position (given the earlier drafts stood), up to
    /// the last position reached.
    pub fn acceptance_by_position(&self) -> Vec<f64> {
        let used = self
            .tried_at
            .iter()
            .rposition(|&t| t > 0)
            .map_or(0, |i| i + 1);
        (0..used)
            .map(|j| self.accepted_at[j] as f64 / self.tried_at[j].max(1) as f64)
            .collect()
    }

    /// Adds the figures of another request (for totals over many).
    pub fn merge(&mut self, o: &SpeculationStats) {
        self.enabled |= o.enabled;
        self.drafted += o.drafted;
        self.accepted += o.accepted;
        self.lookup_drafted += o.lookup_drafted;
        self.lookup_accepted += o.lookup_accepted;
        self.worker_drafted += o.worker_drafted;
        self.worker_accepted += o.worker_accepted;
        self.token_steps += o.token_steps;
        self.decode_round_trips += o.decode_round_trips;
        self.decode_tokens += o.decode_tokens;
        for j in 0..MAX_DRAFT {
            self.tried_at[j] += o.tried_at[j];
            self.accepted_at[j] += o.accepted_at[j];
        }
    }

    /// Records a verification of `drafted` drafts reaching `depth` positions deep, of which
    /// `accepted` stood (`lookup` of them proposed by lookup, `lookup_accepted` standing).
    fn record(&mut self, drafted: usize, depth: usize, accepted: usize, lookup: (usize, usize)) {
        self.drafted += drafted as u64;
        self.accepted += accepted as u64;
        self.lookup_drafted += lookup.0 as u64;
        self.lookup_accepted += lookup.1 as u64;
        // Position j counts only when every draft before it stood (conditional acceptance,
        // as the import measures it).
        for j in 0..depth.min(MAX_DRAFT).min(accepted + 1) {
            self.tried_at[j] += 1;
            if j < accepted {
                self.accepted_at[j] += 1;
            }
        }
        self.decode_round_trips += 1;
        self.decode_tokens += accepted as u32 + 1;
    }
}

/// How a split request drafts.
#[derive(Debug, Clone)]
pub struct Speculation {
    /// Acceptance per chain position to start the policy from (the draft head's held-out
    /// figures).
    pub prior: Vec<f64>,
    /// Most drafts per step.
    pub max_drafts: usize,
    /// A fixed draft length instead of the adaptive policy.
    pub fixed: Option<usize>,
    /// Whether the package has a draft head (else prompt lookup alone).
    pub head: bool,
    /// Acceptance per chain position of the worker's own drafts to start from (its state
    /// predictor's held-out figures; empty: the head's).
    pub worker_prior: Vec<f64>,
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
    /// Prompt and every settled token (what prompt lookup searches).
    history: Vec<u32>,
    /// The final-layer state of the row that chose the last settled token (drafting
    /// sessions), from the worker's last answer.
    feature: Option<Vec<f32>>,
    /// The drafts the worker made after the last settled token through its own layers, if
    /// its last answer carried any.
    proposals: Option<Grown>,
    /// What making them cost the worker, seconds (part of the last round trip).
    proposal_s: f64,
    sampler: Sampler,
    stop: Vec<u32>,
    /// Positions the session holds at most.
    limit: usize,
    stats: SpeculationStats,
    /// What the session was opened with, to open another after a failure.
    open: OpenSplit,
    replays: u32,
}

/// Most drafts a worker may offer after one step.
const MAX_PROPOSALS: usize = 64;

/// Times a request re-opens its session after the cloud half failed before it finishes on the
/// device instead.
const MAX_REPLAYS: u32 = 2;

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
        let enabled = speculation.is_some();
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
            speculation: speculation.map(|s| {
                let policy =
                    DraftPolicy::new(&s.prior, s.max_drafts).with_worker_prior(&s.worker_prior);
                (s, policy)
            }),
            history: tokens.to_vec(),
            feature: None,
            proposals: None,
            proposal_s: 0.0,
            sampler: Sampler::new(open.sampling)?,
            stop,
            limit: open.max_positions as usize,
            stats: SpeculationStats {
                enabled,
                ..SpeculationStats::default()
            },
            open: open.clone(),
            replays: 0,
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
        run.history.push(first);
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
    /// layers `[0, K)` with the next drafts and verifies them on the worker. When the cloud half
    /// went away (the worker died, the gateway restarted), opens a new session and replays the
    /// answer so far, at most [`MAX_REPLAYS`] times; after that the error goes to the caller,
    /// which finishes on the device.
    pub fn advance(&mut self, token: u32, position: usize) -> Result<()> {
        self.settled.pop_front();
        if !self.settled.is_empty() {
            return Ok(());
        }
        match self.verify_next(token, position) {
            Err(e) if self.replays < MAX_REPLAYS && super::continuation::recoverable(&e) => {
                tracing::warn!(error = %e, positions = position + 1, "the cloud half went away; replaying the answer so far on a new session");
                self.replay(position)
            }
            r => r,
        }
    }

    /// Opens a new session (the gateway places it on a live worker) and sends it the prompt
    /// and the tokens settled so far, the last at `position`, as a prefill: its answer is the
    /// token after `position`, as the lost session's would have been (the worker draws sampled
    /// tokens by seed and position).
    fn replay(&mut self, position: usize) -> Result<()> {
        self.replays += 1;
        self.link.close();
        self.session = self.link.open(&self.open)?;
        self.history.truncate(position + 1);
        self.cache.truncate(0)?;
        self.settled.clear();
        self.feature = None;
        self.proposals = None;
        let tokens = self.history.clone();
        let mut pos = 0;
        let mut next = 0;
        while pos < tokens.len() {
            let end = (pos + PREFILL_CHUNK).min(tokens.len());
            next = self.forward(&tokens[pos..end], pos)?;
            pos = end;
        }
        self.settle(&[], next);
        self.stats.decode_round_trips += 1;
        self.stats.decode_tokens += 1;
        Ok(())
    }

    /// One round trip after `token`: a plain step, or drafts to verify.
    fn verify_next(&mut self, token: u32, position: usize) -> Result<()> {
        // Drafts go at positions position + 1 ..= position + k, inside the session.
        let room = self.limit.saturating_sub(position + 1);
        self.stats.token_steps += 1;
        let Some((spec, policy)) = &self.speculation else {
            let next = self.forward(&[token], position)?;
            self.settle(&[], next);
            self.stats.decode_round_trips += 1;
            self.stats.decode_tokens += 1;
            return Ok(());
        };
        let head = spec.head && self.feature.is_some() && self.model.drafter().is_some();
        // Greedy requests with a head or the worker's drafts and no fixed length send dynamic
        // trees, sized after they are grown; the whole lookup run rides beside their nodes.
        let tree = (head || self.proposals.is_some())
            && spec.fixed.is_none()
            && self.sampler.params().temperature == 0.0;
        let proposal = lookup::propose(&self.history, room.min(spec.max_drafts));
        let mut from_lookup = proposal.map(|p| p.drafts).unwrap_or_default();
        if let Some(end) = from_lookup.iter().position(|t| self.stop.contains(t)) {
            from_lookup.truncate(end + 1);
        }
        let plan = match spec.fixed {
            Some(k) if head => Plan {
                source: Source::Head,
                drafts: k.min(room),
            },
            Some(k) => Plan {
                source: Source::Lookup,
                drafts: k.min(room).min(from_lookup.len()),
            },
            None if tree => Plan {
                source: Source::Head,
                drafts: usize::from(!policy.probe_due() && room > 0),
            },
            None => policy.choose(room, from_lookup.len(), head, 0),
        };
        if plan.drafts == 0 {
            let sent = Instant::now();
            let next = self.forward(&[token], position)?;
            self.settle(&[], next);
            self.stats.decode_round_trips += 1;
            self.stats.decode_tokens += 1;
            // Keep the round trip current, so that drafting resumes when the link slows down.
            let step_s = sent.elapsed().as_secs_f64() - self.proposal_s;
            if let Some((_, policy)) = &mut self.speculation {
                policy.observe(plan, 0, 0, step_s.max(0.0), 0.0);
            }
            return Ok(());
        }
        if !tree {
            from_lookup.truncate(plan.drafts);
        }
        self.speculate(token, position, plan, tree, from_lookup)
    }

    /// Appends settled tokens: accepted drafts, then the worker's token.
    fn settle(&mut self, drafts: &[u32], next: u32) {
        self.settled.extend(drafts);
        self.settled.push_back(next);
        self.history.extend(drafts);
        self.history.push(next);
    }

    /// One verification round trip: drafts after `token` as `plan` says, or with `trees` a
    /// dynamic tree from the head plus the lookup run; ships them with their layer-K states,
    /// keeps what the worker accepts and rolls the rest back.
    fn speculate(
        &mut self,
        token: u32,
        position: usize,
        plan: Plan,
        trees: bool,
        mut from_lookup: Vec<u32>,
    ) -> Result<()> {
        let started = Instant::now();
        let sampled = self.sampler.params().temperature > 0.0;
        let feature = self.feature.clone().unwrap_or_default();
        let mut expected = None;
        let mut grower = Grower::Head;
        let (tree, dists, main, lookup_nodes) = if trees {
            // Every node takes a position of the session until the verdict.
            let room = self.limit.saturating_sub(position + 1).min(MAX_TREE_NODES);
            let policy = || &self.speculation.as_ref().expect("speculating").1;
            // The worker's drafts (made by its own layers) when it sent some, else the head's.
            let grown = match self.proposals.take() {
                Some(g) => {
                    grower = Grower::Worker;
                    g
                }
                None => {
                    let limit = policy().tree_growth(room);
                    head_tree(self.model, &feature, token, limit, &self.stop)?
                }
            };
            let sums = grown.expected();
            let n = policy().tree_nodes(grower, &sums, room.saturating_sub(from_lookup.len()));
            expected = Some(sums[n]);
            let (mut tree, main) = grown.tree(n);
            from_lookup.truncate(room - tree.len());
            let nodes = tree.insert_path(&from_lookup);
            (tree, Vec::new(), main, nodes)
        } else if plan.source == Source::Head {
            let chain = head_chain(
                self.model,
                &feature,
                token,
                position,
                plan.drafts,
                &mut self.sampler,
                &self.stop,
            )?;
            let main = (0..chain.drafts.len()).collect();
            (
                DraftTree::chain(&chain.drafts),
                chain.dists,
                main,
                Vec::new(),
            )
        } else {
            let dists = if sampled {
                point_masses(&from_lookup)
            } else {
                Vec::new()
            };
            let nodes = (0..from_lookup.len()).collect();
            (DraftTree::chain(&from_lookup), dists, Vec::new(), nodes)
        };
        let k = tree.len();
        let layer_started = Instant::now();
        let (hidden, tree_kv) = layer_states(
            self.model,
            &mut self.cache,
            self.layer,
            token,
            &tree,
            position,
        )?;
        // What drafting cost the device: the proposals and the drafts' share of the layer pass.
        let draft_time = started.elapsed();
        let layer_time = layer_started.elapsed();
        self.step_id += 1;
        let request = StepRequest {
            session_id: self.session.clone(),
            step_id: self.step_id,
            start_position: position as u32,
            hidden: Some(tensor::encode(&hidden, self.model.n_embd(), self.wire)?),
            draft_tokens: tree.tokens.clone(),
            draft_parents: if tree.is_chain() {
                Vec::new()
            } else {
                tree.wire_parents()
            },
            draft_probs: dists,
            max_proposal_depth: self.proposal_depth(),
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
        let path = accepted_path(&tree, &r)?;
        self.take_feature(&r)?;
        self.take_proposals(&r)?;
        keep_accepted(&mut self.cache, &tree, &tree_kv, &path, position)?;
        let tokens: Vec<u32> = path.iter().map(|&n| tree.tokens[n]).collect();
        self.settle(&tokens, r.next_token);
        let along = |branch: &[usize]| branch.iter().zip(&path).take_while(|(a, b)| a == b).count();
        let depth = tree.depths().into_iter().max().unwrap_or(0);
        let lookup = (lookup_nodes.len(), along(&lookup_nodes));
        self.stats.record(k, depth, accepted, lookup);
        let worker = grower == Grower::Worker;
        if worker {
            self.stats.worker_drafted += (k - lookup_nodes.len()) as u64;
            self.stats.worker_accepted += along(&main) as u64;
        }
        // The round trip as the policy models it: the worker's drafting is charged apart.
        let step_s = (step_time.as_secs_f64() - self.proposal_s).max(0.0);
        if let (Some((_, policy)), Some(expected)) = (&mut self.speculation, expected) {
            policy.observe_tree(
                grower,
                k,
                expected,
                accepted,
                step_s,
                layer_time.as_secs_f64(),
            );
            if !main.is_empty() {
                if worker {
                    policy.record_worker(main.len(), along(&main));
                } else {
                    policy.record(Source::Head, main.len(), along(&main));
                }
            }
            if !lookup_nodes.is_empty() {
                policy.record(Source::Lookup, lookup_nodes.len(), lookup.1);
            }
        } else if let Some((_, policy)) = &mut self.speculation {
            // The policy sets the main chain's length: charge the whole cost to it.
            let per_draft = draft_time.as_secs_f64() / main.len().max(1) as f64;
            if main.is_empty() {
                let done = Plan {
                    source: Source::Lookup,
                    drafts: lookup_nodes.len(),
                };
                policy.observe(done, k, lookup.1, step_s, per_draft);
            } else {
                let done = Plan {
                    source: Source::Head,
                    drafts: main.len(),
                };
                policy.observe(done, k, along(&main), step_s, per_draft);
                if !lookup_nodes.is_empty() {
                    policy.record(Source::Lookup, lookup_nodes.len(), lookup.1);
                }
            }
        }
        Ok(())
    }

    /// Keeps the final-layer state a drafting session's answer carries.
    fn take_feature(&mut self, r: &StepResponse) -> Result<()> {
        if self.speculation.is_none() {
            return Ok(());
        }
        let d = self.model.n_embd();
        self.feature = match &r.feature {
            Some(t) => {
                let rows = tensor::decode(t, Some(d), d)?;
                if rows.rows != 1 {
                    return Err(Error::Unavailable(format!(
                        "the worker's feature has {} rows, expected 1",
                        rows.rows
                    )));
                }
                Some(rows.data)
            }
            None => None,
        };
        Ok(())
    }

    /// Keeps the drafts the worker's answer carries (checked: a malformed offer is an error of
    /// the cloud half, not a panic here).
    fn take_proposals(&mut self, r: &StepResponse) -> Result<()> {
        self.proposals = None;
        self.proposal_s = r.proposal_us as f64 / 1e6;
        if self.speculation.is_none() || r.proposal_tokens.is_empty() {
            return Ok(());
        }
        let n = r.proposal_tokens.len();
        let vocab = self.model.arch().vocab_size;
        if n > MAX_PROPOSALS || r.proposal_parents.len() != n || r.proposal_logp.len() != n {
            return Err(Error::Unavailable(format!(
                "the worker's drafts are malformed: {n} tokens (at most {MAX_PROPOSALS}), {} parents, {} log-probabilities",
                r.proposal_parents.len(),
                r.proposal_logp.len()
            )));
        }
        let mut candidates = Vec::with_capacity(n);
        for (i, ((&token, &parent), &logp)) in r
            .proposal_tokens
            .iter()
            .zip(&r.proposal_parents)
            .zip(&r.proposal_logp)
            .enumerate()
        {
            if token >= vocab || parent as usize > i || !logp.is_finite() || logp > 1e-3 {
                return Err(Error::Unavailable(format!(
                    "the worker's draft {i} is malformed: token {token}, parent {parent}, log-probability {logp}"
                )));
            }
            candidates.push(Candidate {
                parent: parent.checked_sub(1).map(|p| p as usize),
                token,
                logp: logp.min(0.0) as f64,
            });
        }
        let grown = Grown::new(candidates);
        // The passes the worker ran: one per depth of its tree.
        let passes = grown.tree(n).0.depths().into_iter().max().unwrap_or(0);
        if let Some((_, policy)) = &mut self.speculation {
            policy.observe_proposals(passes, self.proposal_s);
        }
        self.proposals = Some(grown);
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
            max_proposal_depth: self.proposal_depth(),
            ..Default::default()
        };
        let r = self.link.step(request)?;
        check_answer(&r, self.step_id, pos + tokens.len())?;
        self.take_feature(&r)?;
        self.take_proposals(&r)?;
        Ok(r.next_token)
    }

    /// The deepest chain of the worker's own drafts this session uses from an answer: greedy
    /// sessions that send adaptive trees take them, as deep as the policy finds pays; 0 for
    /// fixed chains, sampled sessions and no speculation, and the worker then spends nothing on
    /// drafting for them.
    fn proposal_depth(&self) -> u32 {
        match &self.speculation {
            Some((spec, policy))
                if spec.fixed.is_none() && self.sampler.params().temperature == 0.0 =>
            {
                policy.proposal_depth(MAX_DRAFT.min(MAX_TREE_NODES)) as u32
            }
            _ => 0,
        }
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
            replays: self.replays,
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
            replays: self.replays,
        }
    }
}

/// The tree nodes the worker accepted: `0..accepted` for a chain, else the path it names,
/// checked to be one (each node the child of the one before, starting below the root).
fn accepted_path(tree: &DraftTree, r: &StepResponse) -> Result<Vec<usize>> {
    let accepted = r.accepted as usize;
    if tree.is_chain() {
        return Ok((0..accepted).collect());
    }
    let path: Vec<usize> = r.accepted_path.iter().map(|&n| n as usize).collect();
    let mut parent = None;
    for &n in &path {
        if n >= tree.len() || tree.parents[n] != parent {
            return Err(Error::Unavailable(format!(
                "the worker's accepted path {path:?} is not a path of the draft tree"
            )));
        }
        parent = Some(n);
    }
    if path.len() != accepted {
        return Err(Error::Unavailable(format!(
            "the worker accepted {accepted} drafts but named a path of {}",
            path.len()
        )));
    }
    Ok(path)
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
        let window = &super::perplexity::window_tokens(model, tokens, w, ctx);
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
            mode: "windows",
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
