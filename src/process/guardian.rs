//! The guardian: a tiny helper process (arborist re-executed as `arborist __guardian`) that
//! holds the list of live worker process groups. PR_SET_PDEATHSIG kills a worker's leader
//! when arborist dies, but not the leader's own children; if arborist is SIGKILLed, the
//! guardian sees its pipe close and SIGKILLs every group still listed, so no grandchild
//! outlives arborist either. On a normal exit the list is empty and the guardian just leaves.
//! Each worker adds its own group, before it execs; arborist removes groups once they are
//! empty.
//!
//! Nothing the runtime thread reads is behind a lock that a writer holds while it blocks: the
//! pid and the pipe's descriptor are atomics, and batches go out with bounded, non-blocking
//! writes (a SIGSTOPped guardian cannot freeze arborist, nor its exit).

use std::io::{BufRead, Write};

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

use nix::sys::signal::{killpg, signal, SigHandler, Signal};
use nix::unistd::Pid;

struct Guardian {
    child: Child,
    pipe: ChildStdin,
}

/// Only `start` and `stop` take this lock, and neither blocks while holding it.
static GUARDIAN: Mutex<Option<Guardian>> = Mutex::new(None);

static GUARDIAN_PID: AtomicI32 = AtomicI32::new(-1);

/// How long one batch may wait for room in the pipe before it is given up (the guardian is
/// stopped or gone): the chores thread must not hang on it, nor arborist's exit.
const WRITE_LIMIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Starts the guardian. Failure is not fatal: workers' leaders still die by PDEATHSIG.
pub fn start() -> std::io::Result<()> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("__guardian")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn()?;
    let pipe = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no guardian pipe"))?;
    // Non-blocking: a full pipe (a stopped guardian) makes writes wait in `write_bounded`
    // with a limit, never forever.
    let _ = nix::fcntl::fcntl(
        &pipe,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    PIPE_FD.store(pipe.as_raw_fd(), Ordering::SeqCst);
    GUARDIAN_PID.store(child.id() as i32, Ordering::SeqCst);
    *GUARDIAN.lock().unwrap_or_else(|p| p.into_inner()) = Some(Guardian { child, pipe });
    Ok(())
}

pub fn pid() -> Option<i32> {
    Some(GUARDIAN_PID.load(Ordering::SeqCst)).filter(|&p| p > 0)
}

/// Writes all of `buf` to the pipe, waiting for room at most `WRITE_LIMIT` in all.
fn write_bounded(fd: RawFd, mut buf: &[u8]) -> bool {
    use std::os::fd::BorrowedFd;
    let until = std::time::Instant::now() + WRITE_LIMIT;
    while !buf.is_empty() {
        // SAFETY: the descriptor stays open until `stop`, which clears PIPE_FD first.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        match nix::unistd::write(borrowed, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return false;
                }
                let mut fds = [nix::poll::PollFd::new(
                    borrowed,
                    nix::poll::PollFlags::POLLOUT,
                )];
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
            }
            Err(_) => return false,
        }
    }
    true
}

/// The write end of the guardian's pipe, -1 when there is no guardian. A new worker writes
/// its own `+PGID` line here before it execs (`spawn::child_main`): the guardian then knows
/// the group before the program can start anything, however busy arborist's threads are.
/// Each such line is one small write, which a pipe keeps whole (PIPE_BUF).
pub fn pipe_fd() -> RawFd {
    PIPE_FD.load(Ordering::SeqCst)
}

static PIPE_FD: AtomicI32 = AtomicI32::new(-1);

/// Removes a group, in the next batch: a late removal costs nothing but a `killpg` of an
/// empty group should arborist be SIGKILLed meanwhile.
pub fn forget(pgid: i32) {
    let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    let first = pending.is_empty();
    let _ = writeln!(pending, "-{pgid}");
    drop(pending);
    if first {
        super::chores::run(Box::new(flush));
    }
}

/// Lines not yet written to the guardian: written by the chores thread, one write per burst
/// (a shutdown of 1000 workers is 1000 lines).
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn flush() {
    let batch = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|p| p.into_inner()));
    let fd = PIPE_FD.load(Ordering::SeqCst);
    if batch.is_empty() || fd < 0 {
        return;
    }
    // In whole lines of at most PIPE_BUF bytes: each write is then atomic, and a new
    // worker's own `+PGID` line cannot land in the middle of one.
    let mut rest = &batch[..];
    while !rest.is_empty() {
        let mut end = rest.len().min(libc::PIPE_BUF);
        if end < rest.len() {
            end = rest[..end]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(end, |i| i + 1);
        }
        if !write_bounded(fd, &rest[..end]) {
            tracing::warn!(
                "the guardian does not read its pipe (stopped?); {} bytes of group updates dropped",
                rest.len()
            );
            return;
        }
        rest = &rest[end..];
    }
}

/// Closes the pipe (the guardian then exits) and reaps the guardian, waiting for it a
/// moment at most: a stopped guardian must not hold up arborist's exit.
pub fn stop() {
    flush();
    PIPE_FD.store(-1, Ordering::SeqCst);
    GUARDIAN_PID.store(-1, Ordering::SeqCst);
    let taken = GUARDIAN.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(Guardian { mut child, pipe }) = taken {
        drop(pipe);
        let until = std::time::Instant::now() + WRITE_LIMIT;
        while std::time::Instant::now() < until {
            match child.try_wait() {
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
                _ => return,
            }
        }
    }
}

/// The guardian's own main loop: runs in the helper process.
pub fn run_guardian() -> ! {
    // Terminal and service-manager signals are for arborist; the guardian only acts on EOF.
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: setting SIG_IGN installs no handler code.
        unsafe {
            let _ = signal(sig, SigHandler::SigIgn);
        }
    }
    let mut groups = std::collections::BTreeSet::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let (op, num) = line.split_at(line.len().min(1));
        let Ok(pgid) = num.parse::<i32>() else {
            continue;
        };
        match op {
            "+" => {
                groups.insert(pgid);
            }
            "-" => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    for pgid in groups {
        if pgid > 1 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
    std::process::exit(0)
}
