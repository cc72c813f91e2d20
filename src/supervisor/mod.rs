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

use crate::report::{StopOutcome, StopRecord};

/// What every task of the tree shares.
pub(crate) struct Ctx {
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
}

/// A group's request to a child.
#[derive(Debug)]
pub(crate) enum Down {
    /// Stop by `deadline` and answer with the stop records of everything stopped.
    Stop {
        deadline: Instant,
        reply: oneshot::Sender<Vec<StopRecord>>,
    },
}

/// A child's way to talk to its group.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub slot: usize,
    pub run: u64,
    pub up: mpsc::UnboundedSender<Up>,
}

impl Link {
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
    let cmd = match first {
        Some(c) => Some(c),
        None => down.recv().await,
    };
    if let Some(Down::Stop { reply, .. }) = cmd {
        let _ = reply.send(records);
    }
}
