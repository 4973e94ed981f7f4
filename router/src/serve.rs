//! `seam-router serve`: binds the device endpoint (gRPC on TCP, QUIC on the same UDP port), the
//! admin API and `/metrics`, starts the policy watcher, worker discovery, health checks and the
//! session sweeper, and runs until SIGTERM or Ctrl-C, then drains.

use crate::admin::{AdminService, BearerAuth};
use crate::config::RouterConfig;
use crate::core::{Core, CoreConfig};
use crate::dashboard::Dashboard;
use crate::error::{Error, Result};
use crate::grpc::GrpcGateway;
use crate::metrics::{Metrics, serve_metrics};
use crate::policy_store::PolicyStore;
use crate::pool::health::{WorkerSource, discovery_loop, health_loop};
use crate::pool::{PoolConfig, WorkerPool};
use crate::tls::{TlsFiles, install_provider};
use seam_shared::proto::admin::admin_server::AdminServer;
use seam_shared::proto::gateway::gateway_server::GatewayServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

/// Slack above `max_frame_bytes` that tonic still decodes, so a step just over the limit is
/// refused on its own and the stream goes on; beyond it the transport ends the call.
pub const FRAME_SLACK: usize = 1 << 20;
/// Largest answer relayed to a device (logits of a step that asked for them).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The admin token: `SEAM_ADMIN_TOKEN`, else the configured file.
fn admin_token(cfg: &RouterConfig) -> Result<String> {
    if let Ok(t) = std::env::var("SEAM_ADMIN_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    let path = cfg.admin.token_file.as_ref().ok_or_else(|| {
        Error::Config("admin.token_file is not set and SEAM_ADMIN_TOKEN is empty".into())
    })?;
    let t = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let t = t.trim().to_string();
    if t.len() < 16 {
        return Err(Error::Config(format!(
            "{}: the admin token must have at least 16 characters",
            path.display()
        )));
    }
    Ok(t)
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Net(format!("{what}: binding {addr}: {e}")))
}

