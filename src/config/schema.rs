//! The typed, validated task tree. Everything here has already passed validation: durations
//! are `Duration`s, signals are `Signal`s, names are checked, dependencies exist and are
//! acyclic. Nothing in this module knows about processes or tokio.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};

/// A whole configuration file: the root group plus the keys that only the root may carry.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeSpec {
    /// The file this tree was read from, for messages.
    pub source: PathBuf,
    pub control_socket: Option<PathBuf>,
    /// Where to serve `/healthz` and `/metrics` over HTTP; off when None.
    pub health_addr: Option<SocketAddr>,
    /// Should arborist die, how long the guardian lets workers stop after their stop signal
    /// before it SIGKILLs them.
    pub guardian_grace: Duration,
    /// How arborist owns its workers' processes (SPEC §3 "Ownership").
    pub ownership: Ownership,
    pub root: GroupSpec,
}

/// How a worker's processes are owned: a cgroup v2 per run, or process groups and subreaper
/// adoption (the fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ownership {
    /// cgroup v2 where arborist's cgroup is writable, else the fallback (and say why).
    #[default]
    Auto,
    /// cgroup v2 or refuse to start (exit 2, nothing started).
    Cgroup,
    /// The fallback even where cgroups would work.
    ProcessGroups,
}

/// A named child of a group: a worker or a nested group.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    /// Names of siblings that must be ready before this node starts.
    pub depends_on: Vec<String>,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Group(GroupSpec),
    Worker(Box<WorkerSpec>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    /// Children in YAML order, which is the start order subject to `depends_on`.
    pub children: Vec<NodeSpec>,
    pub strategy: Strategy,
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// This level's cleanup deadline, already inherited from the parent when not given.
    pub shutdown_timeout: Duration,
    pub stop_order: StopOrder,
    /// `None` means unlimited.
    pub start_concurrency: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    OneForOne,
    OneForAll,
    RestForOne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOrder {
    Reverse,
    Parallel,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    pub program: Program,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub user: Option<Identity<Uid>>,
    pub group: Option<Identity<Gid>>,
    pub replicas: u32,
    pub restart: RestartPolicy,
    pub backoff: Backoff,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub pre_stop: Option<Vec<String>>,
    pub ready: Option<ReadySpec>,
    pub watchdog: Option<Duration>,
    pub critical: bool,
    pub logs: LogMode,
    pub limits: Limits,
}

/// A worker's resource limits, applied to each run's cgroup (`memory.max`, `cpu.max`,
/// `pids.max`); `None` leaves that resource unlimited. Only cgroup v2 with the controllers
/// delegated can apply them: elsewhere a worker with limits is refused, never run unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Bytes of memory (`memory.max`).
    pub memory: Option<u64>,
    /// CPUs' worth of time per period (`cpu.max`); 1.5 is one and a half CPUs.
    pub cpu: Option<f64>,
    /// Processes and threads (`pids.max`).
    pub pids: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// Smallest `limits.cpu`: the kernel refuses a `cpu.max` quota under 1 ms per 100 ms period.
pub const MIN_CPU_LIMIT: f64 = 0.01;
/// Largest `limits.cpu`: more CPUs than any machine has, far inside the kernel's quota range.
pub const MAX_CPU_LIMIT: f64 = 10_000.0;
/// Largest `limits.pids`: `pids.max` takes at most the kernel's PID_MAX_LIMIT (2^22).
pub const MAX_PIDS_LIMIT: u64 = 1 << 22;
/// Smallest `limits.memory`: less is almost surely a size written without its unit
/// (`memory: 512` is 512 bytes), and would only get the worker OOM-killed at once.
pub const MIN_MEMORY_LIMIT: u64 = 1 << 20;

/// A user or group name as written, with the id it resolved to when the config was loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity<T> {
    pub name: String,
    pub id: T,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// argv, executed directly.
    Command(Vec<String>),
    /// A script for `/bin/sh -c`.
    Shell(String),
}

impl Program {
    pub fn argv(&self) -> Vec<String> {
        match self {
            Program::Command(argv) => argv.clone(),
            Program::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub factor: f64,
    /// Fraction of the delay added or removed at random, 0.0..=1.0.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: 0.1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadySpec {
    pub check: ReadyCheck,
    /// Pause between two attempts.
    pub interval: Duration,
    /// Upper bound of one attempt.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReadyCheck {
    Tcp(String),
    Exec(Vec<String>),
    Http(HttpUrl),
    /// sd_notify `READY=1` from the worker's process group.
    Notify,
}

/// A plain-HTTP URL for a readiness probe: `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// As written in the file.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err("https is not supported; probe a plain-http health port".into());
        } else {
            return Err("expected http://host:port/path".into());
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed '[' in the host")?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("'[{h}]' is not an IPv6 address"));
            }
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p)?,
                None if after.is_empty() => 80,
                None => return Err(format!("unexpected '{after}' after the host")),
            };
            (h.to_string(), port)
        } else {
            let (h, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, parse_port(p)?),
                None => (authority, 80),
            };
            if h.is_empty() {
                return Err("no host".into());
            }
            // A DNS name or an IPv4 address: what the probe can resolve and connect to.
            if let Some(bad) = h
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
            {
                return Err(format!("{bad:?} is not allowed in a host name"));
            }
            (h.to_string(), port)
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("spaces or control characters in the path".into());
        }
        Ok(HttpUrl {
            url: url.to_string(),
            host,
            port,
            path,
        })
    }
}

/// A URL's port: 1 to 65535, digits only (Rust's integer parsing would also take `+80`).
fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(port) if port > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!("invalid port '{p}' (expected 1 to 65535)")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    Capture,
    Inherit,
}

pub const DEFAULT_ROOT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(60);
pub const DEFAULT_READY_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_GUARDIAN_GRACE: Duration = Duration::from_secs(2);

/// Renders a node path: names joined with `/`, the root shown as `(root)`.
pub fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

pub fn join_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}
