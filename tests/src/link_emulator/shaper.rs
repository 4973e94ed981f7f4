//! The shaping decision, without sockets or clocks: given what arrived at `now`, when is it
//! delivered (or is it dropped). One shaper per direction of a connection or UDP mapping.
//!
//! Every piece goes through a transmission queue drained at the cap (serialization), then waits
//! the one-way delay plus a random extra in `[0, jitter]`. A [`StreamShaper`] never delivers a
//! piece before an earlier one, so jitter cannot reorder a byte stream; a [`DatagramShaper`] lets
//! jitter reorder, drops with the profile's loss probability, and drops the tail when the
//! direction already holds its queue limit.

use super::profile::LinkProfile;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Which way bytes travel through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client (the side that dials the relay) to the upstream.
    Up,
    /// From the upstream back to the client.
    Down,
}

/// The random stream of one direction of one flow: the profile's seed mixed with the flow number
/// (connection or mapping, counted from 0 in arrival order) and the direction, so flows and
/// directions draw independently yet reproducibly.
fn flow_rng(seed: u64, flow: u64, direction: Direction) -> StdRng {
    let lane = flow.wrapping_mul(2) + u64::from(direction == Direction::Down);
    StdRng::seed_from_u64(splitmix64(seed ^ splitmix64(lane)))
}

/// One step of SplitMix64: a cheap, well-mixed bijection on `u64`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The part shared by both shapers: the transmission queue and the delay draw.
#[derive(Debug)]
struct Link {
    profile: LinkProfile,
    rng: StdRng,
    /// When the transmitter finishes what it was given so far (`None`: never used).
    free_at: Option<Instant>,
}

impl Link {
    fn new(profile: LinkProfile, flow: u64, direction: Direction) -> Link {
        Link {
            profile,
            rng: flow_rng(profile.seed, flow, direction),
            free_at: None,
        }
    }

    /// Queues `len` bytes for the wire and returns when their last bit leaves.
    fn transmit(&mut self, now: Instant, len: usize) -> Instant {
        let start = self.free_at.map_or(now, |free| free.max(now));
        let done = start + self.profile.serialization_time(len);
        self.free_at = Some(done);
        done
    }

    /// The one-way delay of one piece: the least delay plus a uniform draw in `[0, jitter]`.
    fn propagation(&mut self) -> Duration {
        let jitter = self.profile.jitter.as_nanos();
        let extra = if jitter == 0 {
            0
        } else {
            self.rng
                .random_range(0..=u64::try_from(jitter).unwrap_or(u64::MAX))
        };
        self.profile.delay + Duration::from_nanos(extra)
    }
}

/// Shapes one direction of a byte stream (TCP): delivery times never go backwards.
#[derive(Debug)]
pub struct StreamShaper {
    link: Link,
    last: Option<Instant>,
}

impl StreamShaper {
    /// A shaper for `direction` of connection number `flow`.
    pub fn new(profile: LinkProfile, flow: u64, direction: Direction) -> StreamShaper {
        StreamShaper {
            link: Link::new(profile, flow, direction),
            last: None,
        }
    }

    /// When a chunk of `len` bytes read at `now` is to be written out: after its serialization
    /// and delay, and never before the chunk read before it. The end of the stream is a chunk of
    /// length 0, so it arrives after the last byte and no earlier than the delay.
    pub fn on_chunk(&mut self, now: Instant, len: usize) -> Instant {
        let sent = self.link.transmit(now, len);
        let due = sent + self.link.propagation();
        let due = self.last.map_or(due, |last| last.max(due));
        self.last = Some(due);
        due
    }
}

/// What becomes of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it at this time.
    Deliver(Instant),
    /// Lost on the link (the profile's loss probability).
    Lost,
    /// Dropped because the direction already holds its queue limit (tail drop).
    Overflow,
}

/// Shapes one direction of a datagram flow (UDP): loss, reordering by jitter, bounded queue.
#[derive(Debug)]
pub struct DatagramShaper {
    link: Link,
    limit: usize,
    /// Accepted datagrams not yet due, as (due, len): what the relay is holding.
    held: BinaryHeap<Reverse<(Instant, usize)>>,
    held_bytes: usize,
}

impl DatagramShaper {
    /// A shaper for `direction` of mapping number `flow`, holding at most the profile's
    /// [`LinkProfile::queue_bytes`].
    pub fn new(profile: LinkProfile, flow: u64, direction: Direction) -> DatagramShaper {
        Self::with_limit(profile, flow, direction, profile.queue_bytes())
    }

    /// As [`DatagramShaper::new`] with an explicit limit on the bytes held at once.
    pub fn with_limit(
        profile: LinkProfile,
        flow: u64,
        direction: Direction,
        limit: usize,
    ) -> DatagramShaper {
        DatagramShaper {
            link: Link::new(profile, flow, direction),
            limit,
            held: BinaryHeap::new(),
            held_bytes: 0,
        }
    }

