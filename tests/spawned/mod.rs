//! `arborist` started by a test itself, for what the shared harness cannot express: an
//! environment of the test's choosing (ARBORIST_CONFIG, RUST_LOG), no CONFIG argument, or a
//! wrapper that changes a resource limit first. Output goes to files, so a full pipe never
//! blocks arborist; the process group is SIGKILLed on drop if it is still running.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::support::{exit_code, wait_for, BIN};

/// A command for `program` with the same hygiene as the harness: no inherited RUST_LOG,
/// NOTIFY_SOCKET or ARBORIST_CONFIG, stdin from /dev/null, its own process group.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("ARBORIST_CONFIG")
        .stdin(Stdio::null())
        .process_group(0);
    cmd
}

/// A command for the arborist binary.
pub fn arborist() -> Command {
    command(BIN)
}

pub struct Spawned {
    pub child: Child,
    pub stderr: PathBuf,
    pub stdout: PathBuf,
    code: Option<i32>,
}

impl Spawned {
    /// Spawns `cmd` with stderr into `dir/<name>.err` and stdout into `dir/<name>.out`.
    pub fn start(mut cmd: Command, dir: &Path, name: &str) -> Spawned {
        let stderr = dir.join(format!("{name}.err"));
        let stdout = dir.join(format!("{name}.out"));
        cmd.stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"))
            // Each daemon gets its own default control socket, in the test's own dir.
            .env("XDG_RUNTIME_DIR", dir);
        let child = cmd.spawn().expect("spawn");
        Spawned {
            child,
            stderr,
            stdout,
            code: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str, limit: Duration) {
        wait_for(&format!("log {needle:?}"), limit, || {
            self.log().contains(needle).then_some(())
        })
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal");
    }

    /// Waits for the exit; returns the exit code (128+N for a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> i32 {
        if let Some(c) = self.code {
            return c;
        }
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if start.elapsed() > limit {
                panic!("did not exit within {limit:?}; log:\n{}", self.log());
            }
            // polling interval of a bounded wait
            std::thread::sleep(Duration::from_millis(5));
        };
        let code = exit_code(status);
        self.code = Some(code);
        code
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.code.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
