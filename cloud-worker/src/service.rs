//! The `seam.worker.v1.Worker` gRPC service: opens and closes sessions in the table, turns step
//! streams into queued jobs and their answers back into a stream.

use crate::error::Error;
use crate::metrics::WorkerMetrics;
use crate::queue::{Job, Queue, Reply};
use crate::sessions::{OpenParams, SessionTable};
use crate::step::{StepLimits, plan};
use seam_edge::runtime::sampler::SamplingParams;
use seam_shared::proto::common::{PackageRef, StepRequest, StepResponse};
use seam_shared::proto::worker::worker_server::Worker;
use seam_shared::proto::worker::{
    CloseSessionRequest, CloseSessionResponse, GetInfoRequest, GetInfoResponse, OpenSessionRequest,
    OpenSessionResponse,
};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Steps one stream may have waiting or computing; more wait for an answer to be sent.
const MAX_IN_FLIGHT_PER_STREAM: usize = 64;

/// What the service knows about the model it serves.
#[derive(Debug, Clone)]
pub struct ModelFacts {
    /// `sha256:<hex>` of the package.
    pub digest: String,
    pub name: String,
    pub split_points: Vec<u32>,
    pub n_layer: u32,
    pub hidden_size: u32,
    pub vocab_size: u32,
    pub max_positions: u32,
    pub kv_bytes_per_position: u64,
}

/// State shared by every call.
pub struct WorkerService {
    table: Arc<Mutex<SessionTable>>,
    queue: Arc<Queue>,
    facts: ModelFacts,
    limits: StepLimits,
    draining: Arc<AtomicBool>,
    started_unix_ms: u64,
    metrics: Arc<WorkerMetrics>,
}

impl WorkerService {
    pub fn new(
        table: Arc<Mutex<SessionTable>>,
        queue: Arc<Queue>,
        facts: ModelFacts,
        limits: StepLimits,
        draining: Arc<AtomicBool>,
    ) -> WorkerService {
        let started_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        WorkerService {
            table,
            queue,
            facts,
            limits,
            draining,
            started_unix_ms,
            metrics: Arc::default(),
        }
    }

    /// Counts into `metrics` (a fresh set otherwise).
    pub fn with_metrics(mut self, metrics: Arc<WorkerMetrics>) -> WorkerService {
        self.metrics = metrics;
        self
    }

    fn table(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_params(&self, r: OpenSessionRequest) -> Result<OpenParams, Error> {
        let digest = r.package.map(|p| p.digest).unwrap_or_default();
        if digest != self.facts.digest {
            return Err(Error::FailedPrecondition(format!(
                "package digest {digest:?} differs from the worker's {}",
                self.facts.digest
            )));
        }
        let s = r.sampling.unwrap_or_default();
        if s.top_k.is_some_and(|k| k > 0) {
            return Err(Error::InvalidArgument("top_k is not supported".into()));
        }
        Ok(OpenParams {
            id: r.session_id,
            device_id: r.device_id,
            split_layer: r.split_layer,
            sampling: SamplingParams {
                temperature: s.temperature,
                top_p: if s.top_p == 0.0 { 1.0 } else { s.top_p },
                seed: s.seed,
            },
            max_positions: r.max_positions as usize,
            lifetime: (r.deadline_ms > 0).then(|| Duration::from_millis(r.deadline_ms)),
            max_draft_tokens: r.max_draft_tokens,
        })
    }
}

type StepStream = Pin<Box<dyn Stream<Item = Result<StepResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<OpenSessionResponse>, Status> {
        if self.draining.load(Ordering::Acquire) {
            return Err(Error::Unavailable("the worker is draining".into()).to_status());
        }
        let p = self.open_params(request.into_inner()).map_err(|e| {
            tracing::info!(error = %e, "open session refused");
            e.to_status()
        })?;
        let (id, device, layer) = (p.id.clone(), p.device_id.clone(), p.split_layer);
        let opened = self.table().open(p, Instant::now()).map_err(|e| {
            tracing::info!(session = %id, error = %e, "open session refused");
            e.to_status()
        })?;
        self.metrics.sessions_opened.inc();
        self.metrics.dropped("evicted", opened.evicted.len());
        for victim in &opened.evicted {
            tracing::info!(session = %victim, "idle session evicted for a new one");
        }
        tracing::info!(session = %id, device = %device, split_layer = layer, kv_bytes = opened.kv_bytes_reserved, "session opened");
        Ok(Response::new(OpenSessionResponse {
            kv_len: opened.kv_len as u32,
            kv_bytes_reserved: opened.kv_bytes_reserved as u64,
            max_draft_tokens: opened.max_draft_tokens,
            idle_timeout_ms: self.table().limits().idle_ttl.as_millis() as u64,
        }))
    }

