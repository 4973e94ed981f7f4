//! What an emulated link is: one-way delay, jitter, a bandwidth cap and datagram loss, validated
//! once, plus the sizes derived from them (queue limit, shaping segment).

use std::time::Duration;

/// Smallest queue a relay keeps per direction, so a short, fast link still carries a burst.
const MIN_QUEUE_BYTES: usize = 64 * 1024;
/// Largest queue a relay keeps per direction, whatever the bandwidth-delay product.
const MAX_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Queue per direction of a link without a bandwidth cap (no bandwidth-delay product to size it).
const UNLIMITED_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Smallest stream segment: about one TCP segment on an Ethernet path.
const MIN_SEGMENT_BYTES: usize = 1448;
/// Largest stream segment, and the segment of a link without a bandwidth cap.
const MAX_SEGMENT_BYTES: usize = 64 * 1024;

/// The conditions of one emulated link, the same in both directions (each direction has its own
/// queue and random stream).
///
/// A chunk or datagram that arrives at time `t` is first serialized at `rate_bits_per_s` behind
/// whatever is still queued, then travels `delay` plus a uniform extra in `[0, jitter]`. `delay`
/// is therefore the least one-way latency (propagation), and jitter only ever adds, like queueing
/// on a real path does. `loss` applies to datagrams only: a byte stream cannot lose bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkProfile {
    /// Least one-way delay.
    pub delay: Duration,
    /// Largest random extra one-way delay, drawn uniformly per chunk or datagram.
    pub jitter: Duration,
    /// Bandwidth cap in bits per second; 0 means unlimited.
    pub rate_bits_per_s: u64,
    /// Probability in `[0, 1]` that a datagram is dropped.
    pub loss: f64,
    /// Seed of the random draws (jitter, loss); the same seed gives the same draws.
    pub seed: u64,
}

impl Default for LinkProfile {
    /// A perfect link: no delay, no jitter, no cap, no loss.
    fn default() -> Self {
        LinkProfile {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_bits_per_s: 0,
            loss: 0.0,
            seed: 0,
        }
    }
}

/// A link profile that makes no sense, naming the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// A delay, jitter or rate given as a float was negative, NaN or infinite.
    #[error("{field} must be a finite number >= 0, got {value}")]
    NotNonNegative {
        /// The field (or command-line flag) name.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// The loss probability was outside `[0, 1]` (or NaN).
    #[error("loss must be a probability in [0, 1], got {0}")]
    LossOutOfRange(f64),
    /// The value does not fit the type that holds it (e.g. a delay of 10^20 ms).
    #[error("{field} is too large: {value}")]
    TooLarge {
        /// The field (or command-line flag) name.
        field: &'static str,
        /// The value given.
        value: f64,
    },
}

impl ProfileError {
    /// The field at fault, as named by [`LinkProfile::from_units`] (`delay_ms`, `jitter_ms`,
    /// `rate_mbit`, `loss`).
    pub fn field(&self) -> &'static str {
        match self {
            ProfileError::NotNonNegative { field, .. } | ProfileError::TooLarge { field, .. } => {
                field
            }
            ProfileError::LossOutOfRange(_) => "loss",
        }
    }
}

impl LinkProfile {
    /// Builds a profile from the units people type: milliseconds and Mbit/s (10^6 bit/s; 0 is
    /// unlimited), rejecting negative, NaN or infinite values and a loss outside `[0, 1]`.
    pub fn from_units(
        delay_ms: f64,
        jitter_ms: f64,
        rate_mbit: f64,
        loss: f64,
        seed: u64,
    ) -> Result<LinkProfile, ProfileError> {
        let profile = LinkProfile {
            delay: millis("delay_ms", delay_ms)?,
            jitter: millis("jitter_ms", jitter_ms)?,
            rate_bits_per_s: mbit("rate_mbit", rate_mbit)?,
            loss,
            seed,
        };
        profile.validate()?;
        Ok(profile)
    }

