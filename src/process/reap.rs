//! Reaping. arborist is a child subreaper (and may be PID 1), so orphaned descendants of its
//! workers become its children and must be reaped, or they stay zombies.
//!
//! tokio collects the status of the children it spawned; a plain `waitpid(-1)` here would
//! steal those statuses. So the reaper peeks with `waitid(P_ALL, WNOWAIT)`, reaps only PIDs
//! that are not owned (see `registry`), and stops at the first owned zombie: tokio reaps that
//! one, and `spawn::release` kicks the reaper again afterwards. While a spawn is in flight on
//! a spawner thread (forked, not yet registered), unknown zombies wait for the next pass.

use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};

use super::registry;

static KICK: OnceLock<Notify> = OnceLock::new();

/// Asks the reaper for another pass (after tokio collected an owned child).
pub fn kick() {
    if let Some(n) = KICK.get() {
        n.notify_one();
    }
}

/// Makes arborist a child subreaper and starts the reaper task. The returned receiver changes
/// after every pass, which is when process groups may have become empty.
pub fn start() -> std::io::Result<watch::Receiver<u64>> {
    nix::sys::prctl::set_child_subreaper(true)?;
    let mut sigchld = signal(SignalKind::child())?;
    let kick = KICK.get_or_init(Notify::new);
    let (tx, rx) = watch::channel(0u64);
    // Lives as long as the runtime: orphans can appear until the very end.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = kick.notified() => {}
            }
            reap_orphans();
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    });
    Ok(rx)
}

/// Reaps every exited child that is not owned by a tokio `Child`.
pub fn reap_orphans() -> usize {
    let mut reaped = 0;
    loop {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::All, flags) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
            Ok(status) => {
                let Some(pid) = status.pid() else { break };
                if registry::is_owned(pid.as_raw()) {
                    break; // tokio's to collect
                }
                // Checked after the peek: a child forked by a spawn still in flight may not be
                // registered yet. The spawn kicks the reaper again when it completes.
                if super::spawn::spawns_in_flight() > 0 {
                    break;
                }
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                tracing::debug!(pid = pid.as_raw(), "reaped adopted orphan");
                reaped += 1;
            }
        }
    }
    reaped
}

/// Live children of arborist that it did not spawn itself: descendants of workers that were
/// re-parented to it. Read from /proc, since /proc/PID/task/TID/children is not always built.
pub fn adopted_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let guardian = super::guardian::pid();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| Some(pid) != guardian && !registry::is_owned(pid))
        .filter(|&pid| parent_of(pid) == Some(me))
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Reaps one adopted child if it has exited (used by the final sweep).
pub fn try_reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}
