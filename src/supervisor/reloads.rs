//! Reloads as the tree controller carries them out, in three steps: the file is read and
//! validated on a thread of its own (the runtime thread never waits on a file or a name
//! service; one read at a time, and requests during a read share its result), a valid spec
//! goes to the root group, and the root's `Reloaded` answers whoever asked. A shutdown
//! answers whoever still waits.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::command::Reply;
use super::Down;
use crate::config::{self, TreeSpec};
use crate::diff;
use crate::notify::systemd;
use crate::status::DaemonState;

/// How long a reload may take to read and validate its file.
const RELOAD_READ_LIMIT: Duration = Duration::from_secs(10);

/// Reloads in their three steps: the file is read and validated on a thread of its own
/// (one read at a time; requests during a read share its result), the new spec goes to the
/// root group, and the root's `Reloaded` answers whoever asked.
#[derive(Default)]
pub(super) struct Reloads {
    /// The read in flight, and the clients waiting for it.
    reading: Option<Reading>,
    /// Reloads handed to the root, oldest first: who asked and what changed.
    applying: std::collections::VecDeque<Applying>,
}

struct Reading {
    result: Pin<Box<dyn Future<Output = Result<TreeSpec, config::LoadError>> + Send>>,
    replies: Vec<oneshot::Sender<Reply>>,
    announce: bool,
}

struct Applying {
    replies: Vec<oneshot::Sender<Reply>>,
    summary: diff::ReloadSummary,
    announce: bool,
    /// The daemon's state before the reload, to return to once it is applied.
    before: DaemonState,
}

impl Reloads {
    /// Starts reading the file, or joins the read in flight.
    pub fn read(
        &mut self,
        spec: &TreeSpec,
        state: &watch::Sender<DaemonState>,
        reply: Option<oneshot::Sender<Reply>>,
    ) {
        if let Some(reading) = &mut self.reading {
            info!("a reload is already reading the configuration; this request shares its result");
            reading.replies.extend(reply);
            return;
        }
        let announce = *state.borrow() == DaemonState::Running;
        if announce {
            systemd::reloading();
        }
        self.reading = Some(Reading {
            result: Box::pin(config::load_off_thread(
                spec.source.clone(),
                RELOAD_READ_LIMIT,
            )),
            replies: reply.into_iter().collect(),
            announce,
        });
    }

    /// The result of the read in flight; pends while there is none.
    pub async fn next_read(&mut self) -> Result<TreeSpec, config::LoadError> {
        match &mut self.reading {
            Some(r) => r.result.as_mut().await,
            None => std::future::pending().await,
        }
    }

    /// Hands a valid file to the root group; an invalid one changes nothing: its errors are
    /// logged and returned.
    pub fn apply(
        &mut self,
        read: Result<TreeSpec, config::LoadError>,
        spec: &mut TreeSpec,
        root: &mpsc::UnboundedSender<Down>,
        state: &watch::Sender<DaemonState>,
    ) {
        let Some(Reading {
            replies, announce, ..
        }) = self.reading.take()
        else {
            return;
        };
        let new = match read {
            Ok(new) => new,
            Err(e) => {
                if announce {
                    systemd::ready("reload rejected: invalid configuration; running unchanged");
                }
                let errors: Vec<String> = e
                    .to_string()
                    .lines()
                    .map(|l| l.replace("; nothing was started", ""))
                    .collect();
                error!("reload rejected; the tree runs on unchanged");
                for line in &errors {
                    error!("{line}");
                }
                for reply in replies {
                    let _ = reply.send(Reply::ReloadRejected {
                        errors: errors.clone(),
                    });
                }
                return;
            }
        };
        if new.control_socket != spec.control_socket {
            warn!("control_socket changed: the new path takes effect at the next start");
        }
        if new.guardian_grace != spec.guardian_grace {
            warn!("guardian_grace changed: the new grace takes effect at the next start");
        }
        if new.ownership != spec.ownership {
            warn!("ownership changed: the new mode takes effect at the next start");
        }
        let summary = diff::summarize(&spec.root, &new.root);
        if summary.is_empty() {
            info!("reload: no changes");
        } else {
            info!("reload: {}", summary.line());
        }
        *spec = TreeSpec {
            control_socket: spec.control_socket.clone(),
            guardian_grace: spec.guardian_grace,
            ownership: spec.ownership,
            ..new
        };
        crate::secrets::learn(spec);
        let _ = root.send(Down::Reload {
            spec: Box::new(spec.root.clone()),
            key: vec![],
        });
        let before = match state.send_replace(DaemonState::Reloading) {
            DaemonState::Reloading => DaemonState::Running,
            before => before,
        };
        self.applying.push_back(Applying {
            replies,
            summary,
            announce,
            before,
        });
    }

    /// The root applied the oldest reload handed to it.
    pub fn applied(&mut self, state: &watch::Sender<DaemonState>) {
        let Some(done) = self.applying.pop_front() else {
            return;
        };
        if done.announce {
            systemd::ready("reloaded");
        }
        crate::process::chores::trim_heap();
        // Back to what it was (`starting` stays `starting`), unless something else moved it
        // meanwhile (the root became ready, a shutdown began).
        if self.applying.is_empty() {
            state.send_if_modified(|s| {
                let was = *s == DaemonState::Reloading;
                if was {
                    *s = done.before;
                }
                was
            });
        }
        info!("reload applied");
        for reply in done.replies {
            let _ = reply.send(Reply::Reloaded {
                summary: done.summary.clone(),
            });
        }
    }

    /// A shutdown began: whoever still waits for a reload is told.
    pub fn interrupted(&mut self) {
        let reading = self.reading.take().map(|r| r.replies).unwrap_or_default();
        let applying = self.applying.drain(..).flat_map(|a| a.replies);
        for reply in reading.into_iter().chain(applying) {
            let _ = reply.send(Reply::Refused(
                "reload interrupted: arborist is shutting down".into(),
            ));
        }
    }
}
