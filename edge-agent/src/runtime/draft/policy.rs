//! Which drafts to send before the next verification round trip, and how many (I/O-free).
//!
//! Two sources propose drafts: the draft head (costs device time per draft) and prompt lookup
//! (free). For each source the policy keeps the conditional acceptance at every chain position
//! `j` (the share of drafts at position `j` that stood, given the ones before did), decayed so
//! that it follows the session. A chain of `k` drafts then settles
//! `E(k) = 1 + Σ_{i≤k} Π_{j≤i} α_j` tokens per round trip (the accepted drafts plus the token
//! the worker adds) and costs `T(k) = base + (k + extra) · node + k · draft`: `base` is a round
//! trip without drafts, `node` what each draft sent adds to it (its rows on both sides and its
//! bytes on the link), `extra` the tree's nodes beyond the chain, and `draft` the device's time
//! to propose one. `base` is measured by an occasional round trip without drafts, `node` from the
//! drafting ones. The policy picks the source and `k` with the most tokens per second,
//! `E(k) / T(k)`.
//!
//! Greedy requests send dynamic trees instead ([`super::grow`]): the head's probabilities rank
//! the candidate nodes and estimate what the first `n` of them settle, `S(n)`. The policy keeps
//! how far to trust that estimate (drafts that stood over drafts the head expected, decayed) and
//! picks the `n` with the most tokens per second, `(1 + c·S(n)) / (base + n · (node + layer))`,
//! `layer` being the device's time per node in the layer pass.
//!
//! The worker's own drafts (trees it grows through its upper layers) cost it one pass of those
//! layers per depth, on the round trip. The policy keeps the conditional acceptance along the
//! worker's chains and its time per pass, and asks for the depth `d` with the most tokens per
//! second, `E_w(d) / (base + d · (pass + node + layer))`; the round trips it times exclude the
//! worker's drafting time, which the worker reports.

/// Largest draft length considered.
pub const MAX_DRAFT: usize = 12;

/// Weight of the prior acceptance, in pseudo-drafts per position.
const PRIOR_WEIGHT: f64 = 6.0;
/// Each verification keeps this share of the weight of what came before.
const DECAY: f64 = 0.95;
/// Smoothing of the time averages (weight of the newest sample).
const TIME_SMOOTHING: f64 = 0.25;
/// Drafting round trips between two round trips without drafts (which measure `base`).
const PROBE_EVERY: u32 = 16;
/// Fewest nodes a tree is grown for.
pub const MIN_GROWTH: usize = 6;
/// Weight of the prior trust in the head's estimate for trees (as drafts expected).
const TREE_PRIOR: f64 = 4.0;
/// Prior acceptance of lookup drafts at every position.
pub const LOOKUP_PRIOR: f64 = 0.6;

/// Where a chain of drafts comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Head,
    Lookup,
}

/// Who grew a draft tree: the device's draft head, or the worker through its own layers. Their
/// estimates of the drafts that stand are calibrated apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grower {
    Head = 0,
    Worker = 1,
}

/// Conditional acceptance per chain position, as decayed counts.
#[derive(Debug, Clone)]
pub struct Acceptance {
    stood: Vec<f64>,
    tried: Vec<f64>,
}

impl Acceptance {
    /// Starts from `prior[j]` at position `j` (the last value repeated beyond its end).
    pub fn new(prior: &[f64]) -> Acceptance {
        let at = |j: usize| {
            prior
                .get(j)
                .or(prior.last())
                .copied()
                .unwrap_or(0.5)
                .clamp(0.02, 0.98)
        };
        Acceptance {
            stood: (0..MAX_DRAFT).map(|j| at(j) * PRIOR_WEIGHT).collect(),
            tried: vec![PRIOR_WEIGHT; MAX_DRAFT],
        }
    }

    /// Estimated conditional acceptance at position `j` (0-based).
    pub fn at(&self, j: usize) -> f64 {
        self.stood[j] / self.tried[j]
    }

