//! The runtime tree: one task per running node. A group task owns its children's slots and
//! decides restarts (strategy, intensity); a worker task owns one process from spawn to
//! reaping. Tasks talk by messages only: events go up (`Up`), stop requests come down
//! (`Down`). Every node has a `CancellationToken` that is a child of its parent's; cancelling
//! means "stop starting and restarting", while the stop itself is a `Down::Stop` that carries
//! the deadline, so each level's deadline is a value passed down, not a hidden timer.

mod backoff;
mod group;
mod probe;
pub mod tree;
mod worker;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::GroupSpec;
use crate::report::{StopOutcome, StopRecord};
use crate::status::StatusBoard;

/// What every task of the tree shares.
pub(crate) struct Ctx {
    pub board: StatusBoard,
    /// Changes after every SIGCHLD (once orphans are reaped): process groups may be empty.
    pub child_events: watch::Receiver<u64>,
    pub tracker: TaskTracker,
    /// Events for the tree as a whole (the controller in `tree`).
    pub tree: mpsc::UnboundedSender<TreeEvent>,
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
    Ended {
        slot: usize,
        run: u64,
        outcome: Outcome,
    },
}

/// How one run of a node ended.
#[derive(Debug, Clone)]
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
}

/// A request to a child from its group (or to the root from the tree controller).
#[derive(Debug)]
pub(crate) enum Down {
    /// Stop by `deadline` and answer with the stop records of everything stopped.
    Stop {
        deadline: Instant,
        reply: oneshot::Sender<Vec<StopRecord>>,
    },
    /// An operator's start/stop/restart of the node at `target` (path segments below this
    /// group). Only groups receive it.
    Control {
        op: Op,
        target: Vec<String>,
        reply: oneshot::Sender<ControlResult>,
    },
    /// Apply a new version of this group's spec (possibly the same), and take `key` as this
    /// group's place on the status board. Only groups receive it.
    Reload {
        spec: Box<GroupSpec>,
        key: crate::status::OrderKey,
        reply: oneshot::Sender<()>,
    },
}

/// A stop request for a worker: its deadline, and where its stop record goes.
#[derive(Debug)]
pub(crate) struct StopRequest {
    pub deadline: Instant,
    pub reply: oneshot::Sender<Vec<StopRecord>>,
}

/// A group's line to one running child. A worker only ever gets one stop request, so a
/// oneshot does (a channel per worker would cost a kilobyte each in a pool of 1000).
#[derive(Debug)]
pub(crate) enum Downlink {
    Worker(oneshot::Sender<StopRequest>),
    Group(mpsc::UnboundedSender<Down>),
}

impl Downlink {
    /// Asks the child to stop by `deadline`; None if it is already gone.
    pub fn stop(self, deadline: Instant) -> Option<oneshot::Receiver<Vec<StopRecord>>> {
        let (reply, rx) = oneshot::channel();
        let sent = match self {
            Downlink::Worker(tx) => tx.send(StopRequest { deadline, reply }).is_ok(),
            Downlink::Group(tx) => tx.send(Down::Stop { deadline, reply }).is_ok(),
        };
        sent.then_some(rx)
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
}

pub(crate) fn not_running(path: &str, kind: &'static str) -> StopRecord {
    StopRecord {
        path: crate::config::display_path(path).to_string(),
        kind,
        pid: None,
        signal: None,
        deadline_ms: 0,
        took_ms: 0,
        outcome: StopOutcome::NotRunning,
        exit: None,
    }
}

/// Answers a stop request when nothing is running; waits for the request if none came yet
/// (until the parent drops the channel, which it does when it forgets the child).
async fn answer_not_running(
    first: Option<Down>,
    down: &mut mpsc::UnboundedReceiver<Down>,
    path: &str,
    kind: &'static str,
) {
    answer_with(first, down, vec![not_running(path, kind)]).await
}

/// Answers a stop request with records of a stop that already happened (a failed group
/// stopped its children itself; the tree's report should still list them).
async fn answer_with(
    first: Option<Down>,
    down: &mut mpsc::UnboundedReceiver<Down>,
    records: Vec<StopRecord>,
) {
    let mut next = first;
    loop {
        let cmd = match next.take() {
            Some(c) => Some(c),
            None => down.recv().await,
        };
        match cmd {
            Some(Down::Stop { reply, .. }) => {
                let _ = reply.send(records);
                return;
            }
            Some(other) => refuse(other, "it is not running"),
            None => return,
        }
    }
}

/// Answers a control or reload request that cannot be carried out now.
pub(crate) fn refuse(cmd: Down, why: &str) {
    match cmd {
        Down::Control { reply, .. } => {
            let _ = reply.send(Err(why.to_string()));
        }
        Down::Reload { reply, .. } => {
            let _ = reply.send(());
        }
        Down::Stop { reply, .. } => {
            let _ = reply.send(vec![]);
        }
    }
}
