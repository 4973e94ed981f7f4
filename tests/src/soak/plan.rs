//! What a soak run does, drawn from its seed before anything starts (no I/O, no clock): the
//! requests each device sends and the faults injected, in order.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// One request a device sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Job {
    /// Index into the prompt list.
    pub prompt: usize,
    pub kind: JobKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Greedy, on the device only.
    Local,
    /// Greedy, routed by the policy (which splits).
    Split,
    /// Sampled with this seed, routed by the policy.
    Sampled { seed: u64 },
    /// Greedy, routed by the policy; the app drops the stream after this many tokens.
    Cancel { after: usize },
}

impl JobKind {
    /// The request whose complete answer this job's answer is checked against (a cancelled
    /// request against its prefix).
    pub fn reference(self) -> JobKind {
        match self {
            JobKind::Cancel { .. } | JobKind::Split => JobKind::Local,
            k => k,
        }
    }

    /// A short name for figures.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Local => "local",
            JobKind::Split => "split",
            JobKind::Sampled { .. } => "sampled",
            JobKind::Cancel { .. } => "cancelled",
        }
    }
}

/// Seeds of the sampled requests: few, so that their references are computed once each.
pub const SAMPLING_SEEDS: [u64; 3] = [11, 23, 37];

/// The next `n` jobs of one device: mostly split (the path faults hit), some local, sampled and
/// cancelled.
pub fn jobs(rng: &mut StdRng, prompts: usize, n: usize) -> Vec<Job> {
    (0..n)
        .map(|_| {
            let prompt = rng.random_range(0..prompts);
            let kind = match rng.random_range(0..20) {
                0..=1 => JobKind::Local,
                2..=4 => JobKind::Sampled {
                    seed: SAMPLING_SEEDS[rng.random_range(0..SAMPLING_SEEDS.len())],
                },
                5..=6 => JobKind::Cancel {
                    after: rng.random_range(1..6),
                },
                _ => JobKind::Split,
            };
            Job { prompt, kind }
        })
        .collect()
}

/// A fault, with what it hits and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// SIGKILL a worker while split answers are in flight (the one holding the most sessions;
    /// this one on a tie), then start it again.
    WorkerKill { worker: usize },
    /// SIGKILL a gateway replica, then start it again on the same address.
    GatewayRestart { replica: usize },
    /// Drop every datagram of a device's link for a while.
    LinkCut { device: usize, ms: u64 },
    /// Drop this share of a device's datagrams for a while.
    LossBurst { device: usize, loss: f64, ms: u64 },
    /// SIGSTOP a worker for longer than the devices' step timeout, then SIGCONT.
    WorkerPause { worker: usize, ms: u64 },
    /// The operator changes the policy (the split layer) while requests run.
    PolicyReload,
    /// The policy file is written half-way, as on a full disk; put back after a while.
    PolicyTruncated { ms: u64 },
    /// The policy file cannot be read; put back after a while.
    PolicyUnreadable { ms: u64 },
}

impl Fault {
    /// A short name for figures.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::WorkerKill { .. } => "worker SIGKILL + restart",
            Fault::GatewayRestart { .. } => "gateway replica SIGKILL + restart",
            Fault::LinkCut { .. } => "link cut",
            Fault::LossBurst { .. } => "loss burst",
            Fault::WorkerPause { .. } => "worker SIGSTOP past the step timeout",
            Fault::PolicyReload => "policy reload",
            Fault::PolicyTruncated { .. } => "policy file truncated (disk full)",
            Fault::PolicyUnreadable { .. } => "policy file unreadable",
        }
    }
}

/// How many faults of each kind a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultCounts {
    pub worker_kills: usize,
    pub gateway_restarts: usize,
    pub link_cuts: usize,
    pub loss_bursts: usize,
    pub worker_pauses: usize,
    pub policy_reloads: usize,
    pub policy_broken: usize,
}

impl FaultCounts {
    pub fn total(&self) -> usize {
        self.worker_kills
            + self.gateway_restarts
            + self.link_cuts
            + self.loss_bursts
            + self.worker_pauses
            + self.policy_reloads
            + self.policy_broken
    }
}

/// What a schedule may hit.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub workers: usize,
    pub replicas: usize,
    /// Devices whose link goes through an emulator (the first ones).
    pub linked_devices: usize,
    /// Longest a worker is paused: past the devices' step timeout.
    pub pause: Duration,
}

