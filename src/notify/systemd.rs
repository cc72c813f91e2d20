//! Towards the service manager, when `NOTIFY_SOCKET` is set (systemd's `Type=notify`):
//! `READY=1` once the root is ready, `STATUS=` with worker counts, `RELOADING=1` (with
//! `MONOTONIC_USEC`) then `READY=1` around a reload, `STOPPING=1` at shutdown,
//! `EXTEND_TIMEOUT_USEC` while the shutdown is still within its deadlines, and `WATCHDOG=1` at
//! half of `WATCHDOG_USEC`. Messages are best effort: a manager that went away must not
//! disturb the tree. Path and abstract (`@name`) socket addresses are supported.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::time::Duration;

struct Manager {
    socket: UnixDatagram,
    addr: SocketAddr,
}

static MANAGER: OnceLock<Option<Manager>> = OnceLock::new();

/// Reads `NOTIFY_SOCKET` once. Returns the address when there is a manager to talk to.
pub fn init() -> io::Result<Option<String>> {
    let Some(raw) = std::env::var_os("NOTIFY_SOCKET") else {
        let _ = MANAGER.set(None);
        return Ok(None);
    };
    let text = raw.to_string_lossy().into_owned();
    let manager = connect(&text);
    let result = match &manager {
        Ok(_) => Ok(Some(text)),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("NOTIFY_SOCKET={text}: {e}"),
        )),
    };
    let _ = MANAGER.set(manager.ok());
    result
}

fn connect(text: &str) -> io::Result<Manager> {
    let addr = address(text)?;
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok(Manager { socket, addr })
}

/// `/path` or `@abstract`, as systemd passes it.
pub fn address(text: &str) -> io::Result<SocketAddr> {
    if let Some(name) = text.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if text.starts_with('/') {
        SocketAddr::from_pathname(text)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a unix socket path or @abstract name",
        ))
    }
}

pub fn enabled() -> bool {
    MANAGER.get().is_some_and(Option::is_some)
}

/// Sends one message (newline-separated `KEY=VALUE` lines).
pub fn send(message: &str) {
    let Some(Some(m)) = MANAGER.get() else { return };
    if let Err(e) = m.socket.send_to_addr(message.as_bytes(), &m.addr) {
        tracing::debug!("sd_notify: cannot send {message:?}: {e}");
    }
}

/// One `STATUS=` line: no newlines inside.
fn status_line(status: &str) -> String {
    format!("STATUS={}", status.replace('\n', " "))
}

pub fn ready(status: &str) {
    send(&format!("READY=1\n{}", status_line(status)));
}

pub fn status(status: &str) {
    send(&status_line(status));
}

pub fn reloading() {
    send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\n{}",
        monotonic_usec(),
        status_line("reloading")
    ));
}

/// `STOPPING=1`, with the time the stop may take from now.
pub fn stopping(status: &str, within: Duration) {
    send(&format!(
        "STOPPING=1\nEXTEND_TIMEOUT_USEC={}\n{}",
        within.as_micros(),
        status_line(status)
    ));
}

/// Asks the manager to allow `more` beyond now before it gives up on the stop.
pub fn extend_timeout(more: Duration) {
    send(&format!("EXTEND_TIMEOUT_USEC={}", more.as_micros()));
}

fn monotonic_usec() -> u128 {
    // CLOCK_MONOTONIC, the clock systemd compares MONOTONIC_USEC with.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::from(t).as_micros())
        .unwrap_or(0)
}

/// The manager's watchdog period, if it asked for keep-alives (`WATCHDOG_USEC`, and
/// `WATCHDOG_PID` unset or ours).
pub fn watchdog_period() -> Option<Duration> {
    if !enabled() {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` at half the manager's period for as long as the runtime runs. The
/// keep-alive comes from the runtime thread, so a wedged event loop stops it, which is the
/// point.
pub fn start_watchdog() -> Option<Duration> {
    let period = watchdog_period()?;
    let every = (period / 2).max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            send("WATCHDOG=1");
        }
    });
    Some(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert!(address("/run/systemd/notify")
            .unwrap()
            .as_pathname()
            .is_some());
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(
            address("@sd/notify").unwrap().as_abstract_name(),
            Some(&b"sd/notify"[..])
        );
        assert!(address("vsock:2:1234").is_err());
        assert!(address("relative").is_err());
    }
}
