//! The group's own stop: within `d = min(deadline from above, begin + shutdown_timeout)`,
//! each child starts stopping as soon as every sibling that depends on it is stopped
//! (`stop_order: reverse`), or all at once (`parallel`); once `d` passes, everything left
//! starts stopping at once, which means SIGKILL. The deadline from above can tighten at any
//! time; every stop in flight below is tightened with it. A stop preempts whatever else the
//! group was doing: an operator's request or a reload is answered as interrupted, and the
//! stops they had begun carry on under the tighter deadline, as part of this stop.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::ops::Operation;
use super::slots::{AfterStop, Asker, SlotState};
use super::Group;
use crate::config::{display_path, StopOrder};
use crate::report::{millis, NodeType, StopOutcome, StopRecord};
use crate::supervisor::{not_running, Deadline, DeadlineHandle, Outcome};

/// How long past its deadline a group's stop may end before it counts as missed even though
/// nothing under it was killed: the time to hear the last child's report, not a grace.
const REPORT_LATENCY: Duration = Duration::from_millis(50);

/// Why the group is stopping, and so whom it tells when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// Its parent asked: answers `Up::Stopped` with the records.
    Asked,
    /// Restart intensity exceeded: answers `Up::Ended` (a failure) with the records.
    Failed,
    /// Its parent is gone: nobody to tell.
    Orphaned,
}

pub(super) struct GroupStop {
    deadline: Deadline,
    /// `begin + shutdown_timeout`, and never later than an earlier stop's deadline.
    cap: Instant,
    begin: Instant,
    cause: Cause,
    records: Vec<StopRecord>,
    /// The level's deadline has passed: nothing waits for its dependents any more.
    overdue: bool,
}

impl GroupStop {
    /// The level's deadline now.
    fn d(&self) -> Instant {
        self.deadline.at().min(self.cap)
    }

    /// A child that ended by itself while the group was stopping.
    pub fn ended_meanwhile(&mut self, path: &str, kind: NodeType, records: Vec<StopRecord>) {
        if records.is_empty() {
            self.records.push(not_running(path, kind));
        } else {
            self.records.extend(records);
        }
    }
}

/// What the stop clock says.
pub(super) enum Tick {
    /// The deadline from above moved earlier.
    Tightened,
    /// The level's deadline passed.
    Passed,
}

/// The group's stop clock as an owned future (so the loop's other branches may borrow the
/// group): pends forever while the group is not stopping.
pub(super) fn clock(
    stop: &Option<GroupStop>,
) -> impl std::future::Future<Output = Tick> + Send + 'static {
    let watched = stop
        .as_ref()
        .map(|s| (s.deadline.clone(), s.cap, s.overdue));
    async move {
        let Some((mut deadline, cap, overdue)) = watched else {
            return std::future::pending().await;
        };
        let mut probe = deadline.clone();
        tokio::select! {
            _ = deadline.tightened() => Tick::Tightened,
            _ = probe.passed(cap), if !overdue => Tick::Passed,
        }
    }
}

impl Group {
    /// Begins (or, when already stopping, tightens) the group's own stop.
    pub(super) fn begin_stop(&mut self, deadline: Deadline, cause: Cause) {
        if let Some(stop) = &mut self.stop {
            // A stop from above while failing or orphaned: the tighter deadline binds, and
            // the parent gets the records.
            stop.cap = stop.cap.min(stop.d());
            stop.deadline = deadline;
            stop.deadline.mark_seen();
            if cause == Cause::Asked {
                stop.cause = Cause::Asked;
            }
            self.tighten_children();
            self.advance_stop();
            return;
        }
        let begin = Instant::now();
        self.token.cancel();
        let mut deadline = deadline;
        deadline.mark_seen();
        self.stop = Some(GroupStop {
            deadline,
            cap: begin + self.spec.shutdown_timeout,
            begin,
            cause,
            records: Vec::new(),
            overdue: false,
        });
        self.preempt();
        let d = self.level_deadline();
        let mut records = Vec::new();
        for s in self.live().collect::<Vec<_>>() {
            let kind = self.kind_of(self.slots[s].node);
            let slot = &mut self.slots[s];
            match slot.state {
                SlotState::Stopping { .. } => {
                    slot.take_over_stop(d, Asker::Shutdown, AfterStop::Finish);
                }
                SlotState::Pending { .. } | SlotState::Parked { .. } => {
                    slot.set(SlotState::Stopped);
                    records.push(not_running(&slot.path, kind));
                }
                SlotState::Held | SlotState::Done { .. } | SlotState::Stopped => {
                    records.push(not_running(&slot.path, kind));
                }
                SlotState::Running { .. } | SlotState::Removed | SlotState::Vacant => continue,
            }
            self.publish(s);
        }
        if let Some(stop) = &mut self.stop {
            stop.records.extend(records);
        }
        self.advance_stop();
    }

    /// A stop preempts the operation in flight, the strategy restarts and the queue: their
    /// askers are told, and their stops become part of this one (see `begin_stop`).
    fn preempt(&mut self) {
        let why = format!("interrupted: {} is stopping", display_path(&self.path));
        match self.op.take() {
            Some(Operation::Control(c)) => {
                let _ = c.reply.send(Err(why.clone()));
            }
            Some(Operation::Reload(_)) => self.link.reloaded(),
            None => {}
        }
        self.restarts.clear();
        self.refuse_queued(&why);
    }

