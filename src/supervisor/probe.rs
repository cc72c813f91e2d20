//! Readiness probes: `tcp` (a connection is accepted), `exec` (a command exits 0) and `http`
//! (a GET answers 2xx), tried every `interval`, each attempt bounded by `timeout`. (`notify`
//! readiness is a message, not a probe: see `worker` and `notify::workers`.)

use std::path::Path;

use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio::time::timeout;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{HttpUrl, ReadyCheck, ReadySpec};
use crate::process::{group, registry, spawn};

pub(crate) struct ProbeEnv<'a> {
    pub path: &'a str,
    pub env: &'a [(String, String)],
    pub cwd: Option<&'a Path>,
}

/// Returns once the probe passes; never returns otherwise (the caller selects on it).
pub(crate) async fn wait_ready(spec: &ReadySpec, env: &ProbeEnv<'_>) {
    loop {
        if attempt(spec, env).await {
            return;
        }
        tokio::time::sleep(spec.interval).await;
    }
}

async fn attempt(spec: &ReadySpec, env: &ProbeEnv<'_>) -> bool {
    match &spec.check {
        ReadyCheck::Tcp(addr) => matches!(
            timeout(spec.timeout, TcpStream::connect(addr.as_str())).await,
            Ok(Ok(_))
        ),
        ReadyCheck::Exec(argv) => {
            let launch = spawn::Launch {
                argv: argv.clone(),
                env: env.env.to_vec(),
                cwd: env.cwd.map(Path::to_path_buf),
                uid: None,
                gid: None,
                output: spawn::Output::Null,
                // A probe has nothing to save.
                stop_signal: Signal::SIGKILL,
                cgroup_procs: None,
            };
            let mut child = match spawn::spawn(launch).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(
                        path = env.path,
                        "ready probe {}: cannot start: {e}",
                        argv[0]
                    );
                    return false;
                }
            };
            let pid = child.id();
            // Whatever happens, even if this probe is dropped half-way (its worker is being
            // stopped), anything left in the probe's group goes.
            let _cleanup = ProbeGroup(pid);
            match timeout(spec.timeout, child.wait()).await {
                Ok(Ok(status)) => status.success(),
                _ => {
                    group::signal_group(pid, Signal::SIGKILL);
                    let _ = child.wait().await;
                    false
                }
            }
        }
        ReadyCheck::Http(url) => matches!(timeout(spec.timeout, http_ok(url)).await, Ok(true)),
        // Readiness comes from the worker's READY=1, not from a probe.
        ReadyCheck::Notify => std::future::pending().await,
    }
}

/// The process group of an exec probe: killed and forgotten when the attempt ends.
struct ProbeGroup(i32);

impl Drop for ProbeGroup {
    fn drop(&mut self) {
        group::signal_group(self.0, Signal::SIGKILL);
        registry::remove_group(self.0);
    }
}

/// One `GET` with HTTP/1.0 semantics (the server closes the connection after the answer):
/// true when the status line says 2xx. Only the status line is read; a probe needs nothing
/// more, which is why this is a dozen lines rather than an HTTP client crate.
async fn http_ok(url: &HttpUrl) -> bool {
    let Ok(mut stream) = TcpStream::connect((url.host.as_str(), url.port)).await else {
        return false;
    };
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: arborist-probe\r\nConnection: close\r\n\r\n",
        url.path
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() && !head[..len].contains(&b'\n') {
        match stream.read(&mut head[len..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    status_is_2xx(&head[..len])
}

/// `HTTP/1.x 2xx ...`
fn status_is_2xx(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let proto_ok = parts.next().is_some_and(|p| p.starts_with(b"HTTP/"));
    let code = parts.next().unwrap_or_default();
    proto_ok && code.len() == 3 && code[0] == b'2' && code.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::status_is_2xx;

    #[test]
    fn only_2xx_status_lines_pass() {
        assert!(status_is_2xx(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_is_2xx(b"HTTP/1.0 204 No Content\r\n"));
        assert!(!status_is_2xx(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!status_is_2xx(b"HTTP/1.1 301 Moved\r\n"));
        assert!(!status_is_2xx(b"SSH-2.0-OpenSSH\r\n"));
        assert!(!status_is_2xx(b"HTTP/1.1 2000 x"));
        assert!(!status_is_2xx(b""));
    }
}
