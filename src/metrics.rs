//! Process-wide counters for `/metrics` that the status board does not hold: how many
//! processes were SIGKILLed because they missed a deadline, and how long the most recent stop
//! took. They are plain atomics, so recording costs nothing measurable and needs no task; they
//! exist (and are updated) whether or not `health_addr` is set. This module only counts: it
//! never stops, signals or waits for anything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::report::{millis, NodeType, StopOutcome, StopRecord};

/// Processes SIGKILLed at a deadline, over every stop recorded so far.
static DEADLINE_KILLS: AtomicU64 = AtomicU64::new(0);

/// Processes the kernel's OOM killer killed in worker runs' cgroups (cgroup mode with the
/// memory controller: `memory.events` `oom_kill`), over every run ended so far.
static OOM_KILLS: AtomicU64 = AtomicU64::new(0);

/// Counts the OOM kills of a run that ended.
pub fn oom_killed(n: u64) {
    OOM_KILLS.fetch_add(n, Ordering::Relaxed);
}

pub fn oom_kills() -> u64 {
    OOM_KILLS.load(Ordering::Relaxed)
}

/// Duration of the most recent stop that stopped something, in milliseconds; `NONE` before.
static LAST_STOP_MS: AtomicU64 = AtomicU64::new(NONE);
const NONE: u64 = u64::MAX;

/// Records a finished stop operation: an operator's `stop`/`restart` (its stop part), or the
/// final shutdown. `took` is the operation's wall time. A stop whose records are all
/// `not_running` (nothing was up) leaves the last duration as it was, but there is nothing in
/// it to count either.
pub fn stop_finished(records: &[StopRecord], took: Duration) {
    let kills = killed_processes(records);
    if kills > 0 {
        DEADLINE_KILLS.fetch_add(kills, Ordering::Relaxed);
    }
    if records.iter().any(|r| r.outcome != StopOutcome::NotRunning) {
        LAST_STOP_MS.store(millis(took).min(NONE - 1), Ordering::Relaxed);
    }
}

/// The wall time of a stop known only by its records: the longest of them. The records of a
/// stop run concurrently within a wave, and a group's own record spans all of its waves, so
/// the longest record is the whole operation.
pub fn longest(records: &[StopRecord]) -> Duration {
    Duration::from_millis(records.iter().map(|r| r.took_ms).max().unwrap_or(0))
}

/// Processes killed at a deadline: workers and adopted strays. A group's record says
/// "something under me was killed", which its workers' records already count.
fn killed_processes(records: &[StopRecord]) -> u64 {
    records
        .iter()
        .filter(|r| r.kind != NodeType::Group && r.outcome == StopOutcome::Killed)
        .count() as u64
}

pub fn deadline_kills() -> u64 {
    DEADLINE_KILLS.load(Ordering::Relaxed)
}

/// The duration of the most recent stop that stopped something; None before the first.
pub fn last_stop_duration() -> Option<Duration> {
    match LAST_STOP_MS.load(Ordering::Relaxed) {
        NONE => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: NodeType, outcome: StopOutcome, took_ms: u64) -> StopRecord {
        StopRecord {
            path: "p".into(),
            kind,
            pid: None,
            signal: None,
            deadline_ms: 1000,
            took_ms,
            outcome,
            exit: None,
            adopted: Vec::new(),
        }
    }

    // One test, because the counters are process-wide and tests run in parallel threads.
    #[test]
    fn stops_count_killed_processes_not_groups_and_keep_the_last_duration() {
        let before = deadline_kills();
        let records = [
            record(NodeType::Group, StopOutcome::Killed, 2000),
            record(NodeType::Worker, StopOutcome::Killed, 2000),
            record(NodeType::Worker, StopOutcome::Met, 10),
            record(NodeType::Adopted, StopOutcome::Killed, 1500),
        ];
        assert_eq!(longest(&records), Duration::from_secs(2));
        stop_finished(&records, Duration::from_millis(2100));
        assert_eq!(deadline_kills() - before, 2);
        assert_eq!(last_stop_duration(), Some(Duration::from_millis(2100)));

        // Nothing was running: the last duration stays.
        stop_finished(
            &[record(NodeType::Worker, StopOutcome::NotRunning, 0)],
            Duration::ZERO,
        );
        assert_eq!(last_stop_duration(), Some(Duration::from_millis(2100)));
        assert_eq!(longest(&[]), Duration::ZERO);
    }
}
