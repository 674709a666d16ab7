//! Revision trees: every revision of a document, its branches, and CouchDB's winner rule.
//!
//! A tree is a small arena of nodes. Only leaves keep a body: when a leaf gains a child its body
//! is dropped (what CouchDB's compaction and PouchDB's `auto_compaction` do), so a document edited
//! a thousand times holds one body, not a thousand. Stemming ([`RevTree::stem`]) forgets ancestors
//! more than `revs_limit` edits away from every leaf, and a stemmed tree may have several roots.

use std::collections::BTreeSet;

use crate::rev::Rev;

#[derive(Clone, Debug)]
struct Node<B> {
    rev: Rev,
    parent: Option<u32>,
    deleted: bool,
    body: Option<B>,
}

/// The revision tree of one document; `B` is the stored body.
#[derive(Clone, Debug)]
pub struct RevTree<B> {
    nodes: Vec<Node<B>>,
}

/// One revision of a [`RevTree`] in flat form: what a durable store writes down and reads back
/// ([`RevTree::to_flat`], [`RevTree::from_flat`]). `parent` is an index into the same list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlatRev<B> {
    /// The revision.
    pub rev: Rev,
    /// Index of the parent revision in the list, `None` for a root.
    pub parent: Option<usize>,
    /// Whether the revision is a deletion.
    pub deleted: bool,
    /// The body (leaves only).
    pub body: Option<B>,
}

/// What a merge did.
#[derive(Debug, PartialEq, Eq)]
pub enum Merge {
    /// The leaf revision was already known: nothing changed.
    Existed,
    /// New revisions were added.
    Added,
}

impl<B: Clone> Default for RevTree<B> {
    fn default() -> Self {
        RevTree { nodes: Vec::new() }
    }
}