    /// Checks the fields a struct literal can get wrong (the loss probability).
    pub fn validate(&self) -> Result<(), ProfileError> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(ProfileError::LossOutOfRange(self.loss));
        }
        Ok(())
    }

    /// Whether the link changes nothing: every byte goes through the moment it arrives.
    pub fn is_passthrough(&self) -> bool {
        self.delay.is_zero()
            && self.jitter.is_zero()
            && self.rate_bits_per_s == 0
            && self.loss == 0.0
    }

    /// Time to put `bytes` on the wire at the cap, rounded up to the nanosecond (zero when
    /// unlimited). Rounding up keeps "N bytes take at least 8N/R" true for any split into chunks.
    pub fn serialization_time(&self, bytes: usize) -> Duration {
        if self.rate_bits_per_s == 0 {
            return Duration::ZERO;
        }
        let bits = bytes as u128 * 8 * 1_000_000_000;
        let nanos = bits.div_ceil(u128::from(self.rate_bits_per_s));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Bytes a relay may hold per direction before it pushes back (streams) or drops (datagrams):
    /// the bandwidth-delay product of a round trip over this link at its worst delay, within
    /// [64 KiB, 64 MiB]; 4 MiB on a link without a cap.
    pub fn queue_bytes(&self) -> usize {
        if self.rate_bits_per_s == 0 {
            return UNLIMITED_QUEUE_BYTES;
        }
        let rtt = 2 * (self.delay + self.jitter);
        let bdp = u128::from(self.rate_bits_per_s) * rtt.as_nanos() / 8 / 1_000_000_000;
        usize::try_from(bdp)
            .unwrap_or(MAX_QUEUE_BYTES)
            .clamp(MIN_QUEUE_BYTES, MAX_QUEUE_BYTES)
    }

    /// Largest piece a stream relay shapes as one unit: about a millisecond of the cap (the
    /// timer's resolution, so finer pieces buy nothing), within [1448 B, 64 KiB].
    pub fn segment_bytes(&self) -> usize {
        if self.rate_bits_per_s == 0 {
            return MAX_SEGMENT_BYTES;
        }
        let per_ms = self.rate_bits_per_s / 8 / 1000;
        usize::try_from(per_ms)
            .unwrap_or(MAX_SEGMENT_BYTES)
            .clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)
    }
}

fn non_negative(field: &'static str, value: f64) -> Result<f64, ProfileError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(ProfileError::NotNonNegative { field, value })
    }
}

fn millis(field: &'static str, value: f64) -> Result<Duration, ProfileError> {
    let ms = non_negative(field, value)?;
    Duration::try_from_secs_f64(ms / 1000.0).map_err(|_| ProfileError::TooLarge { field, value })
}

