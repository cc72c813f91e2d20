//! Structured configuration fuzzing: start from a known-good tree (the shipped examples),
//! apply a few edits chosen by the fuzzer (set a known key to an interesting value, remove a
//! key, copy a subtree elsewhere, rename a child), write it back as YAML and validate it.
//! Byte-level mutation rarely gets past the YAML syntax; this reaches the validator and the
//! plan layer with documents that are almost right, which is where its checks live.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use arborist::config::{self, LoadError};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_yaml::{Mapping, Value};

const BASES: &[&str] = &[
    include_str!("../../config/demo.yaml"),
    include_str!("../../config/examples/annotated.yaml"),
    include_str!("../../config/examples/stubborn.yaml"),
    "children:\n  w:\n    command: [\"true\"]\n",
    "children:\n  g:\n    children:\n      a: {shell: x}\n      b: {shell: y, depends_on: [a]}\n  c: {shell: z, depends_on: [g]}\n",
];

/// Every key the schema knows, plus near misses.
const KEYS: &[&str] = &[
    "children",
    "strategy",
    "max_restarts",
    "restart_window",
    "shutdown_timeout",
    "stop_order",
    "start_concurrency",
    "depends_on",
    "control_socket",
    "health_addr",
    "command",
    "shell",
    "env",
    "cwd",
    "user",
    "group",
    "replicas",
    "restart",
    "backoff",
    "stop_signal",
    "stop_timeout",
    "pre_stop",
    "ready",
    "watchdog",
    "critical",
    "logs",
    "limits",
    "memory",
    "cpu",
    "pids",
    "memroy",
    "initial",
    "max",
    "factor",
    "jitter",
    "tcp",
    "exec",
    "http",
    "notify",
    "interval",
    "timeout",
    "stop_timout",
    "PATH",
    "",
    "a",
    "b",
    "c",
    "db",
    "web",
    "api#1",
    "x/y",
    "é",
];

const STRINGS: &[&str] = &[
    "",
    " ",
    "0",
    "0s",
    "1ms",
    "10s",
    "1m30s",
    "1h",
    "18446744073709551615s",
    "18446744073709551616s",
    "584942417355y",
    "99999999999999999999999ns",
    "1.5s",
    "-1s",
    "SIGTERM",
    "sigint",
    "KILL",
    "SIGRTMIN+1",
    "SIG",
    "one_for_one",
    "one_for_all",
    "rest_for_one",
    "reverse",
    "parallel",
    "always",
    "on-failure",
    "never",
    "capture",
    "inherit",
    "127.0.0.1:9090",
    "[::]:9090",
    "[::1]:0",
    "localhost:80",
    ":80",
    "host:",
    "http://127.0.0.1:8080/healthz",
    "http://[::1]/",
    "http://[::1",
    "https://x/",
    "http://u@h/",
    "http://h:99999/",
    "http://h?q",
    "http://h/a b",
    "root",
    "nobody",
    "0",
    "4294967295",
    "nosuchuser",
    "a\0b",
    "A=B",
    "\u{feff}",
    "\t",
    "${HOME}",
    "*",
    "&a",
    "!x",
    "true",
    "null",
    "~",
    "512MiB",
    "1.5G",
    "64KB",
    "1023KiB",
    "16777216T",
    "1e9",
    "0.005",
];

#[derive(Debug, Arbitrary)]
struct Input {
    base: u8,
    edits: Vec<Edit>,
}

#[derive(Debug, Arbitrary)]
enum Edit {
    /// Set `key` in the mapping at `at` (the mapping found by walking `at`).
    Set { at: Vec<u8>, key: Key, value: New },
    /// Remove one entry of the mapping or sequence at `at`.
    Remove { at: Vec<u8>, which: u8 },
    /// Copy the subtree at `from` into the mapping at `to` under `key`.
    Copy {
        from: Vec<u8>,
        to: Vec<u8>,
        key: Key,
    },
    /// Replace whatever sits at `at` with `value`.
    Replace { at: Vec<u8>, value: New },
}

