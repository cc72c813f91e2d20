//! One run of one worker replica: wait out the backoff, spawn, probe readiness, then either
//! report the exit to the group or carry out the stop sequence the group asks for:
//! `pre_stop`, `stop_signal` to the whole process group, wait until the group is empty or the
//! deadline, SIGKILL, reap. A worker counts as stopped only when nothing of it is left.
//!
//! Every wait of a stop sequence follows a [`StopClock`]: the asker's deadline (which it may
//! tighten), capped by `stop_timeout`, and a stop request from the group that may still
//! arrive while the worker stops on its own account (a watchdog, leftovers of an exited
//! leader), so no stop sequence outlives the deadline of the stop that preempts it. The stop
//! sequence and its clock live in `stop.rs`.

mod stop;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::probe::{self, ProbeEnv};
use super::{Ctx, Deadline, Link, Outcome, StopRequest};
use crate::config::{LogMode, ReadyCheck, WorkerSpec};
use crate::notify::workers::{self as notify, Notice};
use crate::process::adopted;
use crate::process::owned::RunProcesses;
use crate::process::reap::describe;
use crate::process::spawn::{self, Launch, Output};
use stop::next_request;

/// Run numbers for cgroup names, unique for the life of this arborist.
static NEXT_RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(crate) struct WorkerRun {
    pub spec: Arc<WorkerSpec>,
    pub path: String,
    pub replica: u32,
    pub delay: Duration,
    pub token: CancellationToken,
    /// A `start_concurrency` permit, held until the worker is ready.
    pub permit: Option<OwnedSemaphorePermit>,
    pub link: Link,
    /// The group's stop request, once; None after it was received or dropped.
    pub stop: Option<oneshot::Receiver<StopRequest>>,
    pub ctx: Arc<Ctx>,
    /// This run's marker (`ARBORIST_RUN`), set at spawn: how adopted processes that left
    /// its process group are attributed to it.
    pub marker: String,
    /// What the run owns once spawned: its process group, its cgroup in cgroup mode.
    pub owned: Option<RunProcesses>,
}

