//! The model thread: takes batches of steps from the [`Queue`], checks their sessions out,
//! runs layers `[K, N)` for all rows of the batch at once (grouped by split layer), then the LM
//! head on the rows that need it, picks each session's next token, and answers. ONNX Runtime is
//! only ever driven from this thread, never from the async executor.

use crate::error::{Error, Result};
use crate::queue::{Job, Queue};
use crate::sessions::{Checkout, SessionTable, StepClaim};
use seam_edge::runtime::kv_cache::KvCache;
use seam_edge::runtime::model::{Model, Sequence};
use seam_edge::runtime::sampler::{Sampler, SamplingParams};
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
                    }) => running.push(Running {
                        job,
                        cache,
                        split_layer,
                        sampling,
                    }),
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
                for (r, (next_token, logits)) in group.into_iter().zip(answers) {
                    let mut cache = r.cache;
                    let start = r.job.plan.start;
                    let kv_len = start + r.job.plan.rows;
                    if let Err(e) = cache.commit(kv_len) {
                        let _ = cache.truncate(start);
                        table.checkin(&r.job.plan.session, cache, None, now);
                        answer_error(r.job, &Error::from(e), start);
                        continue;
                    }
                    let response = StepResponse {
                        session_id: r.job.plan.session.clone(),
                        step_id: r.job.plan.step_id,
                        accepted: 0,
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

    /// Runs layers `[layer, N)` and the head for the group; per step, the next token and the
    /// logits it asked for.
    fn compute(&mut self, layer: u32, group: &mut [Running]) -> Result<Vec<(u32, Option<Tensor>)>> {
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
        // Rows that need logits: every row when asked for, else the last one.
        let mut wanted = Vec::new();
        let mut offset = 0;
        for r in group.iter() {
            let rows = r.job.plan.rows;
            let first = if r.job.plan.want_logits { 0 } else { rows - 1 };
            wanted.extend_from_slice(&h[(offset + first) * d..(offset + rows) * d]);
            offset += rows;
        }
        let logits = self.model.logits(&wanted)?;
        let vocab = self.model.arch().vocab_size as usize;
        let mut at = 0;
        let mut answers = Vec::with_capacity(group.len());
        for r in group.iter() {
            let plan = &r.job.plan;
            let n = if plan.want_logits { plan.rows } else { 1 };
            let rows = &logits[at * vocab..(at + n) * vocab];
            at += n;
            let last = &rows[(n - 1) * vocab..];
            let mut sampler = Sampler::new(r.sampling)?;
            let next = sampler.sample(last, (plan.start + plan.rows) as u64);
            let tensor = plan.want_logits.then(|| Tensor {
                shape: vec![n as u64, vocab as u64],
                dtype: DType::F32 as i32,
                data: rows.iter().flat_map(|x| x.to_le_bytes()).collect(),
                scales: vec![],
                group_size: 0,
            });
            answers.push((next, tensor));
        }
        Ok(answers)
    }
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
