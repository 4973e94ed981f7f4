//! The bodies of the `seam-edge` subcommands; `main.rs` only parses arguments.

pub mod ask;
pub mod bench;
pub mod bench_encoder;
pub mod generate;
pub mod model;
pub mod perception;
pub mod perplexity;
pub mod serve;

use crate::runtime::budget::KvBudget;
use crate::runtime::engine::Engine;
use crate::runtime::kv_cache::KvDtype;
use crate::runtime::model::{LoadOptions, Model};
use std::path::Path;

/// Default KV byte budget of the device process (256 MiB).
pub const DEFAULT_KV_BUDGET: usize = 256 << 20;

/// Loads the package in `dir` with every layer and the head, into an engine.
pub fn load_engine(
    dir: &Path,
    threads: usize,
    kv: KvDtype,
    budget: usize,
) -> crate::Result<Engine> {
    let model = Model::load(
        dir,
        &LoadOptions {
            threads,
            ..LoadOptions::default()
        },
    )?;
    Ok(Engine::new(model, kv, KvBudget::new(budget)))
}
