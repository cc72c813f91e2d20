//! The guardian: a tiny helper process (arborist re-executed as `arborist __guardian`) that
//! holds the list of live worker process groups. PR_SET_PDEATHSIG kills a worker's leader
//! when arborist dies, but not the leader's own children; if arborist is SIGKILLed, the
//! guardian sees its pipe close and SIGKILLs every group still listed, so no grandchild
//! outlives arborist either. On a normal exit the list is empty and the guardian just leaves.
//! Each worker adds its own group, before it execs; arborist removes groups once they are
//! empty.

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

static GUARDIAN: Mutex<Option<Guardian>> = Mutex::new(None);

fn with_guardian(f: impl FnOnce(&mut Guardian)) {
    let mut g = GUARDIAN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(guardian) = g.as_mut() {
        f(guardian);
    }
}

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
    PIPE_FD.store(pipe.as_raw_fd(), Ordering::SeqCst);
    *GUARDIAN.lock().unwrap_or_else(|p| p.into_inner()) = Some(Guardian { child, pipe });
    Ok(())
}

pub fn pid() -> Option<i32> {
    let mut pid = None;
    with_guardian(|g| pid = Some(g.child.id() as i32));
    pid
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
    if batch.is_empty() {
        return;
    }
    with_guardian(|g| {
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
            if g.pipe.write_all(&rest[..end]).is_err() {
                return;
            }
            rest = &rest[end..];
        }
    });
}

/// Closes the pipe (the guardian then exits) and reaps the guardian.
pub fn stop() {
    flush();
    PIPE_FD.store(-1, Ordering::SeqCst);
    let taken = GUARDIAN.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(Guardian { mut child, pipe }) = taken {
        drop(pipe);
        let _ = child.wait();
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
