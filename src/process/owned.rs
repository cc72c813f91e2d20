//! The seam between a worker run and the operating system: everything the run owns, and the
//! few things the supervisor does to it — signal it, ask whether anything of it is alive,
//! wait until nothing is, kill it, forget it. Two backends behind one type:
//!
//! - **cgroup v2** (where arborist's cgroup is writable): the run's processes are the members
//!   of its cgroup, whatever sessions or groups they made; "nothing left" is the cgroup's
//!   `populated 0`, waited on with inotify; the kill is `cgroup.kill`.
//! - **process groups** (elsewhere): the run's process group (its leader's pid), plus the
//!   processes that left it and were adopted by arborist, attributed by the run's marker
//!   (`adopted`), which the worker sweeps separately.
//!
//! Which backend runs is decided once at start ([`Ownership::detect`]) and said in the log,
//! in `check` and in `status`.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::cgroup::{self, Hierarchy, RunCgroup, Watcher};
use super::group::{group_alive, signal_group, wait_gone};
use crate::config::{self, TreeSpec};

/// Which backend owns workers' processes, as `status` and `check` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Cgroup,
    ProcessGroups,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Cgroup => "cgroup",
            Mode::ProcessGroups => "process_groups",
        }
    }
}

/// The cgroup backend, shared by every worker task.
pub struct Cgroups {
    pub hierarchy: Hierarchy,
    pub watcher: Watcher,
}

/// The backend chosen at start.
pub struct Ownership {
    pub cgroups: Option<Arc<Cgroups>>,
    /// Why cgroup mode is off, when it is.
    pub fallback_reason: Option<String>,
}

impl Ownership {
    pub fn mode(&self) -> Mode {
        if self.cgroups.is_some() {
            Mode::Cgroup
        } else {
            Mode::ProcessGroups
        }
    }

    /// Chooses the backend for `tree` (its `ownership` key), without side effects but a
    /// probe cgroup: `Err` when the tree cannot run here (cgroup mode demanded but not
    /// available, `limits` whose controllers are not delegated), which is a configuration
    /// error (exit 2, nothing started). Call inside the runtime (the watcher registers).
    pub fn detect(tree: &TreeSpec) -> Result<Ownership, String> {
        match choose(tree)? {
            Choice::Fallback(why) => Ok(Ownership {
                cgroups: None,
                fallback_reason: Some(why),
            }),
            Choice::Cgroup {
                mut hierarchy,
                limits,
            } => {
                if limits {
                    hierarchy.enable_controllers().map_err(|e| {
                        format!("cannot enable the controllers that limits need: {e}")
                    })?;
                }
                let watcher = Watcher::new().map_err(|e| format!("cannot watch cgroups: {e}"))?;
                Ok(Ownership {
                    cgroups: Some(Arc::new(Cgroups { hierarchy, watcher })),
                    fallback_reason: None,
                })
            }
        }
    }

    /// One line for the log: which mode, and why not cgroup mode when it is not.
    pub fn describe(&self) -> String {
        match (&self.cgroups, &self.fallback_reason) {
            (Some(c), _) => format!(
                "cgroup v2: one cgroup per worker run under {} (controllers: {})",
                c.hierarchy.own_dir().display(),
                if c.hierarchy.enabled().is_empty() {
                    "none enabled".to_string()
                } else {
                    c.hierarchy.enabled().join(" ")
                }
            ),
            (None, Some(why)) => {
                format!("process groups and subreaper adoption (no cgroup mode: {why})")
            }
            (None, None) => "process groups and subreaper adoption".to_string(),
        }
    }
}

/// What [`Ownership::detect`] would choose for `tree` on this machine, for `check`: the mode
/// in words, or why `run` would refuse the tree. Creates and removes only a probe cgroup.
pub fn preview(tree: &TreeSpec) -> Result<String, String> {
    Ok(match choose(tree)? {
        Choice::Fallback(why) => format!("process groups and subreaper adoption ({why})"),
        Choice::Cgroup { hierarchy, .. } => {
            format!("cgroup v2, under {}", hierarchy.own_dir().display())
        }
    })
}

