//! A worker owns every process its run starts, including those that leave its process group
//! and session (SPEC §3 "Ownership"): a daemon that calls `setsid` is stopped with its worker,
//! a restart starts the new run only once nothing of the old one is left, and a worker that
//! daemonizes over and over leaves no process and no descriptor behind. These run in the
//! process-group fallback (processes adopted by arborist as subreaper, attributed by the
//! run's `ARBORIST_RUN` marker).

mod ctl;
mod support;

use std::time::Duration;

use ctl::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

/// A worker whose main process starts a helper in a session of its own (setsid) that ignores
/// SIGTERM, as postgres' backends and double-forking daemons leave their worker's group.
/// Each run first notes any helper of an earlier run that is still alive.
const ESCAPER: &str = r#"#!/bin/sh
d="$1"
for p in $(cat "$d/helper.pids" 2>/dev/null); do
  kill -0 "$p" 2>/dev/null && echo "$p" >> "$d/overlap"
done
setsid sh -c 'trap "" TERM; echo $$ >> "$0/helper.pids"; while :; do sleep 0.1; done' "$d" &
echo $$ >> "$d/main.pids"
wait
"#;

fn escaper_fixture(stop_timeout: &str) -> Fixture {
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  db:
    stop_timeout: {stop_timeout}
    command: ["sh", "$DIR/escaper.sh", "$DIR"]
"#
    ));
    std::fs::write(fx.path("escaper.sh"), ESCAPER).expect("write escaper.sh");
    fx
}

fn pids(fx: &Fixture, file: &str) -> Vec<i32> {
    fx.read(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits for the `n`th helper to write its pid; returns it.
fn wait_helper(fx: &Fixture, n: usize) -> i32 {
    wait_for(&format!("helper #{n}"), WAIT, || {
        pids(fx, "helper.pids").get(n - 1).copied()
    })
}

fn session_of(pid: i32) -> Option<i32> {
    proc_stat_field(pid, 6).and_then(|s| s.parse().ok())
}

/// The worker record of a stop report (`stop`/`restart` reply or shutdown report).
fn worker_record<'a>(report: &'a [Value], path: &str) -> &'a Value {
    report
        .iter()
        .find(|r| r["path"] == path)
        .unwrap_or_else(|| panic!("no {path} in {report:?}"))
}

#[test]
fn a_setsid_child_that_ignores_sigterm_is_stopped_with_its_worker_and_a_restart_waits_for_it() {
    let fx = escaper_fixture("500ms");
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let main = wait_up(&fx, "db");
    let helper = wait_helper(&fx, 1);
    assert_ne!(
        session_of(helper),
        session_of(main),
        "the helper left the session"
    );

    // restart: the old helper is stopped (SIGKILLed at the 500 ms deadline, it ignores
    // SIGTERM) before the new run starts, which the new run checks.
    cli_ok(&fx, &["restart", "db"]);
    let new_main = wait_for("the new run", WAIT, || {
        pids(&fx, "main.pids").get(1).copied()
    });
    assert_ne!(new_main, main);
    assert!(!alive(helper), "the old run's helper outlived the restart");
    assert_eq!(
        fx.read("overlap"),
        None,
        "the new run started while the old run's helper was alive"
    );

    // stop: the new helper is listed with its worker and is gone when `stop` answers.
    let helper2 = wait_helper(&fx, 2);
    let reply = request(&fx, &serde_json::json!({"cmd": "stop", "path": "db"}));
    assert_eq!(reply["ok"], true, "{reply}");
    let report = reply["report"].as_array().expect("a stop report");
    let db = worker_record(report, "db");
    assert_eq!(db["adopted"], serde_json::json!([helper2]), "{db}");
    assert_eq!(db["outcome"], "killed", "the helper ignores SIGTERM: {db}");
    assert!(!alive(helper2), "stop answered while the helper was alive");

    // shutdown: a third run's helper goes too.
    cli_ok(&fx, &["start", "db"]);
    let helper3 = wait_helper(&fx, 3);
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 3, "helpers were SIGKILLed; log:\n{}", arb.log());
    wait_until("the last helper to be gone", WAIT, || !alive(helper3));
}

