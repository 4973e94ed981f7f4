//! Relay settings that are not properties of the link itself.

use std::time::Duration;

/// How long a UDP mapping lives without traffic in either direction, by default.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Buffering and lifetime settings of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOptions {
    /// Bytes one direction of a connection or mapping may hold; `None` takes the profile's
    /// [`LinkProfile::queue_bytes`](super::LinkProfile::queue_bytes). A stream relay stops
    /// reading at the limit (back-pressure), a datagram relay drops the tail.
    pub queue_bytes: Option<usize>,
    /// A UDP client mapping (and its upstream socket) is dropped after this long without a
    /// datagram in either direction.
    pub udp_idle_timeout: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            queue_bytes: None,
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
        }
    }
}