/// The decision `detect` and `preview` share.
enum Choice {
    /// Process groups, and why not cgroup mode.
    Fallback(String),
    /// cgroup mode; `limits` when some worker needs its controllers enabled.
    Cgroup { hierarchy: Hierarchy, limits: bool },
}

/// Chooses the mode for `tree` here (its `ownership` key, the hierarchy, its workers'
/// `limits`); `Err` when the tree cannot run here.
fn choose(tree: &TreeSpec) -> Result<Choice, String> {
    let limited = workers_with_limits(&tree.root);
    if tree.ownership == config::Ownership::ProcessGroups {
        return match limited.first() {
            Some((path, _)) => Err(format!(
                "{path}: limits need cgroup mode, and the configuration sets `ownership: \
                 process-groups`"
            )),
            None => Ok(Choice::Fallback(
                "`ownership: process-groups` in the configuration".into(),
            )),
        };
    }
    match Hierarchy::detect() {
        Ok(hierarchy) => {
            for (path, limits) in &limited {
                hierarchy
                    .check_limits(limits)
                    .map_err(|e| format!("{path}: {e}"))?;
            }
            Ok(Choice::Cgroup {
                hierarchy,
                limits: !limited.is_empty(),
            })
        }
        Err(why) => match limited.first() {
            Some((path, _)) if tree.ownership != config::Ownership::Cgroup => Err(format!(
                "{path}: limits need cgroup mode, which is not available: {why}"
            )),
            _ if tree.ownership == config::Ownership::Cgroup => Err(format!(
                "`ownership: cgroup`: cgroup mode is not available: {why}"
            )),
            _ => Ok(Choice::Fallback(format!("no cgroup mode: {why}"))),
        },
    }
}

/// Kills and removes the run cgroups an earlier arborist left (it was SIGKILLed; its
/// guardian killed what it knew of, but cannot remove cgroups after waiting). Bounded.
pub async fn clean_leftovers(cgroups: &Cgroups) {
    let runs = match cgroups.hierarchy.leftovers() {
        Ok(runs) => runs,
        Err(e) => {
            tracing::warn!("cannot list the cgroups an earlier arborist left: {e}");
            return;
        }
    };
    if runs.is_empty() {
        return;
    }
    tracing::warn!(
        count = runs.len(),
        "killing and removing {} worker cgroups left by an earlier arborist",
        runs.len()
    );
    let until = Instant::now() + KILL_GRACE;
    for run in &runs {
        let _ = run.kill();
    }
    for run in &runs {
        let _ = cgroups.watcher.wait_empty(run, until).await;
        let _ = run.remove();
    }
    cgroups.hierarchy.remove_leftover_dirs();
}

/// Every worker with `limits`, by path.
fn workers_with_limits(g: &config::GroupSpec) -> Vec<(String, config::Limits)> {
    fn walk(g: &config::GroupSpec, prefix: &str, out: &mut Vec<(String, config::Limits)>) {
        for c in &g.children {
            let path = config::join_path(prefix, &c.name);
            match &c.kind {
                config::NodeKind::Worker(w) => {
                    if !w.limits.is_empty() {
                        out.push((path, w.limits));
                    }
                }
                config::NodeKind::Group(sub) => walk(sub, &path, out),
            }
        }
    }
    let mut out = Vec::new();
    walk(g, "", &mut out);
    out
}

/// What one worker run owns: its process group, and its cgroup in cgroup mode.
pub struct RunProcesses {
    pgid: i32,
    cgroup: Option<(RunCgroup, Arc<Cgroups>)>,
}

/// How long to wait for a SIGKILLed run to disappear before giving up on it (a process in
/// uninterruptible sleep can take a while; arborist must not hang on it).
pub const KILL_GRACE: Duration = Duration::from_secs(5);

