//! The gateway's handlers, independent of the transport: gRPC (`grpc.rs`) and QUIC (`quic/`)
//! authenticate the device, then call these with its [`DeviceId`].

use crate::config::{QuotaConfig, SessionsConfig};
use crate::dashboard::LiveStats;
use crate::identity::{self, DeviceId};
use crate::metrics::Metrics;
use crate::policy_store::PolicyStore;
use crate::pool::WorkerPool;
use crate::sessions::{Session, SessionTable};
use futures::Stream;
use seam_shared::proto::admin::WorkerStatus;
use seam_shared::proto::common::RouteKind;
use seam_shared::proto::gateway::{
    Admitted, CloseSessionRequest, CloseSessionResponse, GetPolicyRequest, GoLocal,
    OpenSessionRequest, OpenSessionResponse, PolicyResponse, ReportLinkRequest, ReportLinkResponse,
    WatchPolicyRequest, open_session_response::Decision,
};
use seam_shared::proto::worker;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tonic::{Code, Status};

/// Retry hint when no worker can take a session.
const RETRY_NO_WORKER_MS: u64 = 2000;
/// Workers tried for one admission before the device is told to go local.
const MAX_OPEN_ATTEMPTS: usize = 3;

/// Split layers above this are counted together (a device cannot make many keys).
const MAX_LAYER_LABEL: u32 = 1024;

/// `rule` if the policy in force has a rule by that name (or it is the evaluator's own
/// `default` or `override`), else `other`.
fn known_rule<'a>(policy: &crate::policy::Policy, rule: &'a str) -> &'a str {
    let known = rule == crate::policy::DEFAULT_RULE
        || rule == "override"
        || policy.rules.iter().any(|r| r.name == rule);
    if known { rule } else { "other" }
}

/// Limits the handlers enforce.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub max_frame_bytes: usize,
    pub sessions: SessionsConfig,
    pub quota: QuotaConfig,
}

/// Link report of one device, as last received.
#[derive(Debug, Clone)]
pub struct LinkReport {
    pub report: ReportLinkRequest,
    pub at: Instant,
}

/// State shared by both transports and the admin API.
pub struct Core {
    pub store: Arc<PolicyStore>,
    pub pool: Arc<WorkerPool>,
    pub sessions: SessionTable,
    pub metrics: Arc<Metrics>,
    pub cfg: CoreConfig,
    /// Cloud tokens used per device on the current UTC day.
    quota: Mutex<HashMap<DeviceId, (u64, u64)>>,
    pub links: Mutex<HashMap<DeviceId, LinkReport>>,
    /// Decisions by (kind, layer, rule): devices' reports plus the gateway's admissions.
    pub route_counts: Mutex<BTreeMap<(i32, u32, String), u64>>,
    /// Relayed steps as the dashboard charts them.
    pub live: LiveStats,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn day() -> u64 {
    unix_ms() / 86_400_000
}

impl Core {
    pub fn new(
        store: Arc<PolicyStore>,
        pool: Arc<WorkerPool>,
        metrics: Arc<Metrics>,
        cfg: CoreConfig,
    ) -> Arc<Core> {
        metrics.policy_version.set(store.current().version as i64);
        Arc::new(Core {
            store,
            pool,
            sessions: SessionTable::default(),
            metrics,
            cfg,
            quota: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            route_counts: Mutex::new(BTreeMap::new()),
            live: LiveStats::default(),
        })
    }

    /// Every worker of the pool with its health, load and sessions.
    pub fn worker_statuses(&self) -> Vec<WorkerStatus> {
        let sessions = self.sessions.all();
        self.pool
            .workers()
            .into_iter()
            .map(|w| {
                let s = w.state();
                let info = s.info.clone().unwrap_or_default();
                WorkerStatus {
                    sessions: sessions.iter().filter(|x| x.worker() == w.addr).count() as u32,
                    address: w.addr.clone(),
                    healthy: s.healthy,
                    kv_bytes: info.kv_used_bytes,
                    kv_budget_bytes: info.kv_budget_bytes,
                    package: info.package,
                    in_flight_steps: info.queued_steps,
                    last_seen_unix_ms: s.last_seen_unix_ms,
                    last_error: s.last_error,
                    draining: s.draining,
                }
            })
            .collect()
    }

