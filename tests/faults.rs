//! Faults (issue 6, point 2): what arborist does when the machine or a worker misbehaves.
//! Spawn failures (RLIMIT_NPROC, a missing binary, no exec permission, a bad cwd), descriptor
//! exhaustion, a worker flooding its stdout, a log output nobody reads, a worker that closes
//! its stdout, one with 500 children, a SIGSTOPped worker at shutdown. docs/faults.md says,
//! per fault, what arborist does and why; each section names its test here.

mod ctl;
mod spawned;
mod support;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use spawned::Spawned;
use support::*;

/// Upper bound for a whole shutdown in these tests: generous, so a slow machine passes, and
/// far below what a blocked or starved arborist would take (forever).
const LIMIT: Duration = Duration::from_secs(10);

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// The messages of the events about `path` in a JSON log.
fn messages(log: &str, path: &str) -> Vec<String> {
    events(log)
        .iter()
        .filter(|e| field(e, "path") == path)
        .map(|e| field(e, "message").to_string())
        .collect()
}

/// The delays of the "retrying in N" lines about `path`, in milliseconds.
fn retry_delays(log: &str, path: &str) -> Vec<u64> {
    messages(log, path)
        .iter()
        .filter_map(|m| m.strip_prefix("retrying in "))
        .map(|d| match d.strip_suffix("ms") {
            Some(ms) => ms.parse().unwrap_or(u64::MAX),
            None => u64::MAX,
        })
        .collect()
}

