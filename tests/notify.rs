//! sd_notify both ways, against the real binary and real datagram sockets.
//! Towards systemd: the test binds the socket systemd would (a path, or an abstract name),
//! starts arborist with NOTIFY_SOCKET (and WATCHDOG_USEC) and reads what arborist sends:
//! READY=1, STATUS=, RELOADING=1 + MONOTONIC_USEC then READY=1, STOPPING=1,
//! EXTEND_TIMEOUT_USEC, WATCHDOG=1. Towards workers: workers are small python3 programs that
//! speak the protocol as a program written for systemd does (`NOTIFY_SOCKET`, `WATCHDOG_USEC`):
//! `ready: {notify: true}` gates dependents, STATUS= shows in `status`, a worker that stops
//! sending WATCHDOG=1 is stopped and restarted. Every wait is bounded.

mod ctl;
mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use ctl::*;
use nix::sys::signal::Signal;
use support::*;

/// A python3 sd_notify client: `notify.py MESSAGE...` sends each argument as one datagram,
/// in order; `notify.py --every SECONDS UNTIL_FILE MESSAGE` repeats MESSAGE until the file
/// exists, then sleeps forever (a hung worker), ignoring SIGTERM if asked with `--stubborn`.
const CLIENT: &str = r#"
import os, signal, socket, sys, time
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
args = sys.argv[1:]
if args and args[0] == "--stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    args = args[1:]
if args and args[0] == "--every":
    every, until, msg = float(args[1]), args[2], args[3]
    while not os.path.exists(until):
        s.sendto(msg.encode(), addr)
        time.sleep(every)
    while True:
        time.sleep(3600)
for m in args:
    s.sendto(m.replace("\\n", "\n").encode(), addr)
"#;

fn fixture(config: &str) -> Fixture {
    let fx = Fixture::new(config);
    std::fs::write(fx.path("notify.py"), CLIENT).expect("write notify.py");
    fx
}

/// The test's end of NOTIFY_SOCKET: collects datagrams.
struct Manager {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Manager {
    fn bind_path(path: &std::path::Path) -> Manager {
        Manager::new(UnixDatagram::bind(path).expect("bind notify socket"))
    }

