//! arborist's own notify socket, for its workers. Every worker gets `NOTIFY_SOCKET` pointing
//! here (and `WATCHDOG_USEC` when it has a `watchdog`), so a program written for systemd's
//! `Type=notify` and `WatchdogSec=` runs unchanged.
//!
//! The socket has SO_PASSCRED: the kernel attaches the sender's PID to every datagram, and
//! the sender's *session* says which worker it belongs to (every worker leads its own session,
//! whose id is the worker's pid). So a worker's helper processes may speak for it, like
//! systemd's `NotifyAccess=all` limited to the worker's session, and nothing outside it can
//! speak for any worker: a process can move itself into another process group only within its
//! own session, and into another session not at all. A sender that exits before arborist
//! reads its datagram can no longer be placed (its session is unknowable) unless it was the
//! worker itself; systemd has the same race.
//!
//! Understood: `READY=1`, `WATCHDOG=1`, `WATCHDOG=trigger`, `WATCHDOG_USEC=`, `STATUS=`.
//! Others (`STOPPING=1`, `MAINPID=`, `ERRNO=`, ...) are ignored; passed descriptors
//! (`FDSTORE=1`) are closed.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials,
};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What a worker said, for the worker task that listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Ready,
    /// `WATCHDOG=1`: alive.
    Alive,
    /// `WATCHDOG=trigger`: the worker asks to be treated as hung.
    Trigger,
    /// `WATCHDOG_USEC=`: a new watchdog period.
    Period(Duration),
}

/// Longest `STATUS=` text kept.
pub const MAX_STATUS: usize = 256;
/// Datagrams larger than this are truncated (systemd's own limit is similar).
const MAX_DATAGRAM: usize = 4096;
/// Notices for groups nobody listens to yet (a worker may speak before its task has
/// registered), kept this long and at most this many.
const EARLY_TTL: Duration = Duration::from_secs(10);
const EARLY_MAX: usize = 256;

#[derive(Default)]
struct Table {
    listeners: HashMap<i32, mpsc::UnboundedSender<Notice>>,
    /// Workers that are running (listening or not), by process group.
    known: HashMap<i32, Option<String>>,
    early: VecDeque<(i32, Instant, Notice, Option<String>)>,
}

static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
static SOCKET_ENV: OnceLock<String> = OnceLock::new();

fn table() -> std::sync::MutexGuard<'static, Table> {
    TABLE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The value of `NOTIFY_SOCKET` for workers, once the socket is open.
pub fn socket_env() -> Option<&'static str> {
    SOCKET_ENV.get().map(String::as_str)
}

