//! A group's task: starts its children in dependency order (bounded by
//! `start_concurrency`), applies restart policies, backoff, the group's strategy and its
//! restart intensity, and stops its children in waves within the level's deadline.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::backoff::BackoffState;
use super::worker::{secs, WorkerRun};
use super::{
    answer_not_running, answer_with, not_running, Ctx, Down, Link, Outcome, TreeEvent, Up,
};
use crate::config::{join_path, Backoff, GroupSpec, NodeKind, RestartPolicy, Strategy};
use crate::plan;
use crate::report::{millis, StopOutcome, StopRecord};

pub(crate) struct GroupRun {
    pub spec: Arc<GroupSpec>,
    pub path: String,
    pub delay: Duration,
    pub token: CancellationToken,
    pub permit: Option<OwnedSemaphorePermit>,
    pub link: Link,
    pub down: mpsc::UnboundedReceiver<Down>,
    pub ctx: Arc<Ctx>,
}

/// Boxed so that a group can spawn groups: an `async fn` cannot name its own future type.
pub(crate) fn run_group(g: GroupRun) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(g.run())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting to be started (dependencies, start permits).
    Pending,
    /// A run task exists (in backoff, starting, or running).
    Running,
    /// No run task: ended and not restarted, or stopped.
    Down,
}

struct Slot {
    node: usize,
    replica: u32,
    path: String,
    state: State,
    run: u64,
    down: Option<mpsc::UnboundedSender<Down>>,
    /// Has been ready since it was last (re)started by the start sequence; gates dependents.
    ever_ready: bool,
    /// Ended and will not be restarted (restart policy); Some(clean exit).
    done: Option<bool>,
    backoff: BackoffState,
    pending_delay: Duration,
}

enum Verdict {
    Continue,
    /// Restart intensity exceeded: the group fails.
    Failed,
}

struct Group {
    spec: Arc<GroupSpec>,
    path: String,
    token: CancellationToken,
    ctx: Arc<Ctx>,
    slots: Vec<Slot>,
    /// Slot indexes per child node.
    node_slots: Vec<Vec<usize>>,
    deps: Vec<Vec<usize>>,
    start_order: Vec<usize>,
    semaphore: Option<Arc<Semaphore>>,
    up: mpsc::UnboundedSender<Up>,
    restarts: VecDeque<Instant>,
}

impl GroupRun {
    async fn run(mut self) {
        if !self.delay.is_zero() {
            let until = Instant::now() + self.delay;
            tokio::select! {
                biased;
                cmd = self.down.recv() => {
                    return answer_not_running(cmd, &mut self.down, &self.path, "group").await;
                }
                _ = self.token.cancelled() => {}
                _ = sleep_until(until) => {}
            }
        }
        if self.token.is_cancelled() {
            return answer_not_running(None, &mut self.down, &self.path, "group").await;
        }
        let (up, mut events) = mpsc::unbounded_channel();
        let mut group = Group::new(&self, up);
        group.start_pending();
        let mut announced = false;
        loop {
            if !announced && group.slots.iter().all(|s| s.ever_ready || s.done.is_some()) {
                announced = true;
                self.permit.take();
                if !self.path.is_empty() {
                    info!(path = %self.path, "group ready");
                }
                self.link.ready();
            }
            if group.slots.iter().all(|s| s.done.is_some()) {
                let clean = group.slots.iter().all(|s| s.done == Some(true));
                info!(path = %crate::config::display_path(&self.path), "every child has ended for good");
                self.link.ended(Outcome {
                    failed: !clean,
                    spawn_error: false,
                    settled: true,
                    ran_for: Duration::ZERO,
                });
                // The parent may still send a stop; answer it.
                return answer_not_running(None, &mut self.down, &self.path, "group").await;
            }
            // biased: a stop request is served before any child event, so nothing restarts
            // once the parent has asked this group to stop.
            tokio::select! {
                biased;
                cmd = self.down.recv() => {
                    let deadline = match &cmd {
                        Some(Down::Stop { deadline, .. }) => *deadline,
                        None => Instant::now() + self.spec.shutdown_timeout,
                    };
                    let records = group.stop_all(deadline).await;
                    if let Some(Down::Stop { reply, .. }) = cmd {
                        let _ = reply.send(records);
                    }
                    return;
                }
                Some(event) = events.recv() => {
                    if let Verdict::Failed = group.handle(event).await {
                        let deadline = Instant::now() + self.spec.shutdown_timeout;
                        let records = group.stop_all(deadline).await;
                        self.link.ended(Outcome { failed: true, spawn_error: false, settled: false, ran_for: Duration::ZERO });
                        return answer_with(None, &mut self.down, records).await;
                    }
                    group.start_pending();
                }
            }
        }
    }
}

