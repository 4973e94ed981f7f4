//! Harness for end-to-end tests: real `seam-edge` and `seam-worker` processes on loopback, their
//! logs captured, gRPC clients connected to them; and a [`link_emulator`] that puts WAN conditions
//! (delay, jitter, bandwidth cap, loss) between them.

pub mod idle_load;
pub mod link_emulator;
pub mod soak;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub use seam_edge::test_util::{encoder_package_dir, package_dir};
use seam_shared::child::spawn_tied;

/// A running `seam-worker serve`.
pub type WorkerProcess = EdgeProcess;

/// Longest wait for a process to report that it is listening (a model load in a debug build).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The `seam-edge` binary of the build that runs the tests (`target/<profile>/seam-edge`).
pub fn edge_bin() -> PathBuf {
    bin("seam-edge")
}

/// The `seam-worker` binary of the build that runs the tests.
pub fn worker_bin() -> PathBuf {
    bin("seam-worker")
}

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace`)",
        bin.display()
    );
    bin
}

/// A running `seam-edge serve` or `seam-worker serve`, killed on drop.
pub struct EdgeProcess {
    child: Child,
    bin: PathBuf,
    package: PathBuf,
    extra: Vec<String>,
    pub addr: String,
    /// `host:port` of `/metrics`, when started with `--metrics-listen`.
    pub metrics: Option<String>,
    /// `host:port` of the OpenAI-compatible API, when started with `--http`.
    pub http: Option<String>,
    logs: Arc<Mutex<Vec<String>>>,
    log_rx: Mutex<mpsc::Receiver<String>>,
}

impl EdgeProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the agent on a free loopback port and waits until it listens.
    pub fn start(package: &Path, extra: &[&str]) -> EdgeProcess {
        Self::spawn(edge_bin(), package, extra)
    }

    /// Starts a worker on a free loopback port and waits until it listens.
    pub fn start_worker(package: &Path, extra: &[&str]) -> EdgeProcess {
        Self::spawn(worker_bin(), package, extra)
    }

    /// Starts `bin serve` (a `seam-edge` or `seam-worker` binary given by path, for the
    /// benchmarks) on a free loopback port and waits until it listens.
    pub fn start_bin(bin: PathBuf, package: &Path, extra: &[&str]) -> EdgeProcess {
        Self::spawn(bin, package, extra)
    }

    fn spawn(bin: PathBuf, package: &Path, extra: &[&str]) -> EdgeProcess {
        Self::spawn_on(bin, package, extra, "127.0.0.1:0")
    }

    fn spawn_on(bin: PathBuf, package: &Path, extra: &[&str], listen: &str) -> EdgeProcess {
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--listen", listen, "--model"])
            .arg(package)
            .args(extra)
            .env("SEAM_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Tied to the test process: shared fixtures live in statics and are never dropped.
        let mut child = spawn_tied(cmd).expect("spawning seam-edge serve");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        {
            let logs = logs.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout");
        let (addr_tx, addr_rx) = mpsc::channel();
        let (metrics_tx, metrics_rx) = mpsc::channel();
        let (http_tx, http_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = addr_tx.send(a.to_string());
                } else if let Some(a) = line.strip_prefix("listening metrics ") {
                    let _ = metrics_tx.send(a.to_string());
                } else if let Some(a) = line.strip_prefix("listening http ") {
                    let _ = http_tx.send(a.to_string());
                }
            }
        });
        let addr = match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{} did not start; logs:\n{}",
                    bin.display(),
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        // Printed before the API's address, when served.
        let metrics = metrics_rx.try_recv().ok();
        let http = http_rx.try_recv().ok();
        EdgeProcess {
            child,
            bin,
            package: package.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            addr: format!("http://{addr}"),
            metrics,
            http,
            logs,
            log_rx: Mutex::new(rx),
        }
    }

    /// Waits (bounded) for a log line containing every one of `needles`.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let matches = |l: &str| needles.iter().all(|n| l.contains(n));
        if let Some(l) = self.logs.lock().unwrap().iter().find(|l| matches(l)) {
            return Some(l.clone());
        }
        let rx = self.log_rx.lock().unwrap();
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(l) if matches(&l) => return Some(l),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Kills the process now (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the process if it runs and starts it again on the same address, with the same
    /// flags (its metrics and HTTP ports, when asked for with port 0, are new).
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.addr.trim_start_matches("http://").to_string();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let fresh = Self::spawn_on(self.bin.clone(), &self.package, &extra, &listen);
        // The old value's drop kills an already dead child.
        let _ = std::mem::replace(self, fresh);
    }

    /// Stops the process (SIGSTOP): it hangs, holding its connections, until [`Self::resume`].
    pub fn pause(&self) {
        seam_shared::child::pause(self.pid()).expect("SIGSTOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        seam_shared::child::resume(self.pid()).expect("SIGCONT");
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Token ids and final event of a `Generate` call to the agent at `addr`.
pub async fn token_ids(
    addr: &str,
    req: seam_shared::proto::edge::GenerateRequest,
) -> (Vec<u32>, seam_shared::proto::edge::FinalEvent) {
    use seam_shared::proto::edge::assistant_client::AssistantClient;
    use seam_shared::proto::edge::generate_event::Event;
    let mut client = AssistantClient::connect(addr.to_string()).await.unwrap();
    let mut stream = client.generate(req).await.unwrap().into_inner();
    let (mut ids, mut fin) = (Vec::new(), None);
    while let Some(ev) = stream.message().await.unwrap() {
        match ev.event {
            // The last token may come twice: once, then with the text held back for stop strings.
            Some(Event::Token(t)) if t.index as usize == ids.len() => ids.push(t.id),
            Some(Event::Final(f)) => fin = Some(f),
            _ => {}
        }
    }
    (ids, fin.expect("final event"))
}

/// The `seam-router` binary of the build that runs the tests.
pub fn router_bin() -> PathBuf {
    bin("seam-router")
}

/// A running `seam-router serve` with dev certificates for devices `dev-a` and `dev-b`, killed on
/// drop. Its directory holds `router.toml`, `policy.toml`, `ca.pem`, `dev-a.pem`, `dev-a.key`, ….
pub struct RouterProcess {
    child: Child,
    pub dir: PathBuf,
    /// `127.0.0.1:port` (TCP for gRPC, UDP for QUIC).
    pub gateway: String,
    pub admin: String,
    pub metrics: String,
    logs: Arc<Mutex<Vec<String>>>,
    bin: PathBuf,
    config: String,
    workers: Vec<String>,
}

impl RouterProcess {
    /// Starts the gateway in `dir` with `policy` as its policy file, in front of `workers`.
    pub fn start(dir: &Path, policy: &str, workers: &[&str]) -> RouterProcess {
        Self::prepare(dir, policy, &["dev-a", "dev-b"]);
        Self::launch(router_bin(), dir, "router.toml", "127.0.0.1:0", workers)
    }

    /// Makes `dir` afresh for gateways: dev certificates (the gateway's and one per device in
    /// `devices`), the policy file and the admin token.
    pub fn prepare(dir: &Path, policy: &str, devices: &[&str]) {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let devices: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
        seam_router::certs::write_dev_certs(dir, &[], &devices).unwrap();
        std::fs::write(dir.join("policy.toml"), policy).unwrap();
        std::fs::write(dir.join("admin-token"), "test-admin-token-0123456789").unwrap();
    }

    /// Starts `bin serve` with the configuration `config` (written into `dir`, which
    /// [`Self::prepare`] made), its device endpoint on `listen`, in front of `workers`. Several
    /// gateways (replicas) may share one directory, and so one policy file.
    pub fn launch(
        bin: PathBuf,
        dir: &Path,
        config: &str,
        listen: &str,
        workers: &[&str],
    ) -> RouterProcess {
        let list: Vec<String> = workers
            .iter()
            .map(|w| format!("{:?}", w.trim_start_matches("http://")))
            .collect();
        let cfg = format!(
            "listen = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             policy = \"policy.toml\"\npolicy_poll_ms = 200\n\
             [tls]\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nclient_ca = \"ca.pem\"\n\
             [admin]\ntoken_file = \"admin-token\"\n\
             [workers]\nstatic = [{}]\nhealth_every_ms = 250\n\
             [dashboard]\nsample_every_ms = 250\n",
            list.join(", ")
        );
        std::fs::write(dir.join(config), cfg).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--config"])
            .arg(dir.join(config))
            .env("SEAM_LOG", "info")
            .env_remove("SEAM_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_tied(cmd).expect("spawning seam-router serve");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(l);
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut found = std::collections::HashMap::new();
        while found.len() < 3 {
            match rx.recv_timeout(START_TIMEOUT) {
                Ok(l) => {
                    let mut w = l.split_whitespace();
                    if let (Some("listening"), Some(what), Some(addr)) =
                        (w.next(), w.next(), w.next())
                    {
                        found.insert(what.to_string(), addr.to_string());
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
        RouterProcess {
            child,
            dir: dir.to_path_buf(),
            gateway: found["gateway"].clone(),
            admin: found["admin"].clone(),
            metrics: found["metrics"].clone(),
            logs,
            bin,
            config: config.to_string(),
            workers: workers.iter().map(|w| w.to_string()).collect(),
        }
    }

    /// Kills the gateway if it runs and starts it again on the same device endpoint.
    pub fn restart(&mut self) {
        self.kill();
        let workers: Vec<&str> = self.workers.iter().map(String::as_str).collect();
        let fresh = Self::launch(
            self.bin.clone(),
            &self.dir,
            &self.config,
            &self.gateway,
            &workers,
        );
        let _ = std::mem::replace(self, fresh);
    }

    /// The `seam-edge` flags that connect a device (`dev-a`) to this gateway.
    pub fn device_flags(&self, device: &str) -> Vec<String> {
        let f = |n: &str| self.dir.join(n).display().to_string();
        vec![
            "--gateway".into(),
            self.gateway.clone(),
            "--gateway-ca".into(),
            f("ca.pem"),
            "--device-cert".into(),
            f(&format!("{device}.pem")),
            "--device-key".into(),
            f(&format!("{device}.key")),
        ]
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Kills the gateway now (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if std::time::Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET http://{addr}/metrics` (plain HTTP/1.1): the status code and the body.
pub fn scrape(addr: &str) -> (u16, String) {
    http_get(addr, "/metrics", None)
}

