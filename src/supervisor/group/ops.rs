//! What a group does between its start and its stop: an operator's start/stop/restart of a
//! child, and the restart of a child that ended by itself (policy, intensity, strategy).
//! Both are in-flight state: the stops they begin are answered by later reports
//! (`control_progress`, `strategy_progress`), never awaited.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::policy::{self, Decision, Limits};
use super::reload::ReloadOp;
use super::slots::{AfterStop, Asker, SlotState};
use super::stop::Cause;
use super::Group;
use crate::config::{display_path, join_path, Backoff, NodeKind, RestartPolicy, Strategy};
use crate::report::{NodeType, StopRecord};
use crate::supervisor::backoff::BackoffState;
use crate::supervisor::worker::secs;
use crate::supervisor::{
    ControlDone, ControlResult, Deadline, DeadlineHandle, Down, Link, Op, Outcome, TreeEvent,
};

/// The one operator request or reload a group carries out at a time.
pub(super) enum Operation {
    Control(ControlOp),
    Reload(Box<ReloadOp>),
}

pub(super) struct ControlOp {
    op: Op,
    /// The target's path, for messages.
    here: String,
    matched: Vec<usize>,
    pub reply: oneshot::Sender<ControlResult>,
    pub records: Vec<StopRecord>,
}

/// A strategy restart whose stops are in flight: `slots` start again (the failed one after
/// its backoff) once none of them is stopping any more.
pub(super) struct StrategyRestart {
    failed: usize,
    slots: Vec<usize>,
}

