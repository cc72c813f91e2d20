//! Start ordering against the real binary: depends_on gated by exec, tcp and http readiness probes,
//! start_concurrency, the environment every worker gets, nested group paths, and groups that
//! depend on groups. Workers are real `sh` processes; the test drives readiness by creating
//! marker files (or binding a port) and only ever waits on conditions, with a bound.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use support::*;

/// Complete lines (ending in a newline) of a file the workers append to.
fn lines(fx: &Fixture, name: &str) -> Vec<String> {
    fx.read(name)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Waits until `name` holds at least `n` complete lines.
fn wait_lines(fx: &Fixture, name: &str, n: usize) -> Vec<String> {
    wait_for(&format!("{n} lines in {name}"), WAIT, || {
        let l = lines(fx, name);
        (l.len() >= n).then_some(l)
    })
}

fn exists(fx: &Fixture, name: &str) -> bool {
    fx.path(name).exists()
}

/// Byte offset of the first occurrence of `needle` in the log; panics if absent.
fn log_pos(log: &str, needle: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("log has no {needle:?}; log:\n{log}"))
}

fn assert_before(log: &str, first: &str, then: &str) {
    assert!(
        log_pos(log, first) < log_pos(log, then),
        "expected {first:?} before {then:?}; log:\n{log}"
    );
}

fn stop_cleanly(arb: &mut Arborist) {
    let (code, _) = arb.stop_with(Signal::SIGTERM, WAIT);
    assert_eq!(code, 0, "log:\n{}", arb.log());
}

#[test]
fn depends_on_waits_until_the_dependency_exec_probe_passes() {
    // `db` is ready only once `marker` exists, which only the test creates. Every probe
    // attempt leaves a line in `probes`, so the test can see the probe failing repeatedly
    // while `app` has still not started.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  db:
    shell: "echo $$ > $DIR/db.pid; exec sleep 1000"
    ready:
      exec: ["sh", "-c", "echo attempt >> $DIR/probes; test -e $DIR/marker"]
      interval: 20ms
      timeout: 1s
  app:
    depends_on: [db]
    shell: "if [ -e $DIR/marker ]; then echo yes; else echo no; fi > $DIR/app.seen; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    let db = fx.wait_pid("db.pid");
    wait_lines(&fx, "probes", 3);
    assert!(
        !exists(&fx, "app.seen"),
        "app started before its dependency was ready; log:\n{}",
        arb.log()
    );
    assert!(!arb.log().contains("started path=app "), "{}", arb.log());

    fs::write(fx.path("marker"), "").unwrap();
    assert_eq!(fx.wait_file("app.seen"), "yes");
    arb.wait_log("started path=app ");
    let log = arb.log();
    assert_before(&log, "ready path=db ", "started path=app ");
    assert!(alive(db));
    stop_cleanly(&mut arb);
}

#[test]
fn tcp_probe_gates_dependents_until_the_port_accepts() {
    // Pick a free port, then release it: the test binds it again only after arborist has
    // started `db`, so the probe is refused until then.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  db:
    shell: "echo $$ > $DIR/db.pid; exec sleep 1000"
    ready: {{ tcp: "127.0.0.1:{port}", interval: 20ms, timeout: 1s }}
  app:
    depends_on: [db]
    shell: "date +%s%N > $DIR/app.ts; exec sleep 1000"
"#
    ));
    let mut arb = fx.run(&[]);
    fx.wait_pid("db.pid");
    arb.wait_log("started path=db ");
    assert!(
        !exists(&fx, "app.ts"),
        "app started before db's port accepted; log:\n{}",
        arb.log()
    );

    let bound_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the probe port");
    listener.set_nonblocking(true).unwrap();
    // The probe connects (the backlog accepts it even before we call accept).
    wait_for("the tcp probe to connect", WAIT, || listener.accept().ok());

    let started: u128 = fx
        .wait_file("app.ts")
        .parse()
        .expect("app.ts holds a timestamp");
    assert!(
        started >= bound_at,
        "app started {} ms before the port was bound; log:\n{}",
        (bound_at - started) / 1_000_000,
        arb.log()
    );
    arb.wait_log("started path=app ");
    assert_before(&arb.log(), "ready path=db ", "started path=app ");
    stop_cleanly(&mut arb);
}