/// The JSON shutdown report `report.json` in the fixture's dir.
fn report(fx: &Fixture) -> Value {
    let text = fx
        .read("report.json")
        .unwrap_or_else(|| panic!("no shutdown report in {}", fx.dir.path().display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad report JSON ({e}):\n{text}"))
}

fn report_node<'a>(report: &'a Value, path: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["path"] == path)
        .unwrap_or_else(|| panic!("no node {path:?} in report:\n{report:#}"))
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

/// `arborist run` on the fixture's config with the harness's socket and a JSON report.
fn run_command(fx: &Fixture, extra: &[&str]) -> Command {
    let mut cmd = spawned::arborist();
    cmd.arg("run")
        .arg(fx.config())
        .arg("--socket")
        .arg(ctl::sock(fx))
        .arg("--shutdown-report")
        .arg(fx.path("report.json"))
        .args(extra)
        .current_dir(fx.dir.path());
    cmd
}

/// CPU time (user + system) that `pid` has used, in milliseconds.
fn cpu_ms(pid: i32) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks: u64 = [14, 15]
        .iter()
        .map(|&n| {
            proc_stat_field(pid, n)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no field {n} in /proc/{pid}/stat"))
        })
        .sum();
    ticks * 1000 / hz
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
fn status_kib(pid: i32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

/// Zombie children of `pid`.
fn zombies_of(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|&(_, s)| s == 'Z')
        .map(|(p, _)| p)
        .collect()
}

/// Whether `pid` still exists as a member of process group `pgid` (a reused pid in another
/// group does not count; a zombie does).
fn still_in_group(pid: i32, pgid: i32) -> bool {
    proc_state(pid).is_some()
        && proc_stat_field(pid, 5).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
}

// ---------------------------------------------------------------------------------------
// 1. Spawn failures
// ---------------------------------------------------------------------------------------

#[test]
fn spawn_failures_are_reported_retried_with_backoff_and_never_counted_as_restarts() {
    // A root group that fails at its second restart, and restarts everyone with it
    // (one_for_all): if a spawn failure counted as a restart, the steady sibling would be
    // restarted and the tree would fail within milliseconds.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
strategy: one_for_all
max_restarts: 1
restart_window: 60s
children:
  steady:
    shell: "echo $$ >> $DIR/steady.pids; exec sleep 1000"
  ghost:
    command: ["/nonexistent/bin/ghost"]
    backoff: { initial: 20ms, max: 80ms, jitter: 0 }
  unknown:
    command: ["no-such-program-arborist-faults"]
    backoff: { initial: 20ms, max: 80ms, jitter: 0 }
  noexec:
    command: ["$DIR/noexec.sh"]
    backoff: { initial: 20ms, max: 80ms, jitter: 0 }
  badcwd:
    command: ["sleep", "1000"]
    cwd: $DIR/no-such-dir
    backoff: { initial: 20ms, max: 80ms, jitter: 0 }
"#,
    );
    let script = fx.path("noexec.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut arb = fx.run(&[
        "--log-format",
        "json",
        "--shutdown-report",
        fx.path("report.json").to_str().unwrap(),
    ]);
    let failing = ["ghost", "unknown", "noexec", "badcwd"];
    wait_until("5 retries of every failing worker", WAIT, || {
        let log = arb.log();
        failing.iter().all(|p| retry_delays(&log, p).len() >= 5)
    });
    let steady = fx.wait_pid("steady.pids");
    let log = arb.log();
    let expect = [
        (
            "ghost",
            "spawn failed: /nonexistent/bin/ghost: No such file or directory (os error 2)",
        ),
        (
            "unknown",
            "spawn failed: no-such-program-arborist-faults: No such file or directory (os error 2)",
        ),
        ("noexec", "Permission denied (os error 13)"),
        (
            "badcwd",
            "spawn failed: sleep: changing to its working directory: No such file or directory (os error 2)",
        ),
    ];
    for (path, error) in expect {
        let m = messages(&log, path);
        assert!(
            m.iter()
                .any(|l| l.starts_with("spawn failed: ") && l.contains(error)),
            "{path}: no {error:?} in {m:#?}"
        );
        // Backoff, not a hot loop: 20ms, 40ms, 80ms, then the 80ms maximum.
        let delays = retry_delays(&log, path);
        assert_eq!(delays[..5], [20, 40, 80, 80, 80], "{path}: {m:#?}");
        assert!(
            !m.iter().any(|l| l.starts_with("restarting in")),
            "{path}: a spawn failure was handled as a restart: {m:#?}"
        );
    }
    assert!(
        !log.contains("restart intensity exceeded"),
        "spawn failures counted toward restart intensity:\n{log}"
    );
    assert!(arb.child.try_wait().unwrap().is_none(), "log:\n{log}");
    assert_eq!(
        fx.read("steady.pids").unwrap().lines().count(),
        1,
        "the steady sibling was restarted"
    );
    assert!(alive(steady));
    let (code, _) = arb.stop_with(Signal::SIGTERM, LIMIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
    let r = report(&fx);
    assert_eq!(report_node(&r, "steady")["outcome"], "met", "{r:#}");
    for path in failing {
        assert_eq!(report_node(&r, path)["outcome"], "not_running", "{r:#}");
    }
}

