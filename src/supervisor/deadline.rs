//! Stop deadlines that can only be tightened. A stop request carries a [`Deadline`], the
//! receiving end of a watch whose sender ([`DeadlineHandle`]) stays with whoever asked for
//! the stop. When a tighter stop arrives while a node is already stopping under a longer
//! deadline (a shutdown during an operator stop, a second SIGTERM), the asker tightens the
//! handle and every wait bounded by it wakes at once: deadlines are hard, however many things
//! happen at once (SPEC §3 "Deadlines are hard").
//!
//! A watch is allocated per stop, never per running node, so a pool of 1000 idle workers
//! pays nothing for it.

use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// The asker's end: tightens, never loosens.
#[derive(Debug)]
pub(crate) struct DeadlineHandle {
    tx: watch::Sender<Instant>,
}

impl DeadlineHandle {
    pub fn new(at: Instant) -> (DeadlineHandle, Deadline) {
        let (tx, rx) = watch::channel(at);
        (DeadlineHandle { tx }, Deadline { rx })
    }

    /// Moves the deadline to `at` if that is earlier; a later `at` changes nothing.
    pub fn tighten(&self, at: Instant) {
        self.tx.send_if_modified(|d| {
            let earlier = at < *d;
            if earlier {
                *d = at;
            }
            earlier
        });
    }

    #[cfg(test)]
    pub fn at(&self) -> Instant {
        *self.tx.borrow()
    }
}

/// The stopping node's end: the current deadline, and a wait that follows every tightening.
#[derive(Debug, Clone)]
pub(crate) struct Deadline {
    rx: watch::Receiver<Instant>,
}

impl Deadline {
    /// A deadline nobody else can move.
    pub fn fixed(at: Instant) -> Deadline {
        // The sender is dropped at once: `changed` then fails, and the value stays.
        let (_, rx) = watch::channel(at);
        Deadline { rx }
    }

    pub fn at(&self) -> Instant {
        *self.rx.borrow()
    }

    /// Waits until `min(deadline, cap)` has passed, following every tightening.
    pub async fn passed(&mut self, cap: Instant) {
        loop {
            let at = self.at().min(cap);
            if Instant::now() >= at {
                return;
            }
            tokio::select! {
                _ = sleep_until(at) => return,
                changed = self.rx.changed() => if changed.is_err() {
                    // The asker is gone: the deadline can no longer move.
                    let at = self.at().min(cap);
                    sleep_until(at).await;
                    return;
                },
            }
        }
    }

    /// Takes the current value as seen, so a clone waits for the next tightening only.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Waits for the next tightening (never returns if the asker is gone).
    pub async fn tightened(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_tightened_deadline_wakes_the_waiter_at_the_new_time() {
        let start = Instant::now();
        let (handle, mut deadline) = DeadlineHandle::new(start + Duration::from_secs(8));
        let waiter = tokio::spawn(async move {
            deadline.passed(start + Duration::from_secs(10)).await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        handle.tighten(start + Duration::from_secs(2));
        let woke = waiter.await.unwrap();
        assert_eq!(woke - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_never_loosens_it() {
        let start = Instant::now();
        let (handle, mut deadline) = DeadlineHandle::new(start + Duration::from_secs(2));
        handle.tighten(start + Duration::from_secs(9));
        assert_eq!(handle.at(), start + Duration::from_secs(2));
        deadline.passed(start + Duration::from_secs(60)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_bounds_the_wait_when_it_is_earlier() {
        let start = Instant::now();
        let (_handle, mut deadline) = DeadlineHandle::new(start + Duration::from_secs(30));
        deadline.passed(start + Duration::from_secs(1)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_handle_freezes_the_deadline() {
        let start = Instant::now();
        let (handle, mut deadline) = DeadlineHandle::new(start + Duration::from_secs(3));
        drop(handle);
        deadline.passed(start + Duration::from_secs(10)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
    }
}
