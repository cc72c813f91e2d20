//! The tree controller: starts the root group, serves signals, control requests and tree-wide
//! events, applies reloads, and carries out the shutdown: stop the root within its deadline,
//! stop any adopted stray processes, write the report, pick the exit code. A second
//! SIGINT/SIGTERM during the shutdown SIGKILLs everything at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::group::{run_group, GroupRun};
use super::{Ctx, Down, Link, Op, TreeEvent, Up};
use crate::config::{self, TreeSpec};
use crate::control::protocol::{Request, Response};
use crate::control::server::{self, ControlRequest, Daemon};
use crate::diff;
use crate::notify::systemd;
use crate::process::{group, reap, registry};
use crate::report::{millis, ShutdownReport, StopOutcome, StopRecord};
use crate::signals::{is_stop_request, SignalStream};
use crate::status::{Entry, NodeState, StatusBoard};

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
    pub daemon: Arc<Daemon>,
    pub daemon_state: watch::Sender<&'static str>,
    pub options: RunOptions,
}

/// How often the service manager's stop timeout is extended during a shutdown, and by how
/// much beyond the root deadline (the final SIGKILL, reaping and the report).
const EXTEND_EVERY: Duration = Duration::from_secs(5);
const EXTEND_MARGIN: Duration = Duration::from_secs(5);