/// `GET http://{addr}{path}` (plain HTTP/1.1), with `authorization` as that header if given:
/// the status code and the body.
pub fn http_get(addr: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connecting to {addr} for {path}: {e}"));
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// `curl` with `args`: the status code and the body as JSON.
pub fn curl(args: &[&str]) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

/// `curl` POSTing the JSON `body` to `url`: the status code and the body as JSON.
pub fn curl_post_json(url: &str, body: &str) -> (u16, serde_json::Value) {
    curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
        url,
    ])
}

/// Debian's Chromium, which `make setup` installs: `SEAM_CHROMIUM` or `/usr/bin/chromium`.
pub fn chromium_bin() -> PathBuf {
    let bin = std::env::var_os("SEAM_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        bin.exists(),
        "{} is missing: `make setup` installs Debian's chromium (or set SEAM_CHROMIUM)",
        bin.display()
    );
    bin
}

/// Loads `url` in headless Chromium, lets its scripts run for `budget` of virtual time (network
/// loads complete within it), and returns the DOM as it then is. `profile` is an empty
/// directory for the browser's profile.
pub fn headless_dom(url: &str, budget: Duration, profile: &Path) -> String {
    let mut cmd = Command::new(chromium_bin());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--dump-dom",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--virtual-time-budget={}", budget.as_millis()))
    .arg(url)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = spawn_tied(cmd).expect("starting chromium");
    let out = child.wait_with_output().expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the DOM is UTF-8")
}

/// Resident memory of process `pid` (`VmRSS` of `/proc/<pid>/status`), in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The value of the sample `series` (name and labels exactly as exposed, e.g.
/// `seam_worker_steps_total{result="ok"}`) in an exposition, if present.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Runs the Python client `tests/python/{script}` (in the `.seam/py` environment `make setup`
/// installs) with `args`, and returns the one JSON object it prints; `context` is added to the
/// failure message (e.g. the server's logs).
pub fn python_client(
    script: &str,
    args: &[std::ffi::OsString],
    context: &str,
) -> serde_json::Value {
    use seam_edge::test_util::{asset, workspace_root};
    let out = Command::new(asset("py/bin/python"))
        .arg(workspace_root().join("tests/python").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{context}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{script} prints one JSON object: {e}"))
}
