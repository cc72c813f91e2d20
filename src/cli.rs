//! The command line (SPEC §1). Parsing only; `main` dispatches.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::logs::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "arborist",
    version,
    about = "A service supervisor: runs a YAML task tree and shuts it down top-down, level by level, within per-level deadlines."
)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `debug,arborist=trace` (overrides RUST_LOG).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Control socket [default: the config's control_socket, else $XDG_RUNTIME_DIR/arborist.sock, else /run/arborist.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the tree in the foreground until SIGINT/SIGTERM.
    Run {
        /// Config file [default: $ARBORIST_CONFIG, then /etc/arborist/arborist.yaml]
        config: Option<PathBuf>,
        /// Also write the shutdown report as JSON to this file.
        #[arg(long, value_name = "FILE")]
        shutdown_report: Option<PathBuf>,
    },
    /// Validate a config and print the resolved tree; exit 0, or 2 on errors. Starts nothing.
    Check {
        config: PathBuf,
        /// Also print the shutdown plan: stop waves per level, effective deadlines, worst case.
        #[arg(long)]
        plan: bool,
        /// Exit 1 if the worst-case shutdown exceeds DURATION (e.g. a pod's grace period).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        budget: Option<Duration>,
        /// Also check the systemd unit that runs this tree (`-`: read it from stdin, e.g. from
        /// `systemctl cat arborist`): warn when its TimeoutStopSec= is shorter than the
        /// worst-case shutdown plus 5s, and about Type=, KillMode=, KillSignal=, ExecReload=.
        /// Warnings keep the exit code 0; an unreadable unit file exits 2.
        #[arg(long, value_name = "UNIT")]
        systemd: Option<PathBuf>,
    },
    /// Show the running tree: each node's state, pid, uptime, restarts, last exit.
    Status {
        /// Print the reply as JSON (schema in docs/control.md).
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped node (a worker, a replica `name#i`, or a group) of the running tree.
    Start { path: String },
    /// Stop a node gracefully, with its deadlines and stop order; it stays stopped.
    Stop { path: String },
    /// Stop a node gracefully, then start it again.
    Restart { path: String },
    /// Re-read the config and apply the difference (same as SIGHUP).
    Reload,
    /// Shut the whole tree down (same as SIGTERM).
    Shutdown,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 30s, 1m30s)"))
}

pub fn default_config() -> PathBuf {
    std::env::var_os("ARBORIST_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/arborist/arborist.yaml"))
}
