//! The model thread: takes batches of steps from the [`Queue`], checks their sessions out,
//! runs layers `[K, N)` for all rows of the batch at once (grouped by split layer), then the LM
//! head on the rows that need it, picks each session's next token, and answers. ONNX Runtime is
//! only ever driven from this thread, never from the async executor.

use crate::error::{Error, Result};
use crate::metrics::WorkerMetrics;
use crate::queue::{Job, Queue};
use crate::sessions::{Checkout, SessionTable, StepClaim};
use crate::step::StepPlan;
use crate::verify::{Verdict, verify_greedy, verify_sampled, verify_tree_greedy};
use seam_edge::runtime::draft::upper::{Predictor, ProposeLimits, propose};
use seam_edge::runtime::kv_cache::KvCache;
use seam_edge::runtime::model::{Model, Sequence, TreeKv, TreeRows};
use seam_edge::runtime::sampler::{Sampler, SamplingParams, argmax};
use seam_shared::proto::common::{DType, StepResponse, Tensor};
use seam_shared::tensor::{self, WireDtype};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A step whose session is checked out.
struct Running {
    job: Job,
    cache: KvCache,
    split_layer: u32,
    sampling: SamplingParams,
    /// Answer with the final-layer state of the row that chose the next token.
    feature: bool,
    /// K/V of the step's draft-tree nodes (tree steps only).
    tree_kv: TreeKv,
}

/// Owns the model; see the module documentation.
pub struct Executor {
    model: Model,
    table: Arc<Mutex<SessionTable>>,
    queue: Arc<Queue>,
    max_batch_rows: usize,
    metrics: Arc<WorkerMetrics>,
    /// State predictors by split layer: greedy drafting sessions at those layers get drafts
    /// made through layers `[K, N)` with each answer.
    predictors: Vec<Predictor>,
    proposals: ProposeLimits,
    /// End-of-turn tokens: no drafts follow one.
    stop: Vec<u32>,
}

impl Executor {
    pub fn new(
        model: Model,
        table: Arc<Mutex<SessionTable>>,
        queue: Arc<Queue>,
        max_batch_rows: usize,
        metrics: Arc<WorkerMetrics>,
        predictors: Vec<Predictor>,
        proposals: ProposeLimits,
    ) -> Executor {
        let arch = model.arch();
        let mut stop = arch.stop_tokens.clone();
        stop.push(arch.eos_token);
        Executor {
            model,
            table,
            queue,
            max_batch_rows,
            metrics,
            predictors,
            proposals,
            stop,
        }
    }

    /// Serves batches until the queue is closed and drained.
    pub fn run(mut self) {
        while let Some(batch) = self.queue.next_batch(self.max_batch_rows) {
            self.process(batch);
        }
    }

    /// Answers `job` with the error `e` (counted).
    fn refuse(&self, job: Job, e: &Error, kv_len: usize) {
        self.metrics.step(false);
        answer_error(job, e, kv_len);
    }

    fn process(&mut self, batch: Vec<Job>) {
        let started = Instant::now();
        self.metrics.batch_steps.observe(batch.len() as f64);
        let rows: usize = batch.iter().map(|j| j.plan.rows).sum();
        self.metrics.batch_rows.observe(rows as f64);
        let mut running = Vec::with_capacity(batch.len());
        {
            let mut table = lock(&self.table);
            for job in batch {
                let claim = StepClaim {
                    session: &job.plan.session,
                    step_id: job.plan.step_id,
                    start: job.plan.start,
                    rows: job.plan.rows,
                    drafts: job.plan.drafts.len(),
                    rollback_to: job.plan.rollback_to,
                };
                match table.checkout(claim, started) {
                    Ok(Checkout::Run {
                        cache,
                        split_layer,
                        sampling,
                        drafts,
                    }) => {
                        let plan = &job.plan;
                        let sampled = sampling.temperature > 0.0;
                        let dists = plan.draft_dists.len();
                        if !plan.drafts.is_empty() && sampled != (dists == plan.drafts.len()) {
                            let e = Error::InvalidArgument(if sampled {
                                "a sampled session's drafts need their draft distributions".into()
                            } else {
                                "a greedy session's drafts take no draft distributions".into()
                            });
                            let start = cache.len();
                            table.checkin(&plan.session, cache, None, started);
                            self.refuse(job, &e, start);
                            continue;
                        }
                        running.push(Running {
                            job,
                            cache,
                            split_layer,
                            sampling,
                            feature: drafts,
                            tree_kv: TreeKv::default(),
                        })
                    }
                    Ok(Checkout::Replay(r)) => job.reply.send(*r),
                    Err(e) => {
                        let kv_len = table.kv_len(&job.plan.session);
                        self.refuse(job, &e, kv_len);
                    }
                }
            }
        }
        // One forward pass per split layer present in the batch.
        let mut layers: Vec<u32> = running.iter().map(|r| r.split_layer).collect();
        layers.sort_unstable();
        layers.dedup();
        for layer in layers {
            let (group, rest): (Vec<_>, Vec<_>) =
                running.into_iter().partition(|r| r.split_layer == layer);
            running = rest;
            self.run_group(layer, group, started);
        }
    }

