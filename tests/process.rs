//! How arborist runs worker processes (SPEC §3 Tree; issue 2 point 2): process groups,
//! PDEATHSIG and the guardian, the child subreaper and orphan reaping, RLIMIT_NOFILE,
//! identity, environment and working directory.

mod spawned;
mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use spawned::Spawned;
use support::*;

fn pgid_of(pid: i32) -> Option<i32> {
    proc_stat_field(pid, 5)?.parse().ok()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The guardian helper among arborist's children.
fn guardian_of(arborist: i32) -> Option<i32> {
    children_of(arborist)
        .into_iter()
        .map(|(p, _)| p)
        .find(|&p| cmdline(p).contains("__guardian"))
}

/// (soft, hard) of "Max open files" in /proc/PID/limits; u64::MAX for unlimited.
fn nofile_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let v: Vec<u64> = line["Max open files".len()..]
        .split_whitespace()
        .take(2)
        .map(|x| x.parse().unwrap_or(u64::MAX))
        .collect();
    (v[0], v[1])
}

fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    uid.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// (uid, primary gid) of `user` from /etc/passwd.
fn passwd_entry(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Name of group `gid` from /etc/group.
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == gid.to_string()).then(|| f[0].to_string())
    })
}

/// When root and user `nobody` exists: nobody's (uid, gid).
fn nobody_when_root() -> Option<(u32, u32)> {
    if euid() != 0 {
        eprintln!("skipped: not running as root");
        return None;
    }
    let entry = passwd_entry("nobody");
    if entry.is_none() {
        eprintln!("skipped: no user nobody");
    }
    entry
}

/// The first captured stdout line of worker `path` in a JSON log.
fn worker_line(log: &str, path: &str) -> Option<String> {
    events(log)
        .iter()
        .find(|e| field(e, "target") == "worker" && field(e, "path") == path)
        .map(|e| field(e, "message").to_string())
}

#[test]
fn each_worker_leads_its_own_process_group_which_holds_its_children() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  web:
    shell: "sleep 1000 & echo $! > $DIR/bg.pid; echo $$ > $DIR/web.pid; wait"
  pool:
    replicas: 2
    shell: "echo $$ > $DIR/pool$ARBORIST_REPLICA.pid; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    let web = fx.wait_pid("web.pid");
    let bg = fx.wait_pid("bg.pid");
    let pool: Vec<i32> = (0..2)
        .map(|i| fx.wait_pid(&format!("pool{i}.pid")))
        .collect();
    let me = arb.pid();

    assert_eq!(parent_of(web), Some(me), "the worker is arborist's child");
    assert_eq!(
        pgid_of(web),
        Some(web),
        "the worker leads its process group"
    );
    assert_eq!(pgid_of(bg), Some(web), "its child is in its group");
    let mut members = group_members(web);
    members.sort_unstable();
    let mut want = vec![web, bg];
    want.sort_unstable();
    assert_eq!(members, want);
    assert_ne!(pgid_of(web), pgid_of(me), "not in arborist's group");
    for &p in &pool {
        assert_eq!(parent_of(p), Some(me));
        assert_eq!(pgid_of(p), Some(p), "each replica leads its own group");
    }
    assert_ne!(pool[0], pool[1]);
    // The guardian helper runs beside the workers.
    assert!(guardian_of(me).is_some(), "no `arborist __guardian` child");

    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
    for p in [web, bg, pool[0], pool[1]] {
        assert!(!alive(p), "{p} survived the shutdown");
    }
}

#[test]
fn setsid_grandchild_whose_parent_exits_is_adopted_by_arborist_and_stopped_at_shutdown() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  web:
    shell: "echo $$ > $DIR/web.pid; (setsid sh -c 'echo $$ > $DIR/gc.pid; exec sleep 1000' &); exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    let web = fx.wait_pid("web.pid");
    let gc = fx.wait_pid("gc.pid");
    // The subshell that started it exits at once; the grandchild goes to the subreaper.
    wait_until("the grandchild to be re-parented to arborist", WAIT, || {
        parent_of(gc) == Some(arb.pid())
    });
    assert_eq!(pgid_of(gc), Some(gc), "setsid made it a group leader");
    assert_ne!(pgid_of(gc), pgid_of(web), "it left the worker's group");
    assert!(alive(gc));

    let (code, took) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(!alive(gc), "the adopted grandchild outlived arborist");
    assert!(!alive(web));
}