    /// Records a chain of `drafted` drafts of which the first `accepted` stood.
    pub fn observe(&mut self, drafted: usize, accepted: usize) {
        for j in 0..drafted.min(MAX_DRAFT) {
            if j > accepted {
                break;
            }
            self.stood[j] *= DECAY;
            self.tried[j] *= DECAY;
            self.tried[j] += 1.0;
            if j < accepted {
                self.stood[j] += 1.0;
            }
        }
    }

    /// Expected tokens settled by a chain of `k` drafts.
    pub fn expected_tokens(&self, k: usize) -> f64 {
        let (mut alive, mut total) = (1.0, 1.0);
        for j in 0..k.min(MAX_DRAFT) {
            alive *= self.at(j);
            total += alive;
        }
        total
    }

    /// The conditional acceptances, position 1 first.
    pub fn curve(&self) -> Vec<f64> {
        (0..MAX_DRAFT).map(|j| self.at(j)).collect()
    }
}

/// The state of the policy for one session.
#[derive(Debug, Clone)]
pub struct DraftPolicy {
    head: Acceptance,
    lookup: Acceptance,
    /// Moving averages, seconds: any round trip, one without drafts, what each node sent
    /// adds, proposing one draft.
    step_s: f64,
    base_s: f64,
    node_s: f64,
    draft_s: f64,
    /// Drafting round trips since the last one without drafts.
    since_probe: u32,
    max: usize,
    /// Trees, per [`Grower`]: decayed sums of drafts that stood and of drafts the grower
    /// expected to stand.
    tree_stood: [f64; 2],
    tree_expected: [f64; 2],
    /// Trees: the device's time per node of the layer pass, seconds.
    layer_s: f64,
    /// Trees: moving average of the nodes sent.
    tree_sent: f64,
    /// The worker's drafts: conditional acceptance along its chains, and its time per
    /// drafting pass (seconds, 0 until measured).
    worker: Acceptance,
    pass_s: f64,
}

/// A decision for the next round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub source: Source,
    pub drafts: usize,
}

impl DraftPolicy {
    /// A policy starting from the head's held-out acceptance curve, at most `max` drafts.
    pub fn new(head_prior: &[f64], max: usize) -> DraftPolicy {
        DraftPolicy {
            head: Acceptance::new(head_prior),
            lookup: Acceptance::new(&[LOOKUP_PRIOR]),
            step_s: 0.0,
            base_s: 0.0,
            node_s: 0.0,
            draft_s: 0.0,
            since_probe: 0,
            max: max.min(MAX_DRAFT),
            tree_stood: [TREE_PRIOR; 2],
            tree_expected: [TREE_PRIOR; 2],
            layer_s: 0.0,
            tree_sent: 0.0,
            worker: Acceptance::new(head_prior),
            pass_s: 0.0,
        }
    }

    /// Starts the acceptance of the worker's chains from `prior` (its state predictor's
    /// held-out figures) instead of the head's.
    pub fn with_worker_prior(mut self, prior: &[f64]) -> DraftPolicy {
        if !prior.is_empty() {
            self.worker = Acceptance::new(prior);
        }
        self
    }

    /// Records the worker's drafts after a step: `depth` passes deep, made in `seconds`.
    pub fn observe_proposals(&mut self, depth: usize, seconds: f64) {
        if depth > 0 && seconds > 0.0 {
            self.pass_s = smooth(self.pass_s, seconds / depth as f64);
        }
    }

    /// Records how the worker's main chain fared in a tree: `drafted` of its drafts sent, the
    /// first `accepted` of them standing.
    pub fn record_worker(&mut self, drafted: usize, accepted: usize) {
        self.worker.observe(drafted, accepted);
    }

    /// How deep the worker should draft after the next step, at most `max` (at least 1):
    /// the depth with the most tokens per second. Until the round trip and a pass are timed,
    /// `max`, to measure.
    pub fn proposal_depth(&self, max: usize) -> usize {
        if max == 0 {
            return 0;
        }
        if self.pass_s <= 0.0 || self.base_s <= 0.0 {
            return max;
        }
        let per_depth = self.pass_s + self.node_s + self.layer_s;
        fastest((1..=max.min(MAX_DRAFT)).map(|d| {
            let rate = self.worker.expected_tokens(d) / (self.base_s + d as f64 * per_depth);
            (d, rate)
        }))
    }