impl Group {
    fn new(run: &GroupRun, up: mpsc::UnboundedSender<Up>) -> Group {
        let spec = Arc::clone(&run.spec);
        let mut slots = Vec::new();
        let mut node_slots = Vec::new();
        for (node, child) in spec.children.iter().enumerate() {
            let replicas = match &child.kind {
                NodeKind::Worker(w) => w.replicas,
                NodeKind::Group(_) => 1,
            };
            let base = join_path(&run.path, &child.name);
            let mut indexes = Vec::new();
            for replica in 0..replicas {
                indexes.push(slots.len());
                slots.push(Slot {
                    node,
                    replica,
                    path: if replicas > 1 {
                        format!("{base}#{replica}")
                    } else {
                        base.clone()
                    },
                    state: State::Pending,
                    run: 0,
                    down: None,
                    ever_ready: false,
                    done: None,
                    backoff: BackoffState::default(),
                    pending_delay: Duration::ZERO,
                });
            }
            node_slots.push(indexes);
        }
        Group {
            deps: plan::dependency_indexes(&spec.children),
            start_order: plan::start_order(&spec.children),
            semaphore: spec.start_concurrency.map(|n| Arc::new(Semaphore::new(n))),
            spec,
            path: run.path.clone(),
            token: run.token.clone(),
            ctx: Arc::clone(&run.ctx),
            slots,
            node_slots,
            up,
            restarts: VecDeque::new(),
        }
    }

