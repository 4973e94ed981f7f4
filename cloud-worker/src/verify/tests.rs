use super::*;

/// Pearson's χ² of observed counts against probabilities.
fn chi_square(counts: &[usize], p: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .zip(p)
        .map(|(&c, &pi)| {
            let e = n as f64 * pi;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

/// χ² critical value for 5 degrees of freedom at significance 0.001.
const CHI2_5_0001: f64 = 20.515;

fn dist(p: &[f64]) -> Vec<(u32, f64)> {
    p.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect()
}

/// The token settled at the first drafted position, over many seeds, with `verify` standing for
/// the worker: the device draws its draft from `q` exactly as `SplitRun` does.
fn first_token_counts(
    p: &[f64],
    q: &[f64],
    seeds: u64,
    verify: impl Fn(u32, &DraftDist, &[Vec<(u32, f64)>], u64) -> u32,
) -> Vec<usize> {
    let qd = DraftDist(dist(q).into_iter().filter(|x| x.1 > 0.0).collect());
    let rows = vec![dist(p), dist(p)];
    let mut counts = vec![0usize; p.len()];
    for seed in 1..=seeds {
        let draft = draw(&qd.0, uniform(seed, 40, draws::DRAFT));
        counts[verify(draft, &qd, &rows, seed) as usize] += 1;
    }
    counts
}

fn the_verifier(draft: u32, q: &DraftDist, p: &[Vec<(u32, f64)>], seed: u64) -> u32 {
    let v = verify_sampled(&[draft], std::slice::from_ref(q), p, seed, 40).unwrap();
    if v.accepted == 1 { draft } else { v.next }
}

const P: [f64; 6] = [0.30, 0.25, 0.20, 0.12, 0.08, 0.05];
/// A draft distribution that disagrees a lot, and misses token 5 entirely.
const Q: [f64; 6] = [0.05, 0.10, 0.15, 0.30, 0.40, 0.0];

#[test]
fn rejection_sampling_settles_tokens_distributed_as_the_full_model() {
    // The last is a prompt-lookup draft: all of its mass on the proposed token.
    for q in [
        Q,
        P,
        [0.9, 0.02, 0.02, 0.02, 0.02, 0.02],
        [0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
    ] {
        let counts = first_token_counts(&P, &q, 40_000, the_verifier);
        let chi2 = chi_square(&counts, &P);
        assert!(
            chi2 < CHI2_5_0001,
            "χ² = {chi2:.1} for q = {q:?}: {counts:?}"
        );
    }
}

#[test]
fn the_test_catches_a_verifier_that_accepts_every_draft() {
    let counts = first_token_counts(&P, &Q, 40_000, |d, _, _, _| d);
    let chi2 = chi_square(&counts, &P);
    assert!(
        chi2 > CHI2_5_0001,
        "χ² = {chi2:.1}: the test cannot see the bias"
    );
}

#[test]
fn the_test_catches_a_verifier_that_resamples_from_p_instead_of_the_residual() {
    let biased = |d: u32, q: &DraftDist, p: &[Vec<(u32, f64)>], seed: u64| {
        let pd = p[0][d as usize].1;
        if uniform(seed, 40, draws::ACCEPT) < (pd / q.prob(d)).min(1.0) {
            d
        } else {
            draw(&p[0], uniform(seed, 40, draws::RESIDUAL))
        }
    };
    let counts = first_token_counts(&P, &Q, 40_000, biased);
    let chi2 = chi_square(&counts, &P);
    assert!(
        chi2 > CHI2_5_0001,
        "χ² = {chi2:.1}: the test cannot see the bias"
    );
}

#[test]
fn after_every_draft_is_accepted_the_bonus_follows_the_full_model() {
    // q = p at the draft position: every draft is accepted, the bonus comes from p[1].
    let p1 = [0.05, 0.05, 0.1, 0.2, 0.25, 0.35];
    let rows = vec![dist(&P), dist(&p1)];
    let q = DraftDist(dist(&P));
    let mut counts = vec![0usize; 6];
    for seed in 1..=40_000u64 {
        let d = draw(&q.0, uniform(seed, 7, draws::DRAFT));
        let v = verify_sampled(&[d], std::slice::from_ref(&q), &rows, seed, 7).unwrap();
        assert_eq!(v.accepted, 1);
        counts[v.next as usize] += 1;
    }
    let chi2 = chi_square(&counts, &p1);
    assert!(chi2 < CHI2_5_0001, "χ² = {chi2:.1}: {counts:?}");
}

#[test]
fn greedy_accepts_the_matching_prefix_and_corrects_the_first_miss() {
    assert_eq!(
        verify_greedy(&[5, 6, 7], &[5, 6, 9, 1]),
        Verdict {
            accepted: 2,
            next: 9
        }
    );
    assert_eq!(
        verify_greedy(&[5, 6], &[5, 6, 4]),
        Verdict {
            accepted: 2,
            next: 4
        }
    );
    assert_eq!(
        verify_greedy(&[], &[3]),
        Verdict {
            accepted: 0,
            next: 3
        }
    );
}

#[test]
fn a_tree_accepts_the_branch_the_model_follows() {
    // Root children: 5 (node 0) and 8 (node 3); 5 → 6 (node 1) → 7 (node 2); 5 → 9 (node 4).
    let tree = DraftTree::from_wire(&[5, 6, 7, 8, 9], &[0, 1, 2, 0, 1]).unwrap();
    // The model follows 5, then 9 (the second branch under 5), then says 4.
    let argmax_after = [9, 0, 0, 0, 4];
    assert_eq!(verify_tree_greedy(&tree, 5, &argmax_after), (vec![0, 4], 4));
    // It wants 8 first, and 8 has no children: one accepted, then 8's argmax.
    assert_eq!(verify_tree_greedy(&tree, 8, &[0, 0, 0, 2, 0]), (vec![3], 2));
    // Nothing matches: no draft stands, the correction is the root's argmax.
    assert_eq!(verify_tree_greedy(&tree, 1, &argmax_after), (vec![], 1));
    // A chain in tree form settles as the chain verifier does.
    let chain = DraftTree::chain(&[5, 6, 7]);
    let (path, next) = verify_tree_greedy(&chain, 5, &[6, 9, 1]);
    let v = verify_greedy(&[5, 6, 7], &[5, 6, 9, 1]);
    assert_eq!((path.len(), next), (v.accepted, v.next));
}

#[test]
fn a_draft_outside_its_own_distribution_is_refused() {
    let q = DraftDist(vec![(1, 1.0)]);
    let err = verify_sampled(&[2], &[q], &[dist(&P), dist(&P)], 1, 0).unwrap_err();
    assert!(err.to_string().contains("no mass"), "{err}");
}

#[test]
fn wire_distributions_are_checked() {
    let wire = |ids: Vec<u32>, probs: Vec<f32>| SparseDistribution {
        token_ids: ids,
        probs,
    };
    let ok = DraftDist::from_wire(&wire(vec![3, 1], vec![0.75, 0.25]), 10).unwrap();
    assert_eq!(ok.prob(3), 0.75);
    for (bad, why) in [
        (wire(vec![3], vec![0.5, 0.5]), "ids and"),
        (wire(vec![], vec![]), "ids and"),
        (wire(vec![10], vec![1.0]), "outside the vocabulary"),
        (wire(vec![2, 2], vec![0.5, 0.5]), "repeated"),
        (wire(vec![1, 2], vec![f32::NAN, 1.0]), "not in [0, 1]"),
        (wire(vec![1, 2], vec![-0.5, 1.5]), "not in [0, 1]"),
        (wire(vec![1, 2], vec![0.5, 0.4]), "sum to"),
    ] {
        let err = DraftDist::from_wire(&bad, 10).unwrap_err();
        assert!(err.to_string().contains(why), "{err} (expected {why})");
    }
}
