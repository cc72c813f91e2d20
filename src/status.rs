//! The status board: an actor task that holds the latest state of every node, written by the
//! groups that own the nodes (fire-and-forget messages) and read by `status`, SIGUSR1 and the
//! control socket. Readers never wait for a busy group: a group in the middle of a long stop
//! still has its nodes shown, as `stopping`.
//!
//! It also defines what the board and the daemon report, as enums both the supervisor and the
//! control layer use: [`NodeState`] and [`DaemonState`]. Their serde names are the words of
//! the control protocol (docs/control.md).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::report::{millis, NodeType, StopOutcome, StopRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Waiting for its dependencies or a start permit.
    Waiting,
    /// Spawned, readiness probe not passed yet (a group: not all children ready).
    Starting,
    /// Up, and has no readiness probe.
    Running,
    /// Up and its probe passed (a group: all children ready).
    Ready,
    /// Waiting out the restart delay.
    Backoff,
    Stopping,
    /// Stopped by an operator or at shutdown, or ended for good with exit 0.
    Stopped,
    /// Ended for good with a failure, or (a group) restart intensity exceeded.
    Failed,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Waiting => "waiting",
            NodeState::Starting => "starting",
            NodeState::Running => "running",
            NodeState::Ready => "ready",
            NodeState::Backoff => "backoff",
            NodeState::Stopping => "stopping",
            NodeState::Stopped => "stopped",
            NodeState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for NodeState {
    /// Honours width and alignment (`{:<8}`), as `status`'s columns need.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What the daemon as a whole is doing: `status`'s `daemon.state`, and what `/healthz` and
/// sd_notify decide on. The tree controller is its only writer (through a `watch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonState {
    /// Until the root group is first ready.
    Starting,
    Running,
    /// A reload was handed to the root group and is not applied yet.
    Reloading,
    /// The shutdown has begun.
    Stopping,
}

impl DaemonState {
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Starting => "starting",
            DaemonState::Running => "running",
            DaemonState::Reloading => "reloading",
            DaemonState::Stopping => "stopping",
        }
    }
}

impl std::fmt::Display for DaemonState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a group publishes about one of its nodes.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub kind: NodeType,
    pub state: NodeState,
    pub pid: Option<u32>,
    pub since: Option<Instant>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub next_restart_at: Option<Instant>,
    pub stop_report: Option<StopRecord>,
}

/// One node as `status --json` shows it (schema in docs/control.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub path: String,
    pub kind: NodeType,
    pub state: NodeState,
    /// Nesting level, 0 for the root.
    pub depth: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    pub restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_restart_in_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_report: Option<StopRecord>,
    /// The worker's last sd_notify `STATUS=` text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_status: Option<String>,
    /// Processes of this worker that left its process group (`setsid`) and were adopted by
    /// arborist; they are stopped with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopted: Vec<u32>,
}

/// Position of a node in the tree: (child index in the spec, replica) for every level from
/// the root. Sorting by it gives tree order, YAML order among siblings.
pub type OrderKey = Vec<u32>;

enum Msg {
    Put(OrderKey, Box<Entry>),
    /// Removes a key and everything under it (a removed group).
    RemoveTree(OrderKey),
    Snapshot(oneshot::Sender<Vec<NodeStatus>>),
}

#[derive(Clone, Debug)]
pub struct StatusBoard {
    tx: mpsc::UnboundedSender<Msg>,
}