#[test]
fn a_worker_that_daemonizes_on_every_run_leaves_no_process_nor_descriptor_behind() {
    // The main process starts a daemon (new session, holding stdout and stderr), waits until
    // it is up, and exits; `restart: always` starts it again at once. 100 runs.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
max_restarts: 1000
restart_window: 1s
children:
  daemonizer:
    restart: always
    stop_timeout: 2s
    backoff: { initial: 1ms, max: 2ms, jitter: 0 }
    shell: "setsid sh -c 'echo $$ >> $DIR/daemons; touch $DIR/up.$PPID; exec sleep 1000' & while [ ! -e $DIR/up.$$ ]; do sleep 0.01; done; exit 0"
"#,
    );
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", arb.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let restarts = |fx: &Fixture| {
        node(&status(fx), "daemonizer")
            .and_then(|n| n["restarts"].as_u64())
            .unwrap_or(0)
    };
    wait_until("10 restarts", WAIT, || restarts(&fx) >= 10);
    let fds_before = fds();
    wait_until("100 restarts", Duration::from_secs(60), || {
        restarts(&fx) >= 100
    });
    let fds_after = fds();
    // Every daemon but the current run's is gone, and none is left as a zombie.
    let daemons = pids(&fx, "daemons");
    assert!(daemons.len() >= 100, "{} daemons", daemons.len());
    let alive_daemons: Vec<i32> = daemons.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        alive_daemons.len() <= 1,
        "daemons of earlier runs still alive: {alive_daemons:?}"
    );
    assert!(
        fds_after <= fds_before + 4,
        "descriptors grew from {fds_before} to {fds_after} over 90 runs"
    );
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert!(code == 0 || code == 3, "exit {code}; log:\n{}", arb.log());
    for p in daemons {
        wait_until(&format!("daemon {p} to be gone"), WAIT, || !alive(p));
    }
}

#[test]
fn a_double_forked_daemon_is_listed_under_its_worker_and_stopped_with_it() {
    // The helper's parent exits at once: the daemon is adopted by arborist while its worker
    // still runs.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  web:
    shell: "setsid sh -c 'sleep 1000 & echo $! > $DIR/daemon.pid' & exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    wait_up(&fx, "web");
    let daemon = fx.wait_pid("daemon.pid");
    let listed = wait_for("the daemon listed under web", WAIT, || {
        let st = status(&fx);
        let adopted = node(&st, "web")?["adopted"].as_array()?.clone();
        (!adopted.is_empty()).then_some(adopted)
    });
    assert_eq!(listed, vec![serde_json::json!(daemon)]);
    let text = cli_ok(&fx, &["status"]);
    assert!(text.contains(&format!("adopted: {daemon}")), "{text}");
    let reply = request(&fx, &serde_json::json!({"cmd": "stop", "path": "web"}));
    let report = reply["report"].as_array().expect("a stop report");
    assert_eq!(
        worker_record(report, "web")["adopted"],
        serde_json::json!([daemon])
    );
    assert!(!alive(daemon), "stop answered while the daemon was alive");
    stop_cleanly(&mut arb);
}

/// postgres' case, scripted: the main process takes a lock, its setsid'd "checkpointer"
/// holds it too and needs a moment to let go; a new main process cannot start while the lock
/// is held (postgres: "pre-existing shared memory block is still in use").
const LOCKER: &str = r#"#!/bin/sh
d="$1"
exec 9>"$d/lock"
if ! flock -n 9; then echo "lock still held" >> "$d/refused"; exit 1; fi
setsid sh -c 'trap "sleep 0.3; exit 0" TERM; while :; do sleep 0.1; done' 9>&9 &
echo $$ >> "$d/main.pids"
trap 'exit 0' TERM
while :; do sleep 0.1; done
"#;

#[test]
fn a_restart_with_a_short_stop_timeout_never_starts_while_the_old_runs_helper_holds_its_lock() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  postgres:
    stop_timeout: 100ms
    command: ["sh", "$DIR/locker.sh", "$DIR"]
"#,
    );
    std::fs::write(fx.path("locker.sh"), LOCKER).expect("write locker.sh");
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    wait_up(&fx, "postgres");
    for n in 2..=4 {
        let out = cli(&fx, &["restart", "postgres"]);
        assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
        wait_for(&format!("run #{n}"), WAIT, || {
            pids(&fx, "main.pids").get(n - 1).copied()
        });
        assert_eq!(
            fx.read("refused"),
            None,
            "a new run started while the old helper held the lock"
        );
    }
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert!(code == 0 || code == 3, "exit {code}; log:\n{}", arb.log());
}
