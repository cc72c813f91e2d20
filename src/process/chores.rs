//! A background thread for housekeeping that would otherwise sit on the runtime thread's
//! critical path: closing the pipe ends of workers that exited (freeing a pipe costs more
//! than reading it) and writing to the guardian. At shutdown a thousand workers exit at
//! once, and the runtime thread has to reap and account for each; these chores then run on
//! the other core. Requests are batched: one wake-up of the thread per burst.

use std::os::fd::OwnedFd;
use std::sync::{mpsc, Mutex, OnceLock};

type Chore = Box<dyn FnOnce() + Send>;

static CHORES: OnceLock<Mutex<mpsc::Sender<Chore>>> = OnceLock::new();

/// Starts the chores thread. Until then (or if it cannot start) chores run inline.
pub fn start() -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<Chore>();
    std::thread::Builder::new()
        .name("chores".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            while let Ok(chore) = rx.recv() {
                chore();
            }
        })?;
    let _ = CHORES.set(Mutex::new(tx));
    Ok(())
}

/// Runs `chore` on the chores thread, or here if there is none.
pub fn run(chore: Chore) {
    let chore = match CHORES.get() {
        Some(tx) => match tx.lock().unwrap_or_else(|p| p.into_inner()).send(chore) {
            Ok(()) => return,
            Err(mpsc::SendError(chore)) => chore,
        },
        None => chore,
    };
    chore();
}

static TO_CLOSE: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// Closes `fd` on the chores thread.
pub fn close(fd: OwnedFd) {
    let mut pending = TO_CLOSE.lock().unwrap_or_else(|p| p.into_inner());
    let first = pending.is_empty();
    pending.push(fd);
    drop(pending);
    if first {
        run(Box::new(|| {
            let batch = std::mem::take(&mut *TO_CLOSE.lock().unwrap_or_else(|p| p.into_inner()));
            drop(batch);
        }));
    }
}

/// Gives the allocator's free memory back to the kernel, on the chores thread. Starting a
/// tree (each spawn builds its argv and environment) or applying a reload frees a burst of
/// small blocks scattered through the heap; glibc keeps those pages in the process for good
/// unless asked, and a supervisor's resident memory is what it stays at for months.
pub fn trim_heap() {
    run(Box::new(|| {
        // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0);
        }
    }));
}