#[test]
fn adopted_grandchild_ignoring_sigterm_is_killed_with_its_children_at_the_deadline() {
    // The escaped grandchild ignores SIGTERM, and so does its own child (SIG_IGN is
    // inherited): both must be SIGKILLed at the 1s root deadline, the run must end at about
    // 1s, and it must exit 3 (some processes had to be SIGKILLed).
    let fx = Fixture::new(
        r#"
shutdown_timeout: 1s
children:
  web:
    shell: "(setsid sh -c 'trap \"\" TERM; sleep 1000 & echo $! > $DIR/ggc.pid; echo $$ > $DIR/gc.pid; wait' &); exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    let gc = fx.wait_pid("gc.pid");
    let ggc = fx.wait_pid("ggc.pid");
    wait_until("the grandchild to be re-parented to arborist", WAIT, || {
        parent_of(gc) == Some(arb.pid())
    });
    let (code, took) = arb.stop_with(Signal::SIGTERM, WAIT);
    let gc_alive = alive(gc);
    let ggc_alive = alive(ggc);
    // Clean up whatever survived before asserting.
    for p in [gc, ggc] {
        if alive(p) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
    let mut problems = vec![];
    if gc_alive {
        problems.push("the adopted grandchild survived arborist".to_string());
    }
    if ggc_alive {
        problems.push(
            "the adopted grandchild's own child (in its process group) survived arborist"
                .to_string(),
        );
    }
    if took > Duration::from_millis(1800) {
        problems.push(format!("shutdown took {took:?} with a 1s root deadline"));
    }
    if code != 3 {
        problems.push(format!(
            "exit code {code}, not 3, although a process was SIGKILLed at the deadline"
        ));
    }
    assert!(
        problems.is_empty(),
        "{}\nlog:\n{}",
        problems.join("\n"),
        arb.log()
    );
}

#[test]
fn orphans_are_reaped_while_worker_exit_statuses_are_still_reported() {
    // Workers that leave many orphans behind and then exit with their own statuses: no
    // orphan stays a zombie, and every worker's own status (not an orphan's 3) is reported.
    // Per worker: 10 orphans that stay in its process group and exit at once (the worker
    // waits until they have run, so its exit does not cut them short), and 10 that leave the
    // group (setsid) and exit a little later, around the time the worker exits (or are
    // stopped with it: they are still its run's processes). The worker also waits until
    // those have left its group: until then they are still members, and arborist rightly
    // stops what a worker leaves in its group when it exits.
    let orphans = |name: &str| {
        format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do \
             (sh -c 'echo $$ >> $DIR/{name}.orphans; exit 3' &); \
             (setsid sh -c 'echo $$ >> $DIR/{name}.left; echo $$ >> $DIR/late.orphans; sleep 0.05; exit 3' &); done; \
             while [ $(cat $DIR/{name}.orphans | wc -l) -lt 10 ]; do sleep 0.01; done; \
             while [ $(cat $DIR/{name}.left 2>/dev/null | wc -l) -lt 10 ]; do sleep 0.01; done"
        )
    };
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  seven:
    restart: never
    shell: "{}; exit 7"
  nine:
    restart: never
    shell: "{}; exit 9"
  zero:
    restart: never
    shell: "{}; exit 0"
  steady:
    shell: "{}; echo $$ > $DIR/steady.pid; exec sleep 1000"
"#,
        orphans("seven"),
        orphans("nine"),
        orphans("zero"),
        orphans("steady"),
    ));
    let mut arb = fx.run(&["--log-format", "json"]);
    let me = arb.pid();
    for path in ["seven", "nine", "zero"] {
        wait_until(&format!("{path} to exit"), WAIT, || {
            events(&arb.log())
                .iter()
                .any(|e| field(e, "path") == path && field(e, "message").starts_with("exited"))
        });
    }
    fx.wait_pid("steady.pid");
    // 4 workers x 20 orphans, each writes its pid just before it exits.
    let pids: Vec<i32> = wait_for("80 orphans to have run", WAIT, || {
        let mut pids = vec![];
        for file in ["seven", "nine", "zero", "steady", "late"] {
            let text = fx.read(&format!("{file}.orphans"))?;
            if !text.ends_with('\n') {
                return None;
            }
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        (pids.len() >= 80).then_some(pids)
    });
    wait_until("every orphan to be reaped", WAIT, || {
        pids.iter().all(|&p| proc_state(p).is_none())
            && children_of(me).iter().all(|&(_, s)| s != 'Z')
    });
    let zombies: Vec<_> = children_of(me)
        .into_iter()
        .filter(|&(_, s)| s == 'Z')
        .collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");

    let log = arb.log();
    let exited = |path: &str| {
        events(&log)
            .iter()
            .filter(|e| field(e, "path") == path && field(e, "message").starts_with("exited"))
            .map(|e| field(e, "message").to_string())
            .collect::<Vec<_>>()
    };
    let seven = exited("seven");
    assert_eq!(seven.len(), 1, "{seven:?}");
    assert!(seven[0].contains("exit status 7"), "{seven:?}");
    let nine = exited("nine");
    assert_eq!(nine.len(), 1, "{nine:?}");
    assert!(nine[0].contains("exit status 9"), "{nine:?}");
    let zero = exited("zero");
    assert_eq!(zero.len(), 1, "{zero:?}");
    assert!(zero[0].contains("exit status 0"), "{zero:?}");
    assert!(
        !log.contains("exit status 3"),
        "an orphan's status was taken for a worker's:\n{log}"
    );
    assert!(exited("steady").is_empty(), "{:?}", exited("steady"));

    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    // seven and nine failed but are neither critical nor restarted: the tree runs on, and
    // a SIGTERM stops it gracefully.
    assert_eq!(code, 0, "log:\n{}", arb.log());
}