impl RunProcesses {
    /// The cgroup a run is placed in before its spawn (cgroup mode), with its limits.
    pub fn prepare(
        cgroups: &Arc<Cgroups>,
        path: &str,
        run: u64,
        limits: Option<&config::Limits>,
    ) -> std::io::Result<RunCgroup> {
        let cg = cgroups.hierarchy.create_run(&cgroup::run_name(path, run))?;
        if let Some(limits) = limits {
            if let Err(e) = cg.apply_limits(limits) {
                let _ = cg.remove();
                return Err(std::io::Error::other(e.to_string()));
            }
        }
        Ok(cg)
    }

    /// The run whose leader is `pgid`, placed in `cgroup` in cgroup mode; the guardian learns
    /// of its cgroup (it knows the group already: the child told it before its exec).
    pub fn new(
        pgid: i32,
        cgroup: Option<(RunCgroup, Arc<Cgroups>)>,
        stop_signal: Signal,
    ) -> RunProcesses {
        if let Some((cg, _)) = &cgroup {
            super::registry::add_cgroup(cg.dir(), stop_signal);
        }
        RunProcesses { pgid, cgroup }
    }

    pub fn mode(&self) -> Mode {
        if self.cgroup.is_some() {
            Mode::Cgroup
        } else {
            Mode::ProcessGroups
        }
    }

    /// Sends `sig` to every process of the run, once each: to its process group with one
    /// `killpg` (which also reaches a child forked meanwhile, as a read of `cgroup.procs`
    /// followed by kills would not), and in cgroup mode to each member outside that group
    /// (never twice to one process: a shell's trap would run twice).
    pub fn signal(&self, sig: Signal) {
        signal_group(self.pgid, sig);
        if let Some((cg, _)) = &self.cgroup {
            for pid in cg.members().unwrap_or_default() {
                let in_group = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
                    .is_ok_and(|g| g.as_raw() == self.pgid);
                if !in_group {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
            }
        }
    }

    /// Whether anything of the run is alive (its cgroup populated, or its group non-empty).
    /// A cgroup that cannot be read counts as alive while its group is.
    pub fn alive(&self) -> bool {
        match &self.cgroup {
            Some((cg, _)) => cg.populated().unwrap_or_else(|_| group_alive(self.pgid)),
            None => group_alive(self.pgid),
        }
    }

    /// Waits until nothing of the run is left (true) or `until` passes (false).
    pub async fn wait_gone(&self, until: Instant, child_events: &mut watch::Receiver<u64>) -> bool {
        match &self.cgroup {
            Some((cg, cgroups)) => match cgroups.watcher.wait_empty(cg, until).await {
                Ok(gone) => gone,
                // No inotify watch (the limit, say): never assume the run is gone; wait as
                // the fallback does, woken by SIGCHLD and a slow re-check.
                Err(e) => {
                    tracing::debug!(dir = %cg.dir().display(), "cannot watch the cgroup: {e}");
                    wait_gone(|| self.alive(), until, child_events).await
                }
            },
            None => wait_gone(|| group_alive(self.pgid), until, child_events).await,
        }
    }

    /// SIGKILLs everything of the run.
    pub fn kill(&self) {
        signal_group(self.pgid, Signal::SIGKILL);
        if let Some((cg, _)) = &self.cgroup {
            let _ = cg.kill();
        }
    }

    /// OOM kills in the run's cgroup (0 outside cgroup mode or without the memory controller).
    pub fn oom_kills(&self) -> u64 {
        match &self.cgroup {
            Some((cg, _)) => cg.oom_kills().unwrap_or(0),
            None => 0,
        }
    }

    /// The run is over and nothing of it is left: forget its group, remove its cgroup (on
    /// the chores thread: removal retries briefly while the kernel lets go of it).
    pub fn forget(self) {
        super::registry::remove_group(self.pgid);
        if let Some((cg, _)) = self.cgroup {
            super::registry::remove_cgroup(cg.dir());
            super::chores::run(Box::new(move || {
                let _ = cg.remove();
            }));
        }
    }
}
