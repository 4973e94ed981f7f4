//! How many tokens to draft before the next verification round trip (I/O-free).
//!
//! With each draft accepted with probability `α` until the first rejection, `k` drafts settle
//! `E(k) = (1 − α^(k+1)) / (1 − α)` tokens per round trip (the accepted drafts plus the
//! correction or bonus) and cost `T(k) = step + k · draft`, where `step` is the measured round
//! trip (network and the worker's pass) and `draft` the device's time per drafted token. The
//! policy picks the `k` with the most tokens per second, `E(k) / T(k)`. `α` is estimated from
//! the session's recent verifications (older ones decay), starting from the acceptance
//! measured at import; the times are moving averages.

/// Largest draft length the policy considers.
pub const MAX_DRAFT: usize = 12;

/// Weight of the prior acceptance, in pseudo-drafts.
const PRIOR_WEIGHT: f64 = 8.0;
/// Each verification keeps this share of the weight of what came before: the estimate follows
/// the last twenty or so round trips.
const DECAY: f64 = 0.95;
/// Smoothing of the time averages (weight of the newest sample).
const TIME_SMOOTHING: f64 = 0.25;

/// The state of the policy for one session.
#[derive(Debug, Clone)]
pub struct DraftPolicy {
    /// Accepted drafts, and runs of drafts that ended in a rejection (the prior included).
    accepted: f64,
    rejected: f64,
    /// Moving averages, seconds.
    step_s: f64,
    draft_s: f64,
    max: usize,
}

impl DraftPolicy {
    /// A policy starting from acceptance `prior` (e.g. the exit head's held-out figure), at most
    /// `max` drafts per step.
    pub fn new(prior: f64, max: usize) -> DraftPolicy {
        let prior = prior.clamp(0.01, 0.99);
        // α = accepted / (accepted + rejected) for geometric runs.
        DraftPolicy {
            accepted: prior * PRIOR_WEIGHT,
            rejected: (1.0 - prior) * PRIOR_WEIGHT,
            step_s: 0.0,
            draft_s: 0.0,
            max: max.min(MAX_DRAFT),
        }
    }

    /// Estimated probability that a draft is accepted.
    pub fn acceptance(&self) -> f64 {
        self.accepted / (self.accepted + self.rejected)
    }

    /// Expected tokens settled by one round trip with `k` drafts.
    pub fn expected_tokens(alpha: f64, k: usize) -> f64 {
        if (1.0 - alpha).abs() < 1e-9 {
            return (k + 1) as f64;
        }
        (1.0 - alpha.powi(k as i32 + 1)) / (1.0 - alpha)
    }

    /// The draft length for the next step, at most `room` (positions left in the request).
    /// Before any step was timed: one draft, to measure.
    pub fn choose(&self, room: usize) -> usize {
        let cap = self.max.min(room);
        if cap == 0 {
            return 0;
        }
        if self.step_s <= 0.0 || self.draft_s <= 0.0 {
            return 1;
        }
        let alpha = self.acceptance();
        (0..=cap)
            .map(|k| {
                let rate =
                    Self::expected_tokens(alpha, k) / (self.step_s + k as f64 * self.draft_s);
                (k, rate)
            })
            .fold((0, f64::MIN), |best, c| if c.1 > best.1 { c } else { best })
            .0
    }

    /// Records a verification: `drafted` drafts of which `accepted` stood, the round trip's
    /// time, and the drafting time per draft.
    pub fn observe(&mut self, drafted: usize, accepted: usize, step_s: f64, draft_s: f64) {
        if drafted > 0 {
            self.accepted = self.accepted * DECAY + accepted as f64;
            self.rejected *= DECAY;
            if accepted < drafted {
                self.rejected += 1.0;
            }
            self.draft_s = smooth(self.draft_s, draft_s);
        }
        self.step_s = smooth(self.step_s, step_s);
    }
}

fn smooth(avg: f64, sample: f64) -> f64 {
    if avg <= 0.0 {
        sample
    } else {
        avg + TIME_SMOOTHING * (sample - avg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_tokens_is_the_geometric_sum() {
        assert_eq!(DraftPolicy::expected_tokens(0.5, 0), 1.0);
        assert!((DraftPolicy::expected_tokens(0.5, 2) - 1.75).abs() < 1e-12);
        assert_eq!(DraftPolicy::expected_tokens(1.0, 4), 5.0);
    }

    #[test]
    fn high_acceptance_over_a_slow_link_drafts_long_and_poor_acceptance_drafts_short() {
        let mut good = DraftPolicy::new(0.9, MAX_DRAFT);
        good.observe(4, 4, 0.040, 0.004);
        let mut poor = DraftPolicy::new(0.1, MAX_DRAFT);
        poor.observe(1, 0, 0.040, 0.004);
        assert!(good.choose(100) >= 8, "{}", good.choose(100));
        assert!(poor.choose(100) <= 1, "{}", poor.choose(100));
    }

    #[test]
    fn a_fast_link_makes_drafting_pay_less() {
        let mut slow = DraftPolicy::new(0.6, MAX_DRAFT);
        slow.observe(2, 1, 0.080, 0.004);
        let mut fast = DraftPolicy::new(0.6, MAX_DRAFT);
        fast.observe(2, 1, 0.002, 0.004);
        assert!(slow.choose(100) > fast.choose(100));
    }

    #[test]
    fn acceptance_follows_what_the_worker_accepts() {
        let mut p = DraftPolicy::new(0.5, MAX_DRAFT);
        for _ in 0..50 {
            p.observe(4, 4, 0.04, 0.004);
        }
        assert!(p.acceptance() > 0.95, "{}", p.acceptance());
        for _ in 0..200 {
            p.observe(4, 0, 0.04, 0.004);
        }
        assert!(p.acceptance() < 0.5, "{}", p.acceptance());
    }

    #[test]
    fn the_room_left_caps_the_draft() {
        let mut p = DraftPolicy::new(0.95, MAX_DRAFT);
        p.observe(4, 4, 0.04, 0.001);
        assert_eq!(p.choose(2), 2);
        assert_eq!(p.choose(0), 0);
        assert_eq!(DraftPolicy::new(0.9, MAX_DRAFT).choose(5), 1);
    }
}
