//! Faults switched on and off while a link runs: a cut (every datagram dropped, as when a
//! device drives into a tunnel) and a loss burst (extra random loss on top of the profile's).
//! One [`Impairment`] may be shared by several relays: a device's link to every gateway replica.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

/// Parts per million: the resolution of a loss burst's probability.
const PPM: u32 = 1_000_000;

/// A switchable fault on a link; all clear when made.
#[derive(Debug, Default)]
pub struct Impairment {
    cut: AtomicBool,
    loss_ppm: AtomicU32,
    seed: u64,
    draws: AtomicU64,
}

impl Impairment {
    /// A clear link whose loss bursts draw from `seed` (the same seed, the same draws).
    pub fn new(seed: u64) -> Impairment {
        Impairment {
            seed,
            ..Impairment::default()
        }
    }

    /// Cuts the link (`true`) or restores it.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Relaxed);
    }

    /// Drops each datagram with probability `loss` (clamped to `[0, 1]`; 0 ends the burst).
    pub fn set_loss(&self, loss: f64) {
        let ppm = (loss.clamp(0.0, 1.0) * f64::from(PPM)).round() as u32;
        self.loss_ppm.store(ppm, Relaxed);
    }

    /// Ends every fault.
    pub fn clear(&self) {
        self.set_cut(false);
        self.set_loss(0.0);
    }

    /// Whether the next datagram is dropped.
    pub fn drops(&self) -> bool {
        if self.cut.load(Relaxed) {
            return true;
        }
        let ppm = self.loss_ppm.load(Relaxed);
        if ppm == 0 {
            return false;
        }
        let n = self.draws.fetch_add(1, Relaxed);
        (splitmix64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % u64::from(PPM))
            < u64::from(ppm)
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_link_drops_nothing_and_a_cut_drops_everything() {
        let i = Impairment::new(7);
        assert!((0..1000).all(|_| !i.drops()));
        i.set_cut(true);
        assert!((0..1000).all(|_| i.drops()));
        i.clear();
        assert!((0..1000).all(|_| !i.drops()));
    }

    #[test]
    fn a_loss_burst_drops_about_its_share_the_same_way_for_a_seed() {
        let run = |seed| {
            let i = Impairment::new(seed);
            i.set_loss(0.3);
            (0..20_000).map(|_| i.drops()).collect::<Vec<_>>()
        };
        let a = run(1);
        let dropped = a.iter().filter(|d| **d).count();
        assert!((5_400..6_600).contains(&dropped), "{dropped} of 20000");
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
    }
}
