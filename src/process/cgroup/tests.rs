//! Tests of the cgroup backend: the pure parts anywhere, and the rest against the machine's
//! real cgroup v2 hierarchy with real processes.
//!
//! The real-hierarchy tests need root and a writable cgroup v2 hierarchy (CI has both). Where
//! either is missing they fail, saying why, rather than pass without testing anything; set
//! `ARBORIST_SKIP_UNAVAILABLE=1` to skip them explicitly (each then prints that it skipped).
//! Each test works in a cgroup of its own, `arborist-test.<pid>.<n>` below the test process's
//! cgroup, removed with everything in it at the end, even when the test fails.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::time::Instant;

use super::detect::*;
use super::*;

/// How long any wait of these tests may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(10);

// ---- pure ---------------------------------------------------------------------------------

#[test]
fn run_names_are_one_cgroup_name_per_path_and_run() {
    assert_eq!(run_name("db", 1), "db.1");
    assert_eq!(run_name("backend/api#2", 7), "backend:api#2.7");
    assert_eq!(run_name("a b/ü", 3), "a%20b:%C3%BC.3");
    // Distinct paths stay distinct: `:` and `%` in a path are escaped themselves.
    assert_ne!(run_name("a/b", 1), run_name("a:b", 1));
    assert_ne!(run_name("a%3Ab", 1), run_name("a:b", 1));
    let deep = vec!["level"; 60].join("/");
    let name = run_name(&deep, u64::MAX);
    assert!(name.len() <= 255, "{} bytes: {name}", name.len());
    assert!(
        name.ends_with(&format!("level:level.{}", u64::MAX)),
        "{name}"
    );
    assert_ne!(name, run_name(&format!("x{deep}"), u64::MAX));
}

#[test]
fn the_cgroup2_mount_is_found_at_any_mount_point() {
    let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    assert_eq!(
        cgroup2_mounts(hybrid),
        [(PathBuf::from("/sys/fs/cgroup/unified"), "/".to_string())]
    );
    let unified = "\
24 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";
    assert_eq!(
        cgroup2_mounts(unified),
        [(PathBuf::from("/sys/fs/cgroup"), "/".to_string())]
    );
    let escaped = "99 1 0:40 /a\\040b /mnt/cg\\040two rw - cgroup2 none rw\n";
    assert_eq!(
        cgroup2_mounts(escaped),
        [(PathBuf::from("/mnt/cg two"), "/a b".to_string())]
    );
    assert!(cgroup2_mounts("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n").is_empty());
}

#[test]
fn arborist_s_cgroup_is_the_0_line_placed_below_the_mount_s_root() {
    let v1_and_v2 = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/arborist.service\n";
    assert_eq!(
        own_cgroup(v1_and_v2).as_deref(),
        Some("/system.slice/arborist.service")
    );
    assert_eq!(own_cgroup("0::/\n").as_deref(), Some("/"));
    assert_eq!(own_cgroup("0::/gone (deleted)\n").as_deref(), Some("/gone"));
    assert_eq!(own_cgroup("4:memory:/x\n"), None);
    assert_eq!(below("/a/b", "/").as_deref(), Some("/a/b"));
    assert_eq!(below("/a/b", "/a").as_deref(), Some("/b"));
    assert_eq!(below("/a", "/a").as_deref(), Some("/"));
    assert_eq!(below("/ab", "/a"), None);
    assert_eq!(below("/c", "/a"), None);
}

#[test]
fn subtree_control_gets_each_controller_with_a_plus() {
    assert_eq!(
        subtree_control_line(&["memory", "cpu", "pids"]),
        "+memory +cpu +pids"
    );
    assert_eq!(subtree_control_line(&["pids"]), "+pids");
}

#[test]
fn flat_keyed_files_are_read_by_key() {
    assert_eq!(run::field("populated 1\nfrozen 0\n", "populated"), Some(1));
    assert_eq!(run::field("populated 0\nfrozen 0\n", "populated"), Some(0));
    let events = "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n";
    assert_eq!(run::field(events, "oom_kill"), Some(2));
    assert_eq!(run::field(events, "oom"), Some(2));
    assert_eq!(run::field(events, "swap"), None);
}

