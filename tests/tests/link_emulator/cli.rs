//! The `seam-linkemu` binary: the listening line, both protocols on one port, SIGTERM, and
//! flag validation.

use super::support::{any_port, guarded, ms, tcp_echo};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::Command;

/// `seam-linkemu` with `args`, its stdout piped.
fn linkemu(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_seam-linkemu"));
    cmd.args(args)
        .env("SEAM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_relays_tcp_and_udp_on_one_port_and_stops_on_sigterm() {
    let tcp_upstream = tcp_echo().await;
    // The UDP echo must share the TCP echo's port: --upstream names one address.
    let udp_socket = UdpSocket::bind(tcp_upstream).await.unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0; 65536];
        while let Ok((n, from)) = udp_socket.recv_from(&mut buf).await {
            let _ = udp_socket.send_to(&buf[..n], from).await;
        }
    });
    let upstream = tcp_upstream.to_string();
    let mut child = linkemu(&[
        "--upstream",
        &upstream,
        "--proto",
        "both",
        "--delay-ms",
        "10",
        "--jitter-ms",
        "1",
        "--rate-mbit",
        "100",
        "--seed",
        "4",
    ])
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = guarded("the listening line", lines.next_line())
        .await
        .unwrap()
        .expect("stdout closed before the listening line");
    let addr: SocketAddr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();

    let mut conn = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    conn.write_all(b"over tcp").await.unwrap();
    let mut back = [0; 8];
    guarded("the tcp echo", conn.read_exact(&mut back))
        .await
        .unwrap();
    assert!(start.elapsed() >= ms(20));
    assert_eq!(&back, b"over tcp");

    let udp = UdpSocket::bind(any_port()).await.unwrap();
    udp.connect(addr).await.unwrap();
    let start = Instant::now();
    udp.send(b"over udp").await.unwrap();
    let mut buf = [0; 16];
    let n = guarded("the udp echo", udp.recv(&mut buf)).await.unwrap();
    assert!(start.elapsed() >= ms(20));
    assert_eq!(&buf[..n], b"over udp");

    let pid = child.id().expect("still running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = guarded("the exit", child.wait()).await.unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
    match guarded("the close", conn.read(&mut back)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("read {n} bytes after the relay exited"),
    }
}

#[tokio::test]
async fn binary_rejects_bad_flags_with_a_message_naming_them() {
    let cases: [(&[&str], &str); 6] = [
        (&["--delay-ms", "5"], "--upstream"),
        (
            &["--upstream", "127.0.0.1:1", "--delay-ms", "-5"],
            "--delay-ms",
        ),
        (
            &["--upstream", "127.0.0.1:1", "--jitter-ms", "NaN"],
            "--jitter-ms",
        ),
        (
            &["--upstream", "127.0.0.1:1", "--rate-mbit", "-1"],
            "--rate-mbit",
        ),
        (&["--upstream", "127.0.0.1:1", "--loss", "1.5"], "--loss"),
        (&["--upstream", "no-port-here"], "--upstream"),
    ];
    for (args, named) in cases {
        let out = guarded("the exit", linkemu(args).output()).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        // The message itself, not the usage line after it, names the flag.
        let message = stderr.split("Usage:").next().unwrap();
        assert!(message.contains(named), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed a listening line");
    }
}
