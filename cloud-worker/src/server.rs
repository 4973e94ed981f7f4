//! Start-up: load the model (layers from the smallest split point on, and the head), build the
//! session table, the queue and the model thread, and serve gRPC with health and reflection until
//! shutdown, then drain.

use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::metrics::WorkerMetrics;
use crate::queue::Queue;
use crate::service::{ModelFacts, WorkerService};
use crate::sessions::{Limits, ModelShape, SessionTable};
use crate::step::StepLimits;
use seam_edge::runtime::budget::KvBudget;
use seam_edge::runtime::draft::upper::{Predictor, ProposeLimits};
use seam_edge::runtime::kv_cache::KvDtype;
use seam_edge::runtime::model::{LoadOptions, Model};
use seam_shared::proto::worker::worker_server::WorkerServer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most rows whose logits one step may ask for (a logits row is `vocab × 4` bytes).
const MAX_LOGIT_ROWS: usize = 64;
/// Bytes above `max_frame_bytes` the transport still reads, so that the step can be refused
/// on its own.
const FRAME_SLACK: usize = 1 << 20;
/// How often idle and expired sessions are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The digest of a package as it travels on the wire.
pub fn wire_digest(hex: &str) -> String {
    format!("sha256:{hex}")
}

/// Loads everything and serves on `listener` (and `/metrics` on `metrics`) until `shutdown`
/// resolves; then stops taking sessions, lets queued steps finish and returns.
pub async fn serve(
    cfg: WorkerConfig,
    listener: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    cfg.validate()?;
    let probe = seam_shared::package::Package::open(&cfg.model)?;
    let m = probe.manifest().clone();
    let first = *m
        .split_points
        .iter()
        .min()
        .ok_or_else(|| Error::Config("the package has no split points".into()))?;
    let model_cfg = cfg.clone();
    let model = tokio::task::spawn_blocking(move || {
        Model::load(
            &model_cfg.model,
            &LoadOptions {
                threads: model_cfg.threads,
                layers: Some(first..m.architecture.n_layer),
                head: true,
                drafter: false,
            },
        )
    })
    .await
    .map_err(|e| Error::Config(format!("model loading panicked: {e}")))??;
    let a = model.arch().clone();
    let shape = ModelShape {
        n_layer: a.n_layer,
        n_kv_heads: a.n_head_kv as usize,
        head_dim: a.head_dim as usize,
        split_points: m.split_points.clone(),
        kv_dtype: KvDtype::Int8,
    };
    let limits = Limits {
        max_sessions: cfg.max_sessions,
        idle_ttl: cfg.idle_ttl(),
        evict_after: cfg.evict_after(),
        max_session: cfg.max_session(),
        max_positions: a.context_length as usize,
        max_draft_tokens: cfg.max_draft_tokens,
    };
    let budget = KvBudget::new(usize::try_from(cfg.kv_budget_bytes).unwrap_or(usize::MAX));
    let table = SessionTable::new(budget, limits, shape);
    let facts = ModelFacts {
        digest: wire_digest(model.package().digest()),
        name: m.name.clone(),
        split_points: m.split_points.clone(),
        n_layer: a.n_layer,
        hidden_size: a.n_embd,
        vocab_size: a.vocab_size,
        max_positions: a.context_length,
        kv_bytes_per_position: table.bytes_per_position(first) as u64,
    };
    let step_limits = StepLimits {
        hidden_size: a.n_embd as usize,
        vocab_size: a.vocab_size,
        max_rows: cfg.max_step_rows,
        max_logit_rows: MAX_LOGIT_ROWS,
        max_frame_bytes: cfg.max_frame_bytes,
    };
    let table = Arc::new(Mutex::new(table));
    let queue = Arc::new(Queue::new(cfg.max_queued_steps));
    let stats = Arc::new(WorkerMetrics::new());
    let predictors = if cfg.proposal_depth == 0 {
        Vec::new()
    } else {
        m.predictors
            .iter()
            .filter(|p| p.layer >= first)
            .map(|p| Predictor::load(model.package(), p, a.n_embd as usize))
            .collect::<seam_edge::Result<Vec<_>>>()?
    };
    let proposals = ProposeLimits {
        depth: cfg.proposal_depth,
        ..ProposeLimits::default()
    };
    let executor = Executor::new(
        model,
        table.clone(),
        queue.clone(),
        cfg.max_batch_rows,
        stats.clone(),
        predictors,
        proposals,
    );
    let model_thread = std::thread::Builder::new()
        .name("seam-model".into())
        .spawn(move || executor.run())
        .map_err(|e| Error::Config(format!("starting the model thread: {e}")))?;

    let sweeper = {
        let table = table.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let dropped = table
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sweep(Instant::now());
                stats.dropped("swept", dropped.len());
                for id in dropped {
                    tracing::info!(session = %id, "idle or expired session dropped");
                }
            }
        })
    };

    let draining = Arc::new(AtomicBool::new(false));
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = metrics.map(|listener| {
        let render = stats.renderer(table.clone(), queue.clone());
        tokio::spawn(seam_shared::metrics_http::serve(listener, render, async {
            let _ = metrics_stopped.await;
        }))
    });
    let service = WorkerService::new(table, queue.clone(), facts, step_limits, draining.clone())
        .with_metrics(stats);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<WorkerServer<WorkerService>>()
        .await;
    let reflection = seam_shared::reflection::v1(&["seam.worker.v1.Worker"])
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = seam_shared::reflection::v1alpha(&["seam.worker.v1.Worker"])
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let logits_bytes = MAX_LOGIT_ROWS * a.vocab_size as usize * 4 + (1 << 20);
    // Frames a little above the limit are refused per step (the stream goes on); only frames
    // beyond this slack make the transport end the stream.
    let worker = WorkerServer::new(service)
        .max_decoding_message_size(cfg.max_frame_bytes + FRAME_SLACK)
        .max_encoding_message_size(logits_bytes);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let drain = {
        let draining = draining.clone();
        async move {
            shutdown.await;
            draining.store(true, Ordering::Release);
            health_reporter
                .set_not_serving::<WorkerServer<WorkerService>>()
                .await;
            tracing::info!("draining");
        }
    };
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(worker)
        .serve_with_incoming_shutdown(incoming, drain)
        .await;
    sweeper.abort();
    let _ = stop_metrics.send(());
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    queue.close();
    let _ = tokio::task::spawn_blocking(move || model_thread.join()).await;
    served.map_err(|e| Error::Unavailable(format!("server: {e}")))
}