/// Runs the tree until it is shut down; returns the process exit code.
pub async fn run(inputs: Inputs) -> i32 {
    let Inputs {
        mut spec,
        mut signals,
        child_events,
        board,
        mut control,
        daemon,
        daemon_state,
        options,
    } = inputs;
    let (tree_tx, mut tree_rx) = mpsc::unbounded_channel();
    let tracker = TaskTracker::new();
    let ctx = Arc::new(Ctx {
        board: board.clone(),
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
        ctx,
    };
    let root_entry = |state: NodeState| Entry {
        path: String::new(),
        kind: "group",
        state,
        pid: Some(std::process::id()),
        since: Some(daemon.started),
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

    // Until a stop is asked for: what ended the run, and the exit code it implies.
    let (reason, mut code) = loop {
        tokio::select! {
            sig = signals.next() => {
                if is_stop_request(&sig) {
                    break (format!("received {sig}"), exit::OK);
                }
                match sig.signal {
                    Signal::SIGHUP => {
                        info!("received {sig}: reloading {}", spec.source.display());
                        start_reload(&mut spec, &down_tx, &daemon_state, None);
                    }
                    Signal::SIGUSR1 => log_status(&board, &daemon).await,
                    _ => {}
                }
            }
            Some(req) = control.recv() => {
                let ControlRequest { request, reply } = req;
                match request {
                    Request::Shutdown => {
                        let _ = reply.send(Response::message("shutting down"));
                        break ("shutdown requested over the control socket".to_string(), exit::OK);
                    }
                    Request::Reload => {
                        info!("reload requested over the control socket");
                        start_reload(&mut spec, &down_tx, &daemon_state, Some(reply));
                    }
                    Request::Start { path } => route(Op::Start, &path, &down_tx, reply),
                    Request::Stop { path } => route(Op::Stop, &path, &down_tx, reply),
                    Request::Restart { path } => route(Op::Restart, &path, &down_tx, reply),
                    Request::Status => {
                        let _ = reply.send(server::status(&board, &daemon).await);
                    }
                }
            }
            Some(event) = up_rx.recv() => match event {
                Up::Started { .. } => {}
                Up::Ready { .. } => {
                    board.put(vec![], root_entry(NodeState::Ready));
                    let was = daemon_state.send_replace("running");
                    let workers = count_workers(&spec.root);
                    info!(workers, "tree ready: every worker is up");
                    if was != "running" {
                        systemd::ready(&format!("ready: {workers}/{workers} workers up"));
                        crate::process::chores::trim_heap();
                    }
                }
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

    daemon_state.send_replace("stopping");
    board.put(vec![], root_entry(NodeState::Stopping));
    let started = Instant::now();
    let deadline = started + spec.root.shutdown_timeout;
    // The manager's own stop timeout may be shorter than the tree's deadlines: keep asking
    // for what the deadlines still allow (plus the final kill and report), no more.
    systemd::stopping(
        &format!("stopping: {reason}"),
        spec.root.shutdown_timeout + EXTEND_MARGIN,
    );
    let mut extend = tokio::time::interval_at(started + EXTEND_EVERY, EXTEND_EVERY);
    let extend_on = systemd::enabled();
    info!(
        reason = %reason,
        deadline_ms = millis(spec.root.shutdown_timeout),
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
    tokio::pin!(stop);
    let records = loop {
        tokio::select! {
            records = &mut stop => break records,
            _ = extend.tick(), if extend_on => {
                systemd::extend_timeout(deadline.saturating_duration_since(Instant::now()) + EXTEND_MARGIN);
            }
            sig = signals.next() => {
                if is_stop_request(&sig) {
                    error!("received {sig} during shutdown: killing everything now");
                    kill_everything();
                    return 128 + sig.signal as i32;
                }
                if sig.signal == Signal::SIGUSR1 {
                    log_status(&board, &daemon).await;
                } else {
                    warn!("received {sig} during shutdown: ignored");
                }
            }
            Some(req) = control.recv() => {
                let reply = match req.request {
                    Request::Status => server::status(&board, &daemon).await,
                    _ => Response::error("arborist is shutting down"),
                };
                let _ = req.reply.send(reply);
            }
        }
    };
    tracker.close();
    // Log capture tasks end when the last writer of each pipe is gone, which is now.
    let _ = tokio::time::timeout(Duration::from_millis(250), tracker.wait()).await;

    let report = ShutdownReport::new(
        reason,
        started.elapsed(),
        spec.root.shutdown_timeout,
        records,
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
    if code == exit::OK && report.any_killed() {
        code = exit::KILLED;
    }
    code
}

/// Sends an operator's node request to the root group; the reply goes straight to the client.
fn route(op: Op, path: &str, root: &mpsc::UnboundedSender<Down>, reply: oneshot::Sender<Response>) {
    let target: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if target.is_empty() {
        let _ = reply.send(Response::error(
            "give a node path such as backend/api or backend/api#2 (use shutdown for the whole tree)",
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
        let _ = reply.send(Response::error("the tree is not running"));
        return;
    }
    tokio::spawn(async move {
        let response = match rx.await {
            Ok(Ok(done)) => {
                let took = crate::metrics::longest(&done.records);
                crate::metrics::stop_finished(&done.records, took);
                Response::message(done.message).with_report(&done.records)
            }
            Ok(Err(e)) => Response::error(e),
            Err(_) => Response::error("the tree is not running"),
        };
        let _ = reply.send(response);
    });
}

/// Re-reads and validates the file; if valid, hands the new spec to the root group, which
/// applies it. An invalid file changes nothing: its errors are logged and returned.
fn start_reload(
    spec: &mut TreeSpec,
    root: &mpsc::UnboundedSender<Down>,
    state: &watch::Sender<&'static str>,
    reply: Option<oneshot::Sender<Response>>,
) {
    let announce = *state.borrow() == "running";
    if announce {
        systemd::reloading();
    }
    let new = match config::load(&spec.source) {
        Ok(new) => new,
        Err(e) => {
            if announce {
                systemd::ready("reload rejected: invalid configuration; running unchanged");
            }
            let errors: Vec<String> = e
                .to_string()
                .lines()
                .map(|l| l.replace("; nothing was started", ""))
                .collect();
            error!("reload rejected; the tree runs on unchanged");
            for line in &errors {
                error!("{line}");
            }
            if let Some(reply) = reply {
                let mut r = Response::error("invalid configuration: the tree runs on unchanged");
                r.errors = errors;
                let _ = reply.send(r);
            }
            return;
        }
    };
    if new.control_socket != spec.control_socket {
        warn!("control_socket changed: the new path takes effect at the next start");
    }
    let summary = diff::summarize(&spec.root, &new.root);
    if summary.is_empty() {
        info!("reload: no changes");
    } else {
        info!("reload: {}", summary.line());
    }
    *spec = TreeSpec {
        control_socket: spec.control_socket.clone(),
        ..new
    };
    crate::secrets::learn(spec);
    let (tx, rx) = oneshot::channel();
    let _ = root.send(Down::Reload {
        spec: Box::new(spec.root.clone()),
        key: vec![],
        reply: tx,
    });
    let before = state.send_replace("reloading");
    let before = if before == "reloading" {
        "running"
    } else {
        before
    };
    let state = state.clone();
    tokio::spawn(async move {
        let _ = rx.await;
        if announce {
            systemd::ready("reloaded");
        }
        crate::process::chores::trim_heap();
        // Back to what it was (`starting` stays `starting`), unless something else moved it
        // meanwhile (the root became ready, a shutdown began).
        state.send_if_modified(|s| {
            let was = *s == "reloading";
            if was {
                *s = before;
            }
            was
        });
        info!("reload applied");
        if let Some(reply) = reply {
            let _ = reply.send(Response::message("reloaded").with_diff(&summary));
        }
    });
}

/// SIGUSR1: the status tree, one log line per node.
async fn log_status(board: &StatusBoard, daemon: &Daemon) {
    let response = server::status(board, daemon).await;
    let nodes = response.nodes.unwrap_or_default();
    info!("status ({} nodes):", nodes.len());
    for line in crate::status::render_text(&nodes).lines() {
        info!("  {line}");
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
    let until = deadline.max(Instant::now() + Duration::from_millis(100));
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
            outcome: StopOutcome::of(killed),
            exit: None,
        });
    }
    let after_kill = Instant::now() + Duration::from_secs(2);
    group::wait_gone(alive, after_kill, &mut child_events).await;
    reap::reap_orphans();
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