#[derive(Debug, Arbitrary)]
enum Key {
    Known(u8),
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum New {
    Str(u8),
    Any(String),
    Int(i64),
    Big(u64),
    Float(f64),
    Bool(bool),
    Null,
    EmptyMap,
    List(Vec<u8>),
    Durations(Vec<u8>),
}

impl Key {
    fn value(&self) -> Value {
        match self {
            Key::Known(i) => Value::String(KEYS[*i as usize % KEYS.len()].into()),
            Key::Any(s) => Value::String(s.clone()),
        }
    }
}

impl New {
    fn value(&self) -> Value {
        let pick = |i: &u8| Value::String(STRINGS[*i as usize % STRINGS.len()].into());
        match self {
            New::Str(i) => pick(i),
            New::Any(s) => Value::String(s.clone()),
            New::Int(n) => Value::Number((*n).into()),
            New::Big(n) => Value::Number((*n).into()),
            New::Float(f) => Value::Number((*f).into()),
            New::Bool(b) => Value::Bool(*b),
            New::Null => Value::Null,
            New::EmptyMap => Value::Mapping(Mapping::new()),
            New::List(items) => Value::Sequence(items.iter().map(pick).collect()),
            New::Durations(items) => Value::Sequence(
                items
                    .iter()
                    .map(|i| Value::String(format!("{i}s")))
                    .collect(),
            ),
        }
    }
}

/// Walks `at` from the root, each byte picking a child of the current container.
fn walk<'v>(mut v: &'v mut Value, at: &[u8]) -> &'v mut Value {
    for &step in at {
        let len = match v {
            Value::Mapping(m) => m.len(),
            Value::Sequence(s) => s.len(),
            _ => 0,
        };
        if len == 0 {
            break;
        }
        let i = step as usize % len;
        v = match v {
            Value::Mapping(m) => m.values_mut().nth(i).expect("index within len"),
            Value::Sequence(s) => &mut s[i],
            _ => unreachable!(),
        };
    }
    v
}

fn apply(doc: &mut Value, edit: &Edit) {
    match edit {
        Edit::Set { at, key, value } => {
            if let Value::Mapping(m) = walk(doc, at) {
                m.insert(key.value(), value.value());
            }
        }
        Edit::Remove { at, which } => match walk(doc, at) {
            Value::Mapping(m) if !m.is_empty() => {
                let i = *which as usize % m.len();
                let k = m.keys().nth(i).cloned().expect("index within len");
                m.remove(&k);
            }
            Value::Sequence(s) if !s.is_empty() => {
                let i = *which as usize % s.len();
                s.remove(i);
            }
            _ => {}
        },
        Edit::Copy { from, to, key } => {
            let copied = walk(doc, from).clone();
            if let Value::Mapping(m) = walk(doc, to) {
                m.insert(key.value(), copied);
            }
        }
        Edit::Replace { at, value } => *walk(doc, at) = value.value(),
    }
}

fn bases() -> &'static [Value] {
    static PARSED: OnceLock<Vec<Value>> = OnceLock::new();
    PARSED.get_or_init(|| {
        BASES
            .iter()
            .map(|b| serde_yaml::from_str(b).expect("the bases are valid YAML"))
            .collect()
    })
}

fuzz_target!(|input: Input| {
    let bases = bases();
    let mut doc = bases[input.base as usize % bases.len()].clone();
    // Bounded: copies can double the document with every edit.
    for edit in input.edits.iter().take(8) {
        apply(&mut doc, edit);
    }
    let Ok(text) = serde_yaml::to_string(&doc) else {
        return;
    };
    if text.len() > 1 << 20 {
        return;
    }
    match config::parse(&text, Path::new("fuzz.yaml")) {
        Ok(tree) => {
            let (_, total) = arborist::check::render_plan(&tree);
            assert!(total <= tree.root.shutdown_timeout);
            let _ = arborist::check::render_tree(&tree);
        }
        Err(LoadError::Invalid(errors)) => {
            assert!(!errors.is_empty());
            // serde_yaml wrote the text, so it is valid YAML: every error is the validator's
            // and must carry a position.
            for e in &errors {
                assert!(e.pos.is_some(), "no position for: {e}\n---\n{text}");
            }
            let _ = LoadError::Invalid(errors).to_string();
        }
        Err(other) => panic!("parse may only return Invalid, got {other}"),
    }
});
