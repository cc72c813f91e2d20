//! Chaos soak: the real binary runs a tree of 200 `sh` workers (a `one_for_one` group, a
//! `rest_for_one` group, a group with a small restart intensity that fails and is restarted by
//! the root, pools at the root; restart policies mixed) while, for a bounded time, seeded
//! random actors signal workers (SIGKILL; SIGUSR2, which the script traps to exit 3; SIGTERM;
//! SIGTERM to a worker's child; SIGSTOP), reload valid and invalid configs (SIGHUP or `reload`
//! over the socket; the file is replaced atomically) and hammer the control socket from three
//! threads (status, start/stop/restart of random paths, malformed lines, oversized lines,
//! connections dropped mid-request, idle connections, the CLI), every status reply checked for
//! consistency. Then the known starting config is reloaded, the tree is let settle (bounded),
//! and the daemon is checked against /proc: alive and answering; every running worker a live,
//! non-zombie child of arborist that leads its own process group; no zombie, no stray process;
//! descriptors and memory back to the baseline; SIGTERM exits 0 and leaves nothing behind.
//! The figures go to stderr and to `target/chaos-report.txt`. Two tests at the end reproduce,
//! in isolation, the defects the soak found (see docs/reliability.md): the stale status after
//! a stop and the slots kept after reloads (both fixed; both run in CI).
//!
//! `ARBORIST_CHAOS_SECS=N` sets the chaos duration (default 90), `ARBORIST_CHAOS_SEED=S`
//! replays the random decisions of a run (each actor's own sequence; how the threads
//! interleave is up to the OS). See docs/reliability.md.

mod ctl;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::*;

/// Chaos duration when `ARBORIST_CHAOS_SECS` is not set: with start-up, settling and shutdown
/// the test takes well under two minutes on a 2-core machine.
const DEFAULT_SECS: u64 = 90;

/// The warm-up before the baseline is taken (see the test).
const WARM_UP_SECS: u64 = 5;

const WORKERS: u32 = 200;

/// Extra descriptors arborist may hold at the final sample beyond the baseline. The tree is
/// the same (same config, every worker up, no client connected) and the count is re-sampled
/// until it holds still, so it is normally exactly the baseline. The slack covers what
/// arborist holds only for a moment and might hold at the instant of a sample: a spawn's pipe
/// ends, the config file during a reload, /proc/PID/comm of a signal's sender, a control
/// connection whose end it has not read yet. A leak driven by the chaos (thousands of
/// restarts, connections and reloads) would be far beyond 4.
const FD_SLACK: usize = 4;

/// Largest accepted RSS growth over the run, in percent.
const RSS_GROWTH_LIMIT: f64 = 10.0;

/// Bound on one control request: a `stop` of a group is bounded by its shutdown_timeout (5 s),
/// and a few can queue behind one another at the root.
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// A `status` slower than this during the chaos counts as a failure: it is answered from the
/// status board and must never wait for a busy group.
const STATUS_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// The tree and its variants

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `sh` that traps SIGUSR2 (exit 3) and waits for a `sleep` child: two processes in the
    /// worker's process group.
    Trap,
    /// `sleep` executed directly: one process.
    Exec,
}

#[derive(Clone)]
struct Pool {
    /// "" for the root.
    group: &'static str,
    name: String,
    replicas: u32,
    restart: &'static str,
    kind: Kind,
    generation: u32,
}

#[derive(Clone)]
struct Shape {
    pools: Vec<Pool>,
    web_stop_order: &'static str,
}

/// Groups under the root, with their settings. `fragile` fails now and then (more than 2
/// restarts in 5 s) and is restarted by the root; the others never fail.
const GROUPS: [(&str, &str); 3] = [
    (
        "web",
        "strategy: one_for_one\n    max_restarts: 1000000\n    restart_window: 1s\n    shutdown_timeout: 5s",
    ),
    (
        "jobs",
        "strategy: rest_for_one\n    max_restarts: 1000000\n    restart_window: 1s\n    shutdown_timeout: 5s",
    ),
    (
        "fragile",
        "strategy: one_for_one\n    max_restarts: 2\n    restart_window: 5s\n    shutdown_timeout: 5s",
    ),
];

/// Pool names whose workers are `Kind::Exec` (everything else, extras included, is `Trap`).
const EXEC_POOLS: [&str; 2] = ["cache", "report"];

fn base_shape() -> Shape {
    let p = |group, name: &str, replicas, restart, kind| Pool {
        group,
        name: name.to_string(),
        replicas,
        restart,
        kind,
        generation: 0,
    };
    let shape = Shape {
        pools: vec![
            p("web", "api", 60, "always", Kind::Trap),
            p("web", "cache", 20, "on-failure", Kind::Exec),
            p("web", "edge", 1, "always", Kind::Trap),
            p("jobs", "queue", 1, "always", Kind::Trap),
            p("jobs", "batch", 40, "on-failure", Kind::Trap),
            p("jobs", "report", 9, "never", Kind::Exec),
            p("fragile", "flaky", 9, "always", Kind::Trap),
            p("", "pool", 59, "always", Kind::Trap),
            p("", "lone", 1, "on-failure", Kind::Trap),
        ],
        web_stop_order: "reverse",
    };
    assert_eq!(shape.pools.iter().map(|p| p.replicas).sum::<u32>(), WORKERS);
    shape
}

fn render_worker(out: &mut String, p: &Pool, indent: usize, tag: &str) {
    let i = " ".repeat(indent);
    let j = " ".repeat(indent + 2);
    let run = match p.kind {
        // `wait` returns when the trapped signal arrives; the trap exits 3 and leaves the
        // `sleep` behind in the process group, for arborist to clean up.
        Kind::Trap => r#"shell: "echo up; trap 'exit 3' USR2; sleep 100000 & wait $!""#,
        Kind::Exec => r#"command: ["sleep", "100000"]"#,
    };
    let _ = write!(
        out,
        "{i}{name}:\n\
         {j}replicas: {replicas}\n\
         {j}restart: {restart}\n\
         {j}backoff: {{ initial: 10ms, max: 200ms }}\n\
         {j}stop_timeout: 3s\n\
         {j}env: {{ CHAOS_TAG: \"{tag}\", GEN: \"{generation}\" }}\n\
         {j}{run}\n",
        name = p.name,
        replicas = p.replicas,
        restart = p.restart,
        generation = p.generation,
    );
}

/// The YAML of a shape. Every worker carries `CHAOS_TAG` in its environment (inherited by its
/// `sleep`), so every process of this run can be found in /proc.
fn render(shape: &Shape, tag: &str) -> String {
    let mut out = String::from(
        "shutdown_timeout: 20s\nmax_restarts: 1000000\nrestart_window: 1s\nchildren:\n",
    );
    for (group, settings) in GROUPS {
        let _ = writeln!(out, "  {group}:\n    {settings}");
        if group == "web" {
            let _ = writeln!(out, "    stop_order: {}", shape.web_stop_order);
        }
        out.push_str("    children:\n");
        for p in shape.pools.iter().filter(|p| p.group == group) {
            render_worker(&mut out, p, 6, tag);
        }
    }
    for p in shape.pools.iter().filter(|p| p.group.is_empty()) {
        render_worker(&mut out, p, 2, tag);
    }
    out
}

/// Worker paths of a shape, as `status` names them.
fn worker_paths(shape: &Shape) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in &shape.pools {
        let base = if p.group.is_empty() {
            p.name.clone()
        } else {
            format!("{}/{}", p.group, p.name)
        };
        if p.replicas == 1 {
            out.insert(base);
        } else {
            out.extend((0..p.replicas).map(|i| format!("{base}#{i}")));
        }
    }
    out
}

