//! `seam-soak`: the fault-and-load soak (`make soak`). Two workers, two gateway replicas and
//! three devices on loopback; a mixed workload while faults are injected on a seeded schedule;
//! every answer judged against the device's own. Exits non-zero if an answer was lost or wrong.

use clap::Parser;
use seam_tests::soak::{self, FaultCounts, SoakConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Faults under load: workers, gateway replicas and devices on loopback")]
struct Args {
    #[arg(long, default_value = "target/release/seam-edge")]
    edge: PathBuf,
    #[arg(long, default_value = "target/release/seam-worker")]
    worker: PathBuf,
    #[arg(long, default_value = "target/release/seam-router")]
    router: PathBuf,
    /// Model package directory.
    #[arg(long)]
    model: PathBuf,
    /// Working directory (made afresh): certificates, the policy file, gateway configs.
    #[arg(long, default_value = "target/soak")]
    dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 100)]
    worker_kills: usize,
    #[arg(long, default_value_t = 20)]
    gateway_restarts: usize,
    #[arg(long, default_value_t = 10)]
    link_cuts: usize,
    #[arg(long, default_value_t = 10)]
    loss_bursts: usize,
    #[arg(long, default_value_t = 5)]
    worker_pauses: usize,
    #[arg(long, default_value_t = 10)]
    policy_reloads: usize,
    /// Policy files broken (truncated as on a full disk, or unreadable) and put back.
    #[arg(long, default_value_t = 6)]
    policy_broken: usize,
    /// Requests per device before the faults (the latency baseline).
    #[arg(long, default_value_t = 20)]
    calm_jobs: usize,
    #[arg(long, default_value_t = 24)]
    max_tokens: u32,
    /// Each request's deadline in seconds.
    #[arg(long, default_value_t = 30)]
    deadline_s: u64,
    /// Shortest worker pause in milliseconds (past the devices' 1.5 s least step timeout).
    #[arg(long, default_value_t = 3000)]
    pause_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let cfg = SoakConfig {
        edge: a.edge,
        worker: a.worker,
        router: a.router,
        package: a.model,
        dir: a.dir,
        seed: a.seed,
        faults: FaultCounts {
            worker_kills: a.worker_kills,
            gateway_restarts: a.gateway_restarts,
            link_cuts: a.link_cuts,
            loss_bursts: a.loss_bursts,
            worker_pauses: a.worker_pauses,
            policy_reloads: a.policy_reloads,
            policy_broken: a.policy_broken,
        },
        calm_jobs: a.calm_jobs,
        max_tokens: a.max_tokens,
        deadline: Duration::from_secs(a.deadline_s),
        pause: Duration::from_millis(a.pause_ms),
    };
    for bin in [&cfg.edge, &cfg.worker, &cfg.router] {
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: `make build` first",
            bin.display()
        );
    }
    let report = soak::run(&cfg).await;
    println!("{report}");
    let (wrong, lost) = (report.wrong().len(), report.lost().len());
    anyhow::ensure!(
        wrong == 0 && lost == 0,
        "{wrong} answers wrong, {lost} lost"
    );
    Ok(())
}
