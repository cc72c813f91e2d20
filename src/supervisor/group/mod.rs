//! A group's task: starts its children in dependency order (bounded by `start_concurrency`),
//! applies restart policies, backoff, the group's strategy and its restart intensity,
//! carries out operators' requests and reloads, stops its children by dependency within the
//! level's deadline, and publishes every child's state on the status board.
//!
//! The loop is a small `select!` over three sources: requests from above, reports from the
//! children, and the group's own stop clock. It never awaits a child: a stop, an operator's
//! request, a reload or a strategy restart is state in the slots (`slots`) and in the
//! group's current operation (`ops`, `reload`) that later reports advance, so a tighter stop
//! from above always finds the loop free and preempts whatever is in flight (`stop`).

mod ops;
mod policy;
mod reload;
mod slots;
mod stop;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::worker::WorkerRun;
use super::{Ctx, Deadline, Down, Downlink, Link, Outcome, Up};
use crate::config::{display_path, join_path, GroupSpec, NodeKind, WorkerSpec};
use crate::plan;
use crate::report::NodeType;
use crate::status::{Entry, OrderKey};
use ops::Operation;
use policy::Intensity;
use slots::{Slot, SlotState};
use stop::GroupStop;

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

pub(crate) struct Group {
    spec: GroupSpec,
    path: String,
    key: OrderKey,
    token: CancellationToken,
    ctx: Arc<Ctx>,
    link: Link,
    slots: Vec<Slot>,
    /// Indexes of vacant slots below `slots.len()`, filled again before the table grows, so
    /// that reloads which replace workers do not grow the table for good.
    vacant: Vec<usize>,
    /// The last run number handed out to any slot of this group.
    runs: u64,
    /// Live slot indexes per child node.
    node_slots: Vec<Vec<usize>>,
    deps: Vec<Vec<usize>>,
    /// For each node, the siblings that depend on it (they stop before it).
    dependents: Vec<Vec<usize>>,
    start_order: Vec<usize>,
    semaphore: Option<Arc<Semaphore>>,
    /// One shared spec per worker node, so a pool of 1000 replicas holds one copy.
    worker_specs: Vec<Option<Arc<WorkerSpec>>>,
    up: mpsc::UnboundedSender<Up>,
    intensity: Intensity,
    /// The operator request or reload being carried out; others wait in `queued`.
    op: Option<Operation>,
    queued: VecDeque<Down>,
    /// Strategy restarts whose stops are in flight: the slots to start again once the stops
    /// are done.
    restarts: Vec<ops::StrategyRestart>,
    /// The group's own stop, once it began.
    stop: Option<GroupStop>,
    announced_ready: bool,
}

impl GroupRun {
    async fn run(mut self) {
        if !self.delay.is_zero() && !self.wait_out_delay().await {
            return;
        }
        let (up, mut events) = mpsc::unbounded_channel();
        // The parent's start permit, held until this group is ready.
        let mut permit = self.permit.take();
        let mut group = Group::new(&self, up);
        if self.token.is_cancelled() {
            group.begin_stop(
                Deadline::fixed(Instant::now() + group.spec.shutdown_timeout),
                stop::Cause::Orphaned,
            );
        }
        group.start_pending();
        let mut down_open = true;
        loop {
            if group.stop.is_none() {
                if group.check_ready() {
                    permit.take();
                }
                if group.check_settled() {
                    return;
                }
            } else if group.finish_stop_if_done() {
                return;
            }
            let clock = stop::clock(&group.stop);
            // biased: a request from above is served before any child event, so nothing
            // restarts once the parent has asked this group to stop.
            tokio::select! {
                biased;
                cmd = self.down.recv(), if down_open => match cmd {
                    Some(cmd) => group.request(cmd),
                    None => {
                        // The parent forgot this group (it sent its stop first, if any).
                        down_open = false;
                        if group.stop.is_none() {
                            let d = Deadline::fixed(Instant::now() + group.spec.shutdown_timeout);
                            group.begin_stop(d, stop::Cause::Orphaned);
                        }
                    }
                },
                tick = clock => group.on_clock(tick),
                Some(event) = events.recv() => group.handle(event),
            }
        }
    }

