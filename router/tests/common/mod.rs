//! Harness for the gateway's tests: dev certificates, a `seam-router serve` process on loopback
//! with its logs, and in-process fake workers whose answers follow a fixed rule, so the relay
//! can be checked without a model.

#![allow(dead_code)]

use seam_router::certs::DevCa;
use seam_router::client::{GrpcClient, QuicClient};
use seam_router::tls::TlsFiles;
use seam_shared::proto::common::{PackageRef, StepRequest, StepResponse};
use seam_shared::proto::worker::worker_server::{Worker, WorkerServer};
use seam_shared::proto::worker::{
    CloseSessionRequest, CloseSessionResponse, GetInfoRequest, GetInfoResponse, OpenSessionRequest,
    OpenSessionResponse,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};

pub const DIGEST: &str = "sha256:fake-package";
pub const TOKEN: &str = "admin-token-for-tests-0123456789";

/// The token a fake worker predicts at position `pos`.
pub fn f(pos: u32) -> u32 {
    (pos * 7 + 3) % 1000
}

/// Certificates of one test: a CA, the gateway, devices `dev-a` and `dev-b`; and a foreign CA's
/// device `dev-x`.
pub struct Certs {
    pub dir: PathBuf,
    pub ca: String,
    pub a: TlsFiles,
    pub b: TlsFiles,
    pub foreign: TlsFiles,
}

pub fn scratch(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn certs(dir: &Path) -> Certs {
    seam_router::tls::install_provider();
    let ca = DevCa::new("test CA").unwrap();
    let gw = ca.gateway(&[]).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem().cert).unwrap();
    std::fs::write(dir.join("gateway.pem"), &gw.cert).unwrap();
    std::fs::write(dir.join("gateway.key"), &gw.key).unwrap();
    let files = |p: seam_router::certs::Pem, ca_pem: &str| TlsFiles {
        cert_pem: p.cert,
        key_pem: p.key,
        ca_pem: ca_pem.to_string(),
    };
    let ca_pem = ca.pem().cert;
    let other = DevCa::new("someone else's CA").unwrap();
    Certs {
        dir: dir.to_path_buf(),
        a: files(ca.device("dev-a").unwrap(), &ca_pem),
        b: files(ca.device("dev-b").unwrap(), &ca_pem),
        foreign: files(other.device("dev-x").unwrap(), &ca_pem),
        ca: ca_pem,
    }
}

pub fn policy(version: u64, default: &str) -> String {
    format!("version = {version}\ndefault_split = 8\ndefault = \"{default}\"\n")
}

/// A running `seam-router serve`, killed on drop.
pub struct Router {
    child: Child,
    pub gateway: std::net::SocketAddr,
    pub admin: String,
    pub metrics: String,
    logs: Arc<Mutex<Vec<String>>>,
    pub dir: PathBuf,
}

impl Router {
    /// Starts the gateway with `workers` and the policy file `dir/policy.toml`; `extra` is
    /// appended to the config.
    pub fn start(certs: &Certs, workers: &[String], extra: &str) -> Router {
        let dir = &certs.dir;
        if !dir.join("policy.toml").exists() {
            std::fs::write(dir.join("policy.toml"), policy(1, "local")).unwrap();
        }
        std::fs::write(dir.join("admin-token"), TOKEN).unwrap();
        let list: Vec<String> = workers.iter().map(|w| format!("{w:?}")).collect();
        let cfg = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             policy = \"policy.toml\"\n{extra}\n\
             [tls]\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nclient_ca = \"ca.pem\"\n\
             [admin]\ntoken_file = \"admin-token\"\n\
             [workers]\nstatic = [{}]\nhealth_every_ms = 200\n",
            list.join(", ")
        );
        std::fs::write(dir.join("router.toml"), cfg).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_seam-router"))
            .args(["serve", "--config"])
            .arg(dir.join("router.toml"))
            .env("SEAM_LOG", "info")
            .env_remove("SEAM_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(l);
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut addrs = HashMap::new();
        while addrs.len() < 3 {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => {
                    let mut w = l.split_whitespace();
                    if let (Some("listening"), Some(what), Some(addr)) =
                        (w.next(), w.next(), w.next())
                    {
                        addrs.insert(what.to_string(), addr.to_string());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "seam-router did not start:\n{}",
                        logs.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Router {
            child,
            gateway: addrs["gateway"].parse().unwrap(),
            admin: format!("http://{}", addrs["admin"]),
            metrics: addrs["metrics"].clone(),
            logs,
            dir: dir.clone(),
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits (bounded) until the logs contain `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.logs().contains(needle))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn grpc(&self, tls: &TlsFiles) -> GrpcClient {
        GrpcClient::connect(&self.gateway.to_string(), "localhost", tls)
            .await
            .unwrap()
    }

    pub async fn quic(&self, tls: &TlsFiles) -> QuicClient {
        QuicClient::connect(self.gateway, "localhost", tls)
            .await
            .unwrap()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    ok()
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

/// An OpenSession request for the fake package.
pub fn open_request() -> seam_shared::proto::gateway::OpenSessionRequest {
    seam_shared::proto::gateway::OpenSessionRequest {
        package: Some(PackageRef {
            digest: DIGEST.into(),
            name: String::new(),
        }),
        split_layer: 8,
        max_positions: 256,
        max_draft_tokens: 4,
        ..Default::default()
    }
}

/// A step of `rows` hidden rows (f32, width 4) at `start` with `drafts`.
pub fn step(
    session: &str,
    id: u64,
    start: u32,
    rows: u32,
    drafts: Vec<u32>,
    pad: usize,
) -> StepRequest {
    StepRequest {
        session_id: session.into(),
        step_id: id,
        start_position: start,
        hidden: Some(seam_shared::proto::common::Tensor {
            dtype: seam_shared::proto::common::DType::F32 as i32,
            shape: vec![u64::from(rows), 4],
            data: vec![0u8; (rows as usize) * 16 + pad].into(),
            ..Default::default()
        }),
        draft_tokens: drafts,
        ..Default::default()
    }
}
