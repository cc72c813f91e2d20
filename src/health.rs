//! The optional HTTP endpoint of `health_addr`: `GET /healthz` for liveness/readiness probes
//! and `GET /metrics` in the Prometheus text format 0.0.4. It only reads: the status board's
//! snapshot, the daemon's state and the counters of [`crate::metrics`]; it never acts on the
//! tree. Nothing of it exists unless `health_addr` is set: no socket, no task.
//!
//! The listener is bound before anything starts (a port in use is a usage error, exit 2, as
//! for the control socket). Each connection is its own task in a bounded set; a connection
//! carries one request (no keep-alive), its headers are bounded in size and time, and the whole
//! connection in time, so a slow or malicious client costs one slot for a few seconds at most.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::control::server::Daemon;
use crate::metrics;
use crate::report::NodeType;
use crate::status::{DaemonState, NodeState, NodeStatus, StatusBoard};

/// Connections served at once; more wait in the kernel's accept queue. Probes and scrapes
/// are short and rare: a handful is plenty, and the bound keeps a flood from growing arborist.
const MAX_CONNECTIONS: usize = 16;
/// Bound of the request head (request line and headers); larger gets 431. hyper's minimum.
const MAX_HEAD_BYTES: usize = 8192;
/// A client must have sent its whole request head within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of a whole connection, reading the request to writing the response.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

const TEXT: &str = "text/plain; charset=utf-8";
/// Prometheus text exposition format 0.0.4.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on health_addr {addr}: {source}")]
pub struct BindError {
    addr: SocketAddr,
    source: io::Error,
}

/// Binds `addr` (called before anything starts, inside the runtime).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let err = |source| BindError { addr, source };
    // std's bind sets SO_REUSEADDR (a restart need not wait out TIME_WAIT) and close-on-exec
    // (workers do not inherit the socket).
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(listener).map_err(err)
}

/// What the handlers read.
struct Source {
    board: StatusBoard,
    daemon: Arc<Daemon>,
    /// arborist's start as Unix time in seconds, fixed once so every scrape agrees.
    start_unix: f64,
}

