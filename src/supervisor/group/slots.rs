//! One slot per child replica of a group, and the one enum that says where it is in its life.
//! Every change of state goes through a transition method here, and what the status board
//! shows is derived from the state, never kept beside it.

use std::time::Duration;

use tokio::time::Instant;

use crate::report::StopRecord;
use crate::status::NodeState;
use crate::supervisor::backoff::BackoffState;
use crate::supervisor::{DeadlineHandle, Downlink};

/// Who asked for a stop that is in flight, and so where its records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asker {
    /// An operator's stop or restart (the group's current operation).
    Operator,
    /// A reload that retires or replaces this node.
    Reload,
    /// The group's strategy restarting siblings of a failed child.
    Strategy,
    /// The group's own stop (its parent asked, or it failed).
    Shutdown,
}

/// What a slot becomes once its stop is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterStop {
    /// Held by an operator until an operator starts it again.
    Hold,
    /// Waits for the strategy restart that stopped it.
    Park,
    /// Gone with a reload.
    Remove,
    /// Stopped with its group.
    Finish,
}

/// Where a running child is in its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting out a restart delay.
    Backoff,
    /// Spawned (a group: launched), not ready yet.
    Starting,
    /// Up, with no readiness check.
    Running,
    /// Its readiness check passed.
    Ready,
}

#[derive(Debug)]
pub(crate) enum SlotState {
    /// Waiting for its dependencies or a start permit; `delay` is its backoff.
    Pending { delay: Duration },
    /// A run task exists.
    Running {
        run: u64,
        link: Downlink,
        phase: Phase,
    },
    /// Asked to stop; waits for the run's `Stopped` (or `Ended`) report.
    Stopping {
        run: u64,
        deadline: DeadlineHandle,
        asker: Asker,
        then: AfterStop,
    },
    /// No run: waits for the strategy restart that stopped it, then starts after `delay`.
    Parked { delay: Duration },
    /// Stopped by an operator: not started again until an operator starts it.
    Held,
    /// Ended and not restarted (restart policy); `clean` when it exited 0.
    Done { clean: bool },
    /// Stopped with its group.
    Stopped,
    /// Retired by a reload that is still stopping other nodes; becomes a vacancy when the
    /// reload is applied.
    Removed,
    /// An empty place in the table, filled again by the next added slot. Runs are numbered
    /// per group, never per slot, so a late report of an earlier occupant never matches.
    Vacant,
}

pub(crate) struct Slot {
    pub node: usize,
    pub replica: u32,
    pub path: String,
    pub state: SlotState,
    /// Has been ready since the start sequence last (re)started it: gates its dependents.
    /// Kept across one_for_one restarts, so dependents do not wait again for a crash.
    pub ever_ready: bool,
    pub backoff: BackoffState,
    /// Whether the node has a readiness check (a group always does: all children ready).
    pub has_probe: bool,
    // What the status board shows besides the state.
    pub pid: Option<u32>,
    pub since: Option<Instant>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub next_start_at: Option<Instant>,
    pub stop_report: Option<StopRecord>,
}

impl Slot {
    pub fn new(node: usize, replica: u32, path: String, has_probe: bool) -> Slot {
        Slot {
            node,
            replica,
            path,
            state: SlotState::Pending {
                delay: Duration::ZERO,
            },
            ever_ready: false,
            backoff: BackoffState::default(),
            has_probe,
            pid: None,
            since: None,
            restarts: 0,
            last_exit: None,
            next_start_at: None,
            stop_report: None,
        }
    }

    /// The state the status board shows.
    pub fn status(&self) -> NodeState {
        match &self.state {
            SlotState::Pending { .. } | SlotState::Parked { .. } => NodeState::Waiting,
            SlotState::Running { phase, .. } => match phase {
                Phase::Backoff => NodeState::Backoff,
                Phase::Starting => NodeState::Starting,
                Phase::Running => NodeState::Running,
                Phase::Ready => NodeState::Ready,
            },
            SlotState::Stopping { .. } => NodeState::Stopping,
            SlotState::Held | SlotState::Stopped | SlotState::Removed | SlotState::Vacant => {
                NodeState::Stopped
            }
            SlotState::Done { clean: true } => NodeState::Stopped,
            SlotState::Done { clean: false } => NodeState::Failed,
        }
    }

    /// A slot of the current spec (not retired by a reload, not a vacancy).
    pub fn is_live(&self) -> bool {
        !matches!(self.state, SlotState::Removed | SlotState::Vacant)
    }

    /// A run task exists that has not been asked to stop.
    pub fn is_running(&self) -> bool {
        matches!(self.state, SlotState::Running { .. })
    }

