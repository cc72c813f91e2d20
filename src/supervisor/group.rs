//! A group's task: starts its children in dependency order (bounded by
//! `start_concurrency`), applies restart policies, backoff, the group's strategy and its
//! restart intensity, carries out operators' start/stop/restart of its children and reloads
//! of its spec, stops its children in waves within the level's deadline, and publishes the
//! state of every child on the status board.

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
    answer_not_running, answer_with, not_running, refuse, ControlDone, ControlResult, Ctx, Down,
    Downlink, Link, Op, Outcome, TreeEvent, Up,
};
use crate::config::{
    display_path, join_path, Backoff, GroupSpec, NodeKind, RestartPolicy, Strategy, WorkerSpec,
};
use crate::diff::{diff_children, Change};
use crate::plan;
use crate::report::{millis, StopOutcome, StopRecord};
use crate::status::{Entry, NodeState, OrderKey};

pub(crate) struct GroupRun {
    pub spec: Arc<GroupSpec>,
    pub path: String,
    /// Where this group sits on the status board.
    pub key: OrderKey,
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
    /// No run task: ended and not restarted, stopped, or held by an operator.
    Down,
}

struct Slot {
    node: usize,
    replica: u32,
    path: String,
    state: State,
    run: u64,
    down: Option<Downlink>,
    /// Has been ready since it was last (re)started by the start sequence; gates dependents.
    ever_ready: bool,
    /// Ended and will not be restarted (restart policy); Some(clean exit).
    done: Option<bool>,
    /// Stopped by an operator: not started again until an operator starts it.
    held: bool,
    /// Gone after a reload: a vacancy, which `add_slot` fills again. Runs are numbered per
    /// group, never per slot, so a late report from a removed slot's last run cannot match
    /// the slot that takes its index.
    removed: bool,
    backoff: BackoffState,
    pending_delay: Duration,
    // What the status board shows.
    status: NodeState,
    pid: Option<u32>,
    since: Option<Instant>,
    restarts: u32,
    last_exit: Option<String>,
    next_start_at: Option<Instant>,
    stop_report: Option<StopRecord>,
}

enum Verdict {
    Continue,
    /// Restart intensity exceeded: the group fails.
    Failed,
}

struct Group {
    spec: GroupSpec,
    path: String,
    key: OrderKey,
    token: CancellationToken,
    ctx: Arc<Ctx>,
    slots: Vec<Slot>,
    /// Indexes of removed slots below `slots.len()`, filled again before the table grows,
    /// so that reloads which replace workers do not grow the table for good.
    vacant: Vec<usize>,
    /// The last run number handed out to any slot of this group (see `Slot::removed`).
    runs: u64,
    /// Live slot indexes per child node.
    node_slots: Vec<Vec<usize>>,
    deps: Vec<Vec<usize>>,
    start_order: Vec<usize>,
    semaphore: Option<Arc<Semaphore>>,
    /// One shared spec per worker node, so a pool of 1000 replicas holds one copy.
    worker_specs: Vec<Option<Arc<WorkerSpec>>>,
    up: mpsc::UnboundedSender<Up>,
    restarts: VecDeque<Instant>,
}

