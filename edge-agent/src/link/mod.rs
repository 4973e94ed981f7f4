//! Transports of the split path: how the device reaches the cloud half of the model, straight
//! to a worker (`--worker`, inside a cluster or for benchmarks) or through the regional gateway
//! (`--gateway`, the fleet's way).

pub mod gateway;
pub mod worker;

pub use gateway::{GatewayEndpoint, GatewayLink};
pub use worker::{WorkerEndpoint, WorkerLink};

use crate::error::Error;
use crate::runtime::split::SplitLink;
use tokio::runtime::Handle;

/// Where split requests go.
#[derive(Debug, Clone)]
pub enum CloudEndpoint {
    Worker(Box<WorkerEndpoint>),
    Gateway(GatewayEndpoint),
}

impl CloudEndpoint {
    /// A link for one request; its I/O runs on `handle`.
    pub fn link(&self, handle: Handle) -> Box<dyn SplitLink + Send> {
        match self {
            CloudEndpoint::Worker(w) => Box::new(w.link(handle)),
            CloudEndpoint::Gateway(g) => Box::new(g.link(handle)),
        }
    }
}

/// A failed call to the cloud side as the engine's error: unreachable peers become
/// [`Error::Unavailable`] (the request may finish on the device), refusals keep their code and
/// `retry-after-ms` hint.
pub(crate) fn remote_error(peer: &str, e: &tonic::Status) -> Error {
    let retry_after_ms = seam_shared::retry_after::retry_after_ms(e);
    match e.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            Error::Unavailable(format!("{peer}: {}", e.message()))
        }
        code => Error::Remote {
            code,
            message: e.message().to_string(),
            retry_after_ms,
        },
    }
}
