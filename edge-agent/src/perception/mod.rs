//! Perception on the device: sentence embeddings (a BERT encoder through ONNX Runtime) and intent
//! classification (a linear head trained at import time), the features the routing policy
//! reads before anything leaves the device.

pub mod classifier;
pub mod dataset;
pub mod encoder;
pub mod evaluate;
pub mod head;
pub mod lbfgs;
pub mod train;

pub use classifier::{Classification, IntentScore, Perception, PerceptionLimits};
pub use encoder::{Embedding, Encoder};
