//! The daemon's end of the control socket. Each connection is its own task, so a client that
//! connects and never writes blocks nobody. Requests are bounded in size; a malformed one gets
//! an error reply and the connection stays usable. `status` is answered from the status board
//! directly; everything else goes to the tree controller as a typed [`Command`], and its typed
//! [`Reply`] is turned into the wire reply here: the wire format ends at this module.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::protocol::{parse_request, DaemonInfo, Request, Response, MAX_REQUEST};
use crate::status::{DaemonState, StatusBoard};
use crate::supervisor::command::{Command, ControlRequest, Reply};

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another arborist is already running on {0} (stop it first, or pass --socket)")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it (pass another --socket)")]
    NotASocket(PathBuf),
    #[error("cannot create the control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Removes the socket file when the daemon exits.
pub struct SocketGuard {
    path: PathBuf,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket with mode 0600. A socket file nobody answers on (left by a crashed run)
/// is replaced; one a live daemon answers on is an error.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketGuard), BindError> {
    let io_err = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(path.to_path_buf()));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                warn!(socket = %path.display(), "replacing a stale control socket left by an earlier run");
                std::fs::remove_file(path).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    // The socket is created with the umask's mode; make it 0600 from the first instant.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok((
        listener,
        SocketGuard {
            path: path.to_path_buf(),
        },
    ))
}

/// What `status` says about the daemon itself.
pub struct Daemon {
    pub config: String,
    pub started: Instant,
    pub state: watch::Receiver<DaemonState>,
    /// How workers' processes are owned (cgroup mode or the fallback).
    pub ownership: crate::process::owned::Mode,
}

pub async fn serve(
    listener: UnixListener,
    requests: mpsc::UnboundedSender<ControlRequest>,
    board: StatusBoard,
    daemon: Arc<Daemon>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let requests = requests.clone();
                let board = board.clone();
                let daemon = Arc::clone(&daemon);
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, requests, board, daemon).await {
                        debug!("control connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                // EMFILE and the like: keep serving the connections we have.
                warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Only arborist's own user and root may use the socket (SO_PEERCRED), whatever the file's
/// mode says: the 0600 mode is the first guard, this the second (a socket directory made
/// group-accessible by mistake, or a descriptor passed to another process).
fn may_steer(stream: &UnixStream) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == me || cred.uid() == 0 => Ok(()),
        Ok(cred) => {
            warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "control socket: refused a client running as uid {} (only uid {me} or root may use it)",
                cred.uid()
            );
            Err(format!(
                "permission denied: uid {} may not use this arborist (only uid {me} or root)",
                cred.uid()
            ))
        }
        Err(e) => Err(format!(
            "permission denied: cannot read the peer's credentials: {e}"
        )),
    }
}

async fn connection(
    stream: UnixStream,
    requests: mpsc::UnboundedSender<ControlRequest>,
    board: StatusBoard,
    daemon: Arc<Daemon>,
) -> io::Result<()> {
    if let Err(refusal) = may_steer(&stream) {
        let (_, mut write) = stream.into_split();
        send(&mut write, &Response::error(refusal)).await?;
        return Ok(());
    }
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_REQUEST {
            let reply = Response::error(format!(
                "request too large (limit {} KiB); closing the connection",
                MAX_REQUEST / 1024
            ));
            send(&mut write, &reply).await?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let reply = match parse_request(&text).map(command) {
            Err(e) => Response::error(e),
            Ok(None) => status(&board, &daemon).await,
            Ok(Some(command)) => response(ask(&requests, command).await),
        };
        send(&mut write, &reply).await?;
    }
}

/// The tree controller's command for a request; `status` has none, it is answered here.
fn command(request: Request) -> Option<Command> {
    Some(match request {
        Request::Status => return None,
        Request::Start { path } => Command::Start { path },
        Request::Stop { path } => Command::Stop { path },
        Request::Restart { path } => Command::Restart { path },
        Request::Reload => Command::Reload,
        Request::Shutdown => Command::Shutdown,
    })
}