/// Sets the soft RLIMIT_NPROC of process `pid` (the hard one stays). The change is made by a
/// short-lived helper running as `uid`, because changing another process's limits needs
/// CAP_SYS_RESOURCE unless both run as the same user (and root may lack it in a container).
fn set_nproc_soft(pid: i32, uid: Option<u32>, soft: u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max processes"))
        .and_then(|l| l.split_whitespace().nth(3))
        .map(|h| h.parse::<u64>().unwrap_or(libc::RLIM_INFINITY))
        .expect("Max processes");
    let limit = libc::rlimit {
        rlim_cur: soft.min(hard),
        rlim_max: hard,
    };
    let mut helper = Command::new("true");
    if let Some(uid) = uid {
        helper.uid(uid).gid(uid);
    }
    // SAFETY: prlimit is a plain system call, async-signal-safe; nothing is allocated.
    unsafe {
        helper.pre_exec(move || {
            if libc::prlimit(pid, libc::RLIMIT_NPROC, &limit, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = helper
        .status()
        .unwrap_or_else(|e| panic!("set RLIMIT_NPROC of {pid} to {soft}: {e}"));
    assert!(status.success(), "the prlimit helper failed: {status}");
}

#[test]
fn rlimit_nproc_reached_fails_spawns_with_eagain_which_are_retried_until_a_slot_frees() {
    // RLIMIT_NPROC is never enforced for root (the kernel exempts uid 0), so as root
    // arborist runs as a uid of its own that no other process uses: its count is then
    // exactly arborist's threads, the guardian and the workers. Otherwise it runs as the
    // test's user, whose other processes only make the limit of 1 more surely reached.
    let uid = (euid() == 0).then(|| 3_000_000 + std::process::id() % 1_000_000);
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
max_restarts: 1
restart_window: 60s
children:
  steady:
    shell: "echo $$ >> $DIR/steady.pids; exec sleep 1000"
  victim:
    shell: "echo $$ >> $DIR/victim.pids; exec sleep 1000"
    backoff: { initial: 50ms, max: 200ms, jitter: 0 }
"#,
    );
    let mut cmd = run_command(&fx, &["--log-format", "json"]);
    if let Some(uid) = uid {
        // The workers (running as that uid too) write their markers here.
        std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        cmd.uid(uid).gid(uid);
    }
    let mut arb = Spawned::start(cmd, fx.dir.path(), "arborist");
    let steady = fx.wait_pid("steady.pids");
    let victim = fx.wait_pid("victim.pids");
    arb.wait_log("tree ready", WAIT);

    // From now on every clone of arborist's fails with EAGAIN. The victim dies: one restart
    // (allowed by max_restarts: 1), then spawn failures, which must not count.
    set_nproc_soft(arb.pid(), uid, 1);
    nix::sys::signal::kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    wait_until("4 failed spawns of the victim", WAIT, || {
        retry_delays(&arb.log(), "victim").len() >= 4
    });
    let log = arb.log();
    let m = messages(&log, "victim");
    assert!(
        m.iter().any(|l| l.starts_with("spawn failed: ")
            && l.contains("Resource temporarily unavailable (os error 11)")),
        "{m:#?}"
    );
    // The restart after the kill started the backoff at 50ms; the failures continue it.
    assert_eq!(retry_delays(&log, "victim")[..3], [100, 200, 200], "{m:#?}");
    assert!(!log.contains("restart intensity exceeded"), "{log}");
    assert!(alive(steady), "the sibling died");
    assert_eq!(fx.read("steady.pids").unwrap().lines().count(), 1);
    assert!(arb.child.try_wait().unwrap().is_none(), "{log}");

    // A process slot again: the next retry starts the victim.
    set_nproc_soft(arb.pid(), uid, u64::MAX);
    wait_until("the victim to start again", WAIT, || {
        fx.read("victim.pids").unwrap_or_default().lines().count() == 2
    });
    arb.signal(Signal::SIGTERM);
    assert_eq!(arb.wait_exit(LIMIT), 0, "log:\n{}", arb.log());
    let r = report(&fx);
    assert_eq!(report_node(&r, "victim")["outcome"], "met", "{r:#}");
    assert_eq!(report_node(&r, "steady")["outcome"], "met", "{r:#}");
}

// ---------------------------------------------------------------------------------------
// 2. Descriptor exhaustion
// ---------------------------------------------------------------------------------------

#[test]
fn descriptor_exhaustion_fails_spawns_cleanly_the_control_socket_answers_and_shutdown_is_clean() {
    // 64 descriptors, soft and hard: arborist cannot raise it; each captured worker keeps two
    // pipe ends, so some 20 of the 41 workers fit.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  steady:
    command: ["sleep", "1000"]
  pool:
    replicas: 40
    command: ["sleep", "1000"]
    backoff: { initial: 50ms, max: 200ms }
"#,
    );
    let mut cmd = run_command(&fx, &["--log-format", "json"]);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut arb = Spawned::start(cmd, fx.dir.path(), "arborist");
    arb.wait_log("Too many open files (os error 24)", WAIT);
    let up = |s: &Value| -> Vec<String> {
        ctl::nodes(s)
            .iter()
            .filter(|n| n["kind"] == "worker" && n["state"] == "running")
            .map(|n| n["path"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    // Settled: every worker is running or waiting to retry, and the number running has not
    // changed for 1 s, some five retries of each waiting worker (backoff max 200ms). The
    // control socket answers all along, although the workers took every descriptor they
    // could.
    let mut last = (usize::MAX, Instant::now());
    let s = wait_for("the running workers to settle", LIMIT, || {
        let s = ctl::status(&fx);
        let settled = ctl::nodes(&s)
            .iter()
            .filter(|n| n["kind"] == "worker")
            .all(|n| n["state"] == "running" || n["state"] == "backoff");
        let count = up(&s).len();
        if !settled || count != last.0 {
            last = (count, Instant::now());
        }
        (settled && last.1.elapsed() > Duration::from_secs(1)).then_some(s)
    });
    let running = up(&s);
    assert!(
        running.len() >= 10 && running.len() < 41,
        "{} workers running with 64 descriptors: {s:#}",
        running.len()
    );
    assert!(running.iter().any(|p| p == "steady"), "{s:#}");
    eprintln!("{} of 41 workers run with 64 descriptors", running.len());
    let waiting = ctl::nodes(&s)
        .iter()
        .find(|n| n["state"] == "backoff")
        .unwrap_or_else(|| panic!("no worker in backoff: {s:#}"));
    assert!(
        waiting.to_string().contains("Too many open files"),
        "a worker in backoff does not say why: {waiting}"
    );
    // Stopping one worker frees its two pipe ends: a retry then fits.
    let pool_up = |s: &Value| up(s).iter().filter(|p| p.starts_with("pool")).count();
    let before = pool_up(&s);
    ctl::cli_ok(&fx, &["stop", "steady"]);
    wait_for("a pool retry to fit in the freed descriptors", WAIT, || {
        (pool_up(&ctl::status(&fx)) == before + 1).then_some(())
    });

    let log = arb.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("restart intensity exceeded"), "{log}");
    let start = Instant::now();
    arb.signal(Signal::SIGTERM);
    assert_eq!(arb.wait_exit(LIMIT), 0, "log:\n{}", arb.log());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let r = report(&fx);
    assert_eq!(num(&r, "killed"), 0, "{r:#}");
    assert_eq!(num(&r, "met"), before as u64 + 1, "{r:#}");
    assert!(!arb.log().contains("panicked"), "{}", arb.log());
    assert!(!fx.path("arborist.sock").exists(), "socket left behind");
}

// ---------------------------------------------------------------------------------------
// Output read by the test itself
// ---------------------------------------------------------------------------------------

/// `arborist run` with stdout and stderr on a pipe the test controls; its process group is
/// SIGKILLed on drop if it is still running.
struct Piped {
    child: Child,
    code: Option<i32>,
}

impl Piped {
    fn start(mut cmd: Command, output: OwnedFd) -> Piped {
        let out = output.try_clone().expect("dup");
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(output));
        Piped {
            child: cmd.spawn().expect("spawn arborist"),
            code: None,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM; returns the exit code and how long the exit took.
    fn terminate(&mut self, limit: Duration) -> (i32, Duration) {
        let start = Instant::now();
        nix::sys::signal::kill(Pid::from_raw(self.pid()), Signal::SIGTERM).expect("signal");
        let status = wait_for("arborist to exit", limit, || {
            self.child.try_wait().expect("try_wait")
        });
        let code = exit_code(status);
        self.code = Some(code);
        (code, start.elapsed())
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        if self.code.is_none() {
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A thread reading a pipe to its end: counts bytes and lines, keeps the lines `keep` wants.
#[derive(Clone)]
struct Drain {
    bytes: Arc<AtomicU64>,
    kept: Arc<Mutex<String>>,
    eof: Arc<AtomicBool>,
}

impl Drain {
    fn start(read: OwnedFd, keep: fn(&str) -> bool) -> Drain {
        let drain = Drain {
            bytes: Arc::new(AtomicU64::new(0)),
            kept: Arc::new(Mutex::new(String::new())),
            eof: Arc::new(AtomicBool::new(false)),
        };
        let d = drain.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::from(read));
            let mut line = Vec::new();
            while let Ok(n) = reader.read_until(b'\n', &mut line) {
                if n == 0 {
                    break;
                }
                d.bytes.fetch_add(n as u64, Ordering::Relaxed);
                let text = String::from_utf8_lossy(&line);
                if keep(&text) {
                    d.kept.lock().unwrap().push_str(&text);
                }
                line.clear();
            }
            d.eof.store(true, Ordering::SeqCst);
        });
        drain
    }

    fn text(&self) -> String {
        self.kept.lock().unwrap().clone()
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

/// The thread id of arborist's log writer.
fn log_writer_thread(pid: i32) -> i32 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "log-writer")
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
        .unwrap_or_else(|| panic!("arborist {pid} has no log-writer thread"))
}

/// Bytes waiting in a pipe (FIONREAD on its read end).
fn pipe_fill(read: &OwnedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(read.as_raw_fd(), libc::FIONREAD, &mut n) };
    n.max(0) as usize
}

// ---------------------------------------------------------------------------------------
// 3. A worker flooding its stdout
// ---------------------------------------------------------------------------------------

#[test]
fn a_worker_flooding_stdout_slows_neither_shutdown_nor_other_workers_and_memory_stays_bounded() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  flood:
    command: ["yes", "FLOOD"]
  ticker:
    shell: "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.02; done"
"#,
    );
    let (read, write) = pipe();
    let mut arb = Piped::start(run_command(&fx, &[]), write);
    // The test reads everything (as journald or `docker logs` would), keeping all but the
    // flood's own lines.
    let out = Drain::start(read, |l| !l.contains("FLOOD"));
    let ticks = |out: &Drain| out.text().matches("tick-").count();
    wait_until("the flood to be under way (20 MB logged)", LIMIT, || {
        out.bytes() > 20_000_000
    });
    let mut peak_rss = 0;
    let before = ticks(&out);
    // About 0.5 s of ticks in an idle tree; a starved ticker would need far longer.
    wait_until(
        "25 more ticker lines during the flood",
        Duration::from_secs(5),
        || {
            peak_rss = peak_rss.max(status_kib(arb.pid(), "VmRSS:"));
            ticks(&out) >= before + 25
        },
    );
    let hwm = status_kib(arb.pid(), "VmHWM:");
    assert!(
        hwm < 64 * 1024,
        "arborist's peak RSS reached {hwm} KiB while flooded"
    );

    let (code, took) = arb.terminate(LIMIT);
    assert_eq!(code, 0, "log:\n{}", out.text());
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM to exit took {took:?} with a flooding worker"
    );
    wait_until("the end of arborist's output", WAIT, || {
        out.eof.load(Ordering::SeqCst)
    });
    let log = out.text();
    assert!(log.contains("shutdown complete"), "{log}");
    assert!(!log.contains("KILLED"), "{log}");
    eprintln!(
        "flood: {} MB logged, peak RSS {peak_rss} KiB (high-water mark {hwm} KiB), SIGTERM to exit {took:?}",
        out.bytes() / 1_000_000
    );
}

// ---------------------------------------------------------------------------------------
// 4. A log output nobody reads
// ---------------------------------------------------------------------------------------

/// 100000 lines, written as fast as `seq` can, then a marker; the worker stays up.
const CHATTY_LINES: u64 = 100_000;
const CHATTY: &str = r#"
shutdown_timeout: 5s
children:
  chatty:
    shell: "seq -f chatty-%g 100000; echo done > $DIR/chatty.done; exec sleep 1000"
"#;

#[test]
fn blocked_log_output_does_not_block_shutdown_and_the_dropped_lines_are_in_the_report() {
    let fx = Fixture::new(CHATTY);
    let (read, write) = pipe();
    let mut arb = Piped::start(run_command(&fx, &["--log-format", "json"]), write);
    // The pipe fills with arborist's first lines and nobody ever reads it. Once the worker
    // has written everything, arborist has read all but at most a pipe buffer of it.
    fx.wait_file_within("chatty.done", LIMIT);
    // SAFETY: F_GETPIPE_SZ reads the pipe's capacity.
    let capacity = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_GETPIPE_SZ) } as usize;
    // Full, though a pipe's 16 pages are not all filled to the last byte.
    let fill = pipe_fill(&read);
    assert!(
        fill >= capacity / 2,
        "arborist's output pipe is not full: {fill} of {capacity} bytes"
    );
    // And arborist's log writer waits in it (where the kernel tells).
    let writer = log_writer_thread(arb.pid());
    wait_until("the log writer to block in pipe_write", WAIT, || {
        let wchan = std::fs::read_to_string(format!("/proc/{}/task/{writer}/wchan", arb.pid()))
            .unwrap_or_default();
        // "pipe_write", "anon_pipe_write" on newer kernels; "0" where it is not shown.
        wchan.ends_with("pipe_write") || wchan == "0" || wchan.is_empty()
    });

    let (code, took) = arb.terminate(LIMIT);
    assert_eq!(code, 0);
    // The shutdown itself takes milliseconds; then arborist gives its log output 2 s to
    // drain and exits anyway.
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM to exit took {took:?} with a blocked stderr"
    );
    let r = report(&fx);
    let dropped = num(&r, "log_lines_dropped");
    // Not dropped: at most what the worker's pipe (64 KiB), the queue (1 MiB) and the output
    // pipe (64 KiB) hold, some 13000 of these lines (13 bytes each as read, 135 as logged).
    assert!(
        (CHATTY_LINES - 30_000..=CHATTY_LINES + 100).contains(&dropped),
        "{dropped} lines dropped of {CHATTY_LINES} in {r:#}"
    );
    // What the pipe holds is arborist's first lines, intact; the count could not get in.
    drop(arb);
    let out = Drain::start(read, |_| true);
    wait_until("the pipe to be read", WAIT, || {
        out.eof.load(Ordering::SeqCst)
    });
    let log = out.text();
    assert!(log.len() <= capacity + 1, "{} bytes", log.len());
    let complete = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
    let first = events(complete);
    assert_eq!(first.len(), complete.lines().count(), "{complete}");
    assert!(complete.contains("control socket ready"), "{complete}");
    assert!(!complete.contains("log lines dropped"), "{complete}");
}

