//! arborist as PID 1 of a PID namespace (`unshare --pid --fork --mount-proc`), as in a
//! container: orphans re-parented to it are reaped (no zombie), its workers' exit statuses are
//! still reported, and SIGTERM/SIGINT (for which the kernel applies no default action to a
//! namespace's init) shut the tree down. The same properties as a child subreaper outside a
//! namespace are covered in tests/process.rs. Needs util-linux `unshare` and the privilege
//! to create a PID namespace (root, as in CI).

mod spawned;
mod support;

use nix::sys::signal::Signal;
use spawned::*;
use support::*;

/// Whether this machine lets us create a PID namespace; the tests say why they stop if not.
fn namespaces_available() -> bool {
    let ok = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success());
    prerequisite(
        ok,
        "`unshare --pid --fork --mount-proc` is not available here (needs util-linux and root)",
    )
}

/// Starts `unshare ... arborist run` and returns it with arborist's pid as seen from here.
fn start_as_pid1(fx: &Fixture) -> (Spawned, i32) {
    let mut cmd = command("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", BIN])
        .args(["--log-format", "json", "run"])
        .arg(fx.config())
        .arg("--socket")
        .arg(fx.path("arborist.sock"));
    let wrapper = Spawned::start(cmd, fx.dir.path(), "pid1");
    let outer = wrapper.pid();
    let arborist = wait_for("arborist under unshare", WAIT, || {
        children_of(outer).first().map(|&(p, _)| p)
    });
    // It is PID 1 in there: its status line in /proc says NSpid: <outer> 1.
    let nspid = wait_for("NSpid", WAIT, || {
        std::fs::read_to_string(format!("/proc/{arborist}/status"))
            .ok()?
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .map(str::to_string)
    });
    assert!(nspid.trim_end().ends_with("\t1"), "not PID 1: {nspid}");
    eprintln!("arborist runs as {nspid:?}");
    (wrapper, arborist)
}

/// A worker that leaves `n` orphans (re-parented to PID 1) which exit with status 3 once
/// `$DIR/release` exists, waits until they are gone, then exits with `code`.
fn orphan_maker(name: &str, code: i32) -> String {
    format!(
        r#"
  {name}:
    restart: never
    shell: |
      for i in 1 2 3 4 5 6 7 8 9 10; do
        (setsid sh -c 'echo $$ >> $DIR/{name}.orphans; while [ ! -e $DIR/release ]; do sleep 0.02; done; exit 3' &)
      done
      while [ $(cat $DIR/{name}.orphans 2>/dev/null | wc -l) -lt 10 ]; do sleep 0.01; done
      while [ ! -e $DIR/release ]; do sleep 0.02; done
      exit {code}"#
    )
}

#[test]
fn as_pid1_orphans_are_reaped_and_worker_statuses_still_reported() {
    if !namespaces_available() {
        return;
    }
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:{}{}
  steady:
    shell: "exec sleep 1000"
"#,
        orphan_maker("seven", 7),
        orphan_maker("zero", 0)
    ));
    let (mut wrapper, pid1) = start_as_pid1(&fx);
    fx.wait_file("seven.orphans");
    wait_until("20 orphans adopted by PID 1", WAIT, || {
        let n = |f: &str| fx.read(f).map_or(0, |t| t.lines().count());
        n("seven.orphans") == 10 && n("zero.orphans") == 10
    });
    // The orphans are arborist's children now (setsid and their parent gone).
    wait_until("orphans re-parented to arborist", WAIT, || {
        children_of(pid1).len() >= 20
    });
    std::fs::write(fx.path("release"), "").unwrap();
    wrapper.wait_log(r#""message":"exited: exit status 7"#, WAIT);
    wrapper.wait_log(r#""message":"exited: exit status 0"#, WAIT);
    // Left: the steady worker and the guardian; no zombie.
    wait_until("orphans reaped, no zombie", WAIT, || {
        let kids = children_of(pid1);
        kids.iter().all(|&(_, s)| s != 'Z') && kids.len() <= 2
    });
    let log = wrapper.log();
    assert!(
        !log.contains("exit status 3"),
        "an orphan's status was taken for a worker's:\n{log}"
    );
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid1), Signal::SIGTERM);
    assert_eq!(wrapper.wait_exit(WAIT), 0, "log:\n{}", wrapper.log());
}

#[test]
fn as_pid1_sigterm_and_sigint_shut_the_tree_down_and_nothing_is_left() {
    if !namespaces_available() {
        return;
    }
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let fx = Fixture::new(
            r#"
shutdown_timeout: 5s
children:
  a:
    shell: "trap 'echo clean > $DIR/a.clean; exit 0' TERM; echo $$ > $DIR/a.pid; while :; do sleep 0.05; done"
  b:
    shell: "sleep 1000 & sleep 1000 & echo $$ > $DIR/b.pid; wait"
"#,
        );
        let (mut wrapper, pid1) = start_as_pid1(&fx);
        fx.wait_file("a.pid");
        fx.wait_file("b.pid");
        wrapper.wait_log("tree ready", WAIT);
        let descendants = |root: i32| {
            let mut all = vec![];
            let mut todo = vec![root];
            while let Some(p) = todo.pop() {
                for (c, _) in children_of(p) {
                    all.push(c);
                    todo.push(c);
                }
            }
            all
        };
        let inside = descendants(pid1);
        assert!(inside.len() >= 5, "{inside:?}"); // a, b, its two sleeps, the guardian
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid1), sig).unwrap();
        assert_eq!(wrapper.wait_exit(WAIT), 0, "{sig}: log:\n{}", wrapper.log());
        assert_eq!(fx.read("a.clean").as_deref(), Some("clean\n"), "{sig}");
        wait_until("nothing of the namespace left", WAIT, || {
            inside.iter().all(|&p| proc_state(p).is_none())
        });
    }
}
