//! The running side of a relay: where it listens, what it counted, and how it stops.

use super::stats::{Counters, LinkStats};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running relay. Dropping it stops the relay (its tasks are aborted, so its sockets close
/// shortly after); [`RelayHandle::stop`] stops it and waits until every socket is closed.
#[derive(Debug)]
pub struct RelayHandle {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// What a relay's main loop watches to learn that it must stop.
#[derive(Debug)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Completes once a stop is asked for or the handle is gone.
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

impl RelayHandle {
    /// Spawns the relay's main loop `run` on the current runtime.
    pub(crate) fn spawn<F, Fut>(addr: SocketAddr, counters: Arc<Counters>, run: F) -> RelayHandle
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, watched) = watch::channel(false);
        let task = tokio::spawn(run(Shutdown(watched)));
        RelayHandle {
            addr,
            counters,
            stop,
            task,
        }
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the relay's counters.
    pub fn stats(&self) -> LinkStats {
        self.counters.snapshot()
    }

    /// Stops accepting, drops every connection or mapping (peers see their connections close),
    /// and returns once all of the relay's sockets are closed.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
