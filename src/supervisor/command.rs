//! What an operator may ask of the running tree, and the typed answers: the tree controller's
//! side of the control socket. The socket's server maps wire requests to a [`Command`] and a
//! [`Reply`] back to a wire reply; nothing in the supervisor sees the wire format, and
//! `status` never comes here (the server answers it from the status board).

use tokio::sync::oneshot;

use crate::diff::ReloadSummary;
use crate::report::StopRecord;

/// An operator's command. A node `path` is as the operator wrote it (`backend/api#2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Start {
        path: String,
    },
    Stop {
        path: String,
    },
    Restart {
        path: String,
    },
    /// Read the config file again and apply what changed.
    Reload,
    /// Stop the whole tree and exit.
    Shutdown,
}

/// How the tree answered a [`Command`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A start, stop or restart was carried out: what was done ("stopped backend/api#1"),
    /// and the record of every node it stopped (a group's own record first).
    Done {
        message: String,
        records: Vec<StopRecord>,
    },
    /// The reload was applied; what changed.
    Reloaded { summary: ReloadSummary },
    /// The new config is invalid and nothing changed: its errors, one per line as `check`
    /// prints them.
    ReloadRejected { errors: Vec<String> },
    /// The shutdown has begun.
    ShuttingDown,
    /// The command cannot be carried out; why, for the operator.
    Refused(String),
}

/// A command for the tree controller, with where to send its reply.
#[derive(Debug)]
pub struct ControlRequest {
    pub command: Command,
    pub reply: oneshot::Sender<Reply>,
}
