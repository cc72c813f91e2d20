//! One run of one worker replica: wait out the backoff, spawn, probe readiness, then either
//! report the exit to the group or carry out the stop sequence the group asks for:
//! `pre_stop`, `stop_signal` to the whole process group, wait until the group is empty or the
//! deadline, SIGKILL, reap. A worker counts as stopped only when nothing of it is left.
//!
//! Every wait of a stop sequence follows a [`StopClock`]: the asker's deadline (which it may
//! tighten), capped by `stop_timeout`, and a stop request from the group that may still
//! arrive while the worker stops on its own account (a watchdog, leftovers of an exited
//! leader), so no stop sequence outlives the deadline of the stop that preempts it.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::probe::{self, ProbeEnv};
use super::{Ctx, Deadline, Link, Outcome, StopRequest};
use crate::config::{LogMode, ReadyCheck, WorkerSpec};
use crate::notify::workers::{self as notify, Notice};
use crate::process::adopted;
use crate::process::group::{signal_group, wait_gone, Target};
use crate::process::owned::{Mode, RunProcesses, KILL_GRACE};
use crate::process::reap::describe;
use crate::process::registry;
use crate::process::spawn::{self, Child, Launch, Output};
use crate::report::{millis, NodeType, StopOutcome, StopRecord};

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

/// The deadline a stop sequence runs under: the asker's deadline capped by the worker's own
/// `stop_timeout`, tightened by a stop request from the group that arrives meanwhile.
pub(crate) struct StopClock {
    deadline: Deadline,
    cap: Instant,
    /// A stop request from the group, while the worker stops on its own account.
    request: Option<oneshot::Receiver<StopRequest>>,
    /// The deadline of that request, once it came.
    preempted: Option<Deadline>,
}

impl StopClock {
    fn new(
        deadline: Deadline,
        cap: Instant,
        request: Option<oneshot::Receiver<StopRequest>>,
    ) -> StopClock {
        StopClock {
            deadline,
            cap,
            request,
            preempted: None,
        }
    }

    /// The effective deadline now.
    pub fn at(&self) -> Instant {
        let at = self.deadline.at().min(self.cap);
        match &self.preempted {
            Some(p) => at.min(p.at()),
            None => at,
        }
    }

    /// Waits until the effective deadline has passed, following every tightening.
    pub async fn passed(&mut self) {
        loop {
            let at = self.at();
            if Instant::now() >= at {
                return;
            }
            tokio::select! {
                _ = sleep_until(at) => return,
                _ = self.deadline.tightened() => {}
                _ = tightened(&mut self.preempted) => {}
                req = next_request(&mut self.request) => {
                    self.request = None;
                    if let Some(StopRequest { deadline }) = req {
                        self.preempted = Some(deadline);
                    }
                }
            }
        }
    }
}

async fn tightened(deadline: &mut Option<Deadline>) {
    match deadline {
        Some(d) => d.tightened().await,
        None => std::future::pending().await,
    }
}

