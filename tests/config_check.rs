//! `arborist check` (the resolved tree, `--plan`, `--budget`), configuration errors with their
//! locations, and how `run` treats a bad or missing config (SPEC §1, §2; issue 2 point 1).

mod spawned;
mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use spawned::Spawned;
use support::*;

/// A fixture whose config is `text` without its leading newline, so that line 1 of the file
/// is the first line written in the test.
fn fixture(text: &str) -> Fixture {
    Fixture::new(text.strip_prefix('\n').unwrap_or(text))
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    exit_code(o.status)
}

/// The columns after the node name of the plan table's row for `node`.
fn plan_row(stdout: &str, node: &str) -> Vec<String> {
    let table = stdout
        .split_once("\nnode ")
        .unwrap_or_else(|| panic!("no node table in:\n{stdout}"))
        .1;
    table
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(node)?;
            rest.starts_with(' ').then(|| {
                rest.split_whitespace()
                    .filter(|c| !c.starts_with('×'))
                    .map(String::from)
                    .collect()
            })
        })
        .unwrap_or_else(|| panic!("no row for {node} in:\n{stdout}"))
}

/// Asserts that `check` rejects the config with exactly the given error lines (each given
/// without the file name: `line:col: path: message…`, matched as a prefix of the real line).
fn assert_errors(fx: &Fixture, expected: &[&str]) {
    let o = fx.check(&[]);
    let file = fx.config().display().to_string();
    let stderr = err(&o);
    assert_eq!(code(&o), 2, "stdout:\n{}\nstderr:\n{stderr}", out(&o));
    let lines: Vec<&str> = stderr.lines().collect();
    let summary = if expected.len() == 1 {
        format!("{file}: 1 error found; nothing was started")
    } else {
        format!(
            "{file}: {} errors found; nothing was started",
            expected.len()
        )
    };
    assert_eq!(
        lines.len(),
        expected.len() + 1,
        "expected {} errors and a summary, got:\n{stderr}",
        expected.len()
    );
    for want in expected {
        let want = format!("{file}:{want}");
        assert!(
            lines.iter().any(|l| l.starts_with(&want)),
            "missing error line {want:?} in:\n{stderr}"
        );
    }
    assert_eq!(lines.last().copied(), Some(summary.as_str()), "{stderr}");
    assert!(
        !out(&o).contains("valid:"),
        "a bad config printed a tree:\n{}",
        out(&o)
    );
}

const TREE: &str = r#"
shutdown_timeout: 10s
children:
  db:
    command: ["sleep", "1000"]
    stop_timeout: 20s
  api:
    depends_on: [db]
    shell: "exec sleep 1000"
    stop_timeout: 5s
  web:
    depends_on: [api]
    shell: "exec sleep 1000"
    stop_timeout: 3s
  backend:
    shutdown_timeout: 4s
    depends_on: [db]
    children:
      pool:
        command: ["sleep", "1000"]
        replicas: 3
        stop_timeout: 2s
      cache:
        shell: "touch $DIR/cache-started; exec sleep 1000"
"#;

#[test]
fn check_prints_the_resolved_tree_and_exits_0_without_starting_anything() {
    let fx = fixture(TREE);
    let o = fx.check(&[]);
    let stdout = out(&o);
    assert_eq!(code(&o), 0, "stdout:\n{stdout}\nstderr:\n{}", err(&o));
    let first = stdout.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "{}: valid: 7 worker processes in 2 groups",
            fx.config().display()
        )
    );
    // Every node, in YAML order, with its resolved settings (defaults filled in).
    let mut from = 0;
    for (name, settings) in [
        (
            "(root)",
            &["group", "shutdown_timeout=10s", "stop_order=reverse"][..],
        ),
        (
            "db",
            &["worker", "stop_timeout=20s", "stop_signal=SIGTERM"][..],
        ),
        ("api", &["worker", "stop_timeout=5s", "depends_on=[db]"][..]),
        (
            "web",
            &["worker", "stop_timeout=3s", "depends_on=[api]"][..],
        ),
        (
            "backend",
            &["group", "shutdown_timeout=4s", "depends_on=[db]"][..],
        ),
        ("pool", &["worker", "×3", "stop_timeout=2s"][..]),
        // Defaults: on-failure restarts, a 10s stop_timeout.
        (
            "cache",
            &["worker", "stop_timeout=10s", "restart=on-failure"][..],
        ),
    ] {
        let line = stdout[from..]
            .lines()
            .find(|l| {
                l.trim_start_matches(|c: char| " │├└─".contains(c))
                    .starts_with(&format!("{name} "))
            })
            .unwrap_or_else(|| panic!("no line for {name} after offset {from} in:\n{stdout}"));
        for s in settings {
            assert!(line.contains(s), "{name}: {s:?} missing from {line:?}");
        }
        from = stdout.find(line).unwrap() + line.len();
    }
    // The nested group's children are drawn below (indented under) the group.
    let pool = stdout.lines().find(|l| l.contains("pool")).unwrap();
    let backend = stdout.lines().find(|l| l.contains("backend")).unwrap();
    assert!(pool.find("pool").unwrap() > backend.find("backend").unwrap());
    assert!(!stdout.contains("shutdown plan"), "{stdout}");
    assert!(fx.read("cache-started").is_none(), "check started a worker");
}

