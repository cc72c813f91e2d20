//! Reaping. arborist is a child subreaper (and may be PID 1), so orphaned descendants of its
//! workers become its children and must be reaped, or they stay zombies.
//!
//! This is the only place that waits for children: on every SIGCHLD it reaps every exited
//! child with `waitpid(-1, WNOHANG)` and hands each status to its owner (see `registry`);
//! a child nobody owns is an adopted orphan and is simply let go, except the guardian, whose
//! death `guardian::reaped` logs and acts on. There is no second reaper
//! (tokio's process driver is not used), so no exit status can be stolen.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::OnceLock;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};

use super::registry::{self, Reaped};

static KICK: OnceLock<Notify> = OnceLock::new();

/// Asks the reaper for another pass.
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

/// Reaps every exited child: owned ones' statuses go to their `Child`; returns how many
/// adopted orphans were reaped.
pub fn reap_orphans() -> usize {
    let mut orphans = 0;
    loop {
        let mut raw = 0;
        // SAFETY: waitpid with a valid pointer to an int.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if pid <= 0 {
            break; // none exited (0) or no children at all (ECHILD)
        }
        let status = ExitStatus::from_raw(raw);
        // The guardian is nobody's `Child`: its death is acted on there.
        if super::guardian::reaped(pid, &status) {
            continue;
        }
        if registry::reaped(pid, status) == Reaped::Orphan {
            tracing::debug!(pid, "reaped adopted orphan");
            orphans += 1;
        }
    }
    registry::forget_kept();
    orphans
}

/// "exit status 3", "signal SIGTERM".
pub fn describe(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => format!("signal {}", s.as_str()),
            Err(_) => format!("signal {sig}"),
        }
    } else {
        format!("{status}")
    }
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