    fn run_group(&mut self, layer: u32, mut group: Vec<Running>, started: Instant) {
        let compute_start = Instant::now();
        let outcome = self.compute(layer, &mut group);
        let compute_us = compute_start.elapsed().as_micros() as u64;
        self.metrics
            .compute_seconds
            .observe(compute_us as f64 / 1e6);
        let now = Instant::now();
        let mut table = lock(&self.table);
        match outcome {
            Ok(answers) => {
                for (r, answer) in group.into_iter().zip(answers) {
                    let mut cache = r.cache;
                    let start = r.job.plan.start;
                    let Answer {
                        next: next_token,
                        logits,
                        path,
                        feature,
                    } = match answer {
                        Ok(a) => a,
                        Err(e) => {
                            let _ = cache.truncate(start);
                            table.checkin(&r.job.plan.session, cache, None, now);
                            self.refuse(r.job, &e, start);
                            continue;
                        }
                    };
                    // Rejected drafts' rows stay beyond the committed length, where the next
                    // step overwrites them; attention never reads past it. A tree's accepted
                    // path is written right after the committed rows first.
                    let accepted = path.len();
                    let base = start + r.job.plan.rows - r.job.plan.drafts.len();
                    let kv_len = base + accepted;
                    let placed = match &r.job.plan.tree {
                        Some(_) => r.tree_kv.place_path(&mut cache, base, &path),
                        None => Ok(()),
                    };
                    if let Err(e) = placed
                        .map_err(Error::from)
                        .and_then(|()| cache.commit(kv_len).map_err(Error::from))
                    {
                        let _ = cache.truncate(start);
                        table.checkin(&r.job.plan.session, cache, None, now);
                        self.refuse(r.job, &e, start);
                        continue;
                    }
                    let accepted_path = if r.job.plan.tree.is_some() {
                        path.iter().map(|&n| n as u32).collect()
                    } else {
                        Vec::new()
                    };
                    // The worker's own drafts after `next_token`, made without the table.
                    drop(table);
                    let proposal = self.proposal(
                        &r.job.plan,
                        r.split_layer,
                        r.feature,
                        r.sampling,
                        &mut cache,
                        &path,
                        next_token,
                    );
                    table = lock(&self.table);
                    let (proposal_tokens, proposal_parents, proposal_logp, proposal_us) =
                        match proposal {
                            Ok(p) => p,
                            Err(e) => {
                                // Drafts are an offer: the step's verdict stands without them.
                                tracing::warn!(error = %e, "worker drafts failed");
                                Default::default()
                            }
                        };
                    let response = StepResponse {
                        session_id: r.job.plan.session.clone(),
                        step_id: r.job.plan.step_id,
                        accepted: accepted as u32,
                        next_token,
                        logits,
                        kv_len: kv_len as u32,
                        error: None,
                        queue_us: started.duration_since(r.job.enqueued).as_micros() as u64,
                        compute_us,
                        feature,
                        accepted_path,
                        proposal_tokens,
                        proposal_parents,
                        proposal_logp,
                        proposal_us,
                    };
                    table.checkin(&r.job.plan.session, cache, Some(&response), now);
                    let m = &self.metrics;
                    m.drafts_verified.inc_by(r.job.plan.drafts.len() as u64);
                    m.drafts_accepted.inc_by(accepted as u64);
                    m.step_seconds
                        .observe(r.job.enqueued.elapsed().as_secs_f64());
                    m.step(true);
                    r.job.reply.send(response);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, layer, steps = group.len(), "batch failed");
                for r in group {
                    let mut cache = r.cache;
                    let start = r.job.plan.start;
                    // Forget whatever the failed pass wrote past the committed length.
                    let _ = cache.truncate(cache.len());
                    table.checkin(&r.job.plan.session, cache, None, now);
                    self.refuse(r.job, &e, start);
                }
            }
        }
    }

