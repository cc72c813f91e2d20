//! Shutdown (SPEC §3 "Shutdown", issue 2 points 5 and 6) against the real binary: real `sh`
//! workers, real signals, real process groups. Every wait is bounded; nothing sleeps to
//! synchronise. Timing bounds are generous (a loaded 2-core machine must not make them flaky)
//! but still far below the configured deadlines they prove are not waited out.
//!
//! A shell race to keep in mind when writing workers: a process that a *trapping* `sh` forks
//! runs with the parent's signal handler until it execs, so a signal that reaches it in that
//! window is swallowed (and the exec'd program then never sees it). A worker with a `trap`
//! therefore starts its background process as `sh -c 'echo $$ > MARKER; exec sleep 1000' &`,
//! and the test waits for MARKER, which only a process that has already exec'd can write.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use support::*;

/// Upper bound for a whole `stop_with`: a bug shows up as a clear panic, never a hang.
const LIMIT: Duration = Duration::from_secs(10);

/// Starts `arborist run` with `--shutdown-report report.json` in the fixture's dir.
fn run_with_report(fx: &Fixture) -> Arborist {
    let report = fx.path("report.json");
    fx.run(&["--shutdown-report", report.to_str().unwrap()])
}

/// The JSON shutdown report written at exit.
fn report(fx: &Fixture) -> Value {
    let text = fx
        .read("report.json")
        .unwrap_or_else(|| panic!("no shutdown report in {}", fx.dir.path().display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad report JSON ({e}):\n{text}"))
}

/// The report's record for `path`.
fn node<'a>(report: &'a Value, path: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .expect("nodes is an array")
        .iter()
        .find(|n| n["path"] == path)
        .unwrap_or_else(|| panic!("no node {path:?} in report:\n{report:#}"))
}

/// The report's totals: (workers, met, killed, not_running).
fn assert_counts(r: &Value, expected: (u64, u64, u64, u64)) {
    let got = (
        num(r, "workers"),
        num(r, "met"),
        num(r, "killed"),
        num(r, "not_running"),
    );
    assert_eq!(
        got, expected,
        "(workers, met, killed, not_running) in {r:#}"
    );
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

/// The lines of a file the workers append to (empty when it does not exist).
fn lines(fx: &Fixture, name: &str) -> Vec<String> {
    fx.read(name)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Index of `line` in `lines`; panics with the whole list when missing.
fn pos(lines: &[String], line: &str) -> usize {
    lines
        .iter()
        .position(|l| l == line)
        .unwrap_or_else(|| panic!("no line {line:?} in {lines:?}"))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------------------------

#[test]
fn worker_ignoring_sigterm_is_killed_at_group_deadline() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 1s
children:
  stubborn:
    stop_timeout: 30s
    shell: "trap '' TERM; echo $$ > $DIR/stubborn.pid; exec sleep 1000"
"#,
    );
    let mut arb = run_with_report(&fx);
    let pid = fx.wait_pid("stubborn.pid");
    assert!(alive(pid));

    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    let log = arb.log();
    assert_eq!(
        code, 3,
        "a worker was SIGKILLed at a deadline: exit 3; log:\n{log}"
    );
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "expected a stop at the 1 s root deadline, took {took:?}; log:\n{log}"
    );
    assert!(!alive(pid), "the stubborn worker survived");

    let r = report(&fx);
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("received SIGTERM")),
        "{r:#}"
    );
    assert_eq!(num(&r, "deadline_ms"), 1000, "{r:#}");
    assert_counts(&r, (1, 0, 1, 0));
    let total = num(&r, "total_ms");
    assert!((800..3000).contains(&total), "total_ms {total}: {r:#}");

    let w = node(&r, "stubborn");
    assert_eq!(w["kind"], "worker", "{w:#}");
    assert_eq!(w["outcome"], "killed", "{w:#}");
    assert_eq!(w["pid"].as_i64(), Some(pid as i64), "{w:#}");
    assert_eq!(w["signal"], "SIGTERM", "{w:#}");
    assert_eq!(w["exit"], "signal SIGKILL", "{w:#}");
    let deadline = num(w, "deadline_ms");
    assert!(
        (900..=1000).contains(&deadline),
        "the worker's deadline is the root's 1 s, not its own 30 s: {w:#}"
    );
    let took_ms = num(w, "took_ms");
    assert!((800..3000).contains(&took_ms), "{w:#}");

    let root = node(&r, "(root)");
    assert_eq!(root["kind"], "group", "{root:#}");
    assert_eq!(
        root["outcome"], "killed",
        "the root ran into its deadline: {root:#}"
    );

    // The same report is logged.
    assert!(log.contains("shutdown: received SIGTERM"), "log:\n{log}");
    assert!(log.contains("shutdown complete in"), "log:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("KILLED:") && l.contains("stubborn")),
        "no KILLED line for the worker; log:\n{log}"
    );
}

