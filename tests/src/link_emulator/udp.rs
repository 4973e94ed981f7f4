//! The UDP relay: one listening socket for all clients; each client address gets a mapping with
//! its own upstream socket (like a NAT), shaped both ways, and dropped after being idle.

use super::handle::{RelayHandle, Shutdown};
use super::impairment::Impairment;
use super::options::RelayOptions;
use super::profile::LinkProfile;
use super::shaper::{DatagramShaper, Direction};
use super::stats::Counters;
use super::udp_mapping::{Arrival, LastSeen, MAX_DATAGRAM, Mapping};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, debug, debug_span, warn};

/// Datagrams from one client waiting for its mapping task; beyond this they are dropped (counted
/// as overflow), so a stalled mapping cannot make the relay hold unbounded memory.
const INBOX_DATAGRAMS: usize = 256;

/// A bound, not yet running UDP relay.
#[derive(Debug)]
pub struct UdpRelay {
    socket: Arc<UdpSocket>,
    upstream: SocketAddr,
    profile: LinkProfile,
    options: RelayOptions,
    counters: Arc<Counters>,
    impairment: Option<Arc<Impairment>>,
}

/// The main loop's view of a mapping.
struct MappingEntry {
    inbox: mpsc::Sender<Arrival>,
    last_seen: LastSeen,
}

impl UdpRelay {
    /// Binds `listen` (port 0 picks a free one) for a relay to `upstream`; rejects an invalid
    /// profile.
    pub async fn bind(
        listen: SocketAddr,
        upstream: SocketAddr,
        profile: LinkProfile,
        options: RelayOptions,
    ) -> io::Result<UdpRelay> {
        profile
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(UdpRelay {
            socket: Arc::new(UdpSocket::bind(listen).await?),
            upstream,
            profile,
            options,
            counters: Arc::default(),
            impairment: None,
        })
    }

    /// Drops datagrams (both ways) while `impairment` says so, besides the profile's loss.
    pub fn with_impairment(mut self, impairment: Arc<Impairment>) -> UdpRelay {
        self.impairment = Some(impairment);
        self
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Runs the relay on the current tokio runtime until the handle stops it or is dropped.
    pub fn spawn(self) -> io::Result<RelayHandle> {
        let addr = self.local_addr()?;
        let counters = self.counters.clone();
        Ok(RelayHandle::spawn(addr, counters, |shutdown| {
            self.run(shutdown)
                .instrument(debug_span!("udp_relay", listen = %addr))
        }))
    }

    async fn run(self, mut shutdown: Shutdown) {
        let epoch = Instant::now();
        let mut mappings: HashMap<SocketAddr, MappingEntry> = HashMap::new();
        let mut tasks = JoinSet::new();
        let idle = self.options.udp_idle_timeout;
        let mut sweep = tokio::time::interval(sweep_period(idle));
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut buf = vec![0; MAX_DATAGRAM];
        loop {
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, client)) => {
                        let arrival = Arrival { at: Instant::now(), data: buf[..n].to_vec() };
                        self.forward(client, arrival, &mut mappings, &mut tasks, epoch).await;
                    }
                    // Linux reports no ICMP errors on an unconnected socket; anything else is
                    // transient (e.g. out of buffers) and the datagram is simply gone.
                    Err(error) => debug!(%error, "receive failed"),
                },
                _ = sweep.tick() => {
                    let before = mappings.len();
                    mappings.retain(|_, entry| entry.last_seen.idle() < idle);
                    let expired = before - mappings.len();
                    if expired > 0 {
                        debug!(expired, "idle mappings dropped");
                        Counters::add(&self.counters.mappings_expired, expired as u64);
                    }
                },
                Some(_) = tasks.join_next() => {}
                () = shutdown.requested() => break,
            }
        }
        // Dropping the mapping tasks closes their upstream sockets.
        tasks.shutdown().await;
    }

    /// Hands a client's datagram to its mapping, opening one for a new (or returning) client.
    async fn forward(
        &self,
        client: SocketAddr,
        arrival: Arrival,
        mappings: &mut HashMap<SocketAddr, MappingEntry>,
        tasks: &mut JoinSet<()>,
        epoch: Instant,
    ) {
        let live = mappings
            .get(&client)
            .is_some_and(|entry| !entry.inbox.is_closed());
        if !live {
            let Some(entry) = self.open_mapping(client, epoch, tasks).await else {
                return;
            };
            mappings.insert(client, entry);
        }
        let entry = &mappings[&client];
        entry.last_seen.touch();
        match entry.inbox.try_send(arrival) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => Counters::add(&self.counters.datagrams_overflow, 1),
            // The task ended on its own (it only does when it panicked): the next datagram
            // opens a fresh mapping.
            Err(TrySendError::Closed(_)) => debug!(%client, "mapping gone, datagram dropped"),
        }
    }

    /// Opens the upstream socket of a new client and starts its task.
    async fn open_mapping(
        &self,
        client: SocketAddr,
        epoch: Instant,
        tasks: &mut JoinSet<()>,
    ) -> Option<MappingEntry> {
        let upstream = match self.upstream_socket().await {
            Ok(socket) => socket,
            Err(error) => {
                warn!(%error, %client, "cannot open an upstream socket, datagram dropped");
                return None;
            }
        };
        // Mappings are numbered in the order they open, which seeds their random draws.
        let flow = self.counters.mappings_opened.fetch_add(1, Relaxed);
        let (inbox, rx) = mpsc::channel(INBOX_DATAGRAMS);
        let last_seen = LastSeen::new(epoch);
        let limit = self
            .options
            .queue_bytes
            .unwrap_or_else(|| self.profile.queue_bytes());
        let mapping = Mapping {
            client,
            listen: self.socket.clone(),
            upstream,
            up: DatagramShaper::with_limit(self.profile, flow, Direction::Up, limit),
            down: DatagramShaper::with_limit(self.profile, flow, Direction::Down, limit),
            last_seen: last_seen.clone(),
            counters: self.counters.clone(),
            impairment: self.impairment.clone(),
        };
        debug!(%client, flow, "mapping opened");
        tasks.spawn(
            mapping
                .run(rx)
                .instrument(debug_span!("udp_mapping", flow, client = %client)),
        );
        Some(MappingEntry { inbox, last_seen })
    }

    async fn upstream_socket(&self) -> io::Result<UdpSocket> {
        let any: SocketAddr = if self.upstream.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(any).await?;
        socket.connect(self.upstream).await?;
        Ok(socket)
    }
}

/// How often idle mappings are looked for: a quarter of the idle time, within [10 ms, 1 s].
fn sweep_period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}