    /// How many nodes a tree is grown for, with `room` at most: twice what recent trees sent
    /// (at least [`MIN_GROWTH`]), since growing what will not be sent costs device time.
    pub fn tree_growth(&self, room: usize) -> usize {
        ((2.0 * self.tree_sent).ceil() as usize)
            .max(MIN_GROWTH)
            .min(room)
    }

    /// Whether the next round trip should go without drafts, to measure `base` (see
    /// [`DraftPolicy::choose`]).
    pub fn probe_due(&self) -> bool {
        self.step_s > 0.0 && (self.base_s <= 0.0 || self.since_probe >= PROBE_EVERY)
    }

    /// How far the grower's own estimate of the drafts that stand is borne out.
    pub fn tree_calibration(&self, by: Grower) -> f64 {
        self.tree_stood[by as usize] / self.tree_expected[by as usize].max(1e-9)
    }

    /// How many nodes of a tree grown `by` to send, `expected[n]` being the grower's estimate of
    /// the drafts the first `n` settle (`expected[0] == 0`), with `room` nodes at most. Before
    /// the round trip is timed, up to four, to measure.
    pub fn tree_nodes(&self, by: Grower, expected: &[f64], room: usize) -> usize {
        let cap = room.min(expected.len().saturating_sub(1));
        if self.step_s <= 0.0 || self.base_s <= 0.0 {
            return cap.min(4);
        }
        let c = self.tree_calibration(by);
        let per_node = self.node_s + self.layer_s;
        fastest((0..=cap).map(|n| {
            (
                n,
                (1.0 + c * expected[n]) / (self.base_s + n as f64 * per_node),
            )
        }))
    }

    /// Records the verification of a tree grown `by`: `nodes` sent, of which the grower expected
    /// `expected` to stand and `accepted` did, the round trip's time and the device's layer
    /// pass time.
    pub fn observe_tree(
        &mut self,
        by: Grower,
        nodes: usize,
        expected: f64,
        accepted: usize,
        step_s: f64,
        layer_s: f64,
    ) {
        self.tree_sent = smooth(self.tree_sent, nodes as f64);
        if nodes > 0 {
            let i = by as usize;
            self.tree_stood[i] = self.tree_stood[i] * DECAY + accepted as f64;
            self.tree_expected[i] = self.tree_expected[i] * DECAY + expected;
            self.layer_s = smooth(self.layer_s, layer_s / (nodes + 1) as f64);
        }
        let plan = Plan {
            source: Source::Head,
            drafts: 0,
        };
        self.observe(plan, nodes, 0, step_s, 0.0);
    }

    pub fn acceptance(&self, source: Source) -> &Acceptance {
        match source {
            Source::Head => &self.head,
            Source::Lookup => &self.lookup,
        }
    }

    /// The plan for the next step, with `room` positions left, a lookup proposal of
    /// `lookup_len` drafts (0: none), and `extra` tree nodes sent beside a head chain. Before
    /// any step was timed the head drafts two, to measure; then, and every [`PROBE_EVERY`]
    /// drafting round trips, one round trip goes without drafts, to measure `base`.
    pub fn choose(
        &self,
        room: usize,
        lookup_len: usize,
        head_available: bool,
        extra: usize,
    ) -> Plan {
        let cap = self.max.min(room);
        let none = Plan {
            source: Source::Head,
            drafts: 0,
        };
        if cap == 0 {
            return none;
        }
        let timed = self.step_s > 0.0;
        if timed && (self.base_s <= 0.0 || self.since_probe >= PROBE_EVERY) {
            return none;
        }
        let base = if self.base_s > 0.0 {
            self.base_s
        } else {
            self.step_s
        }
        .max(1e-4);
        // No drafts: one token per round trip.
        let mut best = (none, 1.0 / base);
        let mut consider = |source: Source, k: usize, cost: f64| {
            let rate = self.acceptance(source).expected_tokens(k) / (base + cost);
            if rate > best.1 {
                best = (Plan { source, drafts: k }, rate);
            }
        };
        for k in 1..=cap.min(lookup_len) {
            consider(Source::Lookup, k, k as f64 * self.node_s);
        }
        if head_available {
            if !timed || self.draft_s <= 0.0 {
                if lookup_len == 0 {
                    return Plan {
                        source: Source::Head,
                        drafts: cap.min(2),
                    };
                }
            } else {
                for k in 1..=cap {
                    let cost = (k + extra) as f64 * self.node_s + k as f64 * self.draft_s;
                    consider(Source::Head, k, cost);
                }
            }
        }
        best.0
    }

