//! BERT sentence encoders (all-MiniLM-L6-v2 by default): the configuration and the weights of a
//! Hugging Face checkpoint directory (`config.json`, `model.safetensors`), validated before use.

pub mod config;
pub mod weights;

pub use config::BertConfig;
pub use weights::{BertLayer, BertWeights};
