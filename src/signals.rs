//! The signals arborist acts on, delivered as a stream by signal-hook-tokio, with the sender
//! of each (so the log can say who asked for a shutdown). Installed before any child starts,
//! so a SIGTERM that arrives during start-up is never lost; as PID 1 the kernel applies no
//! default action, so these handlers are what makes SIGTERM work there.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use nix::sys::signal::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook_tokio::SignalsInfo;

pub struct SignalStream {
    inner: SignalsInfo<WithOrigin>,
}

/// A received signal and, when the kernel says, the process that sent it.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub signal: Signal,
    pub sender: Option<i32>,
    /// When the signal reached arborist (its handler ran), which may be earlier than when
    /// the runtime got to it: a stop's deadlines count from here (SPEC §3).
    pub at: tokio::time::Instant,
}

/// CLOCK_MONOTONIC (the clock of `Instant`) in nanoseconds when the last SIGINT or SIGTERM
/// arrived, written by the signal handler itself.
static STOP_RECEIVED_NS: AtomicU64 = AtomicU64::new(0);

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime is async-signal-safe and only writes `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// When the stop signal being handled now was received: the handler's stamp, unless it is
/// stale (then now).
fn stop_received_at() -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let stamp = STOP_RECEIVED_NS.load(Ordering::Relaxed);
    let ago = monotonic_ns().saturating_sub(stamp);
    if stamp == 0 || ago > 10_000_000_000 {
        return now;
    }
    now.checked_sub(Duration::from_nanos(ago)).unwrap_or(now)
}

impl fmt::Display for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.signal.as_str())?;
        if let Some(pid) = self.sender.filter(|&p| p > 0) {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let name = name.trim();
            if name.is_empty() {
                write!(f, " from pid {pid}")?;
            } else {
                write!(f, " from pid {pid} ({name})")?;
            }
        }
        Ok(())
    }
}

impl SignalStream {
    pub fn install() -> std::io::Result<SignalStream> {
        for sig in [SIGINT, SIGTERM] {
            // SAFETY: the action only reads the clock and stores an atomic, both
            // async-signal-safe.
            unsafe {
                signal_hook::low_level::register(sig, || {
                    STOP_RECEIVED_NS.store(monotonic_ns(), Ordering::Relaxed)
                })?;
            }
        }
        Ok(SignalStream {
            inner: SignalsInfo::<WithOrigin>::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])?,
        })
    }

    /// The next signal; pends forever if the stream ends (it does not while installed).
    pub async fn next(&mut self) -> Received {
        loop {
            match self.inner.next().await {
                Some(origin) => {
                    if let Ok(signal) = Signal::try_from(origin.signal) {
                        let at = if matches!(signal, Signal::SIGINT | Signal::SIGTERM) {
                            stop_received_at()
                        } else {
                            tokio::time::Instant::now()
                        };
                        return Received {
                            signal,
                            sender: origin.process.map(|p| p.pid),
                            at,
                        };
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// SIGINT and SIGTERM ask for a shutdown.
pub fn is_stop_request(r: &Received) -> bool {
    matches!(r.signal, Signal::SIGINT | Signal::SIGTERM)
}
