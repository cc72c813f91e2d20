//! Located configuration errors: every error names the file, line, column and node path, and
//! a file's errors are reported together, like a compiler's.

use std::fmt;
use std::path::PathBuf;

use super::locate::Pos;
use super::schema::display_path;

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub pos: Option<Pos>,
    /// Node path, empty for the root.
    pub node: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.pos {
            Some(p) => write!(f, "{file}:{}:{}: ", p.line, p.col)?,
            None => write!(f, "{file}: ")?,
        }
        write!(f, "{}: {}", display_path(&self.node), self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_all(.0))]
    Invalid(Vec<ConfigError>),
    /// Running as root, arborist runs what the file says as any user: like sshd's
    /// StrictModes, it refuses a file that someone other than root could have changed.
    #[error("{}: refusing to use it as root: {reason}; nothing was started", path.display())]
    Insecure { path: PathBuf, reason: String },
    /// The read (or a user look-up while validating) did not finish in time: a FIFO, a hung
    /// mount, a stalled name service.
    #[error("{}: not read within {}: is it a FIFO, or on a hung mount?", path.display(), humantime::format_duration(*limit))]
    TimedOut {
        path: PathBuf,
        limit: std::time::Duration,
    },
    #[error("{}: cannot start a thread to read it: {source}", path.display())]
    NoThread {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn render_all(errors: &[ConfigError]) -> String {
    let mut out = String::new();
    for e in errors {
        out.push_str(&e.to_string());
        out.push('\n');
    }
    let file = errors
        .first()
        .map(|e| e.file.display().to_string())
        .unwrap_or_default();
    let n = errors.len();
    out.push_str(&format!(
        "{file}: {n} error{} found; nothing was started",
        if n == 1 { "" } else { "s" }
    ));
    out
}
