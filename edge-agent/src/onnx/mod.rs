//! Writing ONNX models: the generated protobuf types of the ONNX format and a small graph
//! builder over them.

mod builder;

pub use builder::{Attr, Dim, GraphBuilder, MS_DOMAIN};

/// The ONNX protobuf messages (generated from `onnx/onnx.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
