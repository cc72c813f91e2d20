//! The control socket and the operator verbs against the real binary: `status` (text and
//! JSON, checked against /proc), `start`/`stop`/`restart` of a worker, a replica, a pool and a
//! group, `shutdown`, the socket's life cycle (mode 0600, removed on exit, a stale socket
//! replaced, a live one refusing a second daemon), bad requests (malformed, unknown, oversized),
//! an idle client, 100 concurrent clients while workers crash, refusals during shutdown and
//! SIGUSR1. Workers are real `sh` processes; every wait is bounded.

mod ctl;
mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ctl::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

/// db, then a group `backend` (after db) with a pool of three and one more worker.
fn tree() -> String {
    format!(
        r#"
shutdown_timeout: 5s
children:
  db:
    {}
  backend:
    depends_on: [db]
    children:
      api:
        replicas: 3
        {}
      warm:
        {}
"#,
        sleeper("db.pids"),
        sleeper("api.pids"),
        sleeper("warm.pids")
    )
}

const WORKERS: [&str; 5] = [
    "db",
    "backend/api#0",
    "backend/api#1",
    "backend/api#2",
    "backend/warm",
];

/// Starts the tree and waits until every worker is up; returns the pids in `WORKERS` order.
fn start_tree(fx: &Fixture) -> (Arborist, Vec<i32>) {
    let arb = fx.run(&[]);
    wait_serving(fx);
    let pids = wait_all_up(fx, &WORKERS);
    (arb, pids)
}

/// Pids of `paths` in the current status (None for a node that is not up).
fn pids_now(fx: &Fixture, paths: &[&str]) -> Vec<Option<i32>> {
    let s = status(fx);
    paths.iter().map(|p| pid_in(&s, p)).collect()
}

fn lines(fx: &Fixture, name: &str) -> usize {
    fx.read(name).unwrap_or_default().lines().count()
}

/// The line of the text status that shows `name` (the last segment of a path).
fn text_line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.split_whitespace()
                .any(|w| w.trim_start_matches(['├', '└', '│', '─']) == name)
        })
        .unwrap_or_else(|| panic!("no line for {name} in:\n{text}"))
}

#[test]
fn status_json_reports_every_node_and_matches_proc() {
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  db:
    {}
  probed:
    {}
    ready: {{ exec: ["true"], interval: 20ms }}
  backend:
    depends_on: [db]
    children:
      api:
        replicas: 3
        {}
      warm:
        {}
"#,
        sleeper("db.pids"),
        sleeper("probed.pids"),
        sleeper("api.pids"),
        sleeper("warm.pids")
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    // The daemon is `running` once the root is ready, which needs probed's probe to pass.
    let s = wait_daemon_running(&fx);
    assert_eq!(s["ok"], true);

    let d = &s["daemon"];
    assert_eq!(d["pid"], arb.pid(), "{d}");
    assert_eq!(d["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(d["config"], fx.config().display().to_string());
    assert!(d["uptime_ms"].is_u64(), "{d}");

    // Tree order, depth, kinds.
    assert_eq!(
        paths(&s),
        [
            "(root)",
            "db",
            "probed",
            "backend",
            "backend/api#0",
            "backend/api#1",
            "backend/api#2",
            "backend/warm"
        ]
    );
    let depth: Vec<u64> = nodes(&s)
        .iter()
        .map(|n| n["depth"].as_u64().unwrap())
        .collect();
    assert_eq!(depth, [0, 1, 1, 1, 2, 2, 2, 2]);
    let root = node(&s, "(root)").unwrap();
    assert_eq!(root["kind"], "group");
    assert_eq!(root["state"], "ready");
    assert_eq!(root["pid"], arb.pid());
    let backend = node(&s, "backend").unwrap();
    assert_eq!(backend["kind"], "group");
    assert_eq!(backend["state"], "ready");
    assert!(
        backend.get("pid").is_none(),
        "a group has no pid: {backend}"
    );

    // Every worker: its pid is alive, a child of arborist, the pid the worker wrote itself,
    // with ARBORIST_PATH / ARBORIST_REPLICA set.
    for (path, file, replica) in [
        ("db", "db.pids", 0),
        ("probed", "probed.pids", 0),
        ("backend/api#0", "api.pids", 0),
        ("backend/api#1", "api.pids", 1),
        ("backend/api#2", "api.pids", 2),
        ("backend/warm", "warm.pids", 0),
    ] {
        let n = node(&s, path).unwrap();
        assert_eq!(n["kind"], "worker", "{n}");
        let want = if path == "probed" { "ready" } else { "running" };
        assert_eq!(n["state"], want, "{n}");
        assert_eq!(n["restarts"], 0, "{n}");
        assert!(n["uptime_ms"].is_u64(), "{n}");
        assert!(n.get("next_restart_in_ms").is_none(), "{n}");
        assert!(n.get("stop_report").is_none(), "{n}");
        let pid = n["pid"].as_i64().unwrap() as i32;
        assert!(alive(pid), "{path}: pid {pid} is not alive");
        assert_eq!(parent_of(pid), Some(arb.pid()), "{path}: parent of {pid}");
        assert_eq!(proc_state(pid).map(|c| c != 'Z'), Some(true));
        // The worker writes its own pid ($$, kept by `exec`) a moment after it is spawned.
        wait_until(&format!("{path}: pid {pid} in {file}"), WAIT, || {
            fx.read(file)
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == pid.to_string())
        });
        assert_eq!(env_var(pid, "ARBORIST_PATH").as_deref(), Some(path));
        assert_eq!(
            env_var(pid, "ARBORIST_REPLICA"),
            Some(replica.to_string()),
            "{path}"
        );
    }

    // The CLI's --json is the same document.
    let out = cli_ok(&fx, &["status", "--json"]);
    let cli_json: Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(cli_json["ok"], true);
    assert_eq!(paths(&cli_json), paths(&s));
    for p in paths(&s) {
        assert_eq!(pid_in(&cli_json, &p), pid_in(&s, &p), "{p}");
    }
    assert_eq!(cli_json["daemon"]["pid"], arb.pid());

    // The text tree.
    let text = cli_ok(&fx, &["status"]);
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with(&format!(
            "arborist {} (pid {})",
            env!("CARGO_PKG_VERSION"),
            arb.pid()
        )),
        "{text}"
    );
    assert!(text.lines().nth(1).unwrap().starts_with("(root)"), "{text}");
    let db = text_line(&text, "db");
    assert!(db.starts_with("├─ db"), "{db}");
    for w in ["worker", "running", "restarts 0", "up "] {
        assert!(db.contains(w), "{w:?} missing in {db:?}");
    }
    assert!(
        db.contains(&format!("pid {}", pid_in(&s, "db").unwrap())),
        "{db}"
    );
    assert!(text_line(&text, "probed").contains("ready"), "{text}");
    assert!(
        text_line(&text, "backend").starts_with("└─ backend"),
        "{text}"
    );
    let api1 = text_line(&text, "api#1");
    assert!(api1.starts_with("   ├─ api#1"), "{api1:?}");
    assert!(
        api1.contains(&format!("pid {}", pid_in(&s, "backend/api#1").unwrap())),
        "{api1}"
    );
    assert!(text_line(&text, "warm").starts_with("   └─ warm"), "{text}");
    stop_cleanly(&mut arb);
}

