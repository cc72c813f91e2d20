//! The CLI's end of the control socket: one request, one reply, printed for a person (or as
//! JSON for `status --json`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::protocol::{Request, Response};
use crate::report::StopOutcome;
use crate::status::render_text;

/// Sends `request` and waits for the reply. Status answers at once; a stop may take as long
/// as the node's deadline, so other verbs wait without a limit.
pub fn call(socket: &Path, request: &Request) -> Result<Response, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is arborist running? pass --socket or set control_socket)",
            socket.display()
        )
    })?;
    if *request == Request::Status {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    }
    let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("cannot send to {}: {e}", socket.display()))?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(|e| format!("no reply from {}: {e}", socket.display()))?;
    if reply.is_empty() {
        return Err(format!(
            "{} closed the connection without a reply",
            socket.display()
        ));
    }
    serde_json::from_str(&reply).map_err(|e| format!("unreadable reply: {e}"))
}

/// Prints a reply; returns the process exit code (0 ok, 1 refused).
pub fn print(request: &Request, reply: &Response, json: bool) -> u8 {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(reply).unwrap_or_default()
        );
        return if reply.ok { 0 } else { 1 };
    }
    if !reply.ok {
        eprintln!(
            "arborist: {}",
            reply.error.as_deref().unwrap_or("request refused")
        );
        for e in &reply.errors {
            eprintln!("{e}");
        }
        return 1;
    }
    if let (Request::Status, Some(nodes)) = (request, &reply.nodes) {
        if let Some(d) = &reply.daemon {
            let ownership = match d.ownership {
                Some(crate::process::owned::Mode::Cgroup) => ", processes owned by cgroup",
                Some(crate::process::owned::Mode::ProcessGroups) => {
                    ", processes owned by process group"
                }
                None => "",
            };
            println!(
                "arborist {} (pid {}) {} for {}, config {}{ownership}",
                d.version,
                d.pid,
                d.state,
                humantime::format_duration(Duration::from_secs(d.uptime_ms / 1000)),
                d.config
            );
        }
        print!("{}", render_text(nodes));
        return 0;
    }
    if let Some(m) = &reply.message {
        println!("{m}");
    }
    if let Some(diff) = &reply.diff {
        for (key, items) in [
            ("added", &diff.added),
            ("removed", &diff.removed),
            ("changed", &diff.changed),
            ("scaled", &diff.scaled),
            ("updated", &diff.updated),
        ] {
            if !items.is_empty() {
                println!("  {key}: {}", items.join(", "));
            }
        }
        println!("  unchanged workers: {}", diff.unchanged);
    }
    if let Some(report) = &reply.report {
        for r in report {
            let (path, took, deadline) = (&r.path, r.took_ms, r.deadline_ms);
            match r.outcome {
                StopOutcome::NotRunning => println!("  {path}: was not running"),
                StopOutcome::Killed => {
                    println!("  {path}: KILLED at its {deadline}ms deadline (after {took}ms)")
                }
                StopOutcome::Met => {
                    println!("  {path}: stopped in {took}ms (deadline {deadline}ms)")
                }
            }
        }
    }
    0
}
