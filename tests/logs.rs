//! arborist's log output and the capture of workers' stdout/stderr (SPEC §1, §2 `logs`;
//! issue 2 point 7).

mod spawned;
mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use spawned::Spawned;
use support::*;

/// Parses every line of `log` as a JSON object; panics on the first line that is not one.
fn json_lines(log: &str) -> Vec<serde_json::Map<String, Value>> {
    log.lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(m)) => m,
            other => panic!("log line is not a JSON object ({other:?}): {l:?}"),
        })
        .collect()
}

fn s<'a>(event: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    event.get(key).and_then(Value::as_str)
}

/// Captured worker lines as (path, stream, message, continued).
fn worker_events(events: &[serde_json::Map<String, Value>]) -> Vec<(String, String, String, bool)> {
    events
        .iter()
        .filter(|e| s(e, "target") == Some("worker"))
        .map(|e| {
            (
                s(e, "path").unwrap_or_default().to_string(),
                s(e, "stream").unwrap_or_default().to_string(),
                s(e, "message").unwrap_or_default().to_string(),
                e.get("continued") == Some(&Value::Bool(true)),
            )
        })
        .collect()
}

/// VmRSS and VmHWM of `pid` in KiB.
fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn json_log_lines_are_all_valid_json_and_worker_lines_carry_path_and_stream() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  web:
    shell: "echo hello-out; echo hello-err >&2; exec sleep 1000"
  api:
    replicas: 2
    shell: "echo replica-$ARBORIST_REPLICA; exec sleep 1000"
  odd:
    shell: "printf 'odd \"quoted\" back\\\\slash \\033[31mred\\033[0m tab\\t bad-utf8 \\377 end\\n'; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&["--log-format", "json"]);
    for needle in ["hello-out", "hello-err", "replica-0", "replica-1", " end"] {
        arb.wait_log(needle);
    }
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());

    let log = arb.log();
    let events = json_lines(&log);
    assert!(events.len() >= 8, "{log}");
    for e in &events {
        for key in ["timestamp", "level", "message", "target"] {
            assert!(s(e, key).is_some(), "no string {key:?} in {e:?}");
        }
    }
    let worker = worker_events(&events);
    let find = |path: &str, stream: &str, message: &str| {
        worker
            .iter()
            .any(|(p, st, m, _)| p == path && st == stream && m == message)
    };
    assert!(find("web", "stdout", "hello-out"), "{worker:?}");
    assert!(find("web", "stderr", "hello-err"), "{worker:?}");
    assert!(find("api#0", "stdout", "replica-0"), "{worker:?}");
    assert!(find("api#1", "stdout", "replica-1"), "{worker:?}");
    // Quotes, backslashes, control characters and invalid UTF-8 survive as valid JSON.
    let odd = worker
        .iter()
        .find(|(p, ..)| p == "odd")
        .unwrap_or_else(|| panic!("no line of odd in {worker:?}"));
    assert_eq!(odd.1, "stdout");
    assert!(odd.2.starts_with("odd \"quoted\" back\\slash "), "{odd:?}");
    assert!(odd.2.contains("\u{1b}[31mred"), "{odd:?}");
    assert!(odd.2.ends_with(" end"), "{odd:?}");
    // Plain worker lines are not marked as pieces.
    assert!(worker.iter().all(|w| !w.3), "{worker:?}");
    // arborist's own events are there too, e.g. the start of each worker with its path.
    assert!(
        events
            .iter()
            .any(|e| s(e, "path") == Some("api#1") && s(e, "target") != Some("worker")),
        "{log}"
    );
    assert!(arb.stdout().is_empty(), "stdout: {:?}", arb.stdout());
}

#[test]
fn text_format_shows_each_worker_line_with_its_path_and_stream() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  frontend:
    shell: "echo text-line-from-frontend; echo text-err-from-frontend >&2; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    arb.wait_log("text-line-from-frontend");
    arb.wait_log("text-err-from-frontend");
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
    let log = arb.log();
    for (needle, stream) in [
        ("text-line-from-frontend", "stdout"),
        ("text-err-from-frontend", "stderr"),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle} in:\n{log}"));
        assert!(!line.starts_with('{'), "text format printed JSON: {line}");
        assert!(line.contains("frontend"), "no path in {line:?}");
        assert!(line.contains("path="), "no path field in {line:?}");
        assert!(line.contains(stream), "no stream in {line:?}");
    }
    // Not a terminal: no colour codes.
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a piped log:\n{log}"
    );
    assert!(log.lines().all(|l| !l.starts_with('{')), "{log}");
}

#[test]
fn logs_inherit_writes_straight_to_arborists_stdout_and_stderr() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  raw:
    logs: inherit
    shell: "echo raw-out-line; echo raw-err-line >&2; exec sleep 1000"
  cap:
    shell: "echo captured-line; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&["--log-format", "json"]);
    wait_until("raw stdout line", WAIT, || {
        arb.stdout().lines().any(|l| l == "raw-out-line")
    });
    arb.wait_log("raw-err-line");
    arb.wait_log("captured-line");
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());

    // stdout holds exactly the inherited worker's raw line: no log events, nothing captured.
    assert_eq!(arb.stdout(), "raw-out-line\n");
    let log = arb.log();
    // The inherited stderr line is there verbatim, not wrapped in a JSON event...
    assert!(log.lines().any(|l| l == "raw-err-line"), "{log}");
    // ...and every other line is a JSON event; none re-emits the inherited output.
    let rest: String = log
        .lines()
        .filter(|l| *l != "raw-err-line")
        .map(|l| format!("{l}\n"))
        .collect();
    let events = json_lines(&rest);
    let worker = worker_events(&events);
    assert!(
        worker.iter().all(|(p, ..)| p != "raw"),
        "inherited output was captured: {worker:?}"
    );
    assert!(
        worker
            .iter()
            .any(|(p, st, m, _)| p == "cap" && st == "stdout" && m == "captured-line"),
        "{worker:?}"
    );
}

