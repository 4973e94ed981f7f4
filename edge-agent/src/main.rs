//! `seam-edge`: the on-device agent. Parses arguments and hands over to `seam_edge::commands`.

use clap::{Parser, Subcommand};
use seam_edge::commands;
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
        /// Score at most this many windows.
        #[arg(long)]
        max_windows: Option<usize>,
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
    },
    /// Send one prompt to a running agent and print the streamed answer and its figures.
    Ask {
        /// The agent's address, e.g. http://127.0.0.1:50051.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        #[arg(long, default_value_t = 64)]
        max_tokens: u32,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        stop: Vec<String>,
        #[arg(long)]
        system: Option<String>,
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 0)]
        deadline_ms: u64,
        prompt: String,
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
                } => commands::model::import(&gguf, &out, &split_points, f32_compute),
                ModelCommand::Inspect { dir } => commands::model::inspect(&dir),
            }
        }
        Command::Generate {
            model,
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
            prompt,
        } => {
            seam_shared::telemetry::init("warn", false);
            let req = GenerateRequest {
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
            };
            let args = commands::generate::GenerateArgs {
                threads,
                kv,
                json_stats: matches!(stats, StatsFormat::Json),
                split,
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
            };
            commands::perplexity::run(&model, &file, &args)
        }
        Command::Serve {
            model,
            listen,
            threads,
            kv,
            kv_budget,
            log_json,
            split,
        } => {
            seam_shared::telemetry::init("info", log_json);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let args = commands::serve::ServeArgs {
                listen,
                threads,
                kv,
                kv_budget,
                split,
            };
            rt.block_on(commands::serve::run(&model, args))
        }
        Command::Ask {
            server,
            max_tokens,
            temperature,
            top_p,
            seed,
            stop,
            system,
            chat,
            deadline_ms,
            prompt,
        } => {
            seam_shared::telemetry::init("warn", false);
            let req = commands::ask::request(
                prompt,
                max_tokens,
                temperature,
                top_p,
                seed,
                stop,
                system,
                chat,
                deadline_ms,
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(commands::ask::run(server, req))
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
