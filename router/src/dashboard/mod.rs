//! The operators' dashboard, served on the admin port beside `seam.admin.v1`: a page at
//! `/dashboard/` (static assets compiled into the binary, uPlot vendored from npm, no CDN) that
//! polls `/dashboard/api/state` with the admin bearer token and charts decisions by route and
//! rule, relay latency p50/p99, tokens per round trip and draft acceptance, sessions and
//! workers, beside the workers' health and the policy in force with the diff of its last change.
//!
//! The sampler reads the gateway's counters every `dashboard.sample_every_ms` into a
//! [`timeline::Timeline`]; the page itself holds no data and needs no token to load. Decisions
//! are the devices' (reported with their link, every 10 s by default) plus the gateway's go-local verdicts.

mod live;
mod policy_diff;
mod timeline;

pub use live::{LiveStats, StepShape};

use crate::admin::BearerAuth;
use crate::config::DashboardConfig;
use crate::core::Core;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use seam_shared::proto::common::RouteKind;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use timeline::{Point, Snapshot, Timeline};
use tokio::sync::watch;

/// The page and its assets: (path under `/dashboard/`, content type, bytes).
const ASSETS: [(&str, &str, &[u8]); 5] = [
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/dashboard.css"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/vendor/uPlot.min.css"),
    ),
];

/// The admission count of a split session the device had already decided on.
const ADMITTED: &str = "gateway: admitted";

/// Only the page's own files and API; no inline script, no other origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The dashboard's state: the gateway's core, the admin credential and the sampled timeline.
pub struct Dashboard {
    core: Arc<Core>,
    auth: BearerAuth,
    timeline: Mutex<Timeline>,
    sample_every: Duration,
    started_unix_ms: u64,
}

impl Dashboard {
    pub fn new(
        core: Arc<Core>,
        token: &str,
        cfg: &DashboardConfig,
        started_unix_ms: u64,
    ) -> Arc<Dashboard> {
        let d = Arc::new(Dashboard {
            core,
            auth: BearerAuth::new(token),
            timeline: Mutex::new(Timeline::new(cfg.samples)),
            sample_every: Duration::from_millis(cfg.sample_every_ms),
            started_unix_ms,
        });
        d.sample();
        d
    }

    /// Reads the gateway's counters into the timeline.
    pub fn sample(&self) {
        let snapshot = self.snapshot();
        self.timeline.lock().expect("timeline lock").push(snapshot);
    }

