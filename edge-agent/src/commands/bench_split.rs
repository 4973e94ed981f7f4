//! `seam-edge bench-split`: split generation against a running `seam-worker` (on loopback for
//! `make bench`) next to local generation in the same process, the bytes one decoded token
//! ships per wire dtype, greedy agreement of the lossy wires with the local output, and the
//! worker's decode steps/s with many sessions at once.
//!
//! `scripts/bench.sh` starts the worker and passes its address.

pub mod speculation;

use super::load_engine;
use crate::link::gateway::{GatewayEndpoint, GatewayOptions, TransportChoice};
use crate::link::worker::WorkerEndpoint;
use crate::runtime::engine::{Engine, GenerateRequest, GenerateStats, Route};
use crate::runtime::kv_cache::{KvCache, KvDtype, KvGeometry};
use crate::runtime::sampler::SamplingParams;
use crate::runtime::split::{OpenSplit, SplitLink, check_answer};
use anyhow::Context;
use seam_shared::proto::common::StepRequest;
use seam_shared::tensor::{self, WireDtype};
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Options of one `bench-split` run.
#[derive(Debug, Clone, clap::Args)]
pub struct SplitBenchArgs {
    /// The worker, e.g. http://127.0.0.1:50061.
    #[arg(long)]
    pub worker: String,
    /// Split layer K (default: the package's smallest split point).
    #[arg(long)]
    pub split: Option<u32>,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Tokens decoded per generation.
    #[arg(long, default_value_t = 128)]
    pub decode: usize,
    /// Each generation is repeated and the best time kept.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Concurrent sessions for the worker's steps/s.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub sessions: Vec<usize>,
    /// Decode steps each session sends.
    #[arg(long, default_value_t = 64)]
    pub steps: usize,
    /// Chat prompts (at most 20) for greedy agreement with local output.
    #[arg(long, default_value_t = 20)]
    pub agreement_prompts: usize,
    /// Tokens generated per agreement prompt.
    #[arg(long, default_value_t = 64)]
    pub agreement_tokens: u32,
    /// Which measurements to run: speed (tokens/s and bytes per route), agreement, sessions,
    /// speculation (held-out prompts: local, per-token and speculative split).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "speed,agreement,sessions"
    )]
    pub sections: Vec<String>,
    /// What the link is, for the table's title (e.g. "loopback", "40 ms RTT, 20 Mbit/s").
    #[arg(long, default_value = "loopback")]
    pub link: String,
    /// A seam-router in front of the same worker: the speed section adds the int8 routes
    /// through it, to compare with the direct connection in the same run.
    #[arg(long, requires_all = ["gateway_ca", "device_cert", "device_key"])]
    pub gateway: Option<String>,
    #[arg(long)]
    pub gateway_ca: Option<std::path::PathBuf>,
    #[arg(long)]
    pub device_cert: Option<std::path::PathBuf>,
    #[arg(long)]
    pub device_key: Option<std::path::PathBuf>,
}

/// The wire dtypes compared.
const WIRES: [WireDtype; 4] = [
    WireDtype::F32,
    WireDtype::F16,
    WireDtype::INT8_ROW,
    WireDtype::DEFAULT,
];

const PROSE: &str = "The history of the city begins with a small settlement on the river, where \
traders stopped to rest and exchange goods. Over the centuries the village grew into a market \
town, and the market town into a city with bridges, churches, schools and a university.";

/// Chat prompts of the kind a fleet sends, for greedy agreement.
pub const AGREEMENT_PROMPTS: [&str; 20] = [
    "What is the capital of France?",
    "How often should I check my tyre pressure?",
    "What does the oil warning light on my dashboard mean?",
    "Explain in two sentences how a heat pump works.",
    "Write a short poem about the sea.",
    "What are three ways to save energy at home?",
    "How do I reset a home Wi-Fi router?",
    "Summarise the plot of Romeo and Juliet.",
    "Why is the sky blue?",
    "Give me a recipe for a simple tomato soup.",
    "What is the difference between weather and climate?",
    "How can I improve my sleep?",
    "Describe the water cycle for a ten-year-old.",
    "What should I pack for a weekend hiking trip?",
    "How does a car battery get charged while driving?",
    "Tell me a fun fact about octopuses.",
    "What is machine learning, in simple terms?",
    "How do I convert Celsius to Fahrenheit?",
    "What are the benefits of regular exercise?",
    "Suggest a name for a small coffee shop by the harbour.",
];