#[test]
fn worker_counts_as_stopped_only_when_its_process_group_is_empty() {
    // The leader dies at once on SIGTERM; a child in the same process group ignores it.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 10s
children:
  leader:
    stop_timeout: 1s
    shell: |
      sh -c 'trap "" TERM; echo $$ > $DIR/child.pid; exec sleep 1000' &
      echo $$ > $DIR/leader.pid
      wait
"#,
    );
    let mut arb = run_with_report(&fx);
    let leader = fx.wait_pid("leader.pid");
    let child = fx.wait_pid("child.pid"); // written after its trap is set
    assert_eq!(
        proc_stat_field(child, 5).and_then(|g| g.parse::<i32>().ok()),
        Some(leader),
        "the child must share the leader's process group"
    );

    let start = Instant::now();
    arb.signal(Signal::SIGTERM);
    wait_until(
        "the leader to exit on SIGTERM",
        Duration::from_secs(3),
        || !alive(leader),
    );
    if start.elapsed() < Duration::from_millis(700) {
        // Well before the 1 s deadline: the worker is not done while its group has a member.
        assert!(
            alive(child),
            "the TERM-ignoring child died before the deadline"
        );
        assert!(
            arb.child.try_wait().unwrap().is_none(),
            "arborist exited while the worker's process group still had a member; log:\n{}",
            arb.log()
        );
    }
    let status = arb.wait_exit(LIMIT);
    let took = start.elapsed();
    let log = arb.log();
    assert_eq!(exit_code(status), 3, "log:\n{log}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "expected a SIGKILL at the 1 s stop_timeout, took {took:?}; log:\n{log}"
    );
    wait_until("the child to be gone", Duration::from_secs(3), || {
        !alive(child)
    });
    assert!(
        group_members(leader).is_empty(),
        "the process group is not empty"
    );

    let r = report(&fx);
    let w = node(&r, "leader");
    assert_eq!(w["outcome"], "killed", "{w:#}");
    assert_eq!(
        w["exit"], "signal SIGTERM",
        "the leader itself ended by SIGTERM: {w:#}"
    );
    assert!(num(w, "took_ms") >= 800, "{w:#}");
    assert!(num(w, "deadline_ms") <= 1000, "{w:#}");
    assert_eq!(num(&r, "killed"), 1, "{r:#}");
    // The root's own 10 s deadline was not reached.
    assert_eq!(node(&r, "(root)")["outcome"], "met", "{r:#}");
}

#[test]
fn deadlines_are_upper_bounds_not_waits() {
    // 30 s deadlines everywhere, three stop waves (inner, then api, then db), every process
    // exits at once on SIGTERM: the shutdown takes milliseconds.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 30s
children:
  db:
    stop_timeout: 30s
    shell: "echo $$ > $DIR/db.pid; exec sleep 1000"
  api:
    depends_on: [db]
    stop_timeout: 30s
    shell: "echo $$ > $DIR/api.pid; exec sleep 1000"
  inner:
    depends_on: [api]
    shutdown_timeout: 30s
    children:
      w:
        replicas: 3
        stop_timeout: 30s
        shell: |
          sleep 1000 &
          echo $$ > $DIR/w.$ARBORIST_REPLICA.pid
          wait
"#,
    );
    let mut arb = run_with_report(&fx);
    let mut pids = vec![fx.wait_pid("db.pid"), fx.wait_pid("api.pid")];
    for i in 0..3 {
        pids.push(fx.wait_pid(&format!("w.{i}.pid")));
    }

    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    let log = arb.log();
    assert_eq!(code, 0, "log:\n{log}");
    assert!(
        took < Duration::from_secs(2),
        "deadlines are not waits: took {took:?}; log:\n{log}"
    );
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived");
    }
    let r = report(&fx);
    assert!(num(&r, "total_ms") < 1000, "{r:#}");
    assert_eq!(num(&r, "workers"), 5, "{r:#}");
    assert_eq!(num(&r, "met"), 5, "{r:#}");
    for path in ["db", "api", "inner", "inner/w#0", "inner/w#1", "inner/w#2"] {
        let n = node(&r, path);
        assert_eq!(n["outcome"], "met", "{n:#}");
        assert!(num(n, "took_ms") < 1000, "{n:#}");
    }
}

