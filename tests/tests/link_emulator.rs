//! The link emulator end to end on loopback: echo servers behind TCP and UDP relays (in process
//! and as the `seam-linkemu` binary). Times are only ever checked from below: a relay may be late
//! on a busy machine, never early.

#[path = "link_emulator/cli.rs"]
mod cli;
#[path = "link_emulator/support.rs"]
mod support;
#[path = "link_emulator/tcp.rs"]
mod tcp;
#[path = "link_emulator/udp.rs"]
mod udp;
