//! The cgroup v2 backend: one cgroup per worker run, where arborist's own cgroup is writable
//! (systemd `Delegate=yes`, a privileged container, root on a host). SPEC §3 "Ownership".
//!
//! Owns: finding the cgroup2 mount and arborist's own cgroup, the layout below it, creating
//! and removing run cgroups, their membership, "nothing left" (`cgroup.events`, waited on with
//! inotify: `watch.rs`), the kill (`cgroup.kill`), the stop signal to every member, `limits`
//! (`memory.max`, `cpu.max`, `pids.max`: `limits.rs`) and OOM kills (`memory.events`).
//! Never: spawns, reaps or waits for a process (`spawn` and `reap` do), polls (waits are inotify
//! wakeups), or touches a cgroup outside arborist's own.
//!
//! A run's life: [`Hierarchy::create_run`], [`RunCgroup::apply_limits`], the spawn (the child
//! places itself, below), [`RunCgroup::signal_all`] with the stop signal,
//! [`Watcher::wait_empty`] until the deadline, [`RunCgroup::kill`] and `wait_empty` again if
//! anything is left, [`RunCgroup::oom_kills`] for the end reason, [`RunCgroup::remove`].
//!
//! Layout, below arborist's own cgroup `<own>`:
//!
//! ```text
//! <own>/supervisor/            arborist itself, moved there only by enable_controllers, and
//!                              only when <own> is not the hierarchy root: cgroup v2 allows no
//!                              process in a cgroup that enables controllers for its children
//!                              (the root is exempt), as systemd's delegation docs describe
//! <own>/workers.<pid>/         the parent of this arborist's runs (its pid: arborists that share
//!                              a cgroup never touch each other's); controllers enabled here
//!                              reach the runs
//! <own>/workers.<pid>/<name>.<run>  one run of one worker: run_name("backend/api#2", 7) is
//!                              "backend:api#2.7"
//! ```
//!
//! Placement: the spawned child writes `0` into its run's `cgroup.procs` between clone and exec,
//! through the descriptor [`RunCgroup::procs_fd`] keeps open (write-only, close-on-exec, so the
//! worker never inherits it). That write must come before the child drops privileges: kernels
//! before 5.16 check the writer's credentials, not the opener's. A descriptor rather than
//! clone3's `CLONE_INTO_CGROUP` (Linux 5.7) because spawn's vfork child is made by glibc's
//! `clone(CLONE_VM | CLONE_VFORK)`, which runs a function on the child's stack; glibc has no
//! clone3 wrapper, and the raw syscall with `CLONE_VM` would need assembly to start the child
//! on its own stack. The write is one async-signal-safe syscall among the child's other steps.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

mod detect;
mod limits;
mod run;
mod watch;

#[cfg(test)]
mod tests;

pub use limits::{limit_files, LimitError, LimitFile};
pub use run::RunCgroup;
pub use watch::Watcher;

use crate::config::Limits;
use detect::{below, cgroup2_mounts, own_cgroup, probe_writable, read_proc};

/// The controllers `limits` may need, in the order they are enabled and checked.
const LIMIT_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Rounds of moving arborist's processes into `supervisor/` before giving up: a process that
/// forks while it is being moved can leave a new child behind, found by the next round.
const MOVE_ROUNDS: usize = 100;

/// Why cgroup mode cannot run, in an operator's words.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("no cgroup v2 hierarchy is mounted (/proc/self/mountinfo has no cgroup2 mount)")]
    NoMount,
    #[error("arborist is in no cgroup v2 cgroup (/proc/self/cgroup has no `0::` line)")]
    NotMember,
    #[error(
        "arborist's cgroup {own} is outside every cgroup2 mount ({mounts}): \
         mount the cgroup namespace's own hierarchy"
    )]
    NotVisible { own: String, mounts: String },
    #[error("{}: not a cgroup v2 directory: {source}", dir.display())]
    NotCgroup { dir: PathBuf, source: io::Error },
    #[error(
        "arborist's cgroup {own} ({}) is not writable: {source}; delegate it to arborist \
         (systemd: `Delegate=yes` in the unit; docker: `--privileged`, or `--cgroupns=private` \
         with /sys/fs/cgroup mounted read-write; or run as root on the host)",
        dir.display()
    )]
    NotWritable {
        own: String,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
}

/// arborist's own place in the cgroup v2 hierarchy, found writable.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    mount: PathBuf,
    /// As /proc/self/cgroup names it, relative to the mount: `/system.slice/arborist.service`.
    own: String,
    own_dir: PathBuf,
    /// The hierarchy's root cgroup, exempt from the no-internal-process rule.
    is_root: bool,
    /// `cgroup.controllers` of arborist's cgroup: what was delegated to it.
    available: Vec<String>,
    /// `cgroup.subtree_control` of `workers/`: what runs get.
    enabled: Vec<String>,
}

