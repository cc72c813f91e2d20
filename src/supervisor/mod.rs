//! The runtime tree: one task per running node. A group task owns its children's slots and
//! decides restarts (strategy, intensity); a worker task owns one process from spawn to
//! reaping. Tasks talk by messages only: events go up (`Up`), requests come down (`Down`).
//! Every node has a `CancellationToken` that is a child of its parent's; cancelling means
//! "stop starting and restarting", while the stop itself is a `Down::Stop` that carries a
//! tightenable [`Deadline`], so each level's deadline is a value passed down, not a hidden
//! timer. No task ever awaits a child: a stop, an operator's request or a reload is state
//! that the group's loop drives, so a tighter stop from above preempts it at once.

mod backoff;
pub mod command;
mod deadline;
mod group;
mod probe;
mod reloads;
pub mod tree;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;

pub(crate) use deadline::{Deadline, DeadlineHandle};

use crate::config::GroupSpec;
use crate::report::{NodeType, StopOutcome, StopRecord};
use crate::status::StatusBoard;

/// What every task of the tree shares.
pub(crate) struct Ctx {
    pub board: StatusBoard,
    /// Changes after every SIGCHLD (once orphans are reaped): process groups may be empty.
    pub child_events: watch::Receiver<u64>,
    pub tracker: TaskTracker,
    /// Events for the tree as a whole (the controller in `tree`).
    pub tree: mpsc::UnboundedSender<TreeEvent>,
    /// Process groups SIGKILLed at a deadline since arborist started, by whichever path
    /// (shutdown, an operator's stop, a strategy restart, a watchdog): any makes `run` exit
    /// 3 rather than 0, and the report counts them.
    pub sigkills: AtomicU64,
    /// The whole tree is stopping: the tree, not each worker, then stops the processes that
    /// left their workers' process groups (one scan instead of one per worker).
    pub shutting_down: AtomicBool,
    /// cgroup mode's backend; None in the process-group fallback.
    pub cgroups: Option<std::sync::Arc<crate::process::owned::Cgroups>>,
}

impl Ctx {
    pub fn note_sigkill(&self) {
        self.sigkills.fetch_add(1, Ordering::Relaxed);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn sigkills(&self) -> u64 {
        self.sigkills.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub(crate) enum TreeEvent {
    /// A `critical` worker ended for good.
    CriticalEnded { path: String, success: bool },
}

/// A child's report to its group. `run` tells stale reports of an earlier run apart.
#[derive(Debug)]
pub(crate) enum Up {
    /// A worker's process was spawned.
    Started {
        slot: usize,
        run: u64,
        pid: u32,
    },
    Ready {
        slot: usize,
        run: u64,
    },
    /// The run ended by itself (an exit, a failed spawn, a watchdog, a group that failed or
    /// settled). Its task is gone.
    Ended {
        slot: usize,
        run: u64,
        outcome: Outcome,
    },
    /// The run stopped as its group asked: the records of everything stopped. Its task is
    /// gone.
    Stopped {
        slot: usize,
        run: u64,
        records: Vec<StopRecord>,
    },
    /// A group applied the reload its parent sent.
    Reloaded {
        slot: usize,
        run: u64,
    },
}

/// How one run of a node ended.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    /// Non-zero exit, killed by a signal, spawn failure; for a group, restart intensity
    /// exceeded.
    pub failed: bool,
    /// The process never started; retried with backoff, but not counted as a restart.
    pub spawn_error: bool,
    /// A group whose children have all ended for good: nothing to restart.
    pub settled: bool,
    pub ran_for: Duration,
    /// "exit status 1", "signal SIGKILL", "spawn failed: ...".
    pub exit: Option<String>,
    /// What the run stopped on its way out (a hung worker's stop sequence, a failed group's
    /// stop of its children); a shutdown report lists them when the stop raced with the end.
    pub records: Vec<StopRecord>,
}

/// A request to a child group from its parent (or to the root from the tree controller).
#[derive(Debug)]
pub(crate) enum Down {
    /// Stop by `deadline` (which the asker may tighten later), then report `Up::Stopped`.
    Stop { deadline: Deadline },
    /// An operator's start/stop/restart of the node at `target` (path segments below this
    /// group). The answer goes straight to `reply`.
    Control {
        op: Op,
        target: Vec<String>,
        reply: oneshot::Sender<ControlResult>,
    },
    /// Apply a new version of this group's spec (possibly the same), take `key` as this
    /// group's place on the status board, then report `Up::Reloaded`.
    Reload {
        spec: Box<GroupSpec>,
        key: crate::status::OrderKey,
    },
}

/// A stop request for a worker. The answer is an `Up::Stopped` (or, when the worker ended
/// by itself meanwhile, its `Up::Ended`).
#[derive(Debug)]
pub(crate) struct StopRequest {
    pub deadline: Deadline,
}

/// A group's line to one running child. A worker only ever gets one stop request (later
/// tightenings travel through its deadline), so a oneshot does: a channel per worker would
/// cost a kilobyte each in a pool of 1000.
#[derive(Debug)]
pub(crate) enum Downlink {
    Worker(oneshot::Sender<StopRequest>),
    Group(mpsc::UnboundedSender<Down>),
}

impl Downlink {
    /// Asks the child to stop by `deadline`; false if its task is already gone.
    pub fn stop(self, deadline: Deadline) -> bool {
        match self {
            Downlink::Worker(tx) => tx.send(StopRequest { deadline }).is_ok(),
            Downlink::Group(tx) => tx.send(Down::Stop { deadline }).is_ok(),
        }
    }

    pub fn group(&self) -> Option<&mpsc::UnboundedSender<Down>> {
        match self {
            Downlink::Group(tx) => Some(tx),
            Downlink::Worker(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Stop,
    Restart,
}

/// What a control operation did.
#[derive(Debug, Clone)]
pub struct ControlDone {
    pub message: String,
    pub records: Vec<StopRecord>,
}

pub type ControlResult = Result<ControlDone, String>;

/// A child's way to talk to its group.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub slot: usize,
    pub run: u64,
    pub up: mpsc::UnboundedSender<Up>,
}

impl Link {
    fn started(&self, pid: u32) {
        let _ = self.up.send(Up::Started {
            slot: self.slot,
            run: self.run,
            pid,
        });
    }
    fn ready(&self) {
        let _ = self.up.send(Up::Ready {
            slot: self.slot,
            run: self.run,
        });
    }
    fn ended(&self, outcome: Outcome) {
        let _ = self.up.send(Up::Ended {
            slot: self.slot,
            run: self.run,
            outcome,
        });
    }
    fn stopped(&self, records: Vec<StopRecord>) {
        let _ = self.up.send(Up::Stopped {
            slot: self.slot,
            run: self.run,
            records,
        });
    }
    fn reloaded(&self) {
        let _ = self.up.send(Up::Reloaded {
            slot: self.slot,
            run: self.run,
        });
    }
}

pub(crate) fn not_running(path: &str, kind: NodeType) -> StopRecord {
    StopRecord {
        path: crate::config::display_path(path).to_string(),
        kind,
        pid: None,
        signal: None,
        deadline_ms: 0,
        took_ms: 0,
        outcome: StopOutcome::NotRunning,
        exit: None,
        adopted: Vec::new(),
    }
}