/// A random valid variant of the base tree: pools scaled up or down (a single worker may
/// become a pool, with new paths), a pool's environment changed (its workers restart),
/// workers added (and, by the next variant, removed), a group setting changed in place.
fn random_valid(rng: &mut fastrand::Rng) -> Shape {
    let mut s = base_shape();
    let mut extras = 0;
    for _ in 0..rng.usize(1..=3) {
        let n = rng.usize(..s.pools.len());
        match rng.u8(0..4) {
            0 => {
                let p = &mut s.pools[n];
                let step = rng.i64(1..=p.replicas.clamp(3, 10) as i64);
                let to = if rng.bool() {
                    p.replicas as i64 + step
                } else {
                    p.replicas as i64 - step
                };
                p.replicas = to.max(1) as u32;
            }
            1 => s.pools[n].generation = rng.u32(1..1_000_000),
            2 => {
                for _ in 0..rng.usize(1..=3) {
                    extras += 1;
                    let group = ["", "web", "jobs"][rng.usize(..3)];
                    s.pools.push(Pool {
                        group,
                        name: format!("extra{extras}"),
                        replicas: rng.u32(1..=3),
                        restart: ["always", "on-failure"][rng.usize(..2)],
                        kind: Kind::Trap,
                        generation: 0,
                    });
                }
            }
            _ => {
                s.web_stop_order = if s.web_stop_order == "reverse" {
                    "parallel"
                } else {
                    "reverse"
                }
            }
        }
    }
    s
}

/// A config arborist must reject, and what is wrong with it.
fn random_invalid(rng: &mut fastrand::Rng, tag: &str) -> (String, &'static str) {
    let valid = render(&random_valid(rng), tag);
    match rng.u8(0..6) {
        0 => (format!("{valid}  broken: {{ unclosed: [\n"), "syntax error"),
        1 => (
            valid.replacen("    restart: ", "    restart_policy: ", 1),
            "unknown key",
        ),
        2 => (valid.replacen("replicas: ", "replicas: -", 1), "bad value"),
        3 => (
            valid.replacen("strategy: rest_for_one", "strategy: rest_for_some", 1),
            "unknown strategy",
        ),
        4 => (
            valid.replacen("stop_timeout: 3s", "stop_timeout: soon", 1),
            "bad duration",
        ),
        _ => (valid.replacen("\n  web:", "\n\tweb:", 1), "tab indentation"),
    }
}

/// Replaces the config file atomically: a reload never reads a half-written file.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write the new config");
    std::fs::rename(&tmp, path).expect("rename the new config into place");
}

fn pool_name(path: &str) -> &str {
    let last = path.rsplit('/').next().unwrap_or(path);
    last.split('#').next().unwrap_or(last)
}

fn kind_of(path: &str) -> Kind {
    if EXEC_POOLS.contains(&pool_name(path)) {
        Kind::Exec
    } else {
        Kind::Trap
    }
}

// ---------------------------------------------------------------------------------------
// A control client that reports failures instead of panicking, with its own bounds

struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn open(socket: &Path) -> Result<Client, String> {
        let stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(REQUEST_LIMIT))
            .and_then(|_| stream.set_write_timeout(Some(REQUEST_LIMIT)))
            .map_err(|e| format!("socket timeouts: {e}"))?;
        let writer = stream.try_clone().map_err(|e| format!("clone: {e}"))?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    fn read_reply(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("connection closed without a reply".into()),
            Ok(_) if !line.ends_with('\n') => Err(format!("a partial reply: {line:?}")),
            Ok(_) => serde_json::from_str::<Value>(&line)
                .map_err(|e| format!("reply {line:?} is not JSON: {e}"))
                .and_then(|v| {
                    if v["ok"].is_boolean() {
                        Ok(v)
                    } else {
                        Err(format!("reply without `ok`: {v}"))
                    }
                }),
            Err(e) => Err(format!("no reply: {e}")),
        }
    }

    fn send(&mut self, line: &str) -> Result<Value, String> {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.write_raw(&bytes)
            .map_err(|e| format!("send {line:?}: {e}"))?;
        self.read_reply().map_err(|e| format!("{line:?}: {e}"))
    }

    /// True when the daemon closes the connection (end of file or reset) within the bound.
    fn closed_by_peer(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn one_request(socket: &Path, request: &Value) -> Result<Value, String> {
    Client::open(socket)?.send(&request.to_string())
}

fn status_of(socket: &Path) -> Result<Value, String> {
    let s = one_request(socket, &json!({"cmd": "status"}))?;
    if s["ok"] == true && s["nodes"].is_array() && s["daemon"].is_object() {
        Ok(s)
    } else {
        Err(format!("a bad status reply: {s}"))
    }
}

fn node_list(status: &Value) -> &[Value] {
    status["nodes"].as_array().map_or(&[], |v| v.as_slice())
}

fn is_up(n: &Value) -> bool {
    (n["state"] == "running" || n["state"] == "ready") && n["pid"].is_u64()
}

/// Worker path → pid of every worker that is up.
fn up_workers(status: &Value) -> BTreeMap<String, i32> {
    node_list(status)
        .iter()
        .filter(|n| n["kind"] == "worker" && is_up(n))
        .filter_map(|n| Some((n["path"].as_str()?.to_string(), n["pid"].as_i64()? as i32)))
        .collect()
}

/// What must hold in any status reply, even in the middle of a reload or a restart: nodes in
/// tree order (every node's parent listed before it, at the depth above), no path twice, no
/// pid shown for two nodes, and a pool never shown both as `name` and as `name#i`.
fn consistent(status: &Value) -> Result<(), String> {
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    let mut pids: BTreeMap<i64, &str> = BTreeMap::new();
    for n in node_list(status) {
        let path = n["path"]
            .as_str()
            .ok_or_else(|| format!("a node without a path: {n}"))?;
        let depth = n["depth"]
            .as_u64()
            .ok_or_else(|| format!("{path}: no depth"))?;
        if seen.insert(path, depth).is_some() {
            return Err(format!("{path} is listed twice"));
        }
        if depth == 0 {
            if path != "(root)" {
                return Err(format!("{path} at depth 0"));
            }
        } else {
            let parent = path.rsplit_once('/').map_or("(root)", |(p, _)| p);
            if seen.get(parent) != Some(&(depth - 1)) {
                return Err(format!("{path} (depth {depth}) before its parent {parent}"));
            }
        }
        if n["kind"] == "worker" {
            if let Some(pid) = n["pid"].as_i64() {
                if let Some(other) = pids.insert(pid, path) {
                    return Err(format!("pid {pid} shown for both {other} and {path}"));
                }
            }
        }
    }
    for path in seen.keys() {
        if let Some((pool, _)) = path.split_once('#') {
            if seen.contains_key(pool) {
                return Err(format!("both {pool} and {path} are listed"));
            }
        }
    }
    Ok(())
}

/// The CLI as a real process, bounded.
fn run_cli(socket: &Path, args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("ARBORIST_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn the CLI: {e}"))?;
    let mut pipe = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("wait: {e}"))? {
            break status;
        }
        if start.elapsed() > REQUEST_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("`arborist {}` hung", args.join(" ")));
        }
        std::thread::sleep(Duration::from_millis(5)); // poll interval of a bounded wait
    };
    let out = reader.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(format!("`arborist {}` failed: {status}", args.join(" ")))
    }
}

// ---------------------------------------------------------------------------------------
// /proc

fn pgid_of(pid: i32) -> Option<i32> {
    proc_stat_field(pid, 5)?.parse().ok()
}

fn fd_targets(pid: i32) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        // socket:[123] → socket, anon_inode:[eventfd] stays, paths stay.
        let kind = match target.split_once(":[") {
            Some((k, rest)) if rest.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
                k.to_string()
            }
            _ => target,
        };
        *out.entry(kind).or_default() += 1;
    }
    out
}