/// Serves until the runtime ends. Connection tasks live in a `JoinSet`, so they end with it.
pub async fn serve(listener: TcpListener, board: StatusBoard, daemon: Arc<Daemon>) {
    let start_unix = SystemTime::now()
        .checked_sub(daemon.started.elapsed())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let source = Arc::new(Source {
        board,
        daemon,
        start_unix,
    });
    let mut connections = JoinSet::new();
    loop {
        if connections.len() >= MAX_CONNECTIONS {
            connections.join_next().await;
            continue;
        }
        tokio::select! {
            // Reaps finished connections; disabled while there are none.
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, Arc::clone(&source)));
                }
                Err(e) => {
                    // EMFILE and the like: keep serving the connections we have.
                    warn!("health endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, source: Arc<Source>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request: Request<Incoming>| {
        let source = Arc::clone(&source);
        async move { Ok::<_, Infallible>(respond(&request, &source).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    // A malformed or oversized request has already been answered (400, 431) by hyper; these
    // are the client's problems, not arborist's, hence debug.
    match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, "health connection ended: {e}"),
        Err(_) => debug!(%peer, "health connection timed out"),
    }
}

async fn respond(request: &Request<Incoming>, source: &Source) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path != "/healthz" && path != "/metrics" {
        return reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into());
    }
    // hyper leaves out the body of a HEAD response by itself.
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed\n".into(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let nodes = source.board.snapshot().await;
    let state = *source.daemon.state.borrow();
    if path == "/healthz" {
        match health(state, &nodes) {
            Ok(()) => reply(StatusCode::OK, TEXT, "ok\n".into()),
            Err(reason) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, reason + "\n"),
        }
    } else {
        let counters = Counters {
            deadline_kills: metrics::deadline_kills(),
            oom_kills: metrics::oom_kills(),
            last_stop: metrics::last_stop_duration(),
            start_unix: source.start_unix,
        };
        reply(
            StatusCode::OK,
            PROMETHEUS_TEXT,
            render_metrics(&nodes, &counters),
        )
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A worker whose process is up and serving: running (no probe) or ready (probe passed).
fn is_up(node: &NodeStatus) -> bool {
    matches!(node.state, NodeState::Running | NodeState::Ready)
}

fn workers(nodes: &[NodeStatus]) -> impl Iterator<Item = &NodeStatus> {
    nodes.iter().filter(|n| n.kind == NodeType::Worker)
}

/// `/healthz`: Ok while the daemon runs (or reloads) and the root group is ready, else the
/// one-line reason for the 503.
pub fn health(daemon_state: DaemonState, nodes: &[NodeStatus]) -> Result<(), String> {
    let up = workers(nodes).filter(|n| is_up(n)).count();
    let total = workers(nodes).count();
    match daemon_state {
        DaemonState::Running | DaemonState::Reloading => {}
        DaemonState::Starting => return Err(format!("starting: {up}/{total} workers up")),
        DaemonState::Stopping => return Err(daemon_state.to_string()),
    }
    let root_ready = nodes
        .iter()
        .find(|n| n.depth == 0)
        .is_some_and(|root| matches!(root.state, NodeState::Ready | NodeState::Running));
    if root_ready {
        Ok(())
    } else {
        Err(format!("not ready: {up}/{total} workers up"))
    }
}

/// The process-wide numbers `/metrics` shows beside the board's.
pub struct Counters {
    pub deadline_kills: u64,
    pub oom_kills: u64,
    pub last_stop: Option<Duration>,
    pub start_unix: f64,
}

const STATES: [NodeState; 8] = [
    NodeState::Waiting,
    NodeState::Starting,
    NodeState::Running,
    NodeState::Ready,
    NodeState::Backoff,
    NodeState::Stopping,
    NodeState::Stopped,
    NodeState::Failed,
];

/// `/metrics` in the Prometheus text format 0.0.4. `write!` to a String cannot fail.
pub fn render_metrics(nodes: &[NodeStatus], counters: &Counters) -> String {
    let mut out = String::with_capacity(256 + nodes.len() * 160);
    family(
        &mut out,
        "arborist_workers",
        "gauge",
        "Workers (replicas counted one by one) in each state.",
    );
    for state in STATES {
        let n = workers(nodes).filter(|w| w.state == state).count();
        let _ = writeln!(out, "arborist_workers{{state=\"{}\"}} {n}", state.as_str());
    }
    family(
        &mut out,
        "arborist_worker_up",
        "gauge",
        "1 when the worker's process is up and serving (state running or ready), else 0.",
    );
    for w in workers(nodes) {
        let _ = writeln!(
            out,
            "arborist_worker_up{{path=\"{}\"}} {}",
            escape_label(&w.path),
            u8::from(is_up(w))
        );
    }
    family(
        &mut out,
        "arborist_worker_restarts_total",
        "counter",
        "Restarts of the worker decided by its group (not operator restarts).",
    );
    for w in workers(nodes) {
        let _ = writeln!(
            out,
            "arborist_worker_restarts_total{{path=\"{}\"}} {}",
            escape_label(&w.path),
            w.restarts
        );
    }
    family(
        &mut out,
        "arborist_deadline_kills_total",
        "counter",
        "Processes SIGKILLed because they were still running at their stop deadline.",
    );
    let _ = writeln!(
        out,
        "arborist_deadline_kills_total {}",
        counters.deadline_kills
    );
    family(
        &mut out,
        "arborist_oom_kills_total",
        "counter",
        "Processes of worker runs killed by the kernel's OOM killer at their memory limit (cgroup mode).",
    );
    let _ = writeln!(out, "arborist_oom_kills_total {}", counters.oom_kills);
    family(
        &mut out,
        "arborist_last_shutdown_duration_seconds",
        "gauge",
        "Duration of the most recent stop that stopped something (operator stop or restart, or the shutdown); absent before the first.",
    );
    if let Some(d) = counters.last_stop {
        let _ = writeln!(
            out,
            "arborist_last_shutdown_duration_seconds {:.3}",
            d.as_secs_f64()
        );
    }
    family(
        &mut out,
        "arborist_start_time_seconds",
        "gauge",
        "Start time of arborist since the Unix epoch, in seconds.",
    );
    let _ = writeln!(
        out,
        "arborist_start_time_seconds {:.3}",
        counters.start_unix
    );
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, kind: NodeType, state: NodeState, restarts: u32) -> NodeStatus {
        NodeStatus {
            path: path.into(),
            kind,
            state,
            depth: if path == "(root)" {
                0
            } else {
                path.matches('/').count() + 1
            },
            pid: None,
            uptime_ms: None,
            restarts,
            last_exit: None,
            next_restart_in_ms: None,
            stop_report: None,
            notify_status: None,
            adopted: Vec::new(),
        }
    }

    fn tree(root: NodeState, api1: NodeState) -> Vec<NodeStatus> {
        vec![
            node("(root)", NodeType::Group, root, 0),
            node("db", NodeType::Worker, NodeState::Ready, 0),
            node("backend", NodeType::Group, NodeState::Starting, 0),
            node("backend/api#0", NodeType::Worker, NodeState::Running, 2),
            node("backend/api#1", NodeType::Worker, api1, 0),
        ]
    }

    #[test]
    fn healthy_only_while_running_or_reloading_with_the_root_ready() {
        let ready = tree(NodeState::Ready, NodeState::Running);
        assert_eq!(health(DaemonState::Running, &ready), Ok(()));
        assert_eq!(health(DaemonState::Reloading, &ready), Ok(()));
        assert_eq!(
            health(DaemonState::Stopping, &ready),
            Err("stopping".into())
        );
        let starting = tree(NodeState::Starting, NodeState::Starting);
        assert_eq!(
            health(DaemonState::Starting, &starting),
            Err("starting: 2/3 workers up".into())
        );
        assert_eq!(
            health(DaemonState::Running, &starting),
            Err("not ready: 2/3 workers up".into())
        );
        assert_eq!(
            health(DaemonState::Running, &[]),
            Err("not ready: 0/0 workers up".into())
        );
    }

    #[test]
    fn metrics_count_workers_by_state_and_per_path() {
        let counters = Counters {
            deadline_kills: 3,
            oom_kills: 1,
            last_stop: None,
            start_unix: 1_700_000_000.25,
        };
        let text = render_metrics(&tree(NodeState::Ready, NodeState::Backoff), &counters);
        for line in [
            "# TYPE arborist_workers gauge",
            "arborist_workers{state=\"ready\"} 1",
            "arborist_workers{state=\"running\"} 1",
            "arborist_workers{state=\"backoff\"} 1",
            "arborist_workers{state=\"failed\"} 0",
            "arborist_worker_up{path=\"backend/api#0\"} 1",
            "arborist_worker_up{path=\"backend/api#1\"} 0",
            "# TYPE arborist_worker_restarts_total counter",
            "arborist_worker_restarts_total{path=\"backend/api#0\"} 2",
            "arborist_deadline_kills_total 3",
            "# TYPE arborist_oom_kills_total counter",
            "arborist_oom_kills_total 1",
            "# TYPE arborist_last_shutdown_duration_seconds gauge",
            "arborist_start_time_seconds 1700000000.250",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Groups are not workers; no sample before the first stop.
        assert!(!text.contains("path=\"backend\""));
        assert!(!text
            .lines()
            .any(|l| l.starts_with("arborist_last_shutdown_duration_seconds")));
        // Every family has HELP and TYPE.
        assert_eq!(text.matches("# HELP ").count(), 7);
        assert_eq!(text.matches("# TYPE ").count(), 7);

        let stopped = Counters {
            last_stop: Some(Duration::from_millis(1510)),
            ..counters
        };
        let text = render_metrics(&[], &stopped);
        assert!(text.contains("\narborist_last_shutdown_duration_seconds 1.510\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd#2"), "a\\\\b\\\"c\\nd#2");
    }
}
