//! The worker that every system runs in `bench/run` (see BENCHMARKS.md).
//!
//! ```text
//! bench_worker MODE DIR
//! ```
//!
//! At start it creates the marker file `DIR/<pid>`, then sleeps until SIGTERM.
//!
//! - `fast`: on SIGTERM, exit 0 at once.
//! - `cleanup`: on SIGTERM, spend one second "cleaning up", then exit 0.
//! - `orphan`: like `fast`, but first fork a grandchild that stays in the worker's process
//!   group, records its pid as `DIR/gc.<pid>` and sleeps until it is killed. A supervisor
//!   that signals the whole group kills it; one that signals only the worker leaves it behind.
//!
//! s6 and runit run `./run` without arguments, so their run files are
//! `#!/path/to/bench_worker MODE DIR` scripts: the kernel then starts this binary directly
//! (no shell) with `MODE DIR` as one argument, followed by the script's path. Both forms are
//! accepted.
//!
//! std and libc only, and nothing done after start but waiting: the worker must be cheap
//! enough that 1000 of them measure the supervisor, not the worker.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

static CLEANUP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    // Only async-signal-safe calls: nanosleep and _exit.
    if CLEANUP.load(Ordering::Relaxed) {
        let one_second = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        let mut rest = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut req = one_second;
        // Restart after an interrupting signal with the time that is left.
        while unsafe { libc::nanosleep(&req, &mut rest) } == -1 {
            req = rest;
        }
    }
    unsafe { libc::_exit(0) }
}

fn usage() -> ! {
    eprintln!("usage: bench_worker fast|cleanup|orphan DIR");
    std::process::exit(2);
}

fn touch(path: &str) {
    let Ok(c) = CString::new(path) else { usage() };
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        eprintln!(
            "bench_worker: cannot create {path}: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    unsafe { libc::close(fd) };
}

fn sleep_forever() -> ! {
    loop {
        unsafe { libc::pause() };
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `#!/path/bench_worker MODE DIR` gives ["MODE DIR", "./run"].
    if args.first().is_some_and(|a| a.contains(' ')) {
        let joined = args.remove(0);
        args = joined.split_whitespace().map(str::to_owned).collect();
    }
    let (mode, dir) = match args.as_slice() {
        [mode, dir, ..] => (mode.as_str(), dir.as_str()),
        _ => usage(),
    };
    let orphan = match mode {
        "fast" => false,
        "cleanup" => {
            CLEANUP.store(true, Ordering::Relaxed);
            false
        }
        "orphan" => true,
        _ => usage(),
    };

    // A supervisor may start us with signals blocked or ignored; start from a clean slate.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }

    if orphan {
        match unsafe { libc::fork() } {
            0 => {
                // The grandchild: default SIGTERM (dies when its group is signalled).
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_DFL) };
                touch(&format!("{dir}/gc.{}", std::process::id()));
                sleep_forever();
            }
            -1 => {
                eprintln!("bench_worker: fork: {}", std::io::Error::last_os_error());
                std::process::exit(1);
            }
            _ => {}
        }
    }

    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigterm as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
    touch(&format!("{dir}/{}", std::process::id()));
    sleep_forever();
}
