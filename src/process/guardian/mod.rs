//! The guardian: a tiny helper process (arborist re-executed as `arborist __guardian GRACE`)
//! that holds the list of live worker process groups, each with its stop signal. If arborist
//! is SIGKILLed, the guardian sees its pipe close, sends every group still listed its stop
//! signal, allows the grace (`guardian_grace`) and SIGKILLs what is left, so no grandchild
//! outlives arborist (see `helper`). On a normal exit the list is empty and the guardian just
//! leaves. Each worker adds its own group, before it execs; arborist removes groups once they
//! are empty.
//!
//! The guardian is supervised (`keeper`): its death (reaped by `reap`, or a write that fails
//! with EPIPE) and a guardian that stopped reading (a batch given up on a full pipe) are
//! logged, and a new guardian replaces it and is given every live group.
//!
//! Nothing the runtime thread reads is behind a lock that a writer holds while it blocks: the
//! pid and the pipe's descriptor are atomics, batches go out with bounded, non-blocking writes
//! (a SIGSTOPped guardian cannot freeze arborist, nor its exit), and the runtime thread only
//! ever sends the keeper a message. Writes to a pipe whose reader died fail with EPIPE:
//! arborist ignores SIGPIPE while it runs (`main`), and a new worker discards it before exec
//! (`spawn::child_main`).

mod helper;
mod keeper;

pub use helper::run_guardian;

use std::io::Write;
use std::os::fd::{OwnedFd, RawFd};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// How long one batch may wait for room in the pipe before it is given up (the guardian is
/// stopped or gone): the chores thread must not hang on it, nor arborist's exit.
const WRITE_LIMIT: Duration = Duration::from_millis(500);

/// A running guardian, as the keeper and `stop` see it.
struct Current {
    child: Child,
    /// Signals exactly this process even once it is reaped (no pid reuse); None on kernels
    /// before 5.3.
    pidfd: Option<OwnedFd>,
    started: Instant,
}

