//! Memory under load, the short version of `make bench-memory`: a worker with an 8 MiB KV budget
//! takes 150 sessions that each prefill 8 positions and go idle. Every one is admitted (idle
//! ones are evicted, least recently used first, to make room), the KV in use stays within the
//! budget, and the worker's resident memory (from /proc) grows by at most the budget and a
//! small allowance for the runtime.

use seam_shared::package::Package;
use seam_tests::idle_load::{IdleLoad, open_idle_sessions};
use seam_tests::{EdgeProcess, package_dir, rss_bytes, sample, scrape};

const BUDGET: u64 = 8 << 20;
/// Resident growth allowed beyond the KV budget (allocator and runtime buffers).
const SLACK: u64 = 24 << 20;

fn value(exposition: &str, series: &str) -> f64 {
    sample(exposition, series).unwrap_or_else(|| panic!("{series} missing in:\n{exposition}"))
}

#[tokio::test]
async fn idle_sessions_stay_within_the_kv_budget_and_new_ones_are_admitted() {
    let package = Package::open(package_dir()).expect("the test package");
    let budget = BUDGET.to_string();
    let worker = EdgeProcess::start_worker(
        &package_dir(),
        &[
            "--kv-budget",
            &budget,
            "--max-sessions",
            "100000",
            "--evict-after-ms",
            "0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let load = |prefix: &str, sessions| IdleLoad {
        prefix: prefix.into(),
        sessions,
        rows: 8,
        max_positions: 32,
        split_layer: 8,
        hidden: package.manifest().architecture.n_embd as usize,
        digest: format!("sha256:{}", package.digest()),
    };
    // One session first, so that the runtime's buffers exist before the baseline.
    let warm = open_idle_sessions(&worker.addr, &load("warm", 1)).await;
    assert_eq!(warm.held, 1, "{:?}", warm.reasons);
    let baseline = rss_bytes(worker.pid());

    let n = 150;
    let r = open_idle_sessions(&worker.addr, &load("idle", n)).await;
    assert_eq!(r.refused, 0, "{:?}", r.reasons);
    assert_eq!(r.held, n);
    let fits = (BUDGET / r.reserved_per_session) as usize;
    assert!(
        fits < n / 2,
        "the budget holds {fits} sessions: the test needs evictions"
    );

    let (_, m) = scrape(worker.metrics.as_ref().expect("worker metrics"));
    let open = value(&m, "seam_worker_sessions") as usize;
    let evicted = value(&m, "seam_worker_sessions_dropped_total{reason=\"evicted\"}") as usize;
    assert!(open <= fits, "{open} sessions open, {fits} fit");
    assert!(
        value(&m, "seam_worker_kv_bytes_used") <= BUDGET as f64,
        "{m}"
    );
    assert_eq!(
        open + evicted,
        n + 1,
        "every session is open or was evicted: {m}"
    );

    let grown = rss_bytes(worker.pid()).saturating_sub(baseline);
    eprintln!(
        "{n} idle sessions: {open} held ({} B reserved each), {evicted} evicted, RSS +{:.1} MiB",
        r.reserved_per_session,
        grown as f64 / (1 << 20) as f64
    );
    assert!(
        grown <= BUDGET + SLACK,
        "resident memory grew by {grown} bytes with a {BUDGET}-byte KV budget"
    );
}
