//! `seam-edge serve`: the app API on a local port until SIGTERM or Ctrl-C, then drain.

use super::{SplitArgs, load_engine};
use crate::runtime::kv_cache::KvDtype;
use crate::server::{self, ServiceLimits, SplitTarget};
use std::net::SocketAddr;
use std::path::Path;

/// Options of `seam-edge serve`.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    pub listen: SocketAddr,
    pub threads: usize,
    pub kv: KvDtype,
    pub kv_budget: usize,
    pub split: SplitArgs,
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
        });
    tracing::info!(
        digest = engine.model().package().digest(),
        load_ms = engine.model().load_time().as_millis() as u64,
        "model loaded"
    );
    let listener = server::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    // The first line on stdout is the bound address, for scripts and tests that ask for port 0.
    println!("listening on {addr}");
    tracing::info!(%addr, "serving seam.edge.v1.Assistant");
    server::serve(
        engine,
        listener,
        ServiceLimits::default(),
        split,
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
