//! The dashboard's time series, free of I/O: the sampler hands in cumulative counters read at
//! one instant ([`Snapshot`]); the timeline keeps the last `keep` intervals as differences
//! ([`Point`]): decisions per route and rule, relay latency p50/p99 of the interval, tokens per
//! decode round trip and draft acceptance of the interval, and the gauges as read.

use super::live::{LiveCounts, bucket_bound};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Decision labels kept per point; the rest are summed into `other`.
pub const MAX_DECISION_SERIES: usize = 16;

/// Counters and gauges read at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub at_unix_ms: u64,
    /// Cumulative decisions by `route · rule`.
    pub decisions: BTreeMap<String, u64>,
    pub live: LiveCounts,
    pub sessions: u64,
    pub connections: u64,
    pub workers_healthy: u64,
    pub workers: u64,
}

/// One interval, ending at `t`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// End of the interval, Unix milliseconds.
    pub t: u64,
    /// Length of the interval, milliseconds.
    pub ms: u64,
    /// Decisions made in the interval by `route · rule` (only labels with some).
    pub decisions: BTreeMap<String, u64>,
    /// Steps answered in the interval.
    pub steps: u64,
    pub relay_p50_ms: Option<f64>,
    pub relay_p99_ms: Option<f64>,
    /// Tokens settled per decode round trip in the interval.
    pub tokens_per_round_trip: Option<f64>,
    /// Accepted drafts / drafted in the interval.
    pub acceptance: Option<f64>,
    pub sessions: u64,
    pub connections: u64,
    pub workers_healthy: u64,
    pub workers: u64,
}

/// The last `keep` intervals.
#[derive(Debug)]
pub struct Timeline {
    keep: usize,
    last: Option<Snapshot>,
    points: VecDeque<Point>,
}

impl Timeline {
    pub fn new(keep: usize) -> Timeline {
        Timeline {
            keep: keep.max(1),
            last: None,
            points: VecDeque::new(),
        }
    }

