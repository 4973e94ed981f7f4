//! `seam-edge serve`: the app API on a local port until SIGTERM or Ctrl-C, then drain.

use super::{SplitArgs, load_engine};
use crate::link::CloudEndpoint;
use crate::perception::{Perception, PerceptionLimits};
use crate::runtime::kv_cache::KvDtype;
use crate::server::routing::{DevicePolicy, LinkPrior};
use crate::server::{self, ServiceLimits, SplitTarget};
use seam_router::policy::{ModelInfo, Policy};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    pub context: super::ContextArgs,
    /// Prometheus `/metrics` listen address.
    pub metrics_listen: Option<SocketAddr>,
    /// OpenAI-compatible HTTP API listen address.
    pub http: Option<SocketAddr>,
    pub threads: usize,
    pub kv: KvDtype,
    pub kv_budget: usize,
    pub split: SplitArgs,
    pub perception: PerceptionArgs,
    pub routing: RoutingArgs,
}

pub async fn run(dir: &Path, args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.routing.decisions.is_none()
            || args.routing.policy.is_some()
            || args.split.gateway.is_some(),
        "--decisions needs a policy: --policy FILE, or --gateway to use the gateway's"
    );
    let dir = dir.to_path_buf();
    let (threads, kv, kv_budget) = (args.threads, args.kv, args.kv_budget);
    let mut engine =
        tokio::task::spawn_blocking(move || load_engine(&dir, threads, kv, kv_budget)).await??;
    args.context.apply(&mut engine)?;
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
    let m = engine.model().package().manifest();
    let model = ModelInfo {
        layers: m.architecture.n_layer,
        split_points: m.split_points.clone(),
    };
    let gateway = match split.as_ref().map(|t| &t.endpoint) {
        Some(CloudEndpoint::Gateway(g)) => Some(g.clone()),
        _ => None,
    };
    let policy = match (&args.routing.policy, &gateway) {
        (Some(path), _) => {
            let p = DevicePolicy::load(
                path,
                model,
                split.is_some(),
                args.routing.prior,
                args.routing.decisions.as_deref(),
            )?;
            tracing::info!(policy = %path.display(), version = p.version(), "routing policy loaded");
            Some(Arc::new(p))
        }
        (None, Some(g)) => {
            // No local file: the gateway's policy, or "local" until it can be fetched.
            let fetched = tokio::time::timeout(Duration::from_secs(5), async {
                let c = g.client().await?;
                c.get_policy(0)
                    .await
                    .map_err(|e| crate::error::Error::Unavailable(e.message().to_string()))
            })
            .await;
            let policy = match fetched {
                Ok(Ok(p)) if p.version > 0 => {
                    tracing::info!(version = p.version, "routing policy from the gateway");
                    Policy::parse(&p.policy_toml)?
                }
                other => {
                    tracing::warn!(outcome = ?other.map(|r| r.map(|p| p.version)), "no policy from the gateway yet; routing locally until it pushes one");
                    let k = model.split_points.iter().min().copied().unwrap_or(1);
                    Policy::parse(&format!(
                        "version = 0\ndefault_split = {k}\ndefault = \"local\"\n"
                    ))?
                }
            };
            let p = DevicePolicy::new(
                policy,
                model,
                true,
                args.routing.prior,
                args.routing.decisions.as_deref(),
            )?;
            Some(Arc::new(p))
        }
        (None, None) => None,
    };
    if let Some(g) = &gateway {
        g.spawn_background(policy.clone());
    }
    let metrics = match args.metrics_listen {
        Some(a) => Some(server::bind(a).await?),
        None => None,
    };
    if let Some(m) = &metrics {
        println!("listening metrics {}", m.local_addr()?);
    }
    let http = match args.http {
        Some(a) => Some(server::bind(a).await?),
        None => None,
    };
    if let Some(h) = &http {
        println!("listening http {}", h.local_addr()?);
    }
    let listener = server::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    // The last line before serving is the bound address, for scripts and tests that ask for
    // port 0 (the metrics and HTTP addresses come first, when served).
    println!("listening on {addr}");
    tracing::info!(%addr, "serving seam.edge.v1.Assistant");
    server::serve(
        engine,
        encoder,
        server::Listeners {
            api: listener,
            metrics,
            http,
        },
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
