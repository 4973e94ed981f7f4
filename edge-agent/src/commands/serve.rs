//! `seam-edge serve`: the app API on a local port until SIGTERM or Ctrl-C, then drain.

use super::{SplitArgs, load_engine};
use crate::perception::{Perception, PerceptionLimits};
use crate::runtime::kv_cache::KvDtype;
use crate::server::routing::{DevicePolicy, LinkPrior};
use crate::server::{self, ServiceLimits, SplitTarget};
use seam_router::policy::ModelInfo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The sentence encoder of the agent, if any.
#[derive(Debug, Clone)]
pub struct PerceptionArgs {
    /// Encoder package directory.
    pub encoder: Option<PathBuf>,
    /// Most texts in one Embed call.
    pub max_embed_batch: usize,
}

/// The routing policy of the agent, if any.
#[derive(Debug, Clone)]
pub struct RoutingArgs {
    pub policy: Option<PathBuf>,
    /// JSON Lines trace of decisions.
    pub decisions: Option<PathBuf>,
    pub prior: LinkPrior,
}

/// Options of `seam-edge serve`.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    pub listen: SocketAddr,
    pub threads: usize,
    pub kv: KvDtype,
    pub kv_budget: usize,
    pub split: SplitArgs,
    pub perception: PerceptionArgs,
    pub routing: RoutingArgs,
}

pub async fn run(dir: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let dir = dir.to_path_buf();
    let (threads, kv, kv_budget) = (args.threads, args.kv, args.kv_budget);
    let engine =
        tokio::task::spawn_blocking(move || load_engine(&dir, threads, kv, kv_budget)).await??;
    let split = args
        .split
        .resolve(&engine)?
        .map(|(endpoint, layer)| SplitTarget {
            endpoint,
            default_layer: layer,
            wire: args.split.wire,
            draft_default: args.split.draft_default(),
        });
    tracing::info!(
        digest = engine.model().package().digest(),
        load_ms = engine.model().load_time().as_millis() as u64,
        "model loaded"
    );
    let limits = ServiceLimits {
        perception: PerceptionLimits {
            max_batch: args.perception.max_embed_batch,
        },
        ..ServiceLimits::default()
    };
    let encoder = match args.perception.encoder {
        Some(enc) => {
            let p = tokio::task::spawn_blocking(move || {
                Perception::load(&enc, threads, limits.perception)
            })
            .await??;
            tracing::info!(
                digest = p.package().digest(),
                load_ms = p.load_time().as_millis() as u64,
                intents = p.labels().len(),
                "encoder loaded"
            );
            Some(p)
        }
        None => None,
    };
    let policy = match &args.routing.policy {
        Some(path) => {
            let m = engine.model().package().manifest();
            let model = ModelInfo {
                layers: m.architecture.n_layer,
                split_points: m.split_points.clone(),
            };
            let p = DevicePolicy::load(
                path,
                model,
                split.is_some(),
                args.routing.prior,
                args.routing.decisions.as_deref(),
            )?;
            tracing::info!(policy = %path.display(), version = p.version(), "routing policy loaded");
            Some(p)
        }
        None => None,
    };
    let listener = server::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    // The first line on stdout is the bound address, for scripts and tests that ask for port 0.
    println!("listening on {addr}");
    tracing::info!(%addr, "serving seam.edge.v1.Assistant");
    server::serve(
        engine,
        encoder,
        listener,
        limits,
        split,
        policy,
        shutdown_signal(),
    )
    .await?;
    tracing::info!("drained, bye");
    Ok(())
}

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