#[test]
fn http_probe_gates_dependents_until_the_endpoint_answers_2xx() {
    // The test is the HTTP server: 503 until it says otherwise, then 200.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let healthy = Arc::new(AtomicBool::new(false));
    let answered_503 = Arc::new(AtomicUsize::new(0));
    let request_line = Arc::new(Mutex::new(String::new()));
    {
        let (healthy, answered_503, request_line) =
            (healthy.clone(), answered_503.clone(), request_line.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                // The rest of the head, up to the empty line.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                *request_line.lock().unwrap() = first.trim_end().to_string();
                let reply: &[u8] = if healthy.load(Ordering::SeqCst) {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
                } else {
                    answered_503.fetch_add(1, Ordering::SeqCst);
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = conn.write_all(reply);
            }
        });
    }
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  api:
    shell: "exec sleep 1000"
    ready: {{ http: "http://127.0.0.1:{port}/healthz?deep=1", interval: 20ms, timeout: 1s }}
  app:
    depends_on: [api]
    shell: "touch $DIR/app.started; exec sleep 1000"
"#
    ));
    let mut arb = fx.run(&[]);
    wait_until("two probes answered 503", WAIT, || {
        answered_503.load(Ordering::SeqCst) >= 2
    });
    assert!(
        !exists(&fx, "app.started"),
        "app started while api answered 503; log:\n{}",
        arb.log()
    );
    assert_eq!(
        *request_line.lock().unwrap(),
        "GET /healthz?deep=1 HTTP/1.0"
    );
    healthy.store(true, Ordering::SeqCst);
    wait_until("app started", WAIT, || exists(&fx, "app.started"));
    arb.wait_log("ready path=api ");
    stop_cleanly(&mut arb);
}

#[test]
fn start_concurrency_one_starts_replicas_one_at_a_time() {
    // Replica i becomes ready only when the test creates go.i; its probe then touches
    // ready.i. Each replica records how many replicas were ready when it started. With
    // start_concurrency: 1 the next replica must not start before the previous one is ready.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
start_concurrency: 1
children:
  pool:
    replicas: 3
    shell: "ls $DIR | grep -c '^ready' > $DIR/seen.$ARBORIST_REPLICA; exec sleep 1000"
    ready:
      exec: ["sh", "-c", "echo x >> $DIR/probes.$ARBORIST_REPLICA; test -e $DIR/go.$ARBORIST_REPLICA && touch $DIR/ready.$ARBORIST_REPLICA"]
      interval: 20ms
      timeout: 1s
"#,
    );
    let mut arb = fx.run(&[]);
    let started = |fx: &Fixture| (0..3).filter(|i| exists(fx, &format!("seen.{i}"))).count();
    for k in 0..3 {
        wait_until(&format!("{} replicas started", k + 1), WAIT, || {
            started(&fx) > k
        });
        // The one started but not yet released.
        let i = (0..3)
            .find(|i| exists(&fx, &format!("seen.{i}")) && !exists(&fx, &format!("go.{i}")))
            .expect("a newly started replica");
        fx.wait_file(&format!("seen.{i}"));
        wait_lines(&fx, &format!("probes.{i}"), 3);
        assert_eq!(
            started(&fx),
            k + 1,
            "a replica started while pool#{i} was still not ready; log:\n{}",
            arb.log()
        );
        fs::write(fx.path(&format!("go.{i}")), "").unwrap();
    }
    let mut seen: Vec<String> = (0..3).map(|i| fx.wait_file(&format!("seen.{i}"))).collect();
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"], "log:\n{}", arb.log());
    arb.wait_log("tree ready");
    stop_cleanly(&mut arb);
}

#[test]
fn env_cwd_arborist_path_and_replica_are_set() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  svc:
    replicas: 2
    cwd: $DIR/work
    env: { GREETING: "hello world", ANSWER: "42" }
    shell: "printf '%s\n' \"$GREETING\" \"$ANSWER\" \"$(pwd -P)\" \"$ARBORIST_PATH\" \"$ARBORIST_REPLICA\" > $DIR/env.$ARBORIST_REPLICA.tmp; mv $DIR/env.$ARBORIST_REPLICA.tmp $DIR/env.$ARBORIST_REPLICA; exec sleep 1000"
    ready:
      exec: ["sh", "-c", "printf '%s\n' \"$GREETING\" \"$(pwd -P)\" \"$ARBORIST_PATH\" \"$ARBORIST_REPLICA\" > $DIR/probe.$ARBORIST_REPLICA.tmp; mv $DIR/probe.$ARBORIST_REPLICA.tmp $DIR/probe.$ARBORIST_REPLICA"]
      interval: 20ms
  single:
    shell: "printf '%s\n' \"$ARBORIST_PATH\" \"$ARBORIST_REPLICA\" \"$(pwd -P)\" > $DIR/single.tmp; mv $DIR/single.tmp $DIR/single; exec sleep 1000"
