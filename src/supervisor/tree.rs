//! The tree controller: starts the root group, serves signals, operators' commands (typed
//! [`Command`]s; the control socket's wire format stays in `control`) and tree-wide events,
//! applies reloads, and carries out the shutdown: stop the root within its deadline,
//! stop any adopted stray processes, write the report, pick the exit code. A second
//! SIGINT/SIGTERM during the shutdown SIGKILLs everything at once.
//!
//! The root deadline is hard: it counts from the signal's receipt, the whole stop is bounded
//! by it (plus `OUTER_GRACE` to hear the last reports), and nothing the controller does
//! meanwhile waits on anything slower: a reload reads its file on a thread of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::command::{Command, ControlRequest, Reply};
use super::group::{run_group, GroupRun};
use super::reloads::Reloads;
use super::{Ctx, DeadlineHandle, Down, Link, Op, TreeEvent, Up};
use crate::config::TreeSpec;
use crate::notify::systemd;
use crate::process::{group, reap, registry};
use crate::report::{millis, NodeType, ShutdownReport, StopOutcome, StopRecord};
use crate::signals::{is_stop_request, SignalStream};
use crate::status::{DaemonState, Entry, NodeState, StatusBoard};

pub struct RunOptions {
    pub shutdown_report: Option<PathBuf>,
}

/// Exit codes of `run` (SPEC §1).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const KILLED: i32 = 3;
}

/// What the controller was given to work with.
pub struct Inputs {
    pub spec: TreeSpec,
    pub signals: SignalStream,
    pub child_events: watch::Receiver<u64>,
    pub board: StatusBoard,
    pub control: mpsc::UnboundedReceiver<ControlRequest>,
    /// When arborist started: the root's `since` on the status board.
    pub started: Instant,
    pub daemon_state: watch::Sender<DaemonState>,
    pub options: RunOptions,
    /// cgroup mode's backend; None in the process-group fallback.
    pub cgroups: Option<Arc<crate::process::owned::Cgroups>>,
}

/// How often the service manager's stop timeout is extended during a shutdown, and by how
/// much beyond the root deadline (the final SIGKILL, reaping and the report).
const EXTEND_EVERY: Duration = Duration::from_secs(5);
const EXTEND_MARGIN: Duration = Duration::from_secs(5);

/// How long past the root deadline the controller waits for the root's report: every stop
/// below is bounded by the deadline itself, so this only covers the last SIGKILLs and the
/// messages that carry their records. SPEC §3 allows 1 s in all, report included.
const OUTER_GRACE: Duration = Duration::from_millis(500);
/// After a second SIGINT/SIGTERM: how long to collect the records of what was killed.
const FORCED_GRACE: Duration = Duration::from_millis(300);

