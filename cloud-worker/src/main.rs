//! `seam-worker`: parses arguments, loads and validates the configuration, serves.

use clap::{Parser, Subcommand};
use seam_worker::config::WorkerConfig;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "seam-worker",
    version,
    about = "Seam cloud worker: layers [K, N) + LM head for device sessions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve `seam.worker.v1` over gRPC (with health and reflection).
    Serve {
        /// TOML configuration (see deploy/config/worker.toml); flags override it.
        #[arg(long, env = "SEAM_WORKER_CONFIG")]
        config: Option<PathBuf>,
        /// Model package directory (required without --config).
        #[arg(long, env = "SEAM_WORKER_MODEL")]
        model: Option<PathBuf>,
        /// Listen address.
        #[arg(long, env = "SEAM_WORKER_LISTEN")]
        listen: Option<SocketAddr>,
        /// Prometheus `/metrics` listen address.
        #[arg(long, env = "SEAM_WORKER_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// KV byte budget of all sessions.
        #[arg(long, env = "SEAM_WORKER_KV_BUDGET")]
        kv_budget: Option<u64>,
        /// Most sessions open at once.
        #[arg(long)]
        max_sessions: Option<usize>,
        /// Idle time after which a session may be evicted for a new one, ms.
        #[arg(long)]
        evict_after_ms: Option<u64>,
        /// Largest step message, bytes.
        #[arg(long)]
        max_frame_bytes: Option<usize>,
        /// ONNX Runtime threads (0 = all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Deepest chain the worker drafts through its own layers per step (0: none).
        #[arg(long)]
        proposal_depth: Option<usize>,
        /// Log lines as JSON.
        #[arg(long)]
        log_json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let Command::Serve {
        config,
        model,
        listen,
        metrics_listen,
        kv_budget,
        max_sessions,
        evict_after_ms,
        max_frame_bytes,
        threads,
        proposal_depth,
        log_json,
    } = Cli::parse().command;
    // Evicted sessions' KV caches go back to the system at once (see seam_shared::malloc).
    seam_shared::malloc::large_blocks_from_mmap();
    seam_shared::telemetry::init("info", log_json);
    let mut cfg = match (&config, &model) {
        (Some(path), _) => WorkerConfig::from_file(path)?,
        (None, Some(m)) => WorkerConfig::with_model(m.clone()),
        (None, None) => anyhow::bail!("give --model DIR or --config FILE"),
    };
    if let Some(m) = model {
        cfg.model = m;
    }
    if let Some(v) = listen {
        cfg.listen = v;
    }
    if let Some(v) = metrics_listen {
        cfg.metrics_listen = Some(v);
    }
    if let Some(v) = kv_budget {
        cfg.kv_budget_bytes = v;
    }
    if let Some(v) = max_sessions {
        cfg.max_sessions = v;
    }
    if let Some(v) = evict_after_ms {
        cfg.evict_after_ms = v;
    }
    if let Some(v) = max_frame_bytes {
        cfg.max_frame_bytes = v;
    }
    if let Some(v) = threads {
        cfg.threads = v;
    }
    if let Some(v) = proposal_depth {
        cfg.proposal_depth = v;
    }
    cfg.validate()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        // Tests and scripts read the bound address (port 0 picks a free one) from stdout.
        let metrics = match cfg.metrics_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
            None => None,
        };
        if let Some(m) = &metrics {
            println!("listening metrics {}", m.local_addr()?);
        }
        println!("listening on {}", listener.local_addr()?);
        tracing::info!(addr = %listener.local_addr()?, model = %cfg.model.display(), "seam-worker serving");
        seam_worker::server::serve(cfg, listener, metrics, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