    fn bind_abstract(name: &str) -> Manager {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        Manager::new(UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket"))
    }

    fn new(socket: UnixDatagram) -> Manager {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Manager {
            socket,
            seen: Vec::new(),
        }
    }

    /// Reads datagrams until one satisfies `want`; returns it. Panics after `limit`.
    fn wait(&mut self, what: &str, limit: Duration, want: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if want(&msg) {
                    return msg;
                }
            }
            if start.elapsed() > limit {
                panic!("no {what} within {limit:?}; received: {:#?}", self.seen);
            }
        }
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn value<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

const TWO_SLEEPERS: &str = r#"
shutdown_timeout: 5s
children:
  a: {shell: "exec sleep 1000"}
  b: {shell: "exec sleep 1000"}
"#;

#[test]
fn systemd_hears_ready_status_reload_stopping_and_extend_timeout() {
    let fx = fixture(TWO_SLEEPERS);
    let sock = fx.path("systemd.sock");
    let mut sd = Manager::bind_path(&sock);
    let mut arb = fx.run_with_env(&[], &[("NOTIFY_SOCKET", sock.to_str().unwrap())]);

    let ready = sd.wait("READY=1", WAIT, |m| has_line(m, "READY=1"));
    assert_eq!(
        value(&ready, "STATUS"),
        Some("ready: 2/2 workers up"),
        "{ready}"
    );
    sd.wait("STATUS with counts", WAIT, |m| {
        value(m, "STATUS") == Some("2/2 workers up")
    });

    arb.signal(Signal::SIGHUP);
    let reloading = sd.wait("RELOADING=1", WAIT, |m| has_line(m, "RELOADING=1"));
    let usec: u64 = value(&reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"));
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    let now_usec = Duration::from(now).as_micros() as u64;
    assert!(
        usec <= now_usec && now_usec - usec < 30_000_000,
        "{usec} vs {now_usec}"
    );
    sd.wait("READY=1 after the reload", WAIT, |m| has_line(m, "READY=1"));

    arb.signal(Signal::SIGTERM);
    let stopping = sd.wait("STOPPING=1", WAIT, |m| has_line(m, "STOPPING=1"));
    assert!(
        value(&stopping, "STATUS").is_some_and(|s| s.contains("SIGTERM")),
        "{stopping}"
    );
    // With STOPPING=1 comes what the stop may take: systemd's own stop timeout may be shorter.
    let usec: u64 = value(&stopping, "EXTEND_TIMEOUT_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("STOPPING=1 without EXTEND_TIMEOUT_USEC: {stopping:?}"));
    // The root deadline (5 s) plus the margin for the final kill and report, never more.
    assert!(
        (5_000_000..=10_000_000).contains(&usec),
        "EXTEND_TIMEOUT_USEC={usec}"
    );
    assert_eq!(exit_code(arb.wait_exit(WAIT)), 0);
}

#[test]
fn a_long_stop_keeps_extending_systemds_stop_timeout_every_5_s() {
    // The worker's stop lasts until the test releases it, so the stop outlives one period.
    let fx = fixture(
        r#"
shutdown_timeout: 20s
children:
  slow:
    shell: "trap 'while [ ! -e release ]; do sleep 0.05; done; exit 0' TERM; echo up > trapped; while :; do sleep 0.1; done"
    stop_timeout: 20s
"#,
    );
    let sock = fx.path("systemd.sock");
    let mut sd = Manager::bind_path(&sock);
    let mut arb = fx.run_with_env(&[], &[("NOTIFY_SOCKET", sock.to_str().unwrap())]);
    sd.wait("READY=1", WAIT, |m| has_line(m, "READY=1"));
    fx.wait_file("trapped");

    arb.signal(Signal::SIGTERM);
    sd.wait("STOPPING=1", WAIT, |m| has_line(m, "STOPPING=1"));
    let stopping_seen = Instant::now();
    let extend = sd.wait("a periodic EXTEND_TIMEOUT_USEC", WAIT, |m| {
        !has_line(m, "STOPPING=1") && value(m, "EXTEND_TIMEOUT_USEC").is_some()
    });
    let after = stopping_seen.elapsed();
    // Every 5 s, not more often (a little slack for the test's own scheduling).
    assert!(
        after >= Duration::from_secs(4),
        "{extend:?} came {after:?} after STOPPING=1"
    );
    // What the root deadline still allows (20 s less about 5) plus the 5 s margin.
    let usec: u64 = value(&extend, "EXTEND_TIMEOUT_USEC")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (10_000_000..=21_000_000).contains(&usec),
        "EXTEND_TIMEOUT_USEC={usec}, {after:?} into a 20 s stop"
    );
    std::fs::write(fx.path("release"), "").unwrap();
    assert_eq!(exit_code(arb.wait_exit(WAIT)), 0);
}

#[test]
fn an_abstract_notify_socket_gets_watchdog_keepalives_at_half_the_period() {
    let fx = fixture(TWO_SLEEPERS);
    let name = format!("arborist-test-{}-{}", std::process::id(), fastrand_name());
    let mut sd = Manager::bind_abstract(&name);
    let mut arb = fx.run_with_env(
        &[],
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    sd.wait("READY=1", WAIT, |m| has_line(m, "READY=1"));
    // Three keep-alives at 200 ms intervals arrive well within two seconds.
    let start = Instant::now();
    for _ in 0..3 {
        sd.wait("WATCHDOG=1", WAIT, |m| has_line(m, "WATCHDOG=1"));
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(arb.stop_with(Signal::SIGTERM, WAIT).0, 0);
}

#[test]
fn no_watchdog_keepalives_when_watchdog_pid_is_another_process() {
    let fx = fixture(TWO_SLEEPERS);
    let sock = fx.path("systemd.sock");
    let mut sd = Manager::bind_path(&sock);
    let mut arb = fx.run_with_env(
        &[],
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    sd.wait("READY=1", WAIT, |m| has_line(m, "READY=1"));
    arb.signal(Signal::SIGTERM);
    sd.wait("STOPPING=1", WAIT, |m| has_line(m, "STOPPING=1"));
    assert_eq!(exit_code(arb.wait_exit(WAIT)), 0);
    assert!(
        !sd.seen.iter().any(|m| has_line(m, "WATCHDOG=1")),
        "{:#?}",
        sd.seen
    );
}

fn fastrand_name() -> u64 {
    use std::time::SystemTime;
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[test]
fn ready_notify_gates_dependents_until_ready_1_and_status_text_shows() {
    let fx = fixture(
        r#"
shutdown_timeout: 5s
children:
  server:
    # Waits for the test's go-ahead, then says READY=1 like a Type=notify service.
    shell: |
      echo "$NOTIFY_SOCKET" > $DIR/server.env
      while [ ! -e $DIR/go ]; do sleep 0.05; done
      python3 $DIR/notify.py "STATUS=warming up" "READY=1\nSTATUS=serving 3 clients"
      exec sleep 1000
    ready: {notify: true}
  client:
    depends_on: [server]
    shell: "touch $DIR/client-started; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let socket = fx.wait_file("server.env");
    assert!(
        socket.ends_with("arborist.sock.notify"),
        "NOTIFY_SOCKET={socket}"
    );
    wait_state(&fx, "server", "starting");
    // Gated: the server is up but has not said READY=1, so its dependent has not started.
    assert!(fx.read("client-started").is_none());
    assert_eq!(
        node(&status(&fx), "client").unwrap()["state"],
        "waiting",
        "{}",
        status(&fx)
    );
    std::fs::write(fx.path("go"), "").unwrap();
    wait_until("client started", WAIT, || {
        fx.read("client-started").is_some()
    });
    let st = wait_state(&fx, "server", "ready");
    assert_eq!(st["notify_status"], "serving 3 clients", "{st}");
    let text = arborist_status_text(&fx);
    assert!(text.contains("\"serving 3 clients\""), "{text}");
    arb.wait_log("ready (READY=1)");
    assert_eq!(arb.stop_with(Signal::SIGTERM, WAIT).0, 0);
}

#[test]
fn a_process_of_the_workers_group_may_speak_for_it() {
    let fx = fixture(
        r#"
shutdown_timeout: 5s
children:
  server:
    # The leader is sh; a child in its process group sends READY=1 and stays.
    shell: |
      python3 -c 'import os,socket,time; a=os.environ["NOTIFY_SOCKET"]; s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM); s.sendto(b"READY=1",a); time.sleep(1000)'
    ready: {notify: true}
"#,
    );
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    wait_state(&fx, "server", "ready");
    assert_eq!(arb.stop_with(Signal::SIGTERM, WAIT).0, 0);
}

/// A helper of `spoofer` moves itself into `victim`'s process group (if it can) and sends
/// READY=1 from there; then `spoofer` itself sends READY=1. Writes the helper's setpgid result
/// to `$DIR/spoof.result`.
const SPOOF: &str = r#"
import os, socket, sys, time
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
d = sys.argv[1]
while not os.path.exists(d + "/victim.pid"):
    time.sleep(0.02)
victim = int(open(d + "/victim.pid").read())
child = os.fork()
if child == 0:
    try:
        os.setpgid(0, victim)
        result = "joined"
    except PermissionError:
        result = "EPERM"
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
    open(d + "/spoof.result", "w").write(result)
    os._exit(0)
os.waitpid(child, 0)
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
time.sleep(1000)
"#;

#[test]
fn a_worker_cannot_join_another_workers_group_nor_make_it_ready() {
    let fx = fixture(
        r#"
shutdown_timeout: 5s
children:
  victim:
    shell: "echo $$ > $DIR/victim.pid; exec sleep 1000"
    ready: {notify: true}
  spoofer:
    command: ["python3", "$DIR/spoof.py", "$DIR"]
    ready: {notify: true}
"#,
    );
    std::fs::write(fx.path("spoof.py"), SPOOF).expect("write spoof.py");
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    // The spoofer's own READY=1 went out after its helper's: once it is ready, arborist has
    // read the helper's datagram too.
    wait_state(&fx, "spoofer", "ready");
    assert_eq!(fx.read("spoof.result").as_deref(), Some("EPERM"));
    let st = status(&fx);
    let victim = node(&st, "victim").expect("victim in status");
    assert_eq!(victim["state"], "starting", "{victim}");
    assert_eq!(arb.stop_with(Signal::SIGTERM, WAIT).0, 0);
}

#[test]
fn a_worker_that_stops_sending_watchdog_1_is_stopped_and_restarted() {
    let fx = fixture(
        r#"
shutdown_timeout: 5s
children:
  hung:
    shell: |
      echo "$WATCHDOG_USEC" > $DIR/watchdog_usec
      echo $$ >> $DIR/hung.pids
      exec python3 $DIR/notify.py --stubborn --every 0.1 $DIR/hang WATCHDOG=1
    watchdog: 1s
    stop_timeout: 1s
    restart: on-failure
    backoff: {initial: 10ms, max: 10ms}
"#,
    );
    let mut arb = fx.run(&[]);
    assert_eq!(fx.wait_file("watchdog_usec"), "1000000");
    let first = fx.wait_pid("hung.pids");
    // Alive and kicking: keep-alives hold the watchdog off past several periods.
    arb.wait_log("started");
    wait_state(&fx, "hung", "running");
    // Now it hangs (stops sending, ignores SIGTERM): detected within a period, then the
    // stop sequence SIGKILLs it at its 1 s stop_timeout, and it is restarted.
    std::fs::write(fx.path("hang"), "").unwrap();
    arb.wait_log_within("deemed hung", Duration::from_secs(10));
    let second = wait_for("a restarted pid", Duration::from_secs(10), || {
        let text = fx.read("hung.pids")?;
        let pid: i32 = text.lines().last()?.parse().ok()?;
        (pid != first).then_some(pid)
    });
    wait_until("first hung process gone", WAIT, || !alive(first));
    let st = wait_for("restart counted", WAIT, || {
        let st = status(&fx);
        let n = node(&st, "hung")?.clone();
        (n["restarts"] == 1).then_some(n)
    });
    let last = st["last_exit"].as_str().unwrap_or_default().to_string();
    assert!(last.contains("watchdog timeout"), "{st}");
    assert!(alive(second));
    // The restarted worker is hung too (the marker stays); shut down cleanly anyway.
    std::fs::remove_file(fx.path("hang")).unwrap();
    let (code, _) = arb.stop_with(Signal::SIGTERM, Duration::from_secs(10));
    assert!(code == 0 || code == 3, "exit {code}");
}

#[test]
fn watchdog_trigger_from_the_worker_restarts_it_at_once() {
    let fx = fixture(
        r#"
shutdown_timeout: 5s
children:
  w:
    shell: |
      echo $$ >> $DIR/w.pids
      if [ ! -e $DIR/triggered ]; then
        touch $DIR/triggered
        python3 $DIR/notify.py WATCHDOG=trigger
      fi
      exec sleep 1000
    watchdog: 1h
    backoff: {initial: 10ms, max: 10ms}
"#,
    );
    let mut arb = fx.run(&[]);
    let first = fx.wait_pid("w.pids");
    arb.wait_log("WATCHDOG=trigger");
    wait_for("a restarted pid", WAIT, || {
        let text = fx.read("w.pids")?;
        let pid: i32 = text.lines().last()?.parse().ok()?;
        (pid != first).then_some(pid)
    });
    assert_eq!(arb.stop_with(Signal::SIGTERM, WAIT).0, 0);
}

fn arborist_status_text(fx: &Fixture) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_arborist"))
        .arg("--socket")
        .arg(sock(fx))
        .arg("status")
        .output()
        .expect("arborist status");
    String::from_utf8_lossy(&o.stdout).into_owned()
}
