//! Transports of the split path: how the device reaches the cloud half of the model, straight
//! to a worker (`--worker`, inside a cluster or for benchmarks) or through the regional gateway
//! (`--gateway`, the fleet's way).

pub mod gateway;
pub mod worker;

pub use gateway::{GatewayEndpoint, GatewayLink};
pub use worker::{WorkerEndpoint, WorkerLink};

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
