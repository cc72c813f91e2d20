//! The guardian under supervision (SPEC §3 Ownership; issue 12 point 5): a guardian that dies
//! is noticed, logged and replaced, and the new one is told every live group; spawns made
//! while it is gone neither die of SIGPIPE nor fail; and when arborist itself is SIGKILLed,
//! the guardian gives each worker its stop signal and `guardian_grace` before SIGKILL.
//! Real binary, real signals; every wait is bounded.

mod ctl;
mod support;

use std::time::{Duration, Instant};

use ctl::{cli, node, status, wait_state};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use support::*;

fn cmdline(pid: i32) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

/// arborist's live guardian child (`arborist __guardian …`), if any.
fn guardian_of(arborist: i32) -> Option<i32> {
    children_of(arborist)
        .into_iter()
        .filter(|&(_, state)| state != 'Z')
        .map(|(pid, _)| pid)
        .find(|&pid| {
            cmdline(pid)
                .split(|&b| b == 0)
                .any(|arg| arg == b"__guardian")
        })
}

/// A guardian other than `old`, once arborist has one.
fn wait_new_guardian(arb: &Arborist, old: i32, limit: Duration) -> i32 {
    wait_for("a new guardian", limit, || {
        guardian_of(arb.pid()).filter(|&g| g != old)
    })
}

fn number(e: &serde_json::Map<String, Value>, key: &str) -> Option<i64> {
    e.get(key).and_then(Value::as_i64)
}

/// Waits for the JSON event that logs the start of guardian `new` in place of `old`.
fn wait_replacement_logged(arb: &Arborist, old: i32, new: i32) {
    wait_until("the new guardian's start in the log", WAIT, || {
        events(&arb.log()).iter().any(|e| {
            field(e, "level") == "INFO"
                && number(e, "guardian") == Some(new.into())
                && number(e, "replaces") == Some(old.into())
        })
    });
}

/// Every pid in file `name` of the fixture, one a line.
fn pids_in(fx: &Fixture, name: &str) -> Vec<i32> {
    fx.read(name)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn wait_all_gone(what: &str, pids: &[i32], limit: Duration) {
    wait_until(what, limit, || pids.iter().all(|&p| !alive(p)));
}

#[test]
fn a_sigkilled_guardian_is_replaced_and_20_restarts_succeed_and_a_sigkill_of_arborist_then_leaves_nothing(
) {
    // `steady` runs all along: its group was told only to the first guardian, so only the
    // re-registration can make the second one end its grandchild.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  steady:
    shell: "sleep 1000 & echo $! > $DIR/steady-gc.pid; echo $$ > $DIR/steady.pid; wait"
  w:
    shell: "sleep 1000 & echo $! >> $DIR/w-gc.pids; echo $$ >> $DIR/w.pids; wait"
"#,
    );
    let mut arb = fx.run(&["--log-format", "json"]);
    let steady = [fx.wait_pid("steady.pid"), fx.wait_pid("steady-gc.pid")];
    fx.wait_pid("w.pids");
    let old = wait_for("the guardian", WAIT, || guardian_of(arb.pid()));

    kill(Pid::from_raw(old), Signal::SIGKILL).expect("SIGKILL the guardian");
    wait_until("the guardian to die", WAIT, || !alive(old));
    // At once, while there may be no guardian yet: a new worker writing its group into the
    // dead guardian's pipe must neither die of SIGPIPE nor fail its spawn.
    for i in 0..20 {
        let out = cli(&fx, &["restart", "w"]);
        assert_eq!(
            out.code,
            0,
            "restart #{i}: {}{}\nlog:\n{}",
            out.stdout,
            out.stderr,
            arb.log()
        );
    }

    let new = wait_new_guardian(&arb, old, WAIT);
    assert_eq!(
        parent_of(new),
        Some(arb.pid()),
        "the new guardian is arborist's child"
    );
    wait_replacement_logged(&arb, old, new);
    let log = arb.log();
    let events = events(&log);
    assert!(
        events.iter().any(|e| field(e, "level") == "WARN"
            && number(e, "guardian") == Some(old.into())
            && field(e, "status") == "signal SIGKILL"),
        "the guardian's death is not logged with its status:\n{log}"
    );

    // No run of w failed: operator restarts are not counted, a run that died is. (The last
    // restart's reply comes once the new run is launched, maybe before its spawn: wait.)
    wait_state(&fx, "w", "running");
    let s = status(&fx);
    let w = node(&s, "w").expect("w in status");
    assert_eq!(w["state"], "running", "{s:#}");
    assert_eq!(w["restarts"], 0, "a run of w failed: {s:#}\nlog:\n{log}");
    assert!(
        !events
            .iter()
            .any(|e| field(e, "path") == "w" && field(e, "level") == "WARN"),
        "warnings about w:\n{log}"
    );
    let current = w["pid"].as_i64().expect("w's pid") as i32;
    wait_until("the current run of w to record itself", WAIT, || {
        pids_in(&fx, "w.pids").last() == Some(&current)
    });

    let mut pids = steady.to_vec();
    pids.extend(pids_in(&fx, "w.pids"));
    pids.extend(pids_in(&fx, "w-gc.pids"));
    pids.push(new);
    let (code, _) = arb.stop_with(Signal::SIGKILL, WAIT);
    assert_eq!(code, 128 + 9);
    // The default grace is 2 s; these workers end at their stop signal.
    let left = |pids: &[i32]| {
        pids.iter()
            .copied()
            .filter(|&p| alive(p))
            .collect::<Vec<_>>()
    };
    let start = Instant::now();
    while !left(&pids).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "left after arborist's SIGKILL: {:?}",
            left(&pids)
        );
        std::thread::sleep(Duration::from_millis(20)); // poll interval of a bounded wait
    }
}

