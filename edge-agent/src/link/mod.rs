//! Transports of the split path: how the device reaches the cloud half of the model.

pub mod worker;

pub use worker::WorkerLink;
