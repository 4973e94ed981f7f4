//! `seam-gwbench`: the gateway's bench. A `seam-router serve` process (pinned to one core with
//! `taskset` when available, one runtime thread) relays to an in-process fake worker, so the
//! figures are the gateway's own, not a model's. Prints Markdown tables:
//! - relayed steps/s with many devices pipelining steps, over QUIC and over gRPC;
//! - one device's step round trip through the gateway vs straight to the worker (p50/p99 and the
//!   difference), interleaved in one run;
//! - N devices (own certificates) holding QUIC connections with a WatchPolicy stream open, and
//!   the time until a policy change reached all of them; errors counted.

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use seam_router::certs::DevCa;
use seam_router::client::{GatewayClient, GrpcClient, QuicClient};
use seam_router::testing::{DIGEST, FakeWorker};
use seam_router::tls::TlsFiles;
use seam_shared::proto::common::{DType, PackageRef, StepRequest, Tensor};
use seam_shared::proto::gateway::OpenSessionRequest;
use seam_shared::proto::gateway::open_session_response::Decision;
use seam_shared::proto::worker::worker_client::WorkerClient;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Benchmarks seam-router: relayed steps/s, added latency, many devices")]
struct Args {
    /// The seam-router binary.
    #[arg(long)]
    router: PathBuf,
    /// Devices pipelining steps in the throughput run.
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// Steps each device keeps in flight.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Round trips per latency series.
    #[arg(long, default_value_t = 2000)]
    pings: usize,
    /// Devices holding connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Bytes of hidden state per step (one int8 row of SmolLM2-135M is 576).
    #[arg(long, default_value_t = 576)]
    hidden_bytes: usize,
}

fn step(session: &str, id: u64, bytes: usize) -> StepRequest {
    StepRequest {
        session_id: session.into(),
        step_id: id,
        // The fake worker keeps no positions across steps of this bench: always a fresh row 0.
        start_position: 0,
        rollback_to: Some(0),
        hidden: Some(Tensor {
            shape: vec![1, bytes as u64],
            dtype: DType::Int8 as i32,
            data: vec![1u8; bytes].into(),
            scales: vec![0.01],
            group_size: 0,
            half_scales: Default::default(),
        }),
        ..Default::default()
    }
}

fn open_request() -> OpenSessionRequest {
    OpenSessionRequest {
        package: Some(PackageRef {
            digest: DIGEST.into(),
            name: String::new(),
        }),
        split_layer: 8,
        max_positions: 1 << 20,
        ..Default::default()
    }
}

