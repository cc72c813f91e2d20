//! Starting child processes. Every child gets its own session and process group (so a signal
//! reaches its grandchildren too, and no other worker can join its group), a parent-death
//! signal (so it ends if arborist is SIGKILLed: its stop signal when the guardian knows its
//! group, which then SIGKILLs it after a grace, else SIGKILL), the RLIMIT_NOFILE soft limit
//! arborist started with, default signal dispositions and an empty signal mask.
//!
//! Why not `std`/`tokio::process::Command`: steps between fork and exec (PDEATHSIG, the
//! rlimit) force std onto `fork(2)`, which copies arborist's page tables for every child and
//! then has the child throw them away at exec; with 1000 workers that was half of the spawn
//! time (see BENCHMARKS.md). Here the child is made with `clone(CLONE_VM | CLONE_VFORK)`, as
//! glibc's `posix_spawn` does: it borrows arborist's memory until it execs, nothing is
//! copied, and an exec failure is written straight into memory the parent reads. tokio's
//! process driver is not used either: exit statuses come from arborist's one reaper
//! (`reap`), which also removes one pidfd per worker.
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked exits, not the process. The clones
//! happen on a few spawner threads that are started once and never exit (or, before they are
//! started, on the runtime's main thread), so the forking thread lives as long as the daemon.
//! Two threads overlap the children's exec (each clone waits for its child's exec).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use tokio::sync::oneshot;

use super::registry;

/// The RLIMIT_NOFILE arborist was started with, restored in every child.
static ORIGINAL_NOFILE: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises arborist's own soft RLIMIT_NOFILE to the hard limit (1000 workers need thousands of
/// pipe ends) and remembers the original for children. Call once at start.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let _ = ORIGINAL_NOFILE.set((soft, hard));
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// What to run and how. Owned, because it is handed to a spawner thread.
pub struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub uid: Option<Uid>,
    pub gid: Option<Gid>,
    pub output: Output,
    /// What the guardian sends the child's group first should arborist die (SIGKILL follows
    /// after the grace); also the child's parent-death signal while the guardian knows it.
    pub stop_signal: Signal,
    /// `cgroup.procs` of the run's cgroup (cgroup mode): the child writes itself there
    /// before anything else. The caller keeps it open until `spawn` returns.
    pub cgroup_procs: Option<RawFd>,
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

/// A running child. Its exit status is collected by the reaper and delivered here; dropping a
/// `Child` neither waits for nor kills the process.
pub struct Child {
    pid: i32,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    exit: oneshot::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
}

impl Child {
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Waits for the child to exit. Cancel-safe, and may be called again after it returned.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = (&mut self.exit)
            .await
            .map_err(|_| io::Error::other("the reaper dropped the child"))?;
        self.status = Some(status);
        Ok(status)
    }
}

type Job = Box<dyn FnOnce() + Send>;

static SPAWNERS: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

/// Clones in flight: between `clone` and [`registry::own`], a child that already exited must
/// have its status kept for it rather than be taken for an adopted orphan (see `reap`).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Spawns begun so far; a ticket tells a kept status of this spawn's child from an older one.
static TICKETS: AtomicUsize = AtomicUsize::new(0);

pub fn spawns_in_flight() -> usize {
    IN_FLIGHT.load(Ordering::SeqCst)
}

pub fn spawns_begun() -> usize {
    TICKETS.load(Ordering::SeqCst)
}

/// Starts `threads` spawner threads that live as long as the process.
pub fn start_spawners(threads: usize) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads {
        let rx = Arc::clone(&rx);
        std::thread::Builder::new()
            .name(format!("spawner-{i}"))
            .stack_size(256 * 1024)
            .spawn(move || loop {
                let job = match rx.lock() {
                    Ok(guard) => guard.recv(),
                    Err(_) => return,
                };
                match job {
                    Ok(job) => job(),
                    // Never reached while arborist runs: the sender lives in a static.
                    Err(_) => std::thread::park(),
                }
            })?;
    }
    let _ = SPAWNERS.set(Mutex::new(tx));
    Ok(())
}

