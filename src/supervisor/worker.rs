//! One run of one worker replica: wait out the backoff, spawn, probe readiness, then either
//! report the exit to the group or carry out the stop sequence the group asks for:
//! `pre_stop`, `stop_signal` to the whole process group, wait until the group is empty or the
//! deadline, SIGKILL, reap. A worker counts as stopped only when nothing of it is left.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::probe::{self, ProbeEnv};
use super::{Ctx, Link, Outcome, StopRequest};
use crate::config::{LogMode, ReadyCheck, WorkerSpec};
use crate::notify::workers::{self as notify, Notice};
use crate::process::group::{group_alive, signal_group, wait_gone};
use crate::process::registry;
use crate::process::spawn::{self, Child, Launch, Output};
use crate::report::{millis, StopOutcome, StopRecord};

/// How long to wait for a SIGKILLed group to disappear before giving up on it (a process in
/// uninterruptible sleep can take a while; arborist must not hang on it).
const KILL_GRACE: Duration = Duration::from_secs(5);

pub(crate) struct WorkerRun {
    pub spec: Arc<WorkerSpec>,
    pub path: String,
    pub replica: u32,
    pub delay: Duration,
    pub token: CancellationToken,
    /// A `start_concurrency` permit, held until the worker is ready.
    pub permit: Option<OwnedSemaphorePermit>,
    pub link: Link,
    pub stop: oneshot::Receiver<StopRequest>,
    pub ctx: Arc<Ctx>,
}

impl WorkerRun {
    pub async fn run(mut self) {
        if !self.delay.is_zero() {
            let until = Instant::now() + self.delay;
            // biased: a stop request wins over the end of the backoff.
            tokio::select! {
                biased;
                req = &mut self.stop => return self.not_running(req.ok()),
                _ = self.token.cancelled() => {}
                _ = sleep_until(until) => {}
            }
        }
        if self.token.is_cancelled() {
            let req = (&mut self.stop).await.ok();
            return self.not_running(req);
        }
        let spec = Arc::clone(&self.spec);
        let mut env = spec.env.clone();
        env.push(("ARBORIST_PATH".into(), self.path.clone()));
        env.push(("ARBORIST_REPLICA".into(), self.replica.to_string()));
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
        };
        let started = Instant::now();
        let mut child = match spawn::spawn(launch).await {
            Ok(child) => child,
            Err(e) => {
                warn!(path = %self.path, "spawn failed: {program}: {e}");
                self.link.ended(Outcome {
                    failed: true,
                    spawn_error: true,
                    settled: false,
                    ran_for: Duration::ZERO,
                    exit: Some(format!("spawn failed: {program}: {e}")),
                });
                return;
            }
        };
        let pid = child.id();
        let notify_ready = matches!(&spec.ready, Some(r) if r.check == ReadyCheck::Notify);
        let mut notices = notify::register(pid, notify_ready || spec.watchdog.is_some());
        info!(path = %self.path, pid, "started");
        self.link.started(pid as u32);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        if stdout.is_some() || stderr.is_some() {
            self.ctx
                .tracker
                .spawn(crate::logs::capture(stdout, stderr, self.path.clone()));
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
                req = &mut self.stop => {
                    let (deadline, reply) = match req {
                        Ok(StopRequest { deadline, reply }) => (deadline, Some(reply)),
                        Err(_) => (Instant::now() + spec.stop_timeout, None),
                    };
                    let record = Box::pin(self.stop(&mut child, pid, deadline)).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(vec![record]);
                    }
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
        // The leader is gone; whatever it left in its process group goes with it.
        if group_alive(pid) {
            let deadline = Instant::now() + spec.stop_timeout;
            let (_, killed) = Box::pin(self.terminate_group(pid, deadline, None)).await;
            if killed {
                warn!(path = %self.path, "leftover processes ignored {}; killed", spec.stop_signal);
            }
        }
        registry::remove_group(pid);
        self.link.ended(Outcome {
            failed,
            spawn_error: false,
            settled: false,
            ran_for,
            exit: Some(what),
        });
    }

    /// A worker its watchdog found hung: the stop sequence (within its own `stop_timeout`),
    /// then an ended run that counts as a failure, so `restart` decides what comes next.
    async fn hung(&mut self, child: &mut Child, pid: i32, started: Instant, why: String) {
        let deadline = Instant::now() + self.spec.stop_timeout;
        let record = self.stop(child, pid, deadline).await;
        let exit = match &record.exit {
            Some(e) => format!("{why}; stopped ({e})"),
            None => format!("{why}; stopped"),
        };
        self.link.ended(Outcome {
            failed: true,
            spawn_error: false,
            settled: false,
            ran_for: started.elapsed(),
            exit: Some(exit),
        });
    }

    fn not_running(&self, req: Option<StopRequest>) {
        if let Some(StopRequest { reply, .. }) = req {
            let _ = reply.send(vec![super::not_running(&self.path, "worker")]);
        }
    }

    fn became_ready(&mut self) {
        self.permit.take();
        self.link.ready();
    }