/// The device side of the bench: the engine, the worker, and the split layer.
struct SplitBench {
    engine: Engine,
    endpoint: WorkerEndpoint,
    gateway: Option<GatewayEndpoint>,
    runtime: tokio::runtime::Runtime,
    layer: u32,
}

pub fn run(dir: &Path, args: &SplitBenchArgs) -> anyhow::Result<()> {
    let engine = load_engine(dir, args.threads, KvDtype::Int8, super::DEFAULT_KV_BUDGET)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let split = super::SplitArgs {
        worker: Some(args.worker.clone()),
        split: args.split,
        wire: WireDtype::DEFAULT,
        device_id: "bench".into(),
        no_speculative: false,
        draft_tokens: None,
        gateway: None,
        gateway_ca: None,
        device_cert: None,
        device_key: None,
        transport: crate::link::gateway::TransportChoice::Auto,
        link_report_ms: 10_000,
    };
    let (endpoint, layer) = {
        let _context = runtime.enter();
        match split.resolve(&engine)? {
            Some((crate::link::CloudEndpoint::Worker(w), layer)) => (*w, layer),
            _ => anyhow::bail!("bench-split needs a worker"),
        }
    };
    println!(
        "split at layer {layer} of {}, worker {} ({}), {} thread(s) on the device",
        engine.model().arch().n_layer,
        args.worker,
        args.link,
        args.threads
    );
    println!();
    let gateway = match (
        &args.gateway,
        &args.gateway_ca,
        &args.device_cert,
        &args.device_key,
    ) {
        (Some(addr), Some(ca), Some(cert), Some(key)) => Some(GatewayEndpoint::new(
            GatewayOptions {
                addrs: vec![addr.clone()],
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                transport: TransportChoice::Quic,
                report_every: Duration::from_secs(10),
            },
            engine.model().package().digest(),
        )?),
        _ => None,
    };
    let mut bench = SplitBench {
        engine,
        endpoint,
        gateway,
        runtime,
        layer,
    };
    let wants = |s: &str| args.sections.iter().any(|x| x == s);
    if wants("speed") {
        bench.speed_and_bytes(args)?;
        println!();
    }
    if wants("agreement") {
        bench.agreement(args)?;
        println!();
    }
    if wants("sessions") {
        bench.worker_throughput(args)?;
    }
    if wants("speculation") {
        bench.speculation(args)?;
    }
    Ok(())
}

impl SplitBench {
    /// Runs `req` locally (`wire: None`) or split with `wire`, returning its stats and tokens.
    fn generate(
        &mut self,
        req: &GenerateRequest,
        wire: Option<WireDtype>,
    ) -> anyhow::Result<(GenerateStats, Vec<u32>)> {
        self.generate_via(req, wire, false)
    }

    /// As [`Self::generate`], through the gateway when `via_gateway`.
    fn generate_via(
        &mut self,
        req: &GenerateRequest,
        wire: Option<WireDtype>,
        via_gateway: bool,
    ) -> anyhow::Result<(GenerateStats, Vec<u32>)> {
        let mut ids = Vec::new();
        let handle = self.runtime.handle().clone();
        let mut link: Box<dyn SplitLink + Send> = match (&self.gateway, via_gateway) {
            (Some(g), true) => Box::new(g.link(handle)),
            (None, true) => anyhow::bail!("no gateway configured"),
            (_, false) => Box::new(self.endpoint.link(handle)),
        };
        let route = match wire {
            Some(wire) => Route::Split {
                layer: self.layer,
                wire,
                link: &mut *link,
            },
            None => Route::Local,
        };
        let stats = self.engine.generate_routed(req, route, |t| {
            ids.push(t.id);
            true
        })?;
        Ok((stats, ids))
    }

