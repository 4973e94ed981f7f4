//! What the relay counts for the dashboard: cumulative step counters and a relay-latency
//! histogram whose buckets the timeline differences per sample (Prometheus histograms do not
//! give their buckets back, and the dashboard wants p50/p99 of the last interval, not of the
//! process's life).

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets of the relay-latency histogram: upper bounds 50 µs × √2^i, the last one open.
pub const RELAY_BUCKETS: usize = 40;
const FIRST_BOUND_S: f64 = 50e-6;

/// Upper bound of bucket `i` in seconds (`f64::INFINITY` for the last).
pub fn bucket_bound(i: usize) -> f64 {
    if i + 1 >= RELAY_BUCKETS {
        f64::INFINITY
    } else {
        FIRST_BOUND_S * std::f64::consts::SQRT_2.powi(i as i32)
    }
}

fn bucket_of(seconds: f64) -> usize {
    if seconds.is_nan() || seconds <= FIRST_BOUND_S {
        return 0;
    }
    // Smallest i with bound(i) >= seconds.
    let mut i = ((2.0 * (seconds / FIRST_BOUND_S).log2()).ceil() as usize).min(RELAY_BUCKETS - 1);
    // Rounding in log2 can land one bucket off near a bound.
    while i > 0 && bucket_bound(i - 1) >= seconds {
        i -= 1;
    }
    while bucket_bound(i) < seconds {
        i += 1;
    }
    i
}

/// Counters since the gateway started; only ever increase.
#[derive(Debug)]
pub struct LiveStats {
    relay: [AtomicU64; RELAY_BUCKETS],
    /// Steps answered by a worker without an error.
    steps: AtomicU64,
    /// Of those, decode steps: one row per draft plus the last settled token (not prefill).
    decode_steps: AtomicU64,
    /// Tokens settled by decode steps (accepted drafts plus the worker's token).
    decode_tokens: AtomicU64,
    /// Drafts verified, and of them accepted, in every step.
    drafted: AtomicU64,
    accepted: AtomicU64,
}

impl Default for LiveStats {
    fn default() -> Self {
        LiveStats {
            relay: std::array::from_fn(|_| AtomicU64::new(0)),
            steps: AtomicU64::new(0),
            decode_steps: AtomicU64::new(0),
            decode_tokens: AtomicU64::new(0),
            drafted: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        }
    }
}

/// A step as the relay saw it go up, remembered until its answer comes down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepShape {
    /// Draft tokens sent for verification.
    pub drafts: u32,
    /// One hidden row per draft plus one: a decode step (a prefill sends the whole prompt).
    pub decode: bool,
}

impl StepShape {
    /// `rows` hidden-state rows carrying `drafts` drafts.
    pub fn new(rows: u64, drafts: usize) -> StepShape {
        StepShape {
            drafts: u32::try_from(drafts).unwrap_or(u32::MAX),
            decode: rows == drafts as u64 + 1,
        }
    }
}

/// The counters read at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveCounts {
    pub relay: Vec<u64>,
    pub steps: u64,
    pub decode_steps: u64,
    pub decode_tokens: u64,
    pub drafted: u64,
    pub accepted: u64,
}

impl LiveStats {
    /// A step relayed in `seconds` (arrival at the gateway to answer leaving).
    pub fn relayed(&self, seconds: f64) {
        self.relay[bucket_of(seconds)].fetch_add(1, Ordering::Relaxed);
    }

    /// A worker's answer without an error to a step of `shape`, `accepted` drafts kept.
    pub fn answered(&self, shape: StepShape, accepted: u32) {
        // A worker cannot accept more than was drafted; a claim beyond it counts as all.
        let accepted = u64::from(accepted.min(shape.drafts));
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.drafted
            .fetch_add(u64::from(shape.drafts), Ordering::Relaxed);
        self.accepted.fetch_add(accepted, Ordering::Relaxed);
        if shape.decode {
            self.decode_steps.fetch_add(1, Ordering::Relaxed);
            self.decode_tokens
                .fetch_add(accepted + 1, Ordering::Relaxed);
        }
    }

    pub fn read(&self) -> LiveCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LiveCounts {
            relay: self.relay.iter().map(get).collect(),
            steps: get(&self.steps),
            decode_steps: get(&self.decode_steps),
            decode_tokens: get(&self.decode_tokens),
            drafted: get(&self.drafted),
            accepted: get(&self.accepted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bounds_grow_by_root_two_from_50us() {
        assert_eq!(bucket_bound(0), 50e-6);
        assert!((bucket_bound(2) - 100e-6).abs() < 1e-12);
        assert!((bucket_bound(20) - 50e-6 * 1024.0).abs() < 1e-9);
        assert_eq!(bucket_bound(RELAY_BUCKETS - 1), f64::INFINITY);
    }

    proptest! {
        #[test]
        fn a_latency_lands_in_the_first_bucket_that_holds_it(s in 0.0f64..100.0) {
            let i = bucket_of(s);
            prop_assert!(s <= bucket_bound(i));
            if i > 0 {
                prop_assert!(s > bucket_bound(i - 1));
            }
        }
    }

    #[test]
    fn exact_bounds_and_odd_values_stay_in_range() {
        for i in 0..RELAY_BUCKETS - 1 {
            assert_eq!(bucket_of(bucket_bound(i)), i, "bound {i}");
        }
        assert_eq!(bucket_of(f64::NAN), 0);
        assert_eq!(bucket_of(-1.0), 0);
        assert_eq!(bucket_of(f64::INFINITY), RELAY_BUCKETS - 1);
    }

    #[test]
    fn only_decode_steps_count_as_round_trips() {
        let live = LiveStats::default();
        // A prefill of 12 rows, then decode steps with 4, 4 and 0 drafts.
        live.answered(StepShape::new(12, 0), 0);
        live.answered(StepShape::new(5, 4), 3);
        live.answered(StepShape::new(5, 4), 0);
        live.answered(StepShape::new(1, 0), 0);
        // A worker claiming more than was drafted counts only what was.
        live.answered(StepShape::new(2, 1), 7);
        let c = live.read();
        assert_eq!(c.steps, 5);
        assert_eq!(c.decode_steps, 4);
        assert_eq!(c.decode_tokens, 4 + 1 + 1 + 2);
        assert_eq!(c.drafted, 9);
        assert_eq!(c.accepted, 4);
        // Drafts riding on a prefill count toward acceptance, not toward round trips.
        live.answered(StepShape::new(9, 2), 2);
        let c = live.read();
        assert_eq!((c.decode_steps, c.drafted, c.accepted), (4, 11, 6));
    }
}
