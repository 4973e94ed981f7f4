//! ONNX Runtime sessions on the process-wide environment (one shared thread pool, see
//! [`seam_shared::ort_env`]) with full graph optimisation and Seam's operators
//! ([`super::qmatmul`]).

use crate::error::{Error, Result};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Environment variable naming a directory where every session writes ONNX Runtime's profile
/// (a JSON trace of each run and node, `PREFIX_DATE.json`) when it closes;
/// `scripts/ort-profile.py DIR` sums it per operator and node.
pub const PROFILE_ENV: &str = "SEAM_ORT_PROFILE";

fn builder() -> Result<SessionBuilder> {
    let env = seam_shared::ort_env::environment()?;
    let ops = super::qmatmul::domain().map_err(|e| Error::Ort(e.to_string()))?;
    let builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| Error::Ort(e.to_string()))?
        .with_operators(ops)
        .map_err(|e| Error::Ort(e.to_string()))?;
    match std::env::var_os(PROFILE_ENV) {
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(|e| {
                Error::Ort(format!(
                    "{PROFILE_ENV}={}: cannot create it: {e}",
                    dir.display()
                ))
            })?;
            static SESSIONS: AtomicUsize = AtomicUsize::new(0);
            let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
            let prefix = Path::new(&dir).join(format!("{}-session{n}", std::process::id()));
            builder
                .with_profiling(prefix)
                .map_err(|e| Error::Ort(format!("{PROFILE_ENV}={}: {e}", dir.display())))
        }
        None => Ok(builder),
    }
}

/// A session for the graph in `path`; errors name the file.
pub fn session_from_file(path: &Path) -> Result<Session> {
    let fail = |e: &dyn std::fmt::Display| Error::Ort(format!("{}: {e}", path.display()));
    builder()
        .map_err(|e| fail(&e))?
        .commit_from_file(path)
        .map_err(|e| fail(&e))
}

/// A session for a graph held in memory whose nodes include the operators of `domain`.
pub fn session_with_operators(
    bytes: &[u8],
    domain: ort::operator::OperatorDomain,
) -> Result<Session> {
    builder()?
        .with_operators(domain)
        .map_err(|e| Error::Ort(e.to_string()))?
        .commit_from_memory(bytes)
        .map_err(|e| Error::Ort(e.to_string()))
}

/// A session for a graph held in memory.
pub fn session_from_memory(bytes: &[u8]) -> Result<Session> {
    Ok(builder()?.commit_from_memory(bytes)?)
}
