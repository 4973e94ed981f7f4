//! The worker's configuration: a TOML file (`seam-worker serve --config FILE`), command-line
//! flags over it, validated once at start-up.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `seam-worker serve` needs. Unknown fields are an error, so a typo is caught.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Model package directory (`seam-edge model import`).
    pub model: PathBuf,
    /// gRPC listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address (none: not served).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Process-wide byte budget of all sessions' KV caches.
    #[serde(default = "default_kv_budget_bytes")]
    pub kv_budget_bytes: u64,
    /// Most sessions open at once.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// A session with no step for this long is dropped.
    #[serde(default = "default_idle_ttl_ms")]
    pub idle_ttl_ms: u64,
    /// A session with no step for this long may be evicted to make room for a new one.
    #[serde(default = "default_evict_after_ms")]
    pub evict_after_ms: u64,
    /// Longest lifetime of a session (and the default when a device asks for none).
    #[serde(default = "default_max_session_ms")]
    pub max_session_ms: u64,
    /// Largest step message accepted, bytes; larger ones are refused (RESOURCE_EXHAUSTED).
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Most hidden-state rows in one step.
    #[serde(default = "default_max_step_rows")]
    pub max_step_rows: usize,
    /// Most rows computed together in one batch (across sessions).
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: usize,
    /// Most steps waiting for the model; more are refused with a retry hint.
    #[serde(default = "default_max_queued_steps")]
    pub max_queued_steps: usize,
    /// Most drafts per step a session may send.
    #[serde(default = "default_max_draft_tokens")]
    pub max_draft_tokens: u32,
    /// Deepest chain the worker drafts through its own layers after a greedy step when the
    /// package has a state predictor for the session's split layer (one pass of layers
    /// `[K, N)` per draft); 0 turns the worker's drafts off.
    #[serde(default = "default_proposal_depth")]
    pub proposal_depth: usize,
    /// ONNX Runtime intra-op threads (0 = all cores).
    #[serde(default)]
    pub threads: usize,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 50061))
}
fn default_kv_budget_bytes() -> u64 {
    1 << 30
}
fn default_max_sessions() -> usize {
    256
}
fn default_idle_ttl_ms() -> u64 {
    120_000
}
fn default_evict_after_ms() -> u64 {
    2_000
}
fn default_max_session_ms() -> u64 {
    600_000
}
fn default_max_frame_bytes() -> usize {
    4 << 20
}
fn default_max_step_rows() -> usize {
    512
}
fn default_max_batch_rows() -> usize {
    512
}
fn default_max_queued_steps() -> usize {
    1024
}
fn default_max_draft_tokens() -> u32 {
    16
}
fn default_proposal_depth() -> usize {
    6
}

impl WorkerConfig {
    /// Defaults for everything but the package.
    pub fn with_model(model: PathBuf) -> WorkerConfig {
        WorkerConfig {
            model,
            listen: default_listen(),
            metrics_listen: None,
            kv_budget_bytes: default_kv_budget_bytes(),
            max_sessions: default_max_sessions(),
            idle_ttl_ms: default_idle_ttl_ms(),
            evict_after_ms: default_evict_after_ms(),
            max_session_ms: default_max_session_ms(),
            max_frame_bytes: default_max_frame_bytes(),
            max_step_rows: default_max_step_rows(),
            max_batch_rows: default_max_batch_rows(),
            max_queued_steps: default_max_queued_steps(),
            max_draft_tokens: default_max_draft_tokens(),
            proposal_depth: default_proposal_depth(),
            threads: 0,
        }
    }

    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<WorkerConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Parses and validates the text of a TOML file.
    pub fn parse(text: &str) -> Result<WorkerConfig> {
        let cfg: WorkerConfig = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects values that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("kv_budget_bytes", self.kv_budget_bytes),
            ("max_sessions", self.max_sessions as u64),
            ("idle_ttl_ms", self.idle_ttl_ms),
            ("max_session_ms", self.max_session_ms),
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_step_rows", self.max_step_rows as u64),
            ("max_batch_rows", self.max_batch_rows as u64),
            ("max_queued_steps", self.max_queued_steps as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("{name} must be positive")));
        }
        if self.max_batch_rows < self.max_step_rows {
            return Err(Error::Config(format!(
                "max_batch_rows ({}) must be at least max_step_rows ({})",
                self.max_batch_rows, self.max_step_rows
            )));
        }
        if self.max_frame_bytes > 256 << 20 {
            return Err(Error::Config(format!(
                "max_frame_bytes {} is above 256 MiB",
                self.max_frame_bytes
            )));
        }
        if self.proposal_depth > self.max_draft_tokens as usize {
            return Err(Error::Config(format!(
                "proposal_depth ({}) must not exceed max_draft_tokens ({})",
                self.proposal_depth, self.max_draft_tokens
            )));
        }
        if self.max_draft_tokens as usize >= self.max_step_rows {
            return Err(Error::Config(format!(
                "max_draft_tokens ({}) must be below max_step_rows ({})",
                self.max_draft_tokens, self.max_step_rows
            )));
        }
        Ok(())
    }

    pub fn idle_ttl(&self) -> Duration {
        Duration::from_millis(self.idle_ttl_ms)
    }
    pub fn evict_after(&self) -> Duration {
        Duration::from_millis(self.evict_after_ms)
    }
    pub fn max_session(&self) -> Duration {
        Duration::from_millis(self.max_session_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_file_takes_the_defaults() {
        let cfg: WorkerConfig = toml::from_str("model = \"/pkg\"").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.max_frame_bytes, 4 << 20);
        assert_eq!(cfg.listen.port(), 50061);
    }

    #[test]
    fn unknown_fields_and_nonsense_values_are_refused_by_name() {
        assert!(
            toml::from_str::<WorkerConfig>("model = \"/p\"\nkv_budget = 5")
                .unwrap_err()
                .to_string()
                .contains("kv_budget")
        );
        let mut cfg = WorkerConfig::with_model("/p".into());
        cfg.max_sessions = 0;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("max_sessions")
        );
        let mut cfg = WorkerConfig::with_model("/p".into());
        cfg.max_batch_rows = 4;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("max_batch_rows")
        );
    }

    #[test]
    fn the_example_config_in_deploy_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/worker.toml");
        let cfg = WorkerConfig::from_file(&path).unwrap();
        assert!(cfg.kv_budget_bytes >= 1 << 20);
    }
}
