//! Least privilege and secrets, against the real binary: the control socket refuses peers of
//! another uid (SO_PEERCRED), a root arborist refuses a config file others could have
//! changed, `command` runs no shell, and the values of secret-looking environment variables
//! never reach the logs or `status`. Identity changes (`user`/`group`, supplementary groups)
//! are tested in tests/process.rs. The tests that need root say so and stop without it.

mod ctl;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use ctl::*;
use nix::sys::signal::Signal;
use support::*;

fn root() -> bool {
    prerequisite(nix::unistd::geteuid().is_root(), "this test needs root")
}

const SLEEPER: &str = r#"
shutdown_timeout: 5s
children:
  a: {shell: "exec sleep 1000"}
"#;

#[test]
fn the_control_socket_refuses_a_peer_of_another_uid() {
    if !root() {
        return;
    }
    let fx = Fixture::new(SLEEPER);
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let socket = sock(&fx);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Open the way for `nobody` on purpose (as a careless chmod would): the peer check holds.
    std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let client = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"cmd":"shutdown"}\n')
except BrokenPipeError:
    pass  # refused and closed before we wrote: the refusal is waiting to be read
print(s.makefile().readline().strip())
"#;
    let out = Command::new("setpriv")
        // The system's python: `nobody` may not reach a per-user install (pyenv under /root).
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(if std::path::Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        })
        .args(["-c", client])
        .arg(&socket)
        .output()
        .expect("setpriv python3");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.contains("permission denied") && reply.contains("uid 65534"),
        "reply: {reply:?} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    arb.wait_log("refused a client running as uid 65534");
    // Still running, and root (the same uid) may steer it.
    assert_eq!(node(&status(&fx), "a").unwrap()["state"], "running");
    assert_eq!(arb.stop_with(Signal::SIGTERM, WAIT).0, 0);
}

#[test]
fn as_root_a_config_others_could_change_is_refused() {
    if !root() {
        return;
    }
    type MakeInsecure = Box<dyn Fn(&Fixture)>;
    let cases: [(&str, MakeInsecure); 3] = [
        (
            "world-writable",
            Box::new(|fx: &Fixture| {
                std::fs::set_permissions(fx.config(), std::fs::Permissions::from_mode(0o666))
                    .unwrap()
            }),
        ),
        (
            "owned by uid 65534",
            Box::new(|fx: &Fixture| {
                nix::unistd::chown(&fx.config(), Some(nix::unistd::Uid::from_raw(65534)), None)
                    .unwrap()
            }),
        ),
        (
            "group-writable",
            Box::new(|fx: &Fixture| {
                std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o775))
                    .unwrap()
            }),
        ),
    ];
    for (why, make_insecure) in cases {
        let fx = Fixture::new(SLEEPER);
        make_insecure(&fx);
        let o = fx.check(&[]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(exit_code(o.status), 2, "{why}: {stderr}");
        assert!(
            stderr.contains("refusing to use it as root") && stderr.contains(why),
            "{why}: {stderr}"
        );
        let mut arb = fx.run(&[]);
        assert_eq!(exit_code(arb.wait_exit(WAIT)), 2, "{why}");
        assert!(arb.log().contains(why), "{}", arb.log());
    }
}

#[test]
fn as_root_a_reload_from_a_file_made_writable_by_others_is_rejected() {
    if !root() {
        return;
    }
    let fx = Fixture::new(SLEEPER);
    let mut arb = fx.run(&[]);
    wait_serving(&fx);
    let pid = wait_up(&fx, "a");
    std::fs::write(
        fx.config(),
        "shutdown_timeout: 5s\nchildren:\n  b: {shell: \"exec sleep 1000\"}\n",
    )
    .unwrap();
    std::fs::set_permissions(fx.config(), std::fs::Permissions::from_mode(0o646)).unwrap();
    let reply = request(&fx, &serde_json::json!({"cmd": "reload"}));
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(reply.to_string().contains("world-writable"), "{reply}");
    assert_eq!(pid_in(&status(&fx), "a"), Some(pid));
    assert_eq!(arb.stop_with(Signal::SIGTERM, WAIT).0, 0);
}

#[test]
fn command_runs_no_shell() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  literal:
    restart: never
    command: ["printf", "%s\n", "$HOME; touch $DIR/injected; `id`"]
"#,
    );
    let mut arb = fx.run(&[]);
    arb.wait_log("exited: exit status 0");
    let dir = fx.dir.path().display().to_string();
    arb.wait_log(&format!("$HOME; touch {dir}/injected; `id`"));
    assert!(fx.read("injected").is_none());
    let _ = arb.wait_exit(WAIT);
}

#[test]
fn secret_values_never_reach_the_logs_or_status() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  talker:
    env: {API_TOKEN: "tok-0123456789", PLAIN: "visible-value"}
    shell: |
      echo "token=$API_TOKEN plain=$PLAIN inherited=$DB_PASSWORD"
      echo "to stderr: $API_TOKEN" >&2
      python3 -c 'import os,socket; s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM); s.sendto(("STATUS=using "+os.environ["API_TOKEN"]).encode(), os.environ["NOTIFY_SOCKET"])'
      echo done > $DIR/said
      exec sleep 1000
"#,
    );
    let mut arb = fx.run_with_env(
        &["--log-format", "json"],
        &[("DB_PASSWORD", "hunter2-hunter2")],
    );
    fx.wait_file_within("said", WAIT);
    arb.wait_log("plain=visible-value");
    arb.wait_log("to stderr: [redacted]");
    let st = wait_for("STATUS= to arrive", WAIT, || {
        let st = status(&fx);
        let n = node(&st, "talker")?.clone();
        n.get("notify_status").is_some().then_some(st)
    });
    let text = st.to_string();
    assert!(text.contains("using [redacted]"), "{text}");
    let log = arb.log();
    assert!(log.contains("token=[redacted]"), "{log}");
    assert!(log.contains("inherited=[redacted]"), "{log}");
    assert_eq!(arb.stop_with(Signal::SIGTERM, WAIT).0, 0);
    let everything = format!("{}{}{}", arb.log(), arb.stdout(), text);
    for secret in ["tok-0123456789", "hunter2-hunter2"] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked:\n{everything}"
        );
    }
}