#[test]
fn nested_group_deadline_bounds_its_workers() {
    // inner (1 s) stops first since it depends on db; its stubborn worker is killed at ~1 s
    // although its own stop_timeout is 30 s; then the root (10 s) goes on and stops db.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 10s
children:
  db:
    shell: |
      trap 'echo "db term" >> $DIR/order.log; exit 0' TERM
      sh -c 'echo $$ > $DIR/db.pid; exec sleep 1000' &
      wait
  inner:
    depends_on: [db]
    shutdown_timeout: 1s
    children:
      stubborn:
        stop_timeout: 30s
        shell: "trap '' TERM; echo $$ > $DIR/stubborn.pid; exec sleep 1000"
"#,
    );
    let mut arb = run_with_report(&fx);
    let db = fx.wait_pid("db.pid");
    let stubborn = fx.wait_pid("stubborn.pid");

    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    let log = arb.log();
    assert_eq!(code, 3, "log:\n{log}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "expected ~1 s (the inner deadline, not the root's 10 s), took {took:?}; log:\n{log}"
    );
    assert!(!alive(stubborn) && !alive(db));
    assert_eq!(
        lines(&fx, "order.log"),
        ["db term"],
        "db got its stop signal"
    );

    let r = report(&fx);
    let s = node(&r, "inner/stubborn");
    assert_eq!(s["outcome"], "killed", "{s:#}");
    assert!(num(s, "deadline_ms") <= 1000, "{s:#}");
    assert!((800..3000).contains(&num(s, "took_ms")), "{s:#}");
    let inner = node(&r, "inner");
    assert_eq!(inner["kind"], "group", "{inner:#}");
    assert_eq!(inner["outcome"], "killed", "{inner:#}");
    assert!(num(inner, "deadline_ms") <= 1000, "{inner:#}");
    let d = node(&r, "db");
    assert_eq!(d["outcome"], "met", "{d:#}");
    assert_eq!(d["exit"], "exit status 0", "{d:#}");
    // db began to stop after inner finished: its deadline is what is left of the root's 10 s.
    let db_deadline = num(d, "deadline_ms");
    assert!(
        (7000..9300).contains(&db_deadline),
        "db's deadline should be the root's remaining ~9 s: {d:#}"
    );
    let root = node(&r, "(root)");
    assert_eq!(root["outcome"], "met", "{root:#}");
    assert!(num(root, "deadline_ms") >= 9900, "{root:#}");
    assert_eq!(num(&r, "killed"), 1, "{r:#}");
    assert_eq!(num(&r, "met"), 1, "{r:#}");
}

#[test]
fn fifty_workers_with_one_second_cleanup_stop_in_parallel() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 20s
children:
  pool:
    replicas: 50
    stop_timeout: 20s
    shell: |
      trap 'sleep 1; exit 0' TERM
      sh -c 'echo up > $DIR/start.$ARBORIST_REPLICA; exec sleep 1000' &
      wait
"#,
    );
    let mut arb = run_with_report(&fx);
    wait_until("all 50 workers to start", WAIT, || {
        (0..50).all(|i| fx.path(&format!("start.{i}")).exists())
    });

    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    let log = arb.log();
    assert_eq!(code, 0, "log:\n{log}");
    assert!(
        took < Duration::from_secs(3),
        "50 x 1 s of cleanup must overlap, took {:.2}s; log:\n{log}",
        secs(took)
    );
    let r = report(&fx);
    assert_eq!(num(&r, "workers"), 50, "{r:#}");
    assert_eq!(num(&r, "met"), 50, "{r:#}");
    assert_eq!(num(&r, "killed"), 0, "{r:#}");
    for i in 0..50 {
        let w = node(&r, &format!("pool#{i}"));
        assert_eq!(w["outcome"], "met", "{w:#}");
        assert_eq!(w["exit"], "exit status 0", "{w:#}");
        // The cleanup really ran: arborist waited for it instead of killing.
        assert!(num(w, "took_ms") >= 900, "{w:#}");
    }
}

