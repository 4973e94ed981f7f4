//! The one error type of `seam-worker`, and its single mapping onto gRPC status codes.

use std::time::Duration;

/// Everything a worker refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed request: bad tensor, split layer that is not a split point, bad sampling.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An unknown session.
    #[error("not found: {0}")]
    NotFound(String),
    /// A session id already open with other parameters.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The request does not fit the worker's state: another package, a position that is not the
    /// session's KV length.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A bound was hit (KV budget, sessions, queue, frame size); `retry_after` says when trying
    /// again may work.
    #[error("resource exhausted: {reason}")]
    ResourceExhausted {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The worker is draining.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The configuration is invalid (field named in the message).
    #[error("config: {0}")]
    Config(String),
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] seam_edge::Error),
}

impl Error {
    /// The gRPC code for this error (the only place that decides it).
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidArgument(_) | Error::Config(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Model(e) => e.to_status().code(),
        }
    }

    /// Milliseconds after which a retry may succeed, when known.
    pub fn retry_after_ms(&self) -> u64 {
        match self {
            Error::ResourceExhausted {
                retry_after: Some(d),
                ..
            } => d.as_millis().max(1) as u64,
            _ => 0,
        }
    }

    /// The status of a failed unary call, with `retry-after-ms` metadata when known.
    pub fn to_status(&self) -> tonic::Status {
        seam_shared::retry_after::with_retry_after(
            tonic::Status::new(self.code(), self.to_string()),
            self.retry_after_ms(),
        )
    }

    /// The in-stream form of a failed step.
    pub fn to_step_error(&self) -> seam_shared::proto::common::StepError {
        seam_shared::proto::common::StepError {
            code: self.code() as i32,
            message: self.to_string(),
            retry_after_ms: self.retry_after_ms(),
        }
    }
}

impl From<seam_shared::Error> for Error {
    fn from(e: seam_shared::Error) -> Self {
        match e {
            seam_shared::Error::TensorInvalid(_) => Error::InvalidArgument(e.to_string()),
            seam_shared::Error::TensorTooLarge { .. } => Error::ResourceExhausted {
                reason: e.to_string(),
                retry_after: None,
            },
            other => Error::Model(other.into()),
        }
    }
}

impl From<seam_edge::runtime::kv_cache::KvError> for Error {
    fn from(e: seam_edge::runtime::kv_cache::KvError) -> Self {
        Error::Model(e.into())
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
