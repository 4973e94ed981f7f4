//! The worker pool: who the workers are (a static list or a DNS name re-resolved, e.g. a
//! Kubernetes headless Service), whether each is healthy (gRPC health plus `GetInfo`, checked on
//! a timer and at once when the relay sees a worker's stream die), and which one a session goes
//! to (rendezvous hashing over the healthy ones).

pub mod health;
pub mod rendezvous;
pub mod stack;

use crate::metrics::Metrics;
use seam_shared::proto::worker::GetInfoResponse;
use seam_shared::proto::worker::worker_client::WorkerClient;
use stack::WorkerSvc;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};

/// How the pool talks to workers.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub call_timeout: Duration,
    pub max_concurrent_calls: usize,
    pub unhealthy_after: u32,
    pub health_every: Duration,
    pub max_message_bytes: usize,
}

/// What the gateway knows about one worker.
#[derive(Debug, Clone, Default)]
pub struct WorkerState {
    pub healthy: bool,
    pub draining: bool,
    pub info: Option<GetInfoResponse>,
    pub last_seen_unix_ms: u64,
    pub last_error: String,
    /// Failed checks in a row.
    pub fails: u32,
    /// Whether it has been checked at all.
    pub checked: bool,
}

/// One worker: its connection and state.
pub struct Worker {
    pub addr: String,
    pub channel: Channel,
    pub client: WorkerClient<WorkerSvc>,
    pub state: Mutex<WorkerState>,
}

impl Worker {
    pub fn state(&self) -> WorkerState {
        self.state.lock().expect("worker state lock").clone()
    }

    /// Takes new sessions.
    pub fn available(&self) -> bool {
        let s = self.state.lock().expect("worker state lock");
        s.healthy && !s.draining
    }
}

/// The workers.
pub struct WorkerPool {
    members: RwLock<BTreeMap<String, Arc<Worker>>>,
    cfg: PoolConfig,
    metrics: Arc<Metrics>,
    /// Wakes the health loop early.
    pub(crate) check_now: Notify,
}

impl WorkerPool {
    pub fn new(cfg: PoolConfig, metrics: Arc<Metrics>) -> Arc<WorkerPool> {
        Arc::new(WorkerPool {
            members: RwLock::new(BTreeMap::new()),
            cfg,
            metrics,
            check_now: Notify::new(),
        })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Every member.
    pub fn workers(&self) -> Vec<Arc<Worker>> {
        self.members
            .read()
            .expect("pool lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, addr: &str) -> Option<Arc<Worker>> {
        self.members.read().expect("pool lock").get(addr).cloned()
    }

    /// Replaces the membership: new addresses are added (unchecked, so not yet in rotation),
    /// vanished ones are dropped at once.
    pub fn set_members(&self, addrs: &BTreeSet<String>) {
        let mut m = self.members.write().expect("pool lock");
        let gone: Vec<String> = m.keys().filter(|a| !addrs.contains(*a)).cloned().collect();
        for a in gone {
            m.remove(&a);
            tracing::warn!(worker = %a, "worker left the pool");
        }
        for a in addrs {
            if m.contains_key(a) {
                continue;
            }
            match self.connect(a) {
                Ok(w) => {
                    tracing::info!(worker = %a, "worker joined the pool");
                    m.insert(a.clone(), Arc::new(w));
                }
                Err(e) => tracing::error!(worker = %a, error = %e, "bad worker address"),
            }
        }
        drop(m);
        self.publish_gauges();
        self.check_now.notify_one();
    }

    fn connect(&self, addr: &str) -> Result<Worker, tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        let client = stack::worker_client(
            channel.clone(),
            self.cfg.call_timeout,
            self.cfg.max_concurrent_calls,
            self.metrics.clone(),
            self.cfg.max_message_bytes,
        );
        Ok(Worker {
            addr: addr.to_string(),
            channel,
            client,
            state: Mutex::new(WorkerState::default()),
        })
    }

    /// Workers taking new sessions, in the order `session` tries them, minus `exclude`.
    pub fn ranked(&self, session: &str, exclude: &[&str]) -> Vec<Arc<Worker>> {
        let m = self.members.read().expect("pool lock");
        let up: Vec<&str> = m
            .values()
            .filter(|w| w.available() && !exclude.contains(&w.addr.as_str()))
            .map(|w| w.addr.as_str())
            .collect();
        rendezvous::ranked(session, &up)
            .into_iter()
            .filter_map(|a| m.get(a).cloned())
            .collect()
    }

    /// The relay saw a worker's stream fail: take it out of rotation until a check passes.
    pub fn mark_suspect(&self, addr: &str, why: &str) {
        if let Some(w) = self.get(addr) {
            let mut s = w.state.lock().expect("worker state lock");
            if s.healthy {
                tracing::warn!(worker = %addr, reason = why, "worker out of rotation until its next health check passes");
            }
            s.healthy = false;
            s.last_error = why.to_string();
        }
        self.publish_gauges();
        self.check_now.notify_one();
    }

    pub(crate) fn publish_gauges(&self) {
        let (mut up, mut down, mut draining) = (0, 0, 0);
        for w in self.workers() {
            let s = w.state();
            match (s.healthy, s.draining) {
                (true, false) => up += 1,
                (true, true) => draining += 1,
                _ => down += 1,
            }
        }
        for (state, n) in [("healthy", up), ("unhealthy", down), ("draining", draining)] {
            self.metrics
                .workers
                .get_or_create(&vec![("state", state.to_string())])
                .set(n);
        }
    }
}
