//! Signalling and watching whole process groups. A worker's process group carries its PID as
//! the group id; a worker counts as stopped only when the group is empty, not when its leader
//! has exited.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often an otherwise idle wait re-checks a group. Most changes arrive sooner through
/// SIGCHLD (see `reap`); this catches members whose parent is not arborist.
const RECHECK: Duration = Duration::from_millis(50);

/// Sends `signal` to every member of the group. Returns false when the group is gone.
pub fn signal_group(pgid: i32, signal: Signal) -> bool {
    !matches!(killpg(Pid::from_raw(pgid), signal), Err(Errno::ESRCH))
}

/// Whether any process (zombies included) is still in the group.
pub fn group_alive(pgid: i32) -> bool {
    // EPERM means a member exists that we may not signal (it changed identity): still alive.
    !matches!(kill(Pid::from_raw(-pgid), None), Err(Errno::ESRCH))
}

/// Sends `signal` to one process. Returns false when it is gone.
pub fn signal_pid(pid: i32, signal: Signal) -> bool {
    !matches!(kill(Pid::from_raw(pid), signal), Err(Errno::ESRCH))
}

/// Waits until `alive()` turns false or `until` passes; returns whether it is gone.
/// Woken by every child event (SIGCHLD, after orphans are reaped) and a slow re-check.
pub async fn wait_gone(
    alive: impl Fn() -> bool,
    until: Instant,
    child_events: &mut watch::Receiver<u64>,
) -> bool {
    loop {
        if !alive() {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        let wake = (now + RECHECK).min(until);
        tokio::select! {
            changed = child_events.changed() => {
                if changed.is_err() {
                    // The reaper is gone (only at exit): fall back to the slow re-check.
                    tokio::time::sleep_until(wake).await;
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}