impl Current {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

struct State {
    current: Option<Current>,
    /// The write end of the pipe, at the descriptor number `PIPE_FD` keeps for the whole run
    /// (see `keeper::install`). None before the first guardian and after `stop`.
    pipe: Option<OwnedFd>,
    /// Set by `stop`: no guardian is started any more.
    stopping: bool,
    /// The grace given to every guardian, from `start`.
    grace: Duration,
    /// The guardian the next one replaces, for its start's log line.
    replaced: Option<i32>,
}

/// Taken by `start`, `stop` and the keeper, never while one of them blocks (a spawn happens
/// outside it); not by the runtime thread after `start` (unless neither the keeper nor the
/// chores thread could be started, and everything runs inline).
static STATE: Mutex<State> = Mutex::new(State {
    current: None,
    pipe: None,
    stopping: false,
    grace: crate::config::DEFAULT_GUARDIAN_GRACE,
    replaced: None,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The current guardian's pid, -1 while there is none (it died and is not replaced yet).
static GUARDIAN_PID: AtomicI32 = AtomicI32::new(-1);

/// A guardian the keeper gave up on (hung, or its pipe broken) that the reaper has not
/// collected yet: its exit is expected, not a death to act on.
static RETIRED: AtomicI32 = AtomicI32::new(-1);

/// The write end of the guardian's pipe; -1 before the first guardian and after `stop`.
/// Between a guardian's death and its replacement it still names the dead one's pipe, where
/// a write fails with EPIPE (and `flush` writes nothing). A new worker writes
/// its own `+PGID SIG` line here before it execs (`spawn::child_main`): the guardian then
/// knows the group before the program can start anything, however busy arborist's threads
/// are. Each such line is one small write, which a pipe keeps whole (PIPE_BUF).
static PIPE_FD: AtomicI32 = AtomicI32::new(-1);

/// Bumped each time a new guardian's pipe is put in place. A spawn that saw another value
/// before its clone may have told the old guardian (or none) of its group, so it tells the
/// new one again (`spawn`, `remember`).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Starts the first guardian, which will give each worker `grace` between its stop signal
/// and SIGKILL should arborist die, and the keeper that replaces it when it dies. A failure
/// is not fatal (workers' leaders still get their parent-death signal) and is retried.
pub fn start(grace: Duration) -> std::io::Result<()> {
    state().grace = grace;
    keeper::start();
    let started = keeper::ensure_running();
    if started.is_err() {
        keeper::report(keeper::Event::Start);
    }
    started
}

pub fn pid() -> Option<i32> {
    Some(GUARDIAN_PID.load(Ordering::SeqCst)).filter(|&p| p > 0)
}

pub fn pipe_fd() -> RawFd {
    PIPE_FD.load(Ordering::SeqCst)
}

pub fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

/// Whether a new guardian was put in place since `generation` was read, asked by a spawn
/// right after it added its group to the registry. A read-modify-write, not a load: if it
/// comes before the keeper's bump, the bump reads what it wrote, so the registry insert
/// before it is visible to the keeper's `register_all` after the bump; if it comes after,
/// it sees the bump. Either way the new guardian hears of the group.
pub fn changed_since(generation: u64) -> bool {
    GENERATION.fetch_add(0, Ordering::SeqCst) != generation
}

/// Called by the reaper for every child it reaps: true when `pid` was a guardian (which is
/// then no one else's child). The current guardian's death is logged and a new one started.
pub fn reaped(pid: i32, status: &ExitStatus) -> bool {
    if pid <= 0 {
        return false;
    }
    if GUARDIAN_PID
        .compare_exchange(pid, -1, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        let _ = RETIRED.compare_exchange(pid, -1, Ordering::SeqCst, Ordering::SeqCst);
        let status = super::reap::describe(status);
        tracing::warn!(
            guardian = pid,
            status = %status,
            "the guardian exited ({status}); starting a new one"
        );
        keeper::report(keeper::Event::Died(pid));
        return true;
    }
    if RETIRED
        .compare_exchange(pid, -1, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        tracing::info!(
            guardian = pid,
            status = %super::reap::describe(status),
            "the replaced guardian (pid {pid}) exited"
        );
        return true;
    }
    false
}

/// Why a batch did not reach the guardian.
enum WriteError {
    /// No room in the pipe within `WRITE_LIMIT`: the guardian does not read (stopped, hung).
    Full,
    /// EPIPE (the guardian is gone) or another error of the pipe.
    Broken(nix::errno::Errno),
}

/// Writes all of `buf` to the pipe, waiting for room at most `WRITE_LIMIT` in all.
fn write_bounded(fd: RawFd, mut buf: &[u8]) -> Result<(), WriteError> {
    use std::os::fd::BorrowedFd;
    let until = Instant::now() + WRITE_LIMIT;
    while !buf.is_empty() {
        // SAFETY: the descriptor number stays open until `stop`, which clears PIPE_FD first
        // (a new guardian's pipe replaces it in place, see `keeper::install`).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        match nix::unistd::write(borrowed, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(WriteError::Full);
                }
                let mut fds = [nix::poll::PollFd::new(
                    borrowed,
                    nix::poll::PollFlags::POLLOUT,
                )];
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
            }
            Err(e) => return Err(WriteError::Broken(e)),
        }
    }
    Ok(())
}

/// The guardian's line for a new group: `+PGID SIG\n`. The same line as the worker's own
/// (`spawn::group_line`), here with an allocation, which arborist's threads may make.
fn push_add(buf: &mut Vec<u8>, pgid: i32, stop_signal: Signal) {
    let _ = writeln!(buf, "+{pgid} {}", stop_signal as i32);
}

/// Removes a group, in the next batch: a late removal costs nothing but a stop signal to an
/// empty group should arborist be SIGKILLed meanwhile.
pub fn forget(pgid: i32) {
    queue(|pending| {
        let _ = writeln!(pending, "-{pgid}");
    });
}

/// Adds a group in the next batch: for a worker that could not tell the guardian itself
/// (there was none, or its pipe was full or broken), or that told a guardian since replaced.
pub fn remember(pgid: i32, stop_signal: Signal) {
    queue(|pending| push_add(pending, pgid, stop_signal));
}

