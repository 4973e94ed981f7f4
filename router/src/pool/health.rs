//! The pool's two background loops: membership (static list, or a DNS name re-resolved) and
//! health (gRPC health check of `seam.worker.v1.Worker`, then `GetInfo` for load, package and
//! draining). A transition is logged once.

use super::{WorkerPool, WorkerState};
use seam_shared::proto::worker::GetInfoRequest;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The gRPC health service name of workers.
pub const WORKER_SERVICE: &str = "seam.worker.v1.Worker";

/// Where workers come from.
#[derive(Debug, Clone)]
pub enum WorkerSource {
    Static(Vec<String>),
    /// `host:port`, resolved to every address it has.
    Dns(String),
}

/// Keeps the pool's membership current until `stop`.
pub async fn discovery_loop(
    pool: Arc<WorkerPool>,
    source: WorkerSource,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let name = match source {
        WorkerSource::Static(addrs) => {
            pool.set_members(&addrs.into_iter().collect());
            return;
        }
        WorkerSource::Dns(name) => name,
    };
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(addrs) => {
                let set: BTreeSet<String> = addrs.map(|a| a.to_string()).collect();
                pool.set_members(&set);
                last_error = None;
            }
            Err(e) => {
                // Keep the workers we have; say so once per distinct error.
                let msg = e.to_string();
                if last_error.as_deref() != Some(&msg) {
                    tracing::warn!(name = %name, error = %msg, "worker DNS lookup failed; keeping the current workers");
                    last_error = Some(msg);
                }
            }
        }
    }
}

/// Checks every worker each `every` (and at once when asked) until `stop`.
pub async fn health_loop(pool: Arc<WorkerPool>, mut stop: watch::Receiver<bool>) {
    let every = pool.config().health_every;
    loop {
        let workers = pool.workers();
        let checks = workers.iter().map(|w| {
            let w = w.clone();
            // A busy worker may answer late; only the call deadline makes a check fail.
            let timeout = pool.config().call_timeout.max(Duration::from_millis(200));
            async move {
                let r = tokio::time::timeout(timeout, check(&w)).await;
                let r = r.unwrap_or_else(|_| Err(format!("no answer in {timeout:?}")));
                (w, r)
            }
        });
        let results = futures::future::join_all(checks).await;
        let limit = pool.config().unhealthy_after;
        for (w, r) in results {
            let mut s = w.state.lock().expect("worker state lock");
            let before = (s.healthy, s.draining, s.checked);
            apply(&mut s, r, limit);
            let after = (s.healthy, s.draining, s.checked);
            if before != after {
                if s.healthy && !s.draining {
                    tracing::info!(worker = %w.addr, "worker healthy");
                } else if s.draining {
                    tracing::info!(worker = %w.addr, "worker draining: no new sessions");
                } else {
                    tracing::warn!(worker = %w.addr, error = %s.last_error, "worker unhealthy");
                }
            }
        }
        pool.publish_gauges();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = pool.check_now.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

fn apply(
    s: &mut WorkerState,
    r: Result<seam_shared::proto::worker::GetInfoResponse, String>,
    limit: u32,
) {
    s.checked = true;
    match r {
        Ok(info) => {
            s.fails = 0;
            s.healthy = true;
            s.draining = info.draining;
            s.info = Some(info);
            s.last_error.clear();
            s.last_seen_unix_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        }
        Err(e) => {
            s.fails = s.fails.saturating_add(1);
            // A worker that was never seen healthy, or failed `limit` times, is out.
            if s.fails >= limit || s.info.is_none() {
                s.healthy = false;
            }
            s.last_error = e;
        }
    }
}

async fn check(w: &super::Worker) -> Result<seam_shared::proto::worker::GetInfoResponse, String> {
    let mut health = HealthClient::new(w.channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: WORKER_SERVICE.into(),
        })
        .await
        .map_err(|e| format!("health check: {}", e.message()))?
        .into_inner()
        .status();
    let info = w
        .client
        .clone()
        .get_info(GetInfoRequest {})
        .await
        .map_err(|e| format!("GetInfo: {}", e.message()))?
        .into_inner();
    if status != ServingStatus::Serving && !info.draining {
        return Err(format!("health status {}", status.as_str_name()));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_leaves_after_the_configured_failures() {
        let mut s = WorkerState::default();
        apply(&mut s, Err("down".into()), 2);
        assert!(!s.healthy && s.checked, "never seen healthy: out at once");
        apply(&mut s, Ok(Default::default()), 2);
        assert!(s.healthy && s.fails == 0);
        apply(&mut s, Err("blip".into()), 2);
        assert!(s.healthy, "one failure is tolerated");
        apply(&mut s, Err("down".into()), 2);
        assert!(!s.healthy);
        assert_eq!(s.last_error, "down");
        apply(
            &mut s,
            Ok(seam_shared::proto::worker::GetInfoResponse {
                draining: true,
                ..Default::default()
            }),
            2,
        );
        assert!(s.healthy && s.draining);
    }
}
