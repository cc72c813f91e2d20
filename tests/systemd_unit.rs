//! `arborist check --systemd UNIT CONFIG` (issue 5, "Deploy"): the real binary against the
//! shipped `systemd/arborist.service`, `config/demo.yaml`, and unit files written into a temp
//! dir. The unit checks warn on stderr and keep exit 0; an unreadable unit file exits 2.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_arborist");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn check(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("check")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run arborist check")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code, not a signal")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn show(o: &Output) -> String {
    format!("exit {}\nstdout:\n{}\nstderr:\n{}", code(o), out(o), err(o))
}

/// Files written into a temp dir that lives as long as this value.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().expect("temp dir"))
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path.display().to_string()
    }
}

/// A tree whose worst-case shutdown is 30s: `api` (default stop_timeout 10s) stops first,
/// then `db` (20s), within the 30s root deadline.
const TREE_30S: &str = "shutdown_timeout: 30s
children:
  db:
    command: [\"sleep\", \"1000\"]
    stop_timeout: 20s
  api:
    depends_on: [db]
    command: [\"sleep\", \"1000\"]
";

/// A unit that gets everything but the stop timeout right.
fn unit_with(stop: &str) -> String {
    format!(
        "[Unit]
Description=test

[Service]
Type=notify
ExecStart=/usr/local/bin/arborist run /etc/arborist/arborist.yaml
ExecReload=/bin/kill -HUP $MAINPID
KillMode=mixed
{stop}

[Install]
WantedBy=multi-user.target
"
    )
}

#[test]
fn the_shipped_unit_passes_with_the_demo_tree() {
    let unit = repo("systemd/arborist.service");
    let config = repo("config/demo.yaml");
    let o = check(&[
        "--systemd",
        unit.to_str().unwrap(),
        config.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(err(&o), "", "no warning expected\n{}", show(&o));
    let stdout = out(&o);
    let name = unit.display();
    assert!(
        stdout.contains(&format!(
            "systemd unit {name}: stop timeout 45s (TimeoutStopSec= on line "
        )),
        "{}",
        show(&o)
    );
    // The demo's worst case, as `check --plan` prints it, plus the margin.
    assert!(
        stdout.contains(">= worst-case shutdown 13s + 5s margin = 18s: ok"),
        "{}",
        show(&o)
    );
    assert!(
        stdout.contains(&format!(
            "systemd unit {name}: Type=notify, KillMode=mixed, KillSignal=SIGTERM, ExecReload= set: ok"
        )),
        "{}",
        show(&o)
    );
}

#[test]
fn the_shipped_unit_covers_the_default_root_deadline() {
    // 45s = 30s (default root shutdown_timeout, the largest possible worst case) + 5s margin
    // + slack: the arithmetic in the unit's comment.
    let dir = Dir::new();
    let config = dir.write("tree.yaml", TREE_30S);
    let unit = repo("systemd/arborist.service");
    let o = check(&["--plan", "--systemd", unit.to_str().unwrap(), &config]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(err(&o), "", "{}", show(&o));
    let stdout = out(&o);
    assert!(
        stdout.contains("worst-case shutdown: 30s (root deadline 30s)"),
        "{}",
        show(&o)
    );
    assert!(
        stdout.contains("stop timeout 45s (TimeoutStopSec= on line ")
            && stdout.contains(">= worst-case shutdown 30s + 5s margin = 35s: ok"),
        "{}",
        show(&o)
    );
}

#[test]
fn a_short_stop_timeout_warns_with_both_values() {
    let dir = Dir::new();
    let config = dir.write("tree.yaml", TREE_30S);
    let unit = dir.write("short.service", &unit_with("TimeoutStopSec=5s"));
    let o = check(&["--systemd", &unit, &config]);
    // A warning, not an error: the config is valid.
    assert_eq!(code(&o), 0, "{}", show(&o));
    let stderr = err(&o);
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(warnings.len(), 1, "{}", show(&o));
    // Named by file and line (TimeoutStopSec= is on line 9 of unit_with's text).
    assert_eq!(
        warnings[0],
        format!(
            "warning: {unit}:9: TimeoutStopSec=5s is shorter than the tree's worst-case \
             shutdown 30s: systemd would SIGKILL every worker 5s into a shutdown that may need \
             30s; set TimeoutStopSec=35s (worst case 30s + 5s margin) or more"
        ),
        "{}",
        show(&o)
    );
    assert!(
        out(&o).contains(&format!(
            "systemd unit {unit}: stop timeout 5s (TimeoutStopSec= on line 9) < worst-case \
             shutdown 30s + 5s margin = 35s: TOO SHORT"
        )),
        "{}",
        show(&o)
    );
}

#[test]
fn time_spans_and_the_last_assignment_follow_systemd() {
    let dir = Dir::new();
    let config = dir.write("tree.yaml", TREE_30S);
    // TimeoutSec= after TimeoutStopSec= sets the stop timeout too; "1min 30s" is 90s.
    let unit = dir.write(
        "spans.service",
        &unit_with("TimeoutStopSec=10s\nTimeoutSec=1min 30s"),
    );
    let o = check(&["--systemd", &unit, &config]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(err(&o), "", "{}", show(&o));
    assert!(
        out(&o).contains("stop timeout 1m 30s (TimeoutSec= on line 10) >= worst-case"),
        "{}",
        show(&o)
    );
    // Between the worst case and worst case + margin: still a warning.
    let unit = dir.write("tight.service", &unit_with("TimeoutStopSec=32s"));
    let o = check(&["--systemd", &unit, &config]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        err(&o).contains(
            "TimeoutStopSec=32s leaves less than 5s after the tree's worst-case shutdown 30s"
        ) && err(&o).contains("set TimeoutStopSec=35s"),
        "{}",
        show(&o)
    );
}

#[test]
fn the_default_kill_mode_warns() {
    let dir = Dir::new();
    let config = dir.write("tree.yaml", TREE_30S);
    let unit = dir.write(
        "default-killmode.service",
        &unit_with("TimeoutStopSec=45s").replace("KillMode=mixed\n", ""),
    );
    let o = check(&["--systemd", &unit, &config]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let stderr = err(&o);
    assert_eq!(stderr.lines().count(), 1, "{}", show(&o));
    assert!(
        stderr.starts_with(&format!(
            "warning: {unit}: KillMode= is not set, so systemd uses KillMode=control-group: \
             `systemctl stop` sends SIGTERM to every process of the unit at once"
        )) && stderr.contains("set KillMode=mixed"),
        "{}",
        show(&o)
    );
    assert!(
        out(&o).contains(&format!(
            "systemd unit {unit}: Type=notify, KillMode=control-group (default), ExecReload= set: 1 warning"
        )),
        "{}",
        show(&o)
    );
}

#[test]
fn a_bare_unit_gets_every_warning() {
    let dir = Dir::new();
    let config = dir.write("tree.yaml", TREE_30S);
    let unit = dir.write(
        "bare.service",
        "[Service]\nExecStart=/usr/local/bin/arborist run\nKillMode=process\nKillSignal=SIGKILL\n",
    );
    let o = check(&["--systemd", &unit, &config]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let stderr = err(&o);
    for needle in [
        "Type= is not set, so systemd uses Type=simple",
        &format!("{unit}:3: KillMode=process"),
        &format!("{unit}:4: KillSignal=SIGKILL"),
        "no ExecReload=",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?}\n{}", show(&o));
    }
    // systemd's default stop timeout (90s) covers this tree.
    assert!(
        out(&o)
            .contains("stop timeout 1m 30s (systemd's default; the unit sets no TimeoutStopSec=)"),
        "{}",
        show(&o)
    );
}

#[test]
fn a_missing_unit_file_exits_2_and_names_it() {
    let dir = Dir::new();
    let missing = dir.0.path().join("nope.service");
    let missing = missing.to_str().unwrap();
    let config = repo("config/demo.yaml");
    let o = check(&["--systemd", missing, config.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert_eq!(
        out(&o),
        "",
        "nothing printed before the error\n{}",
        show(&o)
    );
    assert!(
        err(&o).contains(&format!("cannot read the systemd unit {missing}: ")),
        "{}",
        show(&o)
    );
}

#[test]
fn a_bad_config_still_exits_2() {
    let dir = Dir::new();
    let config = dir.write("bad.yaml", "children:\n  a:\n    stop_timeout: soon\n");
    let unit = repo("systemd/arborist.service");
    let o = check(&["--systemd", unit.to_str().unwrap(), &config]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(err(&o).contains(&config), "{}", show(&o));
    assert!(!out(&o).contains("systemd unit"), "{}", show(&o));
}

#[test]
fn budget_and_systemd_combine() {
    let dir = Dir::new();
    let config = dir.write("tree.yaml", TREE_30S);
    let unit = dir.write("short.service", &unit_with("TimeoutStopSec=5s"));
    // Over budget: exit 1, and the unit is still checked.
    let o = check(&["--budget", "20s", "--systemd", &unit, &config]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        out(&o).contains("over budget: the worst-case shutdown 30s exceeds the budget 20s"),
        "{}",
        show(&o)
    );
    assert!(out(&o).contains("TOO SHORT"), "{}", show(&o));
    assert!(err(&o).contains("TimeoutStopSec=5s"), "{}", show(&o));
    // Within budget: the unit's warning alone keeps exit 0.
    let o = check(&["--budget", "40s", "--systemd", &unit, &config]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(out(&o).contains("within budget"), "{}", show(&o));
    assert!(err(&o).contains("TimeoutStopSec=5s"), "{}", show(&o));
}

#[test]
fn the_unit_can_come_from_stdin() {
    // As in `systemctl cat arborist | arborist check --systemd - CONFIG`: the unit and a
    // drop-in, each with its own [Service] section and `# path` comment; the drop-in wins.
    let dir = Dir::new();
    let config = dir.write("tree.yaml", TREE_30S);
    let text = format!(
        "# /etc/systemd/system/arborist.service\n{}\n# /etc/systemd/system/arborist.service.d/override.conf\n[Service]\nTimeoutStopSec=10s\n",
        unit_with("TimeoutStopSec=45s")
    );
    let mut child = Command::new(BIN)
        .args(["check", "--systemd", "-", &config])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn arborist");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        out(&o).contains("systemd unit (stdin): stop timeout 10s (TimeoutStopSec= on line 17)"),
        "{}",
        show(&o)
    );
    assert!(
        err(&o).contains("warning: (stdin):17: TimeoutStopSec=10s is shorter"),
        "{}",
        show(&o)
    );
}