#[test]
fn arborist_raises_its_nofile_soft_limit_and_workers_get_the_original_back() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  web:
    shell: "echo $(ulimit -Sn) $(ulimit -Hn) > $DIR/web.nofile.tmp; mv $DIR/web.nofile.tmp $DIR/web.nofile; exec sleep 1000"
"#,
    );
    let (my_soft, my_hard) = nofile_limits("self");

    // As started by the test: the worker sees the test's own soft limit.
    let mut arb = fx.run(&[]);
    let worker = fx.wait_file("web.nofile");
    let (soft, hard) = nofile_limits(&arb.pid().to_string());
    assert_eq!(
        soft, hard,
        "arborist's soft limit is not raised to the hard one"
    );
    assert_eq!(hard, my_hard);
    let fmt = |v: u64| {
        if v == u64::MAX {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    assert_eq!(worker, format!("{} {}", fmt(my_soft), fmt(my_hard)));
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
    std::fs::remove_file(fx.path("web.nofile")).unwrap();

    // Started with a soft limit below the hard one (here the test's soft limit may already
    // equal the hard one): arborist raises its own, the worker gets the lower one back.
    let low = my_hard.min(1024) / 2;
    let mut cmd = spawned::command("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -Sn {low} && exec \"$0\" run \"$1\""))
        .arg(BIN)
        .arg(fx.config())
        .current_dir(fx.dir.path());
    let mut arb = Spawned::start(cmd, fx.dir.path(), "lowered");
    let worker = fx.wait_file("web.nofile");
    let (soft, hard) = nofile_limits(&arb.pid().to_string());
    assert_eq!(
        (soft, hard),
        (my_hard, my_hard),
        "arborist did not raise its soft limit"
    );
    assert_eq!(worker, format!("{low} {}", fmt(my_hard)));
    arb.signal(Signal::SIGTERM);
    assert_eq!(arb.wait_exit(WAIT), 0, "log:\n{}", arb.log());
}

#[test]
fn user_and_group_drop_identity_and_supplementary_groups_when_root() {
    let Some((uid, gid)) = nobody_when_root() else {
        return;
    };
    let group = group_name(gid).unwrap_or_else(|| gid.to_string());
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  names:
    user: nobody
    group: "{group}"
    shell: "echo $(id -u) $(id -g) $(id -G); exec sleep 1000"
  ids:
    user: {uid}
    group: {gid}
    shell: "echo $(id -u) $(id -g) $(id -G); exec sleep 1000"
"#
    ));
    let mut arb = fx.run(&["--log-format", "json"]);
    let want = format!("{uid} {gid} {gid}");
    for path in ["names", "ids"] {
        let line = wait_for(&format!("the id line of {path}"), WAIT, || {
            worker_line(&arb.log(), path)
        });
        assert_eq!(line, want, "{path}: uid gid groups");
    }
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
}