/// Adds a worker run's cgroup (cgroup mode), in the next batch: its members, also those that
/// left the worker's process group, get `stop_signal` and then `cgroup.kill` should arborist
/// die. (The worker's own `+PGID` line, written before its exec, covers the moment before.)
pub fn remember_cgroup(dir: &std::path::Path, stop_signal: Signal) {
    let dir = dir.display().to_string();
    queue(|pending| push_cgroup(pending, &dir, stop_signal));
}

/// Removes a run's cgroup, in the next batch.
pub fn forget_cgroup(dir: &std::path::Path) {
    let dir = dir.display().to_string();
    queue(|pending| {
        let _ = writeln!(pending, "c{dir}");
    });
}

fn push_cgroup(buf: &mut Vec<u8>, dir: &str, stop_signal: Signal) {
    let _ = writeln!(buf, "C{} {dir}", stop_signal as i32);
}

/// Tells a new guardian every live group, after every line queued before (a `-PGID` queued
/// earlier is for a group already out of the registry, so it cannot undo a line of this
/// batch; one queued later comes after it). The registry is read under PENDING's lock, so no
/// removal can slip between the read and the queue.
fn register_all() {
    queue(|pending| {
        for (pgid, stop_signal) in super::registry::live_groups() {
            push_add(pending, pgid, stop_signal);
        }
        for (dir, stop_signal) in super::registry::live_cgroups() {
            push_cgroup(pending, &dir.display().to_string(), stop_signal);
        }
    });
}

fn queue(add: impl FnOnce(&mut Vec<u8>)) {
    let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    let first = pending.is_empty();
    add(&mut pending);
    let any = !pending.is_empty();
    drop(pending);
    if first && any {
        super::chores::run(Box::new(flush));
    }
}

/// Lines not yet written to the guardian: written by the chores thread, one write per burst
/// (a shutdown of 1000 workers is 1000 lines). Only the chores thread (and `stop`, at the
/// end) writes them, so batches reach the pipe in the order they were queued.
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn flush() {
    let batch = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|p| p.into_inner()));
    // Read after the batch is taken: a new guardian's pid is published before its
    // `register_all`, so a batch holding those lines never sees -1 here.
    let pid = GUARDIAN_PID.load(Ordering::SeqCst);
    let fd = PIPE_FD.load(Ordering::SeqCst);
    // No guardian right now: whatever the batch said, the next guardian is told every live
    // group when it starts.
    if batch.is_empty() || fd < 0 || pid < 0 {
        return;
    }
    // In whole lines of at most PIPE_BUF bytes: each write is then atomic, and a new
    // worker's own `+PGID SIG` line cannot land in the middle of one.
    let mut rest = &batch[..];
    while !rest.is_empty() {
        let mut end = rest.len().min(libc::PIPE_BUF);
        if end < rest.len() {
            end = rest[..end]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(end, |i| i + 1);
        }
        if let Err(e) = write_bounded(fd, &rest[..end]) {
            // The batch is dropped; a replacement is told every live group.
            keeper::report(match e {
                WriteError::Full => keeper::Event::Hung(pid),
                WriteError::Broken(errno) => keeper::Event::Broken(pid, errno),
            });
            return;
        }
        rest = &rest[end..];
    }
}

/// Closes the pipe (the guardian then exits) and reaps the guardian, waiting for it a
/// moment at most: a stopped guardian must not hold up arborist's exit. No guardian is
/// started after this.
pub fn stop() {
    flush();
    let (current, pipe) = {
        let mut st = state();
        st.stopping = true;
        PIPE_FD.store(-1, Ordering::SeqCst);
        GUARDIAN_PID.store(-1, Ordering::SeqCst);
        (st.current.take(), st.pipe.take())
    };
    drop(pipe);
    if let Some(Current { mut child, .. }) = current {
        let until = Instant::now() + WRITE_LIMIT;
        while Instant::now() < until {
            match child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                _ => return,
            }
        }
    }
}