    fn level_deadline(&self) -> Instant {
        self.stop
            .as_ref()
            .map(GroupStop::d)
            .unwrap_or_else(Instant::now)
    }

    /// The clock of the group's stop ticked.
    pub(super) fn on_clock(&mut self, tick: Tick) {
        let Some(stop) = &mut self.stop else { return };
        match tick {
            Tick::Tightened => {
                stop.deadline.mark_seen();
                self.tighten_children();
            }
            Tick::Passed => stop.overdue = true,
        }
        self.advance_stop();
    }

    /// Every stop in flight below follows the level's deadline.
    fn tighten_children(&mut self) {
        let d = self.level_deadline();
        for s in &mut self.slots {
            if let SlotState::Stopping { deadline, .. } = &s.state {
                deadline.tighten(d);
            }
        }
    }

    /// Starts stopping every running child whose dependents are all stopped (all of them
    /// once the deadline passed, or with `stop_order: parallel`).
    pub(super) fn advance_stop(&mut self) {
        let Some(stop) = &mut self.stop else { return };
        let d = stop.d();
        if Instant::now() >= d {
            stop.overdue = true;
        }
        let everything = stop.overdue || self.spec.stop_order == StopOrder::Parallel;
        let may_stop = |g: &Group, node: usize| {
            everything
                || g.dependents[node]
                    .iter()
                    .all(|&dep| g.node_slots[dep].iter().all(|&s| !g.slots[s].is_active()))
        };
        let turn: Vec<usize> = self
            .live()
            .filter(|&s| self.slots[s].is_running() && may_stop(self, self.slots[s].node))
            .collect();
        // Highest replica first, as a pool scales down.
        for s in turn.into_iter().rev() {
            let (handle, deadline) = DeadlineHandle::new(d);
            let link = self.slots[s].begin_stop(handle, Asker::Shutdown, AfterStop::Finish);
            self.publish(s);
            if let Some(link) = link {
                if !link.stop(deadline) {
                    // Its task is gone and its last report not handled yet: nothing is left.
                    self.stop_finished(s, vec![]);
                }
            }
        }
    }

    /// A stop in flight is done: the slot moves on, and the records go to whoever asked.
    pub(super) fn stop_finished(&mut self, s: usize, records: Vec<StopRecord>) {
        let path = self.slots[s].path.clone();
        let kind = self.kind_of(self.slots[s].node);
        let mine = display_path(&path).to_string();
        let own = records.iter().find(|r| r.path == mine).cloned();
        let records = if records.is_empty() {
            vec![not_running(&path, kind)]
        } else {
            records
        };
        let asker = self.slots[s].stop_done(own);
        self.publish(s);
        match asker {
            Some(Asker::Shutdown) => {
                if let Some(stop) = &mut self.stop {
                    stop.records.extend(records);
                }
                self.advance_stop();
            }
            Some(Asker::Operator) => {
                if let Some(Operation::Control(c)) = &mut self.op {
                    c.records.extend(records);
                }
                self.control_progress();
            }
            Some(Asker::Strategy) => self.strategy_progress(),
            Some(Asker::Reload) => self.reload_progress(),
            None => {}
        }
        self.nested_reloaded(s);
    }

    /// Once nothing under the group is left: its own record first, then its children's,
    /// to whoever is waiting. Returns true when the group is done.
    pub(super) fn finish_stop_if_done(&mut self) -> bool {
        if self.slots.iter().any(|s| s.is_active()) {
            return false;
        }
        let Some(stop) = self.stop.take() else {
            return false;
        };
        let d = stop.d();
        let took = stop.begin.elapsed();
        let mut records = stop.records;
        // The group itself missed its deadline if stopping ran into `d` (a worker killed at
        // its own, shorter stop_timeout is reported on that worker's line), or if it ended
        // later than `d` by more than it takes to hear the last report.
        let killed_at_d =
            Instant::now() >= d && records.iter().any(|r| r.outcome == StopOutcome::Killed);
        let overran = stop.begin + took > d + REPORT_LATENCY;
        if overran {
            warn!(
                path = %display_path(&self.path),
                "stop ended {} after its deadline",
                crate::supervisor::worker::secs((stop.begin + took).saturating_duration_since(d))
            );
        }
        records.insert(
            0,
            StopRecord {
                path: display_path(&self.path).to_string(),
                kind: NodeType::Group,
                pid: None,
                signal: None,
                deadline_ms: millis(d.saturating_duration_since(stop.begin)),
                took_ms: millis(took),
                outcome: StopOutcome::of(killed_at_d || overran),
                exit: None,
                adopted: Vec::new(),
            },
        );
        match stop.cause {
            Cause::Asked | Cause::Orphaned => self.link.stopped(records),
            Cause::Failed => self.link.ended(Outcome {
                failed: true,
                exit: Some("restart intensity exceeded".into()),
                records,
                ..Outcome::default()
            }),
        }
        true
    }
}
