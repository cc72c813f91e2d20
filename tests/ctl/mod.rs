//! A small client for arborist's control socket, used by `tests/control.rs` and
//! `tests/reload.rs`: raw JSON lines over `std::os::unix::net::UnixStream` (every read and
//! write bounded by a timeout), the CLI verbs run as real processes with a bounded wait, and
//! status helpers that poll `{"cmd":"status"}` until a node reaches a state.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{exit_code, wait_for, Arborist, Fixture, BIN, WAIT};

/// Bound on one socket read or write.
pub const IO_LIMIT: Duration = Duration::from_secs(10);

/// The socket the harness passes to `arborist run`.
pub fn sock(fx: &Fixture) -> PathBuf {
    fx.path("arborist.sock")
}

/// One client connection: write a line, read a line.
pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    pub fn open(path: &Path) -> std::io::Result<Conn> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(IO_LIMIT))?;
        stream.set_write_timeout(Some(IO_LIMIT))?;
        let writer = stream.try_clone()?;
        Ok(Conn {
            reader: BufReader::new(stream),
            writer,
        })
    }

    pub fn connect(path: &Path) -> Conn {
        Conn::open(path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()))
    }

    /// Writes raw bytes (no newline added).
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads one reply line; None on end of file.
    pub fn read_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        Ok((n > 0).then_some(line))
    }

    /// Sends `line` (a newline is appended) and parses the one-line JSON reply.
    pub fn send(&mut self, line: &str) -> Value {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.write_raw(&bytes)
            .unwrap_or_else(|e| panic!("send {line:?}: {e}"));
        let reply = self
            .read_line()
            .unwrap_or_else(|e| panic!("reply to {line:?}: {e}"))
            .unwrap_or_else(|| panic!("connection closed without a reply to {line:?}"));
        assert!(reply.ends_with('\n'), "reply is not a full line: {reply:?}");
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?} is not JSON: {e}"))
    }

    pub fn request(&mut self, request: &Value) -> Value {
        self.send(&request.to_string())
    }

    /// True when the daemon has closed the connection: end of file or a reset, within the
    /// read timeout (a timeout means it is still open).
    pub fn closed_by_peer(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// One request on a fresh connection.
pub fn request(fx: &Fixture, request: &Value) -> Value {
    Conn::connect(&sock(fx)).request(request)
}

pub fn status(fx: &Fixture) -> Value {
    request(fx, &serde_json::json!({"cmd": "status"}))
}

/// Waits until the daemon answers `status` (the socket is bound before any worker starts).
pub fn wait_serving(fx: &Fixture) -> Value {
    wait_for("the control socket to answer", WAIT, || {
        let mut conn = Conn::open(&sock(fx)).ok()?;
        Some(conn.send(r#"{"cmd":"status"}"#))
    })
}

pub fn nodes(status: &Value) -> &Vec<Value> {
    status["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no nodes: {status}"))
}

/// The node at `path` in a status reply.
pub fn node<'a>(status: &'a Value, path: &str) -> Option<&'a Value> {
    nodes(status).iter().find(|n| n["path"] == path)
}

pub fn paths(status: &Value) -> Vec<String> {
    nodes(status)
        .iter()
        .map(|n| n["path"].as_str().unwrap_or("?").to_string())
        .collect()
}

pub fn pid_in(status: &Value, path: &str) -> Option<i32> {
    node(status, path)?["pid"].as_i64().map(|p| p as i32)
}

/// Polls status until the node at `path` is in `state`; returns that node.
pub fn wait_state(fx: &Fixture, path: &str, state: &str) -> Value {
    wait_state_within(fx, path, state, WAIT)
}

pub fn wait_state_within(fx: &Fixture, path: &str, state: &str, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let s = status(fx);
        if let Some(n) = node(&s, path).filter(|n| n["state"] == state) {
            return n.clone();
        }
        if start.elapsed() > limit {
            panic!("{path} did not become {state} within {limit:?}; last status: {s:#}");
        }
        std::thread::sleep(Duration::from_millis(10)); // poll interval of a bounded wait
    }
}

/// Polls status until `path` is up (running or ready) with a pid; returns the pid.
pub fn wait_up(fx: &Fixture, path: &str) -> i32 {
    wait_for(&format!("{path} to be up"), WAIT, || {
        let s = status(fx);
        let n = node(&s, path)?;
        let up = n["state"] == "running" || n["state"] == "ready";
        if up {
            n["pid"].as_i64().map(|p| p as i32)
        } else {
            None
        }
    })
}