/// The faults of a run, in a seeded random order, each with its own gap before it.
pub fn schedule(rng: &mut StdRng, counts: FaultCounts, t: Targets) -> Vec<(Duration, Fault)> {
    let mut faults = Vec::with_capacity(counts.total());
    for _ in 0..counts.worker_kills {
        faults.push(Fault::WorkerKill {
            worker: rng.random_range(0..t.workers),
        });
    }
    for _ in 0..counts.gateway_restarts {
        faults.push(Fault::GatewayRestart {
            replica: rng.random_range(0..t.replicas),
        });
    }
    if t.linked_devices > 0 {
        for _ in 0..counts.link_cuts {
            faults.push(Fault::LinkCut {
                device: rng.random_range(0..t.linked_devices),
                ms: rng.random_range(500..4_000),
            });
        }
        for _ in 0..counts.loss_bursts {
            faults.push(Fault::LossBurst {
                device: rng.random_range(0..t.linked_devices),
                loss: rng.random_range(0.05..0.5),
                ms: rng.random_range(500..3_000),
            });
        }
    }
    let pause_ms = t.pause.as_millis() as u64;
    for _ in 0..counts.worker_pauses {
        faults.push(Fault::WorkerPause {
            worker: rng.random_range(0..t.workers),
            ms: rng.random_range(pause_ms..pause_ms * 3 / 2 + 1),
        });
    }
    for _ in 0..counts.policy_reloads {
        faults.push(Fault::PolicyReload);
    }
    for i in 0..counts.policy_broken {
        let ms = rng.random_range(300..1_500);
        faults.push(if i % 2 == 0 {
            Fault::PolicyTruncated { ms }
        } else {
            Fault::PolicyUnreadable { ms }
        });
    }
    faults.shuffle(rng);
    faults
        .into_iter()
        .map(|f| (Duration::from_millis(rng.random_range(200..900)), f))
        .collect()
}

/// The seeded generator of one part of a run (`stream` keeps the parts independent).
pub fn rng(seed: u64, stream: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    const COUNTS: FaultCounts = FaultCounts {
        worker_kills: 100,
        gateway_restarts: 20,
        link_cuts: 5,
        loss_bursts: 5,
        worker_pauses: 4,
        policy_reloads: 6,
        policy_broken: 4,
    };
    const TARGETS: Targets = Targets {
        workers: 2,
        replicas: 2,
        linked_devices: 2,
        pause: Duration::from_secs(3),
    };

    #[test]
    fn a_schedule_has_every_fault_asked_for_and_is_the_same_for_a_seed() {
        let s = schedule(&mut rng(5, 1), COUNTS, TARGETS);
        assert_eq!(s.len(), COUNTS.total());
        let count = |name: &str| s.iter().filter(|(_, f)| f.name() == name).count();
        assert_eq!(count("worker SIGKILL + restart"), 100);
        assert_eq!(count("gateway replica SIGKILL + restart"), 20);
        assert_eq!(count("policy file truncated (disk full)"), 2);
        assert_eq!(count("policy file unreadable"), 2);
        for (gap, f) in &s {
            assert!(*gap >= Duration::from_millis(200));
            match *f {
                Fault::WorkerKill { worker } => assert!(worker < 2),
                Fault::WorkerPause { worker, ms } => assert!(worker < 2 && ms >= 3_000),
                Fault::LinkCut { device, .. } | Fault::LossBurst { device, .. } => {
                    assert!(device < 2)
                }
                _ => {}
            }
        }
        // Both workers and both replicas are hit.
        assert!(s.iter().any(|(_, f)| *f == Fault::WorkerKill { worker: 1 }));
        assert!(
            s.iter()
                .any(|(_, f)| *f == Fault::GatewayRestart { replica: 0 })
        );
        assert_eq!(s, schedule(&mut rng(5, 1), COUNTS, TARGETS));
        assert_ne!(s, schedule(&mut rng(6, 1), COUNTS, TARGETS));
    }

    #[test]
    fn without_emulated_links_no_link_fault_is_planned() {
        let t = Targets {
            linked_devices: 0,
            ..TARGETS
        };
        let s = schedule(&mut rng(1, 1), COUNTS, t);
        assert!(
            s.iter()
                .all(|(_, f)| !matches!(f, Fault::LinkCut { .. } | Fault::LossBurst { .. }))
        );
    }

    #[test]
    fn jobs_mix_every_kind_and_reference_what_they_are_checked_against() {
        let j = jobs(&mut rng(3, 2), 7, 400);
        for k in ["local", "split", "sampled", "cancelled"] {
            assert!(j.iter().any(|x| x.kind.name() == k), "no {k} job");
        }
        assert!(j.iter().all(|x| x.prompt < 7));
        assert_eq!(JobKind::Cancel { after: 3 }.reference(), JobKind::Local);
        assert_eq!(JobKind::Split.reference(), JobKind::Local);
        let s = JobKind::Sampled { seed: 11 };
        assert_eq!(s.reference(), s);
    }
}
