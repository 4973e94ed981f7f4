//! The bounded queue between the gRPC streams and the model thread. Steps leave it in batches:
//! in arrival order, at most one step per session (a session's next step waits for the one
//! before), up to a number of rows.

use crate::error::{Error, Result};
use crate::step::StepPlan;
use seam_shared::proto::common::StepResponse;
use std::collections::{HashSet, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// Where a step's answer goes: its stream's channel, with the permit that bounds the steps a
/// stream may have outstanding (released when the stream hands the answer to the transport).
#[derive(Debug)]
pub struct Reply {
    pub tx: mpsc::UnboundedSender<(StepResponse, OwnedSemaphorePermit)>,
    pub permit: OwnedSemaphorePermit,
}

impl Reply {
    pub fn send(self, response: StepResponse) {
        // The stream may be gone (client left); nothing waits for the answer then.
        let _ = self.tx.send((response, self.permit));
    }
}

/// One queued step.
#[derive(Debug)]
pub struct Job {
    pub plan: StepPlan,
    pub reply: Reply,
    pub enqueued: Instant,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// Steps waiting for the model.
pub struct Queue {
    state: Mutex<State>,
    ready: Condvar,
    max_len: usize,
}

impl Queue {
    pub fn new(max_len: usize) -> Queue {
        Queue {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            max_len,
        }
    }

    /// Adds a step, or gives it back with RESOURCE_EXHAUSTED when the queue is full.
    pub fn push(&self, job: Job) -> Result<(), Box<(Job, Error)>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed {
            let err = Error::Unavailable("the worker is shutting down".into());
            return Err(Box::new((job, err)));
        }
        if st.jobs.len() >= self.max_len {
            let err = Error::ResourceExhausted {
                reason: format!("{} steps are already waiting", st.jobs.len()),
                retry_after: Some(Duration::from_millis(50)),
            };
            return Err(Box::new((job, err)));
        }
        st.jobs.push_back(job);
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    /// Steps waiting now.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .jobs
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops accepting steps; [`Queue::next_batch`] returns `None` once the queue is drained.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.ready.notify_all();
    }

    /// Blocks until steps are waiting, then takes a batch of at most `max_rows` rows (at least
    /// one step), one step per session, in arrival order.
    pub fn next_batch(&self, max_rows: usize) -> Option<Vec<Job>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while st.jobs.is_empty() {
            if st.closed {
                return None;
            }
            st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        Some(take_batch(&mut st.jobs, max_rows))
    }
}

/// The batch rule, separate from the locking: see [`Queue::next_batch`].
fn take_batch(jobs: &mut VecDeque<Job>, max_rows: usize) -> Vec<Job> {
    let mut batch: Vec<Job> = Vec::new();
    let mut sessions = HashSet::new();
    let mut rows = 0;
    let mut kept = VecDeque::with_capacity(jobs.len());
    while let Some(job) = jobs.pop_front() {
        let fits = batch.is_empty() || rows + job.plan.rows <= max_rows;
        if fits && !sessions.contains(&job.plan.session) {
            rows += job.plan.rows;
            sessions.insert(job.plan.session.clone());
            batch.push(job);
        } else {
            // A later step of a session in the batch must also wait: order within a session.
            sessions.insert(job.plan.session.clone());
            kept.push_back(job);
        }
    }
    *jobs = kept;
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    fn job(session: &str, step_id: u64, rows: usize) -> Job {
        let (tx, _rx) = mpsc::unbounded_channel();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        Job {
            plan: StepPlan {
                session: session.into(),
                step_id,
                start: 0,
                rows,
                hidden: vec![],
                drafts: vec![],
                draft_dists: vec![],
                rollback_to: None,
                want_logits: false,
                max_proposal_depth: 0,
                tree: None,
            },
            reply: Reply { tx, permit },
            enqueued: Instant::now(),
        }
    }

    fn ids<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Vec<(String, u64)> {
        jobs.into_iter()
            .map(|j| (j.plan.session.clone(), j.plan.step_id))
            .collect()
    }

    #[test]
    fn batches_keep_one_step_per_session_in_order() {
        let mut q: VecDeque<Job> = [
            job("a", 1, 1),
            job("a", 2, 1),
            job("b", 1, 1),
            job("c", 1, 1),
        ]
        .into();
        let b = take_batch(&mut q, 100);
        assert_eq!(
            ids(&b),
            vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]
        );
        assert_eq!(ids(&q), vec![("a".into(), 2)]);
    }

    #[test]
    fn batches_respect_the_row_limit_but_always_take_one() {
        let mut q: VecDeque<Job> = [job("a", 1, 300), job("b", 1, 300), job("c", 1, 100)].into();
        let b = take_batch(&mut q, 256);
        assert_eq!(ids(&b), vec![("a".into(), 1)]);
        let b = take_batch(&mut q, 400);
        assert_eq!(ids(&b), vec![("b".into(), 1), ("c".into(), 1)]);
    }

    #[test]
    fn a_session_blocked_behind_a_big_step_keeps_its_order() {
        // b's first step does not fit, so b's second step must not overtake it.
        let mut q: VecDeque<Job> = [job("a", 1, 200), job("b", 1, 200), job("b", 2, 1)].into();
        let b = take_batch(&mut q, 256);
        assert_eq!(ids(&b), vec![("a".into(), 1)]);
        let b = take_batch(&mut q, 256);
        assert_eq!(ids(&b), vec![("b".into(), 1)]);
    }

    #[test]
    fn a_full_queue_refuses_with_a_retry_hint() {
        let q = Queue::new(1);
        q.push(job("a", 1, 1)).unwrap();
        let (_, err) = *q.push(job("b", 1, 1)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.retry_after_ms() > 0);
        q.close();
        assert_eq!(q.next_batch(8).map(|b| b.len()), Some(1));
        assert!(q.next_batch(8).is_none());
    }
}
