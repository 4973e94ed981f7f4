//! The one error type of `seam-shared`.

use std::path::PathBuf;

/// Errors raised by the shared library: model packages, ONNX Runtime loading, configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the package or a configuration could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not valid TOML or does not have the expected fields.
    #[error("{path}: invalid manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    /// A file listed in the manifest is missing or its content does not match its SHA-256.
    #[error("model package {dir}: {reason}")]
    Integrity { dir: PathBuf, reason: String },
    /// A tensor from the wire (or one about to be put on it) is malformed: dtype, shape, data
    /// length, scales or non-finite values.
    #[error("invalid tensor: {0}")]
    TensorInvalid(String),
    /// A tensor from the wire holds more values than the receiver accepts.
    #[error("tensor of shape {shape:?} exceeds the limit of {limit} values")]
    TensorTooLarge { shape: Vec<u64>, limit: usize },
    /// The ONNX Runtime shared library could not be found or loaded.
    #[error("onnx runtime: {0}")]
    Runtime(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
