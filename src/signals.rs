//! The signals arborist acts on, delivered as a stream by signal-hook-tokio. Installed before
//! any child starts, so a SIGTERM that arrives during start-up is never lost; as PID 1 the
//! kernel applies no default action, so these handlers are what makes SIGTERM work there.

use futures_util::StreamExt;
use nix::sys::signal::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_tokio::Signals;

pub struct SignalStream {
    inner: Signals,
}

impl SignalStream {
    pub fn install() -> std::io::Result<SignalStream> {
        Ok(SignalStream {
            inner: Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])?,
        })
    }

    /// The next signal; pends forever if the stream ends (it does not while installed).
    pub async fn next(&mut self) -> Signal {
        loop {
            match self.inner.next().await {
                Some(n) => {
                    if let Ok(sig) = Signal::try_from(n) {
                        return sig;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// SIGINT and SIGTERM ask for a shutdown.
pub fn is_stop_request(sig: Signal) -> bool {
    matches!(sig, Signal::SIGINT | Signal::SIGTERM)
}
