//! Waiting until a run's cgroup is empty, without polling: one inotify instance for the
//! process watches the `cgroup.events` of every run being waited on (the kernel modifies that
//! file when `populated` changes), and each wakeup is dispatched by watch descriptor to that
//! run's waiters, which re-read the file.
//!
//! No task of its own: whichever waiter holds the pump lock reads the inotify descriptor for
//! everyone, so exactly one task is woken by the descriptor, plus the waiters of the runs that
//! changed, however many runs are waited on (1000 workers stopping at once).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;
use tokio::time::Instant;

use super::RunCgroup;

/// nix's `Inotify` is `AsFd`; tokio's `AsyncFd` wants `AsRawFd`.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The waiters of one watched file: a counter bumped at each of its events.
struct Watch {
    wakeups: watch::Sender<u64>,
    users: usize,
}

struct Shared {
    fd: AsyncFd<InotifyFd>,
    watches: Mutex<HashMap<WatchDescriptor, Watch>>,
}

/// The one inotify instance of the process for cgroup waits. Make it once, inside the tokio
/// runtime (it registers with the runtime's reactor), and share it.
#[derive(Clone)]
pub struct Watcher {
    shared: Arc<Shared>,
    /// Held by the waiter that reads the descriptor for all.
    pump: Arc<tokio::sync::Mutex<()>>,
}

impl Watcher {
    pub fn new() -> io::Result<Watcher> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: the Inotify owns its descriptor, which stays open, and the same, until the
        // AsyncFd (its only owner) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Watcher {
            shared: Arc::new(Shared {
                fd,
                watches: Mutex::new(HashMap::new()),
            }),
            pump: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Waits until nothing is left in `run` (true), or `until` passes first (false).
    pub async fn wait_empty(&self, run: &RunCgroup, until: Instant) -> io::Result<bool> {
        let events = run.dir().join("cgroup.events");
        let mut subscription = match self.subscribe(&events) {
            Ok(s) => s,
            // The cgroup is gone, so is everything that was in it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(e),
        };
        // Watching began before this first read: a change after it wakes the loop below.
        loop {
            if !run.populated()? {
                return Ok(true);
            }
            // biased: an event of this run ends the wait for it before any more pumping.
            tokio::select! {
                biased;
                changed = subscription.wakeups.changed() => {
                    // The sender lives while this subscription does.
                    changed.map_err(|_| io::Error::other("cgroup watch ended"))?;
                }
                pumped = self.pump() => pumped?,
                () = tokio::time::sleep_until(until) => return Ok(!run.populated()?),
            }
        }
    }

    fn watches(&self) -> MutexGuard<'_, HashMap<WatchDescriptor, Watch>> {
        // The map stays consistent even if a holder panicked: every update is one statement.
        self.shared
            .watches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn subscribe(&self, path: &Path) -> io::Result<Subscription> {
        // add_watch and rm_watch happen under the lock, so a watch shared by two waiters (one
        // inode, one descriptor) is never removed from the kernel while one still counts on it.
        let mut watches = self.watches();
        let wd = self
            .shared
            .fd
            .get_ref()
            .0
            .add_watch(path, AddWatchFlags::IN_MODIFY)
            .map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("{}: cannot watch: {e}", path.display()),
                )
            })?;
        let watch = watches.entry(wd).or_insert_with(|| Watch {
            wakeups: watch::Sender::new(0),
            users: 0,
        });
        watch.users += 1;
        Ok(Subscription {
            wakeups: watch.wakeups.subscribe(),
            wd,
            watcher: self.clone(),
        })
    }

    /// Reads inotify events and wakes their waiters, for as long as the caller's `select!`
    /// keeps this future; one waiter at a time does it.
    async fn pump(&self) -> io::Result<()> {
        let _turn = self.pump.lock().await;
        loop {
            let mut ready = self.shared.fd.readable().await?;
            loop {
                match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                    Ok(Ok(events)) => self.dispatch(&events),
                    Ok(Err(e)) => return Err(e),
                    // Drained; the readiness is cleared.
                    Err(_would_block) => break,
                }
            }
        }
    }

    fn dispatch(&self, events: &[InotifyEvent]) {
        let watches = self.watches();
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                // Events were lost: everyone re-reads.
                for watch in watches.values() {
                    watch.wakeups.send_modify(|n| *n += 1);
                }
            } else if let Some(watch) = watches.get(&event.wd) {
                watch.wakeups.send_modify(|n| *n += 1);
            }
        }
    }
}

/// One waiter's interest in one watched file; the kernel watch goes with its last user.
struct Subscription {
    wakeups: watch::Receiver<u64>,
    wd: WatchDescriptor,
    watcher: Watcher,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watches = self.watcher.watches();
        if let Some(watch) = watches.get_mut(&self.wd) {
            watch.users -= 1;
            if watch.users == 0 {
                watches.remove(&self.wd);
                // EINVAL when the kernel already dropped the watch with its removed cgroup.
                let _ = self.watcher.shared.fd.get_ref().0.rm_watch(self.wd);
            }
        }
    }
}
