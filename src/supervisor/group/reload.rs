//! A reload as an in-flight operation: first the retired nodes stop (removed children,
//! changed workers, the highest replicas of a pool that shrinks), then the new spec is
//! applied (new slots, paths, board keys), then nested groups apply their part; the parent
//! hears `Up::Reloaded` once all of that is done. Unchanged workers are left untouched.
//! A stop preempts it at any phase (`stop::preempt`); the stops it began carry on under the
//! stop's deadline.

use tokio::time::Instant;

use super::ops::Operation;
use super::slots::{AfterStop, Asker, SlotState};
use super::Group;
use crate::config::{GroupSpec, NodeKind};
use crate::diff::{diff_children, Change, ChildChange};
use crate::status::OrderKey;
use crate::supervisor::Down;

pub(super) struct ReloadOp {
    new: Option<GroupSpec>,
    key: OrderKey,
    changes: Vec<ChildChange>,
    /// Nodes an operator stopped: their new slots start held too.
    held_nodes: Vec<String>,
    retire: Vec<usize>,
    /// Child groups that have not reported `Reloaded` yet (once the spec is applied).
    nested: Vec<usize>,
}

impl Group {
    /// Begins applying a new version of this group's spec, taking `key` as its (possibly
    /// new) place on the status board.
    pub(super) fn begin_reload(&mut self, new: GroupSpec, key: OrderKey) {
        let changes = diff_children(&self.spec.children, &new.children);
        let mut retire = Vec::new();
        let mut held_nodes = Vec::new();
        for c in &changes {
            let Some(old) = c.old else { continue };
            let slots = &self.node_slots[old];
            if !slots.is_empty()
                && slots
                    .iter()
                    .all(|&s| matches!(self.slots[s].state, SlotState::Held))
            {
                held_nodes.push(c.name.clone());
            }
            match &c.change {
                Change::Removed | Change::Restart => retire.extend(slots.iter().copied()),
                Change::Scale { to, .. } => retire.extend(
                    slots
                        .iter()
                        .copied()
                        .filter(|&s| self.slots[s].replica >= *to),
                ),
                Change::Unchanged | Change::Regroup | Change::Added => {}
            }
        }
        let at = Instant::now() + new.shutdown_timeout.min(self.spec.shutdown_timeout);
        // Highest replica first, as a pool scales down.
        for &s in retire.iter().rev() {
            self.stop_slot(s, at, Asker::Reload, AfterStop::Remove);
        }
        self.op = Some(Operation::Reload(Box::new(ReloadOp {
            new: Some(new),
            key,
            changes,
            held_nodes,
            retire,
            nested: Vec::new(),
        })));
        self.reload_progress();
    }

    /// Moves the reload on: applies the spec once the retired nodes are stopped, and reports
    /// once every nested group has applied its part.
    pub(super) fn reload_progress(&mut self) {
        let Some(Operation::Reload(r)) = &mut self.op else {
            return;
        };
        if r.new.is_some() {
            let stopping = r.retire.iter().any(|&s| {
                matches!(
                    self.slots[s].state,
                    SlotState::Stopping {
                        asker: Asker::Reload,
                        ..
                    }
                )
            });
            if stopping {
                return;
            }
            let new = r.new.take();
            let key = std::mem::take(&mut r.key);
            let changes = std::mem::take(&mut r.changes);
            let held_nodes = std::mem::take(&mut r.held_nodes);
            if let Some(new) = new {
                let nested = self.apply(new, key, &changes, &held_nodes);
                if let Some(Operation::Reload(r)) = &mut self.op {
                    r.nested = nested;
                }
            }
        }
        let Some(Operation::Reload(r)) = &self.op else {
            return;
        };
        if !r.nested.is_empty() {
            return;
        }
        self.op = None;
        self.link.reloaded();
        self.start_pending();
        self.next_queued();
    }

    /// A child group applied its part of the reload (or ended, and has nothing to apply).
    pub(super) fn nested_reloaded(&mut self, slot: usize) {
        let Some(Operation::Reload(r)) = &mut self.op else {
            return;
        };
        if r.new.is_some() {
            return;
        }
        let before = r.nested.len();
        r.nested.retain(|&s| s != slot);
        if r.nested.len() != before {
            self.reload_progress();
        }
    }

    /// Applies the new spec to the slots: retired slots become vacancies, added and
    /// scaled-up nodes get slots, every live slot gets its (possibly new) path and board
    /// key, and nested groups are sent their part. Returns the nested groups to wait for.
    fn apply(
        &mut self,
        new: GroupSpec,
        key: OrderKey,
        changes: &[ChildChange],
        held_nodes: &[String],
    ) -> Vec<usize> {
        // Board keys follow spec positions, which may all move: drop this group's entries and
        // publish them again below.
        for node in 0..self.spec.children.len() {
            let mut k = self.key.clone();
            k.push(node as u32);
            self.ctx.board.remove_tree(k);
        }
        self.key = key;
        let old_names: Vec<String> = self.spec.children.iter().map(|c| c.name.clone()).collect();
        self.spec = new;
        for s in self.live().collect::<Vec<_>>() {
            let name = &old_names[self.slots[s].node];
            match self.spec.children.iter().position(|c| &c.name == name) {
                Some(n) => self.slots[s].node = n,
                None => self.slots[s].set(SlotState::Removed),
            }
        }
        self.release_removed();
        for c in changes {
            let Some(n) = c.new else { continue };
            let range = match &c.change {
                Change::Added | Change::Restart => 0..self.replicas_of(n),
                Change::Scale { from, to } if to > from => *from..*to,
                _ => continue,
            };
            let held = held_nodes.contains(&c.name);
            for r in range {
                let s = self.add_slot(n, r);
                if held {
                    self.slots[s].set(SlotState::Held);
                }
            }
        }
        // Paths follow the pool size: `api` alone, `api#0`.. in a pool.
        for s in self.live().collect::<Vec<_>>() {
            let has_probe = self.has_probe(self.slots[s].node);
            let path = self.slot_path(self.slots[s].node, self.slots[s].replica);
            let slot = &mut self.slots[s];
            slot.path = path;
            slot.has_probe = has_probe;
            self.publish(s);
        }
        self.reindex();
        // Nested groups apply their part, and learn their (possibly moved) board key.
        let mut nested = Vec::new();
        for n in 0..self.spec.children.len() {
            let NodeKind::Group(sub) = &self.spec.children[n].kind else {
                continue;
            };
            for &s in &self.node_slots[n] {
                let SlotState::Running { link, .. } = &self.slots[s].state else {
                    continue;
                };
                if let Some(tx) = link.group() {
                    let msg = Down::Reload {
                        spec: Box::new(sub.clone()),
                        key: self.slot_key(s),
                    };
                    if tx.send(msg).is_ok() {
                        nested.push(s);
                    }
                }
            }
        }
        nested
    }
}
