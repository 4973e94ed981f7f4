//! Harness for the gateway's tests: dev certificates, a `seam-router serve` process on loopback
//! with its logs, and in-process fake workers whose answers follow a fixed rule, so the relay
//! can be checked without a model.

#![allow(dead_code)]

pub use seam_router::testing::{DIGEST, FakeWorker, f};

use seam_router::certs::DevCa;
use seam_router::client::{GrpcClient, QuicClient};
use seam_router::tls::TlsFiles;
use seam_shared::proto::common::{PackageRef, StepRequest};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "admin-token-for-tests-0123456789";

#[derive(Clone)]
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
        let list: Vec<String> = workers.iter().map(|w| format!("{w:?}")).collect();
        Self::start_with(certs, &format!("static = [{}]", list.join(", ")), extra)
    }

    /// Starts the gateway with `workers` as the `[workers]` source line (`static = …` or
    /// `dns = …`).
    pub fn start_with(certs: &Certs, workers: &str, extra: &str) -> Router {
        let dir = &certs.dir;
        if !dir.join("policy.toml").exists() {
            std::fs::write(dir.join("policy.toml"), policy(1, "local")).unwrap();
        }
        std::fs::write(dir.join("admin-token"), TOKEN).unwrap();
        let cfg = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             policy = \"policy.toml\"\n{extra}\n\
             [tls]\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nclient_ca = \"ca.pem\"\n\
             [admin]\ntoken_file = \"admin-token\"\n\
             [workers]\n{workers}\nhealth_every_ms = 200\nresolve_every_ms = 200\n"
        );
        std::fs::write(dir.join("router.toml"), cfg).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_seam-router"));
        cmd.args(["serve", "--config"])
            .arg(dir.join("router.toml"))
            .env("SEAM_LOG", "info")
            .env_remove("SEAM_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Ends with the test process even where no drop runs.
        let mut child = seam_shared::child::spawn_tied(cmd).unwrap();
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

/// A gateway in front of one fake worker, with the certificates of its devices.
pub async fn with_fake_worker(name: &str, extra: &str) -> (Router, FakeWorker, Certs) {
    let certs = certs(&scratch(name));
    let worker = FakeWorker::default();
    let addr = worker.start().await;
    (Router::start(&certs, &[addr], extra), worker, certs)
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
