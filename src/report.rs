//! The shutdown report: per node, how long it took to stop and whether it met its deadline or
//! had to be killed. Produced by the runtime as data, rendered here as log lines or JSON.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// Everything of it was gone within its deadline.
    Met,
    /// Something was still alive at the deadline and was SIGKILLed.
    Killed,
    /// Nothing was running when the stop came (in backoff, never started, already ended).
    NotRunning,
}

impl StopOutcome {
    /// `Killed` when something had to be SIGKILLed at the deadline, else `Met`.
    pub fn of(killed: bool) -> StopOutcome {
        if killed {
            StopOutcome::Killed
        } else {
            StopOutcome::Met
        }
    }
}

/// What a node of the report or the status board is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeType {
    Worker,
    Group,
    /// A process that left its worker's process group and was adopted by arborist.
    Adopted,
}

impl NodeType {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::Worker => "worker",
            NodeType::Group => "group",
            NodeType::Adopted => "adopted",
        }
    }
}

impl std::fmt::Display for NodeType {
    /// Honours width and alignment (`{:<6}`), as `status`'s columns need.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One node's stop, in the shutdown report, a `stop`/`restart` reply and `status`'s
/// `stop_report` alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRecord {
    pub path: String,
    pub kind: NodeType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The deadline this node had, from the moment it began to stop.
    pub deadline_ms: u64,
    pub took_ms: u64,
    pub outcome: StopOutcome,
    /// How the main process ended, e.g. "exit status 0" or "signal SIGTERM".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<String>,
    /// Processes of this worker's run that had left its process group (a daemon that called
    /// `setsid`) and were adopted by arborist; stopped with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopted: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShutdownReport {
    pub reason: String,
    pub total_ms: u64,
    pub deadline_ms: u64,
    pub workers: usize,
    pub met: usize,
    pub killed: usize,
    pub not_running: usize,
    /// arborist's own log lines dropped so far because its stderr was blocked or too slow
    /// (`logs`); the count cannot always get out on stderr itself.
    pub log_lines_dropped: u64,
    /// Process groups SIGKILLed at a deadline since arborist started, by any path: this
    /// shutdown, an operator's stop, a strategy restart, a watchdog. Any makes `run` exit 3.
    pub sigkills_since_start: u64,
    pub nodes: Vec<StopRecord>,
}

pub fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl ShutdownReport {
    pub fn new(
        reason: String,
        total: Duration,
        deadline: Duration,
        nodes: Vec<StopRecord>,
        sigkills_since_start: u64,
    ) -> Self {
        let workers: Vec<&StopRecord> = nodes
            .iter()
            .filter(|n| n.kind == NodeType::Worker)
            .collect();
        let count = |o: StopOutcome| workers.iter().filter(|n| n.outcome == o).count();
        ShutdownReport {
            reason,
            total_ms: millis(total),
            deadline_ms: millis(deadline),
            workers: workers.len(),
            met: count(StopOutcome::Met),
            killed: count(StopOutcome::Killed),
            not_running: count(StopOutcome::NotRunning),
            // Read here rather than passed in: a process-wide counter, like the metrics.
            log_lines_dropped: crate::logs::lines_dropped(),
            sigkills_since_start,
            nodes,
        }
    }

    pub fn any_killed(&self) -> bool {
        self.nodes.iter().any(|n| n.outcome == StopOutcome::Killed)
    }

    /// Logs one line per node, then the totals.
    pub fn log(&self) {
        for n in &self.nodes {
            let took = fmt_ms(n.took_ms);
            let deadline = fmt_ms(n.deadline_ms);
            match n.outcome {
                StopOutcome::Met => tracing::info!(
                    path = %n.path, kind = n.kind.as_str(), took_ms = n.took_ms, deadline_ms = n.deadline_ms,
                    "stopped in {took} (deadline {deadline}){}",
                    n.exit.as_deref().map(|e| format!(", {e}")).unwrap_or_default()
                ),
                StopOutcome::Killed => tracing::warn!(
                    path = %n.path, kind = n.kind.as_str(), took_ms = n.took_ms, deadline_ms = n.deadline_ms,
                    "KILLED: still running at its {deadline} deadline (stopped after {took})"
                ),
                StopOutcome::NotRunning => tracing::info!(
                    path = %n.path, kind = n.kind.as_str(), "was not running"
                ),
            }
        }
        tracing::info!(
            total_ms = self.total_ms, workers = self.workers, met = self.met,
            killed = self.killed, not_running = self.not_running,
            "shutdown complete in {} (root deadline {}): {} workers, {} met their deadline, {} killed, {} not running",
            fmt_ms(self.total_ms), fmt_ms(self.deadline_ms), self.workers, self.met,
            self.killed, self.not_running
        );
        let before = self.sigkills_since_start.saturating_sub(self.killed as u64);
        if before > 0 {
            tracing::warn!(
                sigkills_since_start = self.sigkills_since_start,
                "{before} process group(s) were SIGKILLed at a deadline before this shutdown (operator stops, restarts, watchdogs)"
            );
        }
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }
}

fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.2}s", ms as f64 / 1000.0)
    }
}
