//! Dynamic draft trees from the draft head (as in EAGLE-2): the tree grows a depth at a time,
//! expanding the [`BEAM`] most likely nodes of the newest depth into their [`CHILDREN`] most
//! likely next tokens, and the nodes sent are the most likely of all by the head's probability
//! of their whole path. A node's path probability bounds its children's, so any prefix of that
//! order is a tree (parents first), and the sum of a prefix's path probabilities is the head's
//! own estimate of the drafts it settles. [`Grown`] is that order; the policy picks the prefix.

use super::tree::DraftTree;

/// Nodes of one depth expanded into the next.
pub const BEAM: usize = 4;
/// Next tokens considered per expanded node.
pub const CHILDREN: usize = 4;
/// Deepest draft.
pub const DEPTH: usize = 8;

/// One candidate node.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Index of the parent candidate; `None` below the root.
    pub parent: Option<usize>,
    pub token: u32,
    /// Natural log of the head's probability of the path from the root to this node.
    pub logp: f64,
}

/// The candidates of a grown tree, most likely path first (parents always before children).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grown {
    pub order: Vec<Candidate>,
}

impl Grown {
    /// Orders `candidates` (in the order they were grown, parents first) by path probability,
    /// keeping a candidate only after its parent.
    pub fn new(candidates: Vec<Candidate>) -> Grown {
        let mut idx: Vec<usize> = (0..candidates.len()).collect();
        // Stable: a child whose probability equals its parent's stays after it.
        idx.sort_by(|&a, &b| candidates[b].logp.total_cmp(&candidates[a].logp));
        let mut placed = vec![None; candidates.len()];
        let mut order = Vec::with_capacity(candidates.len());
        for i in idx {
            let c = &candidates[i];
            let parent = match c.parent {
                None => None,
                Some(p) => match placed[p] {
                    Some(at) => Some(at),
                    None => continue,
                },
            };
            placed[i] = Some(order.len());
            order.push(Candidate {
                parent,
                ..c.clone()
            });
        }
        Grown { order }
    }

    /// Expected drafts settled (the head's estimate) by the first `n` nodes, for n = 0..=len.
    pub fn expected(&self) -> Vec<f64> {
        let mut sums = Vec::with_capacity(self.order.len() + 1);
        let mut s = 0.0;
        sums.push(s);
        for c in &self.order {
            s += c.logp.exp();
            sums.push(s);
        }
        sums
    }

    /// The tree of the first `n` nodes, and its main branch: from the root, the most likely
    /// child each time.
    pub fn tree(&self, n: usize) -> (DraftTree, Vec<usize>) {
        let n = n.min(self.order.len());
        let mut tree = DraftTree::default();
        for c in &self.order[..n] {
            tree.tokens.push(c.token);
            tree.parents.push(c.parent);
        }
        let mut main = Vec::new();
        let mut at = None;
        // Nodes are in order of probability: the first child found is the most likely.
        while let Some(child) = tree.children(at).next() {
            main.push(child);
            at = Some(child);
        }
        (tree, main)
    }
}

/// Log-softmax of one row of logits.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = max
        + row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&v| v as f64 - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(parent: Option<usize>, token: u32, p: f64) -> Candidate {
        Candidate {
            parent,
            token,
            logp: p.ln(),
        }
    }

    #[test]
    fn nodes_come_by_path_probability_with_parents_first() {
        // Root children a (0.6), b (0.3); a's children c (0.6·0.9), d (0.6·0.1); b's e (0.3·0.5).
        let grown = Grown::new(vec![
            cand(None, 1, 0.6),
            cand(None, 2, 0.3),
            cand(Some(0), 3, 0.54),
            cand(Some(0), 4, 0.06),
            cand(Some(1), 5, 0.15),
        ]);
        let tokens: Vec<u32> = grown.order.iter().map(|c| c.token).collect();
        assert_eq!(tokens, [1, 3, 2, 5, 4]);
        let (tree, main) = grown.tree(4);
        assert_eq!(tree.tokens, [1, 3, 2, 5]);
        assert_eq!(tree.parents, [None, Some(0), None, Some(2)]);
        assert_eq!(main, [0, 1]);
        let e = grown.expected();
        assert_eq!(e.len(), 6);
        assert!((e[2] - 1.14).abs() < 1e-9, "{e:?}");
        assert!((e[5] - 1.65).abs() < 1e-9);
    }

    #[test]
    fn a_child_as_likely_as_its_parent_stays_after_it() {
        let grown = Grown::new(vec![cand(None, 7, 0.5), cand(Some(0), 8, 0.5)]);
        let (tree, main) = grown.tree(2);
        assert_eq!(tree.parents, [None, Some(0)]);
        assert_eq!(main, [0, 1]);
    }

    #[test]
    fn a_child_whose_parent_was_dropped_is_dropped() {
        // Inconsistent input (a child more likely than its parent) cannot orphan a node.
        let grown = Grown::new(vec![cand(None, 1, 0.2), cand(Some(0), 2, 0.9)]);
        assert_eq!(grown.order.len(), 1);
        assert_eq!(grown.tree(5).0.tokens, [1]);
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let l = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f64 = l.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!(l[2] > l[1] && l[1] > l[0]);
    }
}