    /// Decides the fate of a datagram of `len` bytes that arrived at `now`. Loss is drawn first
    /// and a lost datagram takes no room on the link (as with netem); then a datagram that would
    /// push the held bytes past the limit is dropped; otherwise it is serialized and delayed.
    pub fn on_datagram(&mut self, now: Instant, len: usize) -> Verdict {
        let loss = self.link.profile.loss;
        if loss > 0.0 && self.link.rng.random_bool(loss) {
            return Verdict::Lost;
        }
        self.release(now);
        if self.held_bytes + len > self.limit {
            return Verdict::Overflow;
        }
        let sent = self.link.transmit(now, len);
        let due = sent + self.link.propagation();
        if due > now {
            self.held.push(Reverse((due, len)));
            self.held_bytes += len;
        }
        Verdict::Deliver(due)
    }

    /// Bytes accepted and not yet due at `now`.
    pub fn held_bytes(&mut self, now: Instant) -> usize {
        self.release(now);
        self.held_bytes
    }

    fn release(&mut self, now: Instant) {
        while let Some(Reverse((due, len))) = self.held.peek().copied() {
            if due > now {
                break;
            }
            self.held.pop();
            self.held_bytes -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn wan() -> LinkProfile {
        LinkProfile {
            delay: ms(20),
            jitter: ms(5),
            rate_bits_per_s: 20_000_000,
            loss: 0.0,
            seed: 1,
        }
    }

    #[test]
    fn neutral_profile_passes_everything_through_at_once() {
        let t0 = Instant::now();
        let mut stream = StreamShaper::new(LinkProfile::default(), 0, Direction::Up);
        let mut dgram = DatagramShaper::new(LinkProfile::default(), 0, Direction::Down);
        for i in 0..1000u64 {
            let now = t0 + Duration::from_micros(i);
            assert_eq!(stream.on_chunk(now, 65_536), now);
            assert_eq!(dgram.on_datagram(now, 1200), Verdict::Deliver(now));
            assert_eq!(dgram.held_bytes(now), 0);
        }
    }

    #[test]
    fn delay_is_added_and_jitter_stays_within_its_range() {
        let t0 = Instant::now();
        let profile = LinkProfile {
            delay: ms(20),
            jitter: ms(4),
            ..LinkProfile::default()
        };
        let mut shaper = DatagramShaper::new(profile, 0, Direction::Up);
        let mut delays = Vec::new();
        for i in 0..500 {
            let now = t0 + ms(i);
            let Verdict::Deliver(at) = shaper.on_datagram(now, 100) else {
                panic!("no loss configured");
            };
            delays.push(at - now);
        }
        assert!(delays.iter().all(|d| *d >= ms(20) && *d <= ms(24)));
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        // Uniform over 4 ms: 500 draws cover nearly all of it.
        assert!(*max - *min > ms(3), "jitter spread {:?}", *max - *min);

        let fixed = LinkProfile {
            delay: ms(15),
            ..LinkProfile::default()
        };
        let mut stream = StreamShaper::new(fixed, 3, Direction::Down);
        assert_eq!(stream.on_chunk(t0, 10), t0 + ms(15));
        assert_eq!(stream.on_chunk(t0 + ms(100), 10), t0 + ms(115));
    }

    #[test]
    fn bandwidth_cap_takes_at_least_the_serialization_time() {
        let t0 = Instant::now();
        let profile = LinkProfile {
            rate_bits_per_s: 1_000_000,
            ..LinkProfile::default()
        };
        let mut shaper = StreamShaper::new(profile, 0, Direction::Up);
        // 125 000 bytes at 1 Mbit/s: 1 s on the wire, whatever the chunking.
        let chunks = [1, 1447, 1448, 10_000, 50_000, 62_104];
        assert_eq!(chunks.iter().sum::<usize>(), 125_000);
        let last = chunks
            .iter()
            .map(|&n| shaper.on_chunk(t0, n))
            .last()
            .unwrap();
        assert!(last - t0 >= Duration::from_secs(1), "{:?}", last - t0);
        // Rounding up costs at most a nanosecond per chunk.
        assert!(last - t0 <= Duration::from_secs(1) + Duration::from_nanos(6));
    }

    #[test]
    fn an_idle_link_does_not_bank_credit() {
        let t0 = Instant::now();
        let profile = LinkProfile {
            delay: ms(10),
            rate_bits_per_s: 8_000_000,
            ..LinkProfile::default()
        };
        let mut shaper = StreamShaper::new(profile, 0, Direction::Up);
        // 1000 bytes at 8 Mbit/s: 1 ms on the wire, then 10 ms of delay.
        assert_eq!(shaper.on_chunk(t0, 1000), t0 + ms(11));
        // Ten seconds idle, then a burst: still serialized one after the other.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(shaper.on_chunk(t1, 1000), t1 + ms(11));
        assert_eq!(shaper.on_chunk(t1, 1000), t1 + ms(12));
        assert_eq!(shaper.on_chunk(t1, 2000), t1 + ms(14));
    }

    #[test]
    fn jitter_never_reorders_a_stream_but_does_reorder_datagrams() {
        let t0 = Instant::now();
        let profile = LinkProfile {
            delay: ms(1),
            jitter: ms(50),
            ..LinkProfile::default()
        };
        let mut stream = StreamShaper::new(profile, 0, Direction::Up);
        let mut dgram = DatagramShaper::new(profile, 0, Direction::Up);
        let mut stream_due = Vec::new();
        let mut dgram_due = Vec::new();
        for i in 0..1000 {
            let now = t0 + Duration::from_micros(100 * i);
            stream_due.push(stream.on_chunk(now, 100));
            if let Verdict::Deliver(at) = dgram.on_datagram(now, 100) {
                dgram_due.push(at);
            }
            // Every piece still waits at least the delay.
            assert!(*stream_due.last().unwrap() >= now + ms(1));
        }
        assert!(stream_due.windows(2).all(|w| w[0] <= w[1]));
        assert!(dgram_due.windows(2).any(|w| w[0] > w[1]));
    }

    #[test]
    fn loss_rate_is_close_to_the_profile_and_reproducible() {
        let t0 = Instant::now();
        let profile = LinkProfile {
            loss: 0.1,
            seed: 42,
            ..LinkProfile::default()
        };
        let run = |seed: u64, flow: u64, direction: Direction| {
            let mut shaper = DatagramShaper::new(LinkProfile { seed, ..profile }, flow, direction);
            (0..100_000)
                .map(|_| shaper.on_datagram(t0, 1200) == Verdict::Lost)
                .collect::<Vec<bool>>()
        };
        let lost = run(42, 0, Direction::Up);
        let rate = lost.iter().filter(|&&l| l).count() as f64 / lost.len() as f64;
        // Binomial standard deviation is about 0.001 here: 5 of them.
        assert!((rate - 0.1).abs() < 0.005, "loss rate {rate}");
        assert_eq!(run(42, 0, Direction::Up), lost, "same seed, same drops");
        assert_ne!(run(43, 0, Direction::Up), lost, "another seed");
        assert_ne!(run(42, 1, Direction::Up), lost, "another flow");
        assert_ne!(run(42, 0, Direction::Down), lost, "another direction");
    }

    #[test]
    fn certain_loss_drops_everything_and_none_drops_nothing() {
        let t0 = Instant::now();
        let all = LinkProfile {
            loss: 1.0,
            ..LinkProfile::default()
        };
        let mut shaper = DatagramShaper::new(all, 0, Direction::Up);
        assert!((0..1000).all(|_| shaper.on_datagram(t0, 10) == Verdict::Lost));
        let mut shaper = DatagramShaper::new(wan(), 0, Direction::Up);
        let t1 = t0 + Duration::from_secs(1);
        assert!((0..1000u32).all(|i| matches!(
            shaper.on_datagram(t1 + ms(u64::from(i)), 10),
            Verdict::Deliver(_)
        )));
    }

    #[test]
    fn a_full_queue_drops_the_tail_until_it_drains() {
        let t0 = Instant::now();
        let profile = LinkProfile {
            delay: ms(10),
            rate_bits_per_s: 1_000_000,
            ..LinkProfile::default()
        };
        let mut shaper = DatagramShaper::with_limit(profile, 0, Direction::Up, 12_000);
        let verdicts: Vec<Verdict> = (0..20).map(|_| shaper.on_datagram(t0, 1200)).collect();
        let accepted = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Deliver(_)))
            .count();
        assert_eq!(accepted, 10, "{verdicts:?}");
        assert!(verdicts[10..].iter().all(|v| *v == Verdict::Overflow));
        assert_eq!(shaper.held_bytes(t0), 12_000);
        // The first datagram is due after 9.6 ms on the wire and 10 ms of delay.
        let first_due = t0 + Duration::from_micros(19_600);
        assert_eq!(verdicts[0], Verdict::Deliver(first_due));
        assert_eq!(shaper.held_bytes(first_due), 10_800);
        assert!(matches!(
            shaper.on_datagram(first_due, 1200),
            Verdict::Deliver(_)
        ));
        assert_eq!(shaper.on_datagram(first_due, 1), Verdict::Overflow);
    }

    #[test]
    fn same_seed_same_schedule() {
        let t0 = Instant::now();
        let schedule = |seed| {
            let mut shaper = StreamShaper::new(LinkProfile { seed, ..wan() }, 5, Direction::Down);
            (0..200)
                .map(|i| shaper.on_chunk(t0 + ms(i), 3000) - t0)
                .collect::<Vec<_>>()
        };
        assert_eq!(schedule(7), schedule(7));
        assert_ne!(schedule(7), schedule(8));
    }
}
