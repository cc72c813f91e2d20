//! Deadlines are hard (SPEC §3 "Shutdown", point 5): from the moment arborist receives
//! SIGTERM it exits within the root deadline plus at most 1 s, whatever else is in flight — an
//! operator stop or restart, a reload (including the reading of the file), a strategy restart,
//! a backoff wait, a readiness probe, a `pre_stop` — and its report never says a node met a
//! deadline it went past.
//!
//! Every test runs the same tree: the root allows 2 s (`check --plan`: worst case 2 s), a group
//! `g` allows itself 10 s, and its worker `w` ignores SIGTERM and allows itself 8 s. A test puts
//! something in flight, waits until `status` shows it, sends SIGTERM and checks, from the moment
//! of the signal: (a) arborist is gone within 3 s, (b) it exits 3 (w had to be SIGKILLed),
//! (c) the JSON report lists g/w as killed and no node claims a deadline it did not keep,
//! (d) every process a worker, probe or `pre_stop` wrote down is gone, with its process group.
//!
//! Workers write their pid only once `trap '' TERM` is in place (an ignored signal stays
//! ignored across fork and exec, so their `sleep`s ignore it too). Every wait is bounded; the
//! wait for the exit is longer than w's 8 s and g's 10 s on purpose, so that a run which waits
//! those out fails with the time it took rather than a timeout.

mod ctl;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use serde_json::Value;
use support::*;

/// The root's `shutdown_timeout` in every tree below.
const ROOT_DEADLINE_MS: u64 = 2000;

/// SPEC §3: gone within the root deadline plus at most 1 s of the signal.
const EXIT_BOUND: Duration = Duration::from_secs(3);

/// How long a test waits for the exit at all: past w's 8 s and g's 10 s (see the module doc).
const EXIT_LIMIT: Duration = Duration::from_secs(15);

/// How long the workers' processes may take to vanish once arborist has exited (it reaps
/// them before it exits, so this is slack for /proc, not a grace period).
const GONE_LIMIT: Duration = Duration::from_secs(3);

/// SPEC §1: exit code of `run` when something had to be SIGKILLed at a deadline.
const KILLED_AT_A_DEADLINE: i32 = 3;

/// The issue's tree. `g_keys` are more keys of `g` (4 spaces in), `w_keys` more keys of `w`
/// (8 spaces in), `siblings` more children of `g` (6 spaces in); each line ends with `\n`.
fn tree(g_keys: &str, w_keys: &str, siblings: &str) -> String {
    format!(
        r#"shutdown_timeout: 2s
children:
  g:
    shutdown_timeout: 10s
{g_keys}    children:
      w:
        stop_timeout: 8s
{w_keys}        shell: "trap '' TERM; echo $$ >> $DIR/w.pids; while :; do sleep 0.1; done"
{siblings}"#
    )
}

/// g restarts every child when `crash` fails, which it does once `$DIR/trigger` exists.
fn one_for_all_tree() -> String {
    tree(
        "    strategy: one_for_all\n",
        "",
        r#"      crash:
        shell: "echo $$ >> $DIR/crash.pids; while [ ! -e $DIR/trigger ]; do sleep 0.05; done; exit 1"
"#,
    )
}

/// Beside w, a group `inner` that allows itself 10 s, holding `v`, a second w. An operator
/// stop of `inner` is bounded by g's 10 s (a stop of `g` itself only by the root's 2 s).
fn nested_group_tree() -> String {
    tree(
        "",
        "",
        r#"      inner:
        shutdown_timeout: 10s
        children:
          v:
            stop_timeout: 8s
            shell: "trap '' TERM; echo $$ >> $DIR/v.pids; while :; do sleep 0.1; done"
"#,
    )
}

/// Beside w, a worker that fails at once and then waits 30 s to be restarted.
fn backoff_tree() -> String {
    tree(
        "",
        "",
        r#"      flaky:
        backoff: { initial: 30s, max: 60s }
        shell: "echo $$ >> $DIR/flaky.pids; exit 1"
"#,
    )
}