#[test]
fn plan_prints_stop_waves_effective_deadlines_and_worst_case() {
    let fx = fixture(TREE);
    let o = fx.check(&["--plan"]);
    let stdout = out(&o);
    assert_eq!(code(&o), 0, "stdout:\n{stdout}\nstderr:\n{}", err(&o));
    assert!(stdout.contains("shutdown plan"), "{stdout}");
    // Root level: dependents before dependencies; each wave starts when the previous one's
    // worst case has passed (web 3s and backend 4s -> api at +4s; api 5s -> db at +9s).
    let root = stdout.find("(root)  deadline 10s").expect("root level");
    let backend = stdout.find("backend  deadline 4s").expect("backend level");
    let root_level = &stdout[root..];
    let w1 = root_level
        .find("wave 1 (at +0s): web, backend")
        .expect("wave 1");
    let w2 = root_level.find("wave 2 (at +4s): api").expect("wave 2");
    let w3 = root_level.find("wave 3 (at +9s): db").expect("wave 3");
    assert!(w1 < w2 && w2 < w3, "{stdout}");
    assert!(
        stdout[backend..].contains("wave 1 (at +0s): pool, cache"),
        "{stdout}"
    );
    // Effective deadline = min(own, parent's).
    for (node, kind, own, effective) in [
        ("(root)", "group", "10s", "10s"),
        ("db", "worker", "20s", "10s"),
        ("api", "worker", "5s", "5s"),
        ("web", "worker", "3s", "3s"),
        ("backend", "group", "4s", "4s"),
        ("backend/pool", "worker", "2s", "2s"),
        ("backend/cache", "worker", "10s", "4s"),
    ] {
        let row = plan_row(&stdout, node);
        assert_eq!(
            &row[..3],
            &[kind, own, effective],
            "row of {node} in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("worst-case shutdown: 10s"),
        "worst case missing in:\n{stdout}"
    );
}

#[test]
fn plan_worst_case_of_a_dependency_chain_is_the_sum_of_its_waves_capped_by_the_root() {
    let chain = |root: &str| {
        format!(
            r#"
shutdown_timeout: {root}
children:
  db:
    command: ["sleep", "1000"]
    stop_timeout: 20s
  api:
    depends_on: [db]
    command: ["sleep", "1000"]
    stop_timeout: 5s
  web:
    depends_on: [api]
    command: ["sleep", "1000"]
    stop_timeout: 3s
"#
        )
    };
    // Root 10s: web (3s) then api (5s) then db, which is cut to the 10s root deadline.
    let fx = fixture(&chain("10s"));
    let o = fx.check(&["--plan"]);
    let stdout = out(&o);
    assert_eq!(code(&o), 0, "{stdout}{}", err(&o));
    for wave in [
        "wave 1 (at +0s): web",
        "wave 2 (at +3s): api",
        "wave 3 (at +8s): db",
    ] {
        assert!(stdout.contains(wave), "{wave:?} missing in:\n{stdout}");
    }
    assert_eq!(&plan_row(&stdout, "db")[..3], &["worker", "20s", "10s"]);
    assert!(stdout.contains("worst-case shutdown: 10s"), "{stdout}");

    // Root 30s: nothing is cut, the chain takes 3 + 5 + 20 = 28s.
    let fx = fixture(&chain("30s"));
    let o = fx.check(&["--plan"]);
    let stdout = out(&o);
    assert_eq!(code(&o), 0, "{stdout}{}", err(&o));
    assert_eq!(&plan_row(&stdout, "db")[..3], &["worker", "20s", "20s"]);
    assert!(stdout.contains("worst-case shutdown: 28s"), "{stdout}");
}

#[test]
fn budget_exits_1_when_the_worst_case_exceeds_it_and_0_when_within() {
    let fx = fixture(TREE); // worst case 10s
    let over = fx.check(&["--budget", "9s"]);
    assert_eq!(code(&over), 1, "{}{}", out(&over), err(&over));
    assert!(
        (out(&over) + &err(&over)).contains("over budget"),
        "{}{}",
        out(&over),
        err(&over)
    );

    for budget in ["10s", "30s", "1m"] {
        let within = fx.check(&["--budget", budget]);
        assert_eq!(code(&within), 0, "{}{}", out(&within), err(&within));
        let all = out(&within) + &err(&within);
        assert!(all.contains("within budget"), "{all}");
        assert!(!all.contains("over budget"), "{all}");
    }

    // A budget that is not a duration is a usage error.
    let bad = fx.check(&["--budget", "soon"]);
    assert_eq!(code(&bad), 2, "{}", err(&bad));
    assert!(err(&bad).contains("soon"), "{}", err(&bad));

    // --budget works together with --plan.
    let both = fx.check(&["--plan", "--budget", "2s"]);
    assert_eq!(code(&both), 1);
    assert!(out(&both).contains("worst-case shutdown: 10s"));
}

#[test]
fn a_file_with_many_errors_reports_all_of_them_with_line_column_and_path() {
    let fx = fixture(
        r#"
shutdown_timeout: 10x
children:
  web:
    shell: "sleep 1"
    stop_timout: 3s
  api:
    command: ["sleep", "1"]
    stop_signal: SIGFOO
    replicas: 0
  "bad name":
    shell: "true"
  both:
    shell: "true"
    command: ["true"]
  backend:
    children:
      x:
        shell: "true"
        depends_on: [web]
      n:
        shell: "true"
        ready: {notify: false}
      deeper:
        children:
          w:
            shell: "true"
            watchdog: 0s
  cyc:
    children:
      a:
        shell: "true"
        depends_on: [c]
      b:
        shell: "true"
        depends_on: [a]
      c:
        shell: "true"
        depends_on: [b]
  mixed:
    shell: "true"
    children:
      y:
        shell: "true"
"#,
    );
    assert_errors(
        &fx,
        &[
            "1:19: (root): invalid duration",
            "5:5: web: unknown key 'stop_timout' (did you mean 'stop_timeout'?)",
            "8:18: api: unknown signal",
            "9:15: api: expected a whole number >= 1",
            "10:3: bad name: invalid name",
            "13:5: both: a worker has exactly one of `command` and `shell`",
            "19:22: backend/x: depends on 'web', which is not a sibling",
            "22:25: backend/n: `notify: false` means nothing",
            "27:23: backend/deeper/w: the duration must be greater than zero",
            "32:21: cyc/a: dependency cycle: a -> c -> b -> a",
            "40:5: mixed: a node has exactly one of `command`, `shell` or `children`",
        ],
    );
}

#[test]
fn misspelt_key_is_an_error_with_a_suggestion() {
    let fx = fixture(
        r#"
children:
  web:
    shell: "sleep 1"
    stop_timout: 3s
"#,
    );
    assert_errors(
        &fx,
        &["4:5: web: unknown key 'stop_timout' (did you mean 'stop_timeout'?)"],
    );
}

#[test]
fn unknown_key_at_the_root_names_the_root_path() {
    let fx = fixture(
        r#"
shutdown_timout: 5s
children:
  web:
    shell: "sleep 1"
"#,
    );
    assert_errors(
        &fx,
        &["1:1: (root): unknown key 'shutdown_timout' (did you mean 'shutdown_timeout'?)"],
    );
}

#[test]
fn unknown_signal_is_an_error() {
    let fx = fixture(
        r#"
children:
  web:
    shell: "sleep 1"
    stop_signal: SIGNOPE
"#,
    );
    assert_errors(&fx, &["4:18: web: unknown signal"]);
}

#[test]
fn zero_replicas_is_an_error() {
    let fx = fixture(
        r#"
children:
  pool:
    command: ["sleep", "1"]
    replicas: 0
"#,
    );
    assert_errors(&fx, &["4:15: pool: expected a whole number >= 1"]);
}

#[test]
fn bad_duration_is_an_error() {
    let fx = fixture(
        r#"
children:
  g:
    shutdown_timeout: soon
    children:
      web:
        shell: "sleep 1"
        stop_timeout: 3 parsecs
"#,
    );
    assert_errors(
        &fx,
        &["3:23: g: invalid duration", "7:23: g/web: invalid duration"],
    );
}

#[test]
fn dependency_on_a_non_sibling_is_an_error() {
    let fx = fixture(
        r#"
children:
  db:
    shell: "sleep 1"
  backend:
    children:
      api:
        shell: "sleep 1"
        depends_on: [db]
"#,
    );
    assert_errors(
        &fx,
        &["8:22: backend/api: depends on 'db', which is not a sibling"],
    );
}

#[test]
fn dependency_cycle_is_an_error_naming_the_cycle() {
    let fx = fixture(
        r#"
children:
  g:
    children:
      a:
        shell: "true"
        depends_on: [c]
      b:
        shell: "true"
        depends_on: [a]
      c:
        shell: "true"
        depends_on: [b]
"#,
    );
    assert_errors(&fx, &["6:21: g/a: dependency cycle: a -> c -> b -> a"]);
}

#[test]
fn dependency_cycle_is_reported_even_when_a_sibling_has_an_unknown_dependency() {
    // "All errors of a file are reported at once": the cycle among a, b and c is a separate
    // error from x's unknown dependency and must not be hidden by it.
    let fx = fixture(
        r#"
children:
  g:
    children:
      x:
        shell: "true"
        depends_on: [zzz]
      a:
        shell: "true"
        depends_on: [c]
      b:
        shell: "true"
        depends_on: [a]
      c:
        shell: "true"
        depends_on: [b]
"#,
    );
    assert_errors(
        &fx,
        &[
            "6:22: g/x: depends on 'zzz', which is not a sibling",
            "9:21: g/a: dependency cycle: a -> c -> b -> a",
        ],
    );
}

#[test]
fn invalid_name_is_an_error() {
    let fx = fixture(
        r#"
children:
  "web/1":
    shell: "sleep 1"
  ok-name_1.x:
    shell: "sleep 1"
"#,
    );
    assert_errors(&fx, &["2:3: web/1: invalid name"]);
}

#[test]
fn worker_with_both_command_and_shell_is_an_error() {
    let fx = fixture(
        r#"
children:
  both:
    shell: "true"
    command: ["true"]
"#,
    );
    assert_errors(
        &fx,
        &["3:5: both: a worker has exactly one of `command` and `shell`"],
    );
}

#[test]
fn node_with_children_and_a_command_is_an_error() {
    let fx = fixture(
        r#"
children:
  mixed:
    command: ["true"]
    children:
      y:
        shell: "true"
"#,
    );
    assert_errors(
        &fx,
        &["3:5: mixed: a node has exactly one of `command`, `shell` or `children`"],
    );
}

#[test]
fn node_with_neither_command_shell_nor_children_is_an_error() {
    let fx = fixture(
        r#"
children:
  empty:
    restart: always
"#,
    );
    let o = fx.check(&[]);
    assert_eq!(code(&o), 2, "{}", err(&o));
    let file = fx.config().display().to_string();
    assert!(
        err(&o).starts_with(&format!("{file}:3:5: empty: ")),
        "{}",
        err(&o)
    );
    assert!(err(&o).contains("`command`"), "{}", err(&o));
}

#[test]
fn notify_http_readiness_and_watchdog_values_are_checked() {
    let fx = fixture(
        r#"
children:
  n:
    shell: "true"
    ready: {notify: false}
  h:
    shell: "true"
    ready: {http: "https://127.0.0.1:8443/"}
  p:
    shell: "true"
    ready: {http: "http://127.0.0.1:99999/health"}
  w:
    shell: "true"
    watchdog: 0s
"#,
    );
    assert_errors(
        &fx,
        &[
            "4:21: n: `notify: false` means nothing",
            "7:19: h: invalid URL 'https://127.0.0.1:8443/': https is not supported",
            "10:19: p: invalid URL 'http://127.0.0.1:99999/health': invalid port '99999'",
            "13:15: w: the duration must be greater than zero",
        ],
    );
}

#[test]
fn nul_characters_and_bad_probe_hosts_are_errors_not_failed_spawns_later() {
    // Each of these used to pass `check`, then failed at every spawn or every probe.
    let fx = fixture(
        r#"
children:
  c:
    command: ["echo", "a\0b"]
  s:
    shell: "echo \0"
  d:
    shell: "true"
    cwd: "/tmp\0/x"
  p:
    shell: "true"
    pre_stop: ["kill\0"]
  h:
    shell: "true"
    ready: {http: "http://a b:80/"}
  q:
    shell: "true"
    ready: {http: "http://h:+80/"}
"#,
    );
    assert_errors(
        &fx,
        &[
            "3:23: c: a NUL character cannot be passed to a program",
            "5:12: s: a NUL character cannot be passed to a program",
            "8:10: d: a NUL character cannot be passed to a program",
            "11:16: p: a NUL character cannot be passed to a program",
            "14:19: h: invalid URL 'http://a b:80/': ' ' is not allowed in a host name",
            "17:19: q: invalid URL 'http://h:+80/': invalid port '+80'",
        ],
    );
}

#[test]
fn a_second_byte_order_mark_is_one_located_error() {
    let fx = fixture("\u{feff}\u{feff}children:\n  a:\n    shell: \"true\"\n");
    assert_errors(
        &fx,
        &["1:1: (root): the file starts with more than one byte-order mark"],
    );
    let fx = fixture("\u{feff}children:\n  a:\n    shell: \"true\"\n");
    assert_eq!(code(&fx.check(&[])), 0);
}

#[test]
fn notify_http_readiness_and_watchdog_are_accepted_and_shown() {
    let fx = fixture(
        r#"
children:
  n:
    shell: "true"
    ready: {notify: true}
    watchdog: 30s
  h:
    shell: "true"
    ready: {http: "http://127.0.0.1:8080/healthz", interval: 1s}
"#,
    );
    let o = fx.check(&[]);
    let stdout = out(&o);
    assert_eq!(code(&o), 0, "stdout:\n{stdout}\nstderr:\n{}", err(&o));
    assert!(stdout.contains("ready=(notify)"), "{stdout}");
    assert!(stdout.contains("watchdog=30s"), "{stdout}");
    assert!(
        stdout.contains("ready=(http http://127.0.0.1:8080/healthz"),
        "{stdout}"
    );
}

#[test]
fn wrong_types_and_bad_enum_values_are_errors() {
    let fx = fixture(
        r#"
children:
  a:
    command: "sleep 1"
  b:
    shell: "true"
    replicas: many
    critical: maybe
  c:
    shell: "true"
    depends_on: [c]
    restart: sometimes
    logs: file
"#,
    );
    assert_errors(
        &fx,
        &[
            "3:14: a: ",
            "6:15: b: expected a whole number >= 1",
            "7:15: b: ",
            "10:18: c: ",
            "11:14: c: ",
            "12:11: c: ",
        ],
    );
}

#[test]
fn yaml_syntax_error_is_reported_as_invalid_yaml() {
    let fx = fixture("children:\n  a: [\n");
    let o = fx.check(&[]);
    assert_eq!(code(&o), 2, "{}", err(&o));
    let file = fx.config().display().to_string();
    let first = err(&o).lines().next().unwrap_or_default().to_string();
    assert!(
        first.starts_with(&format!("{file}:")) && first.contains("invalid YAML"),
        "{}",
        err(&o)
    );
    assert!(err(&o).contains("nothing was started"), "{}", err(&o));
}

#[test]
fn run_with_a_bad_config_starts_nothing_and_exits_2() {
    let fx = fixture(
        r#"
children:
  good:
    shell: "touch $DIR/good-started; exec sleep 1000"
  bad:
    shell: "touch $DIR/bad-started; exec sleep 1000"
    stop_signal: SIGFOO
"#,
    );
    let mut arb = fx.run(&[]);
    let status = arb.wait_exit(WAIT);
    assert_eq!(exit_code(status), 2, "log:\n{}", arb.log());
    let log = arb.log();
    assert!(log.contains("bad: unknown signal"), "{log}");
    assert!(log.contains("nothing was started"), "{log}");
    assert!(!log.contains("started path="), "{log}");
    assert!(fx.read("good-started").is_none(), "a worker was started");
    assert!(fx.read("bad-started").is_none(), "a worker was started");
}

#[test]
fn missing_config_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let o = Command::new(BIN)
        .arg("check")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", err(&o));
    assert!(err(&o).contains("nope.yaml"), "{}", err(&o));

    let o = Command::new(BIN)
        .arg("run")
        .arg(&missing)
        .env_remove("ARBORIST_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", err(&o));
    assert!(err(&o).contains("nope.yaml"), "{}", err(&o));
}