// ---------------------------------------------------------------------------------------------
// Whole process groups, grandchildren, SIGKILL of arborist
// ---------------------------------------------------------------------------------------------

#[test]
fn grandchildren_do_not_survive_shutdown() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  w:
    shell: |
      sleep 1000 &
      echo $! > $DIR/gc.pid
      sh -c 'sleep 1000 & echo $! > $DIR/ggc.pid; wait' &
      echo $$ > $DIR/w.pid
      wait
"#,
    );
    let mut arb = run_with_report(&fx);
    let w = fx.wait_pid("w.pid");
    let gc = fx.wait_pid("gc.pid");
    let ggc = fx.wait_pid("ggc.pid");
    assert!(alive(w) && alive(gc) && alive(ggc));

    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    for (what, pid) in [("worker", w), ("grandchild", gc), ("great-grandchild", ggc)] {
        assert!(!alive(pid), "the {what} {pid} survived the shutdown");
    }
    assert!(group_members(w).iter().all(|&p| !alive(p)));
    assert_eq!(node(&report(&fx), "w")["outcome"], "met");
}

#[test]
fn grandchild_that_left_its_process_group_is_stopped_too() {
    // `setsid` moves the grandchild out of the worker's process group; when the worker exits
    // the grandchild is re-parented to arborist (a child subreaper), which stops it.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  w:
    shell: |
      setsid sleep 1000 &
      echo $! > $DIR/stray.pid
      echo $$ > $DIR/w.pid
      wait
"#,
    );
    let mut arb = run_with_report(&fx);
    let w = fx.wait_pid("w.pid");
    let stray = fx.wait_pid("stray.pid");
    wait_until("the grandchild to leave the group", WAIT, || {
        proc_stat_field(stray, 6).and_then(|s| s.parse::<i32>().ok()) == Some(stray)
    });
    assert_ne!(
        proc_stat_field(stray, 5).and_then(|g| g.parse::<i32>().ok()),
        Some(w)
    );

    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    let log = arb.log();
    assert_eq!(code, 0, "log:\n{log}");
    assert!(took < Duration::from_secs(3), "took {took:?}; log:\n{log}");
    assert!(!alive(w));
    assert!(
        !alive(stray),
        "the grandchild that left its process group survived; log:\n{log}"
    );
}

#[test]
fn sigkill_of_arborist_leaves_no_worker_alive() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  a:
    shell: |
      sleep 1000 &
      echo $! > $DIR/a.gc
      echo $$ > $DIR/a.pid
      wait
  b:
    replicas: 2
    shell: |
      trap '' TERM
      sh -c 'sleep 1000 & echo $! > $DIR/b.$ARBORIST_REPLICA.ggc; wait' &
      echo $! > $DIR/b.$ARBORIST_REPLICA.gc
      echo $$ > $DIR/b.$ARBORIST_REPLICA.pid
      wait
  c:
    command: ["sh", "-c", "echo $$ > $DIR/c.pid; exec sleep 1000"]
"#,
    );
    let mut arb = fx.run(&[]);
    let mut pids = vec![fx.wait_pid("a.pid"), fx.wait_pid("a.gc")];
    for i in 0..2 {
        for ext in ["pid", "gc", "ggc"] {
            pids.push(fx.wait_pid(&format!("b.{i}.{ext}")));
        }
    }
    pids.push(fx.wait_pid("c.pid"));
    for &p in &pids {
        assert!(alive(p), "{p} not running before the kill");
    }

    let (code, _) = arb.stop_with(Signal::SIGKILL, LIMIT);
    assert_eq!(code, 128 + Signal::SIGKILL as i32);
    wait_until(
        "every worker and grandchild to die after arborist was SIGKILLed",
        Duration::from_secs(5),
        || pids.iter().all(|&p| !alive(p)),
    );
}

// ---------------------------------------------------------------------------------------------
// Second signal
// ---------------------------------------------------------------------------------------------

