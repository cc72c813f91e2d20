//! The tree controller: starts the root group, listens for signals and tree-wide events, and
//! carries out the shutdown: stop the root within its deadline, stop any adopted stray
//! processes, write the report, pick the exit code. A second SIGINT/SIGTERM during the
//! shutdown SIGKILLs everything at once.

use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::group::{run_group, GroupRun};
use super::{Ctx, Down, Link, TreeEvent, Up};
use crate::config::TreeSpec;
use crate::process::{group, reap, registry};
use crate::report::{millis, ShutdownReport, StopOutcome, StopRecord};
use crate::signals::{is_stop_request, Received, SignalStream};

pub struct RunOptions {
    pub shutdown_report: Option<PathBuf>,
}

/// Exit codes of `run` (SPEC §1).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const KILLED: i32 = 3;
}

/// Runs the tree until it is shut down; returns the process exit code.
pub async fn run(
    spec: TreeSpec,
    mut signals: SignalStream,
    child_events: watch::Receiver<u64>,
    options: RunOptions,
) -> i32 {
    let (tree_tx, mut tree_rx) = mpsc::unbounded_channel();
    let tracker = TaskTracker::new();
    let ctx = Arc::new(Ctx {
        child_events: child_events.clone(),
        tracker: tracker.clone(),
        tree: tree_tx,
    });
    let root_token = CancellationToken::new();
    let (up_tx, mut up_rx) = mpsc::unbounded_channel();
    let (down_tx, down_rx) = mpsc::unbounded_channel();
    let root = GroupRun {
        spec: Arc::new(spec.root.clone()),
        path: String::new(),
        delay: std::time::Duration::ZERO,
        token: root_token.clone(),
        permit: None,
        link: Link {
            slot: 0,
            run: 1,
            up: up_tx,
        },
        down: down_rx,
        ctx,
    };
    let workers = count_workers(&spec.root);
    info!(
        config = %spec.source.display(),
        workers,
        pid = std::process::id(),
        "arborist starting"
    );
    tracker.spawn(run_group(root));

    // Until a stop is asked for: what ended the run, and the exit code it implies.
    let (reason, mut code) = loop {
        tokio::select! {
            sig = signals.next() => {
                if is_stop_request(&sig) {
                    break (format!("received {sig}"), exit::OK);
                }
                match sig.signal {
                    Signal::SIGHUP => warn!("received SIGHUP: reload is not supported yet; the tree runs on unchanged"),
                    Signal::SIGUSR1 => info!("received SIGUSR1: status reporting arrives with the control socket"),
                    _ => {}
                }
            }
            Some(event) = up_rx.recv() => match event {
                Up::Ready { .. } => info!(workers, "tree ready: every worker is up"),
                Up::Ended { outcome, .. } => {
                    if outcome.settled {
                        let code = if outcome.failed { exit::FAILED } else { exit::OK };
                        break ("every worker has ended for good".to_string(), code);
                    }
                    error!("the root group failed (restart intensity exceeded)");
                    break ("root group failed".to_string(), exit::FAILED);
                }
            },
            Some(TreeEvent::CriticalEnded { path, success }) = tree_rx.recv() => {
                let code = if success { exit::OK } else { exit::FAILED };
                break (format!("critical worker {path} ended"), code);
            }
        }
    };

    let started = Instant::now();
    let deadline = started + spec.root.shutdown_timeout;
    info!(
        reason = %reason,
        deadline_ms = spec.root.shutdown_timeout.as_millis() as u64,
        "shutdown: {reason}; stopping the tree top-down within {}",
        humantime::format_duration(spec.root.shutdown_timeout)
    );
    root_token.cancel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let _ = down_tx.send(Down::Stop {
        deadline,
        reply: reply_tx,
    });
    let stop = async {
        let mut records = reply_rx.await.unwrap_or_default();
        records.extend(stop_strays(deadline, child_events.clone()).await);
        records
    };
    let records = tokio::select! {
        records = stop => records,
        sig = second_stop_request(&mut signals) => {
            error!("received {sig} during shutdown: killing everything now");
            kill_everything();
            return 128 + sig.signal as i32;
        }
    };
    tracker.close();
    // Log capture tasks end when the last writer of each pipe is gone, which is now.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(250), tracker.wait()).await;

    let report = ShutdownReport::new(
        reason,
        started.elapsed(),
        spec.root.shutdown_timeout,
        records,
    );
    report.log();
    if let Some(path) = &options.shutdown_report {
        if let Err(e) = report.write_json(path) {
            error!(
                "cannot write the shutdown report to {}: {e}",
                path.display()
            );
        }
    }
    if code == exit::OK && report.any_killed() {
        code = exit::KILLED;
    }
    code
}

async fn second_stop_request(signals: &mut SignalStream) -> Received {
    loop {
        let sig = signals.next().await;
        if is_stop_request(&sig) {
            return sig;
        }
        warn!("received {sig} during shutdown: ignored");
    }
}

/// Processes that left their worker's process group and were re-parented to arborist: their
/// process groups get SIGTERM, then SIGKILL at the root deadline. Each is reported.
async fn stop_strays(deadline: Instant, mut child_events: watch::Receiver<u64>) -> Vec<StopRecord> {
    let strays = reap::adopted_children();
    if strays.is_empty() {
        return vec![];
    }
    let begin = Instant::now();
    warn!(
        count = strays.len(),
        "stopping {} adopted processes that left their worker's process group",
        strays.len()
    );
    let targets: Vec<group::Target> = strays.iter().map(|&pid| group::Target::of(pid)).collect();
    for t in &targets {
        t.signal(Signal::SIGTERM);
        t.signal(Signal::SIGCONT);
    }
    let until = deadline.max(Instant::now() + std::time::Duration::from_millis(100));
    let alive = || {
        reap::reap_orphans();
        targets.iter().any(|t| t.alive())
    };
    let gone = group::wait_gone(alive, until, &mut child_events).await;
    let mut records = Vec::new();
    for t in &targets {
        let killed = !gone && t.alive();
        if killed {
            warn!(
                pid = t.pid,
                "adopted process still running at the root deadline; SIGKILLed"
            );
            t.signal(Signal::SIGKILL);
        }
        records.push(StopRecord {
            path: format!("(adopted pid {})", t.pid),
            kind: "adopted",
            pid: Some(t.pid as u32),
            signal: Some("SIGTERM".into()),
            deadline_ms: millis(until.saturating_duration_since(begin)),
            took_ms: millis(begin.elapsed()),
            outcome: if killed {
                StopOutcome::Killed
            } else {
                StopOutcome::Met
            },
            exit: None,
        });
    }
    let mut events = child_events.clone();
    let after_kill = Instant::now() + std::time::Duration::from_secs(2);
    group::wait_gone(
        || {
            reap::reap_orphans();
            targets.iter().any(|t| t.alive())
        },
        after_kill,
        &mut events,
    )
    .await;
    for &pid in &strays {
        reap::try_reap(pid);
    }
    records
}

fn kill_everything() {
    for pgid in registry::live_groups() {
        group::signal_group(pgid, Signal::SIGKILL);
    }
    for pid in reap::adopted_children() {
        group::Target::of(pid).signal(Signal::SIGKILL);
    }
}

fn count_workers(g: &crate::config::GroupSpec) -> u64 {
    g.children
        .iter()
        .map(|c| match &c.kind {
            crate::config::NodeKind::Worker(w) => w.replicas as u64,
            crate::config::NodeKind::Group(g) => count_workers(g),
        })
        .sum()
}