// ---- the real hierarchy -------------------------------------------------------------------

/// A cgroup of the test's own under the detected hierarchy, with a [`Hierarchy`] rooted there;
/// everything below it is killed and removed on drop.
struct TestCgroup {
    hierarchy: Hierarchy,
    dir: PathBuf,
}

/// The test's cgroup, or None when these tests cannot run here and `ARBORIST_SKIP_UNAVAILABLE=1`
/// asks to skip them. Otherwise a missing prerequisite panics, saying why: it must never pass
/// silently.
fn test_cgroup() -> Option<TestCgroup> {
    let help = "cgroup tests need root and a writable cgroup v2 hierarchy; \
                set ARBORIST_SKIP_UNAVAILABLE=1 to skip them";
    let found = match Hierarchy::detect() {
        Ok(h) if nix::unistd::geteuid().is_root() => h,
        other => {
            let why = match other {
                Err(e) => e.to_string(),
                Ok(_) => "not root".to_string(),
            };
            // Only a missing prerequisite may skip, and only when asked to.
            if std::env::var_os("ARBORIST_SKIP_UNAVAILABLE").is_some_and(|v| v == "1") {
                eprintln!("SKIPPED (ARBORIST_SKIP_UNAVAILABLE=1): {help}: {why}");
                return None;
            }
            panic!("{help}: {why}");
        }
    };
    static TESTS: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "arborist-test.{}.{}",
        std::process::id(),
        TESTS.fetch_add(1, Ordering::Relaxed)
    );
    let dir = found.own_dir().join(&name);
    fs::create_dir(&dir).unwrap_or_else(|e| panic!("{help}: {}: {e}", dir.display()));
    let own = format!("{}/{name}", found.own().trim_end_matches('/'));
    let hierarchy = Hierarchy::detect_at(found.mount(), &own).unwrap_or_else(|e| {
        let _ = fs::remove_dir(&dir);
        panic!("{help}: {e}")
    });
    assert_eq!(hierarchy.own_dir(), dir);
    Some(TestCgroup { hierarchy, dir })
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_tree(&self.dir);
    }
}

/// Kills everything below `dir` and removes its cgroups, deepest first. Test cleanup only: it
/// retries `rmdir` on a short sleep (bounded), where arborist waits on `cgroup.events`.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..200 {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => return,
        }
    }
    eprintln!("could not remove {}", dir.display());
}