    /// Drafts after `next` for a greedy drafting session whose split layer has a state
    /// predictor (else none): tokens, wire parents and path log-probabilities.
    #[allow(clippy::too_many_arguments)]
    fn proposal(
        &mut self,
        plan: &StepPlan,
        split_layer: u32,
        drafting: bool,
        sampling: SamplingParams,
        cache: &mut KvCache,
        path: &[usize],
        next: u32,
    ) -> Result<Proposal> {
        let greedy = sampling.temperature == 0.0;
        let Some(predictor) = self
            .predictors
            .iter_mut()
            .find(|p| p.layer() == split_layer)
        else {
            return Ok(Default::default());
        };
        if !drafting || !greedy || plan.max_proposal_depth == 0 || self.stop.contains(&next) {
            return Ok(Default::default());
        }
        let limits = ProposeLimits {
            depth: self.proposals.depth.min(plan.max_proposal_depth),
            ..self.proposals
        };
        // The layer-K state of the row whose distribution chose `next`.
        let d = self.model.n_embd();
        let row = plan.rows - plan.drafts.len() - 1 + path.last().map_or(0, |&n| n + 1);
        let state = &plan.hidden[row * d..(row + 1) * d];
        let started = Instant::now();
        let grown = propose(
            &mut self.model,
            predictor,
            cache,
            state,
            next,
            &self.stop,
            limits,
        )?;
        let spent = started.elapsed();
        self.metrics.proposal_seconds.observe(spent.as_secs_f64());
        Ok((
            grown.iter().map(|c| c.token).collect(),
            grown
                .iter()
                .map(|c| c.parent.map_or(0, |p| p as u32 + 1))
                .collect(),
            grown.iter().map(|c| c.logp as f32).collect(),
            spent.as_micros() as u64,
        ))
    }

    /// Runs layers `[layer, N)` and the head for the group; per step, the next token, the
    /// logits it asked for and the drafts it keeps (or why its drafts could not be verified).
    fn compute(&mut self, layer: u32, group: &mut [Running]) -> Result<Vec<Result<Answer>>> {
        let d = self.model.n_embd();
        let n_layer = self.model.arch().n_layer;
        let total: usize = group.iter().map(|r| r.job.plan.rows).sum();
        let mut hidden = Vec::with_capacity(total * d);
        for r in group.iter() {
            hidden.extend_from_slice(&r.job.plan.hidden);
        }
        let mut seqs: Vec<Sequence<'_>> = group
            .iter_mut()
            .map(|r| Sequence {
                pos: r.job.plan.start,
                rope_shift: 0,
                rows: r.job.plan.rows,
                cache: &mut r.cache,
                tree: r.job.plan.tree.as_ref().map(|tree| TreeRows {
                    tree,
                    kv: &mut r.tree_kv,
                }),
            })
            .collect();
        let h = self
            .model
            .run_layers_batch(layer..n_layer, hidden, &mut seqs)?;
        drop(seqs);
        // Rows that need logits: every row when asked for, else the row before the first
        // draft and every draft.
        let mut wanted = Vec::new();
        let mut offset = 0;
        for r in group.iter() {
            let (first, rows) = logit_rows(&r.job.plan);
            wanted.extend_from_slice(&h[(offset + first) * d..(offset + rows) * d]);
            offset += rows;
        }
        let logits = self.model.logits(&wanted)?;
        let vocab = self.model.arch().vocab_size as usize;
        let mut at = 0;
        let mut answers = Vec::with_capacity(group.len());
        let mut row0 = 0;
        for r in group.iter() {
            let plan = &r.job.plan;
            let (first, rows) = logit_rows(plan);
            let n = rows - first;
            let block = &logits[at * vocab..(at + n) * vocab];
            at += n;
            let k = plan.drafts.len();
            // The rows that settle tokens: the last k + 1.
            let settle = &block[(n - k - 1) * vocab..];
            let tensor = plan.want_logits.then(|| Tensor {
                shape: vec![n as u64, vocab as u64],
                dtype: DType::F32 as i32,
                data: block.iter().flat_map(|x| x.to_le_bytes()).collect(),
                scales: vec![],
                group_size: 0,
                half_scales: Default::default(),
            });
            let base = row0 + plan.rows - k - 1;
            row0 += plan.rows;
            answers.push(settle_tokens(plan, r.sampling, settle, vocab).and_then(
                |(path, next)| {
                    // The row whose distribution chose `next`: the last accepted draft's, or
                    // the last committed row's.
                    let feature = if r.feature {
                        let row = base + path.last().map_or(0, |&n| n + 1);
                        Some(tensor::encode(
                            &h[row * d..(row + 1) * d],
                            d,
                            WireDtype::F16,
                        )?)
                    } else {
                        None
                    };
                    Ok(Answer {
                        next,
                        logits: tensor,
                        path,
                        feature,
                    })
                },
            ));
        }
        Ok(answers)
    }
}

