//! Parse + validate a 1000-node tree, and compute its stop plan.

use std::fmt::Write;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};

/// 10 groups of 10 subgroups of 10 workers, with dependency chains at every level: 1111
/// nodes, 1000 of them workers.
fn big_tree() -> String {
    let mut y = String::from("shutdown_timeout: 60s\nchildren:\n");
    for g in 0..10 {
        let _ = writeln!(y, "  g{g}:");
        if g > 0 {
            let _ = writeln!(y, "    depends_on: [g{}]", g - 1);
        }
        let _ = writeln!(
            y,
            "    shutdown_timeout: 30s\n    strategy: rest_for_one\n    children:"
        );
        for s in 0..10 {
            let _ = writeln!(y, "      s{s}:");
            if s > 0 {
                let _ = writeln!(y, "        depends_on: [s{}]", s - 1);
            }
            let _ = writeln!(y, "        children:");
            for w in 0..10 {
                let _ = writeln!(
                    y,
                    "          w{w}: {{command: [\"/srv/bin/worker\", \"--id\", \"{g}-{s}-{w}\"], stop_timeout: 5s, restart: always, env: {{A: \"1\"}}{}}}",
                    if w > 0 { format!(", depends_on: [w{}]", w - 1) } else { String::new() }
                );
            }
        }
    }
    y
}

fn bench(c: &mut Criterion) {
    let text = big_tree();
    let path = Path::new("big.yaml");
    let tree = arborist::config::parse(&text, path).expect("valid tree");
    c.bench_function("parse + validate 1000-worker tree", |b| {
        b.iter(|| arborist::config::parse(std::hint::black_box(&text), path).unwrap())
    });
    c.bench_function("stop plan of 1000-worker tree", |b| {
        b.iter(|| arborist::plan::shutdown_plan(std::hint::black_box(&tree)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