/// A worker (and its grandchild) that ignore SIGTERM under 60 s deadlines; a second `second`
/// during the shutdown must kill everything at once and exit 128+N.
fn second_signal_forces_exit(first: Signal, second: Signal) {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 60s
children:
  stubborn:
    stop_timeout: 60s
    shell: |
      trap '' TERM INT
      sleep 1000 &
      echo $! > $DIR/gc.pid
      echo $$ > $DIR/stubborn.pid
      wait
"#,
    );
    let mut arb = fx.run(&[]);
    let pid = fx.wait_pid("stubborn.pid");
    let gc = fx.wait_pid("gc.pid");

    arb.signal(first);
    arb.wait_log("shutdown:");
    assert!(
        arb.child.try_wait().unwrap().is_none(),
        "arborist must still be waiting for the stubborn worker"
    );
    let (code, took) = arb.stop_with(second, LIMIT);
    let log = arb.log();
    assert_eq!(code, 128 + second as i32, "log:\n{log}");
    assert!(
        took < Duration::from_secs(2),
        "the second signal must force the exit at once, took {took:?}; log:\n{log}"
    );
    wait_until(
        "the worker and its grandchild to die",
        Duration::from_secs(3),
        || !alive(pid) && !alive(gc),
    );
}

#[test]
fn second_sigterm_forces_exit_143_at_once() {
    second_signal_forces_exit(Signal::SIGTERM, Signal::SIGTERM);
}

#[test]
fn second_sigint_forces_exit_130_at_once() {
    second_signal_forces_exit(Signal::SIGINT, Signal::SIGINT);
}

// ---------------------------------------------------------------------------------------------
// Stop order
// ---------------------------------------------------------------------------------------------

/// db <- api <- web; each appends "<name> term" and "<name> exit" to order.log from its TERM
/// trap, with `cleanup` seconds of work in between (api gets `api_cleanup`).
fn three_tier(stop_order: &str, cleanup: &str, api_cleanup: &str) -> Fixture {
    let worker = |name: &str, deps: &str, pause: &str| {
        format!(
            r#"
  {name}:{deps}
    shell: |
      trap 'echo "{name} term" >> $DIR/order.log; sleep {pause}; echo "{name} exit" >> $DIR/order.log; exit 0' TERM
      sh -c 'echo $$ > $DIR/{name}.pid; exec sleep 1000' &
      wait"#
        )
    };
    let yaml = format!(
        "shutdown_timeout: 10s\nstop_order: {stop_order}\nchildren:{}{}{}\n",
        worker("db", "", cleanup),
        worker("api", "\n    depends_on: [db]", api_cleanup),
        worker("web", "\n    depends_on: [api]", cleanup),
    );
    Fixture::new(&yaml)
}

#[test]
fn dependents_get_stop_signal_before_dependencies_and_dependency_only_after_dependents_exited() {
    let fx = three_tier("reverse", "0", "0.3");
    let mut arb = run_with_report(&fx);
    let pids: Vec<i32> = ["db", "api", "web"]
        .iter()
        .map(|n| fx.wait_pid(&format!("{n}.pid")))
        .collect();

    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    let log = arb.log();
    assert_eq!(code, 0, "log:\n{log}");
    assert!(took < Duration::from_secs(3), "took {took:?}; log:\n{log}");
    for pid in pids {
        assert!(!alive(pid));
    }
    let order = lines(&fx, "order.log");
    assert_eq!(order.len(), 6, "{order:?}");
    let at = |l: &str| pos(&order, l);
    assert!(at("web term") < at("web exit"), "{order:?}");
    assert!(
        at("web exit") < at("api term"),
        "api got its stop signal before web had exited: {order:?}"
    );
    assert!(at("api term") < at("api exit"), "{order:?}");
    assert!(
        at("api exit") < at("db term"),
        "db got its stop signal before api had exited: {order:?}"
    );
    assert!(at("db term") < at("db exit"), "{order:?}");

    let r = report(&fx);
    assert_eq!(num(&r, "met"), 3, "{r:#}");
    assert!(num(node(&r, "api"), "took_ms") >= 250, "{r:#}");
}