impl WorkerRun {
    pub async fn run(mut self) {
        if !self.delay.is_zero() {
            let until = Instant::now() + self.delay;
            // biased: a stop request wins over the end of the backoff.
            tokio::select! {
                biased;
                req = next_request(&mut self.stop) => return self.not_running(req),
                _ = self.token.cancelled() => {}
                _ = sleep_until(until) => {}
            }
        }
        if self.token.is_cancelled() {
            // The group is stopping: it asks every running child, this one included.
            let req = next_request(&mut self.stop).await;
            return self.not_running(req);
        }
        let spec = Arc::clone(&self.spec);
        let mut env = spec.env.clone();
        env.push(("ARBORIST_PATH".into(), self.path.clone()));
        env.push(("ARBORIST_REPLICA".into(), self.replica.to_string()));
        self.marker = adopted::new_marker();
        env.push((adopted::RUN_VAR.into(), self.marker.clone()));
        if let Some(socket) = notify::socket_env() {
            env.push(("NOTIFY_SOCKET".into(), socket.to_string()));
        }
        if let Some(period) = spec.watchdog {
            env.push(("WATCHDOG_USEC".into(), period.as_micros().to_string()));
        }
        // An exec probe runs in the worker's environment; nothing else needs it after the spawn.
        let probe_vars = match &spec.ready {
            Some(r) if matches!(r.check, ReadyCheck::Exec(_)) => env.clone(),
            _ => Vec::new(),
        };
        let argv = spec.program.argv();
        let program = argv[0].clone();
        // cgroup mode: the run's cgroup exists (with its limits) before the child joins it.
        let cgroup = match &self.ctx.cgroups {
            Some(cgroups) => {
                let run = NEXT_RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match RunProcesses::prepare(
                    cgroups,
                    &self.path,
                    run,
                    Some(&spec.limits).filter(|l| !l.is_empty()),
                ) {
                    Ok(cg) => Some((cg, Arc::clone(cgroups))),
                    Err(e) => {
                        warn!(path = %self.path, "cannot create the run's cgroup: {e}");
                        self.link.ended(Outcome {
                            failed: true,
                            spawn_error: true,
                            exit: Some(format!("spawn failed: cannot create its cgroup: {e}")),
                            ..Outcome::default()
                        });
                        return;
                    }
                }
            }
            None => None,
        };
        let launch = Launch {
            argv,
            env,
            cwd: spec.cwd.clone(),
            uid: spec.user.as_ref().map(|u| u.id),
            gid: spec.group.as_ref().map(|g| g.id),
            output: match spec.logs {
                LogMode::Capture => Output::Capture,
                LogMode::Inherit => Output::Inherit,
            },
            stop_signal: spec.stop_signal,
            cgroup_procs: cgroup.as_ref().map(|(cg, _)| cg.procs_fd()),
        };
        let started = Instant::now();
        let mut child = match spawn::spawn(launch).await {
            Ok(child) => child,
            Err(e) => {
                if let Some((cg, _)) = cgroup {
                    let _ = cg.remove();
                }
                warn!(path = %self.path, "spawn failed: {program}: {e}");
                self.link.ended(Outcome {
                    failed: true,
                    spawn_error: true,
                    exit: Some(format!("spawn failed: {program}: {e}")),
                    ..Outcome::default()
                });
                return;
            }
        };
        let pid = child.id();
        self.owned = Some(RunProcesses::new(pid, cgroup, spec.stop_signal));
        let notify_ready = matches!(&spec.ready, Some(r) if r.check == ReadyCheck::Notify);
        let mut notices = notify::register(pid, notify_ready || spec.watchdog.is_some());
        info!(path = %self.path, pid, "started");
        self.link.started(pid as u32);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // Dropped when this task ends, once nothing of the run is left: the capture then
        // closes the run's pipes.
        let (_run_over, run_over) = tokio::sync::oneshot::channel::<()>();
        if stdout.is_some() || stderr.is_some() {
            self.ctx.tracker.spawn(crate::logs::capture(
                stdout,
                stderr,
                self.path.clone(),
                run_over,
            ));
        }

        let mut ready = spec.ready.is_none();
        if ready {
            self.became_ready();
        }
        let probe_path = self.path.clone();
        let probe_env = ProbeEnv {
            path: &probe_path,
            env: &probe_vars,
            cwd: spec.cwd.as_deref(),
        };
        // Boxed, like the stop sequence below: the task of a worker without a probe, or not
        // stopping, should not carry their state (a pool of 1000 pays for it 1000 times).
        let mut probe: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> =
            match &spec.ready {
                Some(r) if !notify_ready => Box::pin(probe::wait_ready(r, &probe_env)),
                _ => Box::pin(std::future::pending()),
            };
        // The watchdog runs once the worker is ready, as systemd arms it once a service is
        // up; every WATCHDOG=1 pushes it back by one period.
        let mut watchdog_period = spec.watchdog;
        let mut watchdog_at = watchdog_period
            .filter(|_| ready)
            .map(|p| Instant::now() + p);
        let status = loop {
            let watchdog = async {
                match watchdog_at {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // biased: a stop request is served before an exit is reported or a probe runs.
            tokio::select! {
                biased;
                req = next_request(&mut self.stop) => {
                    self.stop = None;
                    let deadline = match req {
                        Some(StopRequest { deadline }) => deadline,
                        // The group forgot this run (it is gone): stop by its own timeout.
                        None => Deadline::fixed(Instant::now() + spec.stop_timeout),
                    };
                    let record = Box::pin(self.stop(&mut child, pid, deadline)).await;
                    self.forget_run();
                    self.link.stopped(vec![record]);
                    return;
                }
                status = child.wait() => break status,
                notice = next_notice(&mut notices) => match notice {
                    Some(Notice::Ready) if notify_ready && !ready => {
                        ready = true;
                        info!(path = %self.path, pid, "ready (READY=1)");
                        self.became_ready();
                        watchdog_at = watchdog_period.map(|p| Instant::now() + p);
                    }
                    Some(Notice::Alive) => {
                        if watchdog_at.is_some() {
                            watchdog_at = watchdog_period.map(|p| Instant::now() + p);
                        }
                    }
                    Some(Notice::Period(p)) if watchdog_period.is_some() => {
                        info!(path = %self.path, pid, "watchdog period set to {} (WATCHDOG_USEC)", secs(p));
                        watchdog_period = Some(p);
                        if watchdog_at.is_some() {
                            watchdog_at = Some(Instant::now() + p);
                        }
                    }
                    Some(Notice::Trigger) if watchdog_period.is_some() => {
                        warn!(path = %self.path, pid, "watchdog triggered by the worker (WATCHDOG=trigger)");
                        return Box::pin(self.hung(&mut child, pid, started, "WATCHDOG=trigger".into())).await;
                    }
                    Some(_) => {}
                    None => notices = None,
                },
                _ = watchdog => {
                    let period = watchdog_period.unwrap_or_default();
                    warn!(
                        path = %self.path, pid,
                        "watchdog: no WATCHDOG=1 for {}; the worker is deemed hung: stopping it",
                        secs(period)
                    );
                    let why = format!("watchdog timeout: no WATCHDOG=1 for {}", secs(period));
                    return Box::pin(self.hung(&mut child, pid, started, why)).await;
                }
                _ = &mut probe, if !ready => {
                    ready = true;
                    info!(path = %self.path, pid, "ready");
                    self.became_ready();
                    watchdog_at = watchdog_period.map(|p| Instant::now() + p);
                }
            }
        };
        notify::unregister(pid);
        let ran_for = started.elapsed();
        let failed = !matches!(&status, Ok(s) if s.success());
        let what = status
            .as_ref()
            .map(describe)
            .unwrap_or_else(|e| format!("lost: {e}"));
        if failed {
            warn!(path = %self.path, pid, "exited: {what} after {}", secs(ran_for));
        } else {
            info!(path = %self.path, pid, "exited: {what} after {}", secs(ran_for));
        }
        // The leader is gone; whatever it left in its process group, or adopted elsewhere,
        // goes with it before the run counts as ended (and may be restarted).
        let mut clock = self.own_clock();
        let killed = if self.run_alive() {
            Box::pin(self.terminate_group(pid, &mut clock, None))
                .await
                .1
        } else {
            Box::pin(self.sweep_adopted(&mut clock)).await.1
        };
        if killed {
            warn!(path = %self.path, "leftover processes ignored {}; killed", spec.stop_signal);
        }
        let what = match self.oom_kills() {
            0 => what,
            n => {
                crate::metrics::oom_killed(n);
                format!("{what} (OOM: {n} process(es) killed at its memory limit)")
            }
        };
        self.forget_run();
        self.link.ended(Outcome {
            failed,
            ran_for,
            exit: Some(what),
            ..Outcome::default()
        });
    }
}

/// The next notice from the worker's notify socket, or never when it has none.
async fn next_notice(notices: &mut Option<mpsc::UnboundedReceiver<Notice>>) -> Option<Notice> {
    match notices {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

pub(crate) fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}