impl StatusBoard {
    /// Starts the board's task.
    pub fn start() -> StatusBoard {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut nodes: BTreeMap<OrderKey, Entry> = BTreeMap::new();
            let mut counts = WorkerCounts::default();
            loop {
                let msg = tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(msg) => msg,
                        None => return,
                    },
                    _ = counts.due() => {
                        counts.announce();
                        continue;
                    }
                };
                match msg {
                    Msg::Put(k, e) => {
                        counts.add(&e, 1);
                        if let Some(old) = nodes.insert(k, *e) {
                            counts.add(&old, -1);
                        }
                    }
                    Msg::RemoveTree(k) => nodes.retain(|key, e| {
                        let keep = !key.starts_with(&k);
                        if !keep {
                            counts.add(e, -1);
                        }
                        keep
                    }),
                    Msg::Snapshot(reply) => {
                        let now = Instant::now();
                        let out = nodes.iter().map(|(k, e)| render(k, e, now)).collect();
                        let _ = reply.send(out);
                    }
                }
                counts.changed();
            }
        });
        StatusBoard { tx }
    }

    pub fn put(&self, key: OrderKey, entry: Entry) {
        let _ = self.tx.send(Msg::Put(key, Box::new(entry)));
    }

    pub fn remove_tree(&self, key: OrderKey) {
        let _ = self.tx.send(Msg::RemoveTree(key));
    }

    pub async fn snapshot(&self) -> Vec<NodeStatus> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Msg::Snapshot(tx));
        rx.await.unwrap_or_default()
    }
}

/// Workers up (running or ready) out of all workers, for the service manager's `STATUS=`.
/// Sent at most once a second, and only when the figures changed and a manager listens, so
/// an idle tree causes no wake-ups.
#[derive(Default)]
struct WorkerCounts {
    up: i64,
    total: i64,
    sent: Option<(i64, i64)>,
    last_send: Option<Instant>,
    due_at: Option<Instant>,
}

impl WorkerCounts {
    const EVERY: Duration = Duration::from_secs(1);

    fn add(&mut self, e: &Entry, sign: i64) {
        if e.kind == NodeType::Worker {
            self.total += sign;
            if matches!(e.state, NodeState::Running | NodeState::Ready) {
                self.up += sign;
            }
        }
    }

    fn changed(&mut self) {
        if self.due_at.is_some()
            || self.sent == Some((self.up, self.total))
            || !crate::notify::systemd::enabled()
        {
            return;
        }
        let earliest = self
            .last_send
            .map_or_else(Instant::now, |t| t + Self::EVERY);
        self.due_at = Some(earliest);
    }