    /// Decode tokens/s local and split per wire dtype (best of `repeats`, interleaved so that
    /// noise hits all alike), and the bytes each decoded token ships.
    fn speed_and_bytes(&mut self, args: &SplitBenchArgs) -> anyhow::Result<()> {
        let layer = self.layer;
        let req = GenerateRequest {
            history: Vec::new(),
            system: None,
            prompt: PROSE.into(),
            chat: false,
            max_tokens: args.decode as u32,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            deadline: None,
            draft_tokens: Some(0),
            context_overflow: None,
        };
        // Per-token split per wire dtype, then int8 with adaptive drafting.
        // (wire, drafts, through the gateway)
        let mut routes: Vec<(Option<WireDtype>, Option<u32>, bool)> =
            std::iter::once((None, Some(0), false))
                .chain(WIRES.iter().map(|&w| (Some(w), Some(0), false)))
                .chain([(Some(WireDtype::DEFAULT), None, false)])
                .collect();
        if self.gateway.is_some() {
            routes.push((Some(WireDtype::DEFAULT), Some(0), true));
            routes.push((Some(WireDtype::DEFAULT), None, true));
        }
        let mut best = vec![0.0f64; routes.len()];
        let mut last: Vec<Option<GenerateStats>> = vec![None; routes.len()];
        for _ in 0..args.repeats.max(1) {
            for (i, &(wire, drafts, via)) in routes.iter().enumerate() {
                let req = GenerateRequest {
                    history: Vec::new(),
                    draft_tokens: drafts,
                    context_overflow: None,
                    ..req.clone()
                };
                let (stats, _) = self.generate_via(&req, wire, via)?;
                anyhow::ensure!(
                    stats.fallback.is_none(),
                    "the split did not complete: {:?}",
                    stats.fallback
                );
                best[i] = best[i].max(stats.decode_tokens_per_s());
                last[i] = Some(stats);
            }
        }
        let local = best[0];
        let d = self.engine.model().n_embd();
        let f32_row = WireDtype::F32.payload_bytes(1, d);
        println!(
            "| route | decode tok/s ({} tok) | vs local | hidden-state bytes per token | vs f32 | sent per decoded token (framed) | received per decoded token | round trips | tokens per round trip | draft acceptance |",
            args.decode
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        println!("| local | {local:.1} | 1.00 | – | – | – | – | – | – | – |");
        for (i, &(wire, drafts, via)) in routes.iter().enumerate().skip(1) {
            let wire = wire.expect("split routes");
            let stats = last[i].as_ref().expect("measured");
            let report = stats
                .split
                .as_ref()
                .context("a split route reports its traffic")?;
            let (decode_sent, decode_received) = decode_traffic(stats, d, wire);
            let row = wire.payload_bytes(1, d);
            let spec = report.speculation;
            println!(
                "| split({layer}) {wire}{}{} | {:.1} | {:.2} | {row} | {:.3} | {decode_sent:.0} | {decode_received:.0} | {} | {:.2} | {} |",
                if drafts == Some(0) {
                    ""
                } else {
                    ", speculative"
                },
                if via { ", via gateway (QUIC)" } else { "" },
                best[i],
                best[i] / local,
                row as f64 / f32_row as f64,
                report.counters.round_trips,
                spec.tokens_per_round_trip(),
                if spec.enabled {
                    format!("{:.1}%", spec.acceptance_rate() * 100.0)
                } else {
                    "–".into()
                }
            );
        }
        Ok(())
    }

    /// Greedy output of the split routes against local, token for token.
    fn agreement(&mut self, args: &SplitBenchArgs) -> anyhow::Result<()> {
        let layer = self.layer;
        let prompts = &AGREEMENT_PROMPTS[..args.agreement_prompts.min(AGREEMENT_PROMPTS.len())];
        if prompts.is_empty() {
            return Ok(());
        }
        let mut prefix = vec![0usize; WIRES.len()];
        let mut same = vec![0usize; WIRES.len()];
        let mut identical = vec![0usize; WIRES.len()];
        let mut total = 0usize;
        for (n, prompt) in prompts.iter().enumerate() {
            eprint!(
                "\rbench-split: agreement, prompt {}/{}   ",
                n + 1,
                prompts.len()
            );
            let req = GenerateRequest {
                history: Vec::new(),
                system: None,
                prompt: (*prompt).into(),
                chat: true,
                max_tokens: args.agreement_tokens,
                sampling: SamplingParams::default(),
                stop: Vec::new(),
                deadline: None,
                draft_tokens: Some(0),
                context_overflow: None,
            };
            let (_, local) = self.generate(&req, None)?;
            total += local.len();
            for (i, &wire) in WIRES.iter().enumerate() {
                let (_, split) = self.generate(&req, Some(wire))?;
                let common = local.iter().zip(&split).take_while(|(a, b)| a == b).count();
                prefix[i] += common;
                same[i] += local.iter().zip(&split).filter(|(a, b)| a == b).count();
                identical[i] += usize::from(split == local);
            }
        }
        eprintln!();
        println!(
            "| greedy agreement with local, {} chat prompts × up to {} tokens ({total} local tokens) | identical outputs | tokens before the first difference | same token at the same index |",
            prompts.len(),
            args.agreement_tokens
        );
        println!("|---|---|---|---|");
        for (i, wire) in WIRES.iter().enumerate() {
            println!(
                "| split({layer}) {wire} | {}/{} | {:.1}% | {:.1}% |",
                identical[i],
                prompts.len(),
                100.0 * prefix[i] as f64 / total.max(1) as f64,
                100.0 * same[i] as f64 / total.max(1) as f64
            );
        }
        Ok(())
    }

    /// The worker's decode steps/s with `n` sessions stepping at once, each on its own thread as
    /// `n` devices would: a prompt of [`PROMPT_ROWS`] rows, then one row per step (real layer-K
    /// states of prose, teacher-forced, the default wire).
    fn worker_throughput(&mut self, args: &SplitBenchArgs) -> anyhow::Result<()> {
        let layer = self.layer;
        let rows = PROMPT_ROWS + args.steps;
        let (states, d) = layer_states(&mut self.engine, layer, rows)?;
        println!(
            "| concurrent sessions | decode steps/s (worker) | step latency p50 ms | p99 ms | vs 1 session |"
        );
        println!("|---|---|---|---|---|");
        let mut single = None;
        for &n in &args.sessions {
            let barrier = Barrier::new(n);
            let results: Vec<anyhow::Result<SessionRun>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..n)
                    .map(|_| {
                        let mut link = self.endpoint.link(self.runtime.handle().clone());
                        let (states, barrier) = (&states, &barrier);
                        s.spawn(move || session(&mut link, layer, states, d, barrier))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("session panicked")))
                    })
                    .collect()
            });
            let runs = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
            let first = runs
                .iter()
                .map(|r| r.started)
                .min()
                .context("no sessions")?;
            let last = runs
                .iter()
                .map(|r| r.finished)
                .max()
                .context("no sessions")?;
            let mut latencies: Vec<Duration> = runs.into_iter().flat_map(|r| r.latencies).collect();
            let steps_per_s = latencies.len() as f64 / last.duration_since(first).as_secs_f64();
            latencies.sort();
            let pct = |p: f64| {
                latencies
                    .get(
                        ((latencies.len() as f64 * p) as usize)
                            .min(latencies.len().saturating_sub(1)),
                    )
                    .map_or(0.0, |d| d.as_secs_f64() * 1e3)
            };
            let base = *single.get_or_insert(steps_per_s);
            println!(
                "| {n} | {steps_per_s:.0} | {:.2} | {:.2} | {:.2}× |",
                pct(0.5),
                pct(0.99),
                steps_per_s / base
            );
        }
        Ok(())
    }
}

