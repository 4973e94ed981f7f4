//! The fault-and-load soak: real workers, gateway replicas and devices on loopback, a mixed
//! workload (local, split, speculative, sampled with seeds, streams the app cancels) and faults
//! injected on a seeded schedule (worker SIGKILL and restart mid-answer, gateway replica restarts,
//! link cuts and loss bursts, a worker paused past the step timeout, policy reloads, a truncated
//! or unreadable policy file). Every answer is judged against the device's own answer to the
//! same request ([`verdict`]); the run's figures are a [`Report`].
//!
//! Sampled requests go to the device that verifies one token per round trip: there the split
//! answer is the device's own token for token (both sample with the same seeded draw per
//! position). A speculative sampled answer is exact in distribution, not token for token (the
//! statistical test in `tests/tests/speculative.rs` checks it), so it has no reference here.

mod fleet;
pub mod plan;
mod report;
pub mod verdict;

pub use fleet::DEVICES;
pub use plan::FaultCounts;
pub use report::{FaultRecord, Phase, Record, Report};

use fleet::Fleet;
use plan::{Fault, Job, JobKind};
use seam_shared::proto::common::SamplingParams;
use seam_shared::proto::edge::assistant_client::AssistantClient;
use seam_shared::proto::edge::generate_event::Event;
use seam_shared::proto::edge::{GenerateRequest, RoutePreference};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use verdict::Outcome;

/// Prompts of the workload: short questions and completions of the kind devices send.
pub const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Water boils at a temperature of",
    "A good way to stay focused while working is",
    "The three primary colors are",
    "To reset a router, you should first",
    "The largest planet in our solar system is",
    "My favourite breakfast is",
    "In winter, drivers should check their tyres because",
];

/// Temperature and nucleus of the sampled requests.
const TEMPERATURE: f32 = 0.8;
const TOP_P: f32 = 0.95;

/// What a run starts and does.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub edge: PathBuf,
    pub worker: PathBuf,
    pub router: PathBuf,
    pub package: PathBuf,
    /// Made afresh: certificates, the shared policy file, the gateways' configs.
    pub dir: PathBuf,
    pub seed: u64,
    pub faults: FaultCounts,
    /// Requests per device before the first fault: the latency baseline.
    pub calm_jobs: usize,
    pub max_tokens: u32,
    /// Each request's deadline; an answer not ended by then (plus a grace) is lost.
    pub deadline: Duration,
    /// Shortest pause of a worker: past the devices' step timeout (1.5 s at least).
    pub pause: Duration,
}

