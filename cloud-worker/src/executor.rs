//! The model thread: takes batches of steps from the [`Queue`], checks their sessions out,
//! runs layers `[K, N)` for all rows of the batch at once (grouped by split layer), then the LM
//! head on the rows that need it, picks each session's next token, and answers. ONNX Runtime is
//! only ever driven from this thread, never from the async executor.

use crate::error::{Error, Result};
use crate::queue::{Job, Queue};
use crate::sessions::{Checkout, SessionTable, StepClaim};
use crate::step::StepPlan;
use crate::verify::{Verdict, verify_greedy, verify_sampled};
use seam_edge::runtime::kv_cache::KvCache;
use seam_edge::runtime::model::{Model, Sequence};
use seam_edge::runtime::sampler::{Sampler, SamplingParams, argmax};
use seam_shared::proto::common::{DType, StepResponse, Tensor};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A step whose session is checked out.
struct Running {
    job: Job,
    cache: KvCache,
    split_layer: u32,
    sampling: SamplingParams,
}

/// Owns the model; see the module documentation.
pub struct Executor {
    model: Model,
    table: Arc<Mutex<SessionTable>>,
    queue: Arc<Queue>,
    max_batch_rows: usize,
}

impl Executor {
    pub fn new(
        model: Model,
        table: Arc<Mutex<SessionTable>>,
        queue: Arc<Queue>,
        max_batch_rows: usize,
    ) -> Executor {
        Executor {
            model,
            table,
            queue,
            max_batch_rows,
        }
    }

    /// Serves batches until the queue is closed and drained.
    pub fn run(mut self) {
        while let Some(batch) = self.queue.next_batch(self.max_batch_rows) {
            self.process(batch);
        }
    }

    fn process(&mut self, batch: Vec<Job>) {
        let started = Instant::now();
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
                            answer_error(job, &e, start);
                            continue;
                        }
                        running.push(Running {
                            job,
                            cache,
                            split_layer,
                            sampling,
                        })
                    }
                    Ok(Checkout::Replay(r)) => job.reply.send(r),
                    Err(e) => {
                        let kv_len = table.kv_len(&job.plan.session);
                        answer_error(job, &e, kv_len);
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
        let now = Instant::now();
        let mut table = lock(&self.table);
        match outcome {
            Ok(answers) => {
                for (r, answer) in group.into_iter().zip(answers) {
                    let mut cache = r.cache;
                    let start = r.job.plan.start;
                    let (next_token, logits, accepted) = match answer {
                        Ok(a) => a,
                        Err(e) => {
                            let _ = cache.truncate(start);
                            table.checkin(&r.job.plan.session, cache, None, now);
                            answer_error(r.job, &e, start);
                            continue;
                        }
                    };
                    // Rejected drafts' rows stay beyond the committed length, where the next
                    // step overwrites them; attention never reads past it.
                    let kv_len = start + r.job.plan.rows - r.job.plan.drafts.len() + accepted;
                    if let Err(e) = cache.commit(kv_len) {
                        let _ = cache.truncate(start);
                        table.checkin(&r.job.plan.session, cache, None, now);
                        answer_error(r.job, &Error::from(e), start);
                        continue;
                    }
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
                    };
                    table.checkin(&r.job.plan.session, cache, Some(&response), now);
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
                    answer_error(r.job, &e, start);
                }
            }
        }
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
                rows: r.job.plan.rows,
                cache: &mut r.cache,
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
            });
            answers.push(
                settle_tokens(plan, r.sampling, settle, vocab)
                    .map(|Verdict { accepted, next }| (next, tensor, accepted)),
            );
        }
        Ok(answers)
    }
}

/// What a step computed: the next token, the logits asked for, the drafts accepted.
type Answer = (u32, Option<Tensor>, usize);

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
/// `drafts + 1` rows.
fn settle_tokens(
    plan: &StepPlan,
    sampling: SamplingParams,
    rows: &[f32],
    vocab: usize,
) -> Result<Verdict> {
    let k = plan.drafts.len();
    // Absolute position of the token each row predicts: draft 0 sits right after the
    // committed rows.
    let first_position = (plan.start + plan.rows - k) as u64;
    let mut sampler = Sampler::new(sampling)?;
    if k == 0 {
        return Ok(Verdict {
            accepted: 0,
            next: sampler.sample(rows, first_position),
        });
    }
    if sampling.temperature == 0.0 {
        let argmax: Vec<u32> = rows.chunks_exact(vocab).map(argmax).collect();
        return Ok(verify_greedy(&plan.drafts, &argmax));
    }
    let p: Vec<Vec<(u32, f64)>> = rows
        .chunks_exact(vocab)
        .map(|row| sampler.distribution(row))
        .collect();
    verify_sampled(
        &plan.drafts,
        &plan.draft_dists,
        &p,
        sampling.seed,
        first_position,
    )
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
