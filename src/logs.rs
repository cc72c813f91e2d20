//! arborist's own log output (tracing, text or JSON) and the capture of workers' stdout and
//! stderr, re-emitted line by line as events that carry the worker's path and stream.
//! Capture memory is bounded: a line longer than [`MAX_LINE`] is emitted in pieces.

use tokio::io::{AsyncRead, AsyncReadExt};
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

/// Reads `reader` until EOF and emits each line as an event for `path` on `stream`.
pub async fn capture(mut reader: impl AsyncRead + Unpin, path: String, stream: &'static str) {
    let mut chunk = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for part in chunk[..n].split_inclusive(|&b| b == b'\n') {
            let complete = part.last() == Some(&b'\n');
            let body = if complete {
                &part[..part.len() - 1]
            } else {
                part
            };
            let mut body = body;
            while line.len() + body.len() > MAX_LINE {
                let take = MAX_LINE - line.len();
                line.extend_from_slice(&body[..take]);
                emit(&path, stream, &line, true);
                line.clear();
                body = &body[take..];
            }
            line.extend_from_slice(body);
            if complete {
                emit(&path, stream, &line, false);
                line.clear();
            }
        }
        if line.capacity() > 4 * MAX_LINE {
            line.shrink_to(MAX_LINE);
        }
    }
    if !line.is_empty() {
        emit(&path, stream, &line, false);
    }
}

fn emit(path: &str, stream: &'static str, bytes: &[u8], continued: bool) {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    if continued {
        tracing::info!(target: "worker", path, stream, continued = true, "{text}");
    } else {
        tracing::info!(target: "worker", path, stream, "{text}");
    }
}
