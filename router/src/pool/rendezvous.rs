//! Rendezvous (highest random weight) hashing of session ids over workers: every gateway replica
//! that sees the same healthy workers puts a session on the same one, with no shared state, and
//! removing a worker moves only the sessions that were on it. The score is SHA-256 based, so it
//! is the same across builds, versions and machines.

use sha2::{Digest, Sha256};

/// The weight of `worker` for `session`.
pub fn score(worker: &str, session: &str) -> u64 {
    let d = Sha256::new()
        .chain_update(worker.as_bytes())
        .chain_update([0u8])
        .chain_update(session.as_bytes())
        .finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes of a SHA-256"))
}

/// Workers in the order a session tries them: highest score first (ties by address).
pub fn ranked<'a>(session: &str, workers: &[&'a str]) -> Vec<&'a str> {
    let mut w: Vec<(u64, &'a str)> = workers.iter().map(|a| (score(a, session), *a)).collect();
    w.sort_unstable_by(|x, y| y.cmp(x));
    w.dedup_by(|x, y| x.1 == y.1);
    w.into_iter().map(|(_, a)| a).collect()
}

/// The worker a session belongs on.
pub fn pick<'a>(session: &str, workers: &[&'a str]) -> Option<&'a str> {
    workers
        .iter()
        .copied()
        .max_by_key(|a| (score(a, session), *a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn workers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:50061")).collect()
    }

    #[test]
    fn spreads_sessions_evenly() {
        let w = workers(4);
        let refs: Vec<&str> = w.iter().map(String::as_str).collect();
        let mut counts = [0usize; 4];
        for s in 0..10_000 {
            let p = pick(&format!("session-{s}"), &refs).unwrap();
            counts[refs.iter().position(|a| *a == p).unwrap()] += 1;
        }
        for c in counts {
            assert!((2250..=2750).contains(&c), "{counts:?}");
        }
    }

    proptest! {
        #[test]
        fn removing_a_worker_moves_only_its_sessions(n in 2usize..8, gone in 0usize..8, ids in proptest::collection::vec("[a-f0-9]{8,40}", 1..50)) {
            let w = workers(n);
            let gone = gone % n;
            let all: Vec<&str> = w.iter().map(String::as_str).collect();
            let rest: Vec<&str> = all.iter().copied().filter(|a| *a != all[gone]).collect();
            for id in &ids {
                let before = pick(id, &all).unwrap();
                let after = pick(id, &rest).unwrap();
                if before != all[gone] {
                    prop_assert_eq!(before, after);
                }
                // Failover goes to the session's second choice.
                prop_assert_eq!(ranked(id, &all)[0], before);
                if before == all[gone] {
                    prop_assert_eq!(ranked(id, &all)[1], after);
                }
                // Order of the list does not matter.
                let mut rev = all.clone();
                rev.reverse();
                prop_assert_eq!(pick(id, &rev), Some(before));
            }
        }
    }
}
