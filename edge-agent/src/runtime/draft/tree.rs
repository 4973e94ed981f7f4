//! Draft trees (I/O-free): several candidate continuations verified in one worker pass. Nodes
//! are kept in topological order (a parent before its children); the root is the settled token
//! the step starts from, which is not a node. On the wire a tree travels as the drafts' tokens
//! plus `draft_parents`: for draft `i`, 0 for the root and `j + 1` for draft `j < i`.
//!
//! Attention inside a tree: a node sees the committed positions and its own ancestors, at the
//! position `root + depth`. [`DraftTree::paths`] lists the root-to-leaf paths; laid out one
//! after another they turn tree attention into ordinary causal attention per path.

/// A tree of drafts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DraftTree {
    pub tokens: Vec<u32>,
    /// Parent node of each node; `None` for children of the root.
    pub parents: Vec<Option<usize>>,
}

/// Why a wire tree was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTree(pub String);

impl DraftTree {
    /// A chain: each draft the child of the one before.
    pub fn chain(tokens: &[u32]) -> DraftTree {
        DraftTree {
            tokens: tokens.to_vec(),
            parents: (0..tokens.len()).map(|i| i.checked_sub(1)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether every node is the child of the one before (what a plain chain verifies).
    pub fn is_chain(&self) -> bool {
        self.parents
            .iter()
            .enumerate()
            .all(|(i, p)| *p == i.checked_sub(1))
    }

    /// Adds `path` below the root, sharing the nodes of an existing equal prefix (a trie);
    /// returns the node of each token.
    pub fn insert_path(&mut self, path: &[u32]) -> Vec<usize> {
        let mut parent = None;
        let mut nodes = Vec::with_capacity(path.len());
        for &t in path {
            let existing =
                (0..self.len()).find(|&i| self.parents[i] == parent && self.tokens[i] == t);
            let node = existing.unwrap_or_else(|| {
                self.tokens.push(t);
                self.parents.push(parent);
                self.len() - 1
            });
            nodes.push(node);
            parent = Some(node);
        }
        nodes
    }

    /// Children of `node` (`None`: of the root), in order.
    pub fn children(&self, node: Option<usize>) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(move |&i| self.parents[i] == node)
    }

    /// Depth of each node: 1 for children of the root.
    pub fn depths(&self) -> Vec<usize> {
        let mut d: Vec<usize> = Vec::with_capacity(self.len());
        for p in &self.parents {
            let depth = p.map_or(1, |p| d[p] + 1);
            d.push(depth);
        }
        d
    }

    /// The nodes from the root's child down to `node`.
    pub fn path_to(&self, node: usize) -> Vec<usize> {
        let mut path = vec![node];
        let mut at = node;
        while let Some(p) = self.parents[at] {
            path.push(p);
            at = p;
        }
        path.reverse();
        path
    }

    /// Every root-to-leaf path, leaves in node order.
    pub fn paths(&self) -> Vec<Vec<usize>> {
        (0..self.len())
            .filter(|&i| self.children(Some(i)).next().is_none())
            .map(|leaf| self.path_to(leaf))
            .collect()
    }

    /// The wire form of the parents (see the module documentation).
    pub fn wire_parents(&self) -> Vec<u32> {
        self.parents
            .iter()
            .map(|p| p.map_or(0, |j| j as u32 + 1))
            .collect()
    }

    /// A tree from its wire form; empty `parents` means a chain.
    pub fn from_wire(tokens: &[u32], parents: &[u32]) -> Result<DraftTree, BadTree> {
        if parents.is_empty() {
            return Ok(DraftTree::chain(tokens));
        }
        if parents.len() != tokens.len() {
            return Err(BadTree(format!(
                "{} draft parents for {} drafts",
                parents.len(),
                tokens.len()
            )));
        }
        let mut tree = DraftTree::default();
        for (i, (&t, &p)) in tokens.iter().zip(parents).enumerate() {
            if p as usize > i {
                return Err(BadTree(format!(
                    "draft {i} names parent {p}: parents must come before their children"
                )));
            }
            let parent = (p as usize).checked_sub(1);
            if tree.children(parent).any(|c| tree.tokens[c] == t) {
                return Err(BadTree(format!(
                    "draft {i} repeats token {t} under the same parent"
                )));
            }
            tree.tokens.push(t);
            tree.parents.push(parent);
        }
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_share_prefixes_like_a_trie() {
        let mut t = DraftTree::default();
        assert_eq!(t.insert_path(&[5, 6, 7]), vec![0, 1, 2]);
        assert_eq!(t.insert_path(&[5, 9]), vec![0, 3]);
        assert_eq!(t.insert_path(&[8]), vec![4]);
        assert_eq!(t.depths(), vec![1, 2, 3, 2, 1]);
        assert_eq!(t.paths(), vec![vec![0, 1, 2], vec![0, 3], vec![4]]);
        assert_eq!(t.wire_parents(), vec![0, 1, 2, 1, 0]);
        assert!(!t.is_chain());
        assert!(DraftTree::chain(&[1, 2, 3]).is_chain());
    }

    #[test]
    fn bad_wire_trees_are_refused() {
        assert!(DraftTree::from_wire(&[1, 2], &[0]).is_err());
        // Draft 0 cannot hang below draft 0.
        assert!(DraftTree::from_wire(&[1, 2], &[1, 1]).is_err());
        // Two equal tokens below one parent.
        assert!(DraftTree::from_wire(&[1, 1], &[0, 0]).is_err());
        assert_eq!(
            DraftTree::from_wire(&[1, 2], &[]).unwrap(),
            DraftTree::chain(&[1, 2])
        );
    }

    proptest! {
        #[test]
        fn the_wire_form_round_trips_and_paths_cover_every_node(
            paths in proptest::collection::vec(proptest::collection::vec(0u32..4, 1..5), 1..5)
        ) {
            let mut t = DraftTree::default();
            for p in &paths {
                t.insert_path(p);
            }
            let back = DraftTree::from_wire(&t.tokens, &t.wire_parents()).unwrap();
            prop_assert_eq!(&back, &t);
            let mut seen = vec![false; t.len()];
            for path in t.paths() {
                let depths = t.depths();
                for (j, &n) in path.iter().enumerate() {
                    seen[n] = true;
                    prop_assert_eq!(depths[n], j + 1);
                }
            }
            prop_assert!(seen.iter().all(|&s| s));
        }
    }
}