"#,
    );
    fs::create_dir(fx.path("work")).unwrap();
    let work = fs::canonicalize(fx.path("work")).unwrap();
    let work = work.to_str().unwrap();
    let mut arb = fx.run(&[]);
    for i in 0..2 {
        let got = fx.wait_file(&format!("env.{i}"));
        let path = format!("svc#{i}");
        assert_eq!(
            got.lines().collect::<Vec<_>>(),
            ["hello world", "42", work, path.as_str(), &i.to_string()],
            "worker environment of replica {i}"
        );
        let probe = fx.wait_file(&format!("probe.{i}"));
        assert_eq!(
            probe.lines().collect::<Vec<_>>(),
            ["hello world", work, path.as_str(), &i.to_string()],
            "ready probe environment of replica {i}"
        );
    }
    // A single worker: its path has no #i and ARBORIST_REPLICA is 0; it inherits arborist's
    // working directory (the fixture dir) when no cwd is given.
    let single = fx.wait_file("single");
    let here = fs::canonicalize(fx.dir.path()).unwrap();
    assert_eq!(
        single.lines().collect::<Vec<_>>(),
        ["single", "0", here.to_str().unwrap()]
    );
    stop_cleanly(&mut arb);
}

#[test]
fn nested_group_paths_name_every_level_and_replica() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  backend:
    children:
      api:
        replicas: 2
        shell: "echo $ARBORIST_PATH > $DIR/api.$ARBORIST_REPLICA; exec sleep 1000"
      jobs:
        children:
          worker:
            shell: "echo $ARBORIST_PATH > $DIR/deep; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    assert_eq!(fx.wait_file("api.0"), "backend/api#0");
    assert_eq!(fx.wait_file("api.1"), "backend/api#1");
    assert_eq!(fx.wait_file("deep"), "backend/jobs/worker");
    arb.wait_log("tree ready");
    let log = arb.log();
    for p in ["backend/api#0", "backend/api#1", "backend/jobs/worker"] {
        assert!(
            log.contains(&format!("started path={p} ")),
            "no start logged for {p}; log:\n{log}"
        );
    }
    stop_cleanly(&mut arb);
}

#[test]
fn children_of_a_group_that_depends_on_a_group_wait_for_the_whole_group() {
    // `infra` has two members, each ready only when the test creates its go file; `apps`
    // depends on `infra`, so `apps/web` must not start while either member is not ready.
    let probe = |name: &str| {
        format!(
            r#"
        shell: "echo $$ > $DIR/{name}.pid; exec sleep 1000"
        ready:
          exec: ["sh", "-c", "echo x >> $DIR/{name}.probes; test -e $DIR/{name}.go"]
          interval: 20ms"#
        )
    };
    let fx = Fixture::new(&format!(
        r#"
shutdown_timeout: 5s
children:
  apps:
    depends_on: [infra]
    children:
      web:
        shell: "ls $DIR | grep -c 'go$' > $DIR/web.seen; exec sleep 1000"
  infra:
    children:
      a:{}
      b:{}
"#,
        probe("a"),
        probe("b")
    ));
    let mut arb = fx.run(&[]);
    fx.wait_pid("a.pid");
    fx.wait_pid("b.pid");

    fs::write(fx.path("a.go"), "").unwrap();
    arb.wait_log("ready path=infra/a ");
    // b keeps failing its probe after a is ready; web still waits.
    let n = lines(&fx, "b.probes").len();
    wait_lines(&fx, "b.probes", n + 3);
    assert!(
        !exists(&fx, "web.seen"),
        "apps/web started while infra/b was not ready; log:\n{}",
        arb.log()
    );

    fs::write(fx.path("b.go"), "").unwrap();
    assert_eq!(fx.wait_file("web.seen"), "2");
    arb.wait_log("started path=apps/web ");
    let log = arb.log();
    assert_before(&log, "ready path=infra/b ", "started path=apps/web ");
    assert_before(&log, "group ready path=infra", "started path=apps/web ");
    stop_cleanly(&mut arb);
}

#[test]
fn dependents_of_a_pool_wait_for_every_replica() {
    // `front` depends on a 2-replica pool; replica 1 is held unready by the test.
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  pool:
    replicas: 2
    shell: "echo $$ > $DIR/pool.$ARBORIST_REPLICA.pid; exec sleep 1000"
    ready:
      exec: ["sh", "-c", "echo x >> $DIR/probes.$ARBORIST_REPLICA; test $ARBORIST_REPLICA = 0 || test -e $DIR/go"]
      interval: 20ms
  front:
    depends_on: [pool]
    shell: "echo started > $DIR/front; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    arb.wait_log("ready path=pool#0 ");
    let n = lines(&fx, "probes.1").len();
    wait_lines(&fx, "probes.1", n + 3);
    assert!(
        !exists(&fx, "front"),
        "front started while pool#1 was not ready; log:\n{}",
        arb.log()
    );
    fs::write(fx.path("go"), "").unwrap();
    fx.wait_file("front");
    arb.wait_log("started path=front ");
    assert_before(&arb.log(), "ready path=pool#1 ", "started path=front ");
    stop_cleanly(&mut arb);
}