/// The worker's drafts for a step's answer: tokens, wire parents, path log-probabilities, and
/// the microseconds spent making them.
type Proposal = (Vec<u32>, Vec<u32>, Vec<f32>, u64);

/// What a step computed.
struct Answer {
    /// The token after the accepted drafts.
    next: u32,
    /// The logits asked for.
    logits: Option<Tensor>,
    /// Drafts accepted, in order (for a chain `0..accepted`).
    path: Vec<usize>,
    /// The final-layer state of the row that chose `next` (drafting sessions).
    feature: Option<Tensor>,
}

/// The rows of a step whose logits are needed: `(first, rows)`.
fn logit_rows(plan: &StepPlan) -> (usize, usize) {
    let first = if plan.want_logits {
        0
    } else {
        plan.rows - plan.drafts.len() - 1
    };
    (first, plan.rows)
}

/// Verifies the step's drafts (none: just picks the next token) from the logits of its last
/// `drafts + 1` rows; returns the accepted drafts and the token after them.
fn settle_tokens(
    plan: &StepPlan,
    sampling: SamplingParams,
    rows: &[f32],
    vocab: usize,
) -> Result<(Vec<usize>, u32)> {
    let k = plan.drafts.len();
    // Absolute position of the token each row predicts: draft 0 sits right after the
    // committed rows.
    let first_position = (plan.start + plan.rows - k) as u64;
    let mut sampler = Sampler::new(sampling)?;
    if k == 0 {
        return Ok((Vec::new(), sampler.sample(rows, first_position)));
    }
    if sampling.temperature == 0.0 {
        let argmax: Vec<u32> = rows.chunks_exact(vocab).map(argmax).collect();
        if let Some(tree) = &plan.tree {
            return Ok(verify_tree_greedy(tree, argmax[0], &argmax[1..]));
        }
        let Verdict { accepted, next } = verify_greedy(&plan.drafts, &argmax);
        return Ok(((0..accepted).collect(), next));
    }
    if plan.tree.is_some() {
        return Err(Error::InvalidArgument(
            "draft trees are verified for greedy sessions only; sampled sessions send chains"
                .into(),
        ));
    }
    let p: Vec<Vec<(u32, f64)>> = rows
        .chunks_exact(vocab)
        .map(|row| sampler.distribution(row))
        .collect();
    let Verdict { accepted, next } = verify_sampled(
        &plan.drafts,
        &plan.draft_dists,
        &p,
        sampling.seed,
        first_position,
    )?;
    Ok(((0..accepted).collect(), next))
}

/// Answers a step with an error; the stream goes on.
pub fn answer_error(job: Job, e: &Error, kv_len: usize) {
    tracing::debug!(session = %job.plan.session, step = job.plan.step_id, error = %e, "step refused");
    let response = StepResponse {
        session_id: job.plan.session.clone(),
        step_id: job.plan.step_id,
        kv_len: kv_len as u32,
        error: Some(e.to_step_error()),
        ..Default::default()
    };
    job.reply.send(response);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
