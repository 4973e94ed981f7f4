//! Seam's cloud worker: continues the devices' forward passes from their split layer K. It runs
//! layers `[K, N)` and the LM head for many sessions at once (rows of different sessions are
//! batched through the same graphs), keeps an int8 KV cache per session within a process-wide
//! byte budget, and answers each step with the next token.
//!
//! The model runtime (segments, KV cache, attention, sampler) is the edge agent's
//! (`seam_edge::runtime`): both sides must compute the same function.

pub mod config;
pub mod error;
pub mod executor;
pub mod metrics;
pub mod queue;
pub mod server;
pub mod service;
pub mod sessions;
pub mod step;
pub mod verify;

pub use error::{Error, Result};
