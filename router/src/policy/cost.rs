//! The cost model behind `auto`: estimated time to answer locally vs split at each split point.
//!
//! - local: prefill of the prompt at the device's prefill speed, then `max_tokens` decoded at
//!   its measured decode speed.
//! - split at K of N layers: the device runs the fraction `K/N` of the work for the prompt and
//!   for every settled token (it drafts with those layers), uploads the prompt's layer-K states
//!   (`prompt_tokens × hidden_bytes_per_token` at the measured bandwidth), and waits one round
//!   trip (RTT, worker queueing and step) per `tokens_per_round_trip` settled tokens.
//!
//! A split must beat local by `cloud_margin` to be chosen: close calls go to the device, which
//! costs the cloud budget nothing.

use super::Features;
use serde::{Deserialize, Serialize};

/// Parameters of the cost model (`[auto]` in the policy file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostModel {
    /// Device prefill speed as a multiple of its decode speed.
    pub prefill_speedup: f64,
    /// Bytes of layer-K states sent per prompt token (int8 wire: about 640).
    pub hidden_bytes_per_token: f64,
    /// Expected tokens settled per round trip (speculative decoding's acceptance).
    pub tokens_per_round_trip: f64,
    /// Worker time per step.
    pub worker_step_ms: f64,
    /// Expected queueing at the worker.
    pub worker_queue_ms: f64,
    /// Fraction by which split must be faster than local to be chosen.
    pub cloud_margin: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            prefill_speedup: 3.0,
            hidden_bytes_per_token: 640.0,
            tokens_per_round_trip: 1.2,
            worker_step_ms: 15.0,
            worker_queue_ms: 5.0,
            cloud_margin: 0.1,
        }
    }
}

/// Estimates behind one `auto` decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub local_ms: f64,
    /// `(K, ms)` for every split point, in the order given.
    pub split_ms: Vec<(u32, f64)>,
    /// `Some(K)` when split at K is chosen.
    pub choice: Option<u32>,
}

impl CostModel {
    /// Checks every parameter (named in the message).
    pub fn validate(&self) -> Result<(), String> {
        for (name, v, min_exclusive) in [
            ("prefill_speedup", self.prefill_speedup, true),
            ("hidden_bytes_per_token", self.hidden_bytes_per_token, false),
            ("tokens_per_round_trip", self.tokens_per_round_trip, true),
            ("worker_step_ms", self.worker_step_ms, false),
            ("worker_queue_ms", self.worker_queue_ms, false),
            ("cloud_margin", self.cloud_margin, false),
        ] {
            let ok = v.is_finite() && if min_exclusive { v > 0.0 } else { v >= 0.0 };
            if !ok {
                return Err(format!(
                    "auto.{name} {v} must be a {} number",
                    if min_exclusive {
                        "positive"
                    } else {
                        "non-negative"
                    }
                ));
            }
        }
        if self.tokens_per_round_trip < 1.0 {
            return Err(format!(
                "auto.tokens_per_round_trip {} must be at least 1",
                self.tokens_per_round_trip
            ));
        }
        if self.cloud_margin >= 1.0 {
            return Err(format!(
                "auto.cloud_margin {} must be below 1",
                self.cloud_margin
            ));
        }
        Ok(())
    }