/// Beside w, a worker whose readiness probe (`probe.sh`, see `write_script`) never answers.
fn probe_tree() -> String {
    tree(
        "",
        "",
        r#"      probed:
        ready: { exec: ["sh", "$DIR/probe.sh"], interval: 50ms, timeout: 30s }
        shell: "echo $$ >> $DIR/probed.pids; exec sleep 1000"
"#,
    )
}

/// w runs `pre_stop.sh` (see `write_script`) before its stop signal; it never returns.
fn pre_stop_tree() -> String {
    tree("", "        pre_stop: [\"sh\", \"$DIR/pre_stop.sh\"]\n", "")
}

/// A script that writes its pid to `$DIR/<name>.pids` and hangs for a minute. Probes and
/// `pre_stop` are argv lists, which arborist may interpolate; a file keeps `$$` the shell's.
fn write_script(fx: &Fixture, name: &str) {
    let dir = fx.dir.path().display();
    std::fs::write(
        fx.path(&format!("{name}.sh")),
        format!("echo $$ >> {dir}/{name}.pids\nexec sleep 60\n"),
    )
    .expect("write a script");
}

/// Replaces the fixture's config (with `$DIR` expanded, as `Fixture::new` does).
fn rewrite(fx: &Fixture, text: &str) {
    let text = text.replace("$DIR", fx.dir.path().to_str().unwrap());
    std::fs::write(fx.config(), text).expect("rewrite the config");
}

/// A CLI verb left running in the background (`stop` and `restart` block until their job is
/// done); killed on drop, so a client that never returns cannot outlive the test.
struct Pending(Child);

impl Drop for Pending {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_cli(fx: &Fixture, args: &[&str]) -> Pending {
    let child = Command::new(BIN)
        .arg("--socket")
        .arg(ctl::sock(fx))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("ARBORIST_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the arborist CLI");
    Pending(child)
}

/// One `{"cmd":"status"}` (what `status --json` sends) on a fresh connection, and how long
/// the reply took. A reply that does not come within 1 s fails the test there and then.
fn timed_status(fx: &Fixture) -> (Duration, Value) {
    let begin = Instant::now();
    let stream = UnixStream::connect(ctl::sock(fx)).expect("connect to the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    (&stream)
        .write_all(b"{\"cmd\":\"status\"}\n")
        .expect("send status");
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("no status reply within 1 s: {e}"));
    let took = begin.elapsed();
    let reply = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("status reply {line:?} is not JSON: {e}"));
    (took, reply)
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

/// The report's record for `path`.
fn record<'a>(report: &'a Value, path: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("the report has no nodes: {report:#}"))
        .iter()
        .find(|n| n["path"] == path)
        .unwrap_or_else(|| panic!("no node {path:?} in the report:\n{report:#}"))
}

/// What every report of this tree must say, whatever was in flight: the root's 2 s bound every
/// level (a stop already under way under a longer deadline is tightened, SPEC §3), and a node
/// that went past its deadline never counts as having met it.
fn assert_report_is_honest(r: &Value) {
    /// How long before the SIGTERM a node may have begun to stop in these tests: the time the
    /// test takes to see `stopping` in `status` and send the signal, generous for a loaded
    /// machine.
    const STOPPING_BEFORE_SIGNAL_MS: u64 = 1000;
    assert_eq!(num(r, "deadline_ms"), ROOT_DEADLINE_MS, "{r:#}");
    let total = num(r, "total_ms");
    assert!(
        total < ROOT_DEADLINE_MS + 1000,
        "total_ms {total}: the report's clock starts at the signal: {r:#}"
    );
    assert!(num(r, "killed") >= 1, "w was SIGKILLed: {r:#}");
    let nodes = r["nodes"].as_array().expect("nodes is an array");
    assert!(
        nodes.iter().any(|n| n["path"] == "(root)"),
        "no root record: {r:#}"
    );
    for n in nodes {
        let path = n["path"].as_str().unwrap_or("?");
        let outcome = n["outcome"].as_str().unwrap_or("?");
        assert!(
            ["met", "killed", "not_running"].contains(&outcome),
            "{path}: outcome {outcome:?}: {n:#}"
        );
        let deadline = num(n, "deadline_ms");
        let took = num(n, "took_ms");
        // A node that was already stopping when the signal came (an operator's stop, a
        // reload) counts its deadline from its own begin, a little before the signal; the
        // tightened deadline itself is the root's.
        assert!(
            deadline <= ROOT_DEADLINE_MS + STOPPING_BEFORE_SIGNAL_MS,
            "{path}: deadline {deadline} ms, beyond the root's {ROOT_DEADLINE_MS} ms that binds \
             every level: {n:#}\nreport: {r:#}"
        );
        assert!(
            outcome != "met" || took <= deadline,
            "{path}: claims to have met its {deadline} ms deadline after {took} ms: {n:#}\n\
             report: {r:#}"
        );
    }
}