    async fn due(&self) {
        match self.due_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    fn announce(&mut self) {
        self.due_at = None;
        self.last_send = Some(Instant::now());
        self.sent = Some((self.up, self.total));
        crate::notify::systemd::status(&format!("{}/{} workers up", self.up, self.total));
    }
}

fn render(key: &OrderKey, e: &Entry, now: Instant) -> NodeStatus {
    let up = matches!(
        e.state,
        NodeState::Running | NodeState::Ready | NodeState::Starting | NodeState::Stopping
    );
    NodeStatus {
        path: crate::config::display_path(&e.path).to_string(),
        kind: e.kind,
        state: e.state,
        depth: key.len() / 2,
        pid: e.pid.filter(|_| up),
        uptime_ms: e
            .since
            .filter(|_| up)
            .map(|s| millis(now.saturating_duration_since(s))),
        restarts: e.restarts,
        last_exit: e.last_exit.clone(),
        next_restart_in_ms: e
            .next_restart_at
            .filter(|_| e.state == NodeState::Backoff)
            .map(|t| millis(t.saturating_duration_since(now))),
        stop_report: e.stop_report.clone(),
        notify_status: e
            .pid
            .filter(|_| up && e.kind == NodeType::Worker)
            .and_then(|pid| crate::notify::workers::status_of(pid as i32)),
        adopted: Vec::new(),
    }
}

/// The tree as text, like `systemctl status` / `pstree`.
pub fn render_text(nodes: &[NodeStatus]) -> String {
    let mut out = String::new();
    let width = nodes
        .iter()
        .map(|n| n.depth * 3 + last_segment(&n.path).chars().count())
        .max()
        .unwrap_or(10)
        .max(10);
    for (i, n) in nodes.iter().enumerate() {
        let name = if n.depth == 0 {
            n.path.clone()
        } else {
            last_segment(&n.path).to_string()
        };
        let mut prefix = String::new();
        for level in 1..n.depth {
            // A vertical bar when an ancestor at this level has later siblings.
            let more = nodes[i + 1..]
                .iter()
                .take_while(|m| m.depth >= level)
                .any(|m| m.depth == level);
            prefix.push_str(if more { "│  " } else { "   " });
        }
        if n.depth > 0 {
            let last = !nodes[i + 1..]
                .iter()
                .take_while(|m| m.depth >= n.depth)
                .any(|m| m.depth == n.depth);
            prefix.push_str(if last { "└─ " } else { "├─ " });
        }
        let label = format!("{prefix}{name}");
        let pad =
            width.saturating_sub(label.chars().count() - prefix.chars().count() + n.depth * 3);
        let mut line = format!("{label}{}  {:<6} {:<8}", " ".repeat(pad), n.kind, n.state);
        if let Some(pid) = n.pid {
            line.push_str(&format!("  pid {pid}"));
        }
        if let Some(up) = n.uptime_ms {
            line.push_str(&format!("  up {}", short(Duration::from_millis(up))));
        }
        if n.kind == NodeType::Worker || n.restarts > 0 {
            line.push_str(&format!("  restarts {}", n.restarts));
        }
        if let Some(next) = n.next_restart_in_ms {
            line.push_str(&format!(
                "  next start in {}",
                short(Duration::from_millis(next))
            ));
        }
        if let Some(text) = &n.notify_status {
            line.push_str(&format!("  \"{text}\""));
        }
        if !n.adopted.is_empty() {
            let pids: Vec<String> = n.adopted.iter().map(u32::to_string).collect();
            line.push_str(&format!("  adopted: {}", pids.join(" ")));
        }
        if let Some(exit) = &n.last_exit {
            line.push_str(&format!("  last exit: {exit}"));
        }
        if let Some(r) = &n.stop_report {
            let verdict = match r.outcome {
                StopOutcome::Met => "deadline met",
                StopOutcome::Killed => "KILLED at its deadline",
                StopOutcome::NotRunning => "was not running",
            };
            line.push_str(&format!(
                "  stop: {} ({verdict})",
                short(Duration::from_millis(r.took_ms))
            ));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn last_segment(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn short(d: Duration) -> String {
    let s = d.as_secs();
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{:02}m", s / 3600, (s / 60) % 60)
    } else {
        format!("{}d{:02}h", s / 86400, (s / 3600) % 24)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, depth: usize, kind: NodeType, state: NodeState) -> NodeStatus {
        NodeStatus {
            path: path.into(),
            kind,
            state,
            depth,
            pid: None,
            uptime_ms: None,
            restarts: 0,
            last_exit: None,
            next_restart_in_ms: None,
            stop_report: None,
            notify_status: None,
            adopted: Vec::new(),
        }
    }

    #[test]
    fn text_lines_up_kind_and_state_in_columns_and_reads_the_stop_report() {
        let mut api = node("backend/api", 2, NodeType::Worker, NodeState::Stopped);
        api.stop_report = Some(StopRecord {
            path: "backend/api".into(),
            kind: NodeType::Worker,
            pid: Some(7),
            signal: Some("SIGTERM".into()),
            deadline_ms: 6000,
            took_ms: 9000,
            outcome: StopOutcome::Killed,
            exit: Some("signal SIGKILL".into()),
            adopted: Vec::new(),
        });
        let text = render_text(&[
            node("(root)", 0, NodeType::Group, NodeState::Ready),
            node("backend", 1, NodeType::Group, NodeState::Ready),
            api,
        ]);
        let want = [
            "(root)      group  ready",
            "└─ backend  group  ready",
            "   └─ api   worker stopped   restarts 0  stop: 9.0s (KILLED at its deadline)",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), want, "{text}");
    }

    #[test]
    fn daemon_and_node_states_keep_their_wire_names() {
        for (state, name) in [
            (DaemonState::Starting, "starting"),
            (DaemonState::Running, "running"),
            (DaemonState::Reloading, "reloading"),
            (DaemonState::Stopping, "stopping"),
        ] {
            assert_eq!(state.to_string(), name);
            assert_eq!(serde_json::to_value(state).unwrap(), name);
            assert_eq!(
                serde_json::from_value::<DaemonState>(name.into()).unwrap(),
                state
            );
        }
        assert_eq!(
            serde_json::to_value(NodeState::Backoff).unwrap(),
            NodeState::Backoff.as_str()
        );
    }
}
