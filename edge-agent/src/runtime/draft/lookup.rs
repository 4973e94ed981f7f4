//! Prompt lookup (I/O-free): when the last few tokens of the prompt-and-answer-so-far occurred
//! before, the tokens that followed them then are proposed as drafts. Free on the device, and
//! right whenever an answer copies from its prompt (summaries, rewrites, extracted fields) or
//! repeats itself.

/// Longest suffix tried.
pub const MAX_NGRAM: usize = 4;
/// Shortest suffix that counts as a match.
pub const MIN_NGRAM: usize = 2;
/// Only this many most recent tokens are searched (bounds the work per round trip).
pub const WINDOW: usize = 4096;

/// A proposal: the drafts and the length of the suffix that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub ngram: usize,
    pub drafts: Vec<u32>,
}

/// Drafts for what follows `history`: for the longest suffix of `MAX_NGRAM..=MIN_NGRAM` tokens
/// that occurred earlier, the up to `k` tokens after its most recent earlier occurrence.
pub fn propose(history: &[u32], k: usize) -> Option<Proposal> {
    if k == 0 {
        return None;
    }
    let h = &history[history.len().saturating_sub(WINDOW)..];
    for n in (MIN_NGRAM..=MAX_NGRAM).rev() {
        if h.len() <= n {
            continue;
        }
        let suffix = &h[h.len() - n..];
        // Most recent occurrence that ends before the suffix itself and has a follower.
        let found = (0..h.len() - n).rev().find(|&i| &h[i..i + n] == suffix);
        if let Some(i) = found {
            let from = i + n;
            let drafts = h[from..(from + k).min(h.len())].to_vec();
            if !drafts.is_empty() {
                return Some(Proposal { ngram: n, drafts });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_tokens_after_the_earlier_occurrence_are_proposed() {
        // "1 2 3 4 5 ... 1 2 3" → "4 5" follow.
        let h = [1, 2, 3, 4, 5, 9, 1, 2, 3];
        let p = propose(&h, 2).unwrap();
        assert_eq!(p.ngram, 3);
        assert_eq!(p.drafts, vec![4, 5]);
    }

    #[test]
    fn the_longest_suffix_and_the_latest_occurrence_win() {
        // Suffix "7 8": occurs at 0 (followed by 1) and at 3 (followed by 2); "6 7 8" at 2.
        let h = [7, 8, 1, 6, 7, 8, 2, 5, 6, 7, 8];
        let p = propose(&h, 1).unwrap();
        assert_eq!(p.ngram, 3);
        assert_eq!(p.drafts, vec![2]);
    }

    #[test]
    fn no_repeat_no_proposal() {
        assert_eq!(propose(&[1, 2, 3, 4], 4), None);
        assert_eq!(propose(&[1, 2, 1, 2], 0), None);
        // A single repeated token is below the shortest n-gram.
        assert_eq!(propose(&[5, 1, 2, 5], 3), None);
    }

    proptest! {
        #[test]
        fn proposals_continue_a_real_earlier_match(
            h in proptest::collection::vec(0u32..6, 0..64),
            k in 0usize..8,
        ) {
            if let Some(p) = propose(&h, k) {
                prop_assert!(p.ngram >= MIN_NGRAM && p.ngram <= MAX_NGRAM);
                prop_assert!(!p.drafts.is_empty() && p.drafts.len() <= k);
                let suffix = &h[h.len() - p.ngram..];
                // Some earlier window equals the suffix and is followed by the drafts.
                let ok = (0..h.len() - p.ngram).any(|i| {
                    &h[i..i + p.ngram] == suffix
                        && h[i + p.ngram..].starts_with(&p.drafts)
                });
                prop_assert!(ok);
            }
        }
    }
}