    /// The stop sequence, bounded by `min(deadline, now + stop_timeout)`.
    async fn stop(&self, child: &mut Child, pid: i32, deadline: Instant) -> StopRecord {
        let begin = Instant::now();
        let dw = deadline.min(begin + self.spec.stop_timeout);
        let mut signal = None;
        if begin < dw {
            if let Some(pre_stop) = self.spec.pre_stop.clone() {
                self.run_pre_stop(&pre_stop, dw).await;
            }
            if Instant::now() < dw {
                signal = Some(self.spec.stop_signal);
            }
        }
        let (status, killed) = self.terminate_group(pid, dw, Some(child)).await;
        if killed {
            warn!(
                path = %self.path, pid,
                "did not stop within its {} deadline; SIGKILLed its process group",
                secs(dw - begin)
            );
        }
        registry::remove_group(pid);
        notify::unregister(pid);
        StopRecord {
            path: self.path.clone(),
            kind: "worker",
            pid: Some(pid as u32),
            signal: signal.map(|s| s.as_str().to_string()),
            deadline_ms: millis(dw.saturating_duration_since(begin)),
            took_ms: millis(begin.elapsed()),
            outcome: StopOutcome::of(killed),
            exit: status.as_ref().map(describe),
        }
    }

    /// Sends the stop signal to the group (unless `until` already passed), waits until the
    /// leader is reaped and the group is empty, and SIGKILLs the group at `until`.
    /// Returns the leader's status (when `child` is given) and whether SIGKILL was needed.
    async fn terminate_group(
        &self,
        pid: i32,
        until: Instant,
        mut child: Option<&mut Child>,
    ) -> (Option<ExitStatus>, bool) {
        let sig = self.spec.stop_signal;
        if Instant::now() < until {
            signal_group(pid, sig);
            if sig != Signal::SIGKILL && sig != Signal::SIGCONT {
                // A stopped process cannot act on the signal until it is continued.
                signal_group(pid, Signal::SIGCONT);
            }
        }
        let mut status = None;
        if let Some(child) = child.as_deref_mut() {
            status = tokio::select! {
                s = child.wait() => s.ok(),
                _ = sleep_until(until) => None,
            };
        }
        let leader_done = child.is_none() || status.is_some();
        let mut events = self.ctx.child_events.clone();
        let gone = leader_done && wait_gone(|| group_alive(pid), until, &mut events).await;
        if gone {
            return (status, false);
        }
        signal_group(pid, Signal::SIGKILL);
        if let Some(child) = child {
            if status.is_none() {
                status = timeout(KILL_GRACE, child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
        }
        if !wait_gone(
            || group_alive(pid),
            Instant::now() + KILL_GRACE,
            &mut events,
        )
        .await
        {
            warn!(path = %self.path, pid, "process group still present {} after SIGKILL", secs(KILL_GRACE));
        }
        (status, true)
    }

    async fn run_pre_stop(&self, argv: &[String], until: Instant) {
        let mut env = self.spec.env.clone();
        env.push(("ARBORIST_PATH".into(), self.path.clone()));
        env.push(("ARBORIST_REPLICA".into(), self.replica.to_string()));
        let launch = Launch {
            argv: argv.to_vec(),
            env,
            cwd: self.spec.cwd.clone(),
            uid: self.spec.user.as_ref().map(|u| u.id),
            gid: self.spec.group.as_ref().map(|g| g.id),
            output: match self.spec.logs {
                LogMode::Capture => Output::Capture,
                LogMode::Inherit => Output::Inherit,
            },
        };
        let mut child = match spawn::spawn(launch).await {
            Ok(c) => c,
            Err(e) => {
                warn!(path = %self.path, "pre_stop {}: cannot start: {e}", argv[0]);
                return;
            }
        };
        let pid = child.id();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        if stdout.is_some() || stderr.is_some() {
            let label = format!("{} (pre_stop)", self.path);
            self.ctx
                .tracker
                .spawn(crate::logs::capture(stdout, stderr, label));
        }
        tokio::select! {
            status = child.wait() => {
                if let Ok(s) = status {
                    if !s.success() {
                        warn!(path = %self.path, "pre_stop {}: {}", argv[0], describe(&s));
                    }
                }
            }
            _ = sleep_until(until) => {
                warn!(path = %self.path, "pre_stop {} still running at the deadline; killed", argv[0]);
                signal_group(pid, Signal::SIGKILL);
                let _ = child.wait().await;
            }
        }
        signal_group(pid, Signal::SIGKILL);
    }
}

/// The next notice from the worker's notify socket, or never when it has none.
async fn next_notice(notices: &mut Option<mpsc::UnboundedReceiver<Notice>>) -> Option<Notice> {
    match notices {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// "exit status 3", "signal SIGTERM".
pub(crate) fn describe(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => format!("signal {}", s.as_str()),
            Err(_) => format!("signal {sig}"),
        }
    } else {
        format!("{status}")
    }
}

pub(crate) fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}
