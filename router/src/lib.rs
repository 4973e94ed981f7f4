//! `seam-router`, the regional gateway. Devices reach it over QUIC or gRPC with mTLS
//! ([`quic`], [`grpc`], both over the transport-free handlers of [`core`]); it distributes the
//! operators' routing [`policy`] ([`policy_store`]: hot reload, versions, push), admits split
//! sessions and relays their steps ([`relay`]) to a [`pool`] of cloud workers, and serves the
//! operators' [`admin`] API and Prometheus [`metrics`]. The policy evaluator is I/O-free and
//! shared with the edge agent, which also uses the device-side [`client`].

pub mod admin;
pub mod certs;
pub mod client;
pub mod config;
pub mod core;
pub mod dashboard;
pub mod error;
pub mod grpc;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod policy_store;
pub mod pool;
pub mod quic;
pub mod relay;
pub mod serve;
pub mod sessions;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod tls;

pub use error::{Error, Result};