    /// Records a verification: the plan's drafts of which `accepted` stood, the `nodes` sent
    /// in all (a tree's included), the round trip's time and the device's time per draft.
    pub fn observe(
        &mut self,
        plan: Plan,
        nodes: usize,
        accepted: usize,
        step_s: f64,
        draft_s: f64,
    ) {
        if plan.drafts > 0 {
            self.record(plan.source, plan.drafts, accepted);
            if plan.source == Source::Head {
                self.draft_s = smooth(self.draft_s, draft_s);
            }
        }
        if nodes == 0 {
            self.base_s = smooth(self.base_s, step_s);
            self.since_probe = 0;
        } else {
            self.since_probe += 1;
            if self.base_s > 0.0 {
                let per_node = (step_s - self.base_s).max(0.0) / nodes as f64;
                self.node_s = smooth(self.node_s, per_node);
            }
        }
        self.step_s = smooth(self.step_s, step_s);
    }

    /// Records how a source's chain fared inside a tree: `drafted` of its drafts sent, the
    /// first `accepted` of them standing.
    pub fn record(&mut self, source: Source, drafted: usize, accepted: usize) {
        match source {
            Source::Head => self.head.observe(drafted, accepted),
            Source::Lookup => self.lookup.observe(drafted, accepted),
        }
    }
}