#[test]
fn stop_and_start_a_worker_via_the_cli() {
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  db:
    restart: always
    backoff: {{ initial: 10ms, max: 20ms }}
    {}
  other:
    {}
"#,
        sleeper("db.pids"),
        sleeper("other.pids")
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let [db, other] = wait_all_up(&fx, &["db", "other"])[..] else {
        unreachable!()
    };
    assert_eq!(fx.wait_pid("db.pids"), db);

    let out = cli(&fx, &["stop", "db"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("stopped db"), "{}", out.stdout);
    assert!(out.stdout.contains("db: stopped in"), "{}", out.stdout);
    // The reply comes once the worker is gone, not before.
    assert!(!alive(db), "db {db} still alive after `stop` returned");

    let s = status(&fx);
    let n = node(&s, "db").unwrap();
    assert_eq!(n["state"], "stopped", "{n}");
    assert!(n.get("pid").is_none(), "{n}");
    let r = &n["stop_report"];
    assert_eq!(r["outcome"], "met", "{n}");
    assert_eq!(r["pid"], db, "{n}");
    assert_eq!(r["signal"], "SIGTERM", "{n}");
    assert_eq!(pid_in(&s, "other"), Some(other));
    let text = cli_ok(&fx, &["status"]);
    let line = text_line(&text, "db");
    assert!(line.contains("stopped"), "{line}");
    assert!(line.contains("stop: "), "{line}");
    assert!(line.contains("(deadline met)"), "{line}");

    // restart: always, fast backoff: it would be back within milliseconds if it restarted.
    holds_for("db staying stopped", Duration::from_millis(300), || {
        lines(&fx, "db.pids") == 1
    });
    assert_eq!(node(&status(&fx), "db").unwrap()["state"], "stopped");
    assert!(alive(arb.pid()));

    let out = cli(&fx, &["start", "db"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("starting db"), "{}", out.stdout);
    let db2 = wait_up(&fx, "db");
    assert_ne!(db2, db);
    assert!(alive(db2));
    wait_lines(&fx, "db.pids", 2);
    assert_eq!(pid_in(&status(&fx), "other"), Some(other));

    // Starting a running node changes nothing.
    let out = cli(&fx, &["start", "db"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("already running"), "{}", out.stdout);
    assert_eq!(pid_in(&status(&fx), "db"), Some(db2));
    stop_cleanly(&mut arb);
}

#[test]
fn stop_and_start_a_replica_over_raw_json() {
    let fx = Fixture::new(&tree());
    let (mut arb, pids) = start_tree(&fx);
    let mut conn = Conn::connect(&sock(&fx));

    let r = conn.request(&json!({"cmd": "stop", "path": "backend/api#1"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["message"], "stopped backend/api#1", "{r}");
    let report = r["report"].as_array().expect("report");
    assert_eq!(report.len(), 1, "{r}");
    assert_eq!(report[0]["path"], "backend/api#1");
    assert_eq!(report[0]["kind"], "worker");
    assert_eq!(report[0]["pid"], pids[2]);
    assert_eq!(report[0]["signal"], "SIGTERM");
    assert_eq!(report[0]["outcome"], "met");
    let took = report[0]["took_ms"].as_u64().unwrap();
    assert!(took <= report[0]["deadline_ms"].as_u64().unwrap(), "{r}");
    assert!(!alive(pids[2]));

    let s = conn.send(r#"{"cmd":"status"}"#);
    assert_eq!(node(&s, "backend/api#1").unwrap()["state"], "stopped");
    assert_eq!(
        node(&s, "backend/api#1").unwrap()["stop_report"]["pid"],
        pids[2]
    );
    let now = pids_now(&fx, &WORKERS);
    assert_eq!(
        now,
        [
            Some(pids[0]),
            Some(pids[1]),
            None,
            Some(pids[3]),
            Some(pids[4])
        ]
    );
    // The group is not restarted and neither is the pool.
    assert_eq!(node(&s, "backend").unwrap()["state"], "ready");

    let r = conn.request(&json!({"cmd": "start", "path": "backend/api#1"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["message"], "starting backend/api#1", "{r}");
    let api1 = wait_up(&fx, "backend/api#1");
    assert_ne!(api1, pids[2]);
    assert_eq!(
        env_var(api1, "ARBORIST_PATH").as_deref(),
        Some("backend/api#1")
    );
    assert_eq!(env_var(api1, "ARBORIST_REPLICA").as_deref(), Some("1"));
    let now = pids_now(&fx, &WORKERS);
    assert_eq!(
        now,
        [
            Some(pids[0]),
            Some(pids[1]),
            Some(api1),
            Some(pids[3]),
            Some(pids[4])
        ]
    );
    stop_cleanly(&mut arb);
}

#[test]
fn stop_and_start_a_whole_pool() {
    let fx = Fixture::new(&tree());
    let (mut arb, pids) = start_tree(&fx);

    let r = request(&fx, &json!({"cmd": "stop", "path": "backend/api"}));
    assert_eq!(r["ok"], true, "{r}");
    let mut stopped: Vec<String> = r["report"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rec| {
            assert_eq!(rec["outcome"], "met", "{rec}");
            rec["path"].as_str().unwrap().to_string()
        })
        .collect();
    stopped.sort();
    assert_eq!(stopped, ["backend/api#0", "backend/api#1", "backend/api#2"]);
    for &p in &pids[1..4] {
        assert!(!alive(p), "replica {p} survived the stop of its pool");
    }
    let s = status(&fx);
    for p in ["backend/api#0", "backend/api#1", "backend/api#2"] {
        assert_eq!(node(&s, p).unwrap()["state"], "stopped", "{p}");
    }
    assert_eq!(pid_in(&s, "db"), Some(pids[0]));
    assert_eq!(pid_in(&s, "backend/warm"), Some(pids[4]));

    let out = cli(&fx, &["start", "backend/api"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let new = wait_all_up(&fx, &["backend/api#0", "backend/api#1", "backend/api#2"]);
    for (n, old) in new.iter().zip(&pids[1..4]) {
        assert_ne!(n, old);
    }
    assert_eq!(
        pids_now(&fx, &["db", "backend/warm"]),
        [Some(pids[0]), Some(pids[4])]
    );
    stop_cleanly(&mut arb);
}

#[test]
fn stop_of_a_group_stops_its_subtree_in_stop_order_and_start_brings_it_back() {
    let trapper = |name: &str| {
        format!(
            r#"shell: "trap 'echo {name} >> $DIR/order; exit 0' TERM; echo $$ >> $DIR/{name}.pids; while :; do sleep 0.05; done""#
        )
    };
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  db:
    {}
  backend:
    children:
      store:
        {}
      api:
        depends_on: [store]
        {}
"#,
        sleeper("db.pids"),
        trapper("store"),
        trapper("api")
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let [db, store, api] = wait_all_up(&fx, &["db", "backend/store", "backend/api"])[..] else {
        unreachable!()
    };
    // Each writes its pid once its TERM trap is installed.
    assert_eq!(fx.wait_pid("store.pids"), store);
    assert_eq!(fx.wait_pid("api.pids"), api);

    let out = cli(&fx, &["stop", "backend"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("stopped backend"), "{}", out.stdout);
    assert!(!alive(store) && !alive(api));
    assert!(group_members(store).is_empty() && group_members(api).is_empty());
    // Dependents first: api got its signal (and finished) before store got its own.
    assert_eq!(fx.read("order").unwrap(), "api\nstore\n");

    let s = status(&fx);
    let backend = node(&s, "backend").unwrap();
    assert_eq!(backend["state"], "stopped", "{backend}");
    assert_eq!(backend["stop_report"]["outcome"], "met", "{backend}");
    for p in ["backend/store", "backend/api"] {
        let n = node(&s, p).unwrap();
        assert_eq!(n["state"], "stopped", "{n}");
        assert_eq!(n["stop_report"]["outcome"], "met", "{n}");
    }
    assert_eq!(pid_in(&s, "db"), Some(db));
    assert_eq!(node(&s, "(root)").unwrap()["pid"], arb.pid());
    let text = cli_ok(&fx, &["status"]);
    assert!(
        text_line(&text, "backend").contains("(deadline met)"),
        "{text}"
    );

    holds_for(
        "backend staying stopped",
        Duration::from_millis(200),
        || lines(&fx, "store.pids") == 1 && lines(&fx, "api.pids") == 1,
    );

    let out = cli(&fx, &["start", "backend"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let [store2, api2] = wait_all_up(&fx, &["backend/store", "backend/api"])[..] else {
        unreachable!()
    };
    assert!(store2 != store && api2 != api);
    wait_state(&fx, "backend", "ready");
    assert_eq!(pid_in(&status(&fx), "db"), Some(db));
    stop_cleanly(&mut arb);
}

#[test]
fn stop_of_a_group_reports_in_stop_order_over_raw_json() {
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  db:
    {}
  backend:
    children:
      store:
        {}
      api:
        depends_on: [store]
        replicas: 2
        {}
"#,
        sleeper("db.pids"),
        sleeper("store.pids"),
        sleeper("api.pids")
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let pids = wait_all_up(
        &fx,
        &["db", "backend/store", "backend/api#0", "backend/api#1"],
    );
    let r = request(&fx, &json!({"cmd": "stop", "path": "backend"}));
    assert_eq!(r["ok"], true, "{r}");
    let report = r["report"].as_array().unwrap();
    let order: Vec<&str> = report.iter().map(|x| x["path"].as_str().unwrap()).collect();
    // The group's own record first, then the api wave (dependents), then store.
    assert_eq!(order[0], "backend", "{r}");
    assert_eq!(report[0]["kind"], "group");
    assert_eq!(order.len(), 4, "{r}");
    assert_eq!(order[3], "backend/store", "{r}");
    let mut api: Vec<&str> = order[1..3].to_vec();
    api.sort();
    assert_eq!(api, ["backend/api#0", "backend/api#1"]);
    for rec in report {
        assert_eq!(rec["outcome"], "met", "{rec}");
    }
    assert_eq!(report[3]["pid"], pids[1]);
    for &p in &pids[1..] {
        assert!(!alive(p));
    }
    assert_eq!(pid_in(&status(&fx), "db"), Some(pids[0]));
    stop_cleanly(&mut arb);
}

#[test]
fn stop_of_a_group_is_bounded_by_its_own_deadline_and_reports_the_kill() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 20s
children:
  db:
    shell: "echo $$ >> $DIR/db.pids; exec sleep 1000"
  backend:
    shutdown_timeout: 300ms
    children:
      stubborn:
        shell: "trap '' TERM; echo $$ >> $DIR/stubborn.pids; while :; do sleep 0.05; done"
"#,
    );
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let [db, stubborn] = wait_all_up(&fx, &["db", "backend/stubborn"])[..] else {
        unreachable!()
    };
    // It writes its pid once it ignores SIGTERM.
    assert_eq!(fx.wait_pid("stubborn.pids"), stubborn);
    let begin = Instant::now();
    let r = request(&fx, &json!({"cmd": "stop", "path": "backend"}));
    let took = begin.elapsed();
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        took < Duration::from_secs(4),
        "the stop took {took:?}: not bounded by backend's 300ms"
    );
    let report = r["report"].as_array().unwrap();
    let rec = report
        .iter()
        .find(|x| x["path"] == "backend/stubborn")
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(rec["outcome"], "killed", "{rec}");
    assert!(rec["deadline_ms"].as_u64().unwrap() <= 300, "{rec}");
    assert_eq!(rec["pid"], stubborn);
    assert!(!alive(stubborn));
    assert!(group_members(stubborn).is_empty());

    let text = cli_ok(&fx, &["status"]);
    let line = text_line(&text, "stubborn");
    assert!(line.contains("KILLED at its deadline"), "{line}");
    let out = cli_ok(&fx, &["start", "backend"]);
    assert!(out.contains("starting backend"), "{out}");
    let stubborn2 = wait_up(&fx, "backend/stubborn");
    assert_ne!(stubborn2, stubborn);
    wait_until("stubborn to ignore SIGTERM again", WAIT, || {
        lines(&fx, "stubborn.pids") == 2
    });
    assert_eq!(pid_in(&status(&fx), "db"), Some(db));
    // Shutdown kills it again at backend's deadline: exit 3 (SPEC §1).
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 3, "{}", arb.log());
}

#[test]
fn restart_changes_the_pid_and_reports_the_stop() {
    let fx = Fixture::new(&tree());
    let (mut arb, pids) = start_tree(&fx);

    let out = cli(&fx, &["restart", "db"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("restarted db"), "{}", out.stdout);
    assert!(out.stdout.contains("db: stopped in"), "{}", out.stdout);
    assert!(!alive(pids[0]));
    let db2 = wait_up(&fx, "db");
    assert_ne!(db2, pids[0]);
    wait_lines(&fx, "db.pids", 2);

    let r = request(&fx, &json!({"cmd": "restart", "path": "backend/api#2"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["message"], "restarted backend/api#2");
    let rec = &r["report"][0];
    assert_eq!(rec["path"], "backend/api#2", "{r}");
    assert_eq!(rec["pid"], pids[3], "{r}");
    assert_eq!(rec["outcome"], "met", "{r}");
    assert!(!alive(pids[3]));
    let api2 = wait_up(&fx, "backend/api#2");
    assert_ne!(api2, pids[3]);
    assert_eq!(
        pids_now(&fx, &WORKERS),
        [
            Some(db2),
            Some(pids[1]),
            Some(pids[2]),
            Some(api2),
            Some(pids[4])
        ]
    );
    stop_cleanly(&mut arb);
}

#[test]
fn unknown_paths_are_refused_with_exit_1() {
    let fx = Fixture::new(&tree());
    let (mut arb, pids) = start_tree(&fx);
    for (args, msg) in [
        (&["stop", "nope"][..], "no such node: nope"),
        (&["start", "backend/nope"][..], "no such node: backend/nope"),
        (&["restart", "backend/api#7"][..], "no such node"),
        (&["stop", "db/x"][..], "not a group"),
    ] {
        let out = cli(&fx, args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert!(out.stderr.contains(msg), "{args:?}: {:?}", out.stderr);
    }
    let r = request(&fx, &json!({"cmd": "stop", "path": ""}));
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].is_string(), "{r}");
    assert_eq!(
        pids_now(&fx, &WORKERS),
        pids.iter().map(|&p| Some(p)).collect::<Vec<_>>()
    );
    stop_cleanly(&mut arb);
}

#[test]
fn client_verbs_exit_1_when_no_daemon_answers() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody.sock");
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["stop", "db"],
        &["reload"],
        &["shutdown"],
    ] {
        let out = cli_on(&missing, args);
        assert_eq!(out.code, 1, "{args:?}");
        assert!(out.stderr.contains("cannot connect"), "{:?}", out.stderr);
    }
    // A socket file nobody listens on is the same.
    drop(std::os::unix::net::UnixListener::bind(&missing).unwrap());
    let out = cli_on(&missing, &["status"]);
    assert_eq!(out.code, 1);
}

#[test]
fn arborist_stays_up_with_every_worker_stopped_and_the_shutdown_verb_exits_0() {
    let fx = Fixture::new(&tree());
    let (mut arb, pids) = start_tree(&fx);
    cli_ok(&fx, &["stop", "db"]);
    cli_ok(&fx, &["stop", "backend"]);
    for &p in &pids {
        assert!(!alive(p), "{p}");
    }
    holds_for(
        "arborist to stay up with nothing running",
        Duration::from_millis(300),
        || arb.child.try_wait().ok().flatten().is_none(),
    );
    let s = status(&fx);
    assert_eq!(s["ok"], true);
    assert_eq!(s["daemon"]["state"], "running", "{s}");
    for w in WORKERS {
        assert_eq!(node(&s, w).unwrap()["state"], "stopped", "{w}");
    }

    let begin = Instant::now();
    let out = cli(&fx, &["shutdown"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("shutting down"), "{}", out.stdout);
    let code = exit_code(arb.wait_exit(WAIT));
    assert_eq!(code, 0, "{}", arb.log());
    assert!(begin.elapsed() < Duration::from_secs(4));
    assert!(!sock(&fx).exists(), "socket left behind");
    assert!(arb
        .log()
        .contains("shutdown requested over the control socket"));
}

#[test]
fn shutdown_verb_stops_running_workers_and_exits_0() {
    let fx = Fixture::new(&tree());
    let (mut arb, pids) = start_tree(&fx);
    let r = request(&fx, &json!({"cmd": "shutdown"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(exit_code(arb.wait_exit(WAIT)), 0, "{}", arb.log());
    for p in pids {
        assert!(!alive(p), "worker {p} outlived arborist");
    }
    assert!(!sock(&fx).exists());
}

#[test]
fn one_connection_carries_every_verb_in_order() {
    let fx = Fixture::new(&format!(
        "shutdown_timeout: 5s\nchildren:\n  db:\n    {}\n  other:\n    {}\n",
        sleeper("db.pids"),
        sleeper("other.pids")
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let [db, other] = wait_all_up(&fx, &["db", "other"])[..] else {
        unreachable!()
    };
    let mut c = Conn::connect(&sock(&fx));
    let s = c.send(r#"{"cmd":"status"}"#);
    assert_eq!(pid_in(&s, "db"), Some(db));

    let r = c.send(r#"{"cmd":"stop","path":"db"}"#);
    assert_eq!(
        (r["ok"].clone(), r["message"].clone()),
        (json!(true), json!("stopped db"))
    );
    assert_eq!(r["report"][0]["pid"], db);
    let r = c.send(r#"{"cmd":"start","path":"db"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let db2 = wait_up(&fx, "db");
    let r = c.send(r#"{"cmd":"restart","path":"db"}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["report"][0]["pid"], db2);
    let db3 = wait_up(&fx, "db");
    assert!(db3 != db2 && db2 != db);

    let r = c.send(r#"{"cmd":"reload"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let d = &r["diff"];
    for k in ["added", "removed", "changed", "scaled", "updated"] {
        assert_eq!(d[k], json!([]), "{k}: {r}");
    }
    assert_eq!(d["unchanged"], 2, "{r}");
    assert_eq!(pids_now(&fx, &["db", "other"]), [Some(db3), Some(other)]);

    let r = c.send(r#"{"cmd":"shutdown"}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(exit_code(arb.wait_exit(WAIT)), 0, "{}", arb.log());
    assert!(c.closed_by_peer());
}

#[test]
fn socket_is_mode_0600_and_removed_on_exit() {
    let fx = Fixture::new(&tree());
    let (mut arb, _) = start_tree(&fx);
    let meta = std::fs::symlink_metadata(sock(&fx)).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{:o}",
        meta.permissions().mode()
    );
    stop_cleanly(&mut arb);
    assert!(!sock(&fx).exists(), "the socket file outlived arborist");
}

#[test]
fn a_stale_socket_is_replaced() {
    let fx = Fixture::new(&tree());
    // What a crashed run leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(sock(&fx)).unwrap());
    assert!(std::fs::symlink_metadata(sock(&fx))
        .unwrap()
        .file_type()
        .is_socket());
    let (mut arb, pids) = start_tree(&fx);
    assert!(pids.iter().all(|&p| alive(p)));
    assert!(arb.log().contains("stale"), "{}", arb.log());
    let s = status(&fx);
    assert_eq!(s["daemon"]["pid"], arb.pid());
    let meta = std::fs::symlink_metadata(sock(&fx)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    stop_cleanly(&mut arb);
    assert!(!sock(&fx).exists());
}

#[test]
fn a_second_daemon_on_a_live_socket_exits_2_and_starts_nothing() {
    let fx = Fixture::new(&tree());
    let (mut first, pids) = start_tree(&fx);
    let other = Fixture::new(
        r#"
children:
  intruder:
    shell: "echo started > $DIR/intruder.started; exec sleep 1000"
"#,
    );
    // Same socket (the harness puts it in the working directory), another config.
    let mut second = Arborist::start(&other.config(), &[], fx.dir.path());
    let code = exit_code(second.wait_exit(WAIT));
    assert_eq!(code, 2, "{}", second.log());
    assert!(second.log().contains("already running"), "{}", second.log());
    assert!(
        other.read("intruder.started").is_none(),
        "the second daemon started a worker"
    );

    // The first one is untouched and still serving on its socket.
    assert!(sock(&fx).exists());
    let s = status(&fx);
    assert_eq!(s["daemon"]["pid"], first.pid());
    assert_eq!(
        pids_now(&fx, &WORKERS),
        pids.iter().map(|&p| Some(p)).collect::<Vec<_>>()
    );
    stop_cleanly(&mut first);
}

#[test]
fn malformed_and_unknown_requests_get_error_replies_on_a_connection_that_stays_open() {
    let fx = Fixture::new(&tree());
    let (mut arb, pids) = start_tree(&fx);
    let mut c = Conn::connect(&sock(&fx));
    for (line, needle) in [
        ("nonsense", "not JSON"),
        ("[1,2]", "bad request"),
        ("42", "bad request"),
        ("{}", "bad request"),
        ("", "empty"),
        (r#"{"cmd":"explode"}"#, "explode"),
        (r#"{"cmd":"stop"}"#, "path"),
        (r#"{"cmd":"status","extra":1}"#, "extra"),
        (r#"{"cmd":"stop","path":"db","force":true}"#, "force"),
        (r#"{"cmd":"stop","path":7}"#, "bad request"),
        (r#"{"cmd":"stop","path":"nope"}"#, "no such node"),
        (r#"{"cmd":"status"} trailing"#, "bad request"),
    ] {
        let r = c.send(line);
        assert_eq!(r["ok"], false, "{line:?} -> {r}");
        let err = r["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{line:?} -> {r}"));
        assert!(
            err.contains(needle),
            "{line:?} -> {err:?}, wanted {needle:?}"
        );
    }
    // Not even UTF-8.
    c.write_raw(b"\xff\xfe\x00\n").unwrap();
    let r: Value = serde_json::from_str(&c.read_line().unwrap().unwrap()).unwrap();
    assert_eq!(r["ok"], false, "{r}");

    // The same connection still works, and nothing was touched.
    let s = c.send(r#"{"cmd":"status"}"#);
    assert_eq!(s["ok"], true);
    for (w, p) in WORKERS.iter().zip(&pids) {
        assert_eq!(pid_in(&s, w), Some(*p), "{w}");
    }
    // Two requests in one write get two replies, in order.
    c.write_raw(b"{\"cmd\":\"status\"}\nbogus\n").unwrap();
    let a: Value = serde_json::from_str(&c.read_line().unwrap().unwrap()).unwrap();
    let b: Value = serde_json::from_str(&c.read_line().unwrap().unwrap()).unwrap();
    assert_eq!(
        (a["ok"].clone(), b["ok"].clone()),
        (json!(true), json!(false))
    );
    stop_cleanly(&mut arb);
}

#[test]
fn an_oversized_request_gets_an_error_and_its_connection_is_closed() {
    let fx = Fixture::new(&tree());
    let (mut arb, pids) = start_tree(&fx);

    // Just under the limit (64 KiB including the newline) is an ordinary request.
    let mut near = String::from(r#"{"cmd":"status"}"#);
    near.push_str(&" ".repeat(64 * 1024 - 1 - near.len()));
    let mut c = Conn::connect(&sock(&fx));
    let r = c.send(&near);
    assert_eq!(
        r["ok"],
        true,
        "a {} byte line was refused: {r}",
        near.len() + 1
    );

    // 70 KiB in one line: an error reply, then the daemon closes the connection.
    let big = format!(r#"{{"cmd":"status","pad":"{}"}}"#, "x".repeat(70 * 1024));
    let mut c = Conn::connect(&sock(&fx));
    let _ = c.write_raw(big.as_bytes()); // the daemon may close before it has read it all
    let _ = c.write_raw(b"\n");
    let reply = c
        .read_line()
        .expect("a reply to an oversized request")
        .expect("a reply line, not a bare close");
    let r: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("too large"), "{r}");
    assert!(c.closed_by_peer(), "the connection stayed open");

    // A line that never ends is cut off the same way.
    let mut c = Conn::connect(&sock(&fx));
    let _ = c.write_raw(&vec![b'a'; 200 * 1024]);
    let r: Value = serde_json::from_str(&c.read_line().unwrap().unwrap()).unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert!(c.closed_by_peer());

    // The daemon keeps serving.
    let s = status(&fx);
    assert_eq!(s["ok"], true);
    assert_eq!(pid_in(&s, "db"), Some(pids[0]));
    assert!(alive(arb.pid()));
    stop_cleanly(&mut arb);
}

#[test]
fn an_idle_client_does_not_block_others() {
    let fx = Fixture::new(&tree());
    let (mut arb, pids) = start_tree(&fx);
    let mut idle = Conn::connect(&sock(&fx));
    let mut partial = Conn::connect(&sock(&fx));
    partial.write_raw(br#"{"cmd":"#).unwrap();

    let begin = Instant::now();
    for _ in 0..20 {
        let s = status(&fx);
        assert_eq!(s["ok"], true);
    }
    let out = cli(&fx, &["restart", "backend/warm"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let warm = wait_up(&fx, "backend/warm");
    assert_ne!(warm, pids[4]);
    assert!(cli_ok(&fx, &["status"]).contains("(root)"));
    assert!(
        begin.elapsed() < Duration::from_secs(4),
        "other clients were slowed down: {:?}",
        begin.elapsed()
    );

    // Both waiting connections still work.
    let s = idle.send(r#"{"cmd":"status"}"#);
    assert_eq!(pid_in(&s, "backend/warm"), Some(warm));
    partial.write_raw(b"\"status\"}\n").unwrap();
    let r: Value = serde_json::from_str(&partial.read_line().unwrap().unwrap()).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    stop_cleanly(&mut arb);
}

#[test]
fn a_hundred_concurrent_status_clients_while_workers_crash_and_restart() {
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  steady:
    {}
  crashers:
    max_restarts: 1000000
    restart_window: 1s
    children:
      crash:
        replicas: 4
        restart: always
        backoff: {{ initial: 5ms, max: 20ms, jitter: 0 }}
        shell: "echo $$ >> $DIR/crash.pids; sleep 0.02; exit 3"
"#,
        sleeper("steady.pids")
    ));
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let steady = wait_up(&fx, "steady");
    // Crashing for real before the clients come.
    wait_until("20 crashes", WAIT, || lines(&fx, "crash.pids") >= 20);
    let crashes_before = lines(&fx, "crash.pids");

    let socket = sock(&fx);
    let barrier = Arc::new(Barrier::new(100));
    let begin = Instant::now();
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let socket = socket.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut c = Conn::open(&socket).map_err(|e| format!("connect: {e}"))?;
                let first = c.send(r#"{"cmd":"status"}"#);
                let second = c.send(r#"{"cmd":"status"}"#);
                Ok::<_, String>((first, second))
            })
        })
        .collect();
    let replies: Vec<Value> = clients
        .into_iter()
        .flat_map(|t| {
            let (a, b) = t.join().expect("client thread panicked").expect("client");
            [a, b]
        })
        .collect();
    let took = begin.elapsed();
    assert!(took < Duration::from_secs(8), "100 clients took {took:?}");
    assert_eq!(replies.len(), 200);

    let states = [
        "waiting", "starting", "running", "ready", "backoff", "stopping", "stopped", "failed",
    ];
    let mut seen = std::collections::BTreeSet::new();
    for r in &replies {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["daemon"]["pid"], arb.pid());
        assert_eq!(
            paths(r),
            [
                "(root)",
                "steady",
                "crashers",
                "crashers/crash#0",
                "crashers/crash#1",
                "crashers/crash#2",
                "crashers/crash#3"
            ],
            "{r}"
        );
        assert_eq!(pid_in(r, "steady"), Some(steady));
        for n in nodes(r) {
            let st = n["state"].as_str().unwrap();
            assert!(states.contains(&st), "{n}");
            seen.insert(st.to_string());
            if st == "backoff" {
                assert!(n["next_restart_in_ms"].is_u64(), "{n}");
            }
        }
    }
    // The workers kept crashing and restarting while the clients were served.
    wait_until("more crashes", WAIT, || {
        lines(&fx, "crash.pids") > crashes_before + 4
    });
    let s = status(&fx);
    assert_eq!(pid_in(&s, "steady"), Some(steady));
    let restarts = node(&s, "crashers/crash#0").unwrap()["restarts"]
        .as_u64()
        .unwrap();
    assert!(restarts >= 2, "{s}");
    assert!(alive(steady) && alive(arb.pid()));
    stop_cleanly(&mut arb);
}

#[test]
fn control_and_reload_are_refused_during_shutdown() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 10s
children:
  slow:
    stop_timeout: 8s
    shell: "trap 'while [ ! -e $DIR/release ]; do sleep 0.02; done; exit 0' TERM; echo $$ > $DIR/slow.pid; while :; do sleep 0.05; done"
  other:
    shell: "echo $$ >> $DIR/other.pids; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let [slow, _other] = wait_all_up(&fx, &["slow", "other"])[..] else {
        unreachable!()
    };
    assert_eq!(
        fx.wait_pid("slow.pid"),
        slow,
        "slow writes its pid once its trap is set"
    );
    wait_lines(&fx, "other.pids", 1);
    arb.signal(Signal::SIGTERM);
    // Status still answers during the shutdown, and says so.
    wait_for("daemon state stopping", WAIT, || {
        let s = status(&fx);
        (s["daemon"]["state"] == "stopping").then_some(())
    });
    wait_state(&fx, "slow", "stopping");
    assert!(alive(slow), "slow should be held in its TERM trap");

    let out = cli(&fx, &["reload"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("shutting down"), "{:?}", out.stderr);
    let mut c = Conn::connect(&sock(&fx));
    for req in [
        json!({"cmd": "reload"}),
        json!({"cmd": "start", "path": "other"}),
        json!({"cmd": "stop", "path": "slow"}),
        json!({"cmd": "restart", "path": "other"}),
    ] {
        let r = c.request(&req);
        assert_eq!(r["ok"], false, "{req} -> {r}");
        assert_eq!(r["error"], "arborist is shutting down", "{req} -> {r}");
    }
    let out = cli(&fx, &["restart", "other"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("shutting down"), "{:?}", out.stderr);

    arb.signal(Signal::SIGHUP);
    wait_until("SIGHUP ignored", WAIT, || {
        arb.log()
            .lines()
            .any(|l| l.contains("SIGHUP") && l.contains("during shutdown: ignored"))
    });
    assert!(!arb.log().contains("reload requested"), "{}", arb.log());
    assert!(!arb.log().contains("reloading"), "{}", arb.log());
    assert_eq!(status(&fx)["daemon"]["state"], "stopping");

    std::fs::write(fx.path("release"), "").unwrap();
    let code = exit_code(arb.wait_exit(WAIT));
    assert_eq!(code, 0, "{}", arb.log());
    assert!(!alive(slow));
    assert_eq!(lines(&fx, "other.pids"), 1, "other was restarted");
}

#[test]
fn sigusr1_logs_the_status_tree() {
    let fx = Fixture::new(&tree());
    let (mut arb, pids) = start_tree(&fx);
    cli_ok(&fx, &["stop", "backend/api#1"]);
    let n = nodes(&status(&fx)).len();
    assert_eq!(n, 7);
    arb.signal(Signal::SIGUSR1);
    arb.wait_log(&format!("status ({n} nodes):"));
    // The header, then one log line per node.
    let log = wait_for("the whole tree in the log", WAIT, || {
        let log = arb.log();
        let after = log
            .lines()
            .skip_while(|l| !l.contains("status (7 nodes):"))
            .count();
        (after > n).then_some(log)
    });
    let tree_lines: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("status (7 nodes):"))
        .skip(1)
        .take(n)
        .collect();
    assert_eq!(tree_lines.len(), n, "{log}");
    assert!(tree_lines[0].contains("(root)"), "{log}");
    let find = |name: &str| {
        *tree_lines
            .iter()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} not in the logged tree:\n{log}"))
    };
    assert!(find("├─ db").contains(&format!("pid {}", pids[0])));
    assert!(find("└─ backend").contains("group"));
    assert!(find("api#0").contains(&format!("pid {}", pids[1])));
    let api1 = find("api#1");
    assert!(
        api1.contains("stopped") && api1.contains("deadline met"),
        "{api1}"
    );
    assert!(find("└─ warm").contains(&format!("pid {}", pids[4])));
    assert!(alive(arb.pid()));
    stop_cleanly(&mut arb);
}

#[test]
fn a_regular_file_at_the_socket_path_is_not_deleted() {
    let fx = Fixture::new(&tree());
    // Not a socket: say a mistyped --socket that names a file someone cares about.
    std::fs::write(sock(&fx), "precious\n").unwrap();
    let mut arb = fx.run(&[]);
    wait_until("arborist to exit or to bind", WAIT, || {
        arb.child.try_wait().ok().flatten().is_some() || arb.log().contains("control socket ready")
    });
    let kept = std::fs::read_to_string(sock(&fx)).ok();
    let exited = arb.child.try_wait().ok().flatten().map(exit_code);
    assert_eq!(
        kept.as_deref(),
        Some("precious\n"),
        "arborist deleted a regular file at its socket path; log:\n{}",
        arb.log()
    );
    assert_eq!(exited, Some(2), "log:\n{}", arb.log());
}

#[test]
fn a_restarted_group_reports_its_new_uptime() {
    let fx = Fixture::new(&tree());
    let (mut arb, _) = start_tree(&fx);
    wait_until("backend to be up for 600ms", WAIT, || {
        node(&status(&fx), "backend").unwrap()["uptime_ms"]
            .as_u64()
            .is_some_and(|u| u >= 600)
    });
    cli_ok(&fx, &["restart", "backend"]);
    wait_all_up(&fx, &WORKERS[1..]);
    let s = wait_for("backend ready again", WAIT, || {
        let s = status(&fx);
        (node(&s, "backend")?["state"] == "ready").then_some(s)
    });
    let group_up = node(&s, "backend").unwrap()["uptime_ms"].as_u64().unwrap();
    let child_up = node(&s, "backend/warm").unwrap()["uptime_ms"]
        .as_u64()
        .unwrap();
    let text = cli_ok(&fx, &["status"]);
    stop_cleanly(&mut arb);
    assert!(
        group_up <= child_up + 300,
        "backend restarted just now but reports up {group_up}ms (its children: {child_up}ms):\n{text}"
    );
}
