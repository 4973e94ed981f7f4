//! `seam-linkemu`: a relay that makes loopback look like a WAN link (delay, jitter, bandwidth
//! cap, datagram loss) for TCP, UDP or both. Prints `listening on ADDR` on stdout once bound and
//! runs until SIGTERM or ctrl-c.

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, ValueEnum};
use seam_tests::link_emulator::{
    DEFAULT_UDP_IDLE_TIMEOUT, LinkEmulator, LinkProfile, RelayHandle, RelayOptions,
};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "seam-linkemu",
    version,
    about = "Relay with emulated one-way delay, jitter, bandwidth cap and loss (TCP and/or UDP)",
    allow_negative_numbers = true
)]
struct Cli {
    /// Address to listen on; port 0 picks a free port (printed as `listening on ADDR`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where the relay forwards to.
    #[arg(long, value_name = "HOST:PORT")]
    upstream: String,
    /// Which traffic to relay; `both` listens for TCP and UDP on the same port.
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    proto: Proto,
    /// Least one-way delay, each direction, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    delay_ms: f64,
    /// Largest random extra one-way delay, in milliseconds (uniform; never reorders TCP).
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    jitter_ms: f64,
    /// Bandwidth cap each direction, in Mbit/s (10^6 bit/s); 0 is unlimited.
    #[arg(long, value_name = "MBIT", default_value_t = 0.0)]
    rate_mbit: f64,
    /// Probability in [0, 1] that a UDP datagram is dropped (TCP cannot lose bytes).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    loss: f64,
    /// Seed of the jitter and loss draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Bytes each direction of a connection or mapping may hold, in KiB (default: the round-trip
    /// bandwidth-delay product within 64 KiB..64 MiB; 4 MiB without a cap).
    #[arg(long, value_name = "KIB")]
    queue_kib: Option<usize>,
    /// Seconds without traffic after which a UDP client mapping is dropped.
    #[arg(long, value_name = "S", default_value_t = DEFAULT_UDP_IDLE_TIMEOUT.as_secs_f64())]
    udp_idle_s: f64,
    /// Log lines as JSON.
    #[arg(long)]
    log_json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Both,
}

/// Exits with a usage error (status 2) in clap's format.
fn usage_error(message: impl std::fmt::Display) -> ! {
    Cli::command()
        .error(ErrorKind::ValueValidation, message)
        .exit()
}

fn options(cli: &Cli) -> RelayOptions {
    let queue_bytes = cli.queue_kib.map(|kib| match kib.checked_mul(1024) {
        Some(bytes) if bytes > 0 => bytes,
        _ => usage_error(format!("--queue-kib must be at least 1, got {kib}")),
    });
    let udp_idle_timeout = match Duration::try_from_secs_f64(cli.udp_idle_s) {
        Ok(idle) if !idle.is_zero() => idle,
        _ => usage_error(format!(
            "--udp-idle-s must be a positive number of seconds, got {}",
            cli.udp_idle_s
        )),
    };
    RelayOptions {
        queue_bytes,
        udp_idle_timeout,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let profile = LinkProfile::from_units(
        cli.delay_ms,
        cli.jitter_ms,
        cli.rate_mbit,
        cli.loss,
        cli.seed,
    )
    .unwrap_or_else(|e| {
        usage_error(format!(
            "invalid value for --{}: {e}",
            e.field().replace('_', "-")
        ))
    });
    let options = options(&cli);
    seam_shared::telemetry::init("info", cli.log_json);
    let upstream = match tokio::net::lookup_host(&cli.upstream).await {
        Ok(mut addrs) => match addrs.next() {
            Some(addr) => addr,
            None => usage_error(format!(
                "--upstream {} resolves to no address",
                cli.upstream
            )),
        },
        Err(e) => usage_error(format!("--upstream {}: {e}", cli.upstream)),
    };
    if cli.proto == Proto::Tcp && profile.loss > 0.0 {
        tracing::warn!(
            loss = profile.loss,
            "loss applies to UDP only; TCP ignores it"
        );
    }

    let relays: Vec<RelayHandle> = match cli.proto {
        Proto::Tcp => vec![
            seam_tests::link_emulator::TcpRelay::bind(cli.listen, upstream, profile, options)
                .await?
                .spawn()?,
        ],
        Proto::Udp => vec![
            seam_tests::link_emulator::UdpRelay::bind(cli.listen, upstream, profile, options)
                .await?
                .spawn()?,
        ],
        Proto::Both => {
            let (tcp, udp) =
                LinkEmulator::tcp_and_udp(cli.listen, upstream, profile, options).await?;
            vec![tcp, udp]
        }
    };
    let addr = relays[0].local_addr();
    info!(
        listen = %addr,
        %upstream,
        delay_ms = cli.delay_ms,
        jitter_ms = cli.jitter_ms,
        rate_mbit = cli.rate_mbit,
        loss = cli.loss,
        seed = cli.seed,
        "relaying"
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}")?;
    stdout.flush()?;
    drop(stdout);

    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    for relay in relays {
        let stats = relay.stats();
        relay.stop().await;
        info!(?stats, "stopped");
    }
    Ok(())
}
