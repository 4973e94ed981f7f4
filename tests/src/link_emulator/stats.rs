//! Counters of a relay: updated by its tasks, read as a [`LinkStats`] snapshot from the handle.

use super::shaper::Direction;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What a relay has done so far. "Up" is client to upstream, "down" the way back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// TCP connections closed because the upstream could not be dialled.
    pub connect_failures: u64,
    /// Bytes (TCP payload or UDP datagram payload) delivered towards the upstream.
    pub bytes_up: u64,
    /// Bytes delivered back towards clients.
    pub bytes_down: u64,
    /// Datagrams delivered towards the upstream.
    pub datagrams_up: u64,
    /// Datagrams delivered back towards clients.
    pub datagrams_down: u64,
    /// Datagrams dropped by the loss probability, both directions.
    pub datagrams_lost: u64,
    /// Datagrams dropped because their direction's queue was full, both directions.
    pub datagrams_overflow: u64,
    /// UDP client mappings created.
    pub mappings_opened: u64,
    /// UDP client mappings expired after being idle.
    pub mappings_expired: u64,
    /// Most bytes one direction of one connection or mapping held at once.
    pub peak_queued_bytes: u64,
}

/// The live counters behind [`LinkStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections: AtomicU64,
    pub connect_failures: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    datagrams_up: AtomicU64,
    datagrams_down: AtomicU64,
    pub datagrams_lost: AtomicU64,
    pub datagrams_overflow: AtomicU64,
    pub mappings_opened: AtomicU64,
    pub mappings_expired: AtomicU64,
    peak_queued_bytes: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Counts `bytes` delivered in `direction`.
    pub fn delivered_bytes(&self, direction: Direction, bytes: usize) {
        let counter = match direction {
            Direction::Up => &self.bytes_up,
            Direction::Down => &self.bytes_down,
        };
        Self::add(counter, bytes as u64);
    }

    /// Counts one datagram of `bytes` delivered in `direction`.
    pub fn delivered_datagram(&self, direction: Direction, bytes: usize) {
        self.delivered_bytes(direction, bytes);
        let counter = match direction {
            Direction::Up => &self.datagrams_up,
            Direction::Down => &self.datagrams_down,
        };
        Self::add(counter, 1);
    }

    /// Records that one direction held `bytes` at once.
    pub fn queued(&self, bytes: usize) {
        self.peak_queued_bytes.fetch_max(bytes as u64, Relaxed);
    }

    pub fn snapshot(&self) -> LinkStats {
        LinkStats {
            connections: self.connections.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            bytes_up: self.bytes_up.load(Relaxed),
            bytes_down: self.bytes_down.load(Relaxed),
            datagrams_up: self.datagrams_up.load(Relaxed),
            datagrams_down: self.datagrams_down.load(Relaxed),
            datagrams_lost: self.datagrams_lost.load(Relaxed),
            datagrams_overflow: self.datagrams_overflow.load(Relaxed),
            mappings_opened: self.mappings_opened.load(Relaxed),
            mappings_expired: self.mappings_expired.load(Relaxed),
            peak_queued_bytes: self.peak_queued_bytes.load(Relaxed),
        }
    }
}