/// Spawns a child in a new process group and registers it as owned (the reaper delivers its
/// exit status to the returned `Child`) and its group as live (the guardian kills it if
/// arborist dies); the caller calls `registry::remove_group` once the group is empty.
pub async fn spawn(launch: Launch) -> io::Result<Child> {
    let Some(spawners) = SPAWNERS.get() else {
        return Image::prepare(&launch)?.spawn();
    };
    // The image (the whole environment and argv as C strings, the PATH lookup) is built on
    // the spawner thread, in that thread's allocator arena. Built here, a thousand images
    // for a tree starting at once were allocated between the runtime's long-lived
    // allocations and freed after the spawns, which left holes that kept arborist's heap
    // about 2 MiB larger for good.
    let (reply, result) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = reply.send(Image::prepare(&launch).and_then(Image::spawn));
    });
    let sent = spawners
        .lock()
        .map(|tx| tx.send(job))
        .is_ok_and(|r| r.is_ok());
    if !sent {
        return Err(io::Error::other("no spawner thread"));
    }
    result
        .await
        .unwrap_or_else(|_| Err(io::Error::other("spawner thread gone")))
}

/// /dev/null, opened once and kept: stdin of every child, and stdout/stderr of probes.
fn dev_null() -> io::Result<RawFd> {
    static NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    Ok(NULL.get_or_init(|| file.into()).as_raw_fd())
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Everything the child needs, prepared in the parent: between clone and exec the child may
/// not allocate, take a lock or touch anything another thread may be changing.
struct Image {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: Option<CString>,
    uid: Option<libc::uid_t>,
    gid: Option<libc::gid_t>,
    stdin: RawFd,
    /// The descriptors to put on 1 and 2 (`None`: keep arborist's).
    outputs: [Option<RawFd>; 2],
    /// The parent's pipe ends, handed to the `Child`.
    readers: [Option<OwnedFd>; 2],
    /// The child's pipe ends, closed in the parent once the child has exec'd.
    _writers: [Option<OwnedFd>; 2],
    nofile: Option<libc::rlimit>,
    stop_signal: Signal,
    cgroup_procs: RawFd,
}

/// What the child reads and writes while it borrows the parent's memory.
#[repr(C)]
struct Shared {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    env: *const *const libc::c_char,
    cwd: *const libc::c_char,
    uid: Option<libc::uid_t>,
    gid: Option<libc::gid_t>,
    stdin: RawFd,
    outputs: [Option<RawFd>; 2],
    nofile: Option<libc::rlimit>,
    parent: libc::pid_t,
    /// The guardian's pipe (-1: none), told of the child's group before exec.
    guardian: RawFd,
    stop_signal: libc::c_int,
    /// The run cgroup's `cgroup.procs` (-1: none).
    cgroup_procs: RawFd,
    /// Set by the child when its whole `+PGID SIG` line went into the pipe.
    told: AtomicBool,
    /// errno of the step that failed, and which step it was ([`STEPS`]), written by the
    /// child before `_exit`.
    error: AtomicI32,
    step: AtomicI32,
}

/// The child's steps, for the error message of a failed spawn.
const STEPS: [&str; 7] = [
    "joining its cgroup",
    "starting its own session",
    "redirecting stdin/stdout/stderr",
    "changing to its working directory",
    "changing user/group",
    "setting the parent-death signal",
    "exec",
];

impl Image {
    fn prepare(launch: &Launch) -> io::Result<Image> {
        let (program, args) = launch
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let cstring = |s: &[u8]| {
            CString::new(s).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in command or env")
            })
        };
        let env = environment(&launch.env);
        let program = resolve(program, &env, launch.cwd.as_deref())?;
        let mut argv = Vec::with_capacity(launch.argv.len());
        argv.push(cstring(launch.argv[0].as_bytes())?);
        for a in args {
            argv.push(cstring(a.as_bytes())?);
        }
        let env = env
            .into_iter()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let cwd = launch
            .cwd
            .as_ref()
            .map(|d| cstring(d.as_os_str().as_bytes()))
            .transpose()?;
        let null = dev_null()?;
        let mut readers = [None, None];
        let mut writers = [None, None];
        let outputs = match launch.output {
            Output::Inherit => [None, None],
            Output::Null => [Some(null), Some(null)],
            Output::Capture => {
                let mut outputs = [None, None];
                for i in 0..2 {
                    let (r, w) = pipe()?;
                    outputs[i] = Some(w.as_raw_fd());
                    readers[i] = Some(r);
                    writers[i] = Some(w);
                }
                outputs
            }
        };
        Ok(Image {
            program: cstring(program.as_bytes())?,
            argv,
            env,
            cwd,
            uid: launch.uid.map(Uid::as_raw),
            gid: launch.gid.map(Gid::as_raw),
            stdin: null,
            outputs,
            readers,
            _writers: writers,
            nofile: ORIGINAL_NOFILE.get().map(|&(soft, hard)| libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            }),
            stop_signal: launch.stop_signal,
            cgroup_procs: launch.cgroup_procs.unwrap_or(-1),
        })
    }

    /// Clones the child, waits for its exec and registers it. Runs on a spawner thread.
    fn spawn(mut self) -> io::Result<Child> {
        let pointers = |v: &[CString]| {
            let mut p: Vec<*const libc::c_char> = v.iter().map(|s| s.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        let argv = pointers(&self.argv);
        let env = pointers(&self.env);
        // Read before the pipe's descriptor: see the re-send below.
        let generation = super::guardian::generation();
        let shared = Shared {
            program: self.program.as_ptr(),
            argv: argv.as_ptr(),
            env: env.as_ptr(),
            cwd: self.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            uid: self.uid,
            gid: self.gid,
            stdin: self.stdin,
            outputs: self.outputs,
            nofile: self.nofile,
            parent: std::process::id() as libc::pid_t,
            guardian: super::guardian::pipe_fd(),
            stop_signal: self.stop_signal as libc::c_int,
            cgroup_procs: self.cgroup_procs,
            told: AtomicBool::new(false),
            error: AtomicI32::new(0),
            step: AtomicI32::new(0),
        };
        let ticket = TICKETS.fetch_add(1, Ordering::SeqCst) + 1;
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        let cloned = clone_vfork(&shared);
        let result = match cloned {
            Err(e) => Err(e),
            Ok(pid) => match shared.error.load(Ordering::SeqCst) {
                // The child exited; the reaper takes its zombie like an orphan's.
                0 => Ok(pid),
                errno => {
                    let err = io::Error::from_raw_os_error(errno);
                    match STEPS.get(shared.step.load(Ordering::SeqCst) as usize) {
                        Some(&"exec") | None => Err(err),
                        Some(step) => Err(io::Error::new(err.kind(), format!("{step}: {err}"))),
                    }
                }
            },
        };
        let child = result.map(|pid| {
            let (deliver, exit) = oneshot::channel();
            registry::own(pid, ticket, deliver);
            // The caller removes it once the group is empty.
            registry::add_group(pid, self.stop_signal);
            // The child could not tell the guardian (none, or its pipe full or broken), or
            // told one that has been replaced since: the current one hears it from here. A
            // guardian put in place after this check reads the group from the registry
            // (`guardian::register_all`), so one of the two always tells it.
            if !shared.told.load(Ordering::SeqCst) || super::guardian::changed_since(generation) {
                super::guardian::remember(pid, self.stop_signal);
            }
            let [stdout, stderr] = std::mem::take(&mut self.readers);
            Child {
                pid,
                stdout,
                stderr,
                exit,
                status: None,
            }
        });
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        child
    }
}

/// The child's environment: arborist's own, without the systemd contract that is meant for
/// arborist (workers get arborist's notify socket instead), then the launch's variables.
fn environment(extra: &[(String, String)]) -> Vec<(OsString, OsString)> {
    const OURS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            !OURS.iter().any(|o| k == o) && !extra.iter().any(|(e, _)| OsStr::new(e) == k)
        })
        .collect();
    let mut seen: Vec<&str> = Vec::with_capacity(extra.len());
    // Later entries win, as with repeated `Command::env`.
    for (k, v) in extra.iter().rev() {
        if !seen.contains(&k.as_str()) {
            seen.push(k);
            env.push((k.into(), v.into()));
        }
    }
    env
}

