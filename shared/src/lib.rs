//! Seam's shared library: the wire contract (generated from `proto/`), the tensor codec, the model-package
//! format, ONNX Runtime loading and telemetry set-up. No policy and no business rules live here.

pub mod child;
pub mod error;
pub mod huge_pages;
pub mod malloc;
pub mod metrics_http;
pub mod ort_env;
pub mod package;
pub mod proto;
pub mod reflection;
pub mod retry_after;
pub mod telemetry;
pub mod tensor;

pub use error::{Error, Result};
