//! One UDP client of the relay: its own socket to the upstream, a shaper and a delivery queue per
//! direction. Datagrams from the client arrive through the relay's main loop (already stamped
//! with their arrival time); datagrams from the upstream are read here. The task ends once its
//! inbox is closed (the mapping expired or the relay stops) and what it holds is delivered.

use super::impairment::Impairment;
use super::shaper::{DatagramShaper, Direction, Verdict};
use super::stats::Counters;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::debug;

/// Room for the largest UDP payload.
pub(crate) const MAX_DATAGRAM: usize = 65_536;

/// A datagram from the client, with the time the relay received it.
#[derive(Debug)]
pub(crate) struct Arrival {
    pub at: Instant,
    pub data: Vec<u8>,
}

/// The last time either direction of a mapping saw a datagram, in milliseconds since the relay
/// started; shared with the main loop, which expires idle mappings.
#[derive(Debug, Clone)]
pub(crate) struct LastSeen {
    epoch: Instant,
    millis: Arc<AtomicU64>,
}

impl LastSeen {
    pub fn new(epoch: Instant) -> LastSeen {
        let seen = LastSeen {
            epoch,
            millis: Arc::default(),
        };
        seen.touch();
        seen
    }

    pub fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(ms, Relaxed);
    }

    /// How long ago the last datagram was seen.
    pub fn idle(&self) -> std::time::Duration {
        let seen = std::time::Duration::from_millis(self.millis.load(Relaxed));
        self.epoch.elapsed().saturating_sub(seen)
    }
}

/// The sockets and shared state of one mapping.
pub(crate) struct Mapping {
    pub client: SocketAddr,
    /// The relay's listening socket: replies to the client leave from it.
    pub listen: Arc<UdpSocket>,
    /// Connected to the upstream.
    pub upstream: UdpSocket,
    pub up: DatagramShaper,
    pub down: DatagramShaper,
    pub last_seen: LastSeen,
    pub counters: Arc<Counters>,
    pub impairment: Option<Arc<Impairment>>,
}

impl Mapping {
    /// Runs until `inbox` is closed and every accepted datagram has been delivered.
    pub async fn run(self, mut inbox: mpsc::Receiver<Arrival>) {
        let Mapping {
            client,
            listen,
            upstream,
            up,
            down,
            last_seen,
            counters,
            impairment,
        } = self;
        let impaired = || impairment.as_ref().is_some_and(|i| i.drops());
        let mut up = Lane::new(up, Direction::Up);
        let mut down = Lane::new(down, Direction::Down);
        let mut buf = vec![0; MAX_DATAGRAM];
        let mut open = true;
        loop {
            let next = match (up.next_due(), down.next_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if !open && next.is_none() {
                return;
            }
            tokio::select! {
                arrival = inbox.recv(), if open => match arrival {
                    Some(_) if impaired() => Counters::add(&counters.datagrams_lost, 1),
                    Some(Arrival { at, data }) => up.accept(at, data, &counters),
                    None => open = false,
                },
                received = upstream.recv(&mut buf), if open => match received {
                    Ok(_) if impaired() => Counters::add(&counters.datagrams_lost, 1),
                    Ok(n) => {
                        last_seen.touch();
                        down.accept(Instant::now(), buf[..n].to_vec(), &counters);
                    }
                    // An ICMP "port unreachable" for an earlier datagram lands here.
                    Err(error) => debug!(%error, "upstream receive failed"),
                },
                () = sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    while let Some(data) = up.pop_due(now) {
                        match upstream.send(&data).await {
                            Ok(_) => counters.delivered_datagram(Direction::Up, data.len()),
                            Err(error) => debug!(%error, "send to upstream failed"),
                        }
                    }
                    while let Some(data) = down.pop_due(now) {
                        match listen.send_to(&data, client).await {
                            Ok(_) => counters.delivered_datagram(Direction::Down, data.len()),
                            Err(error) => debug!(%error, "send to client failed"),
                        }
                    }
                }
            }
        }
    }
}

/// One direction of a mapping: its shaper and the datagrams waiting for their time.
struct Lane {
    shaper: DatagramShaper,
    direction: Direction,
    queue: BinaryHeap<Reverse<Due>>,
    seq: u64,
}

impl Lane {
    fn new(shaper: DatagramShaper, direction: Direction) -> Lane {
        Lane {
            shaper,
            direction,
            queue: BinaryHeap::new(),
            seq: 0,
        }
    }

    fn accept(&mut self, at: Instant, data: Vec<u8>, counters: &Counters) {
        match self.shaper.on_datagram(at.into_std(), data.len()) {
            Verdict::Deliver(due) => {
                self.seq += 1;
                self.queue.push(Reverse(Due {
                    at: Instant::from_std(due),
                    seq: self.seq,
                    data,
                }));
                counters.queued(self.shaper.held_bytes(at.into_std()));
            }
            Verdict::Lost => Counters::add(&counters.datagrams_lost, 1),
            Verdict::Overflow => {
                debug!(direction = ?self.direction, "queue full, datagram dropped");
                Counters::add(&counters.datagrams_overflow, 1);
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(d)| d.at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next_due()? > now {
            return None;
        }
        self.queue.pop().map(|Reverse(d)| d.data)
    }
}

/// A datagram and its delivery time; ties go in arrival order.
struct Due {
    at: Instant,
    seq: u64,
    data: Vec<u8>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}
