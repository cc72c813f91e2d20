//! A worker run's stop sequence: `pre_stop`, the stop signal to everything of the run (its
//! process group, its cgroup in cgroup mode), the wait until nothing of it is left, SIGKILL at
//! the deadline, and the processes of the run that left its group and were adopted (the
//! process-group fallback). Every wait follows a [`StopClock`], which a stop from above can
//! tighten at any moment.

use std::process::ExitStatus;

use nix::sys::signal::Signal;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::warn;

use super::{secs, WorkerRun};
use crate::config::LogMode;
use crate::notify::workers as notify;
use crate::process::adopted;
use crate::process::group::{signal_group, wait_gone, Target};
use crate::process::owned::{Mode, RunProcesses, KILL_GRACE};
use crate::process::reap::describe;
use crate::process::registry;
use crate::process::spawn::{self, Child, Launch, Output};
use crate::report::{millis, NodeType, StopOutcome, StopRecord};
use crate::supervisor::{Deadline, Outcome, StopRequest};

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
    pub(super) fn new(
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
pub(super) async fn next_request(
    request: &mut Option<oneshot::Receiver<StopRequest>>,
) -> Option<StopRequest> {
    match request {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

impl WorkerRun {
    pub(super) fn oom_kills(&self) -> u64 {
        self.owned.as_ref().map_or(0, RunProcesses::oom_kills)
    }

    /// Nothing of the run is left: forget its group, remove its cgroup.
    pub(super) fn forget_run(&mut self) {
        if let Some(owned) = self.owned.take() {
            owned.forget();
        }
    }

    /// Whether anything of the run is alive.
    pub(super) fn run_alive(&self) -> bool {
        self.owned.as_ref().is_some_and(RunProcesses::alive)
    }

    /// Sends `sig` to everything of the run.
    pub(super) fn signal_run(&self, sig: Signal) {
        if let Some(owned) = &self.owned {
            owned.signal(sig);
        }
    }

    /// A clock for a stop the worker makes on its own account: its `stop_timeout`, unless
    /// the group's stop request comes meanwhile with a tighter deadline.
    pub(super) fn own_clock(&mut self) -> StopClock {
        let cap = Instant::now() + self.spec.stop_timeout;
        StopClock::new(Deadline::fixed(cap), cap, self.stop.take())
    }

    /// A worker its watchdog found hung: the stop sequence (within its own `stop_timeout`),
    /// then an ended run that counts as a failure, so `restart` decides what comes next.
    pub(super) async fn hung(
        &mut self,
        child: &mut Child,
        pid: i32,
        started: Instant,
        why: String,
    ) {
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
    pub(super) fn not_running(&self, req: Option<StopRequest>) {
        if req.is_some() {
            self.link.stopped(vec![crate::supervisor::not_running(
                &self.path,
                NodeType::Worker,
            )]);
        }
    }

    pub(super) fn became_ready(&mut self) {
        self.permit.take();
        self.link.ready();
    }

    /// The stop sequence, bounded by `min(deadline, now + stop_timeout)`.
    pub(super) async fn stop(
        &mut self,
        child: &mut Child,
        pid: i32,
        deadline: Deadline,
    ) -> StopRecord {
        let cap = Instant::now() + self.spec.stop_timeout;
        self.stop_with(child, pid, StopClock::new(deadline, cap, None))
            .await
    }

    pub(super) async fn stop_with(
        &self,
        child: &mut Child,
        pid: i32,
        mut clock: StopClock,
    ) -> StopRecord {
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
    pub(super) async fn terminate_group(
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
    pub(super) async fn run_wait_gone(
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
    pub(super) async fn sweep_adopted(&self, clock: &mut StopClock) -> (Vec<u32>, bool) {
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

    pub(super) async fn run_pre_stop(&self, argv: &[String], clock: &mut StopClock) {
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