    type StepStream = StepStream;

    async fn step(
        &self,
        request: Request<Streaming<StepRequest>>,
    ) -> Result<Response<StepStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (err_tx, mut err_rx) = mpsc::channel::<Status>(1);
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_STREAM));
        let (queue, limits, metrics) = (self.queue.clone(), self.limits, self.metrics.clone());
        tokio::spawn(async move {
            loop {
                let req = match inbound.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(status) => {
                        // tonic refuses a frame above the transport limit with OUT_OF_RANGE and
                        // cannot read on; the stream ends with the code the contract promises.
                        let status = if status.code() == tonic::Code::OutOfRange {
                            Status::resource_exhausted(status.message().to_string())
                        } else {
                            status
                        };
                        tracing::info!(error = %status, "step stream failed");
                        let _ = err_tx.send(status).await;
                        break;
                    }
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (session, step_id, start) =
                    (req.session_id.clone(), req.step_id, req.start_position);
                let reply = Reply {
                    tx: tx.clone(),
                    permit,
                };
                match plan(req, &limits) {
                    Ok(plan) => {
                        let job = Job {
                            plan,
                            reply,
                            enqueued: Instant::now(),
                        };
                        if let Err(refused) = queue.push(job) {
                            let (job, e) = *refused;
                            metrics.step(false);
                            crate::executor::answer_error(job, &e, start as usize);
                        }
                    }
                    Err(e) => {
                        metrics.step(false);
                        tracing::info!(session = %session, step = step_id, error = %e, "step refused");
                        reply.send(StepResponse {
                            session_id: session,
                            step_id,
                            kv_len: start,
                            error: Some(e.to_step_error()),
                            ..Default::default()
                        });
                    }
                }
            }
        });
        let out = async_stream(move |yield_| async move {
            loop {
                tokio::select! {
                    biased;
                    item = rx.recv() => match item {
                        Some((response, permit)) => {
                            let sent = yield_.send(Ok(response)).await;
                            drop(permit);
                            if sent.is_err() {
                                return;
                            }
                        }
                        None => {
                            // The reader is gone; it leaves the stream's error first, if any.
                            if let Ok(status) = err_rx.try_recv() {
                                let _ = yield_.send(Err(status)).await;
                            }
                            return;
                        }
                    },
                    Some(status) = err_rx.recv() => {
                        let _ = yield_.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(out))
    }

    async fn close_session(
        &self,
        request: Request<CloseSessionRequest>,
    ) -> Result<Response<CloseSessionResponse>, Status> {
        let id = request.into_inner().session_id;
        let closed = self.table().close(&id);
        tracing::info!(session = %id, existed = closed.is_some(), "session closed");
        Ok(Response::new(CloseSessionResponse {
            positions: closed.unwrap_or(0) as u32,
            existed: closed.is_some(),
        }))
    }

    async fn get_info(
        &self,
        _request: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        let f = &self.facts;
        let table = self.table();
        Ok(Response::new(GetInfoResponse {
            package: Some(PackageRef {
                digest: f.digest.clone(),
                name: f.name.clone(),
            }),
            split_points: f.split_points.clone(),
            num_layers: f.n_layer,
            hidden_size: f.hidden_size,
            vocab_size: f.vocab_size,
            max_positions: f.max_positions,
            max_sessions: table.limits().max_sessions as u32,
            sessions: table.len() as u32,
            kv_budget_bytes: table.budget().limit() as u64,
            kv_used_bytes: table.budget().used() as u64,
            kv_bytes_per_position: f.kv_bytes_per_position,
            queued_steps: self.queue.len() as u32,
            draining: self.draining.load(Ordering::Acquire),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_unix_ms: self.started_unix_ms,
        }))
    }
}

/// A stream fed by an async producer through a bounded channel (so the producer waits for the
/// transport instead of buffering without bound).
fn async_stream<F, Fut>(producer: F) -> StepStream
where
    F: FnOnce(mpsc::Sender<Result<StepResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