/// Runs the gateway until `shutdown` resolves.
pub async fn serve(
    cfg: RouterConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    install_provider();
    let tls = TlsFiles::read(&cfg.tls.cert, &cfg.tls.key, &cfg.tls.client_ca)?;
    let token = admin_token(&cfg)?;
    let store = Arc::new(PolicyStore::open(&cfg.policy)?);
    let metrics = Arc::new(Metrics::new());
    let pool = WorkerPool::new(
        PoolConfig {
            call_timeout: Duration::from_millis(cfg.workers.call_timeout_ms),
            max_concurrent_calls: cfg.workers.max_concurrent_calls,
            unhealthy_after: cfg.workers.unhealthy_after,
            health_every: Duration::from_millis(cfg.workers.health_every_ms),
            max_message_bytes: MAX_ANSWER_BYTES.max(cfg.max_frame_bytes + FRAME_SLACK),
        },
        metrics.clone(),
    );
    let core = Core::new(
        store.clone(),
        pool.clone(),
        metrics.clone(),
        CoreConfig {
            max_frame_bytes: cfg.max_frame_bytes,
            sessions: cfg.sessions.clone(),
            quota: cfg.quota.clone(),
        },
    );

    // Device endpoint: TCP first, then QUIC on the same port number.
    let device_tcp = bind(cfg.listen, "device endpoint").await?;
    let addr = device_tcp
        .local_addr()
        .map_err(|e| Error::Net(format!("device endpoint: {e}")))?;
    let quic = crate::quic::bind(addr, &tls)?;
    let admin_tcp = bind(cfg.admin_listen, "admin endpoint").await?;
    let metrics_tcp = bind(cfg.metrics_listen, "metrics endpoint").await?;
    let admin_addr = admin_tcp
        .local_addr()
        .map_err(|e| Error::Net(e.to_string()))?;
    let metrics_addr = metrics_tcp
        .local_addr()
        .map_err(|e| Error::Net(e.to_string()))?;

    let (stop_tx, stop) = watch::channel(false);
    let source = match &cfg.workers.dns {
        Some(name) => WorkerSource::Dns(name.clone()),
        None => WorkerSource::Static(cfg.workers.static_addrs.clone()),
    };
    let mut tasks = vec![
        tokio::spawn(discovery_loop(
            pool.clone(),
            source,
            Duration::from_millis(cfg.workers.resolve_every_ms),
            stop.clone(),
        )),
        tokio::spawn(health_loop(pool.clone(), stop.clone())),
        tokio::spawn(core.clone().sweep_loop(stop.clone())),
        tokio::spawn(policy_watch(core.clone(), cfg.policy_poll(), stop.clone())),
        tokio::spawn(serve_metrics(metrics_tcp, metrics.clone(), stop.clone())),
        tokio::spawn(crate::quic::serve(quic, core.clone(), stop.clone())),
    ];

    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<GatewayServer<GrpcGateway>>().await;
    let reflection = |service: &str| -> Result<_> {
        let fail = |e| Error::Config(format!("reflection: {e}"));
        Ok((
            seam_shared::reflection::v1(&[service]).map_err(fail)?,
            seam_shared::reflection::v1alpha(&[service]).map_err(fail)?,
        ))
    };
    let (device_reflection, device_reflection_v1alpha) = reflection("seam.gateway.v1.Gateway")?;
    let (admin_reflection, admin_reflection_v1alpha) = reflection("seam.admin.v1.Admin")?;
    let gateway = GatewayServer::new(GrpcGateway { core: core.clone() })
        .max_decoding_message_size(cfg.max_frame_bytes + FRAME_SLACK)
        .max_encoding_message_size(MAX_ANSWER_BYTES);
    let device_server = tonic::transport::Server::builder()
        .tls_config(tls.grpc_server())
        .map_err(|e| Error::Tls(format!("gRPC TLS: {e}")))?
        .tcp_nodelay(true)
        .timeout(Duration::from_millis(cfg.workers.call_timeout_ms * 2))
        .concurrency_limit_per_connection(64)
        .load_shed(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .layer(crate::metrics::MetricsLayer::device(metrics.clone()))
        .add_service(health_svc)
        .add_service(device_reflection)
        .add_service(device_reflection_v1alpha)
        .add_service(gateway);

    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let admin = AdminServer::new(AdminService {
        core: core.clone(),
        started_unix_ms,
    })
    .max_decoding_message_size(crate::policy::MAX_POLICY_BYTES + 4096);
    let admin =
        tonic::service::interceptor::InterceptedService::new(admin, BearerAuth::new(&token));
    // The admin port speaks gRPC (HTTP/2) and serves the dashboard to browsers (HTTP/1.1).
    let dashboard = Dashboard::new(core.clone(), &token, &cfg.dashboard, started_unix_ms);
    tasks.push(tokio::spawn(dashboard.clone().sample_loop(stop.clone())));
    let admin_routes = tonic::service::Routes::new(admin_reflection)
        .add_service(admin_reflection_v1alpha)
        .add_service(admin)
        .into_axum_router()
        .merge(dashboard.routes());
    let admin_server = tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(admin_routes));

    println!("listening gateway {addr} (gRPC/TCP and QUIC/UDP)");
    println!("listening admin {admin_addr}");
    println!("dashboard http://{admin_addr}/dashboard/");
    println!("listening metrics {metrics_addr}");
    tracing::info!(
        %addr, %admin_addr, %metrics_addr,
        policy_version = store.current().version,
        "seam-router serving"
    );

    let (stop_a, stop_b) = (stop.clone(), stop.clone());
    let device_task = tokio::spawn(
        device_server
            .serve_with_incoming_shutdown(TcpListenerStream::new(device_tcp), wait_stop(stop_a)),
    );
    let admin_task = tokio::spawn(
        admin_server
            .serve_with_incoming_shutdown(TcpListenerStream::new(admin_tcp), wait_stop(stop_b)),
    );
    shutdown.await;
    tracing::info!("shutting down: draining device streams");
    health.set_not_serving::<GatewayServer<GrpcGateway>>().await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = device_task.await;
        let _ = admin_task.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("device streams still open after 10 s; closing them");
    }
    for t in tasks.drain(..) {
        t.abort();
    }
    Ok(())
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// The file watcher, with the policy gauges kept current.
async fn policy_watch(core: Arc<Core>, every: Duration, stop: watch::Receiver<bool>) {
    let mut rx = core.store.subscribe();
    let metrics = core.metrics.clone();
    let gauge = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let v = rx.borrow_and_update().version;
            metrics.policy_version.set(v as i64);
        }
    });
    crate::policy_store::watch_policy_file(core.store.clone(), every, stop, &core.metrics).await;
    gauge.abort();
}
