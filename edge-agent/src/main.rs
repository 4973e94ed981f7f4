//! `seam-edge`: the on-device agent. Parses arguments and hands over to `seam_edge::commands`.

use clap::{Parser, Subcommand};
use seam_edge::commands;
use seam_edge::import::drafter::DrafterOptions;
use seam_edge::import::encoder::EncoderImportOptions;
use seam_edge::import::encoder_graph::EncoderWeightType;
use seam_edge::runtime::engine::GenerateRequest;
use seam_edge::runtime::kv_cache::KvDtype;
use seam_edge::runtime::sampler::SamplingParams;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "seam-edge",
    version,
    about = "Seam's on-device agent: import models, generate locally, serve apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Model packages: import a GGUF checkpoint, inspect a package.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Generate a completion locally: the text on stdout, stats on stderr.
    Generate {
        /// Model package directory.
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        context: commands::ContextArgs,
        #[arg(long, default_value_t = 128)]
        max_tokens: u32,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// KV cache dtype at rest.
        #[arg(long, default_value = "int8")]
        kv: KvDtype,
        /// Stop when this string is produced (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        /// System prompt (its KV is reused across requests of a server).
        #[arg(long)]
        system: Option<String>,
        /// Wrap the prompt in the model's chat template.
        #[arg(long)]
        chat: bool,
        /// Give up after this many milliseconds.
        #[arg(long)]
        deadline_ms: Option<u64>,
        /// `text` or `json` stats on stderr.
        #[arg(long, default_value = "text")]
        stats: StatsFormat,
        #[command(flatten)]
        split: commands::SplitArgs,
        /// Encoder package: classify the prompt's intent first and report it in the stats.
        #[arg(long)]
        encoder: Option<PathBuf>,
        prompt: String,
    },
    /// Perplexity of a text file over non-overlapping windows (llama.cpp's method).
    Perplexity {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        #[arg(long, default_value = "int8")]
        kv: KvDtype,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Score at most this many windows (with --sliding: the first this many × ctx tokens).
        #[arg(long)]
        max_windows: Option<usize>,
        /// One pass over the text through a KV cache of --ctx slots that slides (keeping the
        /// first 4 positions), as `--context-overflow sliding_window` generates: the text may
        /// be far longer than the cache. Scores every token after the first ctx/2.
        #[arg(long)]
        sliding: bool,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        split: commands::SplitArgs,
    },
    /// Serve seam.edge.v1.Assistant (with health and reflection) until SIGTERM.
    Serve {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// The agent's context and its default for requests that do not fit (a request may
        /// choose its own handling).
        #[command(flatten)]
        context: commands::ContextArgs,
        /// Serve Prometheus metrics on `http://ADDR/metrics`.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Serve the OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/completions`,
        /// `/v1/embeddings`, `/v1/models`) on ADDR.
        #[arg(long)]
        http: Option<SocketAddr>,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value = "int8")]
        kv: KvDtype,
        /// Bytes of KV cache this process may hold.
        #[arg(long, default_value_t = commands::DEFAULT_KV_BUDGET)]
        kv_budget: usize,
        /// Logs as JSON lines.
        #[arg(long)]
        log_json: bool,
        /// With --worker, requests that ask for route SPLIT run split (at their layer, or at
        /// --split).
        #[command(flatten)]
        split: commands::SplitArgs,
        /// Encoder package for Embed, Classify and the intent features of Generate.
        #[arg(long)]
        encoder: Option<PathBuf>,
        /// Most texts in one Embed call (1..=64); more is RESOURCE_EXHAUSTED.
        #[arg(long, default_value_t = seam_edge::perception::classifier::MAX_BATCH_LIMIT)]
        max_embed_batch: usize,
        /// Routing policy (TOML, see deploy/config/policy.toml): requests that leave the route
        /// to the device are routed by its rules, evaluated here.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Append every routing decision as a JSON line (for `seam-router policy replay`);
        /// needs a policy (--policy, or the gateway's with --gateway).
        #[arg(long)]
        decisions: Option<PathBuf>,
        /// Round-trip time to the cloud assumed until split requests measure it.
        #[arg(long, default_value_t = 50.0)]
        link_rtt_ms: f64,
        /// Uplink bandwidth assumed for the routing policy's cost model.
        #[arg(long, default_value_t = 20.0)]
        link_mbps: f64,
    },
    /// Classify intents: one JSON object per text (the argument, or each line of stdin).
    Classify {
        /// Encoder package directory.
        #[arg(long)]
        model: PathBuf,
        /// Best intents listed in `top`.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// The text; without it, one text per line of stdin.
        text: Option<String>,
    },
    /// Sentence embeddings: one JSON object per text (the argument, or each line of stdin).
    Embed {
        /// Encoder package directory.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// The text; without it, one text per line of stdin.
        text: Option<String>,
    },
    /// Encoder benchmarks: embeddings/s at batch 1 and 32, classify latency.
    BenchEncoder {
        /// Encoder package directory.
        #[arg(long)]
        model: PathBuf,
        /// Labelled texts to run on.
        #[arg(long, default_value = ".seam/assets/clinc150/test.tsv")]
        data: PathBuf,
        /// Thread counts to measure (each in its own process).
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Measure in this process only and print JSON (used by the parent).
        #[arg(long, hide = true)]
        one: bool,
    },
    /// Send one prompt to a running agent and print the streamed answer and its figures.
    Ask(commands::ask::AskArgs),
    /// Benchmarks of split execution against a running seam-worker: split vs local tokens/s,
    /// bytes per token per wire dtype, greedy agreement, worker steps/s with concurrent sessions.
    BenchSplit {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        args: commands::bench_split::SplitBenchArgs,
    },
    /// Benchmarks: prefill/decode tokens/s at 1 and 2 threads, KV bytes, load time.
    Bench {
        #[arg(long)]
        model: PathBuf,
        /// Thread counts to measure (each in its own process).
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        #[arg(long, default_value_t = 512)]
        prefill: usize,
        #[arg(long, default_value_t = 128)]
        decode: usize,
        /// Measured rounds (the best counts), after two untimed warm-up rounds.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Measure in this process only and print JSON (used by the parent).
        #[arg(long, hide = true)]
        one: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Turn a GGUF checkpoint (llama architecture, Q4_1) into a model package.
    Import {
        #[arg(long)]
        gguf: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Layers where the forward pass may be split between device and cloud.
        #[arg(long, value_delimiter = ',')]
        split_points: Vec<u32>,
        /// Compute matmuls in f32 (exact but ~10x slower) instead of with int8 activations.
        #[arg(long)]
        f32_compute: bool,
        /// Train a draft head for speculative split decoding on this English prose (teacher
        /// forcing) and the model's answers to the texts of --drafter-prompts; without it the
        /// package has none and split requests draft by prompt lookup alone.
        #[arg(long, requires_all = ["drafter_prompts", "drafter_heldout"])]
        drafter_prose: Option<PathBuf>,
        /// `text<TAB>label` file whose texts become chat prompts to learn from (CLINC150 train).
        #[arg(long)]
        drafter_prompts: Option<PathBuf>,
        /// Another such file whose prompts are held out to measure the drafter (CLINC150 test).
        #[arg(long)]
        drafter_heldout: Option<PathBuf>,
        /// Training steps of the draft head (batches of 256 positions).
        #[arg(long)]
        drafter_steps: Option<usize>,
        /// Prompts answered for the training data.
        #[arg(long)]
        drafter_answers: Option<usize>,
        /// Seed of the draft head's training (same seed, same head).
        #[arg(long)]
        drafter_seed: Option<u64>,
        /// Split layers to train a state predictor for, with which the worker drafts through
        /// its own layers (default: every split point; `none`: no predictor)
        #[arg(long, value_delimiter = ',')]
        predictor_layers: Option<Vec<String>>,
    },
    /// Turn a BERT sentence encoder (safetensors) into an encoder package and train its intent
    /// head on labelled `text<TAB>label` data.
    ImportEncoder {
        /// Directory with model.safetensors, config.json and tokenizer.json.
        #[arg(long)]
        safetensors: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Training data.
        #[arg(long, default_value = ".seam/assets/clinc150/train.tsv")]
        train: PathBuf,
        /// Calibration data (regularisation and out-of-scope threshold).
        #[arg(long, default_value = ".seam/assets/clinc150/dev.tsv")]
        dev: PathBuf,
        /// `label<TAB>domain` table; default: the CLINC150 domains.
        #[arg(long)]
        domains: Option<PathBuf>,
        /// Longest input in tokens; longer texts are truncated (and flagged).
        #[arg(long, default_value_t = seam_edge::import::encoder::DEFAULT_MAX_TOKENS)]
        max_tokens: u32,
        /// Share of in-scope calibration texts the out-of-scope threshold may reject.
        #[arg(long, default_value_t = seam_edge::import::encoder::DEFAULT_TARGET_FRR)]
        oos_frr: f32,
        /// L2 strengths to try; the best on the calibration data is kept.
        #[arg(long, value_delimiter = ',')]
        l2: Vec<f32>,
        /// Keep the weights in f32 (for checks) instead of int8.
        #[arg(long)]
        f32: bool,
    },
    /// Accuracy of an encoder package on labelled data (CLINC150 test by default).
    Evaluate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = ".seam/assets/clinc150/test.tsv")]
        data: PathBuf,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print a package's manifest after verifying its checksums.
    Inspect { dir: PathBuf },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StatsFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Model { command } => {
            seam_shared::telemetry::init("warn", false);
            match command {
                ModelCommand::Import {
                    gguf,
                    out,
                    split_points,
                    f32_compute,
                    drafter_prose,
                    drafter_prompts,
                    drafter_heldout,
                    drafter_steps,
                    drafter_answers,
                    drafter_seed,
                    predictor_layers,
                } => {
                    let drafter = match (drafter_prose, drafter_prompts, drafter_heldout) {
                        (Some(prose), Some(prompts), Some(heldout)) => {
                            let mut o = DrafterOptions::new(prose, prompts, heldout);
                            o.steps = drafter_steps.unwrap_or(o.steps);
                            o.chat_prompts = drafter_answers.unwrap_or(o.chat_prompts);
                            o.seed = drafter_seed.unwrap_or(o.seed);
                            o.predictor_layers = match predictor_layers {
                                None => split_points.clone(),
                                Some(v) if v.iter().any(|s| s == "none") => Vec::new(),
                                Some(v) => v
                                    .iter()
                                    .map(|s| {
                                        s.parse::<u32>().map_err(|_| {
                                            anyhow::anyhow!(
                                                "--predictor-layers takes split points or `none`, not `{s}`"
                                            )
                                        })
                                    })
                                    .collect::<anyhow::Result<_>>()?,
                            };
                            Some(o)
                        }
                        _ => None,
                    };
                    commands::model::import(&gguf, &out, &split_points, f32_compute, drafter)
                }
                ModelCommand::ImportEncoder {
                    safetensors,
                    out,
                    train,
                    dev,
                    domains,
                    max_tokens,
                    oos_frr,
                    l2,
                    f32,
                } => {
                    let mut opts = EncoderImportOptions::new(safetensors, out, train, dev);
                    opts.domains = domains;
                    opts.max_tokens = max_tokens;
                    opts.target_frr = oos_frr;
                    if !l2.is_empty() {
                        opts.l2_grid = l2;
                    }
                    if f32 {
                        opts.weights = EncoderWeightType::F32;
                    }
                    opts.progress = true;
                    commands::model::import_encoder(&opts)
                }
                ModelCommand::Evaluate { model, data, json } => {
                    commands::model::evaluate(&model, &data, json)
                }
                ModelCommand::Inspect { dir } => commands::model::inspect(&dir),
            }
        }
        Command::Generate {
            model,
            context,
            max_tokens,
            temperature,
            top_p,
            seed,
            threads,
            kv,
            stop,
            system,
            chat,
            deadline_ms,
            stats,
            split,
            encoder,
            prompt,
        } => {
            seam_shared::telemetry::init("warn", false);
            // ONNX Runtime's threads must not spin through the round trips of a split answer.
            seam_shared::ort_env::prefer_spinning(!split.has_cloud());
            let req = GenerateRequest {
                history: Vec::new(),
                system,
                prompt,
                chat,
                max_tokens,
                sampling: SamplingParams {
                    temperature,
                    top_p,
                    seed,
                },
                stop,
                deadline: deadline_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
                draft_tokens: split.draft_default(),
                context_overflow: None,
            };
            let args = commands::generate::GenerateArgs {
                context,
                threads,
                kv,
                json_stats: matches!(stats, StatsFormat::Json),
                split,
                encoder,
            };
            commands::generate::run(&model, req, &args)
        }
        Command::Perplexity {
            model,
            file,
            ctx,
            kv,
            threads,
            max_windows,
            sliding,
            json,
            split,
        } => {
            seam_shared::telemetry::init("warn", false);
            let args = commands::perplexity::PerplexityArgs {
                ctx,
                kv,
                threads,
                max_windows,
                json,
                split,
                sliding,
            };
            commands::perplexity::run(&model, &file, &args)
        }
        Command::Serve {
            model,
            listen,
            context,
            metrics_listen,
            http,
            threads,
            kv,
            kv_budget,
            log_json,
            split,
            encoder,
            max_embed_batch,
            policy,
            decisions,
            link_rtt_ms,
            link_mbps,
        } => {
            seam_shared::telemetry::init("info", log_json);
            // ONNX Runtime's threads must not spin through the round trips of a split answer.
            seam_shared::ort_env::prefer_spinning(!split.has_cloud());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let perception = commands::serve::PerceptionArgs {
                encoder,
                max_embed_batch,
            };
            let args = commands::serve::ServeArgs {
                listen,
                context,
                metrics_listen,
                http,
                threads,
                kv,
                kv_budget,
                split,
                perception,
                routing: commands::serve::RoutingArgs {
                    policy,
                    decisions,
                    prior: seam_edge::server::routing::LinkPrior {
                        rtt_ms: link_rtt_ms,
                        bandwidth_mbps: link_mbps,
                    },
                },
            };
            rt.block_on(commands::serve::run(&model, args))
        }
        Command::Classify {
            model,
            top_k,
            threads,
            text,
        } => {
            seam_shared::telemetry::init("warn", false);
            let task = commands::perception::Task::Classify { top_k };
            commands::perception::run(&model, text, task, threads)
        }
        Command::Embed {
            model,
            threads,
            text,
        } => {
            seam_shared::telemetry::init("warn", false);
            commands::perception::run(&model, text, commands::perception::Task::Embed, threads)
        }
        Command::BenchEncoder {
            model,
            data,
            threads,
            one,
        } => {
            seam_shared::telemetry::init("warn", false);
            if one {
                let t = threads.first().copied().unwrap_or(1);
                let figures = commands::bench_encoder::measure(&model, &data, t)?;
                println!("{}", serde_json::to_string(&figures)?);
                Ok(())
            } else {
                commands::bench_encoder::run_all(&model, &data, &threads)
            }
        }
        Command::Ask(args) => {
            seam_shared::telemetry::init("warn", false);
            let req = commands::ask::request(&args);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(commands::ask::run(args.server, req))
        }
        Command::BenchSplit { model, args } => {
            seam_shared::telemetry::init("warn", false);
            commands::bench_split::run(&model, &args)
        }
        Command::Bench {
            model,
            threads,
            prefill,
            decode,
            repeats,
            one,
        } => {
            seam_shared::telemetry::init("warn", false);
            if one {
                let t = threads.first().copied().unwrap_or(2);
                let figures = commands::bench::measure(&model, t, prefill, decode, repeats)?;
                println!("{}", serde_json::to_string(&figures)?);
                Ok(())
            } else {
                commands::bench::run_all(&model, &threads, prefill, decode, repeats)
            }
        }
    }
}