    /// Something of a run may still be alive (running or stopping).
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            SlotState::Running { .. } | SlotState::Stopping { .. }
        )
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, SlotState::Done { .. })
    }

    /// The run number of the task this slot is waiting on, if any.
    pub fn run(&self) -> Option<u64> {
        match &self.state {
            SlotState::Running { run, .. } | SlotState::Stopping { run, .. } => Some(*run),
            _ => None,
        }
    }

    /// Running → launched (in backoff when `delay` is not zero).
    pub fn launched(&mut self, run: u64, link: Downlink, delay: Duration, is_group: bool) {
        let now = Instant::now();
        self.pid = None;
        self.stop_report = None;
        // A worker's uptime starts when its process does (`started`); a group's when it is
        // launched.
        self.since = is_group.then_some(now + delay);
        self.next_start_at = (!delay.is_zero()).then_some(now + delay);
        let phase = if delay.is_zero() {
            Phase::Starting
        } else {
            Phase::Backoff
        };
        self.state = SlotState::Running { run, link, phase };
    }

    /// The worker's process was spawned.
    pub fn started(&mut self, pid: u32) {
        if let SlotState::Running { phase, .. } = &mut self.state {
            *phase = if self.has_probe {
                Phase::Starting
            } else {
                Phase::Running
            };
            self.pid = Some(pid);
            self.since = Some(Instant::now());
            self.next_start_at = None;
        }
    }

    pub fn ready(&mut self) {
        if let SlotState::Running { phase, .. } = &mut self.state {
            self.ever_ready = true;
            if self.has_probe {
                *phase = Phase::Ready;
            }
        }
    }

    /// Running → Stopping: takes the run's downlink so the caller can send the request.
    pub fn begin_stop(
        &mut self,
        deadline: DeadlineHandle,
        asker: Asker,
        then: AfterStop,
    ) -> Option<Downlink> {
        let SlotState::Running { run, .. } = self.state else {
            return None;
        };
        let old = std::mem::replace(
            &mut self.state,
            SlotState::Stopping {
                run,
                deadline,
                asker,
                then,
            },
        );
        match old {
            SlotState::Running { link, .. } => Some(link),
            _ => None,
        }
    }

    /// A stop already in flight is taken over by a new asker: its deadline tightens to `at`,
    /// and what follows it changes.
    pub fn take_over_stop(&mut self, at: Instant, new_asker: Asker, new_then: AfterStop) {
        if let SlotState::Stopping {
            deadline,
            asker,
            then,
            ..
        } = &mut self.state
        {
            deadline.tighten(at);
            *asker = new_asker;
            *then = new_then;
        }
    }

    /// Stopping → what the stop said should follow. Returns who asked for the stop.
    pub fn stop_done(&mut self, record: Option<StopRecord>) -> Option<Asker> {
        let SlotState::Stopping { asker, then, .. } = self.state else {
            return None;
        };
        self.pid = None;
        self.next_start_at = None;
        self.stop_report = record;
        self.state = match then {
            AfterStop::Hold => SlotState::Held,
            AfterStop::Park => SlotState::Parked {
                delay: Duration::ZERO,
            },
            AfterStop::Remove => SlotState::Removed,
            AfterStop::Finish => SlotState::Stopped,
        };
        Some(asker)
    }

    /// A run ended by itself: the slot has no run any more; the caller decides what follows.
    pub fn ended(&mut self, exit: Option<String>) {
        self.pid = None;
        if exit.is_some() {
            self.last_exit = exit;
        }
    }

    /// To be started again after `delay` once its dependencies allow.
    pub fn make_pending(&mut self, delay: Duration) {
        self.state = SlotState::Pending { delay };
        self.next_start_at = None;
    }

    pub fn set(&mut self, state: SlotState) {
        self.state = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn running(slot: &mut Slot, run: u64) {
        let (tx, _rx) = oneshot::channel();
        slot.launched(run, Downlink::Worker(tx), Duration::ZERO, false);
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_without_probe_is_running_once_spawned_and_ready_with_one() {
        let mut plain = Slot::new(0, 0, "a".into(), false);
        running(&mut plain, 1);
        assert_eq!(plain.status(), NodeState::Starting);
        plain.started(42);
        assert_eq!(plain.status(), NodeState::Running);
        plain.ready();
        assert_eq!(plain.status(), NodeState::Running);
        assert!(plain.ever_ready);

        let mut probed = Slot::new(0, 0, "b".into(), true);
        running(&mut probed, 2);
        probed.started(43);
        assert_eq!(probed.status(), NodeState::Starting);
        probed.ready();
        assert_eq!(probed.status(), NodeState::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_goes_through_stopping_to_what_its_asker_chose() {
        for (then, want) in [
            (AfterStop::Hold, NodeState::Stopped),
            (AfterStop::Park, NodeState::Waiting),
            (AfterStop::Finish, NodeState::Stopped),
        ] {
            let mut s = Slot::new(0, 0, "a".into(), false);
            running(&mut s, 1);
            let (handle, _) = DeadlineHandle::new(Instant::now() + Duration::from_secs(5));
            assert!(s.begin_stop(handle, Asker::Operator, then).is_some());
            assert_eq!(s.status(), NodeState::Stopping);
            assert_eq!(s.run(), Some(1));
            assert_eq!(s.stop_done(None), Some(Asker::Operator));
            assert_eq!(s.status(), want);
            assert_eq!(s.run(), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_takes_over_an_operator_stop_and_tightens_its_deadline() {
        let start = Instant::now();
        let mut s = Slot::new(0, 0, "a".into(), false);
        running(&mut s, 1);
        let (handle, deadline) = DeadlineHandle::new(start + Duration::from_secs(8));
        s.begin_stop(handle, Asker::Operator, AfterStop::Hold);
        s.take_over_stop(
            start + Duration::from_secs(2),
            Asker::Shutdown,
            AfterStop::Finish,
        );
        assert_eq!(deadline.at(), start + Duration::from_secs(2));
        assert_eq!(s.stop_done(None), Some(Asker::Shutdown));
        assert!(matches!(s.state, SlotState::Stopped));
    }

    #[test]
    fn only_a_running_slot_can_begin_a_stop() {
        let mut s = Slot::new(0, 0, "a".into(), false);
        let (handle, _) = DeadlineHandle::new(Instant::now());
        assert!(s
            .begin_stop(handle, Asker::Shutdown, AfterStop::Finish)
            .is_none());
        assert!(matches!(s.state, SlotState::Pending { .. }));
        s.set(SlotState::Done { clean: false });
        assert_eq!(s.status(), NodeState::Failed);
        assert!(s.is_done() && s.is_live() && !s.is_active());
    }
}