#[test]
fn user_alone_drops_to_that_users_primary_group_not_roots() {
    // Like systemd's User=, su or Docker's USER: without `group:` the worker runs with the
    // user's own primary group, not with root's group 0.
    let Some((uid, gid)) = nobody_when_root() else {
        return;
    };
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  web:
    user: nobody
    shell: "echo $(id -u) $(id -g) $(id -G); exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&["--log-format", "json"]);
    let line = wait_for("the id line", WAIT, || worker_line(&arb.log(), "web"));
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
    let ids: Vec<u32> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(ids[0], uid, "uid; id line {line:?}");
    assert_eq!(
        ids[1], gid,
        "a worker with `user: nobody` kept gid {}",
        ids[1]
    );
    assert!(
        !ids[2..].contains(&0),
        "a worker with `user: nobody` kept root's group 0: `id -G` = {:?}",
        &ids[2..]
    );
}

#[test]
fn workers_and_their_groups_die_when_arborist_is_sigkilled() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  web:
    shell: "sleep 1000 & echo $! > $DIR/bg.pid; echo $$ > $DIR/web.pid; wait"
  pool:
    replicas: 3
    command: ["sh", "-c", "echo $$ > $DIR/pool$ARBORIST_REPLICA.pid; exec sleep 1000"]
"#,
    );
    let mut arb = fx.run(&[]);
    let mut pids = vec![fx.wait_pid("web.pid"), fx.wait_pid("bg.pid")];
    pids.extend((0..3).map(|i| fx.wait_pid(&format!("pool{i}.pid"))));
    let guardian = guardian_of(arb.pid()).expect("guardian");
    let (code, _) = arb.stop_with(Signal::SIGKILL, WAIT);
    assert_eq!(code, 128 + 9);
    wait_until(
        "every worker process to die",
        Duration::from_secs(5),
        || pids.iter().all(|&p| !alive(p)),
    );
    wait_until("the guardian to leave", Duration::from_secs(5), || {
        !alive(guardian)
    });
}

/// The guardian must know a worker's group from the moment the worker runs, not some time
/// later: here arborist is SIGKILLed while a pool of 100 is still starting, as soon as the
/// first grandchild exists, and every grandchild that got to record itself must die.
/// (The guardian used to learn of new groups in the chores thread's next batch; under load
/// a grandchild could slip through.)
#[test]
fn grandchildren_of_workers_started_an_instant_before_a_sigkill_die_too() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  pool:
    replicas: 100
    command: ["sh", "-c", "sleep 1000 & echo $! > $DIR/gc$ARBORIST_REPLICA.tmp && mv $DIR/gc$ARBORIST_REPLICA.tmp $DIR/gc$ARBORIST_REPLICA.pid; exec sleep 1000"]
