//! Seam's on-device agent: imports GGUF checkpoints into model packages, runs them through ONNX
//! Runtime with an int8 KV cache, embeds and classifies prompts with a sentence encoder, and
//! serves the app API (`seam.edge.v1.Assistant`).

pub mod bert;
pub mod commands;
pub mod error;
pub mod gguf;
pub mod import;
pub mod link;
pub mod onnx;
pub mod perception;
pub mod runtime;
pub mod server;
pub mod tokenizer_build;

#[cfg(any(test, feature = "test-util"))]
pub mod reference;
#[cfg(any(test, feature = "test-util"))]
pub mod reference_bert;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use error::{Error, Result};