    /// Estimated time to answer `f` locally and split at each of `split_points` of a model of
    /// `layers` layers, and the choice. Without a link or enough quota split is not an option;
    /// without a measured local speed the choice is local.
    pub fn estimate(&self, f: &Features, layers: u32, split_points: &[u32]) -> Estimate {
        let decode = f.local_tokens_per_s;
        let prompt = f64::from(f.prompt_tokens);
        let tokens = f64::from(f.max_tokens);
        let local_ms = if decode > 0.0 {
            1000.0 * (prompt / (decode * self.prefill_speedup) + tokens / decode)
        } else {
            f64::INFINITY
        };
        let usable =
            f.link_up && f.bandwidth_mbps > 0.0 && f.cloud_quota_left >= u64::from(f.max_tokens);
        let split_ms: Vec<(u32, f64)> = split_points
            .iter()
            .map(|&k| {
                if !usable || layers == 0 || k >= layers {
                    return (k, f64::INFINITY);
                }
                let share = f64::from(k) / f64::from(layers);
                // The device runs its share of the layers for the prompt and every token.
                let device_ms = share * local_ms;
                // Mbit/s = 125 bytes per ms per Mbit/s.
                let upload_ms = prompt * self.hidden_bytes_per_token / (f.bandwidth_mbps * 125.0);
                let round_trips = (tokens / self.tokens_per_round_trip).ceil().max(1.0);
                let per_round = f.rtt_ms + self.worker_step_ms + self.worker_queue_ms;
                (k, device_ms + upload_ms + round_trips * per_round)
            })
            .collect();
        let best = split_ms
            .iter()
            .filter(|(_, ms)| ms.is_finite())
            .min_by(|a, b| a.1.total_cmp(&b.1));
        // An unmeasured device speed makes every estimate infinite and keeps the request
        // local: the cheaper guess for the cloud budget, and the one that measures the speed.
        let choice = match best {
            Some(&(k, ms)) if ms < local_ms * (1.0 - self.cloud_margin) => Some(k),
            _ => None,
        };
        Estimate {
            local_ms,
            split_ms,
            choice,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features() -> Features {
        Features::example()
    }

    #[test]
    fn a_slow_device_on_a_fast_link_splits() {
        let mut f = features();
        f.local_tokens_per_s = 5.0;
        f.rtt_ms = 10.0;
        let e = CostModel::default().estimate(&f, 30, &[4, 8, 15]);
        // local: 32/15 + 128/5 s = 27.7 s; split(4): 4/30 of that + 107 round trips of 30 ms.
        assert!((e.local_ms - 1000.0 * (32.0 / 15.0 + 128.0 / 5.0)).abs() < 1e-6);
        assert_eq!(e.choice, Some(4));
        let (_, ms4) = e.split_ms[0];
        let want = 1000.0 * (4.0 / 30.0) * (32.0 / 15.0 + 128.0 / 5.0)
            + 32.0 * 640.0 / (20.0 * 125.0)
            + (128.0f64 / 1.2).ceil() * 30.0;
        assert!((ms4 - want).abs() < 1e-6, "{ms4} vs {want}");
    }

    #[test]
    fn a_fast_device_or_a_slow_link_stays_local() {
        let mut f = features();
        f.local_tokens_per_s = 100.0;
        f.rtt_ms = 80.0;
        assert_eq!(
            CostModel::default().estimate(&f, 30, &[4, 8, 15]).choice,
            None
        );
    }

    #[test]
    fn no_link_or_no_quota_means_local() {
        let mut f = features();
        f.local_tokens_per_s = 1.0;
        f.rtt_ms = 1.0;
        let m = CostModel::default();
        assert_eq!(m.estimate(&f, 30, &[8]).choice, Some(8));
        let mut down = f.clone();
        down.link_up = false;
        assert_eq!(m.estimate(&down, 30, &[8]).choice, None);
        let mut broke = f.clone();
        broke.cloud_quota_left = 127;
        assert_eq!(m.estimate(&broke, 30, &[8]).choice, None);
        let mut unmeasured = f.clone();
        unmeasured.local_tokens_per_s = 0.0;
        assert_eq!(m.estimate(&unmeasured, 30, &[8]).choice, None);
    }

    #[test]
    fn close_calls_go_local() {
        // Make split exactly 5% faster than local: within the 10% margin.
        let mut f = features();
        f.prompt_tokens = 0;
        f.max_tokens = 120;
        f.local_tokens_per_s = 10.0; // local 12 s
        let m = CostModel {
            tokens_per_round_trip: 1.0,
            worker_step_ms: 0.0,
            worker_queue_ms: 0.0,
            ..CostModel::default()
        };
        // split(3) of 30: device 1.2 s, 120 round trips of rtt → rtt = (11.4 − 1.2) s / 120 = 85 ms.
        f.rtt_ms = 85.0;
        let e = m.estimate(&f, 30, &[3]);
        assert!(
            (e.split_ms[0].1 - 11_400.0).abs() < 1e-6,
            "{:?}",
            e.split_ms
        );
        assert_eq!(e.choice, None);
        f.rtt_ms = 75.0; // 10.2 s: 15% faster
        assert_eq!(m.estimate(&f, 30, &[3]).choice, Some(3));
    }

    #[test]
    fn validate_names_the_field() {
        let m = CostModel {
            tokens_per_round_trip: 0.5,
            ..CostModel::default()
        };
        assert!(m.validate().unwrap_err().contains("tokens_per_round_trip"));
        let m = CostModel {
            worker_step_ms: f64::NAN,
            ..CostModel::default()
        };
        assert!(m.validate().unwrap_err().contains("worker_step_ms"));
    }
}