/// Waits (bounded) until every pid in the `files` and every member of its process group is
/// gone; a zombie counts as gone.
fn assert_nothing_left(fx: &Fixture, files: &[&str]) {
    for file in files {
        let listed = fx.pids(file);
        assert!(!listed.is_empty(), "nothing ever wrote {file}");
        for pid in listed {
            wait_until(
                &format!("pid {pid} (from {file}) and its process group to be gone"),
                GONE_LIMIT,
                || !alive(pid) && group_members(pid).into_iter().all(|p| !alive(p)),
            );
        }
    }
}

/// `arborist run` on one of the trees, with a JSON shutdown report.
struct Run {
    fx: Fixture,
    arb: Arborist,
    /// g/w's pid as status showed it once the worker was up.
    w: i32,
}

impl Run {
    /// Starts arborist on `fx` and waits until g/w is up and ignores SIGTERM.
    fn start(fx: Fixture) -> Run {
        let report = fx.path("report.json");
        let arb = fx.run(&["--shutdown-report", report.to_str().unwrap()]);
        ctl::wait_serving(&fx);
        let w = ctl::wait_up(&fx, "g/w");
        wait_until("g/w to ignore SIGTERM (its pid in w.pids)", WAIT, || {
            fx.pids("w.pids").contains(&w)
        });
        Run { fx, arb, w }
    }

    /// Sends SIGTERM; returns the exit code and the time from the signal to the exit.
    fn sigterm(&mut self) -> (i32, Duration) {
        let sent = Instant::now();
        self.arb.signal(Signal::SIGTERM);
        let status = self.arb.wait_exit(EXIT_LIMIT);
        let (code, took) = (exit_code(status), sent.elapsed());
        // The figure the issue asks for, per in-flight case (`--nocapture` shows it).
        eprintln!(
            "{}: exit {code} {:.3} s after SIGTERM",
            std::thread::current().name().unwrap_or("?"),
            took.as_secs_f64()
        );
        (code, took)
    }

