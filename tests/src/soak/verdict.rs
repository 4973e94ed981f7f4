//! What became of one request, judged against the device's own answer to the same request
//! (no I/O): identical, degraded with a reason, wrong, or lost.

use std::time::Duration;

/// What the app saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The stream ended with a final event.
    Finished {
        tokens: Vec<u32>,
        degraded: bool,
        reason: String,
        /// Sessions re-opened mid-answer, the answer so far replayed.
        replays: u32,
    },
    /// The app dropped the stream after these tokens, as asked.
    Cancelled { tokens: Vec<u32> },
    /// An error status, a stream without a final event, or no end by the deadline.
    Failed { why: String },
}

/// The judgement.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The same tokens as the device alone (a cancelled answer: a prefix of them).
    Identical,
    /// Different tokens, and the answer says why (a sampled answer finished elsewhere).
    Degraded { reason: String },
    /// Different tokens and no reason: a correctness bug.
    Wrong { detail: String },
    /// No answer.
    Lost { why: String },
}

/// Judges `outcome` against `reference`, the device-only answer to the same request; a greedy
/// answer must be identical even when degraded (the same model decides every token).
pub fn judge(outcome: &Outcome, reference: &[u32], greedy: bool) -> Verdict {
    match outcome {
        Outcome::Failed { why } => Verdict::Lost { why: why.clone() },
        Outcome::Cancelled { tokens } => {
            if reference.starts_with(tokens) {
                Verdict::Identical
            } else {
                Verdict::Wrong {
                    detail: format!("cancelled after {tokens:?}, not a prefix of {reference:?}"),
                }
            }
        }
        Outcome::Finished { tokens, .. } if tokens == reference => Verdict::Identical,
        Outcome::Finished {
            tokens,
            degraded,
            reason,
            ..
        } => {
            if !greedy && *degraded && !reason.is_empty() {
                Verdict::Degraded {
                    reason: reason.clone(),
                }
            } else {
                Verdict::Wrong {
                    detail: format!(
                        "{tokens:?} vs {reference:?} (degraded {degraded}, reason {reason:?})"
                    ),
                }
            }
        }
    }
}

/// The `q` quantile (0..=1) of `samples` by the nearest-rank method; `None` when empty.
pub fn quantile(samples: &[Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    let rank = (q.clamp(0.0, 1.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(tokens: &[u32], degraded: bool, reason: &str) -> Outcome {
        Outcome::Finished {
            tokens: tokens.to_vec(),
            degraded,
            reason: reason.into(),
            replays: 0,
        }
    }

    #[test]
    fn greedy_answers_must_be_identical_even_when_degraded() {
        let r = [1, 2, 3];
        assert_eq!(
            judge(&finished(&r, true, "x"), &r, true),
            Verdict::Identical
        );
        assert!(matches!(
            judge(
                &finished(&[1, 2, 4], true, "finished on the device"),
                &r,
                true
            ),
            Verdict::Wrong { .. }
        ));
    }

    #[test]
    fn a_sampled_answer_may_differ_only_when_it_says_why() {
        let r = [1, 2, 3];
        assert_eq!(
            judge(
                &finished(&[1, 5], true, "finished on the device"),
                &r,
                false
            ),
            Verdict::Degraded {
                reason: "finished on the device".into()
            }
        );
        assert!(matches!(
            judge(&finished(&[1, 5], false, ""), &r, false),
            Verdict::Wrong { .. }
        ));
        assert!(matches!(
            judge(&finished(&[1, 5], true, ""), &r, false),
            Verdict::Wrong { .. }
        ));
    }

    #[test]
    fn cancelled_answers_are_prefixes_and_failures_are_lost() {
        let r = [1, 2, 3];
        let c = |t: &[u32]| Outcome::Cancelled { tokens: t.to_vec() };
        assert_eq!(judge(&c(&[1, 2]), &r, true), Verdict::Identical);
        assert!(matches!(judge(&c(&[2]), &r, true), Verdict::Wrong { .. }));
        let lost = Outcome::Failed {
            why: "deadline".into(),
        };
        assert_eq!(
            judge(&lost, &r, true),
            Verdict::Lost {
                why: "deadline".into()
            }
        );
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        let s = ms(&[50, 10, 40, 20, 30]);
        assert_eq!(quantile(&s, 0.5), Some(Duration::from_millis(30)));
        assert_eq!(quantile(&s, 0.99), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&s, 0.0), Some(Duration::from_millis(10)));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
