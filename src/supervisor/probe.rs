//! Readiness probes: `tcp` (a connection is accepted) and `exec` (a command exits 0), tried
//! every `interval`, each attempt bounded by `timeout`.

use std::path::Path;

use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{ReadyCheck, ReadySpec};
use crate::process::{group, spawn};

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
                argv,
                env: env.env,
                cwd: env.cwd,
                uid: None,
                gid: None,
                output: spawn::Output::Null,
            };
            let mut child = match spawn::spawn(&launch).await {
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
            let passed = match timeout(spec.timeout, child.wait()).await {
                Ok(Ok(status)) => status.success(),
                _ => {
                    group::signal_group(pid, Signal::SIGKILL);
                    let _ = child.wait().await;
                    false
                }
            };
            // Anything the probe left behind in its group goes too.
            group::signal_group(pid, Signal::SIGKILL);
            passed
        }
        // Rejected by config validation until the notify listener exists.
        ReadyCheck::Http(_) | ReadyCheck::Notify => std::future::pending().await,
    }
}
