//! `seam-membench`: memory under load of a worker. Opens many split sessions one after another
//! (each prefills a few positions, then stays idle, as a fleet of devices that asked one
//! question), and reports what the worker held against its KV budget: sessions admitted, held
//! and evicted, KV bytes in use, resident memory (from /proc) before and after, and resident
//! bytes per idle session held. The gateway's side (resident memory with 1,000 QUIC devices
//! connected) is in `seam-gwbench`.

use clap::Parser;
use seam_shared::package::Package;
use seam_tests::idle_load::{IdleLoad, open_idle_sessions};
use seam_tests::{EdgeProcess, rss_bytes, sample, scrape};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Memory of a seam-worker holding many idle split sessions")]
struct Args {
    /// The seam-worker binary.
    #[arg(long, default_value = "target/release/seam-worker")]
    worker: PathBuf,
    /// Model package directory.
    #[arg(long)]
    model: PathBuf,
    /// Sessions to open.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Positions each session prefills before going idle.
    #[arg(long, default_value_t = 16)]
    rows: usize,
    /// Positions each session asks room for.
    #[arg(long, default_value_t = 128)]
    max_positions: u32,
    #[arg(long, default_value_t = 8)]
    split_layer: u32,
    /// The worker's KV budget in bytes.
    #[arg(long, default_value_t = 256 << 20)]
    kv_budget: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let package = Package::open(&args.model)?;
    let budget = args.kv_budget.to_string();
    let worker = EdgeProcess::start_bin(
        args.worker.clone(),
        &args.model,
        &[
            "--kv-budget",
            &budget,
            "--max-sessions",
            &(args.sessions + 1).to_string(),
            "--evict-after-ms",
            "0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let load = |prefix: &str, sessions| IdleLoad {
        prefix: prefix.into(),
        sessions,
        rows: args.rows,
        max_positions: args.max_positions,
        split_layer: args.split_layer,
        hidden: package.manifest().architecture.n_embd as usize,
        digest: format!("sha256:{}", package.digest()),
    };
    let warm = open_idle_sessions(&worker.addr, &load("warm", 1)).await;
    anyhow::ensure!(
        warm.held == 1,
        "the worker refused a session: {:?}",
        warm.reasons
    );
    let before = rss_bytes(worker.pid());
    let r = open_idle_sessions(&worker.addr, &load("idle", args.sessions)).await;
    let after = rss_bytes(worker.pid());
    let (_, m) = scrape(worker.metrics.as_ref().expect("worker metrics"));
    let get = |s: &str| sample(&m, s).unwrap_or(f64::NAN);
    let held = get("seam_worker_sessions");
    let mib = |b: f64| b / (1 << 20) as f64;
    println!(
        "| sessions opened | admitted | refused | held at the end | evicted | KV reserved each | KV in use / budget (MiB) | worker RSS before → after (MiB) | RSS growth / budget | RSS per held session (KiB) | s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    println!(
        "| {} | {} | {} | {held} | {} | {} B | {:.1} / {:.1} | {:.1} → {:.1} | {:.2} | {:.1} | {:.0} |",
        args.sessions,
        r.held,
        r.refused,
        get("seam_worker_sessions_dropped_total{reason=\"evicted\"}"),
        r.reserved_per_session,
        mib(get("seam_worker_kv_bytes_used")),
        mib(args.kv_budget as f64),
        mib(before as f64),
        mib(after as f64),
        after.saturating_sub(before) as f64 / args.kv_budget as f64,
        after.saturating_sub(before) as f64 / held.max(1.0) / 1024.0,
        r.seconds
    );
    if r.refused > 0 {
        eprintln!("first refusals: {:?}", r.reasons);
    }
    Ok(())
}