/// Runs the tree until it is shut down; returns the process exit code.
pub async fn run(inputs: Inputs) -> i32 {
    let Inputs {
        mut spec,
        mut signals,
        child_events,
        board,
        mut control,
        started,
        daemon_state,
        options,
        cgroups,
    } = inputs;
    let (tree_tx, mut tree_rx) = mpsc::unbounded_channel();
    let tracker = TaskTracker::new();
    let ctx = Arc::new(Ctx {
        board: board.clone(),
        child_events: child_events.clone(),
        tracker: tracker.clone(),
        tree: tree_tx,
        sigkills: std::sync::atomic::AtomicU64::new(0),
        shutting_down: std::sync::atomic::AtomicBool::new(false),
        cgroups,
    });
    let root_token = CancellationToken::new();
    let (up_tx, mut up_rx) = mpsc::unbounded_channel();
    let (down_tx, down_rx) = mpsc::unbounded_channel();
    let root = GroupRun {
        spec: Arc::new(spec.root.clone()),
        path: String::new(),
        key: vec![],
        delay: Duration::ZERO,
        token: root_token.clone(),
        permit: None,
        link: Link {
            slot: 0,
            run: 1,
            up: up_tx,
        },
        down: down_rx,
        ctx: Arc::clone(&ctx),
    };
    let root_entry = |state: NodeState| Entry {
        path: String::new(),
        kind: NodeType::Group,
        state,
        pid: Some(std::process::id()),
        since: Some(started),
        restarts: 0,
        last_exit: None,
        next_restart_at: None,
        stop_report: None,
    };
    board.put(vec![], root_entry(NodeState::Starting));
    info!(
        config = %spec.source.display(),
        workers = count_workers(&spec.root),
        pid = std::process::id(),
        "arborist starting"
    );
    tracker.spawn(run_group(root));

    let mut reloads = Reloads::default();
    // Until a stop is asked for: what ended the run, the exit code it implies, when the
    // request arrived, and the records of a root that already ended by itself.
    let (reason, mut code, received, ended_records) = loop {
        tokio::select! {
            sig = signals.next() => {
                if is_stop_request(&sig) {
                    break (format!("received {sig}"), exit::OK, sig.at, None);
                }
                match sig.signal {
                    Signal::SIGHUP => {
                        info!("received {sig}: reloading {}", spec.source.display());
                        reloads.read(&spec, &daemon_state, None);
                    }
                    Signal::SIGUSR1 => log_status(&board).await,
                    _ => {}
                }
            }
            Some(req) = control.recv() => {
                let ControlRequest { command, reply } = req;
                match command {
                    Command::Shutdown => {
                        let _ = reply.send(Reply::ShuttingDown);
                        break ("shutdown requested over the control socket".to_string(), exit::OK, Instant::now(), None);
                    }
                    Command::Reload => {
                        info!("reload requested over the control socket");
                        reloads.read(&spec, &daemon_state, Some(reply));
                    }
                    Command::Start { path } => route(Op::Start, &path, &down_tx, reply),
                    Command::Stop { path } => route(Op::Stop, &path, &down_tx, reply),
                    Command::Restart { path } => route(Op::Restart, &path, &down_tx, reply),
                }
            }
            read = reloads.next_read() => {
                reloads.apply(read, &mut spec, &down_tx, &daemon_state);
            }
            Some(event) = up_rx.recv() => match event {
                Up::Started { .. } | Up::Stopped { .. } => {}
                Up::Reloaded { .. } => reloads.applied(&daemon_state),
                Up::Ready { .. } => {
                    board.put(vec![], root_entry(NodeState::Ready));
                    let was = daemon_state.send_replace(DaemonState::Running);
                    let workers = count_workers(&spec.root);
                    info!(workers, "tree ready: every worker is up");
                    if was != DaemonState::Running {
                        systemd::ready(&format!("ready: {workers}/{workers} workers up"));
                        crate::process::chores::trim_heap();
                    }
                }
                Up::Ended { outcome, .. } => {
                    if outcome.settled {
                        let code = if outcome.failed { exit::FAILED } else { exit::OK };
                        break ("every worker has ended for good".to_string(), code, Instant::now(), Some(outcome.records));
                    }
                    error!("the root group failed (restart intensity exceeded)");
                    break ("root group failed".to_string(), exit::FAILED, Instant::now(), Some(outcome.records));
                }
            },
            Some(TreeEvent::CriticalEnded { path, success }) = tree_rx.recv() => {
                let code = if success { exit::OK } else { exit::FAILED };
                break (format!("critical worker {path} ended"), code, Instant::now(), None);
            }
        }
    };

    daemon_state.send_replace(DaemonState::Stopping);
    board.put(vec![], root_entry(NodeState::Stopping));
    reloads.interrupted();
    let deadline = received + spec.root.shutdown_timeout;
    // The manager's own stop timeout may be shorter than the tree's deadlines: keep asking
    // for what the deadlines still allow (plus the final kill and report), no more.
    systemd::stopping(
        &format!("stopping: {reason}"),
        deadline.saturating_duration_since(Instant::now()) + EXTEND_MARGIN,
    );
    let mut extend = tokio::time::interval_at(Instant::now() + EXTEND_EVERY, EXTEND_EVERY);
    let extend_on = systemd::enabled();
    info!(
        reason = %reason,
        deadline_ms = millis(spec.root.shutdown_timeout),
        "shutdown: {reason}; stopping the tree top-down within {}",
        humantime::format_duration(spec.root.shutdown_timeout)
    );
    ctx.shutting_down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    root_token.cancel();
    let (handle, root_deadline) = DeadlineHandle::new(deadline);
    let mut forced: Option<i32> = None;
    let mut give_up = deadline + OUTER_GRACE;
    let records = match ended_records {
        Some(records) => Some(records),
        None => {
            let _ = down_tx.send(Down::Stop {
                deadline: root_deadline,
            });
            loop {
                tokio::select! {
                    event = up_rx.recv() => match event {
                        Some(Up::Stopped { records, .. }) => break Some(records),
                        Some(Up::Ended { outcome, .. }) => break Some(outcome.records),
                        Some(_) => {}
                        None => break None,
                    },
                    _ = tokio::time::sleep_until(give_up) => {
                        error!("the tree did not report its stop in time; killing everything left");
                        break None;
                    }
                    _ = extend.tick(), if extend_on => {
                        systemd::extend_timeout(deadline.saturating_duration_since(Instant::now()) + EXTEND_MARGIN);
                    }
                    sig = signals.next() => {
                        if is_stop_request(&sig) && forced.is_none() {
                            error!("received {sig} during shutdown: killing everything now");
                            forced = Some(128 + sig.signal as i32);
                            // Every stop in flight ends now, with SIGKILL, and says so.
                            handle.tighten(Instant::now());
                            kill_everything();
                            give_up = give_up.min(Instant::now() + FORCED_GRACE);
                        } else if sig.signal == Signal::SIGUSR1 {
                            log_status(&board).await;
                        } else {
                            warn!("received {sig} during shutdown: ignored");
                        }
                    }
                    Some(req) = control.recv() => {
                        let _ = req.reply.send(Reply::Refused("arborist is shutting down".into()));
                    }
                }
            }
        }
    };
    let mut records = match records {
        Some(records) => records,
        None => {
            // Nothing came back in time: whatever is left is killed, and the report says so.
            kill_everything();
            ctx.note_sigkill();
            vec![StopRecord {
                path: crate::config::display_path("").to_string(),
                kind: NodeType::Group,
                pid: None,
                signal: None,
                deadline_ms: millis(spec.root.shutdown_timeout),
                took_ms: millis(received.elapsed()),
                outcome: StopOutcome::Killed,
                exit: None,
                adopted: Vec::new(),
            }]
        }
    };
    let strays_until = if forced.is_some() {
        Instant::now()
    } else {
        deadline
    };
    records.extend(
        stop_strays(
            strays_until,
            received + spec.root.shutdown_timeout + Duration::from_millis(800),
            child_events.clone(),
        )
        .await,
    );
    tracker.close();
    // Log capture tasks end when the last writer of each pipe is gone, which is now.
    let settle = (Instant::now() + Duration::from_millis(250))
        .min(deadline + Duration::from_millis(900))
        .max(Instant::now());
    let _ = tokio::time::timeout_at(settle, tracker.wait()).await;

    let report = ShutdownReport::new(
        reason,
        received.elapsed(),
        spec.root.shutdown_timeout,
        records,
        ctx.sigkills(),
    );
    report.log();
    crate::metrics::stop_finished(&report.nodes, Duration::from_millis(report.total_ms));
    if let Some(path) = &options.shutdown_report {
        if let Err(e) = report.write_json(path) {
            error!(
                "cannot write the shutdown report to {}: {e}",
                path.display()
            );
        }
    }
    if let Some(forced) = forced {
        return forced;
    }
    if code == exit::OK && (report.any_killed() || report.sigkills_since_start > 0) {
        code = exit::KILLED;
    }
    code
}