#[test]
fn run_without_a_config_argument_uses_arborist_config() {
    let fx = fixture(
        r#"
shutdown_timeout: 5s
children:
  web:
    shell: "echo $$ > $DIR/web.pid; exec sleep 1000"
"#,
    );
    // Run from another directory, so only the variable can lead arborist to the file.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cmd = spawned::arborist();
    cmd.arg("run")
        .env("ARBORIST_CONFIG", fx.config())
        .current_dir(elsewhere.path());
    let mut arb = Spawned::start(cmd, fx.dir.path(), "arborist");
    let pid = fx.wait_pid("web.pid");
    assert!(alive(pid));
    arb.signal(Signal::SIGTERM);
    assert_eq!(arb.wait_exit(WAIT), 0, "log:\n{}", arb.log());
    wait_until("worker to be gone", Duration::from_secs(5), || !alive(pid));
}

#[test]
fn guardian_grace_is_a_duration_allowed_only_at_the_root() {
    let fx = fixture(
        r#"
guardian_grace: 1 fortnight
children:
  g:
    guardian_grace: 1s
    children:
      web:
        shell: "sleep 1"
"#,
    );
    assert_errors(
        &fx,
        &[
            "1:17: (root): invalid duration",
            "4:5: g: 'guardian_grace' is only allowed at the top of the file",
        ],
    );
    for grace in ["0s", "250ms", "1m"] {
        let fx = fixture(&format!(
            "guardian_grace: {grace}\nchildren:\n  web:\n    shell: \"sleep 1\"\n"
        ));
        let o = fx.check(&[]);
        assert_eq!(code(&o), 0, "guardian_grace: {grace}: {}", err(&o));
    }
}

