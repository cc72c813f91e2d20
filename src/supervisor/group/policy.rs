//! The restart decision, as pure functions of what happened and when: the restart policy,
//! the restart intensity window, the backoff delay and the strategy's scope. No I/O, no
//! clock read: `now` and the random `unit` for jitter are arguments, so the whole decision is
//! unit-tested with tokio's paused clock.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Backoff, RestartPolicy, Strategy};
use crate::supervisor::backoff::BackoffState;
use crate::supervisor::Outcome;

/// The restarts a group made within its `restart_window` (OTP's restart intensity).
#[derive(Debug, Default)]
pub(crate) struct Intensity {
    recent: VecDeque<Instant>,
}

impl Intensity {
    /// Counts a restart at `now`; true when more than `max` fall within `window`.
    pub fn exceeded_after_restart(&mut self, now: Instant, max: u32, window: Duration) -> bool {
        self.recent.push_back(now);
        while let Some(&t) = self.recent.front() {
            if now.duration_since(t) > window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.len() as u32 > max
    }
}

/// The group's limits that the decision needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_restarts: u32,
    pub restart_window: Duration,
}

/// What to do with a child whose run ended by itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Decision {
    /// Not restarted (`restart` policy, or a group that settled): it ended for good.
    Done { clean: bool },
    /// The process never started: retried alone after `delay`, never escalated.
    Retry { delay: Duration },
    /// Restarted after `delay`, with the siblings its group's strategy names.
    Restart { delay: Duration },
    /// Restart intensity exceeded: the group fails.
    Fail,
}

/// Whether the policy restarts a run that ended with `outcome`.
pub(crate) fn wants_restart(policy: RestartPolicy, outcome: &Outcome) -> bool {
    !outcome.settled
        && match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => outcome.failed,
            RestartPolicy::Never => false,
        }
}

/// Decides what follows a run that ended by itself. Updates the child's backoff and the
/// group's intensity window as a side effect on the values passed in (nothing else).
#[allow(clippy::too_many_arguments)] // each argument is one independent input of the rule
pub(crate) fn decide(
    policy: RestartPolicy,
    outcome: &Outcome,
    backoff: &mut BackoffState,
    backoff_cfg: &Backoff,
    intensity: &mut Intensity,
    limits: Limits,
    now: Instant,
    unit: f64,
) -> Decision {
    if !wants_restart(policy, outcome) {
        return Decision::Done {
            clean: !outcome.failed,
        };
    }
    let delay = backoff.next_delay(backoff_cfg, outcome.ran_for, unit);
    if outcome.spawn_error {
        return Decision::Retry { delay };
    }
    if intensity.exceeded_after_restart(now, limits.max_restarts, limits.restart_window) {
        return Decision::Fail;
    }
    Decision::Restart { delay }
}

/// The siblings that restart with a failed child: none for `one_for_one`, every other one
/// for `one_for_all`, the ones later in start order for `rest_for_one`. `siblings` are
/// (slot, node) pairs of the candidates (running, not the failed slot itself).
pub(crate) fn strategy_scope(
    strategy: Strategy,
    failed_node: usize,
    start_order: &[usize],
    siblings: impl Iterator<Item = (usize, usize)>,
) -> Vec<usize> {
    match strategy {
        Strategy::OneForOne => vec![],
        Strategy::OneForAll => siblings.map(|(slot, _)| slot).collect(),
        Strategy::RestForOne => {
            let rank = |n: usize| start_order.iter().position(|&o| o == n);
            let mine = rank(failed_node);
            siblings
                .filter(|&(_, node)| rank(node) > mine)
                .map(|(slot, _)| slot)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            factor: 2.0,
            jitter: 0.0,
        }
    }

    fn failure(ran_for: Duration) -> Outcome {
        Outcome {
            failed: true,
            ran_for,
            ..Outcome::default()
        }
    }

    const LIMITS: Limits = Limits {
        max_restarts: 3,
        restart_window: Duration::from_secs(10),
    };

    #[tokio::test(start_paused = true)]
    async fn intensity_fails_the_group_only_for_restarts_inside_the_window() {
        let mut intensity = Intensity::default();
        let mut backoff = BackoffState::default();
        let mut decisions = Vec::new();
        for _ in 0..4 {
            decisions.push(decide(
                RestartPolicy::Always,
                &failure(Duration::ZERO),
                &mut backoff,
                &cfg(),
                &mut intensity,
                LIMITS,
                Instant::now(),
                0.5,
            ));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(matches!(decisions[2], Decision::Restart { .. }));
        assert_eq!(decisions[3], Decision::Fail);

        // Spread out beyond the window, the same number of restarts never fails.
        let mut intensity = Intensity::default();
        for _ in 0..10 {
            let d = decide(
                RestartPolicy::Always,
                &failure(Duration::ZERO),
                &mut BackoffState::default(),
                &cfg(),
                &mut intensity,
                LIMITS,
                Instant::now(),
                0.5,
            );
            assert!(matches!(d, Decision::Restart { .. }), "{d:?}");
            tokio::time::advance(Duration::from_secs(4)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_between_restarts_and_spawn_errors_never_escalate() {
        let mut intensity = Intensity::default();
        let mut backoff = BackoffState::default();
        let spawn_error = Outcome {
            failed: true,
            spawn_error: true,
            ..Outcome::default()
        };
        let delays: Vec<Decision> = (0..6)
            .map(|_| {
                decide(
                    RestartPolicy::OnFailure,
                    &spawn_error,
                    &mut backoff,
                    &cfg(),
                    &mut intensity,
                    LIMITS,
                    Instant::now(),
                    0.5,
                )
            })
            .collect();
        assert_eq!(
            delays.last(),
            Some(&Decision::Retry {
                delay: Duration::from_millis(3200)
            })
        );
        assert!(delays.iter().all(|d| matches!(d, Decision::Retry { .. })));
    }

    #[test]
    fn policies_decide_which_ends_restart() {
        let clean = Outcome::default();
        let failed = failure(Duration::ZERO);
        let settled = Outcome {
            settled: true,
            failed: true,
            ..Outcome::default()
        };
        assert!(wants_restart(RestartPolicy::Always, &clean));
        assert!(!wants_restart(RestartPolicy::OnFailure, &clean));
        assert!(wants_restart(RestartPolicy::OnFailure, &failed));
        assert!(!wants_restart(RestartPolicy::Never, &failed));
        assert!(!wants_restart(RestartPolicy::Always, &settled));
        let mut i = Intensity::default();
        let d = decide(
            RestartPolicy::Never,
            &failed,
            &mut BackoffState::default(),
            &cfg(),
            &mut i,
            LIMITS,
            Instant::now(),
            0.5,
        );
        assert_eq!(d, Decision::Done { clean: false });
    }

    #[test]
    fn strategy_scope_follows_the_start_order() {
        // Start order 2, 0, 1: node 0 failed; siblings are slots 10 (node 1), 11 (node 2).
        let order = [2, 0, 1];
        let siblings = || [(10, 1), (11, 2)].into_iter();
        assert!(strategy_scope(Strategy::OneForOne, 0, &order, siblings()).is_empty());
        assert_eq!(
            strategy_scope(Strategy::OneForAll, 0, &order, siblings()),
            vec![10, 11]
        );
        assert_eq!(
            strategy_scope(Strategy::RestForOne, 0, &order, siblings()),
            vec![10]
        );
    }
}