impl GroupRun {
    async fn run(mut self) {
        if !self.delay.is_zero() {
            let until = Instant::now() + self.delay;
            loop {
                // biased: a stop request wins over the end of the backoff.
                tokio::select! {
                    biased;
                    cmd = self.down.recv() => match cmd {
                        Some(Down::Reload { spec, key, reply }) => {
                            self.spec = Arc::new(*spec);
                            self.key = key;
                            let _ = reply.send(());
                        }
                        Some(Down::Control { reply, .. }) => {
                            let _ = reply.send(Err(format!(
                                "{} is waiting to restart", display_path(&self.path)
                            )));
                        }
                        other => {
                            return answer_not_running(other, &mut self.down, &self.path, "group").await;
                        }
                    },
                    _ = self.token.cancelled() => break,
                    _ = sleep_until(until) => break,
                }
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
            let live = || group.slots.iter().filter(|s| !s.removed);
            if !announced && live().all(|s| s.ever_ready || s.done.is_some()) {
                announced = true;
                self.permit.take();
                if !self.path.is_empty() {
                    info!(path = %self.path, "group ready");
                }
                self.link.ready();
            }
            if live().all(|s| s.done.is_some()) {
                let clean = live().all(|s| s.done == Some(true));
                info!(path = %display_path(&self.path), "every child has ended for good");
                self.link.ended(Outcome {
                    failed: !clean,
                    spawn_error: false,
                    settled: true,
                    ran_for: Duration::ZERO,
                    exit: None,
                });
                return answer_not_running(None, &mut self.down, &self.path, "group").await;
            }
            // biased: a request from above is served before any child event, so nothing
            // restarts once the parent has asked this group to stop.
            tokio::select! {
                biased;
                cmd = self.down.recv() => match cmd {
                    Some(Down::Stop { deadline, reply }) => {
                        let records = group.stop_all(deadline).await;
                        let _ = reply.send(records);
                        return;
                    }
                    None => {
                        let deadline = Instant::now() + group.spec.shutdown_timeout;
                        group.stop_all(deadline).await;
                        return;
                    }
                    Some(Down::Control { op, target, reply }) => group.control(op, target, reply).await,
                    Some(Down::Reload { spec, key, reply }) => {
                        group.reload(*spec, key).await;
                        let _ = reply.send(());
                        group.start_pending();
                    }
                },
                Some(event) = events.recv() => {
                    if let Verdict::Failed = group.handle(event).await {
                        let deadline = Instant::now() + group.spec.shutdown_timeout;
                        let records = group.stop_all(deadline).await;
                        self.link.ended(Outcome {
                            failed: true,
                            spawn_error: false,
                            settled: false,
                            ran_for: Duration::ZERO,
                            exit: Some("restart intensity exceeded".into()),
                        });
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
        let mut group = Group {
            spec: (*run.spec).clone(),
            path: run.path.clone(),
            key: run.key.clone(),
            token: run.token.clone(),
            ctx: Arc::clone(&run.ctx),
            slots: Vec::new(),
            vacant: Vec::new(),
            runs: 0,
            node_slots: Vec::new(),
            deps: Vec::new(),
            start_order: Vec::new(),
            semaphore: None,
            worker_specs: Vec::new(),
            up,
            restarts: VecDeque::new(),
        };
        for node in 0..group.spec.children.len() {
            let replicas = group.replicas_of(node);
            for replica in 0..replicas {
                group.add_slot(node, replica);
            }
        }
        group.reindex();
        group
    }

    fn replicas_of(&self, node: usize) -> u32 {
        match &self.spec.children[node].kind {
            NodeKind::Worker(w) => w.replicas,
            NodeKind::Group(_) => 1,
        }
    }

    fn slot_path(&self, node: usize, replica: u32) -> String {
        let base = join_path(&self.path, &self.spec.children[node].name);
        if self.replicas_of(node) > 1 {
            format!("{base}#{replica}")
        } else {
            base
        }
    }

    fn kind_of(&self, node: usize) -> &'static str {
        match self.spec.children[node].kind {
            NodeKind::Worker(_) => "worker",
            NodeKind::Group(_) => "group",
        }
    }

    fn add_slot(&mut self, node: usize, replica: u32) -> usize {
        let slot = Slot {
            node,
            replica,
            path: self.slot_path(node, replica),
            state: State::Pending,
            run: 0,
            down: None,
            ever_ready: false,
            done: None,
            held: false,
            removed: false,
            backoff: BackoffState::default(),
            pending_delay: Duration::ZERO,
            status: NodeState::Waiting,
            pid: None,
            since: None,
            restarts: 0,
            last_exit: None,
            next_start_at: None,
            stop_report: None,
        };
        let index = match self.vacant.pop() {
            Some(index) => {
                self.slots[index] = slot;
                index
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.publish(index);
        index
    }

    /// Gives back what removed slots hold: the table ends at its last live slot, and the
    /// removed slots below it become vacancies for `add_slot`.
    fn release_removed(&mut self) {
        while self.slots.last().is_some_and(|s| s.removed) {
            self.slots.pop();
        }
        if self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to_fit();
        }
        // Lowest index on top, so that the table stays dense at its start.
        self.vacant = (0..self.slots.len())
            .rev()
            .filter(|&s| self.slots[s].removed)
            .collect();
        for &s in &self.vacant {
            let slot = &mut self.slots[s];
            slot.down = None;
            slot.path = String::new();
            slot.last_exit = None;
            slot.stop_report = None;
        }
    }

    /// Recomputes the per-node indexes after the spec or the slots changed.
    fn reindex(&mut self) {
        self.node_slots = vec![Vec::new(); self.spec.children.len()];
        for (i, s) in self.slots.iter().enumerate() {
            if !s.removed {
                self.node_slots[s.node].push(i);
            }
        }
        self.deps = plan::dependency_indexes(&self.spec.children);
        self.start_order = plan::start_order(&self.spec.children);
        self.semaphore = self
            .spec
            .start_concurrency
            .map(|n| Arc::new(Semaphore::new(n)));
        self.worker_specs = self
            .spec
            .children
            .iter()
            .map(|c| match &c.kind {
                NodeKind::Worker(w) => Some(Arc::new((**w).clone())),
                NodeKind::Group(_) => None,
            })
            .collect();
    }

    fn slot_key(&self, index: usize) -> OrderKey {
        let mut k = self.key.clone();
        k.push(self.slots[index].node as u32);
        k.push(self.slots[index].replica);
        k
    }

    /// Puts slot `index` on the status board.
    fn publish(&self, index: usize) {
        let s = &self.slots[index];
        self.ctx.board.put(
            self.slot_key(index),
            Entry {
                path: s.path.clone(),
                kind: self.kind_of(s.node),
                state: s.status,
                pid: s.pid,
                since: s.since,
                restarts: s.restarts,
                last_exit: s.last_exit.clone(),
                next_restart_at: s.next_start_at,
                stop_report: s.stop_report.clone(),
            },
        );
    }

    fn set_status(&mut self, index: usize, status: NodeState) {
        self.slots[index].status = status;
        self.publish(index);
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
        let key = self.slot_key(index);
        self.runs += 1;
        let slot = &mut self.slots[index];
        slot.run = self.runs;
        slot.state = State::Running;
        slot.pending_delay = Duration::ZERO;
        slot.pid = None;
        slot.stop_report = None;
        // A worker's uptime starts when its process does (Up::Started); a group's when it is
        // launched.
        slot.since = match self.spec.children[slot.node].kind {
            NodeKind::Group(_) => Some(Instant::now() + delay),
            NodeKind::Worker(_) => None,
        };
        if delay.is_zero() {
            slot.status = NodeState::Starting;
            slot.next_start_at = None;
        } else {
            slot.status = NodeState::Backoff;
            slot.next_start_at = Some(Instant::now() + delay);
        }
        let link = Link {
            slot: index,
            run: slot.run,
            up: self.up.clone(),
        };
        let token = self.token.child_token();
        let ctx = Arc::clone(&self.ctx);
        match &self.spec.children[slot.node].kind {
            NodeKind::Worker(_) => {
                let Some(spec) = self.worker_specs[slot.node].clone() else {
                    return;
                };
                let (tx, rx) = oneshot::channel();
                slot.down = Some(Downlink::Worker(tx));
                let run = WorkerRun {
                    spec,
                    path: slot.path.clone(),
                    replica: slot.replica,
                    delay,
                    token,
                    permit,
                    link,
                    stop: rx,
                    ctx,
                };
                self.ctx.tracker.spawn(run.run());
            }
            NodeKind::Group(g) => {
                let (tx, rx) = mpsc::unbounded_channel();
                slot.down = Some(Downlink::Group(tx));
                let run = GroupRun {
                    spec: Arc::new(g.clone()),
                    path: slot.path.clone(),
                    key,
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
        self.publish(index);
    }

    fn has_probe(&self, node: usize) -> bool {
        match &self.spec.children[node].kind {
            NodeKind::Worker(w) => w.ready.is_some(),
            NodeKind::Group(_) => true,
        }
    }

    async fn handle(&mut self, event: Up) -> Verdict {
        // The slot may have been removed (and its index taken or dropped) since.
        let current = |g: &Group, slot: usize, run: u64| {
            g.slots
                .get(slot)
                .is_some_and(|s| s.run == run && s.state == State::Running)
        };
        let (index, run, outcome) = match event {
            Up::Started { slot, run, pid } => {
                if current(self, slot, run) {
                    let probe = self.has_probe(self.slots[slot].node);
                    let s = &mut self.slots[slot];
                    s.pid = Some(pid);
                    s.since = Some(Instant::now());
                    s.next_start_at = None;
                    s.status = if probe {
                        NodeState::Starting
                    } else {
                        NodeState::Running
                    };
                    self.publish(slot);
                }
                return Verdict::Continue;
            }
            Up::Ready { slot, run } => {
                if current(self, slot, run) {
                    self.slots[slot].ever_ready = true;
                    if self.has_probe(self.slots[slot].node) {
                        self.set_status(slot, NodeState::Ready);
                    }
                }
                return Verdict::Continue;
            }
            Up::Ended { slot, run, outcome } => (slot, run, outcome),
        };
        if !current(self, index, run) {
            return Verdict::Continue; // a report from a run already stopped or replaced
        }
        {
            let s = &mut self.slots[index];
            s.state = State::Down;
            s.down = None;
            s.pid = None;
            if outcome.exit.is_some() {
                s.last_exit = outcome.exit.clone();
            }
        }
        if self.token.is_cancelled() {
            self.set_status(index, NodeState::Stopped);
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
            let status = if outcome.failed {
                NodeState::Failed
            } else {
                NodeState::Stopped
            };
            self.set_status(index, status);
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
        self.slots[index].restarts += 1;
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
                path = %display_path(&self.path),
                "restart intensity exceeded: more than {} restarts within {}; the group fails",
                self.spec.max_restarts,
                humantime::format_duration(self.spec.restart_window)
            );
            self.set_status(index, NodeState::Failed);
            return Verdict::Failed;
        }
        warn!(path = %path, "restarting in {}", secs(delay));
        if self.spec.strategy == Strategy::OneForOne {
            self.launch(index, delay, None);
            return Verdict::Continue;
        }
        let scope: Vec<usize> = match self.spec.strategy {
            Strategy::RestForOne => {
                let rank = |n: usize| self.start_order.iter().position(|&o| o == n);
                let mine = rank(self.slots[index].node);
                self.live()
                    .filter(|&s| rank(self.slots[s].node) > mine)
                    .collect()
            }
            _ => self.live().filter(|&s| s != index).collect(),
        };
        let siblings: Vec<usize> = scope
            .into_iter()
            .filter(|&s| self.slots[s].done.is_none() && !self.slots[s].held)
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
                if s != index {
                    slot.restarts += 1;
                }
                slot.state = State::Pending;
                slot.status = NodeState::Waiting;
                slot.pending_delay = if s == index { delay } else { Duration::ZERO };
            }
            self.publish(s);
        }
        Verdict::Continue
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|&s| !self.slots[s].removed)
    }

    /// An operator's start/stop/restart of the child named by `target[0]` (a node name: all
    /// its replicas; or a replica `name#i`), or a request to pass further down.
    async fn control(
        &mut self,
        op: Op,
        target: Vec<String>,
        reply: oneshot::Sender<ControlResult>,
    ) {
        let Some((first, rest)) = target.split_first() else {
            let _ = reply.send(Err("empty path".into()));
            return;
        };
        let matched: Vec<usize> = self
            .live()
            .filter(|&s| {
                let slot = &self.slots[s];
                self.spec.children[slot.node].name == *first
                    || slot.path.rsplit('/').next() == Some(first.as_str())
            })
            .collect();
        let here = join_path(&self.path, first);
        if matched.is_empty() {
            let _ = reply.send(Err(format!("no such node: {here}")));
            return;
        }
        if !rest.is_empty() {
            let group = matched
                .first()
                .copied()
                .filter(|&s| self.kind_of(self.slots[s].node) == "group");
            let Some(s) = group else {
                let _ = reply.send(Err(format!("{here} is not a group")));
                return;
            };
            match self.slots[s].down.as_ref().and_then(Downlink::group) {
                Some(tx) if self.slots[s].state == State::Running => {
                    let msg = Down::Control {
                        op,
                        target: rest.to_vec(),
                        reply,
                    };
                    if let Err(e) = tx.send(msg) {
                        refuse(e.0, &format!("{here} is not running"));
                    }
                }
                _ => {
                    let _ = reply.send(Err(format!("{here} is not running")));
                }
            }
            return;
        }
        let mut records = Vec::new();
        if matches!(op, Op::Stop | Op::Restart) {
            let running: Vec<usize> = matched
                .iter()
                .copied()
                .filter(|&s| self.slots[s].state == State::Running)
                .collect();
            info!(path = %here, "{} requested by an operator", if op == Op::Stop { "stop" } else { "restart" });
            let deadline = Instant::now() + self.spec.shutdown_timeout;
            records = self.stop_slots(&running, deadline).await;
            for &s in &matched {
                let slot = &mut self.slots[s];
                slot.held = true;
                if slot.state == State::Pending {
                    slot.state = State::Down;
                    slot.status = NodeState::Stopped;
                }
                self.publish(s);
            }
        }
        let message = if op == Op::Stop {
            format!("stopped {here}")
        } else {
            let mut started = 0;
            for &s in &matched {
                let slot = &mut self.slots[s];
                if slot.state == State::Down {
                    slot.held = false;
                    slot.done = None;
                    slot.state = State::Pending;
                    slot.status = NodeState::Waiting;
                    slot.pending_delay = Duration::ZERO;
                    slot.backoff = BackoffState::default();
                    started += 1;
                    self.publish(s);
                }
            }
            self.start_pending();
            if op == Op::Start && started == 0 {
                format!("{here} is already running")
            } else if op == Op::Start {
                format!("starting {here}")
            } else {
                format!("restarted {here}")
            }
        };
        let _ = reply.send(Ok(ControlDone { message, records }));
    }

    /// Applies a new version of this group's spec: removed children stop, changed workers
    /// restart, pools scale (the highest indexes stop), nested groups apply their own part,
    /// and everything else keeps running untouched. A node an operator stopped stays stopped.
    /// `key` is this group's (possibly new) place on the status board.
    async fn reload(&mut self, new: GroupSpec, key: OrderKey) {
        let changes = diff_children(&self.spec.children, &new.children);
        let mut retire = Vec::new();
        let mut held_nodes = Vec::new();
        for c in &changes {
            let Some(old) = c.old else { continue };
            let slots = &self.node_slots[old];
            if !slots.is_empty() && slots.iter().all(|&s| self.slots[s].held) {
                held_nodes.push(c.name.clone());
            }
            match &c.change {
                Change::Removed | Change::Restart => retire.extend(slots.iter().copied()),
                Change::Scale { to, .. } => retire.extend(
                    slots
                        .iter()
                        .copied()
                        .filter(|&s| self.slots[s].replica >= *to),
                ),
                Change::Unchanged | Change::Regroup | Change::Added => {}
            }
        }
        let running: Vec<usize> = retire
            .iter()
            .copied()
            .filter(|&s| self.slots[s].state == State::Running)
            .collect();
        let deadline = Instant::now() + new.shutdown_timeout.min(self.spec.shutdown_timeout);
        self.stop_slots(&running, deadline).await;
        for &s in &retire {
            self.slots[s].removed = true;
            self.slots[s].state = State::Down;
        }
        // Board keys follow spec positions, which may all move: drop this group's entries and
        // publish them again below.
        for node in 0..self.spec.children.len() {
            let mut k = self.key.clone();
            k.push(node as u32);
            self.ctx.board.remove_tree(k);
        }
        self.key = key;
        let old_names: Vec<String> = self.spec.children.iter().map(|c| c.name.clone()).collect();
        self.spec = new;
        for s in self.live().collect::<Vec<_>>() {
            let name = &old_names[self.slots[s].node];
            match self.spec.children.iter().position(|c| &c.name == name) {
                Some(n) => self.slots[s].node = n,
                None => self.slots[s].removed = true,
            }
        }
        self.release_removed();
        for c in &changes {
            let Some(n) = c.new else { continue };
            let range = match &c.change {
                Change::Added | Change::Restart => 0..self.replicas_of(n),
                Change::Scale { from, to } if to > from => *from..*to,
                _ => continue,
            };
            let held = held_nodes.contains(&c.name);
            for r in range {
                let s = self.add_slot(n, r);
                if held {
                    let slot = &mut self.slots[s];
                    slot.held = true;
                    slot.state = State::Down;
                    slot.status = NodeState::Stopped;
                }
            }
        }
        // Paths follow the pool size: `api` alone, `api#0`.. in a pool.
        for s in self.live().collect::<Vec<_>>() {
            self.slots[s].path = self.slot_path(self.slots[s].node, self.slots[s].replica);
            self.publish(s);
        }
        self.reindex();
        // Nested groups apply their part, and learn their (possibly moved) board key.
        for n in 0..self.spec.children.len() {
            let NodeKind::Group(sub) = &self.spec.children[n].kind else {
                continue;
            };
            for &s in &self.node_slots[n] {
                if let Some(tx) = self.slots[s].down.as_ref().and_then(Downlink::group) {
                    let (reply, done) = oneshot::channel();
                    let msg = Down::Reload {
                        spec: Box::new(sub.clone()),
                        key: self.slot_key(s),
                        reply,
                    };
                    if tx.send(msg).is_ok() {
                        let _ = done.await;
                    }
                }
            }
        }
    }

    /// Stops every child, in waves, by `min(deadline, now + shutdown_timeout)`.
    async fn stop_all(&mut self, deadline: Instant) -> Vec<StopRecord> {
        let begin = Instant::now();
        let d = deadline.min(begin + self.spec.shutdown_timeout);
        self.token.cancel();
        let all: Vec<usize> = self.live().collect();
        let mut records = self.stop_slots(&all, d).await;
        // The group itself missed its deadline only if stopping ran into `d`; a worker killed
        // at its own, shorter stop_timeout is reported on that worker's line.
        let killed =
            Instant::now() >= d && records.iter().any(|r| r.outcome == StopOutcome::Killed);
        records.insert(
            0,
            StopRecord {
                path: display_path(&self.path).to_string(),
                kind: "group",
                pid: None,
                signal: None,
                deadline_ms: millis(d.saturating_duration_since(begin)),
                took_ms: millis(begin.elapsed()),
                outcome: StopOutcome::of(killed),
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
            let kind = self.kind_of(self.slots[s].node);
            let slot = &mut self.slots[s];
            let down = slot.down.take();
            slot.state = State::Down;
            let path = slot.path.clone();
            let had_task = down.is_some();
            match down.and_then(|link| link.stop(d)) {
                Some(rx) => {
                    self.set_status(s, NodeState::Stopping);
                    waiting.push((s, path, kind, rx));
                }
                None => {
                    if had_task {
                        // Its task ended (the process exited) and the exit has not been
                        // handled yet; that event is now stale and will be dropped, so the
                        // node must not keep showing `running` with a dead pid.
                        self.slots[s].pid = None;
                        self.set_status(s, NodeState::Stopped);
                    }
                    records.push(not_running(&path, kind));
                }
            }
        }
        let replies = join_all(waiting.into_iter().map(|(s, path, kind, rx)| async move {
            let r = rx.await.unwrap_or_default();
            let r = if r.is_empty() {
                vec![not_running(&path, kind)]
            } else {
                r
            };
            (s, r)
        }))
        .await;
        for (s, r) in replies {
            let mine = display_path(&self.slots[s].path).to_string();
            self.slots[s].stop_report = r.iter().find(|rec| rec.path == mine).cloned();
            self.slots[s].pid = None;
            self.set_status(s, NodeState::Stopped);
            records.extend(r);
        }
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
