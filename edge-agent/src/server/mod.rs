//! The app-facing gRPC server: `seam.edge.v1.Assistant`, the standard health service and
//! server reflection, so `grpcurl` and any generated client work.

mod assistant;
pub mod convert;
pub mod metrics;
pub mod openai;
pub mod perception;
pub mod routing;

pub use assistant::{AssistantService, ServiceLimits, SplitTarget};

use crate::runtime::engine::Engine;
use seam_shared::proto::edge::assistant_server::AssistantServer;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Largest request message accepted from apps (a prompt is text; 1 MiB is plenty).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Where the agent serves.
#[derive(Debug)]
pub struct Listeners {
    /// `seam.edge.v1.Assistant` (gRPC).
    pub api: tokio::net::TcpListener,
    /// Prometheus `/metrics`.
    pub metrics: Option<tokio::net::TcpListener>,
    /// The OpenAI-compatible HTTP API.
    pub http: Option<tokio::net::TcpListener>,
}

/// Serves the Assistant API on `listeners.api` until `shutdown` resolves, then drains. With a
/// `perception` (sentence encoder and intent head) Embed and Classify work and Generate reports
/// the intent of its prompt; with a `policy` requests that leave the route to the device are
/// routed by it. With a metrics listener `/metrics` is served on it.
pub async fn serve(
    engine: Engine,
    perception: Option<crate::perception::Perception>,
    listeners: Listeners,
    limits: ServiceLimits,
    split: Option<SplitTarget>,
    policy: Option<Arc<routing::DevicePolicy>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stats = Arc::new(metrics::EdgeMetrics::new());
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let Listeners {
        api: listener,
        metrics,
        http,
    } = listeners;
    let model_id = engine.model().package().manifest().name.clone();
    let encoder_id = perception.as_ref().map(|p| p.name().to_string());
    let metrics_server = metrics.map(|listener| {
        tokio::spawn(seam_shared::metrics_http::serve(
            listener,
            stats.renderer(),
            async {
                let _ = metrics_stopped.await;
            },
        ))
    });
    let mut service =
        AssistantService::new(Arc::new(Mutex::new(engine)), limits, split).with_metrics(stats);
    if let Some(p) = policy {
        service = service.with_policy(p);
    }
    if let Some(p) = perception {
        service = service.with_perception(Arc::new(Mutex::new(p)));
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AssistantServer<AssistantService>>()
        .await;
    let reflection = seam_shared::reflection::v1(&["seam.edge.v1.Assistant"])?;
    let reflection_v1alpha = seam_shared::reflection::v1alpha(&["seam.edge.v1.Assistant"])?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_server = http.map(|listener| {
        let api = openai::OpenAi {
            service: service.clone(),
            model: model_id,
            encoder: encoder_id,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        tokio::spawn(openai::serve(listener, api, async {
            let _ = http_stopped.await;
        }))
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        // A device serves a handful of local apps: bound concurrent streams per connection.
        .concurrency_limit_per_connection(32)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(AssistantServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    let _ = stop_http.send(());
    if let Some(h) = http_server {
        let _ = h.await;
    }
    let _ = stop_metrics.send(());
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    Ok(())
}

/// Binds `addr` (use port 0 for any free port).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind(addr).await?)
}