/// Sends an operator's node request to the root group; the reply goes straight to the client.
fn route(op: Op, path: &str, root: &mpsc::UnboundedSender<Down>, reply: oneshot::Sender<Reply>) {
    let target: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if target.is_empty() {
        let _ = reply.send(Reply::Refused(
            "give a node path such as backend/api or backend/api#2 (use shutdown for the whole tree)"
                .into(),
        ));
        return;
    }
    let (tx, rx) = oneshot::channel();
    if root
        .send(Down::Control {
            op,
            target,
            reply: tx,
        })
        .is_err()
    {
        let _ = reply.send(Reply::Refused("the tree is not running".into()));
        return;
    }
    tokio::spawn(async move {
        let answer = match rx.await {
            Ok(Ok(done)) => {
                let took = crate::metrics::longest(&done.records);
                crate::metrics::stop_finished(&done.records, took);
                Reply::Done {
                    message: done.message,
                    records: done.records,
                }
            }
            Ok(Err(e)) => Reply::Refused(e),
            Err(_) => Reply::Refused("the tree is not running".into()),
        };
        let _ = reply.send(answer);
    });
}

/// SIGUSR1: the status tree, one log line per node.
async fn log_status(board: &StatusBoard) {
    let nodes = board.snapshot().await;
    info!("status ({} nodes):", nodes.len());
    for line in crate::status::render_text(&nodes).lines() {
        info!("  {line}");
    }
}

/// Processes that left their worker's process group and were re-parented to arborist: their
/// process groups get SIGTERM, then SIGKILL at the root deadline. Each is reported. Nothing
/// here waits past `hard_end`.
async fn stop_strays(
    deadline: Instant,
    hard_end: Instant,
    mut child_events: watch::Receiver<u64>,
) -> Vec<StopRecord> {
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
    let until = deadline
        .max(Instant::now() + Duration::from_millis(100))
        .min(hard_end);
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
            kind: NodeType::Adopted,
            pid: Some(t.pid as u32),
            signal: Some("SIGTERM".into()),
            deadline_ms: millis(until.saturating_duration_since(begin)),
            took_ms: millis(begin.elapsed()),
            outcome: StopOutcome::of(killed),
            exit: None,
            adopted: Vec::new(),
        });
    }
    let after_kill = (Instant::now() + Duration::from_secs(2)).min(hard_end.max(Instant::now()));
    group::wait_gone(alive, after_kill, &mut child_events).await;
    reap::reap_orphans();
    records
}

fn kill_everything() {
    for (pgid, _) in registry::live_groups() {
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
