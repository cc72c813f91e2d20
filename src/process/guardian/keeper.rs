//! Supervision of the guardian process: a thread of its own starts each guardian, puts its
//! pipe in place and tells it every live group; it learns of a guardian's end from the reaper
//! (`Event::Died`) or from a batch that could not be written (`Broken`, `Hung`), and then
//! starts another one. A guardian that dies soon after its start is replaced after a backoff
//! (100 ms doubling up to 10 s), as is a start that fails; neither is ever fatal.
//!
//! This thread never takes SIGPIPE (arborist ignores it) and the runtime thread never waits
//! for it: events reach it through a channel.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{state, Current, State, GENERATION, GUARDIAN_PID, PIPE_FD, RETIRED};

/// Something happened to the guardian with this pid.
pub enum Event {
    /// The first guardian could not be started: try again.
    Start,
    /// The reaper collected it (and logged its exit status).
    Died(i32),
    /// A write to its pipe failed: EPIPE when it is gone.
    Broken(i32, Errno),
    /// A batch was given up because its pipe stayed full: it is stopped or hung.
    Hung(i32),
}

impl Event {
    fn pid(&self) -> Option<i32> {
        match *self {
            Event::Start => None,
            Event::Died(pid) | Event::Broken(pid, _) | Event::Hung(pid) => Some(pid),
        }
    }
}

/// A guardian that lived less than this counts as a failed start for the backoff.
const STEADY: Duration = Duration::from_secs(5);
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(10);

/// The delay before the next start after `failures` failed or short-lived guardians in a row.
fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => FIRST_DELAY
            .saturating_mul(1 << (n - 1).min(16))
            .min(MAX_DELAY),
    }
}

static EVENTS: OnceLock<Mutex<mpsc::Sender<Event>>> = OnceLock::new();

/// Starts the keeper thread (once).
pub(super) fn start() {
    if EVENTS.get().is_some() {
        return;
    }
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("guardian".into())
        .stack_size(128 * 1024)
        .spawn(move || keep(&rx));
    match spawned {
        Ok(_) => {
            let _ = EVENTS.set(Mutex::new(tx));
        }
        Err(e) => tracing::warn!(
            "cannot start the guardian's keeper thread ({e}): a guardian that dies is replaced from the chores thread, without backoff"
        ),
    }
}

/// Hands `event` to the keeper; never blocks.
pub(super) fn report(event: Event) {
    let event = match EVENTS.get() {
        Some(tx) => match tx.lock().unwrap_or_else(|p| p.into_inner()).send(event) {
            Ok(()) => return,
            Err(mpsc::SendError(event)) => event,
        },
        None => event,
    };
    // No keeper thread: one attempt, off the runtime thread; the next event tries again.
    crate::process::chores::run(Box::new(move || {
        retire(&event);
        if let Err(e) = ensure_running() {
            tracing::warn!("cannot start a new guardian: {e}");
        }
    }));
}

