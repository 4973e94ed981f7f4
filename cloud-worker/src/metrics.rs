//! Prometheus metrics of the worker (prefix `seam_worker_`), served on `/metrics` when
//! `metrics_listen` is set. Gauges of state (sessions, KV bytes, queue) are read from the session
//! table and the queue at each scrape; the model thread counts batches, steps and drafts.

use crate::queue::Queue;
use crate::sessions::SessionTable;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric of the worker.
pub struct WorkerMetrics {
    registry: Registry,
    sessions: Gauge,
    kv_bytes_used: Gauge,
    kv_bytes_budget: Gauge,
    queue_depth: Gauge,
    /// Sessions dropped by `reason`: `evicted` (idle, for a new session), `swept` (idle past
    /// the TTL or past their lifetime).
    pub sessions_dropped: Family<Labels, Counter>,
    /// Sessions opened.
    pub sessions_opened: Counter,
    /// Steps answered by `result` (`ok`, `error`).
    pub steps: Family<Labels, Counter>,
    /// Rows computed per batch (every session's rows together).
    pub batch_rows: Histogram,
    /// Steps per batch.
    pub batch_steps: Histogram,
    /// From a step's arrival in the queue to its answer, seconds.
    pub step_seconds: Histogram,
    /// Model time of one batch group (layers `[K, N)` and the head), seconds.
    pub compute_seconds: Histogram,
    /// Time the worker spent drafting after one step (state predictor sessions), seconds.
    pub proposal_seconds: Histogram,
    /// Draft tokens verified, and those accepted.
    pub drafts_verified: Counter,
    pub drafts_accepted: Counter,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerMetrics")
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> WorkerMetrics {
        let mut r = Registry::with_prefix("seam_worker");
        let m = WorkerMetrics {
            registry: Registry::default(),
            sessions: Gauge::default(),
            kv_bytes_used: Gauge::default(),
            kv_bytes_budget: Gauge::default(),
            queue_depth: Gauge::default(),
            sessions_dropped: Family::default(),
            sessions_opened: Counter::default(),
            steps: Family::default(),
            // 1 .. 4096 rows.
            batch_rows: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            batch_steps: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            // 100 µs .. ~3.3 s.
            step_seconds: Histogram::new(exponential_buckets(100e-6, 2.0, 16)),
            compute_seconds: Histogram::new(exponential_buckets(100e-6, 2.0, 16)),
            proposal_seconds: Histogram::new(exponential_buckets(100e-6, 2.0, 16)),
            drafts_verified: Counter::default(),
            drafts_accepted: Counter::default(),
        };
        r.register("sessions", "Split sessions open", m.sessions.clone());
        r.register(
            "kv_bytes_used",
            "KV cache bytes reserved by sessions",
            m.kv_bytes_used.clone(),
        );
        r.register(
            "kv_bytes_budget",
            "KV cache byte budget of all sessions",
            m.kv_bytes_budget.clone(),
        );
        r.register(
            "queue_depth",
            "Steps waiting for the model",
            m.queue_depth.clone(),
        );
        r.register(
            "sessions_dropped",
            "Sessions dropped by reason (evicted, swept)",
            m.sessions_dropped.clone(),
        );
        r.register(
            "sessions_opened",
            "Sessions opened",
            m.sessions_opened.clone(),
        );
        r.register("steps", "Steps answered by result", m.steps.clone());
        r.register(
            "batch_rows",
            "Rows computed per batch",
            m.batch_rows.clone(),
        );
        r.register("batch_steps", "Steps per batch", m.batch_steps.clone());
        r.register(
            "step_seconds",
            "Time from a step's arrival to its answer",
            m.step_seconds.clone(),
        );
        r.register(
            "compute_seconds",
            "Model time per batch group",
            m.compute_seconds.clone(),
        );
        r.register(
            "proposal_seconds",
            "Time spent drafting through the upper layers after a step",
            m.proposal_seconds.clone(),
        );
        r.register(
            "drafts_verified",
            "Draft tokens verified",
            m.drafts_verified.clone(),
        );
        r.register(
            "drafts_accepted",
            "Draft tokens accepted",
            m.drafts_accepted.clone(),
        );
        WorkerMetrics { registry: r, ..m }
    }

    pub fn dropped(&self, reason: &'static str, n: usize) {
        self.sessions_dropped
            .get_or_create(&vec![("reason", reason)])
            .inc_by(n as u64);
    }

    pub fn step(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.steps.get_or_create(&vec![("result", result)]).inc();
    }

    /// The exposition, with the state gauges read from `table` and `queue` now.
    pub fn render(&self, table: &Mutex<SessionTable>, queue: &Queue) -> String {
        {
            let t = table.lock().unwrap_or_else(|p| p.into_inner());
            self.sessions.set(t.len() as i64);
            self.kv_bytes_used.set(t.budget().used() as i64);
            self.kv_bytes_budget.set(t.budget().limit() as i64);
        }
        self.queue_depth.set(queue.len() as i64);
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }

    /// The `/metrics` renderer of a worker.
    pub fn renderer(
        self: &Arc<Self>,
        table: Arc<Mutex<SessionTable>>,
        queue: Arc<Queue>,
    ) -> seam_shared::metrics_http::Render {
        let m = self.clone();
        Arc::new(move || m.render(&table, &queue))
    }
}
