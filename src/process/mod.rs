//! Effects on operating-system processes: spawning workers into their own process groups,
//! signalling and watching whole groups, reaping adopted orphans, and the guardian that kills
//! what is left if arborist itself is SIGKILLed, and the cgroup v2 backend (a cgroup per worker
//! run). Nothing outside this module calls `kill(2)`, `waitpid(2)` or `fork(2)`.

pub mod adopted;
pub mod cgroup;
pub mod chores;
pub mod group;
pub mod guardian;
pub mod owned;
pub mod reap;
pub mod registry;
pub mod spawn;