fn keep(events: &mpsc::Receiver<Event>) {
    // Failed starts and short-lived guardians in a row.
    let mut failures = 0u32;
    let mut retry_at: Option<Instant> = None;
    loop {
        let event = match retry_at {
            None => match events.recv() {
                Ok(e) => Some(e),
                Err(_) => return,
            },
            Some(at) => match events.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(e) => Some(e),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        if let Some(lived) = event.as_ref().and_then(retire) {
            if lived < STEADY {
                failures += 1;
                let delay = backoff(failures);
                tracing::warn!(
                    "the guardian lived only {} ms; the next one starts in {} ms",
                    lived.as_millis(),
                    delay.as_millis()
                );
                retry_at = Some(Instant::now() + delay);
            } else {
                failures = 0;
            }
        }
        if retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        retry_at = None;
        if let Err(e) = ensure_running() {
            failures += 1;
            let delay = backoff(failures);
            tracing::warn!(
                "cannot start a new guardian: {e}; retrying in {} ms",
                delay.as_millis()
            );
            retry_at = Some(Instant::now() + delay);
        }
    }
}

/// Lets go of the guardian `event` is about, if it is still the current one; returns how
/// long it ran. One that may still be alive is SIGKILLed first: it must never read the EOF
/// that `install` causes by replacing its pipe, which it would take for arborist's death.
fn retire(event: &Event) -> Option<Duration> {
    let pid = event.pid()?;
    let mut st = state();
    if st.current.as_ref().map(Current::pid) != Some(pid) {
        return None; // about a guardian already replaced
    }
    let current = st.current.take()?;
    st.replaced = Some(pid);
    drop(st);
    match event {
        Event::Start | Event::Died(_) => {} // a death: the reaper logged it
        Event::Broken(_, errno) => {
            tracing::warn!(
                guardian = pid,
                "the guardian's pipe is broken ({errno}); starting a new guardian"
            );
        }
        Event::Hung(_) => {
            tracing::warn!(
                guardian = pid,
                "the guardian does not read its pipe (stopped?); killing it and starting a new one"
            );
        }
    }
    if !matches!(event, Event::Died(_)) {
        // Its exit is expected now: the reaper logs it as a replaced guardian's. Marked
        // before the pid is cleared, so the reaper always recognises it.
        RETIRED.store(pid, Ordering::SeqCst);
        if GUARDIAN_PID
            .compare_exchange(pid, -1, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // The reaper took it as the current guardian's death (and reported it).
            let _ = RETIRED.compare_exchange(pid, -1, Ordering::SeqCst, Ordering::SeqCst);
        }
        send(&current, Some(Signal::SIGKILL));
    }
    Some(current.started.elapsed())
}

/// Starts a guardian unless one runs (or arborist is stopping), and tells it every live
/// group.
pub(super) fn ensure_running() -> io::Result<()> {
    let grace = {
        let st = state();
        if st.stopping || st.current.is_some() {
            return Ok(());
        }
        st.grace
    };
    // Outside the lock: `stop` must not wait for a spawn.
    let launched = launch(grace)?;
    let pid = launched.child.id() as i32;
    {
        let mut st = state();
        if st.stopping || st.current.is_some() {
            // Its pipe closes here with no group listed: it just leaves.
            return Ok(());
        }
        install(&mut st, launched)?;
    }
    super::register_all();
    // A guardian that died before its pid was published was reaped as an orphan: nobody
    // else will notice.
    let alive = state()
        .current
        .as_ref()
        .filter(|c| c.pid() == pid)
        .is_some_and(|c| send(c, None));
    if !alive
        && GUARDIAN_PID
            .compare_exchange(pid, -1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    {
        let mut st = state();
        if st.current.as_ref().map(Current::pid) == Some(pid) {
            st.current = None;
        }
        return Err(io::Error::other(format!(
            "the new guardian (pid {pid}) exited at once"
        )));
    }
    let grace_ms = grace.as_millis() as u64;
    match state().replaced.take() {
        Some(old) => tracing::info!(
            guardian = pid,
            replaces = old,
            grace_ms,
            "guardian started (pid {pid}), replacing pid {old}"
        ),
        None => tracing::info!(guardian = pid, grace_ms, "guardian started (pid {pid})"),
    }
    Ok(())
}

struct Launched {
    child: std::process::Child,
    pipe: OwnedFd,
    pidfd: Option<OwnedFd>,
}

fn launch(grace: Duration) -> io::Result<Launched> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("__guardian")
        .arg(humantime::format_duration(grace).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0);
    // std's spawn gives the child an empty signal mask and SIGPIPE's default disposition.
    let mut child = cmd.spawn()?;
    let pidfd = pidfd_open(child.id() as i32);
    let pipe: OwnedFd = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no guardian pipe"))?
        .into();
    // Non-blocking: a full pipe (a stopped guardian) makes writes wait in `write_bounded`
    // with a limit, never forever. A file status flag: it holds at any descriptor number
    // the pipe is later moved to.
    nix::fcntl::fcntl(
        &pipe,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok(Launched { child, pipe, pidfd })
}

/// Puts a new guardian's pipe in place and publishes the guardian.
///
/// The pipe's descriptor *number* never changes during a run: the first guardian's write end
/// keeps its number, and each new pipe is `dup3`'d onto it, which replaces the old pipe in
/// one step. A spawn reads the number before its clone and the child writes its `+PGID`
/// line after: had the old descriptor been closed and a new one opened instead, the number
/// could meanwhile have been reused by anything arborist opens (a log file, a control
/// connection), and a child would write its line there. With `dup3` the number always names
/// a guardian's pipe: the old one (the line is lost, or fails with EPIPE, and the spawn tells
/// the new guardian again, see GENERATION) or the new one. (Keeping every old write end open
/// instead would cost a descriptor per replacement, or a way to know when no clone can still
/// be using it.) O_CLOEXEC, which `dup3` sets on the number, keeps workers from holding the
/// pipe past their exec.
fn install(st: &mut State, new: Launched) -> io::Result<()> {
    match &st.pipe {
        None => {
            PIPE_FD.store(new.pipe.as_raw_fd(), Ordering::SeqCst);
            st.pipe = Some(new.pipe);
        }
        Some(fixed) => {
            // SAFETY: both descriptors are open and owned here; dup3 closes the old pipe's
            // write end held at `fixed`'s number (its guardian is dead or SIGKILLed).
            let r = unsafe { libc::dup3(new.pipe.as_raw_fd(), fixed.as_raw_fd(), libc::O_CLOEXEC) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            drop(new.pipe);
        }
    }
    // In this order: a spawn that read the old generation before its clone re-sends its line
    // once it sees the new one; the pid before `register_all`, see `flush`.
    GENERATION.fetch_add(1, Ordering::SeqCst);
    GUARDIAN_PID.store(new.child.id() as i32, Ordering::SeqCst);
    st.current = Some(Current {
        child: new.child,
        pidfd: new.pidfd,
        started: Instant::now(),
    });
    Ok(())
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor (close-on-exec).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a descriptor just returned to us and owned by nothing else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` (None: only checks) to the guardian; false when it is gone and reaped.
/// Through its pidfd where there is one, so a reaped guardian's reused pid is never hit.
fn send(current: &Current, signal: Option<Signal>) -> bool {
    match &current.pidfd {
        Some(fd) => {
            let sig = signal.map_or(0, |s| s as libc::c_int);
            // SAFETY: a pidfd we own, a valid signal number, no siginfo, no flags.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            r == 0 || Errno::last() != Errno::ESRCH
        }
        None => nix::sys::signal::kill(Pid::from_raw(current.pid()), signal) != Err(Errno::ESRCH),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_starts_at_once_then_doubles_from_100ms_to_10s() {
        let delays: Vec<u64> = (0..10).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        assert_eq!(backoff(u32::MAX), MAX_DELAY);
    }
}