impl Hierarchy {
    /// Finds the cgroup2 mount and arborist's cgroup in /proc/self, and checks it is writable.
    pub fn detect() -> Result<Hierarchy, Unavailable> {
        let mountinfo = read_proc("/proc/self/mountinfo")?;
        let membership = read_proc("/proc/self/cgroup")?;
        let mounts = cgroup2_mounts(&mountinfo);
        if mounts.is_empty() {
            return Err(Unavailable::NoMount);
        }
        let own = own_cgroup(&membership).ok_or(Unavailable::NotMember)?;
        // In a cgroup namespace both paths are relative to the namespace's root; a mount of a
        // subtree (its root field is not `/`) only shows the cgroups below that subtree.
        let (mount, relative) = mounts
            .iter()
            .find_map(|(point, root)| Some((point, below(&own, root)?)))
            .ok_or_else(|| Unavailable::NotVisible {
                own: own.clone(),
                mounts: mounts
                    .iter()
                    .map(|(p, r)| format!("{} showing {r}", p.display()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Hierarchy::detect_at(mount, &relative)
    }

    /// As [`detect`](Hierarchy::detect), for a given mount point and a cgroup path relative to
    /// it (`/` for the mount's root).
    pub fn detect_at(mount: &Path, own: &str) -> Result<Hierarchy, Unavailable> {
        let own = format!("/{}", own.trim_matches('/'));
        let own_dir = mount.join(own.trim_start_matches('/'));
        let available = match fs::read_to_string(own_dir.join("cgroup.controllers")) {
            Ok(text) => words(&text),
            Err(source) => {
                return Err(Unavailable::NotCgroup {
                    dir: own_dir,
                    source,
                })
            }
        };
        probe_writable(&own_dir).map_err(|source| Unavailable::NotWritable {
            own: own.clone(),
            dir: own_dir.clone(),
            source,
        })?;
        let enabled =
            fs::read_to_string(own_dir.join(workers_name()).join("cgroup.subtree_control"))
                .map(|text| words(&text))
                .unwrap_or_default();
        Ok(Hierarchy {
            mount: mount.to_path_buf(),
            // Only non-root cgroups have `cgroup.type` (a cgroup namespace's root has it: it is
            // not exempt).
            is_root: !own_dir.join("cgroup.type").exists(),
            own,
            own_dir,
            available,
            enabled,
        })
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// arborist's cgroup as /proc/self/cgroup names it (relative to the mount).
    pub fn own(&self) -> &str {
        &self.own
    }

    pub fn own_dir(&self) -> &Path {
        &self.own_dir
    }

    /// Controllers delegated to arborist's cgroup.
    pub fn available(&self) -> &[String] {
        &self.available
    }

    /// Controllers enabled for worker runs.
    pub fn enabled(&self) -> &[String] {
        &self.enabled
    }

    /// The parent of this arborist's runs, `workers.<pid>`: arborists sharing a cgroup (on
    /// a host's root cgroup, say) never touch each other's runs.
    fn workers_dir(&self) -> PathBuf {
        self.own_dir.join(workers_name())
    }

    /// Removes this arborist's (empty) `workers.<pid>` directory; at exit.
    pub fn remove_workers_dir(&self) {
        let _ = fs::remove_dir(self.workers_dir());
    }

    /// Whether `limits` can be applied here: every controller it needs is delegated to
    /// arborist's cgroup. The first one missing is named.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), LimitError> {
        limits::check(limits, &self.own, &self.available)
    }

    /// Enables memory, cpu and pids (those delegated) for the worker runs, so that `limits`
    /// can be written. When arborist's cgroup is not the hierarchy root, arborist first moves
    /// its own processes into `supervisor/`. Call once at start, before any run is created,
    /// and only when some worker has limits.
    pub fn enable_controllers(&mut self) -> io::Result<()> {
        let wanted: Vec<&str> = LIMIT_CONTROLLERS
            .into_iter()
            .filter(|c| self.available.iter().any(|a| a == c))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        if !self.is_root {
            self.move_into_supervisor()?;
        }
        let line = subtree_control_line(&wanted);
        write_file(&self.own_dir.join("cgroup.subtree_control"), &line)?;
        let workers = self.workers_dir();
        make_dir(&workers)?;
        let control = workers.join("cgroup.subtree_control");
        write_file(&control, &line)?;
        self.enabled = words(&fs::read_to_string(&control).map_err(|e| with_path(&control, e))?);
        Ok(())
    }

    /// Moves every process of arborist's cgroup (arborist, the guardian, anything spawned
    /// before) into `<own>/supervisor/`.
    fn move_into_supervisor(&self) -> io::Result<()> {
        let supervisor = self.own_dir.join("supervisor");
        make_dir(&supervisor)?;
        let target = supervisor.join("cgroup.procs");
        let mut procs = fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .map_err(|e| with_path(&target, e))?;
        let source = self.own_dir.join("cgroup.procs");
        for _ in 0..MOVE_ROUNDS {
            let pids = read_pids(&source)?;
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                match procs.write_all(pid.to_string().as_bytes()) {
                    // It exited in the meantime.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    other => other.map_err(|e| with_path(&target, e))?,
                }
            }
        }
        Err(io::Error::other(format!(
            "{}: processes kept appearing while arborist moved them into {}",
            source.display(),
            supervisor.display()
        )))
    }

    /// Creates the cgroup of one run, `workers/<name>` (see [`run_name`]).
    pub fn create_run(&self, name: &str) -> io::Result<RunCgroup> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\n']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a cgroup name"),
            ));
        }
        let workers = self.workers_dir();
        make_dir(&workers)?;
        let dir = workers.join(name);
        fs::create_dir(&dir).map_err(|e| with_path(&dir, e))?;
        RunCgroup::open(dir)
    }

    /// Run cgroups left by an earlier arborist that was SIGKILLed (the guardian kills their
    /// processes, but cannot wait to remove them): every `workers.<pid>` of a pid that is no
    /// longer alive, and its runs. The caller kills, waits for and removes the runs, then
    /// the directories ([`remove_leftover_dirs`](Hierarchy::remove_leftover_dirs)).
    pub fn leftovers(&self) -> io::Result<Vec<RunCgroup>> {
        let mut runs = Vec::new();
        for dir in self.leftover_dirs()? {
            for entry in fs::read_dir(&dir).map_err(|e| with_path(&dir, e))? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    runs.push(RunCgroup::open(entry.path())?);
                }
            }
        }
        Ok(runs)
    }

    /// Removes the (emptied) directories of [`leftovers`](Hierarchy::leftovers).
    pub fn remove_leftover_dirs(&self) {
        for dir in self.leftover_dirs().unwrap_or_default() {
            let _ = fs::remove_dir(dir);
        }
    }

    fn leftover_dirs(&self) -> io::Result<Vec<PathBuf>> {
        let entries = match fs::read_dir(&self.own_dir) {
            Ok(entries) => entries,
            Err(e) => return Err(with_path(&self.own_dir, e)),
        };
        let mut dirs = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("workers."))
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
            if pid != std::process::id() as i32 && !alive {
                dirs.push(entry.path());
            }
        }
        Ok(dirs)
    }
}

