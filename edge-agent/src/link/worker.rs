//! A [`SplitLink`] straight to a `seam-worker` over gRPC (`seam.worker.v1`): the session is
//! opened with a unary call and its steps travel on one bidirectional stream.
//!
//! The engine runs on a blocking thread; each call enters the tokio runtime through its
//! [`Handle`] and waits, bounded by [`STEP_TIMEOUT`] and the request's deadline.

use crate::error::{Error, Result};
use crate::runtime::split::{LinkCounters, OpenSplit, SplitLink};
use prost::Message;
use seam_shared::proto::common::{PackageRef, SamplingParams, StepRequest, StepResponse};
use seam_shared::proto::worker::worker_client::WorkerClient;
use seam_shared::proto::worker::{CloseSessionRequest, OpenSessionRequest};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// Longest wait for one answer when the request has no earlier deadline.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message accepted from the worker (logits of up to 64 rows).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A gRPC channel to a worker, shared by every request of the device.
#[derive(Debug, Clone)]
pub struct WorkerEndpoint {
    client: WorkerClient<Channel>,
    /// `sha256:<hex>` of the device's package.
    digest: String,
    device_id: String,
}

impl WorkerEndpoint {
    /// A lazily connected channel to `addr` (`http://host:port`).
    pub fn new(addr: &str, package_digest: &str, device_id: &str) -> Result<WorkerEndpoint> {
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| Error::InvalidArgument(format!("worker address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let client =
            WorkerClient::new(endpoint.connect_lazy()).max_decoding_message_size(MAX_MESSAGE_BYTES);
        Ok(WorkerEndpoint {
            client,
            digest: format!("sha256:{package_digest}"),
            device_id: device_id.to_string(),
        })
    }

    /// A link for one request.
    pub fn link(&self, handle: Handle) -> WorkerLink {
        WorkerLink {
            handle,
            endpoint: self.clone(),
            session: None,
            stream: None,
            deadline: None,
            counters: LinkCounters::default(),
        }
    }
}

/// One split session with a worker.
pub struct WorkerLink {
    handle: Handle,
    endpoint: WorkerEndpoint,
    session: Option<String>,
    stream: Option<(mpsc::Sender<StepRequest>, tonic::Streaming<StepResponse>)>,
    deadline: Option<Instant>,
    counters: LinkCounters,
}

impl WorkerLink {
    /// Time left for one exchange.
    fn budget(&self) -> Duration {
        let until_deadline = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        until_deadline.map_or(STEP_TIMEOUT, |d| d.min(STEP_TIMEOUT))
    }

    fn call<T>(&self, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let budget = self.budget();
        self.handle.block_on(async {
            tokio::time::timeout(budget, fut)
                .await
                .map_err(|_| Error::Unavailable(format!("{what}: no answer in {budget:?}")))?
        })
    }
}

fn remote(e: tonic::Status) -> Error {
    super::remote_error("worker", &e)
}

impl SplitLink for WorkerLink {
    fn open(&mut self, p: &OpenSplit) -> Result<String> {
        self.deadline = p.deadline;
        let id = format!("{:032x}", rand::random::<u128>());
        let request = OpenSessionRequest {
            session_id: id.clone(),
            package: Some(PackageRef {
                digest: self.endpoint.digest.clone(),
                name: String::new(),
            }),
            split_layer: p.layer,
            sampling: Some(SamplingParams {
                temperature: p.sampling.temperature,
                top_p: p.sampling.top_p,
                seed: p.sampling.seed,
                top_k: None,
            }),
            deadline_ms: p.deadline.map_or(0, |d| {
                d.saturating_duration_since(Instant::now()).as_millis() as u64
            }),
            max_positions: p.max_positions,
            device_id: self.endpoint.device_id.clone(),
            max_draft_tokens: p.max_draft_tokens,
        };
        self.counters.bytes_sent += request.encoded_len() as u64;
        let mut client = self.endpoint.client.clone();
        let response = self.call("open session", async move {
            client.open_session(request).await.map_err(remote)
        })?;
        self.counters.bytes_received += response.get_ref().encoded_len() as u64;
        self.counters.round_trips += 1;
        self.session = Some(id.clone());
        Ok(id)
    }

    fn step(&mut self, request: StepRequest) -> Result<StepResponse> {
        if self.stream.is_none() {
            let (tx, rx) = mpsc::channel(4);
            let mut client = self.endpoint.client.clone();
            let inbound = self.call("step stream", async move {
                let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
                client.step(outbound).await.map_err(remote)
            })?;
            self.stream = Some((tx, inbound.into_inner()));
        }
        self.counters.bytes_sent += request.encoded_len() as u64;
        let budget = self.budget();
        let Some((tx, inbound)) = self.stream.as_mut() else {
            return Err(Error::Unavailable("no step stream".into()));
        };
        let answer = self.handle.block_on(async {
            tokio::time::timeout(budget, async {
                tx.send(request)
                    .await
                    .map_err(|_| Error::Unavailable("the step stream closed".into()))?;
                match inbound.message().await {
                    Ok(Some(r)) => Ok(r),
                    Ok(None) => Err(Error::Unavailable(
                        "the worker ended the step stream".into(),
                    )),
                    Err(e) => Err(remote(e)),
                }
            })
            .await
            .map_err(|_| Error::Unavailable(format!("step: no answer in {budget:?}")))?
        });
        if answer.is_err() {
            // The stream cannot be trusted to be in step any more.
            self.stream = None;
        }
        let answer = answer?;
        self.counters.bytes_received += answer.encoded_len() as u64;
        self.counters.round_trips += 1;
        Ok(answer)
    }

    fn close(&mut self) {
        self.stream = None;
        let Some(id) = self.session.take() else {
            return;
        };
        let request = CloseSessionRequest { session_id: id };
        self.counters.bytes_sent += request.encoded_len() as u64;
        let mut client = self.endpoint.client.clone();
        let closed = self.handle.block_on(async move {
            tokio::time::timeout(Duration::from_secs(2), client.close_session(request)).await
        });
        if let Ok(Ok(r)) = closed {
            self.counters.bytes_received += r.get_ref().encoded_len() as u64;
            self.counters.round_trips += 1;
        }
    }

    fn counters(&self) -> LinkCounters {
        self.counters
    }
}

impl Drop for WorkerLink {
    fn drop(&mut self) {
        if self.session.is_some() {
            self.close();
        }
    }
}