/// Bytes per decoded token after the prompt: the whole session's traffic less what the
/// prompt's rows took, spread over the decode steps.
fn decode_traffic(stats: &GenerateStats, d: usize, wire: WireDtype) -> (f64, f64) {
    let Some(report) = &stats.split else {
        return (0.0, 0.0);
    };
    let steps = stats.completion_tokens.saturating_sub(1).max(1) as f64;
    let prompt_payload = wire.payload_bytes(stats.prompt_tokens, d) as f64;
    let sent = (report.counters.bytes_sent as f64 - prompt_payload).max(0.0);
    // Every round trip answers with a token; opening and closing add a few hundred bytes.
    (sent / steps, report.counters.bytes_received as f64 / steps)
}

/// Rows of the prompt each throughput session sends before its decode steps.
const PROMPT_ROWS: usize = 32;

/// Layer-K hidden states of `rows` tokens of prose, computed on the device.
fn layer_states(engine: &mut Engine, layer: u32, rows: usize) -> anyhow::Result<(Vec<f32>, usize)> {
    let model = engine.model_mut();
    let text = PROSE.repeat(rows / 30 + 2);
    let mut tokens = model
        .tokenizer()
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .get_ids()
        .to_vec();
    tokens.truncate(rows);
    let a = model.arch();
    let geometry = KvGeometry {
        n_layers: layer as usize,
        n_kv_heads: a.n_head_kv as usize,
        head_dim: a.head_dim as usize,
    };
    let mut cache = KvCache::try_new(geometry, KvDtype::Int8, rows)?;
    let h = model.embed(&tokens)?;
    let h = model.run_layers(0..layer, h, 0, &mut cache)?;
    Ok((h, model.n_embd()))
}

