//! arborist's own log output (tracing, text or JSON) and the capture of workers' stdout and
//! stderr, re-emitted line by line as events that carry the worker's path and stream.
//! Capture memory is bounded: a line longer than [`MAX_LINE`] is emitted in pieces. Output
//! is bounded too: lines wait for stderr in a queue of [`QUEUE_BYTES`] written by a thread of
//! its own, and a line that does not fit is dropped and counted, never waited for.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::net::unix::pipe;
use tracing_subscriber::EnvFilter;

/// Longest line re-emitted as one event; longer output is split, never buffered unbounded.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `level` wins over RUST_LOG; the default is `info`.
///
/// Lines go to stderr through a bounded queue and a writer thread (see [`LogOutput`]), so a
/// stderr nobody reads (a full pipe, a stuck journald or `docker logs` reader) can never
/// block the runtime thread, and with it signal handling and shutdown. Keep the returned
/// `LogOutput` until exit and call [`LogOutput::finish`].
pub fn init(format: LogFormat, level: Option<&str>) -> Result<LogOutput, String> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| format!("invalid --log-level '{l}': {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let output = LogOutput::start();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(output.sink());
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(output)
}

/// Formatted lines that may wait for stderr, in bytes (not lines: a captured piece of a long
/// line can be 16 KiB, escaped in JSON several times that). A line that does not fit is
/// dropped and counted; arborist never waits for its own log output.
const QUEUE_BYTES: usize = 1024 * 1024;

/// A batch buffer above this size is freed once written, so a burst does not pin memory.
const KEEP_BYTES: usize = 64 * 1024;

/// How long [`LogOutput::finish`] waits at exit for queued lines to reach stderr.
pub const FLUSH_AT_EXIT: Duration = Duration::from_secs(2);

/// Lines dropped since start because stderr was blocked, too slow or broken.
static DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// How many log lines were dropped so far (for the shutdown report).
pub fn lines_dropped() -> u64 {
    DROPPED_TOTAL.load(Ordering::Relaxed)
}

/// arborist's log output: a byte-bounded queue of whole lines and the thread that writes it
/// to stderr. The thread sleeps on a condition variable while nothing is logged (no timer,
/// no wake-ups) and writes whatever accumulated in one `write`, so a burst costs few system
/// calls. When stderr takes a batch again after lines were dropped, it logs how many.
pub struct LogOutput {
    queue: Option<Arc<Queue>>,
}

struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the writer: lines queued, or closing.
    work: Condvar,
    /// Wakes `finish`: the writer is done.
    done: Condvar,
}

#[derive(Default)]
struct QueueState {
    pending: Vec<u8>,
    /// Dropped since the last notice.
    dropped: u64,
    closing: bool,
    finished: bool,
}