    /// Starts every pending slot whose dependencies have been ready, in start order, as far
    /// as start permits allow.
    fn start_pending(&mut self) {
        if self.token.is_cancelled() {
            return;
        }
        for o in 0..self.start_order.len() {
            let node = self.start_order[o];
            let deps_ready = self.deps[node]
                .iter()
                .all(|&d| self.node_slots[d].iter().all(|&s| self.slots[s].ever_ready));
            if !deps_ready {
                continue;
            }
            for i in 0..self.node_slots[node].len() {
                let slot = self.node_slots[node][i];
                if self.slots[slot].state != State::Pending {
                    continue;
                }
                let permit = match &self.semaphore {
                    None => None,
                    Some(sem) => match Arc::clone(sem).try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => return,
                    },
                };
                let delay = self.slots[slot].pending_delay;
                self.launch(slot, delay, permit);
            }
        }
    }

    fn launch(&mut self, index: usize, delay: Duration, permit: Option<OwnedSemaphorePermit>) {
        let slot = &mut self.slots[index];
        slot.run += 1;
        slot.state = State::Running;
        slot.pending_delay = Duration::ZERO;
        let (tx, rx) = mpsc::unbounded_channel();
        slot.down = Some(tx);
        let link = Link {
            slot: index,
            run: slot.run,
            up: self.up.clone(),
        };
        let token = self.token.child_token();
        let ctx = Arc::clone(&self.ctx);
        match &self.spec.children[slot.node].kind {
            NodeKind::Worker(w) => {
                let run = WorkerRun {
                    spec: Arc::new((**w).clone()),
                    path: slot.path.clone(),
                    replica: slot.replica,
                    delay,
                    token,
                    permit,
                    link,
                    down: rx,
                    ctx,
                };
                self.ctx.tracker.spawn(run.run());
            }
            NodeKind::Group(g) => {
                let run = GroupRun {
                    spec: Arc::new(g.clone()),
                    path: slot.path.clone(),
                    delay,
                    token,
                    permit,
                    link,
                    down: rx,
                    ctx,
                };
                self.ctx.tracker.spawn(run_group(run));
            }
        }
    }

    async fn handle(&mut self, event: Up) -> Verdict {
        let (index, run, outcome) = match event {
            Up::Ready { slot, run } => {
                if self.slots[slot].run == run && self.slots[slot].state == State::Running {
                    self.slots[slot].ever_ready = true;
                }
                return Verdict::Continue;
            }
            Up::Ended { slot, run, outcome } => (slot, run, outcome),
        };
        if self.slots[index].run != run || self.slots[index].state != State::Running {
            return Verdict::Continue; // a report from a run already stopped or replaced
        }
        self.slots[index].state = State::Down;
        self.slots[index].down = None;
        if self.token.is_cancelled() {
            return Verdict::Continue;
        }
        let node = &self.spec.children[self.slots[index].node];
        let (policy, backoff, critical) = match &node.kind {
            NodeKind::Worker(w) => (w.restart, w.backoff, w.critical),
            NodeKind::Group(_) => (RestartPolicy::OnFailure, Backoff::default(), false),
        };
        let restart = !outcome.settled
            && match policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => outcome.failed,
                RestartPolicy::Never => false,
            };
        let path = self.slots[index].path.clone();
        if !restart {
            self.slots[index].done = Some(!outcome.failed);
            info!(path = %path, "not restarted (restart: {})", policy_name(policy));
            if critical {
                let _ = self.ctx.tree.send(TreeEvent::CriticalEnded {
                    path,
                    success: !outcome.failed,
                });
            }
            return Verdict::Continue;
        }
        let delay =
            self.slots[index]
                .backoff
                .next_delay(&backoff, outcome.ran_for, fastrand::f64());
        if outcome.spawn_error {
            // Not a restart of a running service: retried alone, never escalated.
            warn!(path = %path, "retrying in {}", secs(delay));
            self.launch(index, delay, None);
            return Verdict::Continue;
        }
        let now = Instant::now();
        self.restarts.push_back(now);
        while let Some(&t) = self.restarts.front() {
            if now.duration_since(t) > self.spec.restart_window {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        if self.restarts.len() as u32 > self.spec.max_restarts {
            error!(
                path = %crate::config::display_path(&self.path),
                "restart intensity exceeded: more than {} restarts within {}; the group fails",
                self.spec.max_restarts,
                humantime::format_duration(self.spec.restart_window)
            );
            return Verdict::Failed;
        }
        warn!(path = %path, "restarting in {}", secs(delay));
        let scope: Vec<usize> = match self.spec.strategy {
            Strategy::OneForOne => vec![],
            Strategy::OneForAll => (0..self.slots.len()).filter(|&s| s != index).collect(),
            Strategy::RestForOne => {
                let rank = |n: usize| self.start_order.iter().position(|&o| o == n);
                let mine = rank(self.slots[index].node);
                (0..self.slots.len())
                    .filter(|&s| rank(self.slots[s].node) > mine)
                    .collect()
            }
        };
        if self.spec.strategy == Strategy::OneForOne {
            self.launch(index, delay, None);
            return Verdict::Continue;
        }
        let siblings: Vec<usize> = scope
            .into_iter()
            .filter(|&s| self.slots[s].done.is_none())
            .collect();
        if !siblings.is_empty() {
            let names: Vec<&str> = siblings
                .iter()
                .map(|&s| self.slots[s].path.as_str())
                .collect();
            info!(
                path = %path,
                "{}: restarting {} with it", strategy_name(self.spec.strategy), names.join(", ")
            );
        }
        let deadline = Instant::now() + self.spec.shutdown_timeout;
        self.stop_slots(&siblings, deadline).await;
        for &s in siblings.iter().chain(std::iter::once(&index)) {
            let never = matches!(
                &self.spec.children[self.slots[s].node].kind,
                NodeKind::Worker(w) if w.restart == RestartPolicy::Never
            );
            let slot = &mut self.slots[s];
            slot.ever_ready = false;
            if never && s != index {
                slot.done = Some(true);
            } else {
                slot.state = State::Pending;
                slot.pending_delay = if s == index { delay } else { Duration::ZERO };
            }
        }
        Verdict::Continue
    }

    /// Stops every child, in waves, by `min(deadline, now + shutdown_timeout)`.
    async fn stop_all(&mut self, deadline: Instant) -> Vec<StopRecord> {
        let begin = Instant::now();
        let d = deadline.min(begin + self.spec.shutdown_timeout);
        self.token.cancel();
        let all: Vec<usize> = (0..self.slots.len()).collect();
        let mut records = self.stop_slots(&all, d).await;
        // The group itself missed its deadline only if stopping ran into `d`; a worker killed
        // at its own, shorter stop_timeout is reported on that worker's line.
        let killed =
            Instant::now() >= d && records.iter().any(|r| r.outcome == StopOutcome::Killed);
        records.insert(
            0,
            StopRecord {
                path: crate::config::display_path(&self.path).to_string(),
                kind: "group",
                pid: None,
                signal: None,
                deadline_ms: millis(d.saturating_duration_since(begin)),
                took_ms: millis(begin.elapsed()),
                outcome: if killed {
                    StopOutcome::Killed
                } else {
                    StopOutcome::Met
                },
                exit: None,
            },
        );
        records
    }

    /// Stops the given slots in stop waves (dependents first), each wave concurrently. Once
    /// `d` has passed, everything left is stopped at once (which means SIGKILL).
    async fn stop_slots(&mut self, subset: &[usize], d: Instant) -> Vec<StopRecord> {
        let waves = plan::stop_waves(&self.spec.children, self.spec.stop_order);
        let mut slot_waves: Vec<Vec<usize>> = waves
            .iter()
            .map(|wave| {
                wave.iter()
                    .flat_map(|&n| self.node_slots[n].iter().rev().copied())
                    .filter(|s| subset.contains(s))
                    .collect::<Vec<usize>>()
            })
            .filter(|w| !w.is_empty())
            .collect();
        let mut records = Vec::new();
        let mut i = 0;
        while i < slot_waves.len() {
            let wave = if Instant::now() >= d {
                let rest = slot_waves[i..].concat();
                i = slot_waves.len();
                rest
            } else {
                i += 1;
                std::mem::take(&mut slot_waves[i - 1])
            };
            records.extend(self.stop_wave(&wave, d).await);
        }
        records
    }

    async fn stop_wave(&mut self, wave: &[usize], d: Instant) -> Vec<StopRecord> {
        let mut waiting = Vec::new();
        let mut records = Vec::new();
        for &s in wave {
            let slot = &mut self.slots[s];
            let kind = match self.spec.children[slot.node].kind {
                NodeKind::Worker(_) => "worker",
                NodeKind::Group(_) => "group",
            };
            let down = slot.down.take();
            slot.state = State::Down;
            match down {
                Some(tx) => {
                    let (reply, rx) = oneshot::channel();
                    if tx.send(Down::Stop { deadline: d, reply }).is_ok() {
                        waiting.push((slot.path.clone(), kind, rx));
                        continue;
                    }
                    records.push(not_running(&slot.path, kind));
                }
                None => records.push(not_running(&slot.path, kind)),
            }
        }
        let replies = join_all(waiting.into_iter().map(|(path, kind, rx)| async move {
            rx.await.unwrap_or_else(|_| vec![not_running(&path, kind)])
        }))
        .await;
        records.extend(replies.into_iter().flatten());
        records
    }
}

fn policy_name(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Never => "never",
    }
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::OneForOne => "one_for_one",
        Strategy::OneForAll => "one_for_all",
        Strategy::RestForOne => "rest_for_one",
    }
}