/// What one throughput session measured.
struct SessionRun {
    /// Latency of each decode step.
    latencies: Vec<Duration>,
    /// When its first decode step started and its last one ended.
    started: Instant,
    finished: Instant,
}

/// One session: opens, sends the prompt, waits for the others, then steps one row at a time.
fn session(
    link: &mut dyn SplitLink,
    layer: u32,
    states: &[f32],
    d: usize,
    barrier: &Barrier,
) -> anyhow::Result<SessionRun> {
    let rows = states.len() / d;
    let open = OpenSplit {
        layer,
        max_positions: rows as u32,
        sampling: SamplingParams::default(),
        deadline: None,
        max_draft_tokens: 0,
    };
    let ready = link
        .open(&open)
        .map_err(anyhow::Error::from)
        .and_then(|id| {
            send_rows(link, &id, 1, states, d, 0..PROMPT_ROWS)?;
            Ok(id)
        });
    // Every session reaches the barrier, even one that failed, so that none waits forever.
    barrier.wait();
    let session_id = ready?;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(rows - PROMPT_ROWS);
    for (i, pos) in (PROMPT_ROWS..rows).enumerate() {
        let t = Instant::now();
        send_rows(link, &session_id, i as u64 + 2, states, d, pos..pos + 1)?;
        latencies.push(t.elapsed());
    }
    let finished = Instant::now();
    link.close();
    Ok(SessionRun {
        latencies,
        started,
        finished,
    })
}

/// Sends rows `range` of `states` as step `step_id` and checks the answer.
fn send_rows(
    link: &mut dyn SplitLink,
    session_id: &str,
    step_id: u64,
    states: &[f32],
    d: usize,
    range: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let hidden = tensor::encode(
        &states[range.start * d..range.end * d],
        d,
        WireDtype::DEFAULT,
    )?;
    let r = link.step(StepRequest {
        session_id: session_id.to_string(),
        step_id,
        start_position: range.start as u32,
        hidden: Some(hidden),
        ..Default::default()
    })?;
    check_answer(&r, step_id, range.end)?;
    Ok(())
}