    pub fn get_policy(&self, _device: &DeviceId, req: GetPolicyRequest) -> PolicyResponse {
        let p = self.store.current();
        PolicyResponse {
            version: p.version,
            policy_toml: if req.known_version == p.version {
                String::new()
            } else {
                p.toml.to_string()
            },
            digest: p.digest.clone(),
        }
    }

    /// The policy if newer than `known_version`, then every new version.
    pub fn watch_policy(
        &self,
        _device: &DeviceId,
        req: WatchPolicyRequest,
    ) -> impl Stream<Item = Result<PolicyResponse, Status>> + Send + 'static {
        let mut known = req.known_version;
        WatchStream::new(self.store.subscribe()).filter_map(move |p| {
            if p.version == known {
                return None;
            }
            known = p.version;
            Some(Ok(PolicyResponse {
                version: p.version,
                policy_toml: p.toml.to_string(),
                digest: p.digest.clone(),
            }))
        })
    }

    /// Cloud tokens left today for `device` (None: no quota).
    pub fn quota_left(&self, device: &DeviceId) -> Option<u64> {
        let limit = self.cfg.quota.daily_cloud_tokens;
        if limit == 0 {
            return None;
        }
        let q = self.quota.lock().expect("quota lock");
        let used = q
            .get(device)
            .filter(|(d, _)| *d == day())
            .map_or(0, |(_, u)| *u);
        Some(limit.saturating_sub(used))
    }

    pub(crate) fn charge(&self, device: &DeviceId, tokens: u64) {
        if self.cfg.quota.daily_cloud_tokens == 0 || tokens == 0 {
            return;
        }
        let today = day();
        let mut q = self.quota.lock().expect("quota lock");
        let e = q.entry(device.clone()).or_insert((today, 0));
        if e.0 != today {
            *e = (today, 0);
        }
        e.1 += tokens;
    }

    fn count(&self, kind: RouteKind, layer: u32, rule: &str, n: u64) {
        let mut counts = self.route_counts.lock().expect("route counts lock");
        let c = counts
            .entry((kind as i32, layer.min(MAX_LAYER_LABEL), rule.to_string()))
            .or_insert(0);
        *c = c.saturating_add(n);
    }

    fn go_local(
        &self,
        device: &DeviceId,
        reason: &str,
        retry_after_ms: u64,
    ) -> OpenSessionResponse {
        tracing::info!(device = %device, reason, "admission: go local");
        self.metrics.decision(reason, "local", "admission", 1);
        self.count(RouteKind::Local, 0, &format!("gateway: {reason}"), 1);
        OpenSessionResponse {
            session_id: String::new(),
            decision: Some(Decision::GoLocal(GoLocal {
                reason: reason.to_string(),
            })),
            retry_after_ms,
        }
    }