/// Runs the soak and returns its figures.
pub async fn run(cfg: &SoakConfig) -> Report {
    let started = Instant::now();
    let fleet = Arc::new(Fleet::start(cfg).await);
    eprintln!(
        "soak: 2 workers, {} gateway replicas, {} devices up in {:.1} s",
        fleet.replicas.len(),
        fleet.devices.len(),
        started.elapsed().as_secs_f64()
    );
    let references = references(cfg, &fleet.reference.addr).await;
    let shared = Arc::new(Shared::default());

    // Calm: the same workload without faults, for the latency baseline.
    let calm = drive_all(cfg, &fleet, &shared, Phase::Calm).await;

    // Faults while every device keeps sending.
    let schedule = plan::schedule(
        &mut plan::rng(cfg.seed, 1),
        cfg.faults,
        plan::Targets {
            workers: fleet.workers.len(),
            replicas: fleet.replicas.len(),
            linked_devices: fleet.impairments.len(),
            pause: cfg.pause,
        },
    );
    let injector = {
        let (fleet, shared) = (fleet.clone(), shared.clone());
        std::thread::spawn(move || inject(&fleet, &schedule, &shared))
    };
    let faulted = drive_all(cfg, &fleet, &shared, Phase::Faults).await;
    let faults = injector.join().expect("the fault injector panicked");

    let mut records = calm;
    records.extend(faulted);
    for r in &mut records {
        let greedy = !matches!(r.job.kind, JobKind::Sampled { .. });
        let reference = &references[&(r.job.prompt, r.job.kind.reference())];
        r.verdict = Some(verdict::judge(&r.outcome, reference, greedy));
    }
    Report {
        records,
        faults,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// State the devices' drivers and the fault injector share.
#[derive(Default)]
struct Shared {
    /// Answers through the gateway that have produced a token and not ended.
    in_flight_split: AtomicUsize,
    /// The injector has injected every fault: the drivers stop after their current request.
    faults_done: AtomicBool,
}

/// The device-only answers of every request the workload may send.
async fn references(cfg: &SoakConfig, addr: &str) -> HashMap<(usize, JobKind), Vec<u32>> {
    let mut client = AssistantClient::connect(addr.to_string())
        .await
        .expect("connecting to the reference device");
    let mut out = HashMap::new();
    for prompt in 0..PROMPTS.len() {
        let kinds = std::iter::once(JobKind::Local)
            .chain(plan::SAMPLING_SEEDS.map(|seed| JobKind::Sampled { seed }));
        for kind in kinds {
            let job = Job { prompt, kind };
            let mut req = request(cfg, job);
            req.route = RoutePreference::Local as i32;
            match execute(&mut client, req, None, cfg.deadline, None).await {
                Outcome::Finished { tokens, .. } => {
                    out.insert((prompt, kind), tokens);
                }
                other => panic!("the reference device failed {job:?}: {other:?}"),
            }
        }
    }
    out
}

fn request(cfg: &SoakConfig, job: Job) -> GenerateRequest {
    GenerateRequest {
        prompt: PROMPTS[job.prompt].into(),
        max_tokens: cfg.max_tokens,
        deadline_ms: cfg.deadline.as_millis() as u64,
        route: match job.kind {
            JobKind::Local => RoutePreference::Local,
            _ => RoutePreference::Auto,
        } as i32,
        sampling: match job.kind {
            JobKind::Sampled { seed } => Some(SamplingParams {
                temperature: TEMPERATURE,
                top_p: TOP_P,
                seed,
                top_k: None,
            }),
            _ => None,
        },
        ..Default::default()
    }
}

/// Every device sends its jobs one after another: `calm_jobs` of them in the calm phase; in
/// the fault phase, until the injector is done.
async fn drive_all(
    cfg: &SoakConfig,
    fleet: &Arc<Fleet>,
    shared: &Arc<Shared>,
    phase: Phase,
) -> Vec<Record> {
    let mut tasks = tokio::task::JoinSet::new();
    for (device, p) in fleet.devices.iter().enumerate() {
        let (cfg, shared, addr) = (cfg.clone(), shared.clone(), p.addr.clone());
        let sampled = !DEVICES[device].speculative;
        tasks.spawn(async move {
            let stream = 100 + device as u64 * 2 + u64::from(phase == Phase::Faults);
            let mut rng = plan::rng(cfg.seed, stream);
            let mut client = AssistantClient::connect(addr)
                .await
                .expect("connecting to a device");
            let mut records = Vec::new();
            loop {
                let done = match phase {
                    Phase::Calm => records.len() >= cfg.calm_jobs,
                    Phase::Faults => shared.faults_done.load(Ordering::Relaxed),
                };
                if done {
                    return records;
                }
                let mut job = plan::jobs(&mut rng, PROMPTS.len(), 1)[0];
                if !sampled && matches!(job.kind, JobKind::Sampled { .. }) {
                    job.kind = JobKind::Split;
                }
                let cancel = match job.kind {
                    JobKind::Cancel { after } => Some(after),
                    _ => None,
                };
                let through_gateway = (job.kind != JobKind::Local).then_some(&*shared);
                let t0 = Instant::now();
                let outcome = execute(
                    &mut client,
                    request(&cfg, job),
                    cancel,
                    cfg.deadline,
                    through_gateway,
                )
                .await;
                records.push(Record {
                    device,
                    job,
                    phase,
                    latency: t0.elapsed(),
                    outcome,
                    verdict: None,
                });
            }
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("a device driver panicked"));
    }
    all
}

/// Grace past a request's deadline before it counts as hung.
const GRACE: Duration = Duration::from_secs(5);

/// Sends one request and reads its stream to the end, or drops it after `cancel` tokens.
async fn execute(
    client: &mut AssistantClient<tonic::transport::Channel>,
    req: GenerateRequest,
    cancel: Option<usize>,
    deadline: Duration,
    shared: Option<&Shared>,
) -> Outcome {
    let mut counted = false;
    let result = tokio::time::timeout(deadline + GRACE, async {
        let mut stream = client
            .generate(req)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let mut tokens = Vec::new();
        loop {
            let ev = stream
                .message()
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            match ev.and_then(|e| e.event) {
                // The last token may come twice: once, then with the text held back for stops.
                Some(Event::Token(t)) if t.index as usize == tokens.len() => {
                    tokens.push(t.id);
                    if let (Some(s), false) = (shared, counted) {
                        s.in_flight_split.fetch_add(1, Ordering::Relaxed);
                        counted = true;
                    }
                    if cancel.is_some_and(|n| tokens.len() >= n) {
                        return Ok(Outcome::Cancelled { tokens });
                    }
                }
                Some(Event::Final(f)) => {
                    return Ok(Outcome::Finished {
                        tokens,
                        degraded: f.degraded,
                        reason: f.degraded_reason,
                        replays: f.session_replays,
                    });
                }
                Some(_) => {}
                None => return Err("the stream ended without a final event".to_string()),
            }
        }
    })
    .await;
    if let (Some(s), true) = (shared, counted) {
        s.in_flight_split.fetch_sub(1, Ordering::Relaxed);
    }
    match result {
        Ok(Ok(o)) => o,
        Ok(Err(why)) => Outcome::Failed { why },
        Err(_) => Outcome::Failed {
            why: format!("no end within the deadline ({deadline:?}) and {GRACE:?}"),
        },
    }
}

/// Longest wait for a split answer to be in flight before a worker is killed anyway.
const MID_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Injects `schedule` in order, each fault after its gap and over before the next.
fn inject(fleet: &Fleet, schedule: &[(Duration, Fault)], shared: &Shared) -> Vec<FaultRecord> {
    let mut out = Vec::with_capacity(schedule.len());
    let mut version = 1;
    let mut layer = 8;
    let good = |v: u64, k: u32| fleet::policy(v, k);
    let path = fleet.policy_path();
    for (n, (gap, fault)) in schedule.iter().enumerate() {
        std::thread::sleep(*gap);
        let t0 = Instant::now();
        let mut mid_answer = false;
        match *fault {
            Fault::WorkerKill { worker } => {
                let until = Instant::now() + MID_ANSWER_WAIT;
                while shared.in_flight_split.load(Ordering::Relaxed) == 0 && Instant::now() < until
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                mid_answer = shared.in_flight_split.load(Ordering::Relaxed) > 0;
                let target = busiest_worker(fleet).unwrap_or(worker);
                fleet.workers[target].lock().expect("worker lock").restart();
            }
            Fault::GatewayRestart { replica } => {
                fleet.replicas[replica]
                    .lock()
                    .expect("replica lock")
                    .restart();
            }
            Fault::LinkCut { device, ms } => {
                fleet.impairments[device].set_cut(true);
                std::thread::sleep(Duration::from_millis(ms));
                fleet.impairments[device].clear();
            }
            Fault::LossBurst { device, loss, ms } => {
                fleet.impairments[device].set_loss(loss);
                std::thread::sleep(Duration::from_millis(ms));
                fleet.impairments[device].clear();
            }
            Fault::WorkerPause { worker, ms } => {
                let w = fleet.workers[worker].lock().expect("worker lock");
                w.pause();
                std::thread::sleep(Duration::from_millis(ms));
                w.resume();
            }
            Fault::PolicyReload => {
                version += 1;
                layer = if layer == 8 { 4 } else { 8 };
                write_atomically(&path, &good(version, layer));
            }
            Fault::PolicyTruncated { ms } => {
                // A full disk: the next version written half-way, then the operator puts the
                // file back.
                let next = good(version + 1, layer);
                std::fs::write(&path, &next.as_bytes()[..next.len() / 2])
                    .expect("writing the policy file");
                std::thread::sleep(Duration::from_millis(ms));
                write_atomically(&path, &good(version, layer));
            }
            Fault::PolicyUnreadable { ms } => {
                let aside = path.with_extension("toml.aside");
                std::fs::rename(&path, &aside).expect("moving the policy file aside");
                std::fs::create_dir(&path).expect("a directory where the policy file was");
                std::thread::sleep(Duration::from_millis(ms));
                std::fs::remove_dir(&path).expect("removing the directory");
                std::fs::rename(&aside, &path).expect("putting the policy file back");
            }
        }
        out.push(FaultRecord {
            fault: *fault,
            took: t0.elapsed(),
            mid_answer,
        });
        if (n + 1) % 10 == 0 {
            eprintln!("soak: {} of {} faults injected", n + 1, schedule.len());
        }
    }
    shared.faults_done.store(true, Ordering::Relaxed);
    out
}

/// The worker holding the most open sessions, if any holds one (from its `/metrics`).
fn busiest_worker(fleet: &Fleet) -> Option<usize> {
    let sessions: Vec<f64> = fleet
        .workers
        .iter()
        .map(|w| {
            let w = w.lock().expect("worker lock");
            w.metrics
                .as_deref()
                .and_then(|m| crate::sample(&crate::scrape(m).1, "seam_worker_sessions"))
                .unwrap_or(0.0)
        })
        .collect();
    let (i, most) = sessions
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    (*most > 0.0).then_some(i)
}

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("writing the policy file");
    std::fs::rename(&tmp, path).expect("replacing the policy file");
}