/// Answers a request that cannot be carried out now.
pub(super) fn refuse(cmd: Down, link: &Link, why: &str) {
    match cmd {
        Down::Control { reply, .. } => {
            let _ = reply.send(Err(why.to_string()));
        }
        // Nothing to apply: the parent's reload must not wait for this group.
        Down::Reload { .. } => link.reloaded(),
        Down::Stop { .. } => {}
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

impl Group {
    /// An operator's start/stop/restart of the child named by `target[0]` (a node name: all
    /// its replicas; or a replica `name#i`), or a request to pass further down.
    pub(super) fn control(
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
            self.forward(matched[0], &here, op, rest.to_vec(), reply);
            return;
        }
        if matches!(op, Op::Stop | Op::Restart) {
            info!(path = %here, "{} requested by an operator", if op == Op::Stop { "stop" } else { "restart" });
            let at = Instant::now() + self.spec.shutdown_timeout;
            for &s in &matched {
                self.stop_slot(s, at, Asker::Operator, AfterStop::Hold);
            }
        }
        self.op = Some(Operation::Control(ControlOp {
            op,
            here,
            matched,
            reply,
            records: Vec::new(),
        }));
        self.control_progress();
    }

    /// Passes a request on to the child group in slot `s`.
    fn forward(
        &self,
        s: usize,
        here: &str,
        op: Op,
        target: Vec<String>,
        reply: oneshot::Sender<ControlResult>,
    ) {
        if self.kind_of(self.slots[s].node) != NodeType::Group {
            let _ = reply.send(Err(format!("{here} is not a group")));
            return;
        }
        match &self.slots[s].state {
            SlotState::Running { link, .. } => {
                if let Some(tx) = link.group() {
                    if let Err(e) = tx.send(Down::Control { op, target, reply }) {
                        refuse(e.0, &self.link, &format!("{here} is not running"));
                    }
                    return;
                }
                let _ = reply.send(Err(format!("{here} is not running")));
            }
            _ => {
                let _ = reply.send(Err(format!("{here} is not running")));
            }
        }
    }

    /// Stops slot `s` for `asker` by `at`, whatever it is doing: a running child is asked,
    /// a stop in flight is taken over (and tightened), a child not running moves on at once.
    pub(super) fn stop_slot(&mut self, s: usize, at: Instant, asker: Asker, then: AfterStop) {
        match self.slots[s].state {
            SlotState::Running { .. } => {
                let (handle, deadline) = DeadlineHandle::new(at);
                let link = self.slots[s].begin_stop(handle, asker, then);
                self.publish(s);
                if let Some(link) = link {
                    if !link.stop(deadline) {
                        self.stop_finished(s, vec![]);
                    }
                }
            }
            SlotState::Stopping { .. } => self.slots[s].take_over_stop(at, asker, then),
            SlotState::Pending { .. } | SlotState::Parked { .. } => {
                let next = match then {
                    AfterStop::Hold => SlotState::Held,
                    AfterStop::Park => return,
                    AfterStop::Remove => SlotState::Removed,
                    AfterStop::Finish => SlotState::Stopped,
                };
                self.slots[s].set(next);
                self.publish(s);
            }
            SlotState::Held | SlotState::Done { .. } | SlotState::Stopped => {
                if then == AfterStop::Remove {
                    self.slots[s].set(SlotState::Removed);
                }
            }
            SlotState::Removed | SlotState::Vacant => {}
        }
    }

    /// Finishes the operator's request once none of its stops is in flight.
    pub(super) fn control_progress(&mut self) {
        let Some(Operation::Control(c)) = &self.op else {
            return;
        };
        let stopping = c.matched.iter().any(|&s| {
            matches!(
                self.slots[s].state,
                SlotState::Stopping {
                    asker: Asker::Operator,
                    ..
                }
            )
        });
        if stopping {
            return;
        }
        let Some(Operation::Control(c)) = self.op.take() else {
            return;
        };
        let here = c.here;
        let message = if c.op == Op::Stop {
            format!("stopped {here}")
        } else {
            let mut started = 0;
            for &s in &c.matched {
                if matches!(
                    self.slots[s].state,
                    SlotState::Held | SlotState::Done { .. }
                ) {
                    self.slots[s].backoff = BackoffState::default();
                    self.slots[s].make_pending(Duration::ZERO);
                    self.publish(s);
                    started += 1;
                }
            }
            self.start_pending();
            if c.op == Op::Start && started == 0 {
                format!("{here} is already running")
            } else if c.op == Op::Start {
                format!("starting {here}")
            } else {
                format!("restarted {here}")
            }
        };
        let _ = c.reply.send(Ok(ControlDone {
            message,
            records: c.records,
        }));
        self.next_queued();
    }

    /// A child's run ended by itself (the group is not stopping): restart it, with its
    /// siblings as the strategy says, or let it rest, or fail the group.
    pub(super) fn child_ended(&mut self, s: usize, outcome: Outcome) {
        let node = self.slots[s].node;
        let (policy, backoff, critical) = match &self.spec.children[node].kind {
            NodeKind::Worker(w) => (w.restart, w.backoff, w.critical),
            NodeKind::Group(_) => (RestartPolicy::OnFailure, Backoff::default(), false),
        };
        let limits = Limits {
            max_restarts: self.spec.max_restarts,
            restart_window: self.spec.restart_window,
        };
        let decision = policy::decide(
            policy,
            &outcome,
            &mut self.slots[s].backoff,
            &backoff,
            &mut self.intensity,
            limits,
            Instant::now(),
            fastrand::f64(),
        );
        let path = self.slots[s].path.clone();
        match decision {
            Decision::Done { clean } => {
                self.slots[s].set(SlotState::Done { clean });
                self.publish(s);
                info!(path = %path, "not restarted (restart: {})", policy_name(policy));
                if critical {
                    let _ = self.ctx.tree.send(TreeEvent::CriticalEnded {
                        path,
                        success: clean,
                    });
                }
            }
            Decision::Retry { delay } => {
                // Not a restart of a running service: retried alone, never escalated.
                self.slots[s].restarts += 1;
                warn!(path = %path, "retrying in {}", secs(delay));
                self.launch(s, delay, None);
            }
            Decision::Fail => {
                self.slots[s].restarts += 1;
                error!(
                    path = %display_path(&self.path),
                    "restart intensity exceeded: more than {} restarts within {}; the group fails",
                    self.spec.max_restarts,
                    humantime::format_duration(self.spec.restart_window)
                );
                self.slots[s].set(SlotState::Done { clean: false });
                self.publish(s);
                let d = Deadline::fixed(Instant::now() + self.spec.shutdown_timeout);
                self.begin_stop(d, Cause::Failed);
            }
            Decision::Restart { delay } => {
                self.slots[s].restarts += 1;
                warn!(path = %path, "restarting in {}", secs(delay));
                self.restart_with_strategy(s, delay);
            }
        }
    }

    fn restart_with_strategy(&mut self, failed: usize, delay: Duration) {
        if self.spec.strategy == Strategy::OneForOne {
            self.launch(failed, delay, None);
            return;
        }
        let node = self.slots[failed].node;
        let candidates: Vec<(usize, usize)> = self
            .live()
            .filter(|&s| {
                s != failed
                    && matches!(
                        self.slots[s].state,
                        SlotState::Running { .. } | SlotState::Pending { .. }
                    )
            })
            .map(|s| (s, self.slots[s].node))
            .collect();
        let scope = policy::strategy_scope(
            self.spec.strategy,
            node,
            &self.start_order,
            candidates.into_iter(),
        );
        if !scope.is_empty() {
            let names: Vec<&str> = scope.iter().map(|&s| self.slots[s].path.as_str()).collect();
            info!(
                path = %self.slots[failed].path,
                "{}: restarting {} with it", strategy_name(self.spec.strategy), names.join(", ")
            );
        }
        let at = Instant::now() + self.spec.shutdown_timeout;
        for &s in &scope {
            self.slots[s].ever_ready = false;
            match self.slots[s].state {
                SlotState::Pending { .. } => self.slots[s].set(SlotState::Parked {
                    delay: Duration::ZERO,
                }),
                _ => self.stop_slot(s, at, Asker::Strategy, AfterStop::Park),
            }
            self.publish(s);
        }
        self.slots[failed].ever_ready = false;
        self.slots[failed].set(SlotState::Parked { delay });
        self.publish(failed);
        let mut slots = scope;
        slots.push(failed);
        self.restarts.push(StrategyRestart { failed, slots });
        self.strategy_progress();
    }

    /// Starts again the slots of every strategy restart whose stops are all done.
    pub(super) fn strategy_progress(&mut self) {
        let mut i = 0;
        while i < self.restarts.len() {
            // A reload may have cut the table since: indexes past its end are gone.
            let busy = self.restarts[i].slots.iter().any(|&s| {
                matches!(
                    self.slots.get(s).map(|slot| &slot.state),
                    Some(SlotState::Stopping {
                        asker: Asker::Strategy,
                        ..
                    })
                )
            });
            if busy {
                i += 1;
                continue;
            }
            let r = self.restarts.swap_remove(i);
            for &s in &r.slots {
                let Some(SlotState::Parked { delay }) = self.slots.get(s).map(|slot| &slot.state)
                else {
                    continue; // taken over meanwhile (an operator, a reload)
                };
                let delay = *delay;
                let never = matches!(
                    &self.spec.children[self.slots[s].node].kind,
                    NodeKind::Worker(w) if w.restart == RestartPolicy::Never
                );
                if never && s != r.failed {
                    self.slots[s].set(SlotState::Done { clean: true });
                } else {
                    if s != r.failed {
                        self.slots[s].restarts += 1;
                    }
                    self.slots[s].make_pending(delay);
                }
                self.publish(s);
            }
        }
        self.start_pending();
    }
}
