//! Running a model package on the device: KV cache, attention, sampling, generation.

pub mod attention;
pub mod budget;
pub mod chat_format;
pub mod context;
mod continuation;
pub mod cpu;
pub mod draft;
pub mod embedding;
pub mod engine;
pub mod kv_cache;
pub mod model;
pub mod perplexity;
pub mod rope;
mod row_paths;
pub mod sampler;
pub mod split;
pub mod text_stream;