fn mbit(field: &'static str, value: f64) -> Result<u64, ProfileError> {
    let bits = non_negative(field, value)? * 1e6;
    if bits >= u64::MAX as f64 {
        return Err(ProfileError::TooLarge { field, value });
    }
    // A positive cap below 1 bit/s would read as "unlimited": round it up to 1.
    Ok(if bits > 0.0 {
        (bits.round() as u64).max(1)
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_units_converts_milliseconds_and_megabits() {
        let p = LinkProfile::from_units(20.0, 2.5, 20.0, 0.01, 7).unwrap();
        assert_eq!(p.delay, Duration::from_millis(20));
        assert_eq!(p.jitter, Duration::from_micros(2500));
        assert_eq!(p.rate_bits_per_s, 20_000_000);
        assert_eq!(p.loss, 0.01);
        assert_eq!(p.seed, 7);
    }

    #[test]
    fn from_units_rejects_nonsense_naming_the_field() {
        let err = LinkProfile::from_units(-1.0, 0.0, 0.0, 0.0, 0).unwrap_err();
        assert_eq!(
            err,
            ProfileError::NotNonNegative {
                field: "delay_ms",
                value: -1.0
            }
        );
        assert_eq!(err.field(), "delay_ms");
        let err = LinkProfile::from_units(0.0, f64::NAN, 0.0, 0.0, 0).unwrap_err();
        assert!(err.to_string().contains("jitter_ms"), "{err}");
        let err = LinkProfile::from_units(0.0, 0.0, f64::INFINITY, 0.0, 0).unwrap_err();
        assert!(err.to_string().contains("rate_mbit"), "{err}");
        let err = LinkProfile::from_units(1e300, 0.0, 0.0, 0.0, 0).unwrap_err();
        assert!(matches!(err, ProfileError::TooLarge { .. }), "{err}");
        for loss in [-0.1, 1.5, f64::NAN] {
            let err = LinkProfile::from_units(0.0, 0.0, 0.0, loss, 0).unwrap_err();
            assert!(matches!(err, ProfileError::LossOutOfRange(_)), "{err}");
            assert_eq!(err.field(), "loss");
        }
        assert!(LinkProfile::from_units(0.0, 0.0, 0.0, 1.0, 0).is_ok());
    }

    #[test]
    fn tiny_positive_rate_is_not_unlimited() {
        let p = LinkProfile::from_units(0.0, 0.0, 1e-9, 0.0, 0).unwrap();
        assert_eq!(p.rate_bits_per_s, 1);
    }

    #[test]
    fn serialization_time_is_eight_n_over_r_rounded_up() {
        let p = LinkProfile {
            rate_bits_per_s: 8_000_000,
            ..LinkProfile::default()
        };
        assert_eq!(p.serialization_time(1_000_000), Duration::from_secs(1));
        assert_eq!(p.serialization_time(1), Duration::from_micros(1));
        let odd = LinkProfile {
            rate_bits_per_s: 3,
            ..LinkProfile::default()
        };
        // 8 bits at 3 bit/s: 2.666… s, rounded up.
        assert_eq!(
            odd.serialization_time(1),
            Duration::from_nanos(2_666_666_667)
        );
        assert_eq!(
            LinkProfile::default().serialization_time(1 << 30),
            Duration::ZERO
        );
    }

    #[test]
    fn queue_is_a_round_trip_bandwidth_delay_product_within_bounds() {
        let wan = LinkProfile::from_units(20.0, 0.0, 100.0, 0.0, 0).unwrap();
        // 100 Mbit/s × 40 ms = 500 kB.
        assert_eq!(wan.queue_bytes(), 500_000);
        let slow = LinkProfile::from_units(1.0, 0.0, 1.0, 0.0, 0).unwrap();
        assert_eq!(slow.queue_bytes(), MIN_QUEUE_BYTES);
        let huge = LinkProfile::from_units(1000.0, 0.0, 100_000.0, 0.0, 0).unwrap();
        assert_eq!(huge.queue_bytes(), MAX_QUEUE_BYTES);
        assert_eq!(LinkProfile::default().queue_bytes(), UNLIMITED_QUEUE_BYTES);
    }

    #[test]
    fn segment_is_about_a_millisecond_of_the_cap() {
        let p = LinkProfile::from_units(0.0, 0.0, 20.0, 0.0, 0).unwrap();
        assert_eq!(p.segment_bytes(), 2500);
        let slow = LinkProfile::from_units(0.0, 0.0, 1.0, 0.0, 0).unwrap();
        assert_eq!(slow.segment_bytes(), MIN_SEGMENT_BYTES);
        assert_eq!(LinkProfile::default().segment_bytes(), MAX_SEGMENT_BYTES);
    }

    #[test]
    fn passthrough_only_when_every_field_is_neutral() {
        assert!(LinkProfile::default().is_passthrough());
        let seeded = LinkProfile {
            seed: 9,
            ..LinkProfile::default()
        };
        assert!(seeded.is_passthrough());
        let lossy = LinkProfile {
            loss: 0.5,
            ..LinkProfile::default()
        };
        assert!(!lossy.is_passthrough());
    }
}
