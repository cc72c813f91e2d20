//! The control socket: a Unix socket (mode 0600) speaking one JSON request per line and one
//! JSON reply per line. `server` serves it inside the daemon, `client` is what the CLI verbs
//! (`status`, `start`, `stop`, `restart`, `reload`, `shutdown`) use, `protocol` is the wire
//! format both share (documented in docs/control.md).

pub mod client;
pub mod protocol;
pub mod server;

use std::path::{Path, PathBuf};

/// The socket path: `--socket`, else the config's `control_socket`, else
/// `$XDG_RUNTIME_DIR/arborist.sock`, else `/run/arborist.sock`.
pub fn socket_path(flag: Option<&Path>, from_config: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = from_config {
        return p.to_path_buf();
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("arborist.sock"),
        None => PathBuf::from("/run/arborist.sock"),
    }
}
