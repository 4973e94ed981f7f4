//! The TCP relay: accepts clients, dials the upstream for each, and pumps both directions through
//! their own shapers. A clean end of stream is passed on as a half-close once its bytes are
//! delivered; a failure on either side resets both connections.

use super::handle::{RelayHandle, Shutdown};
use super::options::RelayOptions;
use super::profile::LinkProfile;
use super::shaper::{Direction, StreamShaper};
use super::stats::Counters;
use super::stream_pump::{PumpLimits, pump};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, debug_span, warn};

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A bound, not yet running TCP relay.
#[derive(Debug)]
pub struct TcpRelay {
    listener: TcpListener,
    upstream: SocketAddr,
    profile: LinkProfile,
    limits: PumpLimits,
    counters: Arc<Counters>,
}

impl TcpRelay {
    /// Binds `listen` (port 0 picks a free one) for a relay to `upstream`; rejects an invalid
    /// profile.
    pub async fn bind(
        listen: SocketAddr,
        upstream: SocketAddr,
        profile: LinkProfile,
        options: RelayOptions,
    ) -> io::Result<TcpRelay> {
        profile
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(listen).await?;
        let budget = options.queue_bytes.unwrap_or_else(|| profile.queue_bytes());
        Ok(TcpRelay {
            listener,
            upstream,
            profile,
            limits: PumpLimits {
                budget,
                segment: profile.segment_bytes().min(budget),
            },
            counters: Arc::default(),
        })
    }

    /// The address clients dial.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs the relay on the current tokio runtime until the handle stops it or is dropped.
    pub fn spawn(self) -> io::Result<RelayHandle> {
        let addr = self.local_addr()?;
        let counters = self.counters.clone();
        Ok(RelayHandle::spawn(addr, counters, |shutdown| {
            self.run(shutdown)
                .instrument(debug_span!("tcp_relay", listen = %addr))
        }))
    }

    async fn run(self, mut shutdown: Shutdown) {
        let mut connections = JoinSet::new();
        let mut next_flow = 0u64;
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((client, peer)) => {
                        let flow = next_flow;
                        next_flow += 1;
                        Counters::add(&self.counters.connections, 1);
                        let span = debug_span!("tcp_conn", conn = flow, client = %peer);
                        connections.spawn(
                            relay_connection(
                                client,
                                self.upstream,
                                self.profile,
                                self.limits,
                                flow,
                                self.counters.clone(),
                            )
                            .instrument(span),
                        );
                    }
                    Err(error) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(_) = connections.join_next() => {}
                () = shutdown.requested() => break,
            }
        }
        // Dropping every connection closes its two sockets.
        connections.shutdown().await;
    }
}

/// Relays one accepted client until both directions have ended or one has failed.
async fn relay_connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    profile: LinkProfile,
    limits: PumpLimits,
    flow: u64,
    counters: Arc<Counters>,
) {
    let mut server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(error) => {
            warn!(%error, %upstream, "upstream unreachable, resetting the client");
            Counters::add(&counters.connect_failures, 1);
            let _ = client.set_zero_linger();
            return;
        }
    };
    // Latency is the link's business: no Nagle delay on top of it.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    debug!("relaying");
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let up = pump(
        client_read,
        server_write,
        StreamShaper::new(profile, flow, Direction::Up),
        limits,
        Direction::Up,
        &counters,
    );
    let down = pump(
        server_read,
        client_write,
        StreamShaper::new(profile, flow, Direction::Down),
        limits,
        Direction::Down,
        &counters,
    );
    match tokio::try_join!(up, down) {
        Ok(_) => debug!("closed"),
        Err(error) => {
            debug!(%error, "failed, resetting both sides");
            // An abortive close (RST) tells each peer that the other side failed.
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
        }
    }
}
