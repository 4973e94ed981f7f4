//! A user-space link emulator for tests and benchmarks on loopback, where the kernel has no
//! netem: relays for TCP (gRPC over HTTP/2) and UDP (QUIC) that add one-way delay, jitter, a
//! bandwidth cap and datagram loss, each direction on its own.
//!
//! The decisions live in [`shaper`] (no sockets, no clock: "a piece arrived at `now`, deliver it
//! at `t`"); [`TcpRelay`] and [`UdpRelay`] only move bytes at the times it names.
//!
//! ```no_run
//! # async fn demo(upstream: std::net::SocketAddr) -> std::io::Result<()> {
//! use seam_tests::link_emulator::{LinkEmulator, LinkProfile};
//! use std::time::Duration;
//!
//! // 40 ms round trip, 20 Mbit/s each way.
//! let wan = LinkProfile {
//!     delay: Duration::from_millis(20),
//!     rate_bits_per_s: 20_000_000,
//!     ..LinkProfile::default()
//! };
//! let relay = LinkEmulator::tcp("127.0.0.1:0".parse().unwrap(), upstream, wan).await?;
//! // Dial relay.local_addr() instead of upstream; drop the handle to stop the relay.
//! # Ok(()) }
//! ```

mod handle;
mod impairment;
mod options;
mod profile;
pub mod shaper;
mod stats;
mod stream_pump;
mod tcp;
mod udp;
mod udp_mapping;

pub use handle::RelayHandle;
pub use impairment::Impairment;
pub use options::{DEFAULT_UDP_IDLE_TIMEOUT, RelayOptions};
pub use profile::{LinkProfile, ProfileError};
pub use shaper::{DatagramShaper, Direction, StreamShaper, Verdict};
pub use stats::LinkStats;
pub use tcp::TcpRelay;
pub use udp::UdpRelay;

use std::io;
use std::net::SocketAddr;

/// Attempts at finding a port free for both TCP and UDP when the caller lets the system pick.
const SHARED_PORT_ATTEMPTS: usize = 16;

/// Starts relays on the current tokio runtime.
#[derive(Debug)]
pub struct LinkEmulator;

impl LinkEmulator {
    /// A TCP relay from `listen` to `upstream` with default [`RelayOptions`].
    pub async fn tcp(
        listen: SocketAddr,
        upstream: SocketAddr,
        profile: LinkProfile,
    ) -> io::Result<RelayHandle> {
        TcpRelay::bind(listen, upstream, profile, RelayOptions::default())
            .await?
            .spawn()
    }

    /// A UDP relay from `listen` to `upstream` with default [`RelayOptions`].
    pub async fn udp(
        listen: SocketAddr,
        upstream: SocketAddr,
        profile: LinkProfile,
    ) -> io::Result<RelayHandle> {
        UdpRelay::bind(listen, upstream, profile, RelayOptions::default())
            .await?
            .spawn()
    }

    /// A TCP and a UDP relay on the same address and port (as gRPC and QUIC endpoints of one
    /// service often are). With port 0, a port free for both is searched for.
    pub async fn tcp_and_udp(
        listen: SocketAddr,
        upstream: SocketAddr,
        profile: LinkProfile,
        options: RelayOptions,
    ) -> io::Result<(RelayHandle, RelayHandle)> {
        let attempts = if listen.port() == 0 {
            SHARED_PORT_ATTEMPTS
        } else {
            1
        };
        let mut last_error = None;
        for _ in 0..attempts {
            let tcp = TcpRelay::bind(listen, upstream, profile, options).await?;
            match UdpRelay::bind(tcp.local_addr()?, upstream, profile, options).await {
                Ok(udp) => return Ok((tcp.spawn()?, udp.spawn()?)),
                Err(error) if error.kind() == io::ErrorKind::AddrInUse => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()))
    }
}