/// Waits until every path in `paths` is up; returns their pids in the same order.
pub fn wait_all_up(fx: &Fixture, paths: &[&str]) -> Vec<i32> {
    paths.iter().map(|p| wait_up(fx, p)).collect()
}

/// Polls status until the daemon says `running` (the whole tree is ready).
pub fn wait_daemon_running(fx: &Fixture) -> Value {
    wait_for("the daemon state to be running", WAIT, || {
        let s = status(fx);
        (s["daemon"]["state"] == "running").then_some(s)
    })
}

/// The output of one CLI verb.
pub struct CliOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `arborist --socket <fixture socket> <args>`, bounded by `WAIT`.
pub fn cli(fx: &Fixture, args: &[&str]) -> CliOut {
    cli_on(&sock(fx), args)
}

pub fn cli_on(socket: &Path, args: &[&str]) -> CliOut {
    let mut child = Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("ARBORIST_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the arborist CLI");
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    })
    .collect();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`arborist {}` did not finish within {WAIT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(5)); // poll interval of a bounded wait
    };
    let mut out = readers.into_iter().map(|r| r.join().unwrap_or_default());
    CliOut {
        code: exit_code(status),
        stdout: out.next().unwrap_or_default(),
        stderr: out.next().unwrap_or_default(),
    }
}

/// Runs a CLI verb that must succeed; returns its stdout.
pub fn cli_ok(fx: &Fixture, args: &[&str]) -> String {
    let out = cli(fx, args);
    assert_eq!(
        out.code,
        0,
        "`arborist {}` failed: stdout {:?}, stderr {:?}",
        args.join(" "),
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Asserts that `cond` holds for the whole of `window`, checked repeatedly: for things that
/// must NOT happen (a stopped worker restarting). Not a synchronisation.
pub fn holds_for(what: &str, window: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < window {
        assert!(cond(), "{what}: no longer true after {:?}", start.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cond(), "{what}: no longer true at the end of {window:?}");
}

/// The environment of a live process, as `KEY=value` strings. While the process is inside
/// execve (a shell doing `exec sleep`) the kernel shows an empty environment for a moment, so
/// this polls (bounded) until it is non-empty.
pub fn environ(pid: i32) -> Vec<String> {
    let read = || {
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap_or_default()
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<String>>()
    };
    let start = Instant::now();
    loop {
        let env = read();
        if !env.is_empty() || start.elapsed() > WAIT || !crate::support::alive(pid) {
            return env;
        }
        std::thread::sleep(Duration::from_millis(2)); // poll interval of a bounded wait
    }
}

/// The value of `key` in the environment of `pid`. A read that races with `exec` can come
/// back without it, so a missing key is re-read for a short, bounded while.
pub fn env_var(pid: i32, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    let start = Instant::now();
    loop {
        let found = environ(pid)
            .into_iter()
            .find_map(|kv| kv.strip_prefix(&prefix).map(String::from));
        if found.is_some()
            || start.elapsed() > Duration::from_secs(2)
            || !crate::support::alive(pid)
        {
            return found;
        }
        std::thread::sleep(Duration::from_millis(5)); // poll interval of a bounded wait
    }
}

/// Waits until `pid` is gone (or a zombie).
pub fn wait_gone(pid: i32) {
    crate::support::wait_until(&format!("pid {pid} to be gone"), WAIT, || {
        !crate::support::alive(pid)
    });
}

/// Ends the daemon with SIGTERM and expects exit 0.
pub fn stop_cleanly(arb: &mut Arborist) {
    stop_expecting(arb, 0);
}

/// Ends the daemon with SIGTERM and expects exit `code` (3: something was SIGKILLed at a
/// deadline at some point, by any path).
pub fn stop_expecting(arb: &mut Arborist, code: i32) {
    let (got, _) = arb.stop_with(nix::sys::signal::Signal::SIGTERM, WAIT);
    assert_eq!(got, code, "arborist exit code; log:\n{}", arb.log());
}

/// A long-running worker that appends its PID to `$DIR/<file>` at every start.
pub fn sleeper(file: &str) -> String {
    format!(r#"shell: "echo $$ >> $DIR/{file}; exec sleep 1000""#)
}

/// Waits until file `name` holds exactly `n` complete lines (workers append their PID at
/// start, a moment after arborist reports them up).
pub fn wait_lines(fx: &Fixture, name: &str, n: usize) {
    crate::support::wait_until(&format!("{n} lines in {name}"), WAIT, || {
        let text = fx.read(name).unwrap_or_default();
        text.matches('\n').count() == n
    });
}