    /// Samples every `sample_every` until `stop` turns true.
    pub async fn sample_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(self.sample_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            tokio::select! {
                _ = every.tick() => self.sample(),
                _ = stop.changed() => return,
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let core = &self.core;
        let decisions = {
            let counts = core.route_counts.lock().expect("route counts lock");
            let mut by_label = BTreeMap::new();
            // Admissions repeat the devices' split decisions; go-local verdicts are kept.
            for ((kind, layer, rule), count) in counts.iter().filter(|(k, _)| k.2 != ADMITTED) {
                *by_label
                    .entry(format!("{} · {rule}", route_name(*kind, *layer)))
                    .or_insert(0) += count;
            }
            by_label
        };
        let connections = ["grpc", "quic"]
            .iter()
            .map(|t| {
                let g = core
                    .metrics
                    .connections
                    .get_or_create(&vec![("transport", t.to_string())])
                    .get();
                u64::try_from(g).unwrap_or(0)
            })
            .sum();
        let workers = core.pool.workers();
        Snapshot {
            at_unix_ms: unix_ms(),
            decisions,
            live: core.live.read(),
            sessions: core.sessions.len() as u64,
            connections,
            workers_healthy: workers.iter().filter(|w| w.state().healthy).count() as u64,
            workers: workers.len() as u64,
        }
    }

    /// Routes under `/dashboard`, to be merged with the admin gRPC services.
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/dashboard",
                get(|| async { Redirect::permanent("/dashboard/") }),
            )
            .route("/dashboard/", get(page))
            .route("/dashboard/api/state", get(state))
            .route("/dashboard/{*asset}", get(asset))
            .with_state(self.clone())
    }

    fn state(&self) -> StateJson {
        let timeline = self.timeline.lock().expect("timeline lock");
        let points: Vec<Point> = timeline.points().cloned().collect();
        let totals = timeline.last().map(|s| Totals {
            decisions: s.decisions.clone(),
            steps: s.live.steps,
            decode_round_trips: s.live.decode_steps,
            tokens_per_round_trip: ratio(s.live.decode_tokens, s.live.decode_steps),
            drafted: s.live.drafted,
            accepted: s.live.accepted,
            acceptance: ratio(s.live.accepted, s.live.drafted),
        });
        drop(timeline);
        let current = self.core.store.current();
        let previous = self.core.store.previous();
        let policy = PolicyJson {
            version: current.version,
            digest: current.digest.clone(),
            source: current.source.clone(),
            loaded_unix_ms: current.loaded_unix_ms,
            diff: previous
                .as_ref()
                .map(|p| policy_diff::lines(&p.toml, &current.toml))
                .unwrap_or_default(),
            previous: previous.map(|p| PreviousPolicy {
                version: p.version,
                digest: p.digest.clone(),
                source: p.source.clone(),
                loaded_unix_ms: p.loaded_unix_ms,
            }),
        };
        let workers = self
            .core
            .worker_statuses()
            .into_iter()
            .map(|w| WorkerJson {
                address: w.address,
                healthy: w.healthy,
                draining: w.draining,
                sessions: w.sessions,
                kv_bytes: w.kv_bytes,
                kv_budget_bytes: w.kv_budget_bytes,
                in_flight_steps: w.in_flight_steps,
                package: w.package.map(|p| p.name),
                last_seen_unix_ms: w.last_seen_unix_ms,
                last_error: w.last_error,
            })
            .collect();
        StateJson {
            now_unix_ms: unix_ms(),
            started_unix_ms: self.started_unix_ms,
            sample_every_ms: self.sample_every.as_millis() as u64,
            points,
            totals,
            workers,
            sessions: self.core.sessions.len() as u64,
            policy,
        }
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// `local`, `split(K)`, `reject`: how the dashboard names a route.
fn route_name(kind: i32, layer: u32) -> String {
    match RouteKind::try_from(kind) {
        Ok(RouteKind::Local) => "local".into(),
        Ok(RouteKind::Split) => format!("split({layer})"),
        Ok(RouteKind::Reject) => "reject".into(),
        _ => "unknown".into(),
    }
}

#[derive(Serialize)]
struct StateJson {
    now_unix_ms: u64,
    started_unix_ms: u64,
    sample_every_ms: u64,
    points: Vec<Point>,
    totals: Option<Totals>,
    workers: Vec<WorkerJson>,
    sessions: u64,
    policy: PolicyJson,
}

/// Since the gateway started.
#[derive(Serialize)]
struct Totals {
    decisions: BTreeMap<String, u64>,
    steps: u64,
    decode_round_trips: u64,
    tokens_per_round_trip: Option<f64>,
    drafted: u64,
    accepted: u64,
    acceptance: Option<f64>,
}

#[derive(Serialize)]
struct WorkerJson {
    address: String,
    healthy: bool,
    draining: bool,
    sessions: u32,
    kv_bytes: u64,
    kv_budget_bytes: u64,
    in_flight_steps: u32,
    package: Option<String>,
    last_seen_unix_ms: u64,
    last_error: String,
}

#[derive(Serialize)]
struct PolicyJson {
    version: u64,
    digest: String,
    source: String,
    loaded_unix_ms: u64,
    previous: Option<PreviousPolicy>,
    /// The change from `previous` to this one, as diff lines with context.
    diff: Vec<policy_diff::Line>,
}

#[derive(Serialize)]
struct PreviousPolicy {
    version: u64,
    digest: String,
    source: String,
    loaded_unix_ms: u64,
}

fn static_response(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    let (_, content_type, body) = ASSETS[0];
    static_response(content_type, body)
}

async fn asset(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(p, _, _)| !p.is_empty() && *p == path) {
        Some((_, content_type, body)) => static_response(content_type, body),
        None => (StatusCode::NOT_FOUND, "no such dashboard file\n").into_response(),
    }
}

async fn state(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if let Err(why) = d.auth.check(authorization) {
        return (
            StatusCode::UNAUTHORIZED,
            [
                (header::WWW_AUTHENTICATE, "Bearer realm=\"seam-admin\""),
                (header::CACHE_CONTROL, "no-store"),
            ],
            axum::Json(serde_json::json!({ "error": why })),
        )
            .into_response();
    }
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(d.state())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_named_as_operators_write_them() {
        assert_eq!(route_name(RouteKind::Local as i32, 0), "local");
        assert_eq!(route_name(RouteKind::Split as i32, 8), "split(8)");
        assert_eq!(route_name(RouteKind::Reject as i32, 0), "reject");
        assert_eq!(route_name(99, 3), "unknown");
    }

    #[test]
    fn every_asset_is_served_and_the_page_loads_only_them() {
        let page = std::str::from_utf8(ASSETS[0].2).unwrap();
        for (path, _, body) in &ASSETS[1..] {
            assert!(!body.is_empty(), "{path} is empty");
            assert!(page.contains(path), "the page does not load {path}");
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(!page.contains("<script>"), "inline scripts break the CSP");
    }
}
