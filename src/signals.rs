//! The signals arborist acts on, delivered as a stream by signal-hook-tokio, with the sender
//! of each (so the log can say who asked for a shutdown). Installed before any child starts,
//! so a SIGTERM that arrives during start-up is never lost; as PID 1 the kernel applies no
//! default action, so these handlers are what makes SIGTERM work there.

use std::fmt;

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
                        return Received {
                            signal,
                            sender: origin.process.map(|p| p.pid),
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
