//! ONNX models: the generated protobuf types of the ONNX format, a small graph builder over
//! them, and the sessions that run them.

mod builder;
mod pool;
pub mod qmatmul;
mod session;
pub mod skip_norm;

pub use builder::{Attr, Dim, ExternalData, GraphBuilder, MS_DOMAIN};
pub use pool::OrtPool;
pub use session::{session_from_file, session_from_memory};

/// The ONNX protobuf messages (generated from `onnx/onnx.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