impl<B: Clone> RevTree<B> {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of revisions known (bodies or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no revision is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Gives back the room kept for revisions not added yet: a tree held for long (in a
    /// memory store) then takes what its revisions need, not the four nodes a first one gets.
    pub fn shrink_to_fit(&mut self) {
        self.nodes.shrink_to_fit();
    }

    /// The index of `rev`, if known.
    pub fn find(&self, rev: &Rev) -> Option<usize> {
        self.nodes.iter().position(|n| n.rev == *rev)
    }

    /// Revision at `idx`.
    pub fn rev(&self, idx: usize) -> &Rev {
        &self.nodes[idx].rev
    }

    /// Whether the revision at `idx` is a deletion.
    pub fn is_deleted(&self, idx: usize) -> bool {
        self.nodes[idx].deleted
    }

    /// The body stored at `idx` (leaves only).
    pub fn body(&self, idx: usize) -> Option<&B> {
        self.nodes[idx].body.as_ref()
    }

    /// The revisions in flat form, in index order.
    pub fn to_flat(&self) -> impl Iterator<Item = FlatRev<&B>> {
        self.nodes.iter().map(|n| FlatRev {
            rev: n.rev.clone(),
            parent: n.parent.map(|p| p as usize),
            deleted: n.deleted,
            body: n.body.as_ref(),
        })
    }

    /// Rebuilds a tree from [`RevTree::to_flat`]'s output, checking it on the way.
    ///
    /// # Errors
    /// A reason when the list is empty, a parent index is out of range, revisions repeat or a
    /// parent is not one position lower than its child: such a list came from a damaged store,
    /// not from a tree. (Bodies are taken as they are: a replicated history that contradicts
    /// the stored one can leave a leaf without a body, and that must read back the same.)
    pub fn from_flat(flat: Vec<FlatRev<B>>) -> Result<Self, String> {
        let n = flat.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(format!("a revision tree of {n} revisions"));
        }
        let mut revs = BTreeSet::new();
        for f in &flat {
            if !revs.insert(&f.rev) {
                return Err(format!("revision {} appears twice", f.rev));
            }
            // Positions fall by one per step towards a root, so no parent chain can loop.
            if let Some(p) = f.parent {
                match flat.get(p) {
                    Some(parent) if parent.rev.pos + 1 == f.rev.pos => {}
                    _ => return Err(format!("revision {} has a bad parent", f.rev)),
                }
            }
        }
        let tree = RevTree {
            nodes: flat
                .into_iter()
                .map(|f| Node {
                    rev: f.rev,
                    parent: f.parent.map(|p| p as u32),
                    deleted: f.deleted,
                    body: f.body,
                })
                .collect(),
        };
        Ok(tree)
    }

    /// Iterates over every stored body.
    pub fn bodies(&self) -> impl Iterator<Item = &B> {
        self.nodes.iter().filter_map(|n| n.body.as_ref())
    }

    fn has_child(&self) -> Vec<bool> {
        let mut v = vec![false; self.nodes.len()];
        for n in &self.nodes {
            if let Some(p) = n.parent {
                v[p as usize] = true;
            }
        }
        v
    }

    /// Whether `idx` has no children.
    pub fn is_leaf(&self, idx: usize) -> bool {
        !self.nodes.iter().any(|n| n.parent == Some(idx as u32))
    }

    fn winner_key(&self, idx: usize) -> (bool, &Rev) {
        (!self.nodes[idx].deleted, &self.nodes[idx].rev)
    }

    /// The leaves, best first by CouchDB's winner rule: non-deleted before deleted, then higher
    /// position, then higher hash. Every replica with the same tree picks the same order.
    pub fn leaves(&self) -> Vec<usize> {
        let hc = self.has_child();
        let mut leaves: Vec<usize> = (0..self.nodes.len()).filter(|&i| !hc[i]).collect();
        leaves.sort_by(|&a, &b| self.winner_key(b).cmp(&self.winner_key(a)));
        leaves
    }

    /// The winning leaf. Panics only on an empty tree, which stores never hold.
    pub fn winner(&self) -> usize {
        if self.nodes.len() == 1 {
            return 0;
        }
        let hc = self.has_child();
        (0..self.nodes.len())
            .filter(|&i| !hc[i])
            .max_by(|&a, &b| self.winner_key(a).cmp(&self.winner_key(b)))
            .expect("a stored revision tree is never empty")
    }

    /// `idx` and its ancestors, newest first (the `_revisions` order).
    pub fn ancestry(&self, idx: usize) -> Vec<usize> {
        let mut out = vec![idx];
        let mut cur = idx;
        while let Some(p) = self.nodes[cur].parent {
            cur = p as usize;
            out.push(cur);
        }
        out
    }

    /// Whether `anc` is `idx` or one of its ancestors.
    pub fn is_ancestor_or_self(&self, anc: usize, idx: usize) -> bool {
        let mut cur = Some(idx as u32);
        while let Some(c) = cur {
            if c as usize == anc {
                return true;
            }
            cur = self.nodes[c as usize].parent;
        }
        false
    }

    /// The leaves that descend from `idx` (itself if it is a leaf), best first.
    pub fn descendant_leaves(&self, idx: usize) -> Vec<usize> {
        self.leaves()
            .into_iter()
            .filter(|&l| self.is_ancestor_or_self(idx, l))
            .collect()
    }

    /// Adds a new revision as a child of `parent` (or as a new root). Returns its index and the
    /// bodies dropped because their revisions stopped being leaves.
    pub fn add_child(
        &mut self,
        parent: Option<usize>,
        rev: Rev,
        deleted: bool,
        body: B,
    ) -> (usize, Vec<B>) {
        self.nodes.push(Node {
            rev,
            parent: parent.map(|p| p as u32),
            deleted,
            body: Some(body),
        });
        let idx = self.nodes.len() - 1;
        let mut dropped = Vec::new();
        if let Some(p) = parent {
            if let Some(b) = self.nodes[p].body.take() {
                dropped.push(b);
            }
        }
        (idx, dropped)
    }

    /// The first revision of `path` (root first) that this tree already holds under a
    /// different parent than the path gives it: such a history cannot be merged without
    /// leaving a branch with no leaf body. Honest replicas never send one (a revision's hash
    /// covers its parent); a buggy or hostile peer can.
    pub fn contradiction<'p>(&self, path: &'p [Rev]) -> Option<&'p Rev> {
        path.windows(2).find_map(|w| {
            let idx = self.find(&w[1])?;
            let parent = self.nodes[idx].parent?;
            (self.nodes[parent as usize].rev != w[0]).then_some(&w[1])
        })
    }

    /// Merges a replicated revision with its ancestry (`path`, oldest first, ending with the new
    /// leaf) the way CouchDB's `new_edits: false` does: known revisions are reused, unknown ones
    /// are added, and a root whose parent arrives is attached to it. Bodies of revisions that stop
    /// being leaves are returned.
    /// Check [`RevTree::contradiction`] first: a contradicting path leaves a bodiless leaf.
    pub fn merge_path(&mut self, path: &[Rev], deleted: bool, body: B) -> (Merge, Vec<B>) {
        let Some(leaf) = path.last() else {
            return (Merge::Existed, Vec::new());
        };
        if self.find(leaf).is_some() {
            return (Merge::Existed, Vec::new());
        }
        let mut prev: Option<usize> = None;
        let last = path.len() - 1;
        let mut body = Some(body);
        for (i, rev) in path.iter().enumerate() {
            match self.find(rev) {
                Some(idx) => {
                    if let Some(p) = prev {
                        if self.nodes[idx].parent.is_none() && self.nodes[p].rev.pos + 1 == rev.pos
                        {
                            self.nodes[idx].parent = Some(p as u32);
                        }
                    }
                    prev = Some(idx);
                }
                None => {
                    self.nodes.push(Node {
                        rev: rev.clone(),
                        parent: prev.map(|p| p as u32),
                        deleted: i == last && deleted,
                        body: if i == last { body.take() } else { None },
                    });
                    prev = Some(self.nodes.len() - 1);
                }
            }
        }
        (Merge::Added, self.compact())
    }

    /// Drops the bodies of revisions that are no longer leaves, returning them.
    fn compact(&mut self) -> Vec<B> {
        let hc = self.has_child();
        let mut dropped = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if hc[i] {
                if let Some(b) = n.body.take() {
                    dropped.push(b);
                }
            }
        }
        dropped
    }

    /// Forgets revisions more than `limit` edits above every leaf (CouchDB's `revs_limit`).
    /// Leaves are never removed, so no body is lost.
    pub fn stem(&mut self, limit: usize) {
        let limit = limit.max(1);
        let hc = self.has_child();
        let mut keep = vec![false; self.nodes.len()];
        for leaf in (0..self.nodes.len()).filter(|&i| !hc[i]) {
            let mut cur = Some(leaf as u32);
            let mut depth = 0;
            while let Some(c) = cur {
                if depth >= limit {
                    break;
                }
                keep[c as usize] = true;
                cur = self.nodes[c as usize].parent;
                depth += 1;
            }
        }
        if keep.iter().all(|&k| k) {
            return;
        }
        let mut remap = vec![u32::MAX; self.nodes.len()];
        let mut next = 0u32;
        for (i, k) in keep.iter().enumerate() {
            if *k {
                remap[i] = next;
                next += 1;
            }
        }
        let old = std::mem::take(&mut self.nodes);
        self.nodes = old
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep[*i])
            .map(|(_, mut n)| {
                n.parent = n
                    .parent
                    .map(|p| remap[p as usize])
                    .filter(|&p| p != u32::MAX);
                n
            })
            .collect();
    }

    /// Every revision with its parent and deletion flag, sorted: two replicas that converged have
    /// equal shapes.
    pub fn shape(&self) -> BTreeSet<(Rev, Option<Rev>, bool)> {
        let hc = self.has_child();
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.rev.clone(),
                    n.parent.map(|p| self.nodes[p as usize].rev.clone()),
                    // Interior deletion flags are not replicated (only leaves carry bodies).
                    !hc[i] && n.deleted,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Rev {
        s.parse().unwrap()
    }

    #[test]
    fn winner_prefers_live_then_pos_then_hash() {
        let mut t: RevTree<u32> = RevTree::new();
        let (a, _) = t.add_child(None, r("1-a"), false, 1);
        let (b, dropped) = t.add_child(Some(a), r("2-b"), false, 2);
        assert_eq!(dropped, vec![1]);
        t.merge_path(&[r("1-a"), r("2-c")], false, 3);
        assert_eq!(t.rev(t.winner()), &r("2-c"));
        t.merge_path(&[r("1-a"), r("2-c"), r("3-d")], true, 4);
        // 3-d is deleted: the live 2-b wins over the deleted 3-d and over 2-c's ancestor slot.
        assert_eq!(t.rev(t.winner()), &r("2-b"));
        assert_eq!(
            t.leaves()
                .iter()
                .map(|&i| t.rev(i).clone())
                .collect::<Vec<_>>(),
            vec![r("2-b"), r("3-d")]
        );
        assert_eq!(t.body(b), Some(&2));
    }

    #[test]
    fn merge_attaches_orphan_roots_and_is_idempotent() {
        let mut t: RevTree<u32> = RevTree::new();
        t.merge_path(&[r("3-c"), r("4-d")], false, 4);
        let (m, _) = t.merge_path(&[r("1-a"), r("2-b"), r("3-c"), r("4-d")], false, 9);
        assert_eq!(m, Merge::Existed);
        t.merge_path(
            &[r("1-a"), r("2-b"), r("3-c"), r("4-d"), r("5-e")],
            false,
            5,
        );
        let anc: Vec<_> = t
            .ancestry(t.winner())
            .iter()
            .map(|&i| t.rev(i).pos)
            .collect();
        assert_eq!(anc, vec![5, 4, 3, 2, 1]);
        assert_eq!(t.bodies().copied().collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn flat_form_round_trips_and_refuses_damage() {
        let mut t: RevTree<u32> = RevTree::new();
        t.merge_path(&[r("3-c"), r("4-d")], false, 4);
        t.merge_path(&[r("1-a"), r("2-b"), r("3-c"), r("4-e")], true, 5);
        let flat: Vec<FlatRev<u32>> = t
            .to_flat()
            .map(|f| FlatRev {
                rev: f.rev,
                parent: f.parent,
                deleted: f.deleted,
                body: f.body.copied(),
            })
            .collect();
        let back = RevTree::from_flat(flat.clone()).unwrap();
        assert_eq!(back.shape(), t.shape());
        assert_eq!(back.rev(back.winner()), t.rev(t.winner()));
        let mut bad = flat.clone();
        bad[0].parent = Some(0);
        assert!(RevTree::from_flat(bad).is_err(), "a loop");
        let mut bad = flat.clone();
        bad[1].parent = Some(99);
        assert!(RevTree::from_flat(bad).is_err(), "out of range");
        let mut bad = flat.clone();
        bad.push(bad[0].clone());
        assert!(RevTree::from_flat(bad).is_err(), "repeated");
        let mut bad = flat;
        bad[1].rev = r("9-z");
        assert!(
            RevTree::from_flat(bad).is_err(),
            "a parent that is not one position lower"
        );
        assert!(RevTree::<u32>::from_flat(Vec::new()).is_err());
    }

    #[test]
    fn stem_keeps_limit_revs_per_leaf() {
        let mut t: RevTree<u32> = RevTree::new();
        let path: Vec<Rev> = (1..=10).map(|i| r(&format!("{i}-h{i}"))).collect();
        t.merge_path(&path, false, 10);
        t.merge_path(&[r("8-h8"), r("9-x")], false, 9);
        t.stem(3);
        let revs: Vec<u64> = t.shape().iter().map(|(r, _, _)| r.pos).collect();
        assert_eq!(revs, vec![7, 8, 9, 9, 10]);
        assert_eq!(t.leaves().len(), 2);
        assert_eq!(t.bodies().count(), 2);
    }
}