/// Finds the program as `execvp` would, but in the parent: a name with a slash is used as it
/// is (relative to the child's working directory); otherwise the first executable file of
/// that name in the PATH of the child's environment (or a default PATH).
fn resolve(
    program: &str,
    env: &[(OsString, OsString)],
    cwd: Option<&Path>,
) -> io::Result<OsString> {
    if program.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if program.contains('/') {
        return Ok(program.into());
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut denied = false;
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".").to_path_buf()
        } else {
            dir
        };
        let candidate = match (dir.is_relative(), cwd) {
            (true, Some(cwd)) => cwd.join(&dir).join(program),
            _ => dir.join(program),
        };
        match nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK) {
            Ok(()) if candidate.is_file() => return Ok(candidate.into_os_string()),
            Ok(()) => {}
            Err(nix::errno::Errno::EACCES) => denied |= candidate.exists(),
            Err(_) => {}
        }
    }
    Err(io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

const CHILD_STACK: usize = 64 * 1024;

/// `clone(CLONE_VM | CLONE_VFORK)`: returns once the child has exec'd or exited.
fn clone_vfork(shared: &Shared) -> io::Result<i32> {
    // One stack per spawner thread, reused: the child only uses it until exec, during which
    // this thread is suspended.
    thread_local! {
        static STACK: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    STACK.with(|stack| {
        let mut stack = stack.borrow_mut();
        if stack.is_empty() {
            stack.resize(CHILD_STACK, 0);
        }
        // Stacks grow down; the top must be 16-byte aligned.
        let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
        // Signals are blocked around clone so that no handler of arborist's runs in the child
        // (it would run on arborist's memory); the child resets every handler before it
        // unblocks them.
        // SAFETY: plain signal-mask and clone system calls; `child_main` only reads `shared`
        // (which outlives the clone: CLONE_VFORK suspends us until the child execs or exits)
        // and makes raw system calls.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let pid = libc::clone(
                child_main,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                shared as *const Shared as *mut libc::c_void,
            );
            let err = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                Err(err)
            } else {
                Ok(pid)
            }
        }
    })
}

