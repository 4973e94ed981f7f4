//! UDP through the relay: delay, seeded loss and its accounting, mappings and their expiry.

use super::support::{any_port, guarded, ms, udp_echo};
use seam_tests::link_emulator::{LinkEmulator, LinkProfile, RelayOptions, UdpRelay};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

#[tokio::test]
async fn udp_round_trip_takes_at_least_twice_the_one_way_delay() {
    let profile = LinkProfile {
        delay: ms(15),
        jitter: ms(5),
        seed: 2,
        ..LinkProfile::default()
    };
    let relay = LinkEmulator::udp(any_port(), udp_echo().await, profile)
        .await
        .unwrap();
    let client = UdpSocket::bind(any_port()).await.unwrap();
    client.connect(relay.local_addr()).await.unwrap();
    for i in 0..5u8 {
        let start = Instant::now();
        client.send(&[i; 1200]).await.unwrap();
        let mut buf = [0; 2000];
        let n = guarded("the echo", client.recv(&mut buf)).await.unwrap();
        let rtt = start.elapsed();
        assert_eq!(&buf[..n], &[i; 1200][..]);
        assert!(rtt >= ms(30), "round trip {rtt:?} shorter than 2 × 15 ms");
    }
    let stats = relay.stats();
    assert_eq!((stats.datagrams_up, stats.datagrams_down), (5, 5));
    assert_eq!(stats.mappings_opened, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_loss_with_a_fixed_seed_drops_some_but_not_all() {
    let profile = LinkProfile {
        delay: ms(1),
        loss: 0.3,
        seed: 7,
        ..LinkProfile::default()
    };
    let relay = LinkEmulator::udp(any_port(), udp_echo().await, profile)
        .await
        .unwrap();
    let client = Arc::new(UdpSocket::bind(any_port()).await.unwrap());
    client.connect(relay.local_addr()).await.unwrap();
    let sent = 500u32;
    // Paced, and read while sending, so that no socket buffer on the way overflows: the
    // kernel's drops would blur the relay's accounting below.
    let sender = client.clone();
    let sending = tokio::spawn(async move {
        for i in 0..sent {
            sender.send(&i.to_be_bytes()).await.unwrap();
            if i % 10 == 9 {
                tokio::time::sleep(ms(5)).await;
            }
        }
    });
    // Replies stop coming once the last survivor is through: a second of silence after the
    // last send ends the count.
    let mut received = std::collections::BTreeSet::new();
    let mut buf = [0; 16];
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(1), client.recv(&mut buf)).await {
            Ok(n) => n.unwrap(),
            Err(_) if sending.is_finished() => break,
            Err(_) => continue,
        };
        assert_eq!(n, 4);
        let fresh = received.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()));
        assert!(fresh, "a datagram came back twice");
    }
    let got = received.len() as u32;
    // Each datagram survives both ways with probability 0.7² = 0.49.
    assert!(got > 0 && got < sent, "{got} of {sent} came back");
    assert!((175..=315).contains(&got), "{got} of {sent} came back");
    let stats = relay.stats();
    assert!(stats.datagrams_lost > 0);
    assert_eq!(stats.datagrams_down, u64::from(got));
    // Every datagram sent was either echoed back, lost on the way up or on the way down.
    assert_eq!(
        stats.datagrams_down + stats.datagrams_lost + stats.datagrams_overflow,
        u64::from(sent)
    );
}

#[tokio::test]
async fn udp_replies_reach_their_own_client_and_idle_mappings_expire() {
    let options = RelayOptions {
        udp_idle_timeout: ms(100),
        ..RelayOptions::default()
    };
    let relay = UdpRelay::bind(
        any_port(),
        udp_echo().await,
        LinkProfile::default(),
        options,
    )
    .await
    .unwrap()
    .spawn()
    .unwrap();
    let a = UdpSocket::bind(any_port()).await.unwrap();
    let b = UdpSocket::bind(any_port()).await.unwrap();
    a.connect(relay.local_addr()).await.unwrap();
    b.connect(relay.local_addr()).await.unwrap();
    let mut buf = [0; 16];
    a.send(b"from a").await.unwrap();
    b.send(b"from b").await.unwrap();
    let n = guarded("a's echo", a.recv(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"from a");
    let n = guarded("b's echo", b.recv(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"from b");
    assert_eq!(relay.stats().mappings_opened, 2);

    guarded("the expiry", async {
        while relay.stats().mappings_expired < 2 {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    // A client that comes back gets a fresh mapping.
    a.send(b"again").await.unwrap();
    let n = guarded("a's echo", a.recv(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"again");
    assert_eq!(relay.stats().mappings_opened, 3);
}