/// Hands `command` to the tree controller and waits for its reply.
async fn ask(requests: &mpsc::UnboundedSender<ControlRequest>, command: Command) -> Reply {
    let exiting = || Reply::Refused("arborist is exiting".into());
    let (tx, rx) = oneshot::channel();
    if requests
        .send(ControlRequest { command, reply: tx })
        .is_err()
    {
        return exiting();
    }
    rx.await.unwrap_or_else(|_| exiting())
}

/// The wire reply for the tree's answer (docs/control.md).
fn response(reply: Reply) -> Response {
    match reply {
        Reply::Done { message, records } => Response {
            report: Some(records),
            ..Response::message(message)
        },
        Reply::Reloaded { summary } => Response {
            diff: Some(summary),
            ..Response::message("reloaded")
        },
        Reply::ReloadRejected { errors } => Response {
            errors,
            ..Response::error("invalid configuration: the tree runs on unchanged")
        },
        Reply::ShuttingDown => Response::message("shutting down"),
        Reply::Refused(why) => Response::error(why),
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Response) -> io::Result<()> {
    let mut text = serde_json::to_string(reply).map_err(io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// How old the scan of adopted processes that `status` shows may be: a scan reads /proc, so
/// a burst of `status` requests shares one.
const ADOPTED_SCAN_AGE: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn status(board: &StatusBoard, daemon: &Daemon) -> Response {
    let mut nodes = board.snapshot().await;
    let adopted = crate::process::adopted::recent_scan(ADOPTED_SCAN_AGE).await;
    if !adopted.by_path.is_empty() {
        for n in &mut nodes {
            if let Some(pids) = adopted.by_path.get(&n.path) {
                n.adopted = pids.clone();
            }
        }
    }
    Response {
        ok: true,
        nodes: Some(nodes),
        daemon: Some(DaemonInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            config: daemon.config.clone(),
            uptime_ms: crate::report::millis(daemon.started.elapsed()),
            state: *daemon.state.borrow(),
            ownership: Some(daemon.ownership),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::ReloadSummary;
    use crate::report::{NodeType, StopOutcome, StopRecord};

    fn wire(reply: Reply) -> String {
        serde_json::to_string(&response(reply)).unwrap()
    }

    #[test]
    fn every_verb_but_status_becomes_a_command() {
        assert_eq!(command(Request::Status), None);
        assert_eq!(
            command(Request::Restart { path: "db".into() }),
            Some(Command::Restart { path: "db".into() })
        );
        assert_eq!(command(Request::Shutdown), Some(Command::Shutdown));
    }

    #[test]
    fn replies_keep_their_wire_form() {
        let record = StopRecord {
            path: "db".into(),
            kind: NodeType::Worker,
            pid: Some(4250),
            signal: Some("SIGTERM".into()),
            deadline_ms: 6000,
            took_ms: 302,
            outcome: StopOutcome::Met,
            exit: None,
            adopted: Vec::new(),
        };
        assert_eq!(
            wire(Reply::Done {
                message: "restarted db".into(),
                records: vec![record],
            }),
            r#"{"ok":true,"message":"restarted db","report":[{"path":"db","kind":"worker","pid":4250,"signal":"SIGTERM","deadline_ms":6000,"took_ms":302,"outcome":"met"}]}"#
        );
        let summary = ReloadSummary {
            scaled: vec!["g/w: 2 -> 3".into()],
            unchanged: 2,
            ..Default::default()
        };
        assert_eq!(
            wire(Reply::Reloaded { summary }),
            r#"{"ok":true,"message":"reloaded","diff":{"added":[],"removed":[],"changed":[],"scaled":["g/w: 2 -> 3"],"updated":[],"unchanged":2}}"#
        );
        assert_eq!(
            wire(Reply::ReloadRejected {
                errors: vec!["a.yaml: 1 error found".into()]
            }),
            r#"{"ok":false,"error":"invalid configuration: the tree runs on unchanged","errors":["a.yaml: 1 error found"]}"#
        );
        assert_eq!(
            wire(Reply::ShuttingDown),
            r#"{"ok":true,"message":"shutting down"}"#
        );
        assert_eq!(
            wire(Reply::Refused("no such node: x".into())),
            r#"{"ok":false,"error":"no such node: x"}"#
        );
    }
}
