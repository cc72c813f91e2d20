//! Log-capture throughput: 100 chatty workers (real pipes, writer threads writing lines as
//! fast as they can) through `logs::capture`, the path every captured line takes, with a
//! JSON subscriber writing to a sink. Reports lines per second.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const WORKERS: usize = 100;
const LINES_PER_WORKER: u64 = 2_000;

fn run_once() -> Duration {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        let mut runs = Vec::new();
        let mut writers = Vec::new();
        for i in 0..WORKERS {
            let (read, write) = nix::unistd::pipe().unwrap();
            let read: OwnedFd = read;
            // The run is never over here: the capture ends at EOF, as the writer closes.
            let (keep, run_over) = tokio::sync::oneshot::channel();
            runs.push(keep);
            tasks.push(tokio::spawn(arborist::logs::capture(
                Some(read),
                None,
                format!("pool/w#{i}"),
                run_over,
            )));
            writers.push(std::thread::spawn(move || {
                let mut f = std::fs::File::from(write);
                let line = format!("worker {i}: processed request id=12345 status=200 took=3ms\n");
                let mut buf = Vec::with_capacity(line.len() * 64);
                for _ in 0..64 {
                    buf.extend_from_slice(line.as_bytes());
                }
                for _ in 0..LINES_PER_WORKER / 64 {
                    f.write_all(&buf).unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for w in writers {
            w.join().unwrap();
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(std::io::sink)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let lines = WORKERS as u64 * (LINES_PER_WORKER / 64) * 64;
    let mut group = c.benchmark_group("log capture");
    group.throughput(Throughput::Elements(lines));
    group.sample_size(10);
    group.bench_function("100 chatty workers, JSON log", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run_once()).sum())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