/// The group's stop request, when it comes; pends forever when there is none to wait for.
async fn next_request(request: &mut Option<oneshot::Receiver<StopRequest>>) -> Option<StopRequest> {
    match request {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
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

    fn oom_kills(&self) -> u64 {
        self.owned.as_ref().map_or(0, RunProcesses::oom_kills)
    }

    /// Nothing of the run is left: forget its group, remove its cgroup.
    fn forget_run(&mut self) {
        if let Some(owned) = self.owned.take() {
            owned.forget();
        }
    }

    /// Whether anything of the run is alive.
    fn run_alive(&self) -> bool {
        self.owned.as_ref().is_some_and(RunProcesses::alive)
    }

    /// Sends `sig` to everything of the run.
    fn signal_run(&self, sig: Signal) {
        if let Some(owned) = &self.owned {
            owned.signal(sig);
        }
    }

    /// A clock for a stop the worker makes on its own account: its `stop_timeout`, unless
    /// the group's stop request comes meanwhile with a tighter deadline.
    fn own_clock(&mut self) -> StopClock {
        let cap = Instant::now() + self.spec.stop_timeout;
        StopClock::new(Deadline::fixed(cap), cap, self.stop.take())
    }

    /// A worker its watchdog found hung: the stop sequence (within its own `stop_timeout`),
    /// then an ended run that counts as a failure, so `restart` decides what comes next.
    async fn hung(&mut self, child: &mut Child, pid: i32, started: Instant, why: String) {
        let clock = self.own_clock();
        let record = self.stop_with(child, pid, clock).await;
        self.forget_run();
        let exit = match &record.exit {
            Some(e) => format!("{why}; stopped ({e})"),
            None => format!("{why}; stopped"),
        };
        self.link.ended(Outcome {
            failed: true,
            ran_for: started.elapsed(),
            exit: Some(exit),
            records: vec![record],
            ..Outcome::default()
        });
    }

    /// Answers a stop request when nothing is running.
    fn not_running(&self, req: Option<StopRequest>) {
        if req.is_some() {
            self.link
                .stopped(vec![super::not_running(&self.path, NodeType::Worker)]);
        }
    }

    fn became_ready(&mut self) {
        self.permit.take();
        self.link.ready();
    }

    /// The stop sequence, bounded by `min(deadline, now + stop_timeout)`.
    async fn stop(&mut self, child: &mut Child, pid: i32, deadline: Deadline) -> StopRecord {
        let cap = Instant::now() + self.spec.stop_timeout;
        self.stop_with(child, pid, StopClock::new(deadline, cap, None))
            .await
    }

    async fn stop_with(&self, child: &mut Child, pid: i32, mut clock: StopClock) -> StopRecord {
        let begin = Instant::now();
        let mut signal = None;
        if begin < clock.at() {
            if let Some(pre_stop) = self.spec.pre_stop.clone() {
                self.run_pre_stop(&pre_stop, &mut clock).await;
            }
            if Instant::now() < clock.at() {
                signal = Some(self.spec.stop_signal);
            }
        }
        let (status, killed, adopted) = self.terminate_group(pid, &mut clock, Some(child)).await;
        let dw = clock.at();
        if killed {
            warn!(
                path = %self.path, pid,
                "did not stop within its {} deadline; SIGKILLed its process group",
                secs(dw.saturating_duration_since(begin))
            );
        }
        notify::unregister(pid);
        StopRecord {
            path: self.path.clone(),
            kind: NodeType::Worker,
            pid: Some(pid as u32),
            signal: signal.map(|s| s.as_str().to_string()),
            deadline_ms: millis(dw.saturating_duration_since(begin)),
            took_ms: millis(begin.elapsed()),
            outcome: StopOutcome::of(killed),
            exit: status.as_ref().map(describe),
            adopted,
        }
    }

    /// Sends the stop signal to the group (unless the deadline already passed), waits until
    /// the leader is reaped and the group is empty, and SIGKILLs the group at the deadline.
    /// Then stops what of the run left the group (`sweep_adopted`). Returns the leader's
    /// status (when `child` is given), whether SIGKILL was needed, and the adopted pids.
    async fn terminate_group(
        &self,
        pid: i32,
        clock: &mut StopClock,
        mut child: Option<&mut Child>,
    ) -> (Option<ExitStatus>, bool, Vec<u32>) {
        let sig = self.spec.stop_signal;
        if Instant::now() < clock.at() {
            self.signal_run(sig);
            if sig != Signal::SIGKILL && sig != Signal::SIGCONT {
                // A stopped process cannot act on the signal until it is continued.
                self.signal_run(Signal::SIGCONT);
            }
        }
        let mut status = None;
        if let Some(child) = child.as_deref_mut() {
            status = tokio::select! {
                s = child.wait() => s.ok(),
                _ = clock.passed() => None,
            };
        }
        let leader_done = child.is_none() || status.is_some();
        let mut events = self.ctx.child_events.clone();
        // `wait_gone` takes a fixed instant; the clock only ever moves it earlier, and its
        // own branch wakes at the tightened time.
        let until = clock.at();
        let gone = leader_done
            && tokio::select! {
                gone = self.run_wait_gone(until, &mut events) => gone,
                _ = clock.passed() => !self.run_alive(),
            };
        if gone {
            let (adopted, killed) = self.sweep_adopted(clock).await;
            return (status, killed, adopted);
        }
        if let Some(owned) = &self.owned {
            owned.kill();
        }
        self.ctx.note_sigkill();
        if let Some(child) = child {
            if status.is_none() {
                status = timeout(KILL_GRACE, child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
        }
        if !self
            .run_wait_gone(Instant::now() + KILL_GRACE, &mut events)
            .await
        {
            warn!(path = %self.path, pid, "process group still present {} after SIGKILL", secs(KILL_GRACE));
        }
        let (adopted, _) = self.sweep_adopted(clock).await;
        (status, true, adopted)
    }

    /// Waits until nothing of the run is left, or `until`.
    async fn run_wait_gone(
        &self,
        until: Instant,
        events: &mut tokio::sync::watch::Receiver<u64>,
    ) -> bool {
        match &self.owned {
            Some(owned) => owned.wait_gone(until, events).await,
            None => true,
        }
    }

    /// Stops, by the same clock, what of this run left its process group and was adopted by
    /// arborist (`process::adopted`): stop signal, then SIGKILL at the deadline. Returns their
    /// pids and whether SIGKILL was needed. During the tree's shutdown the tree does this
    /// once for every worker, after the root has stopped.
    async fn sweep_adopted(&self, clock: &mut StopClock) -> (Vec<u32>, bool) {
        // In cgroup mode the run's cgroup already held every such process.
        let cgroup_mode = self.owned.as_ref().map(RunProcesses::mode) == Some(Mode::Cgroup);
        if cgroup_mode || self.ctx.shutting_down() || self.marker.is_empty() {
            return (Vec::new(), false);
        }
        let pids = adopted::of_run(&self.marker).await;
        if pids.is_empty() {
            return (Vec::new(), false);
        }
        warn!(
            path = %self.path, pids = ?pids,
            "stopping {} processes of this run that left its process group", pids.len()
        );
        let targets: Vec<Target> = pids.iter().map(|&p| Target::of(p)).collect();
        if Instant::now() < clock.at() {
            for t in &targets {
                t.signal(self.spec.stop_signal);
                t.signal(Signal::SIGCONT);
            }
        }
        let alive = || targets.iter().any(Target::alive);
        let mut events = self.ctx.child_events.clone();
        let until = clock.at();
        let gone = tokio::select! {
            gone = wait_gone(alive, until, &mut events) => gone,
            _ = clock.passed() => !alive(),
        };
        let pids: Vec<u32> = pids.iter().map(|&p| p as u32).collect();
        if gone {
            return (pids, false);
        }
        warn!(path = %self.path, "processes of this run that left its process group ignored {}; SIGKILLed", self.spec.stop_signal);
        for t in &targets {
            t.signal(Signal::SIGKILL);
        }
        self.ctx.note_sigkill();
        wait_gone(alive, Instant::now() + KILL_GRACE, &mut events).await;
        (pids, true)
    }

    async fn run_pre_stop(&self, argv: &[String], clock: &mut StopClock) {
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
            // Part of the worker's stop: it ends the same way.
            stop_signal: self.spec.stop_signal,
            cgroup_procs: None,
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
        // Dropped on return, once the pre_stop's group has been killed: its pipes close.
        let (_done, done) = tokio::sync::oneshot::channel::<()>();
        if stdout.is_some() || stderr.is_some() {
            let label = format!("{} (pre_stop)", self.path);
            self.ctx
                .tracker
                .spawn(crate::logs::capture(stdout, stderr, label, done));
        }
        tokio::select! {
            status = child.wait() => {
                if let Ok(s) = status {
                    if !s.success() {
                        warn!(path = %self.path, "pre_stop {}: {}", argv[0], describe(&s));
                    }
                }
            }
            _ = clock.passed() => {
                warn!(path = %self.path, "pre_stop {} still running at the deadline; killed", argv[0]);
                signal_group(pid, Signal::SIGKILL);
                let _ = timeout(KILL_GRACE, child.wait()).await;
            }
        }
        signal_group(pid, Signal::SIGKILL);
        registry::remove_group(pid);
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
