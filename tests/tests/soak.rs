//! The short soak of `make test` (the long one is `make soak`): two workers, two gateway
//! replicas and three devices on loopback, a mixed workload, and every kind of fault at least
//! once on a seeded schedule: worker SIGKILL and restart mid-answer, gateway replica restarts,
//! a link cut and a loss burst, a worker paused past the step timeout, a policy reload, a
//! truncated and an unreadable policy file. No answer may be lost or differ from the device's
//! own (a sampled one may differ only when it says why).

use seam_tests::soak::{self, FaultCounts, SoakConfig};
use seam_tests::{edge_bin, package_dir, router_bin, worker_bin};
use std::path::PathBuf;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_is_lost_or_wrong_under_faults() {
    let cfg = SoakConfig {
        edge: edge_bin(),
        worker: worker_bin(),
        router: router_bin(),
        package: package_dir(),
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("soak-{}", std::process::id())),
        seed: 7,
        faults: FaultCounts {
            worker_kills: 4,
            gateway_restarts: 2,
            link_cuts: 1,
            loss_bursts: 1,
            worker_pauses: 1,
            policy_reloads: 1,
            policy_broken: 2,
        },
        calm_jobs: 3,
        max_tokens: 12,
        deadline: Duration::from_secs(60),
        pause: Duration::from_secs(3),
    };
    let report = soak::run(&cfg).await;
    eprintln!("{report}");
    assert_eq!(report.faults.len(), cfg.faults.total(), "{report}");
    assert!(report.lost().is_empty(), "{report}");
    assert!(report.wrong().is_empty(), "{report}");
    // The faults hit answers: some re-opened their session or finished on the device, and
    // kills found answers in flight.
    assert!(
        report.replayed() + report.finished_on_device() > 0,
        "{report}"
    );
    assert!(
        report.faults.iter().any(|f| f.mid_answer),
        "no worker was killed mid-answer:\n{report}"
    );
}