#[test]
fn log_output_that_recovers_reports_how_many_lines_it_missed_and_every_line_is_accounted_for() {
    let fx = Fixture::new(CHATTY);
    let (read, write) = pipe();
    let mut arb = Piped::start(run_command(&fx, &["--log-format", "json"]), write);
    fx.wait_file_within("chatty.done", LIMIT);
    // Blocked until now; from here on the output is read again.
    let out = Drain::start(read, |_| true);
    wait_until("the notice of dropped lines", LIMIT, || {
        out.text()
            .contains("log lines dropped: output blocked or too slow")
    });
    let (code, _) = arb.terminate(LIMIT);
    assert_eq!(code, 0, "log:\n{}", out.text());
    wait_until("the end of arborist's output", WAIT, || {
        out.eof.load(Ordering::SeqCst)
    });
    let log = out.text();
    let events = events(&log);
    assert_eq!(events.len(), log.lines().count(), "a line is not JSON");
    let notices: Vec<u64> = events
        .iter()
        .filter(|e| field(e, "message").ends_with("log lines dropped: output blocked or too slow"))
        .map(|e| e["dropped"].as_u64().expect("dropped"))
        .collect();
    assert!(!notices.is_empty(), "{log}");
    let dropped: u64 = notices.iter().sum();
    let seen = events
        .iter()
        .filter(|e| field(e, "target") == "worker" && field(e, "message").starts_with("chatty-"))
        .count() as u64;
    // Every line of the worker arrived or was counted; a few of the dropped lines may have
    // been arborist's own.
    assert!(
        seen < CHATTY_LINES,
        "nothing was dropped: {seen} lines seen"
    );
    assert!(
        seen + dropped >= CHATTY_LINES && seen + dropped <= CHATTY_LINES + 50,
        "{seen} lines seen + {dropped} counted as dropped != {CHATTY_LINES}"
    );
    assert_eq!(num(&report(&fx), "log_lines_dropped"), dropped);
}

