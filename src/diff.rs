//! Reload diff: what changes between two versions of a group's children, by name. Pure, so
//! the summary logged and returned to `arborist reload` is exactly what the groups apply.

use serde::{Deserialize, Serialize};

use crate::config::{join_path, GroupSpec, NodeKind, NodeSpec};

/// What happens to one child on reload.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Same spec (depends_on may differ: it is updated in place).
    Unchanged,
    Added,
    Removed,
    /// A worker whose spec changed (beyond `replicas`): its replicas restart with the new spec;
    /// also a node that turned from worker to group or back.
    Restart,
    /// Only `replicas` changed: the highest indexes stop first, new indexes start.
    Scale {
        from: u32,
        to: u32,
    },
    /// A group whose own settings or children changed: applied inside it, in place.
    Regroup,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChildChange {
    pub name: String,
    /// Index in the old children, when it existed.
    pub old: Option<usize>,
    /// Index in the new children, when it exists.
    pub new: Option<usize>,
    pub change: Change,
}

/// Changes of a group's direct children: the new children in order, then the removed ones.
pub fn diff_children(old: &[NodeSpec], new: &[NodeSpec]) -> Vec<ChildChange> {
    let mut out = Vec::new();
    for (n, node) in new.iter().enumerate() {
        let o = old.iter().position(|x| x.name == node.name);
        let change = match o {
            None => Change::Added,
            Some(o) => compare(&old[o], node),
        };
        out.push(ChildChange {
            name: node.name.clone(),
            old: o,
            new: Some(n),
            change,
        });
    }
    for (o, node) in old.iter().enumerate() {
        if !new.iter().any(|x| x.name == node.name) {
            out.push(ChildChange {
                name: node.name.clone(),
                old: Some(o),
                new: None,
                change: Change::Removed,
            });
        }
    }
    out
}

fn compare(old: &NodeSpec, new: &NodeSpec) -> Change {
    match (&old.kind, &new.kind) {
        (NodeKind::Worker(a), NodeKind::Worker(b)) => {
            let mut same_but_replicas = (**a).clone();
            same_but_replicas.replicas = b.replicas;
            if same_but_replicas != **b {
                Change::Restart
            } else if a.replicas != b.replicas {
                Change::Scale {
                    from: a.replicas,
                    to: b.replicas,
                }
            } else {
                Change::Unchanged
            }
        }
        (NodeKind::Group(a), NodeKind::Group(b)) => {
            if a == b {
                Change::Unchanged
            } else {
                Change::Regroup
            }
        }
        _ => Change::Restart,
    }
}

/// The reload summary over the whole tree, as node paths.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Workers restarted with a new spec.
    pub changed: Vec<String>,
    /// "path: 2 -> 4".
    pub scaled: Vec<String>,
    /// Groups whose own settings changed, and nodes whose depends_on changed: applied in place.
    pub updated: Vec<String>,
    /// Worker processes left untouched (same PIDs).
    pub unchanged: u64,
}

impl ReloadSummary {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.scaled.is_empty()
            && self.updated.is_empty()
    }

    pub fn line(&self) -> String {
        let list = |v: &Vec<String>| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        format!(
            "added: {}; removed: {}; changed: {}; scaled: {}; updated in place: {}; unchanged workers: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.changed),
            list(&self.scaled),
            list(&self.updated),
            self.unchanged
        )
    }
}

pub fn summarize(old: &GroupSpec, new: &GroupSpec) -> ReloadSummary {
    let mut s = ReloadSummary::default();
    walk(old, new, "", &mut s);
    s
}

fn workers(node: &NodeSpec) -> u64 {
    match &node.kind {
        NodeKind::Worker(w) => w.replicas as u64,
        NodeKind::Group(g) => g.children.iter().map(workers).sum(),
    }
}

fn walk(old: &GroupSpec, new: &GroupSpec, path: &str, s: &mut ReloadSummary) {
    let own_changed = GroupSpec {
        children: vec![],
        ..old.clone()
    } != GroupSpec {
        children: vec![],
        ..new.clone()
    };
    if own_changed && !path.is_empty() {
        s.updated.push(path.to_string());
    } else if own_changed {
        s.updated.push("(root)".to_string());
    }
    for c in diff_children(&old.children, &new.children) {
        let p = join_path(path, &c.name);
        let deps_changed = match (c.old, c.new) {
            (Some(o), Some(n)) => old.children[o].depends_on != new.children[n].depends_on,
            _ => false,
        };
        if deps_changed {
            s.updated.push(format!("{p} (depends_on)"));
        }
        match c.change {
            Change::Added => s.added.push(p),
            Change::Removed => s.removed.push(p),
            Change::Restart => s.changed.push(p),
            Change::Scale { from, to } => {
                s.scaled.push(format!("{p}: {from} -> {to}"));
                s.unchanged += from.min(to) as u64;
            }
            Change::Unchanged => {
                s.unchanged += workers(&new.children[c.new.unwrap_or(0)]);
            }
            Change::Regroup => {
                if let (Some(o), Some(n)) = (c.old, c.new) {
                    if let (NodeKind::Group(a), NodeKind::Group(b)) =
                        (&old.children[o].kind, &new.children[n].kind)
                    {
                        walk(a, b, &p, s);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tree(text: &str) -> GroupSpec {
        crate::config::parse(text, Path::new("t.yaml"))
            .unwrap()
            .root
    }

    #[test]
    fn diff_finds_every_kind_of_change() {
        let old = tree(
            "children:\n  a: {shell: x}\n  b: {shell: x, replicas: 2}\n  c: {shell: x}\n  d: {shell: x}\n  g: {children: {w: {shell: x}}}\n",
        );
        let new = tree(
            "children:\n  a: {shell: x}\n  b: {shell: x, replicas: 4}\n  c: {shell: y}\n  e: {shell: x}\n  g: {strategy: one_for_all, children: {w: {shell: x}, v: {shell: x}}}\n",
        );
        let s = summarize(&old, &new);
        assert_eq!(s.added, vec!["e", "g/v"]);
        assert_eq!(s.removed, vec!["d"]);
        assert_eq!(s.changed, vec!["c"]);
        assert_eq!(s.scaled, vec!["b: 2 -> 4"]);
        assert_eq!(s.updated, vec!["g"]);
        // a, b#0, b#1, g/w
        assert_eq!(s.unchanged, 4);
    }

    #[test]
    fn identical_trees_have_an_empty_diff() {
        let t = tree("children:\n  a: {shell: x}\n");
        assert!(summarize(&t, &t).is_empty());
    }

    #[test]
    fn depends_on_change_is_an_in_place_update() {
        let old = tree("children:\n  a: {shell: x}\n  b: {shell: x}\n");
        let new = tree("children:\n  a: {shell: x}\n  b: {shell: x, depends_on: [a]}\n");
        let s = summarize(&old, &new);
        assert_eq!(s.updated, vec!["b (depends_on)"]);
        assert!(s.changed.is_empty());
        assert_eq!(s.unchanged, 2);
    }
}