/// The descriptor count once it has held still for three samples in a row (bounded): the
/// daemon closes a connection a moment after its client has.
fn quiet_fd_count(pid: i32) -> usize {
    let start = Instant::now();
    let mut last = fd_count(pid);
    let mut same = 0;
    while same < 3 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50)); // poll interval of a bounded wait
        let now = fd_count(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn is_guardian(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|&b| b == 0).any(|a| a == b"__guardian"))
        .unwrap_or(false)
}

/// Every live process (not a zombie) whose environment carries this run's tag.
fn tagged_processes(tag: &str) -> Vec<i32> {
    let needle = format!("CHAOS_TAG={tag}");
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// What the process-level check found.
#[derive(Default)]
struct ProcFacts {
    strays: Vec<i32>,
    tagged: usize,
}

/// Checks the running tree against /proc: every worker status shows up is alive, not a
/// zombie, a child of arborist and the leader of its own process group; arborist's children
/// are exactly those workers and its guardian, none a zombie; every process of this run is in
/// the process group of a running worker, as many as the workers' scripts make.
fn check_processes(arb: i32, status: &Value, tag: &str) -> Result<ProcFacts, String> {
    let workers = up_workers(status);
    let mut problems = vec![];
    for (path, &pid) in &workers {
        match proc_state(pid) {
            None => problems.push(format!("{path}: pid {pid} does not exist")),
            Some('Z') | Some('X') => problems.push(format!("{path}: pid {pid} is a zombie")),
            Some(_) => {
                if parent_of(pid) != Some(arb) {
                    problems.push(format!(
                        "{path}: pid {pid} has parent {:?}, not arborist ({arb})",
                        parent_of(pid)
                    ));
                }
                if pgid_of(pid) != Some(pid) {
                    problems.push(format!(
                        "{path}: pid {pid} is in process group {:?}, not its own",
                        pgid_of(pid)
                    ));
                }
            }
        }
    }
    let worker_pids: BTreeSet<i32> = workers.values().copied().collect();
    let children = children_of(arb);
    let zombies: Vec<i32> = children
        .iter()
        .filter(|(_, s)| *s == 'Z')
        .map(|(p, _)| *p)
        .collect();
    if !zombies.is_empty() {
        problems.push(format!("zombie children of arborist: {zombies:?}"));
    }
    let strays: Vec<i32> = children
        .iter()
        .filter(|(p, s)| *s != 'Z' && !worker_pids.contains(p) && !is_guardian(*p))
        .map(|(p, _)| *p)
        .collect();
    if !strays.is_empty() {
        problems.push(format!(
            "children of arborist that are no running worker: {strays:?}"
        ));
    }
    let tagged = tagged_processes(tag);
    let mut members: BTreeMap<i32, usize> = BTreeMap::new();
    let mut outside = vec![];
    for &p in &tagged {
        match pgid_of(p).filter(|g| worker_pids.contains(g)) {
            Some(g) => *members.entry(g).or_default() += 1,
            None => outside.push(p),
        }
    }
    if !outside.is_empty() {
        problems.push(format!(
            "processes of this run outside every running worker's process group: {outside:?}"
        ));
    }
    for (path, &pid) in &workers {
        let have = members.get(&pid).copied().unwrap_or(0);
        let want = match kind_of(path) {
            Kind::Trap => 2,
            Kind::Exec => 1,
        };
        // A script frozen by SIGSTOP cannot act on its `sleep` having been killed: the sleep
        // stays a zombie (not counted) until arborist stops the worker.
        let frozen = proc_state(pid) == Some('T');
        if have != want && !(frozen && (1..=want).contains(&have)) {
            problems.push(format!(
                "{path} (pid {pid}, state {:?}): {have} processes in its group, expected {want}",
                proc_state(pid)
            ));
        }
    }
    if problems.is_empty() {
        Ok(ProcFacts {
            strays,
            tagged: tagged.len(),
        })
    } else {
        Err(problems.join("\n  "))
    }
}

// ---------------------------------------------------------------------------------------
// The actors

#[derive(Default)]
struct Stats {
    kills: AtomicU64,
    usr2: AtomicU64,
    member_kills: AtomicU64,
    sigstops: AtomicU64,
    sigterms: AtomicU64,
    kill_skipped: AtomicU64,
    reloads_valid: AtomicU64,
    reloads_invalid: AtomicU64,
    reloads_sighup: AtomicU64,
    reloads_socket: AtomicU64,
    reload_max_ms: AtomicU64,
    requests: AtomicU64,
    status_requests: AtomicU64,
    verb_requests: AtomicU64,
    verb_refused: AtomicU64,
    malformed: AtomicU64,
    oversized: AtomicU64,
    dropped: AtomicU64,
    idle: AtomicU64,
    cli: AtomicU64,
    errors: AtomicU64,
    verb_max_ms: AtomicU64,
}

struct Ctx<'a> {
    arb: &'a Arborist,
    pid: i32,
    socket: PathBuf,
    config: PathBuf,
    tag: String,
    until: Instant,
    stats: Stats,
    /// Failures seen during the chaos (the first few hundred).
    violations: Mutex<Vec<String>>,
    /// Reasons of refused verbs, with counts.
    refusals: Mutex<BTreeMap<String, u64>>,
    /// Latencies of status requests, in microseconds.
    status_us: Mutex<Vec<u64>>,
    /// (seconds into the chaos, RSS KiB, descriptors), every few seconds.
    samples: Mutex<Vec<(u64, u64, usize)>>,
}