// ---------------------------------------------------------------------------------------
// 5. A worker that closes its stdout early
// ---------------------------------------------------------------------------------------

#[test]
fn a_worker_that_closes_its_stdout_keeps_running_costs_no_cpu_and_stops_normally() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  closed-out:
    shell: "exec >&-; echo $$ > $DIR/closed-out.pid; exec sleep 1000"
  closed-both:
    shell: "exec >&- 2>&-; echo $$ > $DIR/closed-both.pid; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[
        "--shutdown-report",
        fx.path("report.json").to_str().unwrap(),
    ]);
    let pids = [
        fx.wait_pid("closed-out.pid"),
        fx.wait_pid("closed-both.pid"),
    ];
    arb.wait_log("tree ready");
    // A measurement window, not a synchronisation: a loop polling a closed pipe would burn
    // the whole 2 s.
    let before = cpu_ms(arb.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ms(arb.pid()) - before;
    assert!(
        used <= 50,
        "arborist used {used} ms of CPU in 2 s while idle"
    );
    for p in pids {
        assert!(alive(p), "a worker without stdout died");
    }
    let (code, _) = arb.stop_with(Signal::SIGTERM, LIMIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
    let r = report(&fx);
    for path in ["closed-out", "closed-both"] {
        let n = report_node(&r, path);
        assert_eq!(n["outcome"], "met", "{r:#}");
        assert_eq!(n["exit"], "signal SIGTERM", "{r:#}");
    }
    for p in pids {
        assert!(!alive(p));
    }
}

// ---------------------------------------------------------------------------------------
// 6. A worker with 500 children
// ---------------------------------------------------------------------------------------

#[test]
fn a_worker_with_500_children_leaves_none_behind_and_no_zombie_at_stop() {
    // herd's children die of SIGTERM; stubborn's ignore it (SIG_IGN is inherited) and must
    // be SIGKILLed at the 1 s deadline.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 10s
children:
  herd:
    stop_timeout: 5s
    shell: "i=0; while [ $i -lt 500 ]; do sleep 1000 & i=$((i+1)); done; echo $$ > $DIR/herd.pid; wait"
  stubborn:
    stop_timeout: 1s
    shell: "trap '' TERM; i=0; while [ $i -lt 500 ]; do sleep 1000 & i=$((i+1)); done; echo $$ > $DIR/stubborn.pid; while :; do wait; done"
"#,
    );
    let mut arb = fx.run(&[]);
    for (path, outcome) in [("herd", "met"), ("stubborn", "KILLED")] {
        let leader = fx.wait_pid(&format!("{path}.pid"));
        let members = wait_for("501 processes in the group", WAIT, || {
            let m = group_members(leader);
            (m.len() == 501).then_some(m)
        });
        let start = Instant::now();
        let out = ctl::cli(&fx, &["stop", path]);
        let took = start.elapsed();
        assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
        if outcome == "met" {
            assert!(!out.stdout.contains("KILLED"), "{}", out.stdout);
            assert!(took < Duration::from_secs(5), "{path}: {took:?}");
        } else {
            assert!(out.stdout.contains("KILLED"), "{}", out.stdout);
            assert!(took < Duration::from_secs(4), "{path}: {took:?}");
        }
        // `stop` answers once the group is empty: every member is gone and reaped.
        let left: Vec<i32> = members
            .iter()
            .copied()
            .filter(|&p| still_in_group(p, leader))
            .collect();
        assert!(
            left.is_empty(),
            "{path}: {} of 501 left: {left:?}",
            left.len()
        );
        let zombies = zombies_of(arb.pid());
        assert!(zombies.is_empty(), "{path}: zombies {zombies:?}");
    }
    // `stubborn` was SIGKILLed at its deadline by the operator's stop: `run` says so (exit 3,
    // SPEC §3 "anything SIGKILLed makes run exit 3, whichever path killed it").
    let (code, _) = arb.stop_with(Signal::SIGTERM, LIMIT);
    assert_eq!(code, 3, "log:\n{}", arb.log());
}

