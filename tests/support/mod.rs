//! Test harness: runs the real `arborist` binary on a config written into a temp dir, with
//! bounded waits for conditions (log lines, marker files, process states in /proc) and
//! cleanup on drop. No test sleeps to synchronise; every wait has a deadline.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_arborist");

/// Generous default bound for conditions that normally take milliseconds.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `cond` until it returns Some, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(pause); // polling interval of a bounded wait, not synchronisation
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    wait_for(what, limit, || cond().then_some(()))
}

/// A process state letter from /proc/PID/stat, None when the process does not exist.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat.
pub fn proc_stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3).map(String::from)
}

/// Alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

pub fn parent_of(pid: i32) -> Option<i32> {
    proc_stat_field(pid, 4)?.parse().ok()
}

/// Every process whose parent is `pid`, with its state.
pub fn children_of(pid: i32) -> Vec<(i32, char)> {
    let mut out = vec![];
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        {
            if parent_of(p) == Some(pid) {
                if let Some(s) = proc_state(p) {
                    out.push((p, s));
                }
            }
        }
    }
    out
}

/// Every process in process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = vec![];
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        {
            if proc_stat_field(p, 5).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
                out.push(p);
            }
        }
    }
    out
}

/// A temp dir with a config in it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(config: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config.replace("$DIR", dir.path().to_str().unwrap());
        fs::write(dir.path().join("arborist.yaml"), text).expect("write config");
        Fixture { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config(&self) -> PathBuf {
        self.path("arborist.yaml")
    }

    pub fn read(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.path(name)).ok()
    }

    /// Waits until file `name` exists and is non-empty; returns its trimmed content.
    pub fn wait_file(&self, name: &str) -> String {
        self.wait_file_within(name, WAIT)
    }

    pub fn wait_file_within(&self, name: &str, limit: Duration) -> String {
        wait_for(&format!("file {name}"), limit, || {
            self.read(name)
                .filter(|s| s.ends_with('\n') || (!s.is_empty() && !name.ends_with(".log")))
                .map(|s| s.trim().to_string())
        })
    }

    /// Waits for a file holding a PID.
    /// The pids a worker appended to `$DIR/<name>`, one a line (empty when it does not exist).
    pub fn pids(&self, name: &str) -> Vec<i32> {
        self.read(name)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn wait_pid(&self, name: &str) -> i32 {
        let text = self.wait_file(name);
        text.lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} holds no pid: {text:?}"))
    }

    /// Runs `arborist check` on the fixture's config.
    pub fn check(&self, extra: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("check").args(extra).arg(self.config());
        cmd.output().expect("run arborist check")
    }

    /// Starts `arborist run` on the fixture's config.
    pub fn run(&self, extra: &[&str]) -> Arborist {
        Arborist::start(&self.config(), extra, self.dir.path())
    }

    /// Starts `arborist run` with extra environment variables.
    pub fn run_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Arborist {
        Arborist::start_with_env(&self.config(), extra, self.dir.path(), env)
    }
}

/// A running `arborist run`. Its stderr (the log) is collected; killed on drop.
pub struct Arborist {
    pub child: Child,
    log: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl Arborist {
    pub fn start(config: &Path, extra: &[&str], cwd: &Path) -> Arborist {
        Self::start_with_env(config, extra, cwd, &[])
    }

    pub fn start_with_env(
        config: &Path,
        extra: &[&str],
        cwd: &Path,
        env: &[(&str, &str)],
    ) -> Arborist {
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg(config)
            .arg("--socket")
            .arg(cwd.join("arborist.sock"))
            .args(extra)
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so the test's cleanup cannot hit the test runner.
            .process_group(0);
        let mut child = cmd.spawn().expect("spawn arborist");
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        for (pipe, sink) in [
            (
                Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
                log.clone(),
            ),
            (Box::new(child.stdout.take().unwrap()), stdout.clone()),
        ] {
            std::thread::spawn(move || {
                let reader = BufReader::new(pipe);
                for line in reader.split(b'\n').map_while(Result::ok) {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&String::from_utf8_lossy(&line));
                    s.push('\n');
                }
            });
        }
        Arborist {
            child,
            log,
            stdout,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything arborist logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        self.wait_log_within(needle, WAIT)
    }

    pub fn wait_log_within(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            if self.log().contains(needle) {
                return;
            }
            if start.elapsed() > limit {
                panic!(
                    "timed out after {limit:?} waiting for log {needle:?}; log so far:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Counts occurrences of `needle` in the log.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal arborist");
    }

    /// Waits for arborist to exit; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                // Let the reader threads drain what is left in the pipes.
                std::thread::sleep(Duration::from_millis(20));
                return status;
            }
            if start.elapsed() > limit {
                panic!(
                    "arborist did not exit within {limit:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `sig` and waits for the exit; returns (exit code, time taken).
    pub fn stop_with(&mut self, sig: Signal, limit: Duration) -> (i32, Duration) {
        let start = Instant::now();
        self.signal(sig);
        let status = self.wait_exit(limit);
        (exit_code(status), start.elapsed())
    }
}

pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

impl Drop for Arborist {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The JSON objects of a `--log-format json` log, one per line.
pub fn events(log: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    log.lines()
        .filter_map(|l| match serde_json::from_str(l) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            _ => None,
        })
        .collect()
}

/// A string field of a JSON log event ("" when absent).
pub fn field<'a>(e: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> &'a str {
    e.get(key)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
}

/// The one way a test may stop early: its prerequisite (root, a PID namespace, a writable
/// cgroup v2) is missing AND the caller asked to skip such tests with
/// `ARBORIST_SKIP_UNAVAILABLE=1`. Without that opt-out a missing prerequisite fails the test
/// with the reason, so nothing passes without having run (CI and this project's machines are
/// root and have all three).
pub fn prerequisite(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var_os("ARBORIST_SKIP_UNAVAILABLE").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED (ARBORIST_SKIP_UNAVAILABLE=1): {what}");
        return false;
    }
    panic!("{what}; set ARBORIST_SKIP_UNAVAILABLE=1 to skip the tests that need it");
}

/// Whether cgroup mode can run here (root, a writable cgroup v2 hierarchy); see
/// [`prerequisite`].
pub fn cgroup_mode_available() -> bool {
    let fx = Fixture::new("ownership: cgroup\nchildren:\n  probe:\n    shell: \"true\"\n");
    let out = std::process::Command::new(BIN)
        .args(["run", fx.config().to_str().unwrap(), "--socket"])
        .arg(fx.path("probe.sock"))
        .output()
        .expect("run arborist");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let missing = out.status.code() == Some(2) && stderr.contains("cgroup mode is not available");
    prerequisite(
        !missing,
        &format!("cgroup mode is not available here (needs root and a writable cgroup v2 hierarchy): {stderr}"),
    )
}