/// Removes the socket file when arborist exits.
pub struct SocketGuard(Option<PathBuf>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Opens the socket: a file `<control socket>.notify` when there is a control socket path,
/// else (or if that cannot be bound) the abstract address `@arborist-<pid>.notify`; and
/// starts the task that reads it.
pub fn start(control_socket: Option<&Path>) -> io::Result<SocketGuard> {
    let (socket, env, guard) = bind(control_socket)?;
    setsockopt(&socket, sockopt::PassCred, &true)?;
    socket.set_nonblocking(true)?;
    let socket = UnixDatagram::from_std(socket)?;
    let _ = SOCKET_ENV.set(env);
    tokio::spawn(read_loop(socket));
    Ok(guard)
}

fn bind(control_socket: Option<&Path>) -> io::Result<(StdDatagram, String, SocketGuard)> {
    if let Some(control) = control_socket {
        let mut path = control.as_os_str().to_owned();
        path.push(".notify");
        let path = PathBuf::from(path);
        // The control socket is held exclusively, so a file here is a stale one of ours.
        let _ = std::fs::remove_file(&path);
        match StdDatagram::bind(&path) {
            Ok(socket) => {
                // Workers may run as other users; who may speak is decided by the sender's
                // credentials, not by the file mode.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
                let env = path.to_string_lossy().into_owned();
                return Ok((socket, env, SocketGuard(Some(path))));
            }
            Err(e) => tracing::debug!(
                "cannot bind the notify socket at {}: {e}; using an abstract address",
                path.display()
            ),
        }
    }
    use std::os::linux::net::SocketAddrExt;
    let name = format!("arborist-{}.notify", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let socket = StdDatagram::bind_addr(&addr)?;
    Ok((socket, format!("@{name}"), SocketGuard(None)))
}

/// A worker whose process group is `pgid` started; returns its notices when `listen`.
/// Call right after the spawn: notices that arrived before are handed over.
pub fn register(pgid: i32, listen: bool) -> Option<mpsc::UnboundedReceiver<Notice>> {
    let mut t = table();
    t.known.insert(pgid, None);
    let (tx, rx) = if listen {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let early: Vec<_> = {
        let mut mine = Vec::new();
        t.early.retain(|e| {
            if e.0 == pgid {
                mine.push((e.2.clone(), e.3.clone()));
                false
            } else {
                true
            }
        });
        mine
    };
    for (notice, status) in early {
        if status.is_some() {
            t.known.insert(pgid, status);
        }
        if let Some(tx) = &tx {
            let _ = tx.send(notice);
        }
    }
    if let Some(tx) = tx {
        t.listeners.insert(pgid, tx);
    }
    rx
}

/// The worker with process group `pgid` has ended.
pub fn unregister(pgid: i32) {
    let mut t = table();
    t.listeners.remove(&pgid);
    t.known.remove(&pgid);
}

/// The last `STATUS=` of the worker whose process group is `pgid`.
pub fn status_of(pgid: i32) -> Option<String> {
    table().known.get(&pgid).cloned().flatten()
}

/// A worker's `STATUS=` value as `status` shows it: control characters removed, then secret
/// values redacted (in this order, so that control characters cannot split a secret past the
/// redaction), then cut to [`MAX_STATUS`] bytes on a character boundary.
pub fn status_text(raw: &str) -> String {
    let printable: String = raw.chars().filter(|c| !c.is_control()).collect();
    let mut s = crate::secrets::redact(&printable).into_owned();
    if s.len() > MAX_STATUS {
        let mut end = MAX_STATUS;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

async fn read_loop(socket: UnixDatagram) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        loop {
            let got = socket.try_io(Interest::READABLE, || receive(&socket, &mut buf));
            match got {
                Ok(Some((pid, len))) => deliver(pid, &buf[..len]),
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("notify socket: {e}");
                    break;
                }
            }
        }
    }
}

/// One datagram: the sender's pid and the length read (`None`: no credentials attached).
fn receive(socket: &UnixDatagram, buf: &mut [u8]) -> io::Result<Option<(i32, usize)>> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(UnixCredentials, [std::os::fd::RawFd; 16]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let len = msg.bytes;
    let mut pid = None;
    for cmsg in msg.cmsgs()? {
        match cmsg {
            ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
            ControlMessageOwned::ScmRights(fds) => {
                for fd in fds {
                    // SAFETY: the kernel just installed these descriptors for us.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            _ => {}
        }
    }
    Ok(pid.map(|p| (p, len)))
}

/// Places a datagram with its worker and hands over what it says.
fn deliver(pid: i32, datagram: &[u8]) {
    // Workers are registered by their pid, which is their session's id.
    let pgid = match nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))) {
        Ok(sid) => sid.as_raw(),
        // Gone already: only a worker itself (pid = session id) can still be placed.
        Err(_) => pid,
    };
    let mut notices = Vec::new();
    let mut status = None;
    for (key, value) in super::fields(datagram) {
        match (key, value) {
            ("READY", "1") => notices.push(Notice::Ready),
            ("WATCHDOG", "1") => notices.push(Notice::Alive),
            ("WATCHDOG", "trigger") => notices.push(Notice::Trigger),
            ("WATCHDOG_USEC", v) => {
                if let Ok(usec) = v.trim().parse::<u64>() {
                    if usec > 0 {
                        notices.push(Notice::Period(Duration::from_micros(usec)));
                    }
                }
            }
            ("STATUS", v) => status = Some(status_text(v)),
            _ => {}
        }
    }
    let mut t = table();
    if !t.known.contains_key(&pgid) {
        if pgid <= 1 {
            return;
        }
        // Perhaps a worker whose task has not registered yet.
        let now = Instant::now();
        t.early.retain(|e| now.duration_since(e.1) < EARLY_TTL);
        let items: Vec<_> = if notices.is_empty() {
            vec![(Notice::Alive, status)]
        } else {
            notices.into_iter().map(|n| (n, status.clone())).collect()
        };
        for (n, s) in items {
            if t.early.len() >= EARLY_MAX {
                t.early.pop_front();
            }
            t.early.push_back((pgid, now, n, s));
        }
        return;
    }
    if let Some(s) = status {
        t.known.insert(pgid, Some(s));
    }
    if let Some(tx) = t.listeners.get(&pgid) {
        for n in notices {
            let _ = tx.send(n);
        }
    }
}
