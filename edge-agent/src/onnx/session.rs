//! ONNX Runtime sessions on the process-wide environment (one shared thread pool, see
//! [`seam_shared::ort_env`]) with full graph optimisation.

use crate::error::{Error, Result};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use std::path::Path;

fn builder() -> Result<SessionBuilder> {
    let env = seam_shared::ort_env::environment()?;
    Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| Error::Ort(e.to_string()))
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
