//! The floor of `bench/run` (see BENCHMARKS.md): the least a supervisor can do, so the
//! physical limit of the machine for spawning and stopping N processes.
//!
//! ```text
//! bench_floor N COMMAND [ARG...]
//! ```
//!
//! fork-execs N copies of COMMAND, each in its own process group, and waits. On SIGTERM or
//! SIGINT it sends SIGTERM to every group still alive, reaps every child, and exits 0. It
//! also exits (0) when all children have ended by themselves. No restarts, no logs, no
//! deadlines, no state beyond a set of pids: std and libc only.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

fn die(what: &str) -> ! {
    eprintln!("bench_floor: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1);
}

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let n: usize = match args.first().and_then(|a| a.to_str()?.parse().ok()) {
        Some(n) if args.len() >= 2 => n,
        _ => {
            eprintln!("usage: bench_floor N COMMAND [ARG...]");
            std::process::exit(2);
        }
    };
    let argv: Vec<CString> = args[1..]
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_else(|_| die("NUL in argument")))
        .collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());

    // SIGTERM, SIGINT and SIGCHLD are taken synchronously with sigwaitinfo: block them first
    // (a SIGTERM during the spawn loop waits until it is done). Children unblock them.
    let mut waited: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut empty);
        libc::sigemptyset(&mut waited);
        libc::sigaddset(&mut waited, libc::SIGTERM);
        libc::sigaddset(&mut waited, libc::SIGINT);
        libc::sigaddset(&mut waited, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &waited, std::ptr::null_mut());
    }

    let mut live: HashSet<libc::pid_t> = HashSet::with_capacity(n);
    for _ in 0..n {
        match unsafe { libc::fork() } {
            0 => unsafe {
                libc::setpgid(0, 0);
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                libc::execv(argv_ptrs[0], argv_ptrs.as_ptr());
                libc::_exit(127);
            },
            -1 => die("fork"),
            pid => {
                // Also from the parent, so the group exists before we may signal it; fails
                // harmlessly (EACCES) if the child has exec'd already.
                unsafe { libc::setpgid(pid, pid) };
                live.insert(pid);
            }
        }
    }

    let reap = |live: &mut HashSet<libc::pid_t>, flags: libc::c_int| loop {
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), flags) };
        if pid <= 0 {
            break;
        }
        live.remove(&pid);
    };

    loop {
        let sig = unsafe { libc::sigwaitinfo(&waited, std::ptr::null_mut()) };
        match sig {
            libc::SIGCHLD => {
                reap(&mut live, libc::WNOHANG);
                if live.is_empty() {
                    std::process::exit(0);
                }
            }
            libc::SIGTERM | libc::SIGINT => {
                for &pid in &live {
                    unsafe { libc::kill(-pid, libc::SIGTERM) };
                }
                // Blocking waits until ECHILD: every child reaped.
                reap(&mut live, 0);
                std::process::exit(0);
            }
            _ => {} // EINTR
        }
    }
}
