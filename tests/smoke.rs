mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

#[test]
fn worker_runs_and_sigterm_stops_the_tree_with_exit_0() {
    let fx = Fixture::new(
        r#"
shutdown_timeout: 5s
children:
  web:
    shell: "echo $$ > $DIR/web.pid; exec sleep 1000"
"#,
    );
    let mut arb = fx.run(&[]);
    let pid = fx.wait_pid("web.pid");
    assert!(alive(pid));
    let (code, took) = arb.stop_with(Signal::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, 0, "log:\n{}", arb.log());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(!alive(pid));
}
