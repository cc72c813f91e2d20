//! Which processes are arborist's own. Two sets, both touched only from the runtime thread
//! (the mutexes are never contended; they exist to make the statics safe):
//! - *owned* PIDs: children whose exit status a tokio `Child` will collect. The orphan reaper
//!   must never wait for these, or tokio would lose the status.
//! - *live groups*: process groups of workers that may still have members; a forced kill
//!   SIGKILLs each, and the guardian mirrors the set.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::guardian;

static OWNED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
static GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn lock(set: &Mutex<BTreeSet<i32>>) -> std::sync::MutexGuard<'_, BTreeSet<i32>> {
    // A panic while holding the lock cannot leave a set half-updated; keep using it.
    set.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn own(pid: i32) {
    lock(&OWNED).insert(pid);
}

pub fn disown(pid: i32) {
    lock(&OWNED).remove(&pid);
}

pub fn is_owned(pid: i32) -> bool {
    lock(&OWNED).contains(&pid)
}

pub fn add_group(pgid: i32) {
    if lock(&GROUPS).insert(pgid) {
        guardian::watch(pgid);
    }
}

pub fn remove_group(pgid: i32) {
    if lock(&GROUPS).remove(&pgid) {
        guardian::forget(pgid);
    }
}

pub fn live_groups() -> Vec<i32> {
    lock(&GROUPS).iter().copied().collect()
}