#[test]
fn limits_values_are_checked_where_they_are_written() {
    let fx = fixture(
        r#"
children:
  a:
    shell: "true"
    limits: {memory: 512XB, cpu: 0, pids: 0}
  b:
    shell: "true"
    limits: {memory: 512, cpu: "1.5", pids: 5000000}
  c:
    shell: "true"
    limits: {memroy: 1G}
  d:
    shell: "true"
    limits: 512MiB
  e:
    shell: "true"
    limits:
      memory: 99999999T
      cpu: .nan
"#,
    );
    assert_errors(
        &fx,
        &[
            "4:22: a: invalid memory size '512XB': unknown unit 'XB' (use B, K or KiB",
            "4:34: a: cpu must be a number of CPUs from 0.01 to 10000 (e.g. 1.5), found 0",
            "4:43: a: pids must be a whole number from 1 to 4194304",
            "7:22: b: memory '512' is 512 bytes, below the 1MiB minimum (a size without a unit is in bytes",
            "7:32: b: cpu must be a number of CPUs from 0.01 to 10000 (e.g. 1.5), found '1.5'",
            "7:45: b: pids must be a whole number from 1 to 4194304 (the kernel's largest pid count), found 5000000",
            "10:14: c: unknown key 'memroy' (did you mean 'memory'?)",
            "13:13: d: `limits` must be a mapping such as {memory: 512MiB, cpu: 1.5, pids: 256}, found a string",
            "17:15: e: invalid memory size '99999999T': too large",
            "18:12: e: cpu must be a number of CPUs from 0.01 to 10000",
        ],
    );
}

#[test]
fn limits_are_accepted_and_shown_in_binary_units() {
    let fx = fixture(
        r#"
children:
  a:
    shell: "true"
    limits: {memory: 512MiB, cpu: 1.5, pids: 256}
  b:
    shell: "true"
    limits: {memory: 1.5G}
  c:
    shell: "true"
    limits: {memory: 1GB, cpu: 2}
  d:
    shell: "true"
    limits: {}
"#,
    );
    let o = fx.check(&[]);
    let stdout = out(&o);
    assert_eq!(code(&o), 0, "stdout:\n{stdout}\nstderr:\n{}", err(&o));
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!("─ {name}  worker")))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{stdout}"))
            .to_string()
    };
    assert!(
        row("a").ends_with(" limits=(memory 512MiB, cpu 1.5, pids 256)"),
        "{stdout}"
    );
    assert!(row("b").ends_with(" limits=(memory 1536MiB)"), "{stdout}");
    assert!(
        row("c").ends_with(" limits=(memory 1000000000B, cpu 2)"),
        "{stdout}"
    );
    assert!(!row("d").contains("limits"), "{stdout}");
}
