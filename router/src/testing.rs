//! Test helpers (feature `test-util`): a fake worker whose answers follow a fixed rule, so the
//! gateway's relay can be tested and benchmarked without a model.

use seam_shared::proto::common::{PackageRef, StepRequest, StepResponse};
use seam_shared::proto::worker::worker_server::{Worker, WorkerServer};
use seam_shared::proto::worker::{
    CloseSessionRequest, CloseSessionResponse, GetInfoRequest, GetInfoResponse, OpenSessionRequest,
    OpenSessionResponse,
};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status, Streaming};

/// The package digest fake workers serve.
pub const DIGEST: &str = "sha256:fake-package";

/// The token a fake worker predicts at position `pos`.
pub fn f(pos: u32) -> u32 {
    (pos * 7 + 3) % 1000
}

/// A worker that answers by rule: the token at position p is `f(p)`; drafts are accepted while
/// they match. `kill()` makes it fail every call and end its streams, as a dead worker would.
#[derive(Clone, Default)]
pub struct FakeWorker {
    pub sessions: Arc<Mutex<HashMap<String, u32>>>,
    pub dead: Arc<AtomicBool>,
    kill: Arc<tokio::sync::Notify>,
}

impl FakeWorker {
    /// Serves on a free loopback port; returns its address.
    pub async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<WorkerServer<FakeWorker>>().await;
        let svc = WorkerServer::new(self.clone());
        let dead = self.dead.clone();
        let kill = self.kill.clone();
        tokio::spawn(async move {
            kill.notified().await;
            dead.store(true, Ordering::SeqCst);
            reporter.set_not_serving::<WorkerServer<FakeWorker>>().await;
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.kill.notify_one();
    }

    fn alive(&self) -> Result<(), Status> {
        if self.dead.load(Ordering::SeqCst) {
            Err(Status::unavailable("fake worker is dead"))
        } else {
            Ok(())
        }
    }
}

/// What the fake worker answers to `r` given the session's length `kv`.
pub fn fake_answer(r: &StepRequest, kv: u32) -> StepResponse {
    let rows = r
        .hidden
        .as_ref()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(1) as u32;
    let k = r.draft_tokens.len() as u32;
    let base = r.start_position + rows - k;
    let accepted = r
        .draft_tokens
        .iter()
        .enumerate()
        .take_while(|(i, t)| **t == f(base + *i as u32))
        .count() as u32;
    let _ = kv;
    StepResponse {
        session_id: r.session_id.clone(),
        step_id: r.step_id,
        accepted,
        next_token: f(base + accepted),
        kv_len: base + accepted,
        ..Default::default()
    }
}

type StepStream = Pin<Box<dyn futures::Stream<Item = Result<StepResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for FakeWorker {
    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<OpenSessionResponse>, Status> {
        self.alive()?;
        let r = request.into_inner();
        if r.package.map(|p| p.digest).as_deref() != Some(DIGEST) {
            return Err(Status::failed_precondition("package digest differs"));
        }
        let mut s = self.sessions.lock().unwrap();
        let kv = *s.entry(r.session_id).or_insert(0);
        Ok(Response::new(OpenSessionResponse {
            kv_len: kv,
            kv_bytes_reserved: 0,
            max_draft_tokens: 8,
            idle_timeout_ms: 60_000,
        }))
    }

    type StepStream = StepStream;

    async fn step(
        &self,
        request: Request<Streaming<StepRequest>>,
    ) -> Result<Response<StepStream>, Status> {
        self.alive()?;
        let mut inbound = request.into_inner();
        let me = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    n = inbound.message() => n,
                    _ = me.kill.notified() => {
                        let _ = tx.send(Err(Status::unavailable("fake worker died"))).await;
                        return;
                    }
                };
                let r = match next {
                    Ok(Some(r)) => r,
                    _ => return,
                };
                if me.dead.load(Ordering::SeqCst) {
                    let _ = tx.send(Err(Status::unavailable("fake worker died"))).await;
                    return;
                }
                let answer = {
                    let mut s = me.sessions.lock().unwrap();
                    match s.get_mut(&r.session_id) {
                        None => StepResponse {
                            session_id: r.session_id.clone(),
                            step_id: r.step_id,
                            error: Some(seam_shared::proto::common::StepError {
                                code: tonic::Code::NotFound as i32,
                                message: "no such session".into(),
                                retry_after_ms: 0,
                            }),
                            ..Default::default()
                        },
                        Some(kv) => {
                            let a = fake_answer(&r, *kv);
                            *kv = a.kv_len;
                            a
                        }
                    }
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn close_session(
        &self,
        request: Request<CloseSessionRequest>,
    ) -> Result<Response<CloseSessionResponse>, Status> {
        self.alive()?;
        let kv = self
            .sessions
            .lock()
            .unwrap()
            .remove(&request.into_inner().session_id);
        Ok(Response::new(CloseSessionResponse {
            positions: kv.unwrap_or(0),
            existed: kv.is_some(),
        }))
    }

    async fn get_info(
        &self,
        _: Request<GetInfoRequest>,
    ) -> Result<Response<GetInfoResponse>, Status> {
        self.alive()?;
        Ok(Response::new(GetInfoResponse {
            package: Some(PackageRef {
                digest: DIGEST.into(),
                name: "fake".into(),
            }),
            split_points: vec![4, 8, 15],
            num_layers: 30,
            sessions: self.sessions.lock().unwrap().len() as u32,
            ..Default::default()
        }))
    }
}
