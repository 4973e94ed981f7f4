//! Prometheus metrics of the gateway (prefix `seam_gateway_`), the tower layer that times calls
//! to workers, and the `/metrics` endpoint.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

type Labels = Vec<(&'static str, String)>;

fn latency() -> Histogram {
    // 50 µs .. ~1.6 s.
    Histogram::new(exponential_buckets(50e-6, 2.0, 16))
}

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    /// Routing decisions: `rule`, `route`, `source` (`device` reports, `admission`).
    pub decisions: Family<Labels, Counter>,
    /// Time from a step's arrival at the gateway to its answer leaving, by `transport`.
    pub relay_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Unary and stream-opening calls to workers, by `method`.
    pub worker_call_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Devices' gRPC calls until their answer starts, by `method`.
    pub device_call_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Encoded message bytes relayed, by `direction` (`up`, `down`) and `transport`.
    pub bytes: Family<Labels, Counter>,
    /// Errors by `kind`.
    pub errors: Family<Labels, Counter>,
    /// Split sessions open.
    pub sessions: Gauge,
    /// Device connections open, by `transport`.
    pub connections: Family<Labels, Gauge>,
    /// Workers by `state` (`healthy`, `unhealthy`, `draining`).
    pub workers: Family<Labels, Gauge>,
    /// Version of the policy in force.
    pub policy_version: Gauge,
    /// Policy reloads by `result` (`published`, `rejected`).
    pub policy_reloads: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("seam_gateway");
        let m = Metrics {
            decisions: Family::default(),
            relay_seconds: Family::new_with_constructor(latency),
            worker_call_seconds: Family::new_with_constructor(latency),
            device_call_seconds: Family::new_with_constructor(latency),
            bytes: Family::default(),
            errors: Family::default(),
            sessions: Gauge::default(),
            connections: Family::default(),
            workers: Family::default(),
            policy_version: Gauge::default(),
            policy_reloads: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "decisions",
            "Routing decisions by rule and route",
            m.decisions.clone(),
        );
        r.register(
            "relay_seconds",
            "Gateway time per relayed step",
            m.relay_seconds.clone(),
        );
        r.register(
            "worker_call_seconds",
            "Calls to workers by method",
            m.worker_call_seconds.clone(),
        );
        r.register(
            "device_call_seconds",
            "Device gRPC calls by method",
            m.device_call_seconds.clone(),
        );
        r.register("bytes", "Relayed message bytes", m.bytes.clone());
        r.register("errors", "Errors by kind", m.errors.clone());
        r.register("sessions", "Split sessions open", m.sessions.clone());
        r.register(
            "connections",
            "Device connections open",
            m.connections.clone(),
        );
        r.register("workers", "Workers by state", m.workers.clone());
        r.register(
            "policy_version",
            "Policy version in force",
            m.policy_version.clone(),
        );
        r.register(
            "policy_reloads",
            "Policy reloads by result",
            m.policy_reloads.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition (OpenMetrics).
    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }

    pub fn policy_reload(&self, result: &str) {
        self.policy_reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    pub fn decision(&self, rule: &str, route: &str, source: &str, n: u64) {
        self.decisions
            .get_or_create(&vec![
                ("rule", rule.to_string()),
                ("route", route.to_string()),
                ("source", source.to_string()),
            ])
            .inc_by(n);
    }

    pub fn bytes(&self, direction: &'static str, transport: &'static str, n: u64) {
        self.bytes
            .get_or_create(&vec![
                ("direction", direction.to_string()),
                ("transport", transport.to_string()),
            ])
            .inc_by(n);
    }

    pub fn relay(&self, transport: &'static str, seconds: f64) {
        self.relay_seconds
            .get_or_create(&vec![("transport", transport.to_string())])
            .observe(seconds);
    }

    pub fn connection(&self, transport: &'static str) -> ConnectionGuard {
        let g = self
            .connections
            .get_or_create_owned(&vec![("transport", transport.to_string())]);
        g.inc();
        ConnectionGuard(g)
    }
}

/// Counts a connection while alive.
pub struct ConnectionGuard(Gauge);

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(super::method_label("/seam.gateway.v1.Gateway/Step"), "Step");
        assert_eq!(super::method_label("/x/aaaaaaaaaaaaaaaaaaaaaaaaa"), "other");
        assert_eq!(super::method_label(""), "other");
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Times every request through it by gRPC method (the last segment of the path).
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
    device: bool,
}

impl MetricsLayer {
    /// For calls to workers (`worker_call_seconds`).
    pub fn new(metrics: Arc<Metrics>) -> Self {
        MetricsLayer {
            metrics,
            device: false,
        }
    }

    /// For devices' calls (`device_call_seconds`).
    pub fn device(metrics: Arc<Metrics>) -> Self {
        MetricsLayer {
            metrics,
            device: true,
        }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsSvc<S>;
    fn layer(&self, inner: S) -> MetricsSvc<S> {
        MetricsSvc {
            inner,
            metrics: self.metrics.clone(),
            device: self.device,
        }
    }
}

#[derive(Clone)]
pub struct MetricsSvc<S> {
    inner: S,
    metrics: Arc<Metrics>,
    device: bool,
}

impl<S, B> tower::Service<http::Request<B>> for MetricsSvc<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path()).to_string();
        let family = if self.device {
            &self.metrics.device_call_seconds
        } else {
            &self.metrics.worker_call_seconds
        };
        let h = family.get_or_create_owned(&vec![("method", method)]);
        let t0 = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            h.observe(t0.elapsed().as_secs_f64());
            r
        })
    }
}

/// The gRPC methods timed by name; any other path (a device can send any) is `other`, so
/// that label values stay few.
const METHODS: [&str; 13] = [
    "GetPolicy",
    "WatchPolicy",
    "OpenSession",
    "Step",
    "CloseSession",
    "ReportLink",
    "GetInfo",
    "Check",
    "Watch",
    "ServerReflectionInfo",
    "PutPolicy",
    "ListWorkers",
    "ListSessions",
];

fn method_label(path: &str) -> &'static str {
    let last = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .iter()
        .find(|m| **m == last)
        .copied()
        .unwrap_or("other")
}

/// Serves `GET /metrics` on `listener` (HTTP/1.1) until `stop` turns true.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let render: seam_shared::metrics_http::Render = Arc::new(move || metrics.render());
    let stop = async move {
        let _ = stop.changed().await;
    };
    seam_shared::metrics_http::serve(listener, render, stop).await;
}