/// The size with the most tokens per second among `(size, rate)` (the first of equals; 0 if
/// none pays).
fn fastest(rates: impl Iterator<Item = (usize, f64)>) -> usize {
    rates
        .fold(
            (0, 0.0),
            |best, (n, rate)| if rate > best.1 { (n, rate) } else { best },
        )
        .0
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

    fn head(plan: usize) -> Plan {
        Plan {
            source: Source::Head,
            drafts: plan,
        }
    }

    #[test]
    fn expected_tokens_multiplies_the_conditional_acceptances() {
        let a = Acceptance::new(&[0.5]);
        assert!((a.expected_tokens(0) - 1.0).abs() < 1e-12);
        assert!((a.expected_tokens(2) - 1.75).abs() < 1e-12);
        let b = Acceptance::new(&[0.9, 0.5]);
        assert!((b.expected_tokens(2) - (1.0 + 0.9 + 0.45)).abs() < 1e-12);
    }

    #[test]
    fn a_chain_counts_as_tried_only_up_to_its_first_rejection() {
        let mut a = Acceptance::new(&[0.5]);
        for _ in 0..100 {
            a.observe(4, 1);
        }
        assert!(a.at(0) > 0.95, "{}", a.at(0));
        assert!(a.at(1) < 0.05, "{}", a.at(1));
        // Positions after the first rejection learned nothing.
        assert!((a.at(2) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn high_acceptance_over_a_slow_link_drafts_long_and_poor_acceptance_drafts_short() {
        let mut good = DraftPolicy::new(&[0.9], MAX_DRAFT);
        good.observe(head(0), 0, 0, 0.040, 0.0);
        good.observe(head(4), 4, 4, 0.042, 0.002);
        let mut poor = DraftPolicy::new(&[0.05], MAX_DRAFT);
        poor.observe(head(0), 0, 0, 0.040, 0.0);
        poor.observe(head(1), 1, 0, 0.041, 0.004);
        assert!(good.choose(100, 0, true, 0).drafts >= 8);
        assert!(poor.choose(100, 0, true, 0).drafts <= 1);
    }

    #[test]
    fn a_fast_link_makes_drafting_pay_less() {
        let mut slow = DraftPolicy::new(&[0.6], MAX_DRAFT);
        slow.observe(head(0), 0, 0, 0.080, 0.0);
        slow.observe(head(2), 2, 1, 0.081, 0.004);
        let mut fast = DraftPolicy::new(&[0.6], MAX_DRAFT);
        fast.observe(head(0), 0, 0, 0.002, 0.0);
        fast.observe(head(2), 2, 1, 0.003, 0.004);
        assert!(slow.choose(100, 0, true, 0).drafts > fast.choose(100, 0, true, 0).drafts);
    }

    #[test]
    fn a_trusted_lookup_run_beats_a_weak_head() {
        let mut p = DraftPolicy::new(&[0.3], MAX_DRAFT);
        p.observe(head(0), 0, 0, 0.04, 0.0);
        p.observe(head(2), 2, 0, 0.041, 0.003);
        for _ in 0..10 {
            let lookup = Plan {
                source: Source::Lookup,
                drafts: 6,
            };
            p.observe(lookup, 6, 6, 0.041, 0.0);
        }
        let plan = p.choose(100, 6, true, 0);
        assert_eq!(plan.source, Source::Lookup);
        assert_eq!(plan.drafts, 6);
        // Without a proposal the head drafts.
        assert_eq!(p.choose(100, 0, true, 0).source, Source::Head);
    }

    #[test]
    fn drafting_that_costs_more_than_it_settles_stops() {
        let mut p = DraftPolicy::new(&[0.1], MAX_DRAFT);
        p.observe(head(0), 0, 0, 0.010, 0.0);
        // A draft takes as long as the round trip and is rarely accepted.
        for _ in 0..10 {
            p.observe(head(1), 1, 0, 0.010, 0.010);
        }
        assert_eq!(p.choose(100, 0, true, 0).drafts, 0);
    }

    #[test]
    fn without_a_measured_base_or_after_many_drafting_trips_one_trip_goes_without() {
        let mut p = DraftPolicy::new(&[0.9], MAX_DRAFT);
        // Untimed: the head drafts two, to measure.
        assert_eq!(p.choose(100, 0, true, 0).drafts, 2);
        p.observe(head(2), 2, 2, 0.05, 0.001);
        // Timed, but no round trip without drafts yet: probe.
        assert_eq!(p.choose(100, 0, true, 0).drafts, 0);
        p.observe(head(0), 0, 0, 0.04, 0.0);
        assert!(p.choose(100, 0, true, 0).drafts > 0);
        for _ in 0..PROBE_EVERY {
            p.observe(head(4), 4, 4, 0.045, 0.001);
        }
        assert_eq!(p.choose(100, 0, true, 0).drafts, 0);
    }

    #[test]
    fn nodes_that_slow_the_round_trip_make_trees_draft_less() {
        let mut cheap = DraftPolicy::new(&[0.5], MAX_DRAFT);
        cheap.observe(head(0), 0, 0, 0.040, 0.0);
        cheap.observe(head(4), 8, 2, 0.0404, 0.0005);
        let mut dear = DraftPolicy::new(&[0.5], MAX_DRAFT);
        dear.observe(head(0), 0, 0, 0.040, 0.0);
        // Eight nodes added 80 ms: 10 ms a node.
        dear.observe(head(4), 8, 2, 0.120, 0.0005);
        assert!(cheap.choose(100, 0, true, 4).drafts > dear.choose(100, 0, true, 4).drafts);
        assert_eq!(dear.choose(100, 0, true, 4).drafts, 0);
    }

    fn timed_tree_policy(base: f64, node: f64) -> DraftPolicy {
        let mut p = DraftPolicy::new(&[0.5], MAX_DRAFT);
        p.observe_tree(Grower::Head, 0, 0.0, 0, base, 0.0);
        p.observe_tree(Grower::Head, 4, 2.0, 2, base + 4.0 * node, 0.0);
        p
    }

    #[test]
    fn trees_grow_while_a_node_settles_more_than_it_costs() {
        // The head expects 0.6, 0.2, 0.1, 0.01 drafts from its next nodes.
        let expected = [0.0, 0.6, 0.8, 0.9, 0.91];
        let cheap = timed_tree_policy(0.040, 0.001);
        assert_eq!(cheap.tree_nodes(Grower::Head, &expected, 16), 3);
        // 20 ms a node: only the first pays.
        let dear = timed_tree_policy(0.040, 0.020);
        assert_eq!(dear.tree_nodes(Grower::Head, &expected, 16), 1);
        assert_eq!(cheap.tree_nodes(Grower::Head, &expected, 2), 2);
        // Untimed: a few, to measure.
        let fresh = DraftPolicy::new(&[0.5], MAX_DRAFT);
        assert_eq!(fresh.tree_nodes(Grower::Head, &expected, 16), 4);
        assert!(!fresh.probe_due());
    }

    #[test]
    fn a_head_that_promises_more_than_stands_gets_smaller_trees() {
        let expected = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99];
        let mut over = timed_tree_policy(0.040, 0.004);
        let trusted = over.tree_nodes(Grower::Head, &expected, 16);
        for _ in 0..40 {
            over.observe_tree(Grower::Head, 4, 2.0, 0, 0.056, 0.0);
        }
        assert!(
            over.tree_calibration(Grower::Head) < 0.1,
            "{}",
            over.tree_calibration(Grower::Head)
        );
        assert!(over.tree_nodes(Grower::Head, &expected, 16) < trusted);
        // The worker's trees keep their own calibration: the head's misses do not shrink them.
        assert_eq!(over.tree_calibration(Grower::Worker), 1.0);
        assert_eq!(over.tree_nodes(Grower::Worker, &expected, 16), trusted);
    }

    #[test]
    fn the_worker_drafts_deep_when_its_passes_are_cheap_and_shallow_when_they_are_dear() {
        let prior = [0.77];
        let fresh = DraftPolicy::new(&[0.5], MAX_DRAFT).with_worker_prior(&prior);
        // Untimed: as deep as allowed, to measure.
        assert_eq!(fresh.proposal_depth(6), 6);
        assert_eq!(fresh.proposal_depth(0), 0);
        // A 65 ms round trip. At 1 ms a pass every depth up to 6 pays.
        let mut cheap = timed_tree_policy(0.065, 0.0).with_worker_prior(&prior);
        cheap.observe_proposals(6, 0.006);
        assert_eq!(cheap.proposal_depth(6), 6);
        // At 17 ms a pass: 1.77 tokens in 82 ms, 2.36 in 99, 2.82 in 116, 3.17 in 133.
        let mut dear = timed_tree_policy(0.065, 0.0).with_worker_prior(&prior);
        dear.observe_proposals(6, 6.0 * 0.017);
        assert_eq!(dear.proposal_depth(6), 3);
        assert_eq!(dear.proposal_depth(2), 2);
        // Chains that keep failing at their first draft: one pass is enough.
        for _ in 0..60 {
            dear.record_worker(3, 0);
        }
        assert_eq!(dear.proposal_depth(6), 1);
    }

    #[test]
    fn trees_are_grown_for_twice_what_recent_ones_sent() {
        let mut p = DraftPolicy::new(&[0.5], MAX_DRAFT);
        assert_eq!(p.tree_growth(16), MIN_GROWTH);
        for _ in 0..30 {
            p.observe_tree(Grower::Head, 6, 2.0, 2, 0.05, 0.0);
        }
        assert_eq!(p.tree_growth(16), 12);
        assert_eq!(p.tree_growth(9), 9);
    }

    #[test]
    fn the_room_left_caps_the_draft() {
        let mut p = DraftPolicy::new(&[0.95], MAX_DRAFT);
        p.observe(head(0), 0, 0, 0.04, 0.0);
        p.observe(head(4), 4, 4, 0.041, 0.001);
        assert_eq!(p.choose(2, 0, true, 0).drafts, 2);
        assert_eq!(p.choose(0, 0, true, 0).drafts, 0);
        assert_eq!(
            DraftPolicy::new(&[0.9], MAX_DRAFT)
                .choose(5, 0, true, 0)
                .drafts,
            2
        );
        assert_eq!(
            DraftPolicy::new(&[0.9], MAX_DRAFT)
                .choose(5, 0, false, 0)
                .drafts,
            0
        );
    }
}