struct Router {
    child: Child,
    gateway: std::net::SocketAddr,
    admin: String,
    dir: PathBuf,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_router(bin: &Path, dir: &Path, worker: &str) -> anyhow::Result<Router> {
    std::fs::write(dir.join("policy.toml"), "version = 1\ndefault_split = 8\n")?;
    std::fs::write(dir.join("admin-token"), "bench-admin-token-0123456789")?;
    std::fs::write(
        dir.join("router.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             policy = \"policy.toml\"\nthreads = 1\n\
             [tls]\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nclient_ca = \"ca.pem\"\n\
             [admin]\ntoken_file = \"admin-token\"\n\
             [workers]\nstatic = [\"{worker}\"]\nhealth_every_ms = 500\n\
             [sessions]\nmax_per_device = 64\nmax_in_flight_steps = 256\n"
        ),
    )?;
    let taskset = Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut cmd = if taskset {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(dir.join("router.toml"))
        .env("SEAM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting seam-router")?;
    let stdout = child.stdout.take().context("router stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut gateway, mut admin) = (None, None);
    while gateway.is_none() || admin.is_none() {
        let line = lines.next().context("seam-router exited")??;
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("listening"), Some("gateway"), Some(a)) => gateway = Some(a.parse()?),
            (Some("listening"), Some("admin"), Some(a)) => admin = Some(a.to_string()),
            _ => {}
        }
    }
    std::thread::spawn(move || for _ in lines {});
    println!(
        "gateway: {} ({})",
        bin.display(),
        if taskset {
            "pinned to core 0 with taskset, 1 runtime thread"
        } else {
            "1 runtime thread; taskset not found, not pinned"
        }
    );
    Ok(Router {
        child,
        gateway: gateway.context("no gateway address")?,
        admin: admin.context("no admin address")?,
        dir: dir.to_path_buf(),
    })
}

async fn admitted(c: &GatewayClient) -> anyhow::Result<String> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let o = c.open_session(open_request()).await?;
        if matches!(o.decision, Some(Decision::Admitted(_))) {
            return Ok(o.session_id);
        }
        anyhow::ensure!(Instant::now() < end, "never admitted: {o:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Relayed steps/s: every device keeps `in_flight` steps outstanding for `seconds`.
async fn throughput(clients: Vec<GatewayClient>, args: &Args) -> anyhow::Result<(f64, u64)> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in clients {
        let session = admitted(&c).await?;
        let (tx, mut rx) = c.steps().await?;
        let (done, errors) = (done.clone(), errors.clone());
        let (bytes, in_flight) = (args.hidden_bytes, args.in_flight);
        tasks.push(tokio::spawn(async move {
            let mut id = 0u64;
            for _ in 0..in_flight {
                id += 1;
                if tx.send(step(&session, id, bytes)).await.is_err() {
                    return;
                }
            }
            while let Some(a) = rx.next().await {
                match a {
                    Ok(r) if r.error.is_none() => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first error: {other:?}");
                        }
                    }
                }
                if Instant::now() >= end {
                    break;
                }
                id += 1;
                if tx.send(step(&session, id, bytes)).await.is_err() {
                    break;
                }
            }
        }));
    }
    let t0 = Instant::now();
    let start = done.load(Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let n = done.load(Ordering::Relaxed) - start;
    Ok((
        n as f64 / t0.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed),
    ))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    seam_router::tls::install_provider();
    let dir = std::env::temp_dir().join(format!("seam-gwbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca = DevCa::new("bench CA")?;
    let gw = ca.gateway(&[])?;
    std::fs::write(dir.join("ca.pem"), ca.pem().cert)?;
    std::fs::write(dir.join("gateway.pem"), &gw.cert)?;
    std::fs::write(dir.join("gateway.key"), &gw.key)?;
    let device = |id: &str| -> anyhow::Result<TlsFiles> {
        let p = ca.device(id)?;
        Ok(TlsFiles {
            cert_pem: p.cert,
            key_pem: p.key,
            ca_pem: ca.pem().cert,
        })
    };

    let worker = FakeWorker::default();
    let worker_addr = worker.start().await;
    let router = start_router(&args.router, &dir, &worker_addr)?;
    let gateway = router.gateway;

    // 1. Relayed steps/s.
    println!();
    println!(
        "| transport | devices | in flight each | relayed steps/s | errors |\n|---|---:|---:|---:|---:|"
    );
    for transport in ["quic", "grpc"] {
        let mut clients = Vec::new();
        for i in 0..args.devices {
            let tls = device(&format!("tp-{transport}-{i}"))?;
            clients.push(match transport {
                "quic" => {
                    GatewayClient::Quic(QuicClient::connect(gateway, "localhost", &tls).await?)
                }
                _ => GatewayClient::Grpc(
                    GrpcClient::connect(&gateway.to_string(), "localhost", &tls).await?,
                ),
            });
        }
        let (rate, errors) = throughput(clients, &args).await?;
        println!(
            "| {transport} | {} | {} | {rate:.0} | {errors} |",
            args.devices, args.in_flight
        );
    }

    // 2. Added latency: the same step, one at a time, direct vs through the gateway, interleaved.
    let direct = WorkerClient::connect(format!("http://{worker_addr}")).await?;
    let mut direct = direct;
    direct
        .open_session(seam_shared::proto::worker::OpenSessionRequest {
            session_id: "direct".into(),
            package: open_request().package,
            split_layer: 8,
            max_positions: 1 << 20,
            ..Default::default()
        })
        .await?;
    let (dtx, drx) = tokio::sync::mpsc::channel(4);
    let mut danswers = direct
        .step(tokio_stream::wrappers::ReceiverStream::new(drx))
        .await?
        .into_inner();
    let q =
        GatewayClient::Quic(QuicClient::connect(gateway, "localhost", &device("lat-quic")?).await?);
    let g = GatewayClient::Grpc(
        GrpcClient::connect(&gateway.to_string(), "localhost", &device("lat-grpc")?).await?,
    );
    let mut series: Vec<(&str, Vec<f64>)> = vec![
        ("direct (gRPC to the worker)", vec![]),
        ("via gateway, QUIC", vec![]),
        ("via gateway, gRPC", vec![]),
    ];
    let mut legs = Vec::new();
    for c in [&q, &g] {
        let s = admitted(c).await?;
        let (tx, rx) = c.steps().await?;
        legs.push((s, tx, rx));
    }
    for i in 0..args.pings as u64 {
        let t = Instant::now();
        dtx.send(step("direct", i, args.hidden_bytes)).await?;
        danswers.message().await?.context("direct answer")?;
        series[0].1.push(t.elapsed().as_secs_f64() * 1e6);
        for (k, (s, tx, rx)) in legs.iter_mut().enumerate() {
            let t = Instant::now();
            tx.send(step(s, i, args.hidden_bytes)).await?;
            let a = rx.next().await.context("gateway answer")??;
            anyhow::ensure!(a.error.is_none(), "step failed: {:?}", a.error);
            series[k + 1].1.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    println!();
    println!(
        "| path ({} round trips each, interleaved) | p50 µs | p99 µs | added p50 µs | added p99 µs |\n|---|---:|---:|---:|---:|",
        args.pings
    );
    for v in series.iter_mut() {
        v.1.sort_by(f64::total_cmp);
    }
    let (d50, d99) = (
        percentile(&series[0].1, 0.5),
        percentile(&series[0].1, 0.99),
    );
    for (name, v) in &series {
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!(
            "| {name} | {p50:.0} | {p99:.0} | {:.0} | {:.0} |",
            p50 - d50,
            p99 - d99
        );
    }

    // 3. Many devices holding QUIC connections with a policy watch open.
    let n = args.connections;
    let rss_before = seam_tests::rss_bytes(router.child.id());
    let t0 = Instant::now();
    let ep =
        seam_router::client::quic_client_endpoint(&device("holder-0")?, "127.0.0.1:0".parse()?)?;
    let mut watches = Vec::with_capacity(n);
    let mut conns = Vec::with_capacity(n);
    let mut errors = 0usize;
    for i in 0..n {
        let tls = device(&format!("holder-{i}"))?;
        let mut cfg = tls.quic_client()?;
        cfg.transport_config(Arc::new(seam_router::quic::transport_config()));
        let r = async {
            let conn = ep.connect_with(cfg, gateway, "localhost")?.await?;
            anyhow::Ok(conn)
        }
        .await;
        match r {
            Ok(conn) => conns.push(conn),
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("connection {i}: {e:#}");
                }
            }
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    for conn in &conns {
        let c = QuicClient::from_connection(ep.clone(), conn.clone());
        match c.watch_policy(0).await {
            Ok(mut w) => match w.next().await {
                Some(Ok(p)) if p.version == 1 => watches.push(w),
                _ => errors += 1,
            },
            Err(_) => errors += 1,
        }
    }
    // Publish version 2 and time until every device has it.
    let t1 = Instant::now();
    std::fs::write(
        router.dir.join("policy.toml"),
        "version = 2\ndefault_split = 8\n",
    )?;
    let got = futures::future::join_all(watches.iter_mut().map(|w| async move {
        matches!(
            tokio::time::timeout(Duration::from_secs(30), w.next()).await,
            Ok(Some(Ok(p))) if p.version == 2
        )
    }))
    .await;
    let push_s = t1.elapsed().as_secs_f64();
    let missed = got.iter().filter(|ok| !**ok).count();
    let rss_held = seam_tests::rss_bytes(router.child.id());
    let per_device = rss_held.saturating_sub(rss_before) as f64 / watches.len().max(1) as f64;
    println!();
    println!(
        "| QUIC devices holding connections | connected in s | watching | policy v2 reached all in s (1 s file poll included) | gateway RSS before → with them (MiB) | RSS per device (KiB) | errors |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    println!(
        "| {n} | {connect_s:.2} | {} | {push_s:.2} | {:.1} → {:.1} | {:.1} | {} |",
        watches.len(),
        rss_before as f64 / (1 << 20) as f64,
        rss_held as f64 / (1 << 20) as f64,
        per_device / 1024.0,
        errors + missed
    );
    let _ = router.admin;
    drop(conns);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