    /// The JSON shutdown report written at exit.
    fn report(&self) -> Value {
        let text = self
            .fx
            .read("report.json")
            .unwrap_or_else(|| panic!("no shutdown report; log:\n{}", self.arb.log()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad report JSON ({e}):\n{text}"))
    }

    /// (a)–(d) of the module doc, for a run whose workers wrote their pids to `pid_files`;
    /// returns the report for further checks.
    fn assert_deadline_kept(&self, code: i32, took: Duration, pid_files: &[&str]) -> Value {
        let log = self.arb.log();
        assert!(
            took < EXIT_BOUND && code == KILLED_AT_A_DEADLINE,
            "arborist exited {:.2} s after SIGTERM with code {code}; expected within {EXIT_BOUND:?} \
             (root deadline 2 s + 1 s) and code {KILLED_AT_A_DEADLINE} (w SIGKILLed); log:\n{log}",
            took.as_secs_f64()
        );
        let r = self.report();
        assert_report_is_honest(&r);
        let w = record(&r, "g/w");
        assert_eq!(w["kind"], "worker", "{w:#}");
        assert_eq!(w["outcome"], "killed", "g/w ignores SIGTERM: {w:#}");
        let all_w = self.fx.pids("w.pids");
        assert!(all_w.contains(&self.w), "{all_w:?} vs {}", self.w);
        assert!(
            w["pid"]
                .as_i64()
                .is_some_and(|p| all_w.contains(&(p as i32))),
            "g/w's pid in the report is none of w's runs {all_w:?}: {w:#}"
        );
        assert_nothing_left(&self.fx, pid_files);
        r
    }
}

#[test]
fn check_plan_promises_the_root_deadline_as_the_worst_case_of_every_tree_here() {
    for yaml in [
        tree("", "", ""),
        one_for_all_tree(),
        nested_group_tree(),
        backoff_tree(),
        probe_tree(),
        pre_stop_tree(),
    ] {
        let fx = Fixture::new(&yaml);
        let within = fx.check(&["--plan", "--budget", "2s"]);
        assert_eq!(
            within.status.code(),
            Some(0),
            "the worst case must fit 2 s: {}{}\n{yaml}",
            String::from_utf8_lossy(&within.stdout),
            String::from_utf8_lossy(&within.stderr)
        );
        let under = fx.check(&["--budget", "1999ms"]);
        assert_eq!(
            under.status.code(),
            Some(1),
            "the worst case must be the full 2 s: {}\n{yaml}",
            String::from_utf8_lossy(&under.stdout)
        );
    }
}

#[test]
fn sigterm_during_an_operator_stop_preempts_it_and_exits_within_the_root_deadline() {
    let mut run = Run::start(Fixture::new(&tree("", "", "")));
    let _stop = spawn_cli(&run.fx, &["stop", "g/w"]);
    ctl::wait_state(&run.fx, "g/w", "stopping");

    let (code, took) = run.sigterm();
    run.assert_deadline_kept(code, took, &["w.pids"]);
}

#[test]
fn sigterm_during_an_operator_restart_of_a_group_preempts_it_and_exits_within_the_root_deadline() {
    // The restart's own stop of g is bounded by the root's 2 s (its parent's shutdown_timeout),
    // so here the shutdown must above all account for it: w killed, exit 3, g/w in the report.
    // The nested variant below puts a restart with a longer deadline in flight.
    let mut run = Run::start(Fixture::new(&tree("", "", "")));
    let _restart = spawn_cli(&run.fx, &["restart", "g"]);
    ctl::wait_state(&run.fx, "g/w", "stopping");

    let (code, took) = run.sigterm();
    run.assert_deadline_kept(code, took, &["w.pids"]);
}

#[test]
fn sigterm_during_an_operator_restart_of_a_nested_group_preempts_it_and_exits_within_the_root_deadline(
) {
    let mut run = Run::start(Fixture::new(&nested_group_tree()));
    let v = ctl::wait_up(&run.fx, "g/inner/v");
    wait_until("g/inner/v to ignore SIGTERM", WAIT, || {
        run.fx.pids("v.pids").contains(&v)
    });
    let _restart = spawn_cli(&run.fx, &["restart", "g/inner"]);
    ctl::wait_state(&run.fx, "g/inner/v", "stopping");

    let (code, took) = run.sigterm();
    let r = run.assert_deadline_kept(code, took, &["w.pids", "v.pids"]);
    let v = record(&r, "g/inner/v");
    assert_eq!(v["outcome"], "killed", "g/inner/v ignores SIGTERM: {v:#}");
}

#[test]
fn sigterm_during_a_reload_that_stops_a_changed_worker_preempts_it_and_exits_within_the_root_deadline(
) {
    let mut run = Run::start(Fixture::new(&tree("", "", "")));
    rewrite(
        &run.fx,
        &tree("", "        env: { GENERATION: \"2\" }\n", ""),
    );
    run.arb.signal(Signal::SIGHUP);
    ctl::wait_state(&run.fx, "g/w", "stopping");

    let (code, took) = run.sigterm();
    run.assert_deadline_kept(code, took, &["w.pids"]);
}

#[test]
fn sigterm_during_a_one_for_all_restart_preempts_it_and_exits_within_the_root_deadline() {
    let mut run = Run::start(Fixture::new(&one_for_all_tree()));
    ctl::wait_up(&run.fx, "g/crash");
    std::fs::write(run.fx.path("trigger"), "").expect("create the trigger");
    ctl::wait_state(&run.fx, "g/w", "stopping");

    let (code, took) = run.sigterm();
    run.assert_deadline_kept(code, took, &["w.pids", "crash.pids"]);
}

#[test]
fn sigterm_while_a_group_that_exceeded_its_restart_intensity_stops_exits_within_the_root_deadline()
{
    // g allows no restart: when `crash` fails, g fails and stops w within its own 10 s (its
    // parent would then restart it); the shutdown takes that stop over.
    let yaml = one_for_all_tree().replace("    strategy: one_for_all\n", "    max_restarts: 0\n");
    let mut run = Run::start(Fixture::new(&yaml));
    ctl::wait_up(&run.fx, "g/crash");
    std::fs::write(run.fx.path("trigger"), "").expect("create the trigger");
    ctl::wait_state(&run.fx, "g/w", "stopping");

    let (code, took) = run.sigterm();
    run.assert_deadline_kept(code, took, &["w.pids", "crash.pids"]);
}

#[test]
fn sigterm_while_a_watchdog_stops_a_hung_worker_exits_within_the_root_deadline() {
    // `dog` never sends WATCHDOG=1: 300 ms after its start its watchdog stops it, within its
    // own 8 s; it ignores the SIGTERM (and says it got it). The shutdown takes that stop over.
    let yaml = tree(
        "",
        "",
        r#"      dog:
        watchdog: 300ms
        stop_timeout: 8s
        shell: "trap 'touch $DIR/dog.term' TERM; echo $$ >> $DIR/dog.pids; while :; do sleep 0.1; done"
"#,
    );
    let mut run = Run::start(Fixture::new(&yaml));
    wait_until("the watchdog's SIGTERM to reach dog", WAIT, || {
        run.fx.path("dog.term").exists()
    });

    let (code, took) = run.sigterm();
    let r = run.assert_deadline_kept(code, took, &["w.pids", "dog.pids"]);
    let dog = record(&r, "g/dog");
    assert_eq!(dog["outcome"], "killed", "{dog:#}");
}

#[test]
fn sigterm_while_a_worker_waits_out_its_backoff_exits_within_the_root_deadline() {
    let mut run = Run::start(Fixture::new(&backoff_tree()));
    ctl::wait_state(&run.fx, "g/flaky", "backoff");

    let (code, took) = run.sigterm();
    let r = run.assert_deadline_kept(code, took, &["w.pids", "flaky.pids"]);
    let flaky = record(&r, "g/flaky");
    assert_eq!(flaky["outcome"], "not_running", "{flaky:#}");
    assert_eq!(
        run.fx.pids("flaky.pids").len(),
        1,
        "flaky was restarted during the shutdown"
    );
}

#[test]
fn sigterm_while_a_readiness_probe_hangs_exits_within_the_root_deadline() {
    let fx = Fixture::new(&probe_tree());
    write_script(&fx, "probe");
    let mut run = Run::start(fx);
    ctl::wait_state(&run.fx, "g/probed", "starting");
    wait_until("a probe attempt to be running", WAIT, || {
        !run.fx.pids("probe.pids").is_empty()
    });
    // `starting` is shown from the spawn on: the worker may not have written its pid yet.
    wait_until("probed to have written its pid", WAIT, || {
        !run.fx.pids("probed.pids").is_empty()
    });

    let (code, took) = run.sigterm();
    run.assert_deadline_kept(code, took, &["w.pids", "probed.pids", "probe.pids"]);
}

#[test]
fn a_pre_stop_that_hangs_does_not_stretch_the_shutdown_past_the_root_deadline() {
    let fx = Fixture::new(&pre_stop_tree());
    write_script(&fx, "pre_stop");
    let mut run = Run::start(fx);

    let (code, took) = run.sigterm();
    // It must have run at all for the test to mean anything.
    assert!(
        !run.fx.pids("pre_stop.pids").is_empty(),
        "pre_stop never ran; log:\n{}",
        run.arb.log()
    );
    run.assert_deadline_kept(code, took, &["w.pids", "pre_stop.pids"]);
}

#[test]
fn a_second_sigterm_during_shutdown_exits_143_at_once_and_still_writes_the_report() {
    let mut run = Run::start(Fixture::new(&tree("", "", "")));
    let first = Instant::now();
    run.arb.signal(Signal::SIGTERM);
    wait_for("the daemon state stopping", WAIT, || {
        (ctl::status(&run.fx)["daemon"]["state"] == "stopping").then_some(())
    });
    ctl::wait_state(&run.fx, "g/w", "stopping");
    assert!(
        run.arb.child.try_wait().unwrap().is_none(),
        "the shutdown was over {:?} after the first SIGTERM, before the second could be sent",
        first.elapsed()
    );

    let second = Instant::now();
    run.arb.signal(Signal::SIGTERM);
    let code = exit_code(run.arb.wait_exit(EXIT_LIMIT));
    let took = second.elapsed();
    assert!(
        code == 128 + Signal::SIGTERM as i32 && took < Duration::from_secs(1),
        "arborist exited {:.2} s after the second SIGTERM with code {code}; expected within 1 s \
         and code 143; log:\n{}",
        took.as_secs_f64(),
        run.arb.log()
    );
    let r = run.report();
    assert_report_is_honest(&r);
    let w = record(&r, "g/w");
    assert_eq!(w["outcome"], "killed", "{w:#}");
    assert_eq!(w["pid"].as_i64(), Some(run.w as i64), "{w:#}");
    assert_nothing_left(&run.fx, &["w.pids"]);
}

#[test]
fn a_reload_blocked_on_a_fifo_neither_stalls_status_nor_stretches_the_shutdown() {
    let mut run = Run::start(Fixture::new(&tree("", "", "")));
    // Nobody ever opens the FIFO for writing: a reader that opens or reads it blocks forever.
    std::fs::remove_file(run.fx.config()).expect("remove the config");
    nix::unistd::mkfifo(&run.fx.config(), Mode::S_IRUSR | Mode::S_IWUSR).expect("mkfifo");
    run.arb.signal(Signal::SIGHUP);

    // About a second of status requests, paced (not synchronised) 100 ms apart; each must be
    // answered within 100 ms, since status comes from the status board.
    let mut answers = vec![];
    for _ in 0..10 {
        let (took, reply) = timed_status(&run.fx);
        assert_eq!(reply["ok"], true, "{reply:#}");
        answers.push(took);
        std::thread::sleep(Duration::from_millis(100)); // pacing between requests
    }
    let slowest = answers.iter().max().copied().unwrap_or_default();
    assert!(
        slowest <= Duration::from_millis(100),
        "status answers during the reload took {answers:?}; log:\n{}",
        run.arb.log()
    );

    let (code, took) = run.sigterm();
    run.assert_deadline_kept(code, took, &["w.pids"]);
}

/// arborist's guardian process (`arborist __guardian`), found among its children.
fn guardian_of(arborist: i32) -> i32 {
    wait_for("the guardian process", WAIT, || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid: i32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let is_guardian = cmdline.split(|&b| b == 0).any(|a| a == b"__guardian");
            (ppid == arborist && is_guardian).then_some(pid)
        })
    })
}

#[test]
fn a_stopped_guardian_holds_up_neither_status_nor_the_exit() {
    let mut run = Run::start(Fixture::new(&tree("", "", "")));
    let guardian = guardian_of(run.arb.pid());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guardian), Signal::SIGSTOP)
        .expect("SIGSTOP the guardian");
    // Its pipe is no longer read; arborist still answers, and still exits in time.
    let (took, reply) = timed_status(&run.fx);
    assert_eq!(reply["ok"], true, "{reply:#}");
    assert!(took <= Duration::from_millis(100), "status took {took:?}");
    let (code, took) = run.sigterm();
    // Let the guardian read its EOF and go, whatever the outcome.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(guardian), Signal::SIGCONT);
    run.assert_deadline_kept(code, took, &["w.pids"]);
}
