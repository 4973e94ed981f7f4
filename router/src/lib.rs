//! `seam-router`, the regional gateway. This crate holds the operators' routing policy: an
//! I/O-free evaluator of ordered rules (CEL conditions over the request features, actions
//! `local`, `split`, `split(K)`, `reject`, `auto`) with the cost model behind `auto`, shared by
//! the gateway and the edge agent, and the replay of recorded decisions against a new policy.

pub mod error;
pub mod policy;

pub use error::{Error, Result};
