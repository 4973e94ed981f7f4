//! The one error type of `seam-edge`, and its single mapping onto gRPC status codes.

use std::time::Duration;

/// Everything that can go wrong on the device: importing, loading and running a model, and
/// serving the app API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (empty prompt, bad sampling parameters, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A bound was hit: KV byte budget, queue length, batch size. `retry_after` says when
    /// trying again may work.
    #[error("resource exhausted: {reason}")]
    ResourceExhausted {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The deadline of the request passed before it finished.
    #[error("deadline exceeded after {0:?}")]
    DeadlineExceeded(Duration),
    /// The caller went away or cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A GGUF file could not be read or is not supported.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// The KV cache refused an operation.
    #[error(transparent)]
    Kv(#[from] crate::runtime::kv_cache::KvError),
    /// Model package, ONNX Runtime loading, configuration, tensors from the wire.
    #[error(transparent)]
    Shared(#[from] seam_shared::Error),
    /// ONNX Runtime failed while building a session or running a graph.
    #[error("onnx runtime: {0}")]
    Ort(String),
    /// The tokenizer could not be built, loaded or run.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The cloud side (worker or gateway) could not be reached or broke the protocol.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The cloud side refused a request with this status.
    #[error("cloud: {message}")]
    Remote {
        code: tonic::Code,
        message: String,
        retry_after_ms: u64,
    },
    /// A model package is inconsistent with what the code needs.
    #[error("model package: {0}")]
    Package(String),
    /// Training the draft head failed.
    #[error("training the draft head: {0}")]
    Training(String),
    /// A safetensors checkpoint or its `config.json` is malformed or not supported.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A labelled data file (`text<TAB>label`) or label table is malformed or inconsistent.
    #[error("labelled data: {0}")]
    Dataset(String),
    /// The request needs a component this agent was started without (e.g. no encoder).
    #[error("not configured: {0}")]
    NotConfigured(String),
    /// The routing policy refused the request (rule and reason in the message).
    #[error("rejected by the routing policy: {0}")]
    Rejected(String),
    /// The gateway did not admit a split session; the request runs on the device.
    #[error("the gateway says go local: {reason}")]
    GoLocal { reason: String, retry_after_ms: u64 },
}

impl Error {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// The gRPC status for this error (the only place that decides it).
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Cancelled => Code::Cancelled,
            Error::Kv(_) => Code::InvalidArgument,
            Error::Shared(seam_shared::Error::TensorInvalid(_)) => Code::InvalidArgument,
            Error::Shared(seam_shared::Error::TensorTooLarge { .. }) => Code::ResourceExhausted,
            Error::Gguf(_)
            | Error::Package(_)
            | Error::Training(_)
            | Error::Shared(_)
            | Error::Checkpoint(_) => Code::FailedPrecondition,
            Error::Dataset(_) => Code::InvalidArgument,
            Error::NotConfigured(_) | Error::Rejected(_) => Code::FailedPrecondition,
            Error::Ort(_) | Error::Tokenizer(_) | Error::Io { .. } => Code::Internal,
            Error::Unavailable(_) | Error::GoLocal { .. } => Code::Unavailable,
            Error::Remote { code, .. } => *code,
        };
        let retry_ms = match self {
            Error::ResourceExhausted {
                retry_after: Some(d),
                ..
            } => d.as_millis() as u64,
            Error::Remote { retry_after_ms, .. } | Error::GoLocal { retry_after_ms, .. } => {
                *retry_after_ms
            }
            _ => 0,
        };
        seam_shared::retry_after::with_retry_after(
            tonic::Status::new(code, self.to_string()),
            retry_ms,
        )
    }
}

impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        Error::Ort(e.to_string())
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