#[test]
fn when_arborist_is_sigkilled_the_guardian_sends_each_worker_its_stop_signal_then_sigkill_after_the_grace(
) {
    // `polite` records its SIGTERM and leaves; `stubborn` (and its grandchild) ignore it and
    // only go at the guardian's SIGKILL.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
guardian_grace: 1s
children:
  polite:
    shell: "trap 'echo term > $DIR/polite.term; exit 0' TERM; sleep 1000 & echo $! > $DIR/polite-gc.pid; echo $$ > $DIR/polite.pid; wait"
  stubborn:
    shell: "trap '' TERM; sleep 1000 & echo $! > $DIR/stubborn-gc.pid; echo $$ > $DIR/stubborn.pid; wait"
"#,
    );
    let grace = Duration::from_secs(1);
    let mut arb = fx.run(&[]);
    let polite = [fx.wait_pid("polite.pid"), fx.wait_pid("polite-gc.pid")];
    let stubborn = [fx.wait_pid("stubborn.pid"), fx.wait_pid("stubborn-gc.pid")];
    let guardian = wait_for("the guardian", WAIT, || guardian_of(arb.pid()));
    let grace_arg = cmdline(guardian);
    assert!(
        grace_arg.split(|&b| b == 0).any(|a| a == b"1s"),
        "the guardian was not given the grace: {:?}",
        String::from_utf8_lossy(&grace_arg)
    );

    let killed_at = Instant::now();
    arb.signal(Signal::SIGKILL);
    arb.wait_exit(WAIT);
    // The stop signal came while the worker could still act on it.
    assert_eq!(
        fx.wait_file_within("polite.term", grace + Duration::from_secs(3)),
        "term"
    );
    wait_all_gone(
        "polite's processes",
        &polite,
        grace + Duration::from_secs(3),
    );
    wait_all_gone(
        "stubborn's processes",
        &stubborn,
        grace + Duration::from_secs(3),
    );
    let took = killed_at.elapsed();
    assert!(
        took >= grace,
        "processes ignoring SIGTERM were killed after {took:?}, before the {grace:?} grace"
    );
    wait_until("the guardian to leave", WAIT, || !alive(guardian));
}

#[test]
fn a_guardian_that_dies_while_arborist_is_idle_is_replaced_and_told_every_live_group() {
    // The worker and its grandchild ignore SIGTERM: once arborist is SIGKILLed, only a
    // guardian that knows their group ends them.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
guardian_grace: 200ms
children:
  w:
    shell: "trap '' TERM; sleep 1000 & echo $! > $DIR/gc.pid; echo $$ > $DIR/w.pid; wait"
"#,
    );
    let mut arb = fx.run(&["--log-format", "json"]);
    let pids = [fx.wait_pid("w.pid"), fx.wait_pid("gc.pid")];
    let old = wait_for("the guardian", WAIT, || guardian_of(arb.pid()));

    // Nothing else happens: the reaper notices.
    kill(Pid::from_raw(old), Signal::SIGKILL).expect("SIGKILL the guardian");
    let new = wait_new_guardian(&arb, old, WAIT);
    wait_replacement_logged(&arb, old, new);

    let (code, _) = arb.stop_with(Signal::SIGKILL, WAIT);
    assert_eq!(code, 128 + 9);
    wait_all_gone(
        "the worker and its grandchild",
        &pids,
        Duration::from_millis(200) + Duration::from_secs(3),
    );
    wait_until("the new guardian to leave", WAIT, || !alive(new));
}