/// `workers.<pid>`: see `Hierarchy::workers_dir`.
fn workers_name() -> String {
    format!("workers.{}", std::process::id())
}

/// The cgroup name of run `run` of the worker at `path`: one path component (a cgroup name
/// cannot hold `/`), distinct for distinct paths, and never a control file's name (those end
/// in a letter: `memory.max`, `cgroup.kill`; run names end in the run's number). `/` becomes
/// `:` (no node name holds one), anything outside `[A-Za-z0-9_.#-]` becomes `%XX`; a path too
/// long for a file name keeps its end, after a hash of the whole.
pub fn run_name(path: &str, run: u64) -> String {
    let mut name = String::with_capacity(path.len() + 8);
    for b in path.bytes() {
        match b {
            b'/' => name.push(':'),
            b if b.is_ascii_alphanumeric() || b"_.#-".contains(&b) => name.push(b as char),
            b => name.push_str(&format!("%{b:02X}")),
        }
    }
    // NAME_MAX is 255; leave room for the run number.
    const KEEP: usize = 200;
    if name.len() > KEEP {
        let hash = path.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        // Escaped names are ASCII, so any byte offset is a character boundary.
        name = format!("{hash:016x}~{}", &name[name.len() - (KEEP - 17)..]);
    }
    format!("{name}.{run}")
}

/// `+memory +cpu +pids`, as `cgroup.subtree_control` takes it.
fn subtree_control_line(controllers: &[&str]) -> String {
    controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

fn make_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(with_path(dir, e)),
        _ => Ok(()),
    }
}

/// One `write(2)` of `text`: each write to a cgroup control file is one command.
fn write_file(path: &Path, text: &str) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| with_path(path, e))
}

/// The pids listed in a `cgroup.procs`; none when the cgroup is gone.
fn read_pids(path: &Path) -> io::Result<Vec<i32>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(with_path(path, e)),
    }
}

/// An OS error that names its file, as every runtime error must.
fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
