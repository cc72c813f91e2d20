//! Processes that left their worker's session (a daemon that calls `setsid` and double-forks,
//! postgres' backends) and were adopted by arborist, a child subreaper, when their parent
//! died: the process-group fallback's way to own them. Each worker run carries a marker in
//! its environment (`ARBORIST_RUN`), which its descendants inherit; an adopted process is
//! attributed to the run whose marker its environment holds, stopped with that run, and the
//! run counts as stopped only when they are gone too (so a restart waits for them).
//!
//! Finding adopted processes takes a scan of /proc (this kernel may not offer
//! /proc/PID/task/TID/children), which the runtime thread must not do: a scanner thread
//! serves requests in bursts, one scan for every request that arrived meanwhile, so a
//! thousand workers stopping at once cost a few scans, not a thousand.
//!
//! What it cannot do: a process that clears its environment before it is adopted is not
//! attributed to its run (it is still stopped at shutdown, as an adopted stray), and a
//! process that has not been adopted yet (its parent, outside the worker's group, still
//! lives) is found only once its parent dies. cgroup mode has neither gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

/// The environment variable that carries a run's marker.
pub const RUN_VAR: &str = "ARBORIST_RUN";

/// A new run's marker: unique for the life of this arborist (its pid and a counter).
pub fn new_marker() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One scan: every adopted process (a child of arborist it did not spawn) by run marker and
/// by worker path (`ARBORIST_PATH`).
#[derive(Debug, Default)]
pub struct Scan {
    pub by_marker: HashMap<String, Vec<i32>>,
    pub by_path: HashMap<String, Vec<u32>>,
}

type Request = oneshot::Sender<Arc<Scan>>;

static SCANNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
/// The last scan, for `status` (which may take one a second old).
static LAST: Mutex<Option<(std::time::Instant, Arc<Scan>)>> = Mutex::new(None);

/// Starts the scanner thread. Without it, requests are answered by a scan on the caller's
/// thread (a failure to start one is logged by the caller).
pub fn start() -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("adopted".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut burst = vec![first];
                burst.extend(rx.try_iter());
                let found = scan();
                for reply in burst {
                    let _ = reply.send(Arc::clone(&found));
                }
            }
        })?;
    let _ = SCANNER.set(Mutex::new(tx));
    Ok(())
}

/// A scan that began after this call.
pub async fn scan_now() -> Arc<Scan> {
    let (reply, answer) = oneshot::channel();
    let sent = SCANNER.get().is_some_and(|tx| {
        tx.lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(reply)
            .is_ok()
    });
    if !sent {
        return scan();
    }
    answer.await.unwrap_or_default()
}

/// A scan at most `max_age` old.
pub async fn recent_scan(max_age: std::time::Duration) -> Arc<Scan> {
    if let Some((at, scan)) = &*LAST.lock().unwrap_or_else(|p| p.into_inner()) {
        if at.elapsed() <= max_age {
            return Arc::clone(scan);
        }
    }
    scan_now().await
}

/// The adopted processes attributed to the run with `marker`.
pub async fn of_run(marker: &str) -> Vec<i32> {
    scan_now()
        .await
        .by_marker
        .get(marker)
        .cloned()
        .unwrap_or_default()
}

fn scan() -> Arc<Scan> {
    let mut found = Scan::default();
    for pid in super::reap::adopted_children() {
        let Some(vars) = environment(pid) else {
            continue;
        };
        let var = |key: &str| {
            let key = format!("{key}=");
            vars.split(|&b| b == 0)
                .find_map(|v| v.strip_prefix(key.as_bytes()))
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(String::from)
        };
        if let Some(marker) = var(RUN_VAR) {
            found.by_marker.entry(marker).or_default().push(pid);
        }
        if let Some(path) = var("ARBORIST_PATH") {
            found.by_path.entry(path).or_default().push(pid as u32);
        }
    }
    let found = Arc::new(found);
    *LAST.lock().unwrap_or_else(|p| p.into_inner()) =
        Some((std::time::Instant::now(), Arc::clone(&found)));
    found
}

/// A process's environment (NUL-separated). While a process is inside execve the kernel
/// shows an empty environment for a moment: read again, briefly (this runs on the scanner
/// thread, never on the runtime's).
fn environment(pid: i32) -> Option<Vec<u8>> {
    let mut environ = Vec::new();
    for _ in 0..20 {
        environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        if !environ.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Some(environ)
}

/// The run marker in a process's environment, if any.
pub fn marker_of(pid: i32) -> Option<String> {
    let key = format!("{RUN_VAR}=");
    environment(pid)?
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(key.as_bytes()))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_unique_and_carry_arborists_pid() {
        let a = new_marker();
        let b = new_marker();
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{}.", std::process::id())));
    }

    #[test]
    fn a_process_environment_marker_is_read_back() {
        let child = std::process::Command::new("sleep")
            .arg("5")
            .env(RUN_VAR, "42.7")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let marker = marker_of(pid);
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(marker.as_deref(), Some("42.7"));
    }
}
