//! The guardian process itself (`arborist __guardian GRACE`): it reads `+PGID SIG` and
//! `-PGID` lines from its stdin until EOF, which comes when arborist's end of the pipe closes:
//! at arborist's exit (the list is empty then, and it just leaves) or at its death. Then
//! every group still listed gets its stop signal and SIGCONT; the guardian waits up to the
//! grace for the groups to empty, so a database can still flush, and SIGKILLs what is left.
//! In cgroup mode it also reads `C<SIG> <DIR>` and `c<DIR>` lines: the cgroup of each worker
//! run, whose members (also those that left the worker's group) get the stop signal, then
//! `cgroup.kill` after the grace. It is a tiny single-threaded process: it polls.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, signal, SigHandler, Signal};
use nix::unistd::Pid;

/// How often the guardian looks whether the groups are empty during the grace.
const POLL: Duration = Duration::from_millis(20);

/// The guardian's own main loop: runs in the helper process.
pub fn run_guardian() -> ! {
    let grace = std::env::args()
        .nth(2)
        .and_then(|a| humantime::parse_duration(&a).ok())
        .unwrap_or(crate::config::DEFAULT_GUARDIAN_GRACE);
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
    let mut groups = BTreeMap::new();
    let mut cgroups = BTreeMap::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match parse(&line) {
            Some(Line::Add(pgid, stop_signal)) => {
                groups.insert(pgid, stop_signal);
            }
            Some(Line::Remove(pgid)) => {
                groups.remove(&pgid);
            }
            Some(Line::AddCgroup(dir, stop_signal)) => {
                cgroups.insert(dir, stop_signal);
            }
            Some(Line::RemoveCgroup(dir)) => {
                cgroups.remove(&dir);
            }
            None => {}
        }
    }
    end_groups(&groups, &cgroups, grace);
    std::process::exit(0)
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Add(i32, Signal),
    Remove(i32),
    AddCgroup(std::path::PathBuf, Signal),
    RemoveCgroup(std::path::PathBuf),
}

/// The members of a cgroup (its `cgroup.procs`; none when it is gone).
fn members(dir: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn populated(dir: &std::path::Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

/// `+PGID SIG` (a line without a valid signal number gets SIGKILL) or `-PGID`. Groups 0 and
/// 1 are never listed: `killpg` would reach arborist's callers or everything.
fn parse(line: &str) -> Option<Line> {
    let group = |s: &str| s.parse::<i32>().ok().filter(|&p| p > 1);
    // Only absolute paths of cgroup directories (never a control file: those hold a dot
    // and end in a letter, and nothing but arborist writes this pipe anyway).
    let cgroup_dir = |s: &str| Some(std::path::PathBuf::from(s)).filter(|p| p.is_absolute());
    if let Some(rest) = line.strip_prefix('C') {
        let (sig, dir) = rest.split_once(' ')?;
        let sig = sig
            .parse::<i32>()
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .unwrap_or(Signal::SIGKILL);
        return Some(Line::AddCgroup(cgroup_dir(dir)?, sig));
    }
    if let Some(dir) = line.strip_prefix('c') {
        return Some(Line::RemoveCgroup(cgroup_dir(dir)?));
    }
    if let Some(rest) = line.strip_prefix('+') {
        let (pgid, stop_signal) = rest.split_once(' ').unwrap_or((rest, ""));
        let stop_signal = stop_signal
            .parse::<i32>()
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .unwrap_or(Signal::SIGKILL);
        Some(Line::Add(group(pgid)?, stop_signal))
    } else {
        Some(Line::Remove(group(line.strip_prefix('-')?)?))
    }
}

fn group_alive(pgid: i32) -> bool {
    // EPERM: a member we may not signal is still there.
    kill(Pid::from_raw(-pgid), None) != Err(Errno::ESRCH)
}

/// Stop signal (and SIGCONT, for a stopped member) to each group and to every member of each
/// cgroup, up to `grace` for them to empty, then SIGKILL to what is left (`cgroup.kill` for a
/// cgroup, or SIGKILL to its members where the kernel has no `cgroup.kill`).
fn end_groups(
    groups: &BTreeMap<i32, Signal>,
    cgroups: &BTreeMap<std::path::PathBuf, Signal>,
    grace: Duration,
) {
    for (&pgid, &stop_signal) in groups {
        let _ = killpg(Pid::from_raw(pgid), stop_signal);
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGCONT);
    }
    for (dir, &stop_signal) in cgroups {
        for pid in members(dir) {
            let _ = kill(Pid::from_raw(pid), stop_signal);
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }
    let until = Instant::now() + grace;
    let mut left: Vec<i32> = groups.keys().copied().collect();
    let mut left_cgroups: Vec<&std::path::PathBuf> = cgroups.keys().collect();
    loop {
        left.retain(|&pgid| group_alive(pgid));
        left_cgroups.retain(|dir| populated(dir));
        let now = Instant::now();
        if (left.is_empty() && left_cgroups.is_empty()) || now >= until {
            break;
        }
        std::thread::sleep(POLL.min(until - now));
    }
    for pgid in left {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    for dir in left_cgroups {
        if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
            for pid in members(dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_a_group_and_its_stop_signal() {
        assert_eq!(parse("+1234 15"), Some(Line::Add(1234, Signal::SIGTERM)));
        assert_eq!(parse("+1234 2"), Some(Line::Add(1234, Signal::SIGINT)));
        assert_eq!(parse("-1234"), Some(Line::Remove(1234)));
        // Without a (valid) signal the group is only ever SIGKILLed.
        assert_eq!(parse("+77"), Some(Line::Add(77, Signal::SIGKILL)));
        assert_eq!(parse("+77 99"), Some(Line::Add(77, Signal::SIGKILL)));
        for bad in [
            "", "+", "+1 15", "+0 15", "+-5 15", "*12 15", "+x 15", "-1", "é12",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cgroup_lines_name_a_directory_and_its_stop_signal() {
        assert_eq!(
            parse("C15 /sys/fs/cgroup/workers.9/db.1"),
            Some(Line::AddCgroup(
                "/sys/fs/cgroup/workers.9/db.1".into(),
                Signal::SIGTERM
            ))
        );
        assert_eq!(
            parse("c/sys/fs/cgroup/workers.9/db.1"),
            Some(Line::RemoveCgroup("/sys/fs/cgroup/workers.9/db.1".into()))
        );
        for bad in ["C15", "C15 relative/dir", "crelative"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_lines_arborist_writes_are_the_lines_the_guardian_reads() {
        let mut buf = Vec::new();
        super::super::push_add(&mut buf, 4_194_304, Signal::SIGQUIT);
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            parse(text.trim_end()),
            Some(Line::Add(4_194_304, Signal::SIGQUIT))
        );
    }
}