#[test]
fn twenty_megabytes_without_a_newline_keep_memory_bounded_and_come_out_in_continued_pieces() {
    const TOTAL: usize = 20_000_000;
    const MAX_LINE: usize = 16 * 1024;
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  big:
    shell: "while [ ! -e $DIR/go ]; do sleep 0.01; done; head -c 20000000 /dev/zero | tr '\\0' a; echo $$ > $DIR/big.done; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&["--log-format", "json"]);
    arb.wait_log("tree ready");
    let (rss_before, _) = rss_kib(arb.pid());
    std::fs::write(fx.path("go"), "go").unwrap();
    // The worker writes through a pipe: once it is done, arborist has read all but the last
    // pipe buffer of it.
    fx.wait_file_within("big.done", Duration::from_secs(30));
    let (rss_after, hwm) = rss_kib(arb.pid());
    assert!(
        hwm < 60 * 1024,
        "arborist's peak RSS reached {hwm} KiB for a 20 MB line"
    );
    assert!(
        rss_after < 60 * 1024,
        "arborist's RSS is {rss_after} KiB after a 20 MB line"
    );
    // Buffering the line would add about 20 MB; bounded capture adds next to nothing.
    assert!(
        rss_after < rss_before + 10 * 1024,
        "arborist's RSS grew from {rss_before} KiB to {rss_after} KiB during a 20 MB line"
    );

    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 0);
    // The last piece comes at EOF; let the reader thread drain the pipe.
    let mut events = vec![];
    wait_until("all 20 MB in the log", WAIT, || {
        let log = arb.log();
        let Some(end) = log.rfind("shutdown complete") else {
            return false;
        };
        let complete = log[end..].contains('\n');
        events = worker_events(&json_lines(&log));
        complete
            && events
                .iter()
                .filter(|e| e.0 == "big")
                .map(|e| e.2.len())
                .sum::<usize>()
                == TOTAL
    });
    let pieces: Vec<_> = events.iter().filter(|e| e.0 == "big").collect();
    assert!(pieces.len() >= TOTAL / MAX_LINE, "{} pieces", pieces.len());
    let (last, rest) = pieces.split_last().unwrap();
    for p in rest {
        assert!(p.3, "a piece before the end is not marked continued");
        assert!(p.2.len() <= MAX_LINE, "a piece of {} bytes", p.2.len());
        assert_eq!(p.1, "stdout");
    }
    assert!(!last.3, "the final piece is marked continued");
    assert!(pieces.iter().all(|p| p.2.bytes().all(|b| b == b'a')));
}

#[test]
fn log_level_warn_hides_info_lines() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  chatty:
    shell: "echo info-from-chatty; exec sleep 1000"
  failing:
    restart: never
    shell: "echo info-from-failing; exit 7"
"#,
    );
    let mut arb = fx.run(&["--log-level", "warn"]);
    arb.wait_log("exit status 7");
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
    let log = arb.log();
    assert!(log.contains("WARN"), "{log}");
    assert!(
        !log.contains("INFO"),
        "info lines at --log-level warn:\n{log}"
    );
    assert!(!log.contains("info-from-"), "{log}");
    assert!(!log.contains("arborist starting"), "{log}");
}

#[test]
fn rust_log_filters_when_no_log_level_is_given_and_log_level_overrides_it() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  chatty:
    shell: "echo info-from-chatty; echo $$ > $DIR/chatty.pid; exec sleep 1000"
  failing:
    restart: never
    shell: "exit 7"
"#,
    );
    let run = |name: &str, rust_log: &str, extra: &[&str]| {
        let _ = std::fs::remove_file(fx.path("chatty.pid"));
        let mut cmd = spawned::arborist();
        cmd.arg("run")
            .arg(fx.config())
            .args(extra)
            .env("RUST_LOG", rust_log)
            .current_dir(fx.dir.path());
        let mut arb = Spawned::start(cmd, fx.dir.path(), name);
        arb.wait_log("exit status 7", WAIT);
        fx.wait_pid("chatty.pid");
        arb.signal(Signal::SIGTERM);
        assert_eq!(arb.wait_exit(WAIT), 0, "log:\n{}", arb.log());
        arb.log()
    };
    let log = run("rust-log-warn", "warn", &[]);
    assert!(
        !log.contains("INFO"),
        "RUST_LOG=warn let info through:\n{log}"
    );
    assert!(log.contains("WARN"), "{log}");

    let log = run("rust-log-info", "info", &["--log-level", "warn"]);
    assert!(
        !log.contains("INFO"),
        "--log-level warn did not override RUST_LOG=info:\n{log}"
    );

    let log = run("rust-log-default", "info", &[]);
    assert!(log.contains("INFO"), "RUST_LOG=info hid info lines:\n{log}");
    // The worker line may come after the pid file; it is in the log by the end of shutdown.
    assert!(log.contains("info-from-chatty"), "{log}");
}
