//! arborist's own log output (tracing, text or JSON) and the capture of workers' stdout and
//! stderr, re-emitted line by line as events that carry the worker's path and stream.
//! Capture memory is bounded: a line longer than [`MAX_LINE`] is emitted in pieces.

use std::os::fd::OwnedFd;

use tokio::net::unix::pipe;
use tracing_subscriber::EnvFilter;

/// Longest line re-emitted as one event; longer output is split, never buffered unbounded.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `level` wins over RUST_LOG; the default is `info`.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| format!("invalid --log-level '{l}': {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(())
}

/// Bytes read from a pipe per wake-up before the capture task yields, so that a worker
/// flooding its stdout cannot starve signal handling or other workers.
const READ_BUDGET: usize = 16;

thread_local! {
    /// One read buffer for every capture task: arborist runs a current-thread runtime and a
    /// capture task never holds it across an await, so 1000 workers cost one buffer, not
    /// 2000.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

/// A worker's output pipe being captured: only a partial line is kept per pipe.
struct Stream {
    pipe: Option<pipe::Receiver>,
    name: &'static str,
    partial: Vec<u8>,
}

/// Re-emits the lines of a worker's stdout and stderr as events for `path`, until both
/// pipes reach EOF.
pub async fn capture(stdout: Option<OwnedFd>, stderr: Option<OwnedFd>, path: String) {
    let open = |fd: Option<OwnedFd>, name| Stream {
        pipe: fd.and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok()),
        name,
        partial: Vec::new(),
    };
    let mut streams = [open(stdout, "stdout"), open(stderr, "stderr")];
    loop {
        let [out, err] = &mut streams;
        let ready = tokio::select! {
            r = readable(&out.pipe), if out.pipe.is_some() => r.map(|_| 0),
            r = readable(&err.pipe), if err.pipe.is_some() => r.map(|_| 1),
            else => break,
        };
        match ready {
            Ok(i) => drain(&mut streams[i], &path),
            Err(_) => break,
        }
        tokio::task::yield_now().await;
    }
    for s in &mut streams {
        flush(s, &path);
    }
}

async fn readable(pipe: &Option<pipe::Receiver>) -> std::io::Result<()> {
    match pipe {
        Some(p) => p.readable().await,
        None => std::future::pending().await,
    }
}

/// Reads what is there (up to the budget) and emits complete lines.
fn drain(stream: &mut Stream, path: &str) {
    for _ in 0..READ_BUDGET {
        let Some(pipe) = &stream.pipe else { return };
        let result = SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            let r = pipe.try_read(&mut buf);
            if let Ok(n) = r {
                split_lines(&buf[..n], &mut stream.partial, path, stream.name);
            }
            r
        });
        match result {
            Ok(0) => {
                flush(stream, path);
                retire(stream.pipe.take());
                return;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                flush(stream, path);
                retire(stream.pipe.take());
                return;
            }
        }
    }
}

/// Closes a finished pipe off the runtime thread (see `process::chores`).
fn retire(pipe: Option<pipe::Receiver>) {
    if let Some(fd) = pipe.and_then(|p| p.into_nonblocking_fd().ok()) {
        crate::process::chores::close(fd);
    }
}

fn flush(stream: &mut Stream, path: &str) {
    if !stream.partial.is_empty() {
        emit(path, stream.name, &stream.partial, false);
        stream.partial = Vec::new();
    }
}

/// Emits every complete line of `chunk`, joined to what `partial` holds from before; keeps
/// the unfinished tail in `partial`, never more than [`MAX_LINE`] bytes of it.
fn split_lines(chunk: &[u8], partial: &mut Vec<u8>, path: &str, stream: &'static str) {
    for part in chunk.split_inclusive(|&b| b == b'\n') {
        let complete = part.last() == Some(&b'\n');
        let mut body = if complete {
            &part[..part.len() - 1]
        } else {
            part
        };
        while partial.len() + body.len() > MAX_LINE {
            let take = MAX_LINE - partial.len();
            if partial.is_empty() {
                emit(path, stream, &body[..take], true);
            } else {
                partial.extend_from_slice(&body[..take]);
                emit(path, stream, partial, true);
                partial.clear();
            }
            body = &body[take..];
        }
        if complete {
            if partial.is_empty() {
                emit(path, stream, body, false);
            } else {
                partial.extend_from_slice(body);
                emit(path, stream, partial, false);
                partial.clear();
            }
        } else {
            partial.extend_from_slice(body);
        }
    }
    if partial.is_empty() && partial.capacity() > 0 {
        *partial = Vec::new();
    }
}

fn emit(path: &str, stream: &'static str, bytes: &[u8], continued: bool) {
    let text = String::from_utf8_lossy(bytes);
    let text = crate::secrets::redact(&text);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    if continued {
        tracing::info!(target: "worker", path, stream, continued = true, "{text}");
    } else {
        tracing::info!(target: "worker", path, stream, "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_lines_are_kept_and_long_ones_split() {
        let mut partial = Vec::new();
        split_lines(b"one\ntw", &mut partial, "p", "stdout");
        assert_eq!(partial, b"tw");
        split_lines(b"o\n", &mut partial, "p", "stdout");
        assert!(partial.is_empty() && partial.capacity() == 0);
        let long = vec![b'a'; MAX_LINE * 2 + 10];
        split_lines(&long, &mut partial, "p", "stdout");
        assert_eq!(partial.len(), 10);
    }
}