    /// Admission of a split session: limits, quota, package, then a worker by rendezvous order.
    pub async fn open_session(
        &self,
        device: &DeviceId,
        req: OpenSessionRequest,
    ) -> Result<OpenSessionResponse, Status> {
        let id = if req.resume_session_id.is_empty() {
            identity::mint_session_id(device)
        } else {
            let id = req.resume_session_id.clone();
            match self.sessions.get(&id) {
                Some(s) if &s.owner != device => {
                    return Err(Status::permission_denied(
                        "the session belongs to another device",
                    ));
                }
                Some(s) => {
                    // Still known: the device replays into a fresh KV on the same worker.
                    self.close_on_worker(&s).await;
                    self.sessions.remove(&id);
                }
                None if !identity::session_owned_by(&id, device) => {
                    return Err(Status::permission_denied(
                        "resume_session_id was not issued to this device",
                    ));
                }
                None => {}
            }
            id
        };
        if req.max_positions == 0 {
            return Err(Status::invalid_argument(
                "max_positions must be greater than 0",
            ));
        }
        let digest = req
            .package
            .as_ref()
            .map(|p| p.digest.as_str())
            .unwrap_or("");
        if digest.is_empty() {
            return Err(Status::invalid_argument("package.digest is required"));
        }
        if self.sessions.count_owned(device) >= self.cfg.sessions.max_per_device {
            return Ok(self.go_local(device, "too many open sessions for this device", 0));
        }
        if self.quota_left(device) == Some(0) {
            return Ok(self.go_local(device, "cloud quota exhausted", 0));
        }
        let candidates = self.pool.ranked(&id, &[]);
        if candidates.is_empty() {
            return Ok(self.go_local(device, "no healthy worker", RETRY_NO_WORKER_MS));
        }
        // Split point and package, as the workers describe them.
        if let Some(info) = candidates.iter().find_map(|w| w.state().info) {
            if let Some(pkg) = &info.package
                && pkg.digest != digest
            {
                return Ok(self.go_local(device, "package digest mismatch", 0));
            }
            if !info.split_points.contains(&req.split_layer) {
                return Err(Status::invalid_argument(format!(
                    "split layer {} is not a split point of the package (split points {:?})",
                    req.split_layer, info.split_points
                )));
            }
        }
        let lifetime = self.cfg.sessions.max_lifetime_ms;
        let open = worker::OpenSessionRequest {
            session_id: id.clone(),
            package: req.package.clone(),
            split_layer: req.split_layer,
            sampling: req.sampling,
            deadline_ms: if req.deadline_ms == 0 {
                lifetime
            } else {
                req.deadline_ms.min(lifetime)
            },
            max_positions: req.max_positions,
            device_id: device.to_string(),
            max_draft_tokens: req.max_draft_tokens,
        };
        let mut last = String::new();
        for w in candidates.iter().take(MAX_OPEN_ATTEMPTS) {
            match w.client.clone().open_session(open.clone()).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let now = Instant::now();
                    self.sessions.insert(Arc::new(Session {
                        id: id.clone(),
                        owner: device.clone(),
                        worker: Mutex::new(w.addr.clone()),
                        open,
                        created: now,
                        created_unix_ms: unix_ms(),
                        last_active: Mutex::new(now),
                        kv_len: r.kv_len.into(),
                        steps: 0.into(),
                        tokens: 0.into(),
                        moves: 0.into(),
                    }));
                    self.metrics.sessions.set(self.sessions.len() as i64);
                    self.metrics.decision("admitted", "split", "admission", 1);
                    self.count(RouteKind::Split, req.split_layer, "gateway: admitted", 1);
                    tracing::info!(device = %device, session = %id, worker = %w.addr, layer = req.split_layer, "session admitted");
                    return Ok(OpenSessionResponse {
                        session_id: id,
                        decision: Some(Decision::Admitted(Admitted {
                            split_layer: req.split_layer,
                            idle_timeout_ms: self
                                .cfg
                                .sessions
                                .idle_timeout_ms
                                .min(r.idle_timeout_ms.max(1)),
                            max_draft_tokens: r.max_draft_tokens,
                        })),
                        retry_after_ms: 0,
                    });
                }
                Err(e) => match e.code() {
                    Code::InvalidArgument => return Err(e),
                    Code::FailedPrecondition => {
                        return Ok(self.go_local(device, "package digest mismatch", 0));
                    }
                    _ => {
                        tracing::warn!(worker = %w.addr, error = %e.message(), "worker refused a session; trying the next");
                        if matches!(e.code(), Code::Unavailable | Code::Unknown) {
                            self.pool.mark_suspect(&w.addr, e.message());
                        }
                        last = e.message().to_string();
                    }
                },
            }
        }
        tracing::warn!(device = %device, last_error = %last, "no worker took the session");
        Ok(self.go_local(device, "workers at capacity", RETRY_NO_WORKER_MS))
    }

    pub(crate) async fn close_on_worker(&self, s: &Session) -> u32 {
        let Some(w) = self.pool.get(&s.worker()) else {
            return s.kv_len();
        };
        match w
            .client
            .clone()
            .close_session(worker::CloseSessionRequest {
                session_id: s.id.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner().positions,
            Err(e) => {
                tracing::warn!(session = %s.id, worker = %w.addr, error = %e.message(), "closing on the worker failed; its idle timeout will free it");
                s.kv_len()
            }
        }
    }

    pub async fn close_session(
        &self,
        device: &DeviceId,
        req: CloseSessionRequest,
    ) -> Result<CloseSessionResponse, Status> {
        match self.sessions.get(&req.session_id) {
            None if !req.session_id.is_empty()
                && !identity::session_owned_by(&req.session_id, device)
                && req.session_id.contains('.') =>
            {
                Err(Status::permission_denied(
                    "the session belongs to another device",
                ))
            }
            None => Ok(CloseSessionResponse { positions: 0 }),
            Some(s) if &s.owner != device => Err(Status::permission_denied(
                "the session belongs to another device",
            )),
            Some(s) => {
                self.sessions.remove(&s.id);
                self.metrics.sessions.set(self.sessions.len() as i64);
                let positions = self.close_on_worker(&s).await;
                tracing::info!(session = %s.id, reason = %req.reason, steps = s.steps.load(Ordering::Relaxed), "session closed");
                Ok(CloseSessionResponse { positions })
            }
        }
    }

    pub fn report_link(
        &self,
        device: &DeviceId,
        req: ReportLinkRequest,
    ) -> Result<ReportLinkResponse, Status> {
        let finite = [req.rtt_ms, req.rtt_var_ms, req.loss, req.local_tokens_per_s];
        if finite.iter().any(|v| !v.is_finite() || *v < 0.0) || req.loss > 1.0 {
            return Err(Status::invalid_argument(
                "rtt_ms, rtt_var_ms, local_tokens_per_s must be finite and ≥ 0, loss in [0, 1]",
            ));
        }
        if req.decisions.len() > 1000 {
            return Err(Status::invalid_argument(
                "at most 1000 decision counts per report",
            ));
        }
        let policy = self.store.current().policy.clone();
        for d in &req.decisions {
            let kind = RouteKind::try_from(d.kind).unwrap_or(RouteKind::Unspecified);
            let route = match kind {
                RouteKind::Local => "local",
                RouteKind::Split => "split",
                RouteKind::Reject => "reject",
                RouteKind::Unspecified => "unknown",
            };
            // Rule names become metric labels and map keys: only the policy's own names (and
            // the evaluator's `default`/`override`) are kept, anything else counts as `other`,
            // so a device cannot grow either without bound.
            let rule = known_rule(&policy, &d.rule);
            self.metrics.decision(rule, route, "device", d.count);
            self.count(kind, d.split_layer, rule, d.count);
        }
        self.links.lock().expect("links lock").insert(
            device.clone(),
            LinkReport {
                report: req,
                at: Instant::now(),
            },
        );
        Ok(ReportLinkResponse {
            policy_version: self.store.current().version,
            cloud_quota_left: self.quota_left(device),
            report_interval_ms: 10_000,
        })
    }

    /// Closes sessions idle too long or past their lifetime, every second until `stop`.
    pub async fn sweep_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let idle = Duration::from_millis(self.cfg.sessions.idle_timeout_ms);
        let life = Duration::from_millis(self.cfg.sessions.max_lifetime_ms);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
            for s in self.sessions.all() {
                let why = if s.idle_for() > idle {
                    "idle"
                } else if s.created.elapsed() > life {
                    "lifetime"
                } else {
                    continue;
                };
                self.sessions.remove(&s.id);
                self.close_on_worker(&s).await;
                tracing::info!(session = %s.id, reason = why, "session expired");
            }
            self.metrics.sessions.set(self.sessions.len() as i64);
        }
    }
}