/// A `/bin/sh -c script` placed in `run` the way arborist's spawn does: the child writes `0`
/// into the run's `cgroup.procs` between fork and exec. stdin and stdout are pipes.
fn spawn_in(run: &RunCgroup, script: &str) -> (Child, BufReader<pipe::Receiver>) {
    let procs = run.procs_fd();
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: between fork and exec only write(2), which is async-signal-safe, and reading
    // errno through std's last_os_error.
    unsafe {
        command.pre_exec(move || {
            if libc::write(procs, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    let mut child = command.spawn().expect("sh spawned into the run's cgroup");
    let stdout = child.stdout.take().expect("a stdout pipe");
    let stdout = pipe::Receiver::from_owned_fd(stdout.into()).expect("stdout registered");
    (child, BufReader::new(stdout))
}

/// Waits for the line `want` on a child's stdout, for at most [`DEADLINE`].
async fn expect_line(stdout: &mut BufReader<pipe::Receiver>, want: &str) {
    let mut line = String::new();
    tokio::time::timeout(DEADLINE, stdout.read_line(&mut line))
        .await
        .unwrap_or_else(|_| panic!("no {want:?} from the child within {DEADLINE:?}"))
        .expect("the child's stdout");
    assert_eq!(line.trim_end(), want);
}

/// A shell that starts `n` `sleep 1000` in the background, says `up`, and waits.
fn fork_bomb(n: usize) -> String {
    format!("i=0; while [ $i -lt {n} ]; do sleep 1000 & i=$((i+1)); done; echo up; wait")
}

#[tokio::test]
async fn members_and_populated_follow_the_processes_of_a_run() {
    let Some(t) = test_cgroup() else { return };
    let watcher = Watcher::new().expect("an inotify instance");
    let run = t
        .hierarchy
        .create_run(&run_name("backend/api#2", 1))
        .expect("a run cgroup");
    assert_eq!(
        run.dir(),
        t.dir
            .join(format!("workers.{}/backend:api#2.1", std::process::id()))
    );
    assert!(!run.populated().unwrap());
    assert_eq!(run.members().unwrap(), Vec::<i32>::new());

    // Two readers of the child's stdin in the background: they end when the test closes it.
    let (mut child, mut stdout) = spawn_in(
        &run,
        "exec 3<&0; cat <&3 >/dev/null & cat <&3 >/dev/null & echo up; wait",
    );
    expect_line(&mut stdout, "up").await;
    let members = run.members().unwrap();
    assert_eq!(members.len(), 3, "sh and two cats: {members:?}");
    assert!(members.contains(&(child.id() as i32)), "{members:?}");
    assert!(run.populated().unwrap());

    drop(child.stdin.take());
    let started = Instant::now();
    assert!(
        watcher
            .wait_empty(&run, started + DEADLINE)
            .await
            .expect("waited"),
        "the run still has {:?}",
        run.members()
    );
    eprintln!("empty {:?} after stdin closed", started.elapsed());
    assert!(!run.populated().unwrap());
    assert_eq!(run.members().unwrap(), Vec::<i32>::new());
    assert!(child.wait().unwrap().success());

    run.remove().expect("the empty run removed");
    assert!(!run.dir().exists());
    run.remove().expect("removing it again is fine");
}

#[tokio::test]
async fn kill_empties_a_fork_bomb_of_200_processes() {
    let Some(t) = test_cgroup() else { return };
    let watcher = Watcher::new().expect("an inotify instance");
    let run = t.hierarchy.create_run(&run_name("bomb", 1)).unwrap();
    let (mut child, mut stdout) = spawn_in(&run, &fork_bomb(200));
    expect_line(&mut stdout, "up").await;
    assert_eq!(run.members().unwrap().len(), 201);

    let started = Instant::now();
    run.kill().expect("cgroup.kill written");
    assert!(
        watcher.wait_empty(&run, started + DEADLINE).await.unwrap(),
        "{} processes left after {DEADLINE:?}",
        run.members().unwrap().len()
    );
    eprintln!(
        "201 processes gone {:?} after cgroup.kill",
        started.elapsed()
    );
    assert!(child.wait().unwrap().code().is_none(), "sh was killed");
    run.remove().unwrap();
}

#[tokio::test]
async fn the_sigkill_fallback_empties_a_fork_bomb_without_cgroup_kill() {
    let Some(t) = test_cgroup() else { return };
    let watcher = Watcher::new().expect("an inotify instance");
    let run = t.hierarchy.create_run(&run_name("bomb", 2)).unwrap();
    let (mut child, mut stdout) = spawn_in(&run, &fork_bomb(200));
    expect_line(&mut stdout, "up").await;

    let started = Instant::now();
    run.kill_by_signal().expect("every member signalled");
    assert!(
        watcher.wait_empty(&run, started + DEADLINE).await.unwrap(),
        "{} processes left after {DEADLINE:?}",
        run.members().unwrap().len()
    );
    eprintln!(
        "201 processes gone {:?} after the fallback",
        started.elapsed()
    );
    assert!(child.wait().unwrap().code().is_none(), "sh was killed");
    run.remove().unwrap();
}

#[tokio::test]
async fn the_stop_signal_reaches_a_process_that_left_the_session() {
    let Some(t) = test_cgroup() else { return };
    let watcher = Watcher::new().expect("an inotify instance");
    let run = t.hierarchy.create_run(&run_name("escaper", 1)).unwrap();
    // A daemon-like grandchild in a session of its own, out of reach of a process-group kill.
    let (mut child, mut stdout) = spawn_in(
        &run,
        "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo up; exec sleep 1000",
    );
    expect_line(&mut stdout, "up").await;
    let members = run.members().unwrap();
    assert_eq!(members.len(), 2, "{members:?}");

    assert_eq!(run.signal_all(Signal::SIGTERM).unwrap(), 2);
    assert!(watcher
        .wait_empty(&run, Instant::now() + DEADLINE)
        .await
        .unwrap());
    assert!(child.wait().unwrap().code().is_none());
    run.remove().unwrap();
}

#[tokio::test]
async fn wait_empty_gives_up_at_its_deadline_and_two_waiters_both_wake() {
    let Some(t) = test_cgroup() else { return };
    let watcher = Watcher::new().expect("an inotify instance");
    let run = t.hierarchy.create_run(&run_name("waited", 1)).unwrap();
    let (mut child, mut stdout) = spawn_in(&run, "echo up; exec cat >/dev/null");
    expect_line(&mut stdout, "up").await;

    let started = Instant::now();
    let until = started + Duration::from_millis(200);
    assert!(!watcher.wait_empty(&run, until).await.unwrap());
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(started.elapsed() < DEADLINE);

    // Two waiters of one run share one kernel watch; a second run is waited on beside them.
    let other = t.hierarchy.create_run(&run_name("waited", 2)).unwrap();
    let (mut other_child, mut other_stdout) = spawn_in(&other, "echo up; exec cat >/dev/null");
    expect_line(&mut other_stdout, "up").await;
    let until = Instant::now() + DEADLINE;
    // One waiter on a task of its own, as a worker's supervision task waits.
    let run = std::sync::Arc::new(run);
    let spawned = tokio::spawn({
        let (watcher, run) = (watcher.clone(), run.clone());
        async move { watcher.wait_empty(&run, until).await }
    });
    let waits = async {
        tokio::join!(
            watcher.wait_empty(&run, until),
            watcher.wait_empty(&other, until),
        )
    };
    let ending = async {
        drop(child.stdin.take());
        other.kill().unwrap();
    };
    let ((first, third), ()) = tokio::join!(waits, ending);
    let second = spawned.await.expect("the waiting task");
    assert!(
        first.unwrap() && second.unwrap(),
        "both waiters saw the run empty"
    );
    assert!(third.unwrap(), "the other run's waiter saw it empty");
    child.wait().unwrap();
    run.remove().unwrap();
    other_child.wait().unwrap();
    other.remove().unwrap();
}

#[tokio::test]
async fn cgroups_a_worker_makes_below_its_run_are_members_killed_and_removed_with_it() {
    let Some(t) = test_cgroup() else { return };
    let watcher = Watcher::new().expect("an inotify instance");
    let run = t.hierarchy.create_run(&run_name("runtime", 1)).unwrap();
    // What a container runtime running as a root worker does: a cgroup of its own below.
    let inner = run.dir().join("inner");
    fs::create_dir(&inner).unwrap();
    let nested = RunCgroup::open(inner.clone()).unwrap();
    let (mut child, mut stdout) = spawn_in(&nested, "echo up; exec sleep 1000");
    expect_line(&mut stdout, "up").await;
    assert_eq!(run.members().unwrap(), [child.id() as i32]);
    assert!(run.populated().unwrap());

    run.kill().unwrap();
    assert!(watcher
        .wait_empty(&run, Instant::now() + DEADLINE)
        .await
        .unwrap());
    child.wait().unwrap();
    run.remove()
        .expect("the run and the cgroup below it removed");
    assert!(!run.dir().exists());
}

#[test]
fn limits_are_refused_by_name_where_their_controller_is_not_delegated() {
    let Some(t) = test_cgroup() else { return };
    let memory = Limits {
        memory: Some(512 << 20),
        ..Limits::default()
    };
    let available = t.hierarchy.available();
    if available.iter().any(|c| c == "memory") {
        assert!(t.hierarchy.check_limits(&memory).is_ok());
    } else {
        // This machine (hybrid, only hugetlb on v2) and CI.
        let err = t.hierarchy.check_limits(&memory).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "limits.memory needs the memory controller, which is not delegated to \
                 arborist's cgroup {} (available: {})",
                t.hierarchy.own(),
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            )
        );
        // And at a run, where the file is missing, the error names the controller too.
        let run = t.hierarchy.create_run(&run_name("limited", 1)).unwrap();
        let err = run.apply_limits(&memory).unwrap_err();
        assert!(
            matches!(
                err,
                LimitError::NotEnabled {
                    controller: "memory",
                    ..
                }
            ),
            "{err}"
        );
        run.remove().unwrap();
    }
}

#[test]
fn oom_kills_are_zero_without_the_memory_controller() {
    let Some(t) = test_cgroup() else { return };
    let run = t.hierarchy.create_run(&run_name("oom", 1)).unwrap();
    if !run.dir().join("memory.events").exists() {
        assert_eq!(run.oom_kills().unwrap(), 0);
    }
    run.remove().unwrap();
}

#[test]
fn detection_refuses_a_directory_that_is_not_a_cgroup() {
    let Some(t) = test_cgroup() else { return };
    let err = Hierarchy::detect_at(t.hierarchy.mount(), "/arborist-no-such-cgroup").unwrap_err();
    assert!(matches!(err, Unavailable::NotCgroup { .. }), "{err}");
    assert!(
        err.to_string().contains("not a cgroup v2 directory"),
        "{err}"
    );
}

#[tokio::test]
async fn enabling_controllers_first_moves_arborist_s_processes_into_a_supervisor_leaf() {
    let Some(mut t) = test_cgroup() else { return };
    // A process in the test's cgroup stands for arborist in its own cgroup.
    let stand_in = RunCgroup::open(t.dir.clone()).unwrap();
    let (mut child, mut stdout) = spawn_in(&stand_in, "echo up; exec cat >/dev/null");
    expect_line(&mut stdout, "up").await;
    let own_procs = t.dir.join("cgroup.procs");
    assert_eq!(read_pids(&own_procs).unwrap(), [child.id() as i32]);

    t.hierarchy.move_into_supervisor().expect("moved");
    assert_eq!(read_pids(&own_procs).unwrap(), Vec::<i32>::new());
    let supervisor = read_pids(&t.dir.join("supervisor/cgroup.procs")).unwrap();
    assert_eq!(supervisor, [child.id() as i32]);

    // With nothing of memory, cpu and pids delegated (this machine), nothing else changes.
    if !LIMIT_CONTROLLERS
        .iter()
        .any(|c| t.hierarchy.available().iter().any(|a| a == c))
    {
        t.hierarchy.enable_controllers().expect("nothing to enable");
        assert!(t.hierarchy.enabled().is_empty());
    }
    drop(child.stdin.take());
    child.wait().unwrap();
}

#[tokio::test]
async fn leftover_runs_of_an_earlier_arborist_are_found() {
    let Some(t) = test_cgroup() else { return };
    assert!(t.hierarchy.leftovers().unwrap().is_empty());
    // An earlier arborist: its pid (that of a child that has exited) no longer runs.
    let dead = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let earlier = t.hierarchy.own_dir().join(format!("workers.{dead}"));
    fs::create_dir(&earlier).unwrap();
    let dir = earlier.join(run_name("api", 3));
    fs::create_dir(&dir).unwrap();
    let run = super::run::RunCgroup::open(dir).unwrap();
    let (mut child, mut stdout) = spawn_in(&run, "echo up; exec sleep 1000");
    expect_line(&mut stdout, "up").await;
    drop(run);
    // This arborist's own runs are never leftovers.
    let mine = t.hierarchy.create_run(&run_name("web", 1)).unwrap();
    assert_eq!(t.hierarchy.leftovers().unwrap().len(), 1);
    mine.remove().unwrap();

    let left = t.hierarchy.leftovers().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].members().unwrap(), [child.id() as i32]);
    left[0].kill().unwrap();
    let watcher = Watcher::new().unwrap();
    assert!(watcher
        .wait_empty(&left[0], Instant::now() + DEADLINE)
        .await
        .unwrap());
    child.wait().unwrap();
    left[0].remove().unwrap();
    t.hierarchy.remove_leftover_dirs();
    assert!(!earlier.exists());
    assert!(t.hierarchy.leftovers().unwrap().is_empty());
}