"#,
    );
    let mut arb = fx.run(&[]);
    let recorded = || {
        std::fs::read_dir(fx.dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("gc") && n.ends_with(".pid"))
            .collect::<Vec<_>>()
    };
    wait_until("a first grandchild", WAIT, || !recorded().is_empty());
    let guardian = guardian_of(arb.pid()).expect("guardian");
    let (code, _) = arb.stop_with(Signal::SIGKILL, WAIT);
    assert_eq!(code, 128 + 9);
    wait_until("the guardian to leave", Duration::from_secs(5), || {
        !alive(guardian)
    });
    let pids: Vec<i32> = recorded()
        .iter()
        .filter_map(|n| fx.read(n)?.trim().parse().ok())
        .collect();
    assert!(!pids.is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| alive(p)) {
        let left: Vec<_> = pids
            .iter()
            .filter(|&&p| alive(p))
            .map(|&p| (p, proc_state(p), proc_stat_field(p, 5)))
            .collect();
        assert!(
            Instant::now() < deadline,
            "of {} grandchildren, these outlived arborist (pid, state, pgid): {left:?}",
            pids.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Without a guardian that can act (here it is SIGSTOPped, so arborist sees nothing wrong),
/// the workers' leaders still end when arborist is SIGKILLed: their parent-death signal is
/// their stop signal (it is SIGKILL for a worker that could not tell the guardian its group).
#[test]
fn worker_leaders_get_their_stop_signal_by_pdeathsig_even_without_a_working_guardian() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  pool:
    replicas: 3
    stop_signal: SIGINT
    shell: "echo $$ > $DIR/pool$ARBORIST_REPLICA.pid; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    let pids: Vec<i32> = (0..3)
        .map(|i| fx.wait_pid(&format!("pool{i}.pid")))
        .collect();
    let guardian = guardian_of(arb.pid()).expect("guardian");
    kill(Pid::from_raw(guardian), Signal::SIGSTOP).unwrap();
    wait_until("the guardian to stop", WAIT, || {
        proc_state(guardian) == Some('T')
    });
    let (code, _) = arb.stop_with(Signal::SIGKILL, WAIT);
    assert_eq!(code, 128 + 9);
    wait_until("every worker to die", Duration::from_secs(5), || {
        pids.iter().all(|&p| !alive(p))
    });
    // The stopped guardian is this test's to end.
    kill(Pid::from_raw(guardian), Signal::SIGKILL).unwrap();
    wait_until("the guardian to die", WAIT, || !alive(guardian));
}

/// In cgroup mode the guardian knows every worker run's cgroup: a process that left its
/// worker's process group and session still dies when arborist is SIGKILLed. (The
/// process-group fallback cannot do this: README, "what the fallback cannot do".)
#[test]
fn in_cgroup_mode_an_adopted_grandchild_dies_when_arborist_is_sigkilled() {
    // "Nothing outlives it": a descendant that left its worker's process group is arborist's
    // child (subreaper), so it must not survive a SIGKILL of arborist either.
    if !cgroup_mode_available() {
        return;
    }
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
ownership: cgroup
children:
  web:
    shell: "(setsid sh -c 'echo $$ > $DIR/gc.pid; exec sleep 1000' &); exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    let gc = fx.wait_pid("gc.pid");
    wait_until("the grandchild to be re-parented to arborist", WAIT, || {
        parent_of(gc) == Some(arb.pid())
    });
    let (code, _) = arb.stop_with(Signal::SIGKILL, WAIT);
    assert_eq!(code, 128 + 9);
    let start = Instant::now();
    while alive(gc) && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20)); // polling interval of a bounded wait
    }
    let survived = alive(gc);
    if survived {
        let _ = kill(Pid::from_raw(gc), Signal::SIGKILL);
    }
    assert!(
        !survived,
        "the adopted grandchild outlived a SIGKILLed arborist"
    );
}

#[test]
fn workers_get_env_cwd_replica_index_and_path() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  backend:
    children:
      api:
        replicas: 3
        env: {GREETING: "hello world", EMPTY: ""}
        cwd: $DIR/work
        shell: "echo \"$ARBORIST_REPLICA|$ARBORIST_PATH|$GREETING|${EMPTY-unset}|$(pwd)|${PATH:+has-path}\" > $DIR/api$ARBORIST_REPLICA.tmp; mv $DIR/api$ARBORIST_REPLICA.tmp $DIR/api$ARBORIST_REPLICA.env; exec sleep 1000"
  web:
    shell: "echo \"$ARBORIST_REPLICA|$ARBORIST_PATH|${GREETING-unset}|$(pwd)\" > $DIR/web.tmp; mv $DIR/web.tmp $DIR/web.env; exec sleep 1000"
"#,
    );
    std::fs::create_dir(fx.path("work")).unwrap();
    let mut arb = fx.run(&[]);
    let work = fx.path("work").display().to_string();
    for i in 0..3 {
        assert_eq!(
            fx.wait_file(&format!("api{i}.env")),
            format!("{i}|backend/api#{i}|hello world||{work}|has-path")
        );
    }
    // No env leaks between siblings; the default cwd is arborist's own.
    assert_eq!(
        fx.wait_file("web.env"),
        format!("0|web|unset|{}", fx.dir.path().display())
    );
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
}
