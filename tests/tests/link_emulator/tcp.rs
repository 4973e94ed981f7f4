//! TCP through the relay: integrity and order, delay, rate, bounded queue, resets, stopping.

use super::support::{any_port, guarded, ms, pattern, tcp_echo};
use seam_tests::link_emulator::{LinkEmulator, LinkProfile, RelayOptions, TcpRelay};
use std::io;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_carries_megabytes_intact_in_order_both_ways_under_jitter() {
    let profile = LinkProfile {
        delay: ms(2),
        jitter: ms(3),
        rate_bits_per_s: 400_000_000,
        seed: 11,
        ..LinkProfile::default()
    };
    let relay = LinkEmulator::tcp(any_port(), tcp_echo().await, profile)
        .await
        .unwrap();
    let payload = pattern(6 << 20, 3);
    let conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let sending = {
        let payload = payload.clone();
        tokio::spawn(async move {
            for piece in payload.chunks(50_000) {
                wr.write_all(piece).await.unwrap();
            }
            // Half-close: the echo keeps flowing back after this.
            wr.shutdown().await.unwrap();
            wr
        })
    };
    let mut echoed = Vec::new();
    guarded("the echo", rd.read_to_end(&mut echoed))
        .await
        .unwrap();
    sending.await.unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "bytes changed or reordered on the way");
    let stats = relay.stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.bytes_up, payload.len() as u64);
    assert_eq!(stats.bytes_down, payload.len() as u64);
}

#[tokio::test]
async fn tcp_round_trip_takes_at_least_twice_the_one_way_delay() {
    let profile = LinkProfile {
        delay: ms(15),
        jitter: ms(5),
        seed: 5,
        ..LinkProfile::default()
    };
    let relay = LinkEmulator::tcp(any_port(), tcp_echo().await, profile)
        .await
        .unwrap();
    let mut conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    conn.set_nodelay(true).unwrap();
    for i in 0..5u8 {
        let start = Instant::now();
        conn.write_all(&[i; 100]).await.unwrap();
        let mut back = [0; 100];
        guarded("the echo", conn.read_exact(&mut back))
            .await
            .unwrap();
        let rtt = start.elapsed();
        assert_eq!(back, [i; 100]);
        assert!(rtt >= ms(30), "round trip {rtt:?} shorter than 2 × 15 ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_transfer_takes_at_least_its_serialization_time() {
    // A sink that reports how many bytes it got once the client half-closes.
    let sink = TcpListener::bind(any_port()).await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = sink.accept().await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        conn.write_all(&(got.len() as u64).to_be_bytes())
            .await
            .unwrap();
    });
    let profile = LinkProfile {
        delay: ms(5),
        rate_bits_per_s: 40_000_000,
        ..LinkProfile::default()
    };
    let relay = LinkEmulator::tcp(any_port(), sink_addr, profile)
        .await
        .unwrap();
    let bytes = 1_000_000;
    let mut conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    let start = Instant::now();
    conn.write_all(&pattern(bytes, 9)).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut count = [0; 8];
    guarded("the sink's count", conn.read_exact(&mut count))
        .await
        .unwrap();
    let elapsed = start.elapsed();
    assert_eq!(u64::from_be_bytes(count), bytes as u64);
    // 8 Mbit at 40 Mbit/s is 200 ms on the wire, plus a one-way delay each way.
    assert!(
        elapsed >= ms(210),
        "1 MB at 40 Mbit/s took only {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_relay_holds_no_more_than_its_queue_when_the_receiver_stalls() {
    // An upstream that accepts and never reads.
    let stalled = TcpListener::bind(any_port()).await.unwrap();
    let upstream = stalled.local_addr().unwrap();
    let (keep_tx, keep_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (conn, _) = stalled.accept().await.unwrap();
        let _ = keep_rx.await;
        drop(conn);
    });
    let queue = 256 * 1024;
    let options = RelayOptions {
        queue_bytes: Some(queue),
        ..RelayOptions::default()
    };
    let relay = TcpRelay::bind(any_port(), upstream, LinkProfile::default(), options)
        .await
        .unwrap()
        .spawn()
        .unwrap();
    let mut conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    let total = 256 << 20;
    let chunk = pattern(1 << 20, 1);
    let mut sent = 0usize;
    // Writes stop completing once kernel buffers and the relay's queue are full.
    while sent < total {
        match tokio::time::timeout(ms(500), conn.write_all(&chunk)).await {
            Ok(result) => result.unwrap(),
            Err(_) => break,
        }
        sent += chunk.len();
    }
    let stats = relay.stats();
    assert!(sent < total, "256 MB went into a receiver that never reads");
    assert!(stats.peak_queued_bytes > 0);
    assert!(
        stats.peak_queued_bytes <= queue as u64,
        "relay held {} bytes, queue is {queue}",
        stats.peak_queued_bytes
    );
    drop(keep_tx);
}

#[tokio::test]
async fn tcp_client_reset_resets_the_upstream() {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (outcome_tx, outcome_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut hello = [0; 5];
        conn.read_exact(&mut hello).await.unwrap();
        conn.write_all(&hello).await.unwrap();
        let mut rest = Vec::new();
        let _ = outcome_tx.send(conn.read_to_end(&mut rest).await);
    });
    let relay = LinkEmulator::tcp(any_port(), upstream, LinkProfile::default())
        .await
        .unwrap();
    let mut conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    conn.write_all(b"hello").await.unwrap();
    let mut back = [0; 5];
    guarded("the echo", conn.read_exact(&mut back))
        .await
        .unwrap();
    conn.set_zero_linger().unwrap();
    drop(conn);
    let outcome = guarded("the upstream's read", outcome_rx).await.unwrap();
    let err = outcome.expect_err("the upstream saw a clean end instead of a reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn tcp_unreachable_upstream_resets_the_client() {
    let closed = TcpListener::bind(any_port()).await.unwrap();
    let upstream = closed.local_addr().unwrap();
    drop(closed);
    let relay = LinkEmulator::tcp(any_port(), upstream, LinkProfile::default())
        .await
        .unwrap();
    let mut conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    let mut buf = [0; 1];
    let read = guarded("the reset", conn.read(&mut buf)).await;
    let err = read.expect_err("the client saw data or a clean end instead of a reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(relay.stats().connect_failures, 1);
}

#[tokio::test]
async fn stopping_the_relay_closes_its_connections_and_its_port() {
    let profile = LinkProfile {
        delay: ms(1),
        ..LinkProfile::default()
    };
    let relay = LinkEmulator::tcp(any_port(), tcp_echo().await, profile)
        .await
        .unwrap();
    let addr = relay.local_addr();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"ping").await.unwrap();
    let mut back = [0; 4];
    guarded("the echo", conn.read_exact(&mut back))
        .await
        .unwrap();
    guarded("the stop", relay.stop()).await;
    let mut buf = [0; 1];
    match guarded("the close", conn.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("read {n} bytes from a stopped relay"),
    }
    assert!(TcpStream::connect(addr).await.is_err(), "port still open");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_relay() {
    let relay = LinkEmulator::tcp(any_port(), tcp_echo().await, LinkProfile::default())
        .await
        .unwrap();
    let addr = relay.local_addr();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"ping").await.unwrap();
    let mut back = [0; 4];
    guarded("the echo", conn.read_exact(&mut back))
        .await
        .unwrap();
    drop(relay);
    let mut buf = [0; 1];
    match guarded("the close", conn.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("read {n} bytes from a dropped relay"),
    }
}
