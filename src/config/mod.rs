//! Configuration: bytes in, a validated [`TreeSpec`] or every located error out. This layer
//! knows nothing of processes, clocks or tokio.

mod error;
mod locate;
pub mod schema;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::LoadError;
pub use schema::*;

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<TreeSpec, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if nix::unistd::geteuid().is_root() {
        if let Err(reason) = trusted_by_root(path) {
            return Err(LoadError::Insecure {
                path: path.to_path_buf(),
                reason,
            });
        }
    }
    parse(&text, path)
}

/// Reads and validates a configuration file on a thread of its own, so that a slow or hung
/// read (a FIFO, a stalled mount, a name service behind `user:`) never blocks the caller's
/// runtime, and gives up after `limit`. A read that never returns keeps its thread (it cannot
/// be cancelled), which is why callers run one at a time.
pub async fn load_off_thread(path: PathBuf, limit: Duration) -> Result<TreeSpec, LoadError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reader = path.clone();
    std::thread::Builder::new()
        .name("config-read".into())
        .spawn(move || {
            let _ = tx.send(load(&reader));
        })
        .map_err(|source| LoadError::NoThread {
            path: path.clone(),
            source,
        })?;
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(LoadError::NoThread {
            path,
            source: std::io::Error::other("the reading thread ended without an answer"),
        }),
        Err(_) => Err(LoadError::TimedOut { path, limit }),
    }
}

/// As root: the file and the directory holding it must be owned by root and writable by
/// nobody else (a directory with the sticky bit, like /tmp, may be world-writable: others
/// cannot replace a file they do not own there).
pub fn trusted_by_root(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let check = |p: &Path, what: &str, sticky_ok: bool| -> Result<(), String> {
        let meta = std::fs::metadata(p).map_err(|e| format!("cannot stat {}: {e}", p.display()))?;
        if meta.uid() != 0 {
            return Err(format!(
                "{what} {} is owned by uid {}, not root",
                p.display(),
                meta.uid()
            ));
        }
        let mode = meta.mode();
        let writable_by_others = mode & 0o022 != 0;
        if writable_by_others && !(sticky_ok && mode & 0o1000 != 0) {
            return Err(format!(
                "{what} {} is {}-writable (mode {:o}); chmod go-w it",
                p.display(),
                if mode & 0o002 != 0 { "world" } else { "group" },
                mode & 0o7777
            ));
        }
        Ok(())
    };
    check(path, "the file", false)?;
    let dir = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(dir) = dir {
        check(&dir, "its directory", true)?;
    }
    Ok(())
}

/// Validates configuration text; `source` names it in errors.
pub fn parse(text: &str, source: &Path) -> Result<TreeSpec, LoadError> {
    validate::parse(text, source).map_err(LoadError::Invalid)
}