thread_local! {
    /// Set on the writer thread: its own notice of dropped lines is always queued.
    static IS_WRITER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl LogOutput {
    /// Starts the writer thread; without one (RLIMIT_NPROC reached at start, say) lines are
    /// written synchronously as before.
    fn start() -> LogOutput {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let writer = Arc::clone(&queue);
        let started = std::thread::Builder::new()
            .name("log-writer".into())
            .stack_size(256 * 1024)
            .spawn(move || writer.run());
        LogOutput {
            queue: started.ok().map(|_| queue),
        }
    }

    fn sink(&self) -> Sink {
        Sink(self.queue.clone())
    }

    /// Lets the writer write what is queued (and a last notice of dropped lines), waiting at
    /// most `bound`: a stderr that stays blocked must not keep arborist from exiting. What
    /// is still queued then is lost; its count is in the shutdown report.
    pub fn finish(self, bound: Duration) {
        let Some(queue) = self.queue else { return };
        let mut state = queue.lock();
        state.closing = true;
        queue.work.notify_one();
        let until = std::time::Instant::now() + bound;
        while !state.finished {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            state = match queue.done.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one formatted line, or drops and counts it when the queue is full.
    fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        if state.finished {
            drop(state);
            let _ = std::io::stderr().write_all(line);
            return;
        }
        let fits = state.pending.is_empty() || state.pending.len() + line.len() <= QUEUE_BYTES;
        if fits || IS_WRITER.with(|w| w.get()) {
            if state.pending.is_empty() {
                self.work.notify_one();
            }
            state.pending.extend_from_slice(line);
        } else {
            state.dropped += 1;
            DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The writer thread.
    fn run(&self) {
        IS_WRITER.with(|w| w.set(true));
        let mut batch = Vec::new();
        loop {
            {
                let mut state = self.lock();
                while state.pending.is_empty() && !state.closing {
                    state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                if state.pending.is_empty() {
                    state.finished = true;
                    self.done.notify_all();
                    return;
                }
                std::mem::swap(&mut state.pending, &mut batch);
            }
            let lost = write_stderr(&batch);
            batch.clear();
            if batch.capacity() > KEEP_BYTES {
                batch = Vec::new();
            }
            let mut state = self.lock();
            if lost > 0 {
                // stderr is broken (EPIPE, EIO): these lines are gone too.
                state.dropped += lost;
                DROPPED_TOTAL.fetch_add(lost, Ordering::Relaxed);
                continue;
            }
            let dropped = std::mem::take(&mut state.dropped);
            drop(state);
            if dropped > 0 {
                // stderr took a batch again: say what it missed (queued despite a full queue).
                tracing::warn!(
                    dropped,
                    "{dropped} log lines dropped: output blocked or too slow"
                );
            }
        }
    }
}

/// Writes all of `bytes` to stderr, waiting while it is full (also when someone made it
/// non-blocking); returns how many lines were lost to an error.
fn write_stderr(mut bytes: &[u8]) -> u64 {
    let mut out = std::io::stderr();
    while !bytes.is_empty() {
        match out.write(bytes) {
            Ok(0) => break,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [nix::poll::PollFd::new(
                    out.as_fd(),
                    nix::poll::PollFlags::POLLOUT,
                )];
                if nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// tracing-subscriber's writer: one `write_all` per formatted event, i.e. one whole line.
#[derive(Clone)]
struct Sink(Option<Arc<Queue>>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> SinkWriter<'a> {
        SinkWriter(self)
    }
}

struct SinkWriter<'a>(&'a Sink);

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.0 .0 {
            Some(queue) => {
                queue.push(buf);
                Ok(buf.len())
            }
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes read from a pipe per wake-up before the capture task yields, so that a worker
/// flooding its stdout cannot starve signal handling or other workers. Bytes, not reads:
/// what a turn costs is the events it emits. The budget was 16 reads of 64 KiB, and with
/// `yes` as a worker one turn (170000 events) held the runtime thread for a quarter of a
/// second, so each hop from SIGTERM to the worker's stop waited that long: SIGTERM to exit
/// took 2 s. With 16 KiB it takes under 0.1 s (docs/faults.md), for some 10% less capture
/// throughput at full load (`cargo bench --bench capture`).
const READ_BUDGET: usize = 16 * 1024;

thread_local! {
    /// One read buffer for every capture task: arborist runs a current-thread runtime and a
    /// capture task never holds it across an await, so 1000 workers cost one buffer, not
    /// 2000.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_BUDGET]);
}

/// A worker's output pipe being captured: only a partial line is kept per pipe.
struct Stream {
    pipe: Option<pipe::Receiver>,
    name: &'static str,
    partial: Vec<u8>,
}

/// Re-emits the lines of a worker's stdout and stderr as events for `path`, until both
/// pipes reach EOF.
///
/// `run_over` resolves (or is dropped) when the worker's run is over and nothing of it is
/// left: what is still in the pipes is read, and the pipes are closed even if a process
/// outside the run (one that was handed a copy of the write end) still holds them, so a
/// finished run never keeps its descriptors.
pub async fn capture(
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    path: String,
    mut run_over: tokio::sync::oneshot::Receiver<()>,
) {
    let open = |fd: Option<OwnedFd>, name| Stream {
        pipe: fd.and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok()),
        name,
        partial: Vec::new(),
    };
    let mut streams = [open(stdout, "stdout"), open(stderr, "stderr")];
    let mut over = false;
    loop {
        let [out, err] = &mut streams;
        let ready = tokio::select! {
            r = readable(&out.pipe), if out.pipe.is_some() => r.map(|_| 0),
            r = readable(&err.pipe), if err.pipe.is_some() => r.map(|_| 1),
            _ = &mut run_over, if !over => {
                over = true;
                break;
            }
            else => break,
        };
        match ready {
            Ok(i) => drain(&mut streams[i], &path),
            Err(_) => break,
        }
        tokio::task::yield_now().await;
    }
    if over {
        // What the run wrote before it ended, bounded: a stray writer cannot keep it going.
        for s in &mut streams {
            final_drain(s, &path);
            retire(s.pipe.take());
        }
    }
    for s in &mut streams {
        flush(s, &path);
    }
}

/// How many budgets of output a finished run may still have read from its pipes.
const FINAL_TURNS: usize = 64;

/// Reads what a finished run left in a pipe, with plain non-blocking reads: tokio's
/// `try_read` answers WouldBlock until the reactor has seen the pipe readable, which it may
/// not have yet for a run that wrote and exited at once.
fn final_drain(stream: &mut Stream, path: &str) {
    for _ in 0..FINAL_TURNS {
        let Some(pipe) = &stream.pipe else { return };
        let result = SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            let n = READ_BUDGET.min(buf.len());
            let r = nix::unistd::read(pipe, &mut buf[..n]);
            if let Ok(n) = r {
                split_lines(&buf[..n], &mut stream.partial, path, stream.name);
            }
            r
        });
        match result {
            Ok(0) => return,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}
async fn readable(pipe: &Option<pipe::Receiver>) -> std::io::Result<()> {
    match pipe {
        Some(p) => p.readable().await,
        None => std::future::pending().await,
    }
}

/// Reads what is there (up to the budget) and emits complete lines.
fn drain(stream: &mut Stream, path: &str) {
    let mut left = READ_BUDGET;
    while left > 0 {
        let Some(pipe) = &stream.pipe else { return };
        let result = SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            let r = pipe.try_read(&mut buf[..left]);
            if let Ok(n) = r {
                split_lines(&buf[..n], &mut stream.partial, path, stream.name);
            }
            r
        });
        match result {
            Ok(0) => {
                flush(stream, path);
                retire(stream.pipe.take());
                return;
            }
            Ok(n) => left -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                flush(stream, path);
                retire(stream.pipe.take());
                return;
            }
        }
    }
}

/// Closes a finished pipe off the runtime thread (see `process::chores`).
fn retire(pipe: Option<pipe::Receiver>) {
    if let Some(fd) = pipe.and_then(|p| p.into_nonblocking_fd().ok()) {
        crate::process::chores::close(fd);
    }
}

fn flush(stream: &mut Stream, path: &str) {
    if !stream.partial.is_empty() {
        emit(path, stream.name, &stream.partial, false);
        stream.partial = Vec::new();
    }
}

/// Emits every complete line of `chunk`, joined to what `partial` holds from before; keeps
/// the unfinished tail in `partial`, never more than [`MAX_LINE`] bytes of it.
fn split_lines(chunk: &[u8], partial: &mut Vec<u8>, path: &str, stream: &'static str) {
    for part in chunk.split_inclusive(|&b| b == b'\n') {
        let complete = part.last() == Some(&b'\n');
        let mut body = if complete {
            &part[..part.len() - 1]
        } else {
            part
        };
        while partial.len() + body.len() > MAX_LINE {
            let take = MAX_LINE - partial.len();
            if partial.is_empty() {
                emit(path, stream, &body[..take], true);
            } else {
                partial.extend_from_slice(&body[..take]);
                emit(path, stream, partial, true);
                partial.clear();
            }
            body = &body[take..];
        }
        if complete {
            if partial.is_empty() {
                emit(path, stream, body, false);
            } else {
                partial.extend_from_slice(body);
                emit(path, stream, partial, false);
                partial.clear();
            }
        } else {
            partial.extend_from_slice(body);
        }
    }
    if partial.is_empty() && partial.capacity() > 0 {
        *partial = Vec::new();
    }
}

fn emit(path: &str, stream: &'static str, bytes: &[u8], continued: bool) {
    let text = String::from_utf8_lossy(bytes);
    let text = crate::secrets::redact(&text);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    if continued {
        tracing::info!(target: "worker", path, stream, continued = true, "{text}");
    } else {
        tracing::info!(target: "worker", path, stream, "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_lines_are_kept_and_long_ones_split() {
        let mut partial = Vec::new();
        split_lines(b"one\ntw", &mut partial, "p", "stdout");
        assert_eq!(partial, b"tw");
        split_lines(b"o\n", &mut partial, "p", "stdout");
        assert!(partial.is_empty() && partial.capacity() == 0);
        let long = vec![b'a'; MAX_LINE * 2 + 10];
        split_lines(&long, &mut partial, "p", "stdout");
        assert_eq!(partial.len(), 10);
    }
}