#[test]
fn stop_order_parallel_stops_everything_at_once() {
    // With 0.5 s of cleanup each, all three are signalled before any of them is done.
    let fx = three_tier("parallel", "0.5", "0.5");
    let mut arb = run_with_report(&fx);
    for n in ["db", "api", "web"] {
        fx.wait_pid(&format!("{n}.pid"));
    }

    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    let log = arb.log();
    assert_eq!(code, 0, "log:\n{log}");
    assert!(took < Duration::from_secs(3), "took {took:?}; log:\n{log}");
    let order = lines(&fx, "order.log");
    assert_eq!(order.len(), 6, "{order:?}");
    let last_term = ["db", "api", "web"]
        .iter()
        .map(|n| pos(&order, &format!("{n} term")))
        .max()
        .unwrap();
    let first_exit = ["db", "api", "web"]
        .iter()
        .map(|n| pos(&order, &format!("{n} exit")))
        .min()
        .unwrap();
    assert!(
        last_term < first_exit,
        "parallel: every worker must be signalled before any has finished: {order:?}"
    );
    let r = report(&fx);
    assert_eq!(num(&r, "met"), 3, "{r:#}");
    // Sequential waves would need 3 x 0.5 s.
    assert!(num(&r, "total_ms") < 1400, "{r:#}");
}

// ---------------------------------------------------------------------------------------------
// The stop sequence of one worker
// ---------------------------------------------------------------------------------------------

#[test]
fn pre_stop_runs_before_the_stop_signal() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 10s
children:
  svc:
    pre_stop: ["sh", "-c", "echo pre_stop start >> $DIR/order.log; sleep 0.3; echo pre_stop end >> $DIR/order.log"]
    shell: |
      trap 'echo term >> $DIR/order.log; exit 0' TERM
      sh -c 'echo $$ > $DIR/svc.pid; exec sleep 1000' &
      wait
"#,
    );
    let mut arb = run_with_report(&fx);
    let pid = fx.wait_pid("svc.pid");

    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    let log = arb.log();
    assert_eq!(code, 0, "log:\n{log}");
    assert!(took < Duration::from_secs(3), "took {took:?}; log:\n{log}");
    assert!(!alive(pid));
    assert_eq!(
        lines(&fx, "order.log"),
        ["pre_stop start", "pre_stop end", "term"],
        "pre_stop must finish before the stop signal is sent"
    );
    let r = report(&fx);
    let w = node(&r, "svc");
    assert_eq!(w["outcome"], "met", "{w:#}");
    assert_eq!(w["exit"], "exit status 0", "{w:#}");
    assert!(
        num(w, "took_ms") >= 250,
        "pre_stop is part of the stop: {w:#}"
    );
}

#[test]
fn stop_signal_is_sent_to_the_whole_process_group() {
    // SIGUSR1 instead of SIGTERM (which the worker ignores), delivered to leader and child.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 10s
children:
  svc:
    stop_signal: SIGUSR1
    stop_timeout: 5s
    shell: |
      trap '' TERM
      trap 'echo leader usr1 >> $DIR/order.log; exit 0' USR1
      sh -c 'echo $$ > $DIR/child.pid; exec sleep 1000' &
      echo $$ > $DIR/svc.pid
      wait
"#,
    );
    let mut arb = run_with_report(&fx);
    let pid = fx.wait_pid("svc.pid");
    let child = fx.wait_pid("child.pid");

    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    let log = arb.log();
    assert_eq!(code, 0, "log:\n{log}");
    assert!(took < Duration::from_secs(3), "took {took:?}; log:\n{log}");
    assert!(!alive(pid) && !alive(child));
    // The child ignores SIGTERM (inherited) and has no trap: only SIGUSR1 (or SIGKILL, which
    // the outcome rules out) could have ended it.
    assert_eq!(lines(&fx, "order.log"), ["leader usr1"]);
    let w = node(&report(&fx), "svc").clone();
    assert_eq!(w["signal"], "SIGUSR1", "{w:#}");
    assert_eq!(w["outcome"], "met", "{w:#}");
}

#[test]
fn stopped_worker_is_continued_so_it_can_act_on_the_stop_signal() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 10s
children:
  frozen:
    stop_timeout: 10s
    shell: "echo $$ > $DIR/frozen.pid; exec sleep 1000"