    /// Waits out this group's restart delay; false when it was stopped meanwhile (and the
    /// stop has been answered).
    async fn wait_out_delay(&mut self) -> bool {
        let until = Instant::now() + self.delay;
        loop {
            // biased: a stop request wins over the end of the backoff.
            tokio::select! {
                biased;
                cmd = self.down.recv() => match cmd {
                    Some(Down::Reload { spec, key }) => {
                        self.spec = Arc::new(*spec);
                        self.key = key;
                        self.link.reloaded();
                    }
                    Some(Down::Control { reply, .. }) => {
                        let _ = reply.send(Err(format!(
                            "{} is waiting to restart", display_path(&self.path)
                        )));
                    }
                    Some(Down::Stop { .. }) => {
                        self.link.stopped(vec![super::not_running(&self.path, NodeType::Group)]);
                        return false;
                    }
                    None => return false,
                },
                _ = self.token.cancelled() => return true,
                _ = sleep_until(until) => return true,
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
            link: run.link.clone(),
            slots: Vec::new(),
            vacant: Vec::new(),
            runs: 0,
            node_slots: Vec::new(),
            deps: Vec::new(),
            dependents: Vec::new(),
            start_order: Vec::new(),
            semaphore: None,
            worker_specs: Vec::new(),
            up,
            intensity: Intensity::default(),
            op: None,
            queued: VecDeque::new(),
            restarts: Vec::new(),
            stop: None,
            announced_ready: false,
        };
        for node in 0..group.spec.children.len() {
            for replica in 0..group.replicas_of(node) {
                group.add_slot(node, replica);
            }
        }
        group.reindex();
        group
    }

    /// Serves a request from above. Operator requests and reloads run one at a time.
    fn request(&mut self, cmd: Down) {
        match cmd {
            Down::Stop { deadline } => self.begin_stop(deadline, stop::Cause::Asked),
            other if self.stop.is_some() => ops::refuse(other, &self.link, "it is stopping"),
            other if self.op.is_some() => self.queued.push_back(other),
            Down::Control { op, target, reply } => self.control(op, target, reply),
            Down::Reload { spec, key } => self.begin_reload(*spec, key),
        }
    }

    /// Starts the next queued request once the current operation is done.
    fn next_queued(&mut self) {
        while self.op.is_none() && self.stop.is_none() {
            match self.queued.pop_front() {
                Some(cmd) => self.request(cmd),
                None => return,
            }
        }
    }

    /// Announces readiness once every live child has been ready (or ended for good).
    /// Returns true the first time.
    fn check_ready(&mut self) -> bool {
        if self.announced_ready {
            return false;
        }
        let ready = self
            .slots
            .iter()
            .filter(|s| s.is_live())
            .all(|s| s.ever_ready || s.is_done());
        if ready {
            self.announced_ready = true;
            if !self.path.is_empty() {
                info!(path = %self.path, "group ready");
            }
            self.link.ready();
        }
        ready
    }

    /// A group whose children have all ended for good ends too. Returns true when it did.
    fn check_settled(&mut self) -> bool {
        let mut clean = true;
        for s in self.slots.iter().filter(|s| s.is_live()) {
            match s.state {
                SlotState::Done { clean: c } => clean &= c,
                _ => return false,
            }
        }
        if self.op.is_some() || !self.restarts.is_empty() {
            return false;
        }
        info!(path = %display_path(&self.path), "every child has ended for good");
        self.refuse_queued("it has ended");
        self.link.ended(Outcome {
            failed: !clean,
            settled: true,
            ..Outcome::default()
        });
        true
    }

    fn refuse_queued(&mut self, why: &str) {
        for cmd in std::mem::take(&mut self.queued) {
            ops::refuse(cmd, &self.link, why);
        }
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

    fn kind_of(&self, node: usize) -> NodeType {
        match self.spec.children[node].kind {
            NodeKind::Worker(_) => NodeType::Worker,
            NodeKind::Group(_) => NodeType::Group,
        }
    }

    fn has_probe(&self, node: usize) -> bool {
        match &self.spec.children[node].kind {
            NodeKind::Worker(w) => w.ready.is_some(),
            NodeKind::Group(_) => true,
        }
    }

    fn add_slot(&mut self, node: usize, replica: u32) -> usize {
        let slot = Slot::new(
            node,
            replica,
            self.slot_path(node, replica),
            self.has_probe(node),
        );
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

    /// Gives back what retired slots hold: the table ends at its last live slot, and the
    /// retired slots below it become vacancies for `add_slot`.
    fn release_removed(&mut self) {
        for s in &mut self.slots {
            if matches!(s.state, SlotState::Removed) {
                s.set(SlotState::Vacant);
            }
        }
        while self
            .slots
            .last()
            .is_some_and(|s| matches!(s.state, SlotState::Vacant))
        {
            self.slots.pop();
        }
        if self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to_fit();
        }
        // Lowest index on top, so that the table stays dense at its start.
        self.vacant = (0..self.slots.len())
            .rev()
            .filter(|&s| matches!(self.slots[s].state, SlotState::Vacant))
            .collect();
        for &s in &self.vacant {
            let slot = &mut self.slots[s];
            slot.path = String::new();
            slot.last_exit = None;
            slot.stop_report = None;
        }
    }

    /// Recomputes the per-node indexes after the spec or the slots changed.
    fn reindex(&mut self) {
        self.node_slots = vec![Vec::new(); self.spec.children.len()];
        for (i, s) in self.slots.iter().enumerate() {
            if s.is_live() {
                self.node_slots[s.node].push(i);
            }
        }
        self.deps = plan::dependency_indexes(&self.spec.children);
        self.dependents = vec![Vec::new(); self.spec.children.len()];
        for (node, deps) in self.deps.iter().enumerate() {
            for &d in deps {
                self.dependents[d].push(node);
            }
        }
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

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|&s| self.slots[s].is_live())
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
                state: s.status(),
                pid: s.pid,
                since: s.since,
                restarts: s.restarts,
                last_exit: s.last_exit.clone(),
                next_restart_at: s.next_start_at,
                stop_report: s.stop_report.clone(),
            },
        );
    }

    /// Starts every pending slot whose dependencies have been ready, in start order, as far
    /// as start permits allow.
    fn start_pending(&mut self) {
        if self.token.is_cancelled() || self.stop.is_some() {
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
                let SlotState::Pending { delay } = self.slots[slot].state else {
                    continue;
                };
                let permit = match &self.semaphore {
                    None => None,
                    Some(sem) => match Arc::clone(sem).try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => return,
                    },
                };
                self.launch(slot, delay, permit);
            }
        }
    }

    fn launch(&mut self, index: usize, delay: Duration, permit: Option<OwnedSemaphorePermit>) {
        let key = self.slot_key(index);
        self.runs += 1;
        let run = self.runs;
        let node = self.slots[index].node;
        let link = Link {
            slot: index,
            run,
            up: self.up.clone(),
        };
        let token = self.token.child_token();
        let ctx = Arc::clone(&self.ctx);
        let path = self.slots[index].path.clone();
        let downlink = match &self.spec.children[node].kind {
            NodeKind::Worker(_) => {
                let Some(spec) = self.worker_specs[node].clone() else {
                    return;
                };
                let (tx, rx) = oneshot::channel();
                let run = WorkerRun {
                    spec,
                    path,
                    replica: self.slots[index].replica,
                    delay,
                    token,
                    permit,
                    link,
                    stop: Some(rx),
                    ctx,
                    marker: String::new(),
                    owned: None,
                };
                self.ctx.tracker.spawn(run.run());
                Downlink::Worker(tx)
            }
            NodeKind::Group(g) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let run = GroupRun {
                    spec: Arc::new(g.clone()),
                    path,
                    key,
                    delay,
                    token,
                    permit,
                    link,
                    down: rx,
                    ctx,
                };
                self.ctx.tracker.spawn(run_group(run));
                Downlink::Group(tx)
            }
        };
        let is_group = self.kind_of(node) == NodeType::Group;
        self.slots[index].launched(run, downlink, delay, is_group);
        self.publish(index);
    }

    /// The slot a child's report is about, if the report is about its current run.
    fn current(&self, slot: usize, run: u64) -> Option<usize> {
        self.slots
            .get(slot)
            .filter(|s| s.run() == Some(run))
            .map(|_| slot)
    }

    /// A report from a child.
    fn handle(&mut self, event: Up) {
        match event {
            Up::Started { slot, run, pid } => {
                if let Some(s) = self.current(slot, run) {
                    self.slots[s].started(pid);
                    self.publish(s);
                }
            }
            Up::Ready { slot, run } => {
                if let Some(s) = self.current(slot, run) {
                    self.slots[s].ready();
                    self.publish(s);
                    self.start_pending();
                }
            }
            Up::Reloaded { slot, run } => {
                if self.current(slot, run).is_some() {
                    self.nested_reloaded(slot);
                }
            }
            Up::Stopped { slot, run, records } => {
                let Some(s) = self.current(slot, run) else {
                    return;
                };
                if self.slots[s].is_running() {
                    // It stopped before it was asked (its token was cancelled first): as if
                    // it had ended by itself.
                    let outcome = Outcome {
                        records,
                        ..Outcome::default()
                    };
                    return self.handle(Up::Ended { slot, run, outcome });
                }
                self.stop_finished(s, records);
            }
            Up::Ended { slot, run, outcome } => {
                let Some(s) = self.current(slot, run) else {
                    return; // a report from a run already stopped or replaced
                };
                if matches!(self.slots[s].state, SlotState::Stopping { .. }) {
                    // It ended by itself just as it was asked to stop: the stop is done.
                    self.slots[s].ended(outcome.exit.clone());
                    self.stop_finished(s, outcome.records);
                    return;
                }
                self.slots[s].ended(outcome.exit.clone());
                self.nested_reloaded(s);
                if self.token.is_cancelled() || self.stop.is_some() {
                    self.slots[s].set(SlotState::Stopped);
                    self.publish(s);
                    let kind = self.kind_of(self.slots[s].node);
                    if let Some(stop) = &mut self.stop {
                        stop.ended_meanwhile(&self.slots[s].path, kind, outcome.records);
                    }
                    return;
                }
                self.child_ended(s, outcome);
                self.start_pending();
            }
        }
    }
}
