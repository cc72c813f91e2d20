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

/// An adopted process and the process group it leads or belongs to. Signals go to the whole
/// group unless that group is arborist's own (a process could join it; arborist must not
/// signal itself).
pub struct Target {
    pub pid: i32,
    pgid: Option<i32>,
}

impl Target {
    pub fn of(pid: i32) -> Target {
        let own = nix::unistd::getpgrp().as_raw();
        let pgid = nix::unistd::getpgid(Some(Pid::from_raw(pid)))
            .ok()
            .map(|g| g.as_raw())
            .filter(|&g| g != own && g > 1);
        Target { pid, pgid }
    }

    pub fn signal(&self, sig: Signal) {
        match self.pgid {
            Some(g) => {
                signal_group(g, sig);
            }
            None => {
                let _ = kill(Pid::from_raw(self.pid), sig);
            }
        }
    }

    pub fn alive(&self) -> bool {
        match self.pgid {
            Some(g) => group_alive(g),
            None => !matches!(kill(Pid::from_raw(self.pid), None), Err(Errno::ESRCH)),
        }
    }
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