/// The guardian's line for a new group, `+PGID SIG\n`, built without allocating (the child
/// may not allocate): at most 16 bytes, in one write.
fn group_line(pgid: libc::pid_t, stop_signal: libc::c_int, buf: &mut [u8; 16]) -> usize {
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        buf[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    put(b"+");
    put(itoa::Buffer::new().format(pgid).as_bytes());
    put(b" ");
    // Signal numbers are below 65: two digits.
    put(itoa::Buffer::new()
        .format(stop_signal.clamp(0, 99))
        .as_bytes());
    put(b"\n");
    len
}

/// The child between clone and exec. It shares arborist's memory and the forking thread's
/// TLS, so it makes only system calls; identity changes go through raw `syscall(2)`, because
/// glibc's `setuid` would try to signal arborist's other threads.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Shared` of `clone_vfork`, alive while we run.
    let s = unsafe { &*(arg as *const Shared) };
    let fail = || -> ! {
        // SAFETY: errno of this (borrowed) thread, then _exit without running any handler.
        unsafe {
            let errno = *libc::__errno_location();
            s.error
                .store(if errno == 0 { libc::EIO } else { errno }, Ordering::SeqCst);
            libc::_exit(127)
        }
    };
    // SAFETY: system calls on data prepared by the parent; see above.
    unsafe {
        // The guardian learns of this group now, before the program runs: told by arborist
        // after the spawn, it could miss grandchildren forked meanwhile if arborist were
        // SIGKILLed then (the spawner thread may wait a while for a CPU). One write of at
        // most PIPE_BUF bytes, so it cannot interleave with arborist's.
        let mut told = false;
        if s.guardian >= 0 {
            let mut line = [0u8; 16];
            let len = group_line(libc::getpid(), s.stop_signal, &mut line);
            told = libc::write(s.guardian, line.as_ptr().cast(), len) == len as isize;
            // A write to a pipe whose guardian died raises SIGPIPE at this thread. Every
            // signal is blocked here, and the kernel never discards a *blocked* signal as
            // ignored (its disposition may change before it is unblocked): it stays pending,
            // and once the loop below gave SIGPIPE its default disposition back and the mask
            // is cleared, it would kill the child before exec. Setting SIG_IGN discards a
            // pending SIGPIPE (POSIX); the loop then restores the default for the program.
            let mut ign: libc::sigaction = std::mem::zeroed();
            ign.sa_sigaction = libc::SIG_IGN;
            libc::sigaction(libc::SIGPIPE, &ign, std::ptr::null_mut());
        }
        s.told.store(told, Ordering::SeqCst);
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let step = |n: i32| s.step.store(n, Ordering::SeqCst);
        // Into the run's cgroup first, so everything it does happens there; and before
        // the identity change (kernels before 5.16 check the writer's credentials).
        if s.cgroup_procs >= 0 && libc::write(s.cgroup_procs, b"0".as_ptr().cast(), 1) != 1 {
            fail();
        }
        step(1);
        // Its own session (and so its own process group): no other worker can join it,
        // since setpgid only moves a process within its session, and its notify senders
        // are placed by session.
        if libc::setsid() < 0 {
            fail();
        }
        step(2);
        let targets = [(Some(s.stdin), 0), (s.outputs[0], 1), (s.outputs[1], 2)];
        for (fd, target) in targets {
            let Some(fd) = fd else { continue };
            if fd == target {
                // Already in place (arborist's own fd was closed); only keep it across exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    fail();
                }
            } else if libc::dup2(fd, target) < 0 {
                fail();
            }
        }
        step(3);
        if !s.cwd.is_null() && libc::chdir(s.cwd) != 0 {
            fail();
        }
        step(4);
        if s.uid.is_some() || s.gid.is_some() {
            // Supplementary groups go first, while we may still change them (as root).
            if libc::geteuid() == 0
                && libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
            {
                fail();
            }
            if let Some(gid) = s.gid {
                if libc::syscall(libc::SYS_setgid, gid) != 0 {
                    fail();
                }
            }
            if let Some(uid) = s.uid {
                if libc::syscall(libc::SYS_setuid, uid) != 0 {
                    fail();
                }
            }
        }
        // After the identity change, which would clear PDEATHSIG. When the guardian knows
        // the group, arborist's death brings the stop signal (the guardian sends it to the
        // whole group too, then SIGKILL after its grace): a SIGKILL here would end a
        // database before it could flush. Otherwise SIGKILL, the only end it would get.
        step(5);
        let deathsig = if told { s.stop_signal } else { libc::SIGKILL };
        if libc::prctl(libc::PR_SET_PDEATHSIG, deathsig as libc::c_ulong, 0, 0, 0) != 0 {
            fail();
        }
        // arborist died before prctl: the signal will never come.
        if libc::getppid() != s.parent {
            *libc::__errno_location() = libc::ESRCH;
            fail();
        }
        if let Some(limit) = s.nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        step(6);
        libc::execve(s.program, s.argv, s.env);
        fail()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn group_lines_are_what_the_guardian_reads() {
        let mut buf = [0u8; 16];
        for (pid, sig, want) in [
            (1, 15, "+1 15\n"),
            (4194304, 9, "+4194304 9\n"),
            (i32::MAX, 64, "+2147483647 64\n"),
        ] {
            let len = super::group_line(pid, sig, &mut buf);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), want);
        }
    }
}
