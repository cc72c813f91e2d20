//! Live reload against the real binary (SIGHUP and `arborist reload`): the config file is
//! rewritten, the daemon told, and the result checked by PIDs in /proc and the status reply:
//! unchanged workers keep their process, changed ones get a new one, removed ones are gone,
//! pools scale from the highest index, group settings apply in place; an invalid file changes
//! nothing; a worker in backoff keeps its schedule.

mod ctl;
mod support;

use std::time::{Duration, Instant};

use ctl::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::*;

/// Rewrites the fixture's config (with `$DIR` expanded, as `Fixture::new` does).
fn rewrite(fx: &Fixture, text: &str) {
    let text = text.replace("$DIR", fx.dir.path().to_str().unwrap());
    std::fs::write(fx.config(), text).expect("rewrite the config");
}

fn lines(fx: &Fixture, name: &str) -> usize {
    fx.read(name).unwrap_or_default().lines().count()
}

fn sorted(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn reload_json(fx: &Fixture) -> Value {
    request(fx, &json!({"cmd": "reload"}))
}

#[test]
fn one_reload_adds_removes_changes_and_scales() {
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  keep:
    {}
  change:
    env: {{ VERSION: "1" }}
    {}
  gone:
    {}
  pool:
    replicas: 3
    {}
  single:
    {}
  grp:
    children:
      inner:
        {}
      inner_gone:
        {}
"#,
        sleeper("keep.pids"),
        sleeper("change.pids"),
        sleeper("gone.pids"),
        sleeper("pool.pids"),
        sleeper("single.pids"),
        sleeper("inner.pids"),
        sleeper("inner_gone.pids"),
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let before = [
        "keep",
        "change",
        "gone",
        "pool#0",
        "pool#1",
        "pool#2",
        "single",
        "grp/inner",
        "grp/inner_gone",
    ];
    let old = wait_all_up(&fx, &before);
    wait_lines(&fx, "keep.pids", 1);
    wait_lines(&fx, "pool.pids", 3);
    let pid = |name: &str| old[before.iter().position(|p| *p == name).unwrap()];

    rewrite(
        &fx,
        &format!(
            r#"
shutdown_timeout: 5s
children:
  keep:
    {}
  change:
    env: {{ VERSION: "2" }}
    {}
  pool:
    replicas: 2
    {}
  single:
    replicas: 2
    {}
  added:
    {}
  grp:
    strategy: one_for_all
    children:
      inner:
        {}
      inner_new:
        {}
"#,
            sleeper("keep.pids"),
            sleeper("change.pids"),
            sleeper("pool.pids"),
            sleeper("single.pids"),
            sleeper("added.pids"),
            sleeper("inner.pids"),
            sleeper("inner_new.pids"),
        ),
    );
    let r = reload_json(&fx);
    assert_eq!(r["ok"], true, "{r}");
    let d = &r["diff"];
    assert_eq!(sorted(&d["added"]), ["added", "grp/inner_new"], "{r}");
    assert_eq!(sorted(&d["removed"]), ["gone", "grp/inner_gone"], "{r}");
    assert_eq!(sorted(&d["changed"]), ["change"], "{r}");
    assert_eq!(
        sorted(&d["scaled"]),
        ["pool: 3 -> 2", "single: 1 -> 2"],
        "{r}"
    );
    assert_eq!(sorted(&d["updated"]), ["grp"], "{r}");
    // keep, pool#0, pool#1, single#0, grp/inner
    assert_eq!(d["unchanged"], 5, "{r}");
    arb.wait_log("reload applied");
    let log = arb.log();
    let summary = log
        .lines()
        .find(|l| l.contains("reload: added: "))
        .unwrap_or_else(|| panic!("no reload summary in the log:\n{log}"));
    for part in [
        "removed: ",
        "changed: change",
        "scaled: ",
        "pool: 3 -> 2",
        "single: 1 -> 2",
        "updated in place: grp",
        "unchanged workers: 5",
    ] {
        assert!(summary.contains(part), "{part:?} missing in {summary:?}");
    }

    let after = [
        "keep",
        "change",
        "pool#0",
        "pool#1",
        "single#0",
        "single#1",
        "added",
        "grp/inner",
        "grp/inner_new",
    ];
    let new = wait_all_up(&fx, &after);
    let now = |name: &str| new[after.iter().position(|p| *p == name).unwrap()];
    // Untouched: the very same processes.
    assert_eq!(now("keep"), pid("keep"));
    assert_eq!(now("pool#0"), pid("pool#0"));
    assert_eq!(now("pool#1"), pid("pool#1"));
    assert_eq!(now("grp/inner"), pid("grp/inner"));
    // `single` became `single#0` and kept its process.
    assert_eq!(now("single#0"), pid("single"));
    for name in ["keep", "pool#0", "pool#1", "grp/inner", "single"] {
        assert!(alive(pid(name)), "{name} died");
    }
    // Changed: a new process with the new spec; the old one is gone.
    assert_ne!(now("change"), pid("change"));
    assert!(!alive(pid("change")));
    assert_eq!(env_var(now("change"), "VERSION").as_deref(), Some("2"));
    // Removed and scaled down (the highest index): gone.
    for name in ["gone", "grp/inner_gone", "pool#2"] {
        assert!(!alive(pid(name)), "{name} ({}) still running", pid(name));
        assert!(group_members(pid(name)).is_empty(), "{name}'s group left");
    }
    // New ones: started with their path and replica index.
    assert_eq!(
        env_var(now("single#1"), "ARBORIST_PATH").as_deref(),
        Some("single#1")
    );
    assert_eq!(
        env_var(now("single#1"), "ARBORIST_REPLICA").as_deref(),
        Some("1")
    );
    assert_eq!(
        env_var(now("grp/inner_new"), "ARBORIST_PATH").as_deref(),
        Some("grp/inner_new")
    );
    for name in after {
        assert_eq!(parent_of(now(name)), Some(arb.pid()), "{name}");
    }
    let mut listed = paths(&status(&fx));
    listed.sort();
    let mut want: Vec<String> = after.iter().map(|s| s.to_string()).collect();
    want.extend(["(root)".to_string(), "grp".to_string()]);
    want.sort();
    assert_eq!(listed, want, "status after the reload");
    assert_eq!(lines(&fx, "keep.pids"), 1);
    assert_eq!(lines(&fx, "pool.pids"), 3);
    stop_cleanly(&mut arb);
}

#[test]
fn sighup_reloads_the_file() {
    let fx = Fixture::new(&format!(
        "shutdown_timeout: 5s\nchildren:\n  a:\n    {}\n  b:\n    {}\n",
        sleeper("a.pids"),
        sleeper("b.pids")
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let [a, b] = wait_all_up(&fx, &["a", "b"])[..] else {
        unreachable!()
    };
    rewrite(
        &fx,
        &format!(
            "shutdown_timeout: 5s\nchildren:\n  a:\n    env: {{ X: y }}\n    {}\n  b:\n    {}\n  c:\n    {}\n",
            sleeper("a.pids"),
            sleeper("b.pids"),
            sleeper("c.pids")
        ),
    );
    arb.signal(Signal::SIGHUP);
    arb.wait_log("reload applied");
    assert!(
        arb.log().contains(
            "reload: added: c; removed: none; changed: a; scaled: none; updated in place: none; unchanged workers: 1"
        ),
        "{}",
        arb.log()
    );
    let [a2, b2, c] = wait_all_up(&fx, &["a", "b", "c"])[..] else {
        unreachable!()
    };
    assert_ne!(a2, a);
    assert!(!alive(a));
    assert_eq!(b2, b);
    assert_eq!(env_var(a2, "X").as_deref(), Some("y"));
    assert_eq!(fx.wait_pid("c.pids"), c);
    assert_eq!(wait_daemon_running(&fx)["daemon"]["pid"], arb.pid());
    stop_cleanly(&mut arb);
}

#[test]
fn reload_without_changes_touches_nothing() {
    let fx = Fixture::new(&format!(
        "shutdown_timeout: 5s\nchildren:\n  a:\n    {}\n  p:\n    replicas: 2\n    {}\n",
        sleeper("a.pids"),
        sleeper("p.pids")
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let pids = wait_all_up(&fx, &["a", "p#0", "p#1"]);
    wait_lines(&fx, "a.pids", 1);
    wait_lines(&fx, "p.pids", 2);
    let out = cli_ok(&fx, &["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    assert!(out.contains("unchanged workers: 3"), "{out}");
    assert!(arb.log().contains("reload: no changes"), "{}", arb.log());
    arb.signal(Signal::SIGHUP);
    wait_until("a second reload", WAIT, || {
        arb.log_count("reload: no changes") == 2
    });
    assert_eq!(wait_all_up(&fx, &["a", "p#0", "p#1"]), pids);
    assert_eq!(lines(&fx, "a.pids"), 1);
    assert_eq!(lines(&fx, "p.pids"), 2);
    stop_cleanly(&mut arb);
}

#[test]
fn an_invalid_reload_is_rejected_with_located_errors_and_the_tree_runs_on() {
    let valid = format!(
        "shutdown_timeout: 5s\nchildren:\n  a:\n    {}\n  p:\n    replicas: 2\n    {}\n",
        sleeper("a.pids"),
        sleeper("p.pids")
    );
    let fx = Fixture::new(&valid);
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let pids = wait_all_up(&fx, &["a", "p#0", "p#1"]);
    let config = fx.config().display().to_string();

    // Line 4 column 5: an unknown key; line 7: a bad replica count. Both reported.
    rewrite(
        &fx,
        "shutdown_timeout: 5s\nchildren:\n  a:\n    bogus_key: 1\n    shell: \"exec sleep 1000\"\n  p:\n    replicas: many\n    shell: \"exec sleep 1000\"\n  new:\n    shell: \"exec sleep 1000\"\n",
    );
    let out = cli(&fx, &["reload"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!("{config}:4:5: a: ")),
        "{:?}",
        out.stderr
    );
    assert!(out.stderr.contains("bogus_key"), "{:?}", out.stderr);
    assert!(
        out.stderr.contains(&format!("{config}:7:")),
        "{:?}",
        out.stderr
    );
    arb.wait_log("reload rejected");
    assert!(
        arb.log().contains(&format!("{config}:4:5: a: ")),
        "{}",
        arb.log()
    );

    // The same over raw JSON: ok false, every error with file:line:col.
    let r = reload_json(&fx);
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("invalid"), "{r}");
    let errors: Vec<&str> = r["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let located: Vec<&&str> = errors
        .iter()
        .filter(|e| {
            let Some(rest) = e.strip_prefix(&format!("{config}:")) else {
                return false;
            };
            let mut it = rest.splitn(3, ':');
            let line = it.next().unwrap_or("");
            let col = it.next().unwrap_or("");
            !line.is_empty()
                && !col.is_empty()
                && line.chars().all(|c| c.is_ascii_digit())
                && col.chars().all(|c| c.is_ascii_digit())
        })
        .collect();
    assert_eq!(located.len(), 2, "two located errors expected: {errors:#?}");

    // SIGHUP with the same file: rejected as well.
    arb.signal(Signal::SIGHUP);
    wait_until("the SIGHUP reload to be rejected", WAIT, || {
        arb.log_count("reload rejected") == 3
    });

    // A file that does not parse at all.
    rewrite(&fx, "children: [unclosed\n");
    let out = cli(&fx, &["reload"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!("{config}:")),
        "{:?}",
        out.stderr
    );

    // A file that is gone.
    std::fs::remove_file(fx.config()).unwrap();
    let out = cli(&fx, &["reload"]);
    assert_eq!(out.code, 1, "{}", out.stdout);

    // Nothing changed and the daemon still serves.
    assert_eq!(wait_all_up(&fx, &["a", "p#0", "p#1"]), pids);
    let s = status(&fx);
    assert_eq!(s["daemon"]["state"], "running", "{s}");
    assert!(node(&s, "new").is_none(), "{s}");
    assert!(!arb.log().contains("reload applied"));
    for &p in &pids {
        assert!(alive(p));
    }

    // And a valid file afterwards is applied.
    rewrite(
        &fx,
        &format!(
            "shutdown_timeout: 5s\nchildren:\n  a:\n    {}\n  p:\n    replicas: 2\n    {}\n  new:\n    {}\n",
            sleeper("a.pids"),
            sleeper("p.pids"),
            sleeper("new.pids")
        ),
    );
    let out = cli_ok(&fx, &["reload"]);
    assert!(out.contains("added: new"), "{out}");
    wait_up(&fx, "new");
    assert_eq!(wait_all_up(&fx, &["a", "p#0", "p#1"]), pids);
    stop_cleanly(&mut arb);
}

const FLAKY: &str = r#"
  flaky:
    restart: on-failure
    backoff: { initial: 2s, max: 2s, factor: 1, jitter: 0 }
    shell: "echo $$ >> $DIR/flaky.pids; exit 1"
"#;

#[test]
fn a_reload_keeps_the_backoff_of_an_unchanged_worker() {
    let fx = Fixture::new(&format!(
        "shutdown_timeout: 5s\nchildren:\n  steady:\n    {}{FLAKY}",
        sleeper("steady.pids")
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let steady = wait_up(&fx, "steady");
    let n = wait_state(&fx, "flaky", "backoff");
    let seen = Instant::now();
    assert_eq!(n["restarts"], 1, "{n}");
    assert_eq!(n["last_exit"], "exit status 1", "{n}");
    let next = n["next_restart_in_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("{n}"));
    assert!(next <= 2000, "{n}");
    assert_eq!(lines(&fx, "flaky.pids"), 1);

    rewrite(
        &fx,
        &format!(
            "shutdown_timeout: 5s\nchildren:\n  steady:\n    {}{FLAKY}  newbie:\n    {}\n",
            sleeper("steady.pids"),
            sleeper("newbie.pids")
        ),
    );
    let out = cli_ok(&fx, &["reload"]);
    assert!(out.contains("added: newbie"), "{out}");
    wait_up(&fx, "newbie");

    // Still waiting out the same delay: not restarted by the reload, not reset.
    let s = status(&fx);
    let n2 = node(&s, "flaky").unwrap();
    assert_eq!(n2["state"], "backoff", "{s}");
    assert_eq!(n2["restarts"], 1, "{n2}");
    let next2 = n2["next_restart_in_ms"].as_u64().unwrap();
    assert!(
        next2 <= next,
        "backoff reset by the reload: {next} -> {next2}"
    );
    assert_eq!(lines(&fx, "flaky.pids"), 1, "restarted by the reload");
    assert_eq!(pid_in(&s, "steady"), Some(steady));

    // It restarts on its old schedule.
    wait_until("flaky's restart", WAIT, || lines(&fx, "flaky.pids") == 2);
    let at = seen.elapsed();
    assert!(
        at + Duration::from_millis(300) >= Duration::from_millis(next),
        "flaky restarted after {at:?}, its backoff had {next}ms left"
    );
    let n3 = wait_for("flaky's second backoff", WAIT, || {
        let s = status(&fx);
        let n = node(&s, "flaky")?.clone();
        (n["state"] == "backoff" && n["restarts"] == 2).then_some(n)
    });
    assert_eq!(n3["last_exit"], "exit status 1");
    stop_cleanly(&mut arb);
}

#[test]
fn a_reload_restarts_a_changed_worker_in_backoff_with_its_new_spec() {
    let fx = Fixture::new(&format!(
        "shutdown_timeout: 5s\nchildren:\n  steady:\n    {}{FLAKY}",
        sleeper("steady.pids")
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let steady = wait_up(&fx, "steady");
    wait_state(&fx, "flaky", "backoff");
    rewrite(
        &fx,
        &format!(
            "shutdown_timeout: 5s\nchildren:\n  steady:\n    {}\n  flaky:\n    {}\n",
            sleeper("steady.pids"),
            sleeper("fixed.pids")
        ),
    );
    let r = reload_json(&fx);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["diff"]["changed"], json!(["flaky"]), "{r}");
    let fixed = wait_up(&fx, "flaky");
    assert_eq!(fx.wait_pid("fixed.pids"), fixed);
    assert_eq!(lines(&fx, "flaky.pids"), 1);
    assert_eq!(pid_in(&status(&fx), "steady"), Some(steady));
    stop_cleanly(&mut arb);
}

#[test]
fn scaling_a_single_worker_up_and_back_keeps_its_process() {
    let one = format!(
        "shutdown_timeout: 5s\nchildren:\n  api:\n    {}\n",
        sleeper("api.pids")
    );
    let three = format!(
        "shutdown_timeout: 5s\nchildren:\n  api:\n    replicas: 3\n    {}\n",
        sleeper("api.pids")
    );
    let fx = Fixture::new(&one);
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let api = wait_up(&fx, "api");

    rewrite(&fx, &three);
    let out = cli_ok(&fx, &["reload"]);
    assert!(out.contains("scaled: api: 1 -> 3"), "{out}");
    assert!(out.contains("unchanged workers: 1"), "{out}");
    let pool = wait_all_up(&fx, &["api#0", "api#1", "api#2"]);
    wait_lines(&fx, "api.pids", 3);
    assert_eq!(pool[0], api, "api#0 is the old api");
    assert_eq!(paths(&status(&fx)), ["(root)", "api#0", "api#1", "api#2"]);
    for (i, &p) in pool.iter().enumerate().skip(1) {
        assert_ne!(p, api);
        assert_eq!(
            env_var(p, "ARBORIST_PATH"),
            Some(format!("api#{i}")),
            "pid {p}"
        );
        assert_eq!(env_var(p, "ARBORIST_REPLICA"), Some(i.to_string()));
    }

    rewrite(&fx, &one);
    let r = reload_json(&fx);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["diff"]["scaled"], json!(["api: 3 -> 1"]), "{r}");
    assert_eq!(r["diff"]["unchanged"], 1, "{r}");
    assert_eq!(wait_up(&fx, "api"), api);
    assert_eq!(paths(&status(&fx)), ["(root)", "api"]);
    assert!(!alive(pool[1]) && !alive(pool[2]));
    assert!(alive(api));
    assert_eq!(lines(&fx, "api.pids"), 3);
    stop_cleanly(&mut arb);
}

#[test]
fn group_settings_change_in_place_without_restarting_workers() {
    let group = |extra: &str| {
        format!(
            r#"
shutdown_timeout: 5s
children:
  db:
    {}
  grp:
{extra}
    children:
      a:
        restart: always
        backoff: {{ initial: 10ms, max: 20ms }}
        {}
      b:
        {}
"#,
            sleeper("db.pids"),
            sleeper("a.pids"),
            sleeper("b.pids")
        )
    };
    let fx = Fixture::new(&group(
        "    strategy: one_for_one\n    max_restarts: 5\n    shutdown_timeout: 3s",
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let pids = wait_all_up(&fx, &["db", "grp/a", "grp/b"]);
    wait_lines(&fx, "a.pids", 1);
    wait_lines(&fx, "b.pids", 1);

    rewrite(
        &fx,
        &group("    strategy: one_for_all\n    max_restarts: 10\n    shutdown_timeout: 2s\n    stop_order: parallel\n    depends_on: [db]"),
    );
    let r = reload_json(&fx);
    assert_eq!(r["ok"], true, "{r}");
    let d = &r["diff"];
    assert_eq!(sorted(&d["updated"]), ["grp", "grp (depends_on)"], "{r}");
    for k in ["added", "removed", "changed", "scaled"] {
        assert_eq!(d[k], json!([]), "{k}: {r}");
    }
    assert_eq!(d["unchanged"], 3, "{r}");
    arb.wait_log("reload applied");
    assert_eq!(wait_all_up(&fx, &["db", "grp/a", "grp/b"]), pids);

    // The new strategy is in force: a crash of `a` now restarts `b` with it.
    kill(Pid::from_raw(pids[1]), Signal::SIGKILL).unwrap();
    wait_until("a and b restarted", WAIT, || {
        lines(&fx, "a.pids") == 2 && lines(&fx, "b.pids") == 2
    });
    let now = wait_all_up(&fx, &["db", "grp/a", "grp/b"]);
    assert_eq!(now[0], pids[0]);
    assert_ne!(now[1], pids[1]);
    assert_ne!(
        now[2], pids[2],
        "one_for_all did not apply after the reload"
    );
    stop_cleanly(&mut arb);
}

#[test]
fn a_reload_keeps_an_operator_stopped_worker_stopped() {
    let base = format!(
        "shutdown_timeout: 5s\nchildren:\n  held:\n    restart: always\n    {}\n  other:\n    {}\n",
        sleeper("held.pids"),
        sleeper("other.pids")
    );
    let fx = Fixture::new(&base);
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let [held, other] = wait_all_up(&fx, &["held", "other"])[..] else {
        unreachable!()
    };
    wait_lines(&fx, "held.pids", 1);
    cli_ok(&fx, &["stop", "held"]);
    assert!(!alive(held));
    rewrite(
        &fx,
        &format!("{base}  newbie:\n    {}\n", sleeper("newbie.pids")),
    );
    cli_ok(&fx, &["reload"]);
    wait_up(&fx, "newbie");
    holds_for("held staying stopped", Duration::from_millis(300), || {
        lines(&fx, "held.pids") == 1
    });
    let s = status(&fx);
    assert_eq!(node(&s, "held").unwrap()["state"], "stopped", "{s}");
    assert_eq!(pid_in(&s, "other"), Some(other));
    cli_ok(&fx, &["start", "held"]);
    assert_ne!(wait_up(&fx, "held"), held);
    stop_cleanly(&mut arb);
}

#[test]
fn status_keeps_config_order_after_a_reload() {
    let v = |n: u32, extra: &str| {
        format!(
            "shutdown_timeout: 5s\nchildren:\n  first:\n    env: {{ V: \"{n}\" }}\n    {}\n{extra}  second:\n    {}\n  third:\n    {}\n",
            sleeper("first.pids"),
            sleeper("second.pids"),
            sleeper("third.pids")
        )
    };
    let fx = Fixture::new(&v(1, ""));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    wait_all_up(&fx, &["first", "second", "third"]);
    assert_eq!(paths(&status(&fx)), ["(root)", "first", "second", "third"]);

    // `first` changes (restarts) and `middle` is added between first and second.
    rewrite(
        &fx,
        &v(2, &format!("  middle:\n    {}\n", sleeper("middle.pids"))),
    );
    cli_ok(&fx, &["reload"]);
    wait_all_up(&fx, &["first", "middle", "second", "third"]);
    let s = status(&fx);
    let listed = paths(&s);
    let text = cli_ok(&fx, &["status"]);
    stop_cleanly(&mut arb);
    assert_eq!(
        listed,
        ["(root)", "first", "middle", "second", "third"],
        "status is not in tree (config/start) order after the reload:\n{text}"
    );
}

#[test]
fn a_reload_during_startup_keeps_the_daemon_starting() {
    // `slow` is never ready, so the tree (and the daemon) stay `starting`.
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  slow:
    ready: {{ exec: ["false"], interval: 50ms }}
    {}
"#,
        sleeper("slow.pids")
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let slow = fx.wait_pid("slow.pids");
    // `starting` is shown from the launch on; the pid once the process exists.
    wait_for("slow to be starting with its pid", WAIT, || {
        let s = status(&fx);
        node(&s, "slow").filter(|n| n["state"] == "starting" && n["pid"] == slow)?;
        Some(())
    });
    assert_eq!(status(&fx)["daemon"]["state"], "starting");
    let out = cli_ok(&fx, &["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    arb.wait_log("reload applied");
    let s = status(&fx);
    stop_cleanly(&mut arb);
    assert_eq!(node(&s, "slow").unwrap()["state"], "starting", "{s}");
    assert_eq!(
        s["daemon"]["state"], "starting",
        "the tree is not ready, yet after a reload the daemon says: {s:#}"
    );
}

#[test]
fn a_reload_that_changes_an_operator_stopped_worker_keeps_it_stopped() {
    let conf = |v: u32| {
        format!(
            "shutdown_timeout: 5s\nchildren:\n  held:\n    env: {{ V: \"{v}\" }}\n    {}\n  other:\n    {}\n",
            sleeper("held.pids"),
            sleeper("other.pids")
        )
    };
    let fx = Fixture::new(&conf(1));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let [held, other] = wait_all_up(&fx, &["held", "other"])[..] else {
        unreachable!()
    };
    wait_lines(&fx, "held.pids", 1);
    cli_ok(&fx, &["stop", "held"]);
    assert!(!alive(held));
    rewrite(&fx, &conf(2));
    let out = cli_ok(&fx, &["reload"]);
    assert!(out.contains("changed: held"), "{out}");
    arb.wait_log("reload applied");
    holds_for("held staying stopped", Duration::from_millis(300), || {
        lines(&fx, "held.pids") == 1
    });
    let s = status(&fx);
    assert_eq!(node(&s, "held").unwrap()["state"], "stopped", "{s}");
    assert_eq!(pid_in(&s, "other"), Some(other));
    // `start` brings it up with the new spec.
    cli_ok(&fx, &["start", "held"]);
    let held2 = wait_up(&fx, "held");
    // /proc/PID/environ can be read mid-exec (`exec sleep`); poll until V shows, bounded.
    let v = wait_for("held's environment to show V", WAIT, || env_var(held2, "V"));
    assert_eq!(v, "2");
    stop_cleanly(&mut arb);
}
