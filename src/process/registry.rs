//! Which processes are arborist's own. Two tables:
//! - *owned* children: PIDs arborist spawned, each with the channel its exit status goes to.
//!   The reaper (`reap`) delivers to these and treats any other exited child as an adopted
//!   orphan. A child that exits before its spawn registered it has its status *kept* here
//!   until the spawn does.
//! - *live groups*: process groups of workers that may still have members, each with the
//!   signal that stops it; a forced kill SIGKILLs each, and the guardian mirrors the set.
//!
//! The mutexes are taken briefly by the runtime thread and the spawner threads.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitStatus;
use std::sync::Mutex;

use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use super::guardian;

#[derive(Default)]
struct Children {
    owned: Option<HashMap<i32, oneshot::Sender<ExitStatus>>>,
    /// Statuses reaped while a spawn was in flight: pid, status, spawns begun at that time.
    kept: Vec<(i32, ExitStatus, usize)>,
}

static CHILDREN: Mutex<Children> = Mutex::new(Children {
    owned: None,
    kept: Vec::new(),
});
static GROUPS: Mutex<BTreeMap<i32, Signal>> = Mutex::new(BTreeMap::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a table half-updated; keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a spawned child (from the spawn with `ticket`, see `spawn`). If the reaper has
/// already collected it, its status is delivered at once.
pub fn own(pid: i32, ticket: usize, deliver: oneshot::Sender<ExitStatus>) {
    let mut children = lock(&CHILDREN);
    // Only a status reaped after this spawn began can be its child's; an older one with the
    // same pid was another process.
    if let Some(i) = children
        .kept
        .iter()
        .position(|&(p, _, begun)| p == pid && begun >= ticket)
    {
        let (_, status, _) = children.kept.swap_remove(i);
        let _ = deliver.send(status);
        return;
    }
    children
        .owned
        .get_or_insert_with(HashMap::new)
        .insert(pid, deliver);
}

pub fn is_owned(pid: i32) -> bool {
    lock(&CHILDREN)
        .owned
        .as_ref()
        .is_some_and(|o| o.contains_key(&pid))
}

/// What became of a reaped child.
#[derive(Debug, PartialEq, Eq)]
pub enum Reaped {
    /// Delivered to its `Child`.
    Owned,
    /// Kept for a spawn in flight, which may be its parent.
    Kept,
    /// An adopted orphan (or a child whose spawn failed).
    Orphan,
}

/// Hands a reaped child's status to its owner. `in_flight` and `begun` are read by the
/// reaper under this lock's protection, so that a spawn registers either before or after.
pub fn reaped(pid: i32, status: ExitStatus) -> Reaped {
    let mut children = lock(&CHILDREN);
    if let Some(deliver) = children.owned.as_mut().and_then(|o| o.remove(&pid)) {
        let _ = deliver.send(status);
        return Reaped::Owned;
    }
    if super::spawn::spawns_in_flight() > 0 {
        let begun = super::spawn::spawns_begun();
        children.kept.push((pid, status, begun));
        return Reaped::Kept;
    }
    Reaped::Orphan
}

/// Forgets kept statuses once no spawn is in flight: none of them can be claimed any more.
pub fn forget_kept() {
    let mut children = lock(&CHILDREN);
    if super::spawn::spawns_in_flight() == 0 {
        children.kept.clear();
    }
}

/// A worker's group and its stop signal, live until `remove_group`. The guardian has it
/// already: the worker told it before exec (or `spawn` tells it now).
pub fn add_group(pgid: i32, stop_signal: Signal) {
    lock(&GROUPS).insert(pgid, stop_signal);
}

pub fn remove_group(pgid: i32) {
    // Released before the guardian is told: `guardian::register_all` reads the groups while
    // it holds the guardian's queue.
    let removed = lock(&GROUPS).remove(&pgid).is_some();
    if removed {
        guardian::forget(pgid);
    }
}

/// Worker runs' cgroups (cgroup mode), with their stop signals, until `remove_cgroup`; the
/// guardian mirrors them.
static CGROUPS: Mutex<BTreeMap<std::path::PathBuf, Signal>> = Mutex::new(BTreeMap::new());

pub fn add_cgroup(dir: &std::path::Path, stop_signal: Signal) {
    lock(&CGROUPS).insert(dir.to_path_buf(), stop_signal);
    guardian::remember_cgroup(dir, stop_signal);
}

pub fn remove_cgroup(dir: &std::path::Path) {
    if lock(&CGROUPS).remove(dir).is_some() {
        guardian::forget_cgroup(dir);
    }
}

pub fn live_cgroups() -> Vec<(std::path::PathBuf, Signal)> {
    lock(&CGROUPS)
        .iter()
        .map(|(d, &s)| (d.clone(), s))
        .collect()
}

/// Every live group with its stop signal.
pub fn live_groups() -> Vec<(i32, Signal)> {
    lock(&GROUPS).iter().map(|(&g, &s)| (g, s)).collect()
}
