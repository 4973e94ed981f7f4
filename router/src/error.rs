//! The one error type of `seam-router`.

/// Everything the router refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A policy file that cannot be used; the message names the rule or field and the problem.
    #[error("policy: {0}")]
    Policy(String),
    /// A decision trace that cannot be read (line number in the message).
    #[error("trace: {0}")]
    Trace(String),
    /// Reading a file failed (the I/O error is part of the message, not a separate source,
    /// so that error chains do not print it twice).
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// A configuration file that cannot be used (the key and the problem in the message).
    #[error("config: {0}")]
    Config(String),
    /// Certificates or keys that cannot be made, read or used.
    #[error("tls: {0}")]
    Tls(String),
    /// A listener or connection that cannot be set up.
    #[error("{0}")]
    Net(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, error: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            error,
        }
    }
}

/// `Result` with the router's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