impl Ctx<'_> {
    fn running(&self) -> bool {
        Instant::now() < self.until
    }

    fn violation(&self, what: String) {
        self.stats.errors.fetch_add(1, Relaxed);
        let mut v = self.violations.lock().unwrap();
        if v.len() < 300 {
            v.push(what);
        }
    }

    /// A status request, timed and checked.
    fn status(&self, client: &mut Option<Client>) -> Option<Value> {
        self.stats.requests.fetch_add(1, Relaxed);
        self.stats.status_requests.fetch_add(1, Relaxed);
        let begin = Instant::now();
        let reply = match client.as_mut() {
            Some(c) => c.send(r#"{"cmd":"status"}"#),
            None => Client::open(&self.socket).and_then(|mut c| {
                let r = c.send(r#"{"cmd":"status"}"#);
                *client = Some(c);
                r
            }),
        };
        let took = begin.elapsed();
        self.status_us.lock().unwrap().push(took.as_micros() as u64);
        match reply {
            Ok(s) if s["ok"] == true && s["daemon"]["pid"] == self.pid && s["nodes"].is_array() => {
                if took > STATUS_LIMIT {
                    self.violation(format!("status took {took:?}"));
                }
                if let Err(e) = consistent(&s) {
                    self.violation(format!("an inconsistent status: {e}"));
                }
                Some(s)
            }
            Ok(s) => {
                self.violation(format!("a bad status reply: {s}"));
                None
            }
            Err(e) => {
                *client = None;
                self.violation(format!("status: {e}"));
                None
            }
        }
    }

    fn refused(&self, reply: &Value) {
        self.stats.verb_refused.fetch_add(1, Relaxed);
        let reason = reply["error"].as_str().unwrap_or("?");
        // "no such node: web/x" → "no such node"; "web is not running" → "is not running".
        let key = match reason.split_once(": ") {
            Some((head, _)) => head.to_string(),
            None => match reason.split_once(" is ") {
                Some((_, rest)) => format!("is {rest}"),
                None => reason.split(" (").next().unwrap_or(reason).to_string(),
            },
        };
        *self.refusals.lock().unwrap().entry(key).or_default() += 1;
    }
}

/// Pacing between chaos actions: not a synchronisation.
fn pace(rng: &mut fastrand::Rng, ms: std::ops::Range<u64>) {
    std::thread::sleep(Duration::from_millis(rng.u64(ms)));
}

fn max_into(slot: &AtomicU64, took: Duration) {
    slot.fetch_max(took.as_millis() as u64, Relaxed);
}

/// Records arborist's RSS and descriptor count every 5 s, to tell a leak (growth all along)
/// from the allocator's high-water mark (an early step, then flat).
fn sampler(ctx: &Ctx, begin: Instant) {
    let mut next = begin;
    while ctx.running() {
        if Instant::now() >= next {
            ctx.samples.lock().unwrap().push((
                begin.elapsed().as_secs(),
                rss_kib(ctx.pid),
                fd_count(ctx.pid),
            ));
            next += Duration::from_secs(5);
        }
        std::thread::sleep(Duration::from_millis(100)); // sampling period, not a synchronisation
    }
}

/// How long status may show a worker as up after its process is gone: the exit is reported
/// once the rest of the worker's process group is gone too, which takes at most the
/// worker's stop_timeout (3 s) plus the grace arborist gives a SIGKILLed group (5 s).
const STALE_LIMIT: Duration = Duration::from_secs(15);

/// Watches status for workers shown as up whose process no longer exists (or is a zombie):
/// a lost exit, or an exit the group did not act on, would leave a worker dead for good.
fn auditor(ctx: &Ctx) {
    let mut client = None;
    let mut dead_since: BTreeMap<(String, i32), Instant> = BTreeMap::new();
    let mut reported = BTreeSet::new();
    while ctx.running() {
        std::thread::sleep(Duration::from_millis(500)); // audit period, not a synchronisation
        let Some(s) = ctx.status(&mut client) else {
            continue;
        };
        let now = Instant::now();
        let shown: BTreeSet<(String, i32)> = up_workers(&s).into_iter().collect();
        dead_since.retain(|k, _| shown.contains(k));
        for (path, pid) in shown {
            if alive(pid) {
                dead_since.remove(&(path, pid));
                continue;
            }
            let since = *dead_since.entry((path.clone(), pid)).or_insert(now);
            if now - since > STALE_LIMIT && reported.insert((path.clone(), pid)) {
                ctx.violation(format!(
                    "status has shown {path} up with pid {pid} for {:?} after that process ended \
                     (state {:?})",
                    now - since,
                    proc_state(pid)
                ));
            }
        }
    }
}

/// Signals random running workers: mostly SIGKILL; SIGUSR2 (a `Trap` worker exits 3);
/// SIGTERM to a worker's `sleep` (the script exits 143); SIGTERM; SIGSTOP (the worker
/// hangs until arborist stops it: its stop sequence sends SIGCONT after the stop signal).
fn killer(ctx: &Ctx, mut rng: fastrand::Rng) {
    let mut client = None;
    while ctx.running() {
        pace(&mut rng, 20..120);
        let Some(s) = ctx.status(&mut client) else {
            continue;
        };
        let up: Vec<(String, i32, u64)> = node_list(&s)
            .iter()
            .filter(|n| n["kind"] == "worker" && is_up(n))
            .filter_map(|n| {
                Some((
                    n["path"].as_str()?.to_string(),
                    n["pid"].as_i64()? as i32,
                    n["uptime_ms"].as_u64().unwrap_or(0),
                ))
            })
            .collect();
        if up.is_empty() {
            continue;
        }
        let (path, pid, uptime) = &up[rng.usize(..up.len())];
        // The pid came from a snapshot: only signal it while it is still one of arborist's
        // workers, never a process that reused the number.
        if parent_of(*pid) != Some(ctx.pid) || pgid_of(*pid) != Some(*pid) {
            ctx.stats.kill_skipped.fetch_add(1, Relaxed);
            continue;
        }
        let target = Pid::from_raw(*pid);
        match rng.u8(0..100) {
            // A script that has only just started may not have set its trap yet.
            0..=29 if kind_of(path) == Kind::Trap && *uptime >= 300 => {
                let _ = kill(target, Signal::SIGUSR2);
                ctx.stats.usr2.fetch_add(1, Relaxed);
            }
            // The worker's `sleep`, not its leader: `wait` returns, the script exits 143.
            30..=39 if kind_of(path) == Kind::Trap => {
                let others: Vec<i32> = group_members(*pid)
                    .into_iter()
                    .filter(|&p| p != *pid && parent_of(p) == Some(*pid))
                    .collect();
                if let Some(&p) = others.first() {
                    let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
                    ctx.stats.member_kills.fetch_add(1, Relaxed);
                }
            }
            // Frozen: only arborist's stop sequence (stop_signal, then SIGCONT) ends it. Not
            // before a script has started its `sleep`, so a frozen worker still has the
            // processes the final check expects.
            40..=43
                if *uptime >= 300
                    && (kind_of(path) == Kind::Exec || group_members(*pid).len() >= 2) =>
            {
                let _ = kill(target, Signal::SIGSTOP);
                ctx.stats.sigstops.fetch_add(1, Relaxed);
            }
            44..=49 => {
                let _ = kill(target, Signal::SIGTERM);
                ctx.stats.sigterms.fetch_add(1, Relaxed);
            }
            _ => {
                let _ = kill(target, Signal::SIGKILL);
                ctx.stats.kills.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Alternates valid and invalid configs, told by SIGHUP or over the socket, and checks that
/// each valid one is applied and each invalid one rejected.
fn reloader(ctx: &Ctx, mut rng: fastrand::Rng) {
    let mut valid = true;
    while ctx.running() {
        pace(&mut rng, 300..1500);
        let (text, what) = if valid {
            (render(&random_valid(&mut rng), &ctx.tag), "valid")
        } else {
            random_invalid(&mut rng, &ctx.tag)
        };
        write_config(&ctx.config, &text);
        let begin = Instant::now();
        if rng.bool() {
            ctx.stats.reloads_sighup.fetch_add(1, Relaxed);
            let count = |arb: &Arborist| {
                let log = arb.log();
                (
                    log.matches("reload applied").count(),
                    log.matches("reload rejected").count(),
                )
            };
            let (applied, rejected) = count(ctx.arb);
            if kill(Pid::from_raw(ctx.pid), Signal::SIGHUP).is_err() {
                ctx.violation("SIGHUP: arborist is gone".into());
                return;
            }
            let outcome = (|| {
                let start = Instant::now();
                while start.elapsed() < REQUEST_LIMIT {
                    let (a, r) = count(ctx.arb);
                    if a + r > applied + rejected {
                        return Some(a > applied);
                    }
                    std::thread::sleep(Duration::from_millis(20)); // poll of a bounded wait
                }
                None
            })();
            match outcome {
                None => ctx.violation(format!(
                    "SIGHUP reload ({what}) had no outcome within {REQUEST_LIMIT:?}"
                )),
                Some(applied) if applied != valid => ctx.violation(format!(
                    "SIGHUP reload of a {what} config was {}",
                    if applied { "applied" } else { "rejected" }
                )),
                Some(_) => {}
            }
        } else {
            ctx.stats.reloads_socket.fetch_add(1, Relaxed);
            ctx.stats.requests.fetch_add(1, Relaxed);
            match one_request(&ctx.socket, &json!({"cmd": "reload"})) {
                Err(e) => ctx.violation(format!("reload over the socket: {e}")),
                Ok(r) if r["ok"] != valid => ctx.violation(format!(
                    "reload of a {what} config over the socket answered {r}"
                )),
                Ok(r) if !valid && !r["errors"].as_array().is_some_and(|e| !e.is_empty()) => {
                    ctx.violation(format!("a rejected reload ({what}) lists no errors: {r}"))
                }
                Ok(_) => {}
            }
        }
        max_into(&ctx.stats.reload_max_ms, begin.elapsed());
        if valid {
            ctx.stats.reloads_valid.fetch_add(1, Relaxed);
        } else {
            ctx.stats.reloads_invalid.fetch_add(1, Relaxed);
        }
        valid = !valid;
    }
}

const MALFORMED: [&str; 13] = [
    "nonsense",
    "[1,2]",
    "42",
    "null",
    "{}",
    "",
    r#"{"cmd":"explode"}"#,
    r#"{"cmd":"stop"}"#,
    r#"{"cmd":"status","extra":1}"#,
    r#"{"cmd":"stop","path":7}"#,
    r#"{"cmd":"status"} trailing"#,
    r#"{"cmd":"#,
    "{\"cmd\":\"status\u{0}\"}",
];

const ODD_PATHS: [&str; 9] = [
    "nope",
    "web/nope",
    "web/api#999",
    "(root)",
    "web/api/deeper",
    "/",
    "//web//",
    "web/api#x",
    "lone#0",
];

/// One of the threads that hammer the control socket.
fn hammer(ctx: &Ctx, mut rng: fastrand::Rng) {
    let mut conn: Option<Client> = None;
    let mut paths: Vec<String> = vec![];
    let mut idle: Vec<UnixStream> = vec![];
    while ctx.running() {
        pace(&mut rng, 2..25);
        match rng.u8(0..100) {
            // status on the thread's long-lived connection
            0..=34 => {
                if let Some(s) = ctx.status(&mut conn) {
                    paths = node_list(&s)
                        .iter()
                        .filter(|n| n["depth"] != 0)
                        .filter_map(|n| n["path"].as_str().map(String::from))
                        .collect();
                }
            }
            // the CLI
            35..=37 => {
                ctx.stats.requests.fetch_add(1, Relaxed);
                ctx.stats.cli.fetch_add(1, Relaxed);
                let json = rng.bool();
                let args: &[&str] = if json {
                    &["status", "--json"]
                } else {
                    &["status"]
                };
                match run_cli(&ctx.socket, args) {
                    Err(e) => ctx.violation(e),
                    Ok(out) if json => {
                        if !serde_json::from_str::<Value>(&out).is_ok_and(|v| v["nodes"].is_array())
                        {
                            ctx.violation(format!("`status --json` printed {out:?}"));
                        }
                    }
                    Ok(out) if !out.contains("(root)") => {
                        ctx.violation(format!("`status` printed {out:?}"))
                    }
                    Ok(_) => {}
                }
            }
            // start / stop / restart of a random node
            38..=54 => {
                let op = [
                    "start", "start", "start", "stop", "stop", "restart", "restart",
                ][rng.usize(..7)];
                let path = if paths.is_empty() || rng.u8(0..10) == 0 {
                    ODD_PATHS[rng.usize(..ODD_PATHS.len())].to_string()
                } else {
                    let p = &paths[rng.usize(..paths.len())];
                    // Sometimes the whole pool rather than one replica.
                    if rng.bool() {
                        p.split('#').next().unwrap_or(p).to_string()
                    } else {
                        p.clone()
                    }
                };
                ctx.stats.requests.fetch_add(1, Relaxed);
                ctx.stats.verb_requests.fetch_add(1, Relaxed);
                let begin = Instant::now();
                match one_request(&ctx.socket, &json!({"cmd": op, "path": path})) {
                    Err(e) => ctx.violation(format!("{op} {path}: {e}")),
                    Ok(r) if r["ok"] == true => {
                        // Every worker dies at its stop signal (a frozen one once arborist
                        // sends SIGCONT after it): nothing may need the SIGKILL of a deadline.
                        let killed: Vec<&Value> = r["report"]
                            .as_array()
                            .map(|v| v.iter().filter(|rec| rec["outcome"] == "killed").collect())
                            .unwrap_or_default();
                        if !killed.is_empty() {
                            ctx.violation(format!("{op} {path}: killed at a deadline: {killed:?}"));
                        }
                    }
                    Ok(r) if r["error"].is_string() => ctx.refused(&r),
                    Ok(r) => ctx.violation(format!("{op} {path}: answered {r}")),
                }
                max_into(&ctx.stats.verb_max_ms, begin.elapsed());
            }
            // a malformed line on the long-lived connection, which must stay open
            55..=69 => {
                ctx.stats.requests.fetch_add(1, Relaxed);
                ctx.stats.malformed.fetch_add(1, Relaxed);
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Client::open(&ctx.socket) {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            ctx.violation(e);
                            continue;
                        }
                    },
                };
                let reply = if rng.u8(0..8) == 0 {
                    c.write_raw(b"\xff\xfe\x00 not utf-8\n")
                        .map_err(|e| e.to_string())
                        .and_then(|_| c.read_reply())
                } else {
                    c.send(MALFORMED[rng.usize(..MALFORMED.len())])
                };
                match reply {
                    Ok(r) if r["ok"] == false && r["error"].is_string() => {}
                    Ok(r) => ctx.violation(format!("a malformed line was answered {r}")),
                    Err(e) => {
                        conn = None;
                        ctx.violation(format!("malformed line: {e}"));
                    }
                }
            }
            // an oversized line: an error reply, then the daemon closes the connection
            70..=74 => {
                ctx.stats.requests.fetch_add(1, Relaxed);
                ctx.stats.oversized.fetch_add(1, Relaxed);
                let result = Client::open(&ctx.socket).and_then(|mut c| {
                    let size = rng.usize(65 * 1024..200 * 1024);
                    let mut big = br#"{"cmd":"status","pad":""#.to_vec();
                    big.resize(size, b'x');
                    big.extend_from_slice(b"\"}\n");
                    // The daemon may close before it has read it all.
                    let _ = c.write_raw(&big);
                    let r = c.read_reply()?;
                    let closed = c.closed_by_peer();
                    Ok((r, closed))
                });
                match result {
                    Ok((r, true))
                        if r["ok"] == false
                            && r["error"].as_str().is_some_and(|e| e.contains("too large")) => {}
                    Ok((r, closed)) => ctx.violation(format!(
                        "an oversized line: reply {r}, connection closed: {closed}"
                    )),
                    Err(e) => ctx.violation(format!("an oversized line: {e}")),
                }
            }
            // a connection dropped mid-request, or right after a request without reading
            75..=87 => {
                ctx.stats.requests.fetch_add(1, Relaxed);
                ctx.stats.dropped.fetch_add(1, Relaxed);
                let line = match rng.u8(0..3) {
                    0 => r#"{"cmd":"status"}"#.to_string(),
                    1 => {
                        let p = paths
                            .get(rng.usize(..paths.len().max(1)))
                            .cloned()
                            .unwrap_or_else(|| "web".into());
                        json!({"cmd": "restart", "path": p}).to_string() + "\n"
                    }
                    _ => r#"{"cmd":"start","path":"web"}"#.to_string() + "\n",
                };
                let cut = rng.usize(0..=line.len());
                match UnixStream::connect(&ctx.socket) {
                    Ok(mut s) => {
                        let _ = s.write_all(&line.as_bytes()[..cut]);
                        drop(s);
                    }
                    Err(e) => ctx.violation(format!("connect: {e}")),
                }
            }
            // an idle connection, held for a while (each thread keeps up to 4)
            88..=90 => {
                ctx.stats.idle.fetch_add(1, Relaxed);
                match UnixStream::connect(&ctx.socket) {
                    Ok(s) => {
                        idle.push(s);
                        if idle.len() > 4 {
                            idle.remove(rng.usize(..idle.len()));
                        }
                    }
                    Err(e) => ctx.violation(format!("connect: {e}")),
                }
            }
            // status on a fresh connection
            _ => {
                let mut fresh = None;
                ctx.status(&mut fresh);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Settling

/// Brings the tree back to `expected` after the chaos: nodes an operator stopped are started
/// again, until every expected worker is up, no other worker exists, every group is ready
/// and the daemon says `running`. Returns the status, or what was still wrong at the bound.
fn settle(socket: &Path, expected: &BTreeSet<String>, limit: Duration) -> Result<Value, String> {
    let start = Instant::now();
    let mut last_start: BTreeMap<String, Instant> = BTreeMap::new();
    let mut noted = false;
    loop {
        let s = status_of(socket)?;
        let mut wrong = vec![];
        if s["daemon"]["state"] != "running" {
            wrong.push(format!("daemon state {}", s["daemon"]["state"]));
        }
        let mut seen = BTreeSet::new();
        for n in node_list(&s) {
            let path = n["path"].as_str().unwrap_or("?").to_string();
            let state = n["state"].as_str().unwrap_or("?");
            if n["kind"] == "worker" {
                if !expected.contains(&path) {
                    wrong.push(format!("unexpected worker {path} ({state})"));
                }
                seen.insert(path.clone());
                if !is_up(n) {
                    wrong.push(format!("{path} is {state}"));
                }
            } else if state != "ready" {
                wrong.push(format!("group {path} is {state}"));
            }
            let due = last_start
                .get(&path)
                .map_or(true, |t| t.elapsed() > Duration::from_secs(1));
            // An operator's stop holds a node until `start`.
            if (state == "stopped" || state == "failed") && due {
                let _ = one_request(socket, &json!({"cmd": "start", "path": path}));
                last_start.insert(path, Instant::now());
            } else if state == "backoff"
                && n["next_restart_in_ms"].as_u64().unwrap_or(0) > 2000
                && due
            {
                // `fragile`, failed many times, waits out a group backoff of up to 30 s (the
                // default); an operator's stop and start skips it, as it would for a person.
                let _ = one_request(socket, &json!({"cmd": "stop", "path": path}));
                let _ = one_request(socket, &json!({"cmd": "start", "path": path}));
                last_start.insert(path, Instant::now());
            }
        }
        for missing in expected.difference(&seen) {
            wrong.push(format!("{missing} is missing"));
        }
        if wrong.is_empty() {
            return Ok(s);
        }
        if !noted && start.elapsed() > Duration::from_secs(5) {
            noted = true;
            eprintln!(
                "chaos soak: still settling after 5s: {}",
                wrong
                    .iter()
                    .take(20)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        if start.elapsed() > limit {
            return Err(format!(
                "not settled within {limit:?}: {}",
                wrong.into_iter().take(20).collect::<Vec<_>>().join("; ")
            ));
        }
        std::thread::sleep(Duration::from_millis(100)); // poll interval of a bounded wait
    }
}

/// Settles the tree, then waits (bounded) until /proc agrees with it, and checks that the
/// workers are not restarting any more. Returns the final status and the /proc figures.
fn settle_and_check(
    socket: &Path,
    arb: i32,
    tag: &str,
    expected: &BTreeSet<String>,
) -> Result<(Value, ProcFacts, Duration), String> {
    let begin = Instant::now();
    settle(socket, expected, Duration::from_secs(60))?;
    let settled_in = begin.elapsed();
    let start = Instant::now();
    let (s, facts) = loop {
        let s = status_of(socket)?;
        match check_processes(arb, &s, tag) {
            Ok(facts) => break (s, facts),
            Err(e) if start.elapsed() > Duration::from_secs(15) => {
                return Err(format!("/proc disagrees with status after 15s:\n  {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)), // poll of a bounded wait
        }
    };
    let again = status_of(socket)?;
    if up_workers(&again) != up_workers(&s) || up_workers(&s).len() != expected.len() {
        return Err("workers still change after settling".into());
    }
    Ok((again, facts, settled_in))
}

// ---------------------------------------------------------------------------------------
// The test

/// What one run of the actors produced.
struct Chaos {
    took: Duration,
    stats: Stats,
    violations: Vec<String>,
    refusals: BTreeMap<String, u64>,
    status_us: Vec<u64>,
    samples: Vec<(u64, u64, usize)>,
}

impl Chaos {
    fn failures(&self, phase: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .violations
            .iter()
            .map(|v| format!("{phase}: {v}"))
            .collect();
        let errors = self.stats.errors.load(Relaxed) as usize;
        if errors > out.len() {
            out.push(format!("{phase}: ... {} more failures", errors - out.len()));
        }
        out
    }
}

/// Runs the actors for `duration`: a killer, a reloader, three control-socket hammers and a
/// sampler of arborist's RSS and descriptors.
fn run_chaos(
    arb: &Arborist,
    fx: &Fixture,
    tag: &str,
    duration: Duration,
    mut rng: fastrand::Rng,
) -> Chaos {
    let ctx = Ctx {
        arb,
        pid: arb.pid(),
        socket: ctl::sock(fx),
        config: fx.config(),
        tag: tag.to_string(),
        until: Instant::now() + duration,
        stats: Stats::default(),
        violations: Mutex::new(vec![]),
        refusals: Mutex::new(BTreeMap::new()),
        status_us: Mutex::new(vec![]),
        samples: Mutex::new(vec![]),
    };
    let begin = Instant::now();
    std::thread::scope(|scope| {
        let ctx = &ctx;
        let killer_rng = rng.fork();
        scope.spawn(move || killer(ctx, killer_rng));
        let reload_rng = rng.fork();
        scope.spawn(move || reloader(ctx, reload_rng));
        for _ in 0..3 {
            let hammer_rng = rng.fork();
            scope.spawn(move || hammer(ctx, hammer_rng));
        }
        scope.spawn(move || sampler(ctx, begin));
        scope.spawn(move || auditor(ctx));
    });
    Chaos {
        took: begin.elapsed(),
        stats: ctx.stats,
        violations: ctx.violations.into_inner().unwrap(),
        refusals: ctx.refusals.into_inner().unwrap(),
        status_us: ctx.status_us.into_inner().unwrap(),
        samples: ctx.samples.into_inner().unwrap(),
    }
}

fn env_u64(key: &str) -> Option<u64> {
    let v = std::env::var(key).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a number")),
    )
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[test]
fn chaos_soak_leaves_a_healthy_tree_and_no_leaks() {
    let secs = env_u64("ARBORIST_CHAOS_SECS").unwrap_or(DEFAULT_SECS);
    let seed = env_u64("ARBORIST_CHAOS_SEED").unwrap_or_else(|| fastrand::u64(..));
    eprintln!(
        "chaos soak: seed {seed} (ARBORIST_CHAOS_SEED={seed} replays it), {secs}s of chaos on {WORKERS} workers"
    );
    let test_begin = Instant::now();
    let load_before = loadavg();
    let tag = format!("chaos-{}-{seed}", std::process::id());
    let base = base_shape();
    let expected = worker_paths(&base);
    assert_eq!(expected.len(), WORKERS as usize);
    let base_text = render(&base, &tag);

    let fx = Fixture::new(&base_text);
    let mut arb = fx.run(&[]);
    let pid = arb.pid();
    let socket = ctl::sock(&fx);
    ctl::wait_serving(&fx);

    // The tree is up: the figures of a cold start, for the report.
    let (_, facts0, startup) = settle_and_check(&socket, pid, &tag, &expected)
        .unwrap_or_else(|e| panic!("the tree did not come up: {e}\nlog:\n{}", arb.log()));
    let fd_cold = quiet_fd_count(pid);
    let rss_cold = rss_kib(pid);
    eprintln!(
        "chaos soak: {WORKERS} workers up in {startup:.1?} ({} processes); fd {fd_cold}, RSS {rss_cold} KiB",
        facts0.tagged
    );

    let mut rng = fastrand::Rng::with_seed(seed);
    let mut failures: Vec<String> = vec![];

    // Warm-up: a few seconds of the same chaos, then back to the known config. The baseline is
    // taken after it, so that what is compared is what the chaos leaves behind, not what the
    // first reload, the first hundred connections or the first burst of restarts allocate
    // once (allocator arenas of the daemon's threads, buffers that keep their capacity).
    let warm = run_chaos(
        &arb,
        &fx,
        &tag,
        Duration::from_secs(WARM_UP_SECS),
        rng.fork(),
    );
    failures.extend(warm.failures("warm-up"));
    write_config(&fx.config(), &base_text);
    if let Err(e) = one_request(&socket, &json!({"cmd": "reload"}))
        .and_then(|r| (r["ok"] == true).then_some(()).ok_or(format!("{r}")))
    {
        panic!(
            "the reload after the warm-up failed: {e}\nlog:\n{}",
            arb.log()
        );
    }
    settle_and_check(&socket, pid, &tag, &expected).unwrap_or_else(|e| {
        panic!(
            "the tree did not settle after the warm-up: {e}\nlog:\n{}",
            arb.log()
        )
    });
    let fd_before = quiet_fd_count(pid);
    let fds_before = fd_targets(pid);
    let rss_before = rss_kib(pid);
    eprintln!("chaos soak: after a {WARM_UP_SECS}s warm-up: fd {fd_before}, RSS {rss_before} KiB");

    let chaos = run_chaos(&arb, &fx, &tag, Duration::from_secs(secs), rng.fork());
    let chaos_took = chaos.took;
    failures.extend(chaos.failures("chaos"));
    let st = &chaos.stats;
    let samples = &chaos.samples;

    // Settle on the known config.
    let alive_after_chaos = alive(pid);
    if !alive_after_chaos {
        failures.push("arborist died during the chaos".into());
    }
    write_config(&fx.config(), &base_text);
    let final_reload = one_request(&socket, &json!({"cmd": "reload"}));
    match &final_reload {
        Ok(r) if r["ok"] == true => {}
        other => failures.push(format!("the final reload failed: {other:?}")),
    }
    let answer_begin = Instant::now();
    let answered = status_of(&socket);
    let answer_took = answer_begin.elapsed();
    if let Err(e) = &answered {
        failures.push(format!("no status after the chaos: {e}"));
    } else if answer_took > Duration::from_secs(2) {
        failures.push(format!("status took {answer_took:?} after the chaos"));
    }
    let settled = settle_and_check(&socket, pid, &tag, &expected);
    let (final_status, facts, settled_in) = match settled {
        Ok(x) => (Some(x.0), x.1, Some(x.2)),
        Err(e) => {
            failures.push(format!("after the chaos: {e}"));
            (None, ProcFacts::default(), None)
        }
    };
    let zombies = children_of(pid).iter().filter(|(_, s)| *s == 'Z').count();

    // Descriptors: the daemon may still be closing connections it has just seen end.
    let fd_start = Instant::now();
    let mut fd_after = quiet_fd_count(pid);
    while fd_after > fd_before + FD_SLACK && fd_start.elapsed() < Duration::from_secs(10) {
        fd_after = quiet_fd_count(pid);
    }
    let fds_after = fd_targets(pid);
    if fd_after > fd_before + FD_SLACK {
        failures.push(format!(
            "descriptors: {fd_before} before, {fd_after} after (slack {FD_SLACK}); \
             before {fds_before:?}, after {fds_after:?}"
        ));
    }
    let rss_after = rss_kib(pid);
    let growth = (rss_after as f64 - rss_before as f64) * 100.0 / rss_before.max(1) as f64;
    if growth >= RSS_GROWTH_LIMIT {
        failures.push(format!(
            "RSS grew by {growth:.1} % ({rss_before} KiB -> {rss_after} KiB)"
        ));
    }
    let restarts: u64 = final_status
        .as_ref()
        .map(|s| {
            node_list(s)
                .iter()
                .filter(|n| n["kind"] == "worker")
                .filter_map(|n| n["restarts"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    let worker_pids: Vec<i32> = final_status
        .as_ref()
        .map(|s| up_workers(s).into_values().collect())
        .unwrap_or_default();

    // SIGTERM: exit 0, nothing left.
    let (code, shutdown) = if alive(pid) {
        arb.stop_with(Signal::SIGTERM, Duration::from_secs(40))
    } else {
        (-1, Duration::ZERO)
    };
    if code != 0 {
        failures.push(format!("SIGTERM: exit code {code}, wanted 0"));
    }
    let left: Vec<i32> = worker_pids.iter().copied().filter(|&p| alive(p)).collect();
    let left_tagged = tagged_processes(&tag);
    if !left.is_empty() || !left_tagged.is_empty() {
        failures.push(format!(
            "alive after the shutdown: workers {left:?}, processes of this run {left_tagged:?}"
        ));
    }
    let log = arb.log();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let target = target.parent().unwrap_or(target);
    let log_file = target.join("chaos-arborist.log");
    let _ = std::fs::write(&log_file, &log);
    let panics = log.matches("panicked").count();
    if panics > 0 {
        failures.push(format!("arborist logged {panics} panics"));
    }
    let (warns, errs) = log.lines().fold((0, 0), |(w, e), l| {
        (
            w + usize::from(l.contains(" WARN ")),
            e + usize::from(l.contains(" ERROR ")),
        )
    });

    // The report.
    let n = |a: &AtomicU64| a.load(Relaxed);
    let errors = n(&st.errors);
    let mut lat = chaos.status_us.clone();
    lat.sort_unstable();
    let refusals: Vec<String> = chaos
        .refusals
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let mut report = String::new();
    let _ = writeln!(report, "arborist chaos soak");
    let _ = writeln!(
        report,
        "  machine:   nproc {}, load average {load_before} at the start, {} at the end",
        nproc(),
        loadavg()
    );
    let _ = writeln!(
        report,
        "  seed:      {seed} (ARBORIST_CHAOS_SEED={seed} to replay)"
    );
    let _ = writeln!(
        report,
        "  duration:  {secs}s asked, {:.1}s of chaos after a {WARM_UP_SECS}s warm-up, {:.1}s in all; tree up in {startup:.2?}",
        chaos_took.as_secs_f64(),
        test_begin.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        report,
        "  tree:      {WORKERS} workers ({} processes), 3 groups + 2 pools at the root",
        facts0.tagged
    );
    let _ = writeln!(
        report,
        "  kills:     {} SIGKILL, {} SIGUSR2 (exit 3), {} SIGTERM, {} SIGTERM to a worker's child (exit 143), \
         {} SIGSTOP; {} skipped (pid no longer a worker)",
        n(&st.kills),
        n(&st.usr2),
        n(&st.sigterms),
        n(&st.member_kills),
        n(&st.sigstops),
        n(&st.kill_skipped)
    );
    let _ = writeln!(
        report,
        "  reloads:   {} valid, {} invalid ({} by SIGHUP, {} over the socket); slowest {} ms",
        n(&st.reloads_valid),
        n(&st.reloads_invalid),
        n(&st.reloads_sighup),
        n(&st.reloads_socket),
        n(&st.reload_max_ms)
    );
    let _ = writeln!(
        report,
        "  control:   {} requests: {} status, {} start/stop/restart ({} refused; slowest {} ms), \
         {} malformed, {} oversized, {} dropped mid-request, {} CLI; {} idle connections; errors {}",
        n(&st.requests),
        n(&st.status_requests),
        n(&st.verb_requests),
        n(&st.verb_refused),
        n(&st.verb_max_ms),
        n(&st.malformed),
        n(&st.oversized),
        n(&st.dropped),
        n(&st.cli),
        n(&st.idle),
        errors
    );
    let _ = writeln!(report, "  refusals:  {}", refusals.join(", "));
    let _ = writeln!(
        report,
        "  status:    latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.1?} after the chaos",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        answer_took
    );
    let _ = writeln!(
        report,
        "  settle:    {} after the last reload; {restarts} restarts shown by status",
        settled_in.map_or("NOT SETTLED".into(), |d| format!("every worker up {d:.2?}"))
    );
    let _ = writeln!(
        report,
        "  fd:        {fd_cold} when up, {fd_before} before the chaos (after the warm-up), {fd_after} after (slack {FD_SLACK})"
    );
    let _ = writeln!(
        report,
        "  RSS:       {rss_cold} KiB when up, {rss_before} KiB before the chaos (after the warm-up), \
         {rss_after} KiB after ({growth:+.1} %, limit {RSS_GROWTH_LIMIT} %)"
    );
    let _ = writeln!(
        report,
        "  samples:   RSS KiB / fds every 5 s of the chaos: {}",
        samples
            .iter()
            .map(|(t, r, f)| format!("{t}s {r}/{f}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        report,
        "  processes: {} zombies among arborist's children, {} strays, {} processes of the run after settling",
        zombies,
        facts.strays.len(),
        facts.tagged
    );
    let _ = writeln!(
        report,
        "  shutdown:  SIGTERM -> exit {code} in {:.2?}; {} workers and {} processes of the run left alive",
        shutdown,
        left.len(),
        left_tagged.len()
    );
    let _ = writeln!(
        report,
        "  log:       {} lines, {warns} WARN, {errs} ERROR, {panics} panics",
        log.lines().count()
    );
    let _ = writeln!(
        report,
        "  result:    {}",
        if failures.is_empty() {
            "PASS".to_string()
        } else {
            format!("FAIL ({} failures)", failures.len())
        }
    );
    for f in failures.iter().take(40) {
        let _ = writeln!(report, "    - {f}");
    }
    eprint!("{report}");
    let file = target.join("chaos-report.txt");
    if let Err(e) = std::fs::write(&file, &report) {
        eprintln!("cannot write {}: {e}", file.display());
    }
    assert!(
        failures.is_empty(),
        "the chaos soak failed (report in {}, arborist's log in {}):\n{}",
        file.display(),
        log_file.display(),
        failures.join("\n")
    );
}

/// The premise of the soak: the variants it calls valid pass `arborist check`, the ones it
/// calls invalid fail it, and the base tree has the advertised 200 workers.
#[test]
fn chaos_variants_are_valid_or_invalid_as_claimed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("variant.yaml");
    let mut rng = fastrand::Rng::with_seed(7);
    let check = |text: &str| {
        write_config(&file, text);
        let out = Command::new(BIN)
            .arg("check")
            .arg(&file)
            .output()
            .expect("run arborist check");
        (
            exit_code(out.status),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = check(&render(&base_shape(), "t"));
    assert_eq!(code, 0, "{out}");
    for _ in 0..20 {
        let text = render(&random_valid(&mut rng), "t");
        let (code, out) = check(&text);
        assert_eq!(code, 0, "{out}\n{text}");
        let (text, what) = random_invalid(&mut rng, "t");
        let (code, out) = check(&text);
        assert_eq!(code, 2, "a config with a {what} passed:\n{out}\n{text}");
    }
}

/// The leak the soak found, in isolation: every reload that replaces a pool's workers (here a
/// changed `env`) must not leave memory behind. Each such reload used to keep the old
/// workers' slots in the group, about 400 bytes each, for as long as the group ran, which
/// for the root is forever: 200 reloads of a 50-replica pool grew RSS by 66 %. Fixed: a
/// removed slot's index is taken by the next slot the group adds, and the table ends at its
/// last live slot (`Group::release_removed`).
#[test]
fn reloads_that_replace_workers_do_not_grow_memory() {
    let config = |generation: u32| {
        format!(
            "shutdown_timeout: 5s\nchildren:\n  p:\n    replicas: 50\n    env: {{ GEN: \"{generation}\" }}\n    command: [\"sleep\", \"100000\"]\n"
        )
    };
    let fx = Fixture::new(&config(0));
    let mut arb = fx.run(&["--log-level", "warn"]);
    ctl::wait_serving(&fx);
    let socket = ctl::sock(&fx);
    let expected: BTreeSet<String> = (0..50).map(|i| format!("p#{i}")).collect();
    let reload = |generation: u32| {
        write_config(&fx.config(), &config(generation));
        let r = one_request(&socket, &json!({"cmd": "reload"}))
            .unwrap_or_else(|e| panic!("reload {generation}: {e}"));
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(
            r["diff"]["changed"].as_array().map(Vec::len),
            Some(1),
            "{r}"
        );
    };
    // Warm-up, so that one-time allocations are in the baseline.
    for generation in 1..=20 {
        reload(generation);
    }
    settle(&socket, &expected, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let before = rss_kib(arb.pid());
    for generation in 21..=220 {
        reload(generation);
    }
    settle(&socket, &expected, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let after = rss_kib(arb.pid());
    let growth = (after as f64 - before as f64) * 100.0 / before as f64;
    eprintln!("200 reloads replacing 50 workers: RSS {before} KiB -> {after} KiB ({growth:+.1} %)");
    assert!(
        growth < RSS_GROWTH_LIMIT,
        "RSS grew by {growth:.1} % over 200 reloads ({before} KiB -> {after} KiB)"
    );
    ctl::stop_cleanly(&mut arb);
}

/// The stale status the soak found, in isolation: a worker whose process ends while its group
/// is busy (here: stopping a slow sibling), and which an operator stops before the group has
/// handled that exit. The stop finds the worker's task gone and answers "was not running", but
/// the group left the node's status as it was: `running`, with the dead pid, for good (it is
/// held, not restarted, whatever its `restart`). Fixed: the stop marks it `stopped`.
#[test]
fn a_worker_stopped_after_its_unhandled_exit_is_not_shown_running() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 10s
children:
  slow:
    shell: "trap 'sleep 3; exit 0' TERM; while :; do sleep 0.1; done"
    stop_timeout: 8s
  w:
    command: ["sleep", "100000"]
    restart: always
"#,
    );
    let mut arb = fx.run(&[]);
    ctl::wait_serving(&fx);
    let w = ctl::wait_up(&fx, "w");
    ctl::wait_up(&fx, "slow");

    // The root group is busy for 3 s stopping `slow`.
    let mut slow_stop = ctl::Conn::connect(&ctl::sock(&fx));
    slow_stop
        .write_raw(b"{\"cmd\":\"stop\",\"path\":\"slow\"}\n")
        .unwrap();
    ctl::wait_state(&fx, "slow", "stopping");
    // `w` dies meanwhile; its task reports the exit (logged) and ends.
    kill(Pid::from_raw(w), Signal::SIGKILL).unwrap();
    arb.wait_log("exited: signal SIGKILL");
    // The operator's stop reaches the group before the exit does (requests come first).
    let r = ctl::request(&fx, &json!({"cmd": "stop", "path": "w"}));
    assert_eq!(r["ok"], true, "{r}");
    let r: Value = serde_json::from_str(&slow_stop.read_line().unwrap().unwrap()).unwrap();
    assert_eq!(r["ok"], true, "{r}");

    let s = ctl::status(&fx);
    let node = ctl::node(&s, "w").unwrap_or_else(|| panic!("no w in {s}"));
    assert!(!alive(w));
    assert_eq!(
        node["state"], "stopped",
        "w's process {w} is gone and an operator stopped it, yet status shows {node}"
    );
    assert!(node["pid"].is_null(), "{node}");
    ctl::stop_cleanly(&mut arb);
}
