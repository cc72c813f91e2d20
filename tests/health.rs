//! `health_addr` against the real binary: `/healthz` answering 503 with a reason while a slow
//! readiness probe has not passed, 200 once it has and 503 `stopping` during the shutdown;
//! `/metrics` in the Prometheus text format with state gauges, a restart counter that grows
//! after a real SIGKILL, the deadline-kill counter and the last stop's duration; 404 and 405;
//! garbage, oversized, slow and abandoned requests that leave arborist serving; an invalid
//! `health_addr` (exit 2 with file:line:col) and a port in use (exit 2, nothing started).
//! The HTTP client is a plain `TcpStream` with timeouts; every wait is bounded.

mod ctl;
mod support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctl::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

/// Bound on connecting to, writing to and reading from the health endpoint.
const IO_LIMIT: Duration = Duration::from_secs(10);

/// A port that was free a moment ago. Another process may take it before arborist binds it;
/// [`start`] retries then.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local_addr").port()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends raw bytes and reads the whole reply (the server closes after one response).
fn exchange(port: u16, request: &[u8]) -> io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr(port), IO_LIMIT)?;
    stream.set_read_timeout(Some(IO_LIMIT))?;
    stream.set_write_timeout(Some(IO_LIMIT))?;
    stream.write_all(request)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || io::Error::other(format!("not an HTTP response: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok(Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

fn request(port: u16, method: &str, path: &str) -> io::Result<Reply> {
    exchange(
        port,
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
}

fn get(port: u16, path: &str) -> Reply {
    request(port, "GET", path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Polls `GET path` until `cond` holds for the reply; returns that reply.
fn wait_get(port: u16, path: &str, what: &str, cond: impl Fn(&Reply) -> bool) -> Reply {
    wait_for(what, WAIT, || {
        request(port, "GET", path).ok().filter(|r| cond(r))
    })
}

/// The value of the sample `series` (name with labels, exactly) in a /metrics body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Writes the config (with `$PORT` set to a free port), starts arborist and waits until the
/// health endpoint answers. Retries with another port when one was taken meanwhile.
fn start(config: &str) -> (Fixture, Arborist, u16) {
    for _ in 0..5 {
        let port = free_port();
        let fx = Fixture::new(&config.replace("$PORT", &port.to_string()));
        let mut arb = fx.run(&[]);
        let exited = wait_for(
            "the health endpoint to answer, or arborist to exit",
            WAIT,
            || {
                if let Ok(Some(status)) = arb.child.try_wait() {
                    return Some(Some(exit_code(status)));
                }
                request(port, "GET", "/healthz").ok().map(|_| None)
            },
        );
        match exited {
            None => return (fx, arb, port),
            Some(2) if arb.log().contains("in use") => {
                arb.wait_exit(WAIT);
                continue;
            }
            Some(code) => panic!("arborist exited with {code}; log:\n{}", arb.log()),
        }
    }
    panic!("no free port for health_addr after 5 attempts");
}

#[test]
fn healthz_is_503_while_a_slow_probe_has_not_passed_200_once_ready_503_while_stopping() {
    let (fx, mut arb, port) = start(
        r#"
health_addr: 127.0.0.1:$PORT
shutdown_timeout: 10s
children:
  db:
    shell: "trap 'sleep 1; exit 0' TERM; while :; do sleep 0.1; done"
    ready: { exec: [sh, -c, "test -f $DIR/MARKER"], interval: 50ms }
  api:
    depends_on: [db]
    shell: "exec sleep 1000"
"#,
    );
    let reply = get(port, "/healthz");
    assert_eq!(reply.status, 503, "body {:?}", reply.body);
    assert_eq!(reply.body, "starting: 0/2 workers up\n");
    assert!(reply
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    // Still not ready: the probe keeps failing while the marker is missing.
    assert_eq!(wait_state(&fx, "db", "starting")["state"], "starting");
    assert_eq!(get(port, "/healthz").status, 503);

    std::fs::write(fx.path("MARKER"), "").expect("write the marker");
    let reply = wait_get(port, "/healthz", "/healthz to say 200", |r| r.status == 200);
    assert_eq!(reply.body, "ok\n");

    // db needs a second to stop: the endpoint keeps answering meanwhile, with 503.
    arb.signal(Signal::SIGTERM);
    let reply = wait_get(port, "/healthz", "/healthz to say stopping", |r| {
        r.status == 503 && r.body == "stopping\n"
    });
    assert_eq!(reply.status, 503);
    assert_eq!(exit_code(arb.wait_exit(WAIT)), 0, "log:\n{}", arb.log());
}

#[test]
fn metrics_show_state_gauges_and_a_restart_counter_that_grows_after_sigkill() {
    let (fx, mut arb, port) = start(
        r#"
health_addr: 127.0.0.1:$PORT
shutdown_timeout: 5s
children:
  w:
    shell: "exec sleep 1000"
    restart: always
    backoff: { initial: 50ms, max: 1s }
  pool:
    replicas: 2
    shell: "exec sleep 1000"
"#,
    );
    wait_get(port, "/healthz", "/healthz to say 200", |r| r.status == 200);
    let reply = get(port, "/metrics");
    assert_eq!(reply.status, 200);
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content-type {content_type:?}"
    );
    let body = &reply.body;
    assert_exposition_format(body);
    for (series, value) in [
        ("arborist_workers{state=\"running\"}", 3.0),
        ("arborist_workers{state=\"failed\"}", 0.0),
        ("arborist_workers{state=\"backoff\"}", 0.0),
        ("arborist_worker_up{path=\"w\"}", 1.0),
        ("arborist_worker_up{path=\"pool#0\"}", 1.0),
        ("arborist_worker_up{path=\"pool#1\"}", 1.0),
        ("arborist_worker_restarts_total{path=\"w\"}", 0.0),
        ("arborist_worker_restarts_total{path=\"pool#1\"}", 0.0),
        ("arborist_deadline_kills_total", 0.0),
    ] {
        assert_eq!(sample(body, series), Some(value), "{series} in\n{body}");
    }
    for state in [
        "waiting", "starting", "running", "ready", "backoff", "stopping", "stopped", "failed",
    ] {
        let series = format!("arborist_workers{{state=\"{state}\"}}");
        assert!(sample(body, &series).is_some(), "{series} in\n{body}");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let started = sample(body, "arborist_start_time_seconds").expect("start time");
    assert!(
        started <= now + 1.0 && started > now - 120.0,
        "start time {started}, now {now}"
    );
    // No stop has happened yet: the gauge has no sample.
    assert_eq!(
        sample(body, "arborist_last_shutdown_duration_seconds"),
        None
    );

    // A real SIGKILL to the pid that `arborist status --json` shows.
    let status: serde_json::Value =
        serde_json::from_str(&cli_ok(&fx, &["status", "--json"])).expect("status --json");
    let pid = pid_in(&status, "w").expect("pid of w");
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL w");
    let reply = wait_get(port, "/metrics", "the restart counter of w to be 1", |r| {
        sample(&r.body, "arborist_worker_restarts_total{path=\"w\"}") == Some(1.0)
            && sample(&r.body, "arborist_worker_up{path=\"w\"}") == Some(1.0)
    });
    assert_eq!(
        sample(
            &reply.body,
            "arborist_worker_restarts_total{path=\"pool#0\"}"
        ),
        Some(0.0)
    );
    assert_ne!(wait_up(&fx, "w"), pid, "w runs as a new process");
    stop_cleanly(&mut arb);
}

/// Every sample line is `name{labels} value` or `name value`, after a TYPE line for its name.
fn assert_exposition_format(body: &str) {
    assert!(body.ends_with('\n'));
    let mut typed = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(matches!(kind, "gauge" | "counter"), "{line}");
            typed.push(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        assert!(value.parse::<f64>().is_ok(), "value in {line:?}");
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name in {line:?}"
        );
        assert_eq!(
            typed.last().map(String::as_str),
            Some(name),
            "TYPE before {line:?}"
        );
    }
}

#[test]
fn operator_stop_past_the_deadline_counts_a_deadline_kill_and_sets_the_last_stop_duration() {
    let (fx, mut arb, port) = start(
        r#"
health_addr: 127.0.0.1:$PORT
shutdown_timeout: 5s
children:
  stubborn:
    shell: "trap '' TERM; while :; do sleep 0.1; done"
    stop_timeout: 300ms
  calm:
    shell: "exec sleep 1000"
"#,
    );
    wait_get(port, "/healthz", "/healthz to say 200", |r| r.status == 200);
    let out = cli_ok(&fx, &["stop", "stubborn"]);
    assert!(out.contains("stubborn"), "stop output {out:?}");
    let body = get(port, "/metrics").body;
    assert_eq!(
        sample(&body, "arborist_deadline_kills_total"),
        Some(1.0),
        "{body}"
    );
    let took = sample(&body, "arborist_last_shutdown_duration_seconds").expect("last stop");
    assert!((0.29..5.0).contains(&took), "last stop took {took}s");
    assert_eq!(
        sample(&body, "arborist_workers{state=\"stopped\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "arborist_worker_up{path=\"stubborn\"}"),
        Some(0.0)
    );
    // The tree is still ready: an operator's stop is not a failure.
    assert_eq!(get(port, "/healthz").status, 200);
    // The operator's stop SIGKILLed `stubborn`: exit 3, whichever path killed it.
    stop_expecting(&mut arb, 3);
}

#[test]
fn unknown_paths_are_404_other_methods_405_and_head_and_queries_work() {
    let (_fx, mut arb, port) = start(
        r#"
health_addr: 127.0.0.1:$PORT
children:
  w:
    shell: "exec sleep 1000"
"#,
    );
    wait_get(port, "/healthz", "/healthz to say 200", |r| r.status == 200);
    assert_eq!(get(port, "/").status, 404);
    assert_eq!(get(port, "/healthz/more").status, 404);
    assert_eq!(get(port, "/metricsx").status, 404);
    for method in ["POST", "PUT", "DELETE"] {
        for path in ["/healthz", "/metrics"] {
            let reply = request(port, method, path).expect("reply");
            assert_eq!(reply.status, 405, "{method} {path}");
            assert_eq!(reply.header("allow"), Some("GET, HEAD"));
        }
    }
    let head = request(port, "HEAD", "/healthz").expect("HEAD");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    let query = get(port, "/metrics?name[]=arborist_workers");
    assert_eq!(query.status, 200);
    assert!(query.body.contains("arborist_workers{"));
    stop_cleanly(&mut arb);
}

#[test]
fn garbage_oversized_slow_and_abandoned_requests_leave_arborist_serving() {
    let (fx, mut arb, port) = start(
        r#"
health_addr: 127.0.0.1:$PORT
children:
  w:
    shell: "exec sleep 1000"
"#,
    );
    wait_get(port, "/healthz", "/healthz to say 200", |r| r.status == 200);

    // Malformed requests get a 4xx (or a closed connection), never a crash.
    for garbage in [
        &b"garbage\r\n\r\n"[..],
        b"\x00\xff\xfe\xfd\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost\r\n\r\n",
    ] {
        if let Ok(reply) = exchange(port, garbage) {
            assert!(
                (400..500).contains(&reply.status),
                "{garbage:?}: {}",
                reply.head
            );
        }
    }
    // A 64 KiB header: refused with 431 (or the connection is closed on it).
    let mut big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(vec![b'a'; 64 * 1024]);
    big.extend(b"\r\n\r\n");
    if let Ok(reply) = exchange(port, &big) {
        assert_eq!(reply.status, 431, "{}", reply.head);
    }

    // Forty clients that connect and go away without a word do not wedge the server.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect_timeout(&addr(port), IO_LIMIT).expect("connect"))
        .collect();
    for s in &idle {
        let _ = s.shutdown(Shutdown::Both);
    }
    drop(idle);
    assert_eq!(get(port, "/healthz").status, 200);

    // A client that never finishes its request head is cut off by the server.
    let mut slow = TcpStream::connect_timeout(&addr(port), IO_LIMIT).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    slow.write_all(b"GET /heal").expect("write");
    // Meanwhile others are served.
    assert_eq!(get(port, "/healthz").status, 200);
    let begin = Instant::now();
    let read = slow.read_to_end(&mut Vec::new());
    // End of file or a reset: closed by the server. A timeout is our own 20 s bound.
    if let Err(e) = &read {
        assert!(
            !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "the slow client was not cut off"
        );
    }
    assert!(
        begin.elapsed() < Duration::from_secs(15),
        "cut off only after {:?}",
        begin.elapsed()
    );

    // arborist is alive, its endpoint and its control socket still answer.
    assert!(arb.child.try_wait().expect("try_wait").is_none());
    assert_eq!(get(port, "/healthz").body, "ok\n");
    assert_eq!(get(port, "/metrics").status, 200);
    assert_eq!(status(&fx)["daemon"]["state"], "running");
    stop_cleanly(&mut arb);
}

#[test]
fn invalid_health_addr_is_a_config_error_with_file_line_and_column() {
    let fx = Fixture::new(
        r#"shutdown_timeout: 5s
health_addr: localhost:9090
children:
  g:
    health_addr: 127.0.0.1:1
    children:
      w:
        shell: "touch $DIR/started; exec sleep 1000"
"#,
    );
    let out = fx.check(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr {stderr}");
    assert!(
        stderr.contains(
            "arborist.yaml:2:14: (root): expected an IP address and port such as 127.0.0.1:9090 or [::]:9090, found 'localhost:9090'"
        ),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("arborist.yaml:5:5: g: 'health_addr' is only allowed at the top of the file"),
        "{stderr}"
    );

    let mut arb = fx.run(&[]);
    assert_eq!(exit_code(arb.wait_exit(WAIT)), 2);
    assert!(arb.log().contains("arborist.yaml:2:14:"), "{}", arb.log());
    assert!(fx.read("started").is_none(), "a worker was started");

    // Not a string; and IPv6 with a port is fine.
    let fx = Fixture::new("health_addr: 9090\nchildren:\n  w:\n    shell: \"exit 0\"\n");
    let out = fx.check(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("arborist.yaml:1:14: (root): expected a string"));
    let fx = Fixture::new("health_addr: \"[::]:9090\"\nchildren:\n  w:\n    shell: \"exit 0\"\n");
    assert_eq!(fx.check(&[]).status.code(), Some(0));
}

#[test]
fn health_port_in_use_exits_2_and_starts_nothing() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("local_addr").port();
    let fx = Fixture::new(&format!(
        r#"
health_addr: 127.0.0.1:{port}
children:
  w:
    shell: "touch $DIR/started; exec sleep 1000"
"#
    ));
    let mut arb = fx.run(&[]);
    assert_eq!(exit_code(arb.wait_exit(WAIT)), 2, "log:\n{}", arb.log());
    let log = arb.log();
    assert!(
        log.contains(&format!("cannot listen on health_addr 127.0.0.1:{port}"))
            && log.contains("in use"),
        "{log}"
    );
    assert!(fx.read("started").is_none(), "a worker was started");
    assert!(!sock(&fx).exists(), "the control socket was left behind");
    drop(taken);
}
