//! Tracing set-up shared by the binaries: structured logs on stderr, filtered by `SEAM_LOG`
//! (same syntax as `RUST_LOG`), optionally as JSON lines.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `default_filter` applies when `SEAM_LOG` is unset.
pub fn init(default_filter: &str, json: bool) {
    let filter =
        EnvFilter::try_from_env("SEAM_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.compact().try_init()
    };
}
