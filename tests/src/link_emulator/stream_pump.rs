//! One direction of a byte stream through the emulated link: read, let the [`StreamShaper`]
//! schedule, write each chunk when it is due, pass the end of the stream on as a half-close.
//!
//! The reader takes room from a byte budget before each read and the writer gives it back once
//! the chunk is written, so a direction never holds more than its budget: when the far side is
//! slow or the link is saturated, the pump stops reading and the sender meets TCP flow control.

use super::shaper::{Direction, StreamShaper};
use super::stats::Counters;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, sleep_until};

/// A chunk read and scheduled, waiting for its delivery time. `data` is `None` for the end of the
/// stream.
struct Scheduled {
    due: Instant,
    data: Option<Vec<u8>>,
    _room: Option<OwnedSemaphorePermit>,
}

/// Sizes of one direction's buffering.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PumpLimits {
    /// Most bytes held between reading and writing.
    pub budget: usize,
    /// Largest chunk read (and shaped) at once; at most `budget`.
    pub segment: usize,
}

/// Moves bytes from `reader` to `writer` through `shaper` until the reader's end of stream has
/// been delivered (then shuts the writer down) or either side fails.
pub(crate) async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    mut shaper: StreamShaper,
    limits: PumpLimits,
    direction: Direction,
    counters: &Counters,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let segment = limits.segment.clamp(1, limits.budget.max(1));
    let budget = Arc::new(Semaphore::new(limits.budget.max(segment)));
    let held = AtomicUsize::new(0);
    let (tx, mut rx) = mpsc::unbounded_channel::<Scheduled>();

    let read = async {
        loop {
            let permits = u32::try_from(segment).unwrap_or(u32::MAX);
            let mut room = budget
                .clone()
                .acquire_many_owned(permits)
                .await
                .expect("the budget is never closed");
            let mut buf = vec![0; segment];
            let n = reader.read(&mut buf).await?;
            let due = Instant::from_std(shaper.on_chunk(Instant::now().into_std(), n));
            if n == 0 {
                // The writer may already be gone after a failure; try_join reports that error.
                let _ = tx.send(Scheduled {
                    due,
                    data: None,
                    _room: None,
                });
                return Ok::<(), io::Error>(());
            }
            buf.truncate(n);
            let room = room.split(n);
            counters.queued(held.fetch_add(n, Relaxed) + n);
            if tx
                .send(Scheduled {
                    due,
                    data: Some(buf),
                    _room: room,
                })
                .is_err()
            {
                return Ok(());
            }
        }
    };

    let write = async {
        while let Some(chunk) = rx.recv().await {
            sleep_until(chunk.due).await;
            match &chunk.data {
                Some(data) => {
                    writer.write_all(data).await?;
                    held.fetch_sub(data.len(), Relaxed);
                    counters.delivered_bytes(direction, data.len());
                }
                None => {
                    writer.shutdown().await?;
                    return Ok::<(), io::Error>(());
                }
            }
        }
        Ok(())
    };

    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::super::profile::LinkProfile;
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;
    use tokio::io::{ReadBuf, duplex};

    fn limits(budget: usize, segment: usize) -> PumpLimits {
        PumpLimits { budget, segment }
    }

    #[tokio::test]
    async fn chunks_arrive_after_the_delay_and_the_end_follows() {
        let profile = LinkProfile {
            delay: Duration::from_millis(25),
            ..LinkProfile::default()
        };
        let counters = Counters::default();
        let (mut client, relay_in) = duplex(4096);
        let (relay_out, mut server) = duplex(4096);
        let shaper = StreamShaper::new(profile, 0, Direction::Up);
        let pumping = pump(
            relay_in,
            relay_out,
            shaper,
            limits(65536, 1448),
            Direction::Up,
            &counters,
        );
        let peer = async {
            let start = Instant::now();
            client.write_all(b"hello").await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            (got, start.elapsed())
        };
        let (pumped, (got, elapsed)) = tokio::join!(pumping, peer);
        pumped.unwrap();
        assert_eq!(got, b"hello");
        assert!(elapsed >= Duration::from_millis(25), "{elapsed:?}");
        assert_eq!(counters.snapshot().bytes_up, 5);
    }

    #[tokio::test]
    async fn a_stalled_receiver_stops_the_reads_at_the_budget() {
        let counters = Counters::default();
        let (mut client, relay_in) = duplex(4096);
        let (relay_out, mut server) = duplex(4096);
        let shaper = StreamShaper::new(LinkProfile::default(), 0, Direction::Down);
        let pumping = pump(
            relay_in,
            relay_out,
            shaper,
            limits(16 * 1024, 1024),
            Direction::Down,
            &counters,
        );
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = Arc::new(AtomicUsize::new(0));
        let sender = {
            let payload = payload.clone();
            let sent = sent.clone();
            async move {
                for piece in payload.chunks(1000) {
                    client.write_all(piece).await.unwrap();
                    sent.fetch_add(piece.len(), Relaxed);
                }
                client.shutdown().await.unwrap();
            }
        };
        let receiver = async {
            // Nobody reads for a while: the sender gets stuck after budget + pipe buffers. (The
            // bound below holds at any moment; the pause only gives the stall time to happen.)
            tokio::time::sleep(Duration::from_millis(100)).await;
            let stuck_at = sent.load(Relaxed);
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            (stuck_at, got)
        };
        let (pumped, (), (stuck_at, got)) = tokio::join!(pumping, sender, receiver);
        pumped.unwrap();
        assert!(stuck_at <= 16 * 1024 + 2 * 4096 + 1000, "sent {stuck_at}");
        assert!(stuck_at < payload.len());
        assert!(counters.snapshot().peak_queued_bytes <= 16 * 1024);
        assert!(got == payload, "bytes changed on the way");
    }

    /// A reader that fails, like a socket reset by its peer.
    struct Broken;

    impl AsyncRead for Broken {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }

    #[tokio::test]
    async fn a_read_error_ends_the_pump_with_that_error() {
        let counters = Counters::default();
        let (relay_out, _server) = duplex(64);
        let shaper = StreamShaper::new(LinkProfile::default(), 0, Direction::Up);
        let err = pump(
            Broken,
            relay_out,
            shaper,
            limits(4096, 1024),
            Direction::Up,
            &counters,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn a_write_error_ends_the_pump() {
        let counters = Counters::default();
        let (mut client, relay_in) = duplex(4096);
        let (relay_out, server) = duplex(64);
        drop(server);
        client.write_all(b"to nobody").await.unwrap();
        let shaper = StreamShaper::new(LinkProfile::default(), 0, Direction::Up);
        let result = pump(
            relay_in,
            relay_out,
            shaper,
            limits(4096, 1024),
            Direction::Up,
            &counters,
        )
        .await;
        assert!(result.is_err());
    }
}
