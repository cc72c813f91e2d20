//! One worker run's cgroup: who is in it, whether anything is left, signals to all of it, the
//! kill, its limits, its OOM kills, and its removal.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::limits::{self, LimitError};
use super::{read_pids, with_path, write_file};
use crate::config::Limits;

/// Passes of the SIGKILL fallback (kernels before 5.14, without `cgroup.kill`).
const FALLBACK_PASSES: usize = 1000;

/// Pauses between `rmdir` attempts that found the cgroup busy, 31 ms in all: after the last
/// member has left, the kernel may still hold the cgroup for an instant.
const REMOVE_RETRIES: [Duration; 5] = [
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(8),
    Duration::from_millis(16),
];

/// The cgroup of one run, `<own>/workers/<name>`.
#[derive(Debug)]
pub struct RunCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, write-only and close-on-exec: the child writes `0` into it.
    procs: OwnedFd,
}

impl RunCgroup {
    pub(super) fn open(dir: PathBuf) -> io::Result<RunCgroup> {
        let path = dir.join("cgroup.procs");
        // std opens with O_CLOEXEC: the descriptor is closed at the worker's exec.
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| with_path(&path, e))?;
        Ok(RunCgroup {
            dir,
            procs: procs.into(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `cgroup.procs` of this run, open for writing: a child writes `0` into it (itself)
    /// between clone and exec, before it drops privileges. Valid while `self` lives.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Whether any process is left in the run (`populated` of `cgroup.events`). Zombies do not
    /// count: a process has left its cgroup once it has exited. A removed cgroup is empty.
    pub fn populated(&self) -> io::Result<bool> {
        let path = self.dir.join("cgroup.events");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(field(&text, "populated") == Some(1)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(with_path(&path, e)),
        }
    }

    /// The pids of every process in the run, in no particular order, including those in
    /// cgroups a worker running as root made below its own (a container runtime does).
    pub fn members(&self) -> io::Result<Vec<i32>> {
        let mut pids = Vec::new();
        for dir in subtree(&self.dir)? {
            pids.extend(read_pids(&dir.join("cgroup.procs"))?);
        }
        Ok(pids)
    }

    /// Sends `signal` to every process in the run (the stop signal reaches processes that left
    /// the worker's session or process group); returns how many were signalled. A pid read here
    /// could be reused before the signal if its process exits meanwhile, the same window every
    /// cgroup-based supervisor has; `kill` has none.
    pub fn signal_all(&self, signal: Signal) -> io::Result<usize> {
        let mut sent = 0;
        for pid in self.members()? {
            match kill(Pid::from_raw(pid), signal) {
                Ok(()) => sent += 1,
                Err(Errno::ESRCH) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        Ok(sent)
    }

    /// SIGKILLs everything in the run at once through `cgroup.kill` (Linux 5.14), which also
    /// reaches processes forked meanwhile. Returns at once: wait with
    /// [`Watcher::wait_empty`](super::Watcher::wait_empty).
    pub fn kill(&self) -> io::Result<()> {
        let path = self.dir.join("cgroup.kill");
        match fs::OpenOptions::new().write(true).open(&path) {
            Ok(mut f) => io::Write::write_all(&mut f, b"1").map_err(|e| with_path(&path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.dir.exists() => {
                self.kill_by_signal()
            }
            // The cgroup itself is gone: nothing is left to kill.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(with_path(&path, e)),
        }
    }

    /// The kill without `cgroup.kill`: freeze the run (Linux 5.2) so nothing in it can fork
    /// any more, then SIGKILL every member, again until a pass finds no member it has not
    /// signalled already (those are dying: a frozen process still dies of SIGKILL). Without
    /// the freezer, a process forked after the last pass survives; the caller's next `kill`
    /// at its deadline finds it.
    pub(super) fn kill_by_signal(&self) -> io::Result<()> {
        let _ = write_file(&self.dir.join("cgroup.freeze"), "1");
        let mut signalled = HashSet::new();
        for _ in 0..FALLBACK_PASSES {
            let fresh: Vec<i32> = self
                .members()?
                .into_iter()
                .filter(|pid| signalled.insert(*pid))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for pid in fresh {
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => return Err(io::Error::from(e)),
                }
            }
        }
        Ok(())
    }

    /// OOM kills in the run so far (`oom_kill` of `memory.events`); 0 without the memory
    /// controller.
    pub fn oom_kills(&self) -> io::Result<u64> {
        let path = self.dir.join("memory.events");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(field(&text, "oom_kill").unwrap_or(0)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(with_path(&path, e)),
        }
    }

    /// Writes `memory.max`, `cpu.max` and `pids.max` for what `limits` sets. Call before the
    /// first process is placed in the run.
    pub fn apply_limits(&self, limits: &Limits) -> Result<(), LimitError> {
        limits::write(&self.dir, limits)
    }

    /// Removes the run's cgroup, and any a worker made below it, once nothing is left in
    /// them. A cgroup already gone is fine. Blocks for at most 31 ms per cgroup, only when the
    /// kernel still holds one just after its last member left.
    pub fn remove(&self) -> io::Result<()> {
        // Deepest first: a cgroup with children cannot be removed.
        for dir in subtree(&self.dir)?.iter().rev() {
            remove_dir(dir)?;
        }
        Ok(())
    }
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    let mut pauses = REMOVE_RETRIES.iter();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => match pauses.next() {
                Some(pause) => std::thread::sleep(*pause),
                None => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "{}: cannot remove: processes are still in it ({e})",
                            dir.display()
                        ),
                    ))
                }
            },
            Err(e) => return Err(with_path(dir, e)),
        }
    }
}

/// `dir` and every cgroup below it, parents before their children; none if `dir` is gone.
fn subtree(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = vec![dir.to_path_buf()];
    let mut next = 0;
    while let Some(parent) = found.get(next).cloned() {
        next += 1;
        let entries = match fs::read_dir(&parent) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(with_path(&parent, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| with_path(&parent, e))?;
            // Control files are plain files; only child cgroups are directories.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(entry.path());
            }
        }
    }
    Ok(found)
}

/// The value of `key` in a flat-keyed cgroup file (`populated 1`, `oom_kill 3`).
pub(super) fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}
