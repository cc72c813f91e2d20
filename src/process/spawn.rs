//! Starting child processes. Every child gets its own process group (so a signal reaches its
//! grandchildren too), `PR_SET_PDEATHSIG=SIGKILL` (so it dies if arborist is SIGKILLed), the
//! RLIMIT_NOFILE soft limit arborist started with, and an empty signal mask.
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked exits, not the process. The forks
//! happen on a few spawner threads that are started once and never exit (or, before they are
//! started, on the runtime's main thread), so the forking thread lives as long as the daemon.
//!
//! Why threads: `Command::spawn` returns only once the child has exec'd, and before exec the
//! child closes every close-on-exec descriptor arborist holds (three per worker). Spawning
//! 1000 workers one after another puts all of that on one critical path; two spawner threads
//! overlap it.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::{Gid, Uid};
use tokio::process::{Child, Command};

use super::registry;

/// The RLIMIT_NOFILE arborist was started with, restored in every child.
static ORIGINAL_NOFILE: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises arborist's own soft RLIMIT_NOFILE to the hard limit (1000 workers need thousands of
/// pipe ends and pidfds) and remembers the original for children. Call once at start.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let _ = ORIGINAL_NOFILE.set((soft, hard));
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// What to run and how.
pub struct Launch<'a> {
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: Option<&'a Path>,
    pub uid: Option<Uid>,
    pub gid: Option<Gid>,
    pub output: Output,
}

/// Where a child's stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Pipes, read by `logs::capture`.
    Capture,
    /// arborist's own stdout and stderr.
    Inherit,
    /// /dev/null (probes).
    Null,
}

type Job = Box<dyn FnOnce() + Send>;

static SPAWNERS: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

/// Spawns in flight on a spawner thread: between fork and [`registry::own`], the orphan reaper
/// must not reap an unknown zombie, which could be such a child (see `reap`).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

pub fn spawns_in_flight() -> usize {
    IN_FLIGHT.load(Ordering::SeqCst)
}

/// Starts `threads` spawner threads that live as long as the process. Each enters the
/// runtime so that tokio can register the children it spawns.
pub fn start_spawners(runtime: tokio::runtime::Handle, threads: usize) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads {
        let rx = Arc::clone(&rx);
        let runtime = runtime.clone();
        std::thread::Builder::new()
            .name(format!("spawner-{i}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let _enter = runtime.enter();
                loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        // Never reached while arborist runs: the sender lives in a static.
                        Err(_) => std::thread::park(),
                    }
                }
            })?;
    }
    let _ = SPAWNERS.set(Mutex::new(tx));
    Ok(())
}

/// Spawns a child in a new process group and registers it as owned (its status belongs to
/// the returned `Child`). The caller must eventually `wait` it and call [`release`].
pub async fn spawn(launch: &Launch<'_>) -> io::Result<Child> {
    let mut cmd = command(launch)?;
    let Some(spawners) = SPAWNERS.get() else {
        return spawn_now(&mut cmd);
    };
    let (reply, result) = tokio::sync::oneshot::channel();
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let job: Job = Box::new(move || {
        let _ = reply.send(spawn_now(&mut cmd));
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        super::reap::kick();
    });
    let sent = spawners
        .lock()
        .map(|tx| tx.send(job))
        .is_ok_and(|r| r.is_ok());
    if !sent {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        return Err(io::Error::other("no spawner thread"));
    }
    result
        .await
        .unwrap_or_else(|_| Err(io::Error::other("spawner thread gone")))
}

fn spawn_now(cmd: &mut Command) -> io::Result<Child> {
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        registry::own(pid as i32);
    }
    Ok(child)
}

/// Builds the command: argv, environment, process group, identity, and the pre-exec steps.
fn command(launch: &Launch) -> io::Result<Command> {
    let (program, args) = launch
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        // Our own systemd contract must not leak into workers; they get arborist's socket.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .envs(
            launch
                .env
                .iter()
                .map(|(k, v)| (OsStr::new(k), OsStr::new(v))),
        )
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    match launch.output {
        Output::Capture => cmd.stdout(Stdio::piped()).stderr(Stdio::piped()),
        Output::Inherit => cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit()),
        Output::Null => cmd.stdout(Stdio::null()).stderr(Stdio::null()),
    };
    if let Some(dir) = launch.cwd {
        cmd.current_dir(dir);
    }
    // std drops supplementary groups itself when it changes uid as root.
    if let Some(gid) = launch.gid {
        cmd.gid(gid.as_raw());
    }
    if let Some(uid) = launch.uid {
        cmd.uid(uid.as_raw());
    }
    let parent = std::process::id() as libc::pid_t;
    let nofile = ORIGINAL_NOFILE.get().copied();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls on stack data; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // After std has changed uid/gid: a credential change would clear PDEATHSIG.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // arborist died between fork and prctl: the signal will never come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if let Some((soft, hard)) = nofile {
                let limit = libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    Ok(cmd)
}

/// Marks a child's status as collected, after `Child::wait` returned.
pub fn release(pid: i32) {
    registry::disown(pid);
    super::reap::kick();
}