// ---------------------------------------------------------------------------------------
// 7. A SIGSTOPped worker at shutdown
// ---------------------------------------------------------------------------------------

/// Stops worker `name`'s whole process group (as a terminal's Ctrl-Z would) and waits until
/// its leader is in state T.
fn sigstop(fx: &Fixture, name: &str) -> i32 {
    let pid = fx.wait_pid(&format!("{name}.pid"));
    killpg(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    wait_until(&format!("{name} to be stopped"), WAIT, || {
        proc_state(pid) == Some('T')
    });
    pid
}

#[test]
fn a_sigstopped_worker_that_handles_sigterm_is_continued_and_exits_cleanly() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  polite:
    stop_timeout: 5s
    # No child processes: a SIGSTOP that lands while sh forks leaves sh in vfork's state D
    # (not T), and a SIGTERM that lands in a background child before its exec runs sh's trap
    # there and is lost.
    command: ["python3", "-c", "import os, signal, sys, time\ndef bye(*_):\n    open(sys.argv[1] + '/polite.bye', 'w').write('bye\\n')\n    sys.exit(0)\nsignal.signal(signal.SIGTERM, bye)\nopen(sys.argv[1] + '/polite.pid', 'w').write(str(os.getpid()))\nwhile True:\n    time.sleep(1)\n", "$DIR"]
"#,
    );
    let mut arb = fx.run(&[
        "--shutdown-report",
        fx.path("report.json").to_str().unwrap(),
    ]);
    let pid = sigstop(&fx, "polite");
    // Without the SIGCONT after SIGTERM it would stay stopped until the 5 s deadline.
    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(fx.read("polite.bye").as_deref(), Some("bye\n"));
    let r = report(&fx);
    let n = report_node(&r, "polite");
    assert_eq!(n["outcome"], "met", "{r:#}");
    assert_eq!(n["exit"], "exit status 0", "{r:#}");
    assert!(!alive(pid));
}

#[test]
fn a_sigstopped_worker_ignoring_sigterm_is_killed_at_its_deadline() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  stubborn:
    stop_timeout: 1s
    shell: "trap '' TERM; echo $$ > $DIR/stubborn.pid; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[
        "--shutdown-report",
        fx.path("report.json").to_str().unwrap(),
    ]);
    let pid = sigstop(&fx, "stubborn");
    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    assert_eq!(code, 3, "log:\n{}", arb.log());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "took {took:?} with a 1 s deadline"
    );
    let r = report(&fx);
    let n = report_node(&r, "stubborn");
    assert_eq!(n["outcome"], "killed", "{r:#}");
    assert!(!alive(pid));
}