    /// Adds the interval from the previous snapshot to `now` (the first snapshot only sets the
    /// start). A snapshot not later than the previous one is ignored.
    pub fn push(&mut self, now: Snapshot) {
        let Some(prev) = self.last.take() else {
            self.last = Some(now);
            return;
        };
        if now.at_unix_ms <= prev.at_unix_ms {
            self.last = Some(prev);
            return;
        }
        let point = interval(&prev, &now);
        if self.points.len() == self.keep {
            self.points.pop_front();
        }
        self.points.push_back(point);
        self.last = Some(now);
    }

    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }

    /// The snapshot last pushed: cumulative totals since the gateway started.
    pub fn last(&self) -> Option<&Snapshot> {
        self.last.as_ref()
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn interval(prev: &Snapshot, now: &Snapshot) -> Point {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let (p, n) = (&prev.live, &now.live);
    let relay: Vec<u64> = n
        .relay
        .iter()
        .enumerate()
        .map(|(i, &b)| d(p.relay.get(i).copied().unwrap_or(0), b))
        .collect();
    let mut decisions = BTreeMap::new();
    for (label, &count) in &now.decisions {
        let delta = d(prev.decisions.get(label).copied().unwrap_or(0), count);
        if delta > 0 {
            decisions.insert(label.clone(), delta);
        }
    }
    Point {
        t: now.at_unix_ms,
        ms: d(prev.at_unix_ms, now.at_unix_ms),
        decisions: cap_series(decisions),
        steps: d(p.steps, n.steps),
        relay_p50_ms: quantile(&relay, 0.50).map(|s| s * 1e3),
        relay_p99_ms: quantile(&relay, 0.99).map(|s| s * 1e3),
        tokens_per_round_trip: ratio(
            d(p.decode_tokens, n.decode_tokens),
            d(p.decode_steps, n.decode_steps),
        ),
        acceptance: ratio(d(p.accepted, n.accepted), d(p.drafted, n.drafted)),
        sessions: now.sessions,
        connections: now.connections,
        workers_healthy: now.workers_healthy,
        workers: now.workers,
    }
}

/// Keeps the largest `MAX_DECISION_SERIES - 1` labels and sums the rest into `other`.
fn cap_series(mut decisions: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    if decisions.len() <= MAX_DECISION_SERIES {
        return decisions;
    }
    let mut by_count: Vec<(String, u64)> = std::mem::take(&mut decisions).into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rest: u64 = by_count[MAX_DECISION_SERIES - 1..]
        .iter()
        .map(|(_, c)| c)
        .sum();
    by_count.truncate(MAX_DECISION_SERIES - 1);
    let mut out: BTreeMap<String, u64> = by_count.into_iter().collect();
    *out.entry("other".into()).or_insert(0) += rest;
    out
}

/// The `q` quantile (seconds) of observations counted per bucket, interpolated linearly
/// within the bucket that holds it (as Prometheus' `histogram_quantile`); the open last bucket
/// answers its lower bound. `None` without observations.
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { bucket_bound(i - 1) };
            let upper = bucket_bound(i);
            if upper.is_infinite() {
                return Some(lower);
            }
            let within = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::live::RELAY_BUCKETS;

    fn snap(at: u64, decisions: &[(&str, u64)], live: LiveCounts) -> Snapshot {
        Snapshot {
            at_unix_ms: at,
            decisions: decisions.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            live,
            sessions: 3,
            connections: 2,
            workers_healthy: 1,
            workers: 2,
        }
    }

    fn counts(relay_at: &[(usize, u64)], steps: [u64; 5]) -> LiveCounts {
        let mut relay = vec![0; RELAY_BUCKETS];
        for &(i, c) in relay_at {
            relay[i] = c;
        }
        LiveCounts {
            relay,
            steps: steps[0],
            decode_steps: steps[1],
            decode_tokens: steps[2],
            drafted: steps[3],
            accepted: steps[4],
        }
    }

    #[test]
    fn points_are_differences_of_consecutive_snapshots() {
        let mut t = Timeline::new(10);
        t.push(snap(
            1000,
            &[("local · default", 5)],
            counts(&[(4, 10)], [10, 8, 16, 20, 8]),
        ));
        assert_eq!(
            t.points().count(),
            0,
            "the first snapshot only starts the clock"
        );
        t.push(snap(
            2000,
            &[("local · default", 7), ("split(8) · hot", 4)],
            counts(&[(4, 10), (10, 4)], [14, 11, 25, 32, 14]),
        ));
        let p = t.points().next().unwrap();
        assert_eq!((p.t, p.ms, p.steps), (2000, 1000, 4));
        assert_eq!(
            p.decisions,
            BTreeMap::from([("local · default".into(), 2), ("split(8) · hot".into(), 4)])
        );
        // 3 decode round trips settled 9 tokens; 6 of 12 drafts were accepted.
        assert_eq!(p.tokens_per_round_trip, Some(3.0));
        assert_eq!(p.acceptance, Some(0.5));
        // All four relays of the interval fell in bucket 10.
        let (lo, hi) = (bucket_bound(9) * 1e3, bucket_bound(10) * 1e3);
        for q in [p.relay_p50_ms.unwrap(), p.relay_p99_ms.unwrap()] {
            assert!(q > lo && q <= hi, "{q} not in ({lo}, {hi}]");
        }
        assert_eq!((p.sessions, p.workers_healthy, p.workers), (3, 1, 2));
    }

    #[test]
    fn an_idle_interval_has_no_ratios_and_no_decisions() {
        let mut t = Timeline::new(10);
        let c = counts(&[(3, 2)], [2, 2, 2, 0, 0]);
        t.push(snap(0, &[("local · default", 1)], c.clone()));
        t.push(snap(500, &[("local · default", 1)], c));
        let p = t.points().next().unwrap();
        assert!(p.decisions.is_empty());
        assert_eq!(p.steps, 0);
        assert_eq!(
            (p.relay_p50_ms, p.tokens_per_round_trip, p.acceptance),
            (None, None, None)
        );
    }

    #[test]
    fn the_ring_keeps_the_last_intervals_and_ignores_time_going_back() {
        let mut t = Timeline::new(3);
        for i in 0..10 {
            t.push(snap(i * 1000, &[], LiveCounts::default()));
        }
        t.push(snap(4000, &[], LiveCounts::default()));
        let ends: Vec<u64> = t.points().map(|p| p.t).collect();
        assert_eq!(ends, [7000, 8000, 9000]);
        assert_eq!(t.last().unwrap().at_unix_ms, 9000);
    }

    #[test]
    fn counters_going_down_read_as_zero_not_as_wrapped() {
        let mut t = Timeline::new(3);
        t.push(snap(0, &[("a", 9)], counts(&[(1, 5)], [9, 9, 9, 9, 9])));
        t.push(snap(1, &[("a", 2)], counts(&[(1, 1)], [1, 1, 1, 1, 1])));
        let p = t.points().next().unwrap();
        assert!(p.decisions.is_empty());
        assert_eq!((p.steps, p.relay_p50_ms), (0, None));
    }

    #[test]
    fn many_labels_are_capped_with_the_rest_summed_as_other() {
        let labels: Vec<(String, u64)> = (0..40).map(|i| (format!("r{i:02}"), i + 1)).collect();
        let capped = cap_series(labels.iter().cloned().collect());
        assert_eq!(capped.len(), MAX_DECISION_SERIES);
        // The 15 largest (r25..r39) stay; r00..r24 (1 + … + 25 = 325) become `other`.
        assert_eq!(capped["other"], 325);
        assert!(capped.contains_key("r25") && !capped.contains_key("r24"));
        assert_eq!(
            capped.values().sum::<u64>(),
            labels.iter().map(|l| l.1).sum::<u64>()
        );
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let mut b = vec![0; RELAY_BUCKETS];
        // 50 observations at or under 50 µs, 50 in (50 µs, 70.7 µs].
        b[0] = 50;
        b[1] = 50;
        assert_eq!(quantile(&b, 0.5), Some(50e-6));
        let p99 = quantile(&b, 0.99).unwrap();
        let expect = 50e-6 + (bucket_bound(1) - 50e-6) * 0.98;
        assert!((p99 - expect).abs() < 1e-12, "{p99} vs {expect}");
        // The open bucket answers its lower bound.
        let mut open = vec![0; RELAY_BUCKETS];
        open[RELAY_BUCKETS - 1] = 3;
        let lower = quantile(&open, 0.99).unwrap();
        assert!(
            (lower - bucket_bound(RELAY_BUCKETS - 2)).abs() < 1e-9,
            "{lower}"
        );
        assert_eq!(quantile(&vec![0; RELAY_BUCKETS], 0.5), None);
    }
}