"#,
    );
    let mut arb = run_with_report(&fx);
    let pid = fx.wait_pid("frozen.pid");
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    wait_until("the worker to be stopped", WAIT, || {
        proc_state(pid) == Some('T')
    });

    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    let log = arb.log();
    assert_eq!(code, 0, "log:\n{log}");
    assert!(
        took < Duration::from_secs(3),
        "a SIGSTOPped worker must get SIGCONT with its stop signal, took {took:?}; log:\n{log}"
    );
    assert!(!alive(pid));
    let w = node(&report(&fx), "frozen").clone();
    assert_eq!(w["outcome"], "met", "{w:#}");
    assert_eq!(w["exit"], "signal SIGTERM", "{w:#}");
}

// ---------------------------------------------------------------------------------------------
// Signals, report, backoff
// ---------------------------------------------------------------------------------------------

#[test]
fn sigint_works_like_sigterm() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  web:
    shell: "echo $$ > $DIR/web.pid; exec sleep 1000"
  jobs:
    children:
      worker:
        replicas: 2
        shell: "echo $$ > $DIR/worker.$ARBORIST_REPLICA.pid; exec sleep 1000"
"#,
    );
    let mut arb = run_with_report(&fx);
    let pids = [
        fx.wait_pid("web.pid"),
        fx.wait_pid("worker.0.pid"),
        fx.wait_pid("worker.1.pid"),
    ];

    let (code, took) = arb.stop_with(Signal::SIGINT, LIMIT);
    let log = arb.log();
    assert_eq!(code, 0, "log:\n{log}");
    assert!(took < Duration::from_secs(3), "took {took:?}; log:\n{log}");
    assert!(log.contains("shutdown: received SIGINT"), "log:\n{log}");
    for pid in pids {
        assert!(!alive(pid));
    }

    let r = report(&fx);
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("received SIGINT")),
        "{r:#}"
    );
    assert_eq!(num(&r, "deadline_ms"), 5000, "{r:#}");
    assert_counts(&r, (3, 3, 0, 0));
    let total = num(&r, "total_ms");
    for (path, kind) in [
        ("(root)", "group"),
        ("web", "worker"),
        ("jobs", "group"),
        ("jobs/worker#0", "worker"),
        ("jobs/worker#1", "worker"),
    ] {
        let n = node(&r, path);
        assert_eq!(n["kind"], kind, "{n:#}");
        assert_eq!(n["outcome"], "met", "{n:#}");
        assert!(num(n, "took_ms") <= total, "{n:#} vs total {total}");
        assert!(num(n, "deadline_ms") <= 5000, "{n:#}");
        if kind == "worker" {
            assert_eq!(n["signal"], "SIGTERM", "{n:#}");
            assert_eq!(n["exit"], "signal SIGTERM", "{n:#}");
            assert!(n["pid"]
                .as_i64()
                .is_some_and(|p| pids.contains(&(p as i32))));
        }
    }
    assert_eq!(r["nodes"].as_array().unwrap().len(), 5, "{r:#}");
}

#[test]
fn worker_in_backoff_at_shutdown_is_reported_not_running() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 10s
children:
  flaky:
    restart: always
    backoff: {initial: 20s, max: 60s}
    shell: "echo run >> $DIR/runs.log; exit 1"
  steady:
    shell: "echo $$ > $DIR/steady.pid; exec sleep 1000"
"#,
    );
    let mut arb = run_with_report(&fx);
    let steady = fx.wait_pid("steady.pid");
    arb.wait_log("restarting in");
    assert_eq!(lines(&fx, "runs.log"), ["run"]);

    let (code, took) = arb.stop_with(Signal::SIGTERM, LIMIT);
    let log = arb.log();
    assert_eq!(code, 0, "log:\n{log}");
    assert!(
        took < Duration::from_secs(2),
        "a worker in backoff has nothing to stop, took {took:?}; log:\n{log}"
    );
    assert!(!alive(steady));
    assert_eq!(lines(&fx, "runs.log"), ["run"], "restarted during shutdown");
    let r = report(&fx);
    let f = node(&r, "flaky");
    assert_eq!(f["outcome"], "not_running", "{f:#}");
    assert_eq!(num(&r, "not_running"), 1, "{r:#}");
    assert_eq!(num(&r, "met"), 1, "{r:#}");
    assert_eq!(num(&r, "workers"), 2, "{r:#}");
}
