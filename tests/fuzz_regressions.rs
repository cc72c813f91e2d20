//! Inputs that are nasty for arborist's parsers of outside input — found by the fuzz targets
//! in `fuzz/` (docs/fuzzing.md) or known to break parsers: alias bombs, deep nesting, huge
//! numbers, invalid UTF-8, NUL bytes, `\r\n`. Each is fed, on stable, to the same function
//! the fuzz target calls, and must give a clean error (or a clean result) within a time bound,
//! never a panic, a hang or a memory blow-up.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use arborist::config::{self, HttpUrl, LoadError, NodeKind, TreeSpec};
use arborist::control::protocol::{parse_request, Request, MAX_REQUEST};
use arborist::notify::fields;

/// Generous for a debug build on a loaded CI machine; each input takes milliseconds.
const BOUND: Duration = Duration::from_secs(2);

fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < BOUND, "{what}: took {took:?} (bound {BOUND:?})");
    out
}

fn parse(text: &str) -> Result<TreeSpec, LoadError> {
    bounded("config::parse", || {
        config::parse(text, Path::new("fuzz.yaml"))
    })
}

/// The rendered errors of an invalid config; panics when it is valid.
fn config_errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(tree) => panic!("expected errors from {text:?}, got a valid tree: {tree:?}"),
        Err(LoadError::Invalid(errors)) => {
            assert!(!errors.is_empty());
            errors.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("config::parse returned {other}"),
    }
}

fn assert_error_mentions(text: &str, needle: &str) {
    let errors = config_errors(text);
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "no error mentions {needle:?}: {errors:#?}"
    );
}

const WORKER: &str = "children:\n  w: {shell: x}\n";

// ---- alias bombs -------------------------------------------------------------------------

/// The classic "billion laughs": nine levels of ten aliases, 10^9 strings once expanded.
fn billion_laughs() -> String {
    let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..9 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    text + WORKER
}

/// A flat bomb: one anchor of `n` strings referenced `m` times. Each alias is a single jump,
/// so serde_yaml's repetition limit (100 jumps per event of the document) does not stop it:
/// the expansion is n × m nodes from a text of about 3n + 4m bytes.
fn flat_bomb(n: usize, m: usize) -> String {
    format!(
        "x-anchor: &a [{}]\nx-refs: [{}]\n{WORKER}",
        vec!["x"; n].join(", "),
        vec!["*a"; m].join(", ")
    )
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib / 1024
}

const CHILD_ENV: &str = "ARBORIST_FUZZ_REGRESSION_CHILD";
/// The memory a config of a few KiB may make the parser use.
const MEMORY_BOUND_MIB: u64 = 256;

/// Runs `test` (an ignored test of this file) in a process of its own, so that its peak
/// memory is its own, and with an address-space limit, so that a blow-up fails fast instead
/// of taking the machine's memory.
fn in_own_process(test: &str) {
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("re-run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{test} in its own process: {}\n{text}",
        out.status
    );
}

#[test]
fn billion_laughs_is_refused_quickly_and_in_bounded_memory() {
    in_own_process("billion_laughs_child");
}

#[test]
#[ignore = "run by billion_laughs_is_refused_quickly_and_in_bounded_memory in its own process"]
fn billion_laughs_child() {
    if !as_child() {
        return;
    }
    let text = billion_laughs();
    assert!(text.len() < 1024);
    assert_error_mentions(&text, "nodes once aliases are expanded");
    let peak = peak_rss_mib();
    assert!(peak < MEMORY_BOUND_MIB, "peak RSS {peak} MiB");
}

#[test]
fn small_flat_alias_bombs_are_bounded_in_time_and_memory() {
    in_own_process("small_flat_alias_bomb_child");
}

#[test]
#[ignore = "run by small_flat_alias_bombs_are_bounded_in_time_and_memory in its own process"]
fn small_flat_alias_bomb_child() {
    if !as_child() {
        return;
    }
    // 300 × 300: 90 000 strings from 2 KB, well within the bounds; what stays below
    // serde_yaml's repetition limit grows with the square of the file (the known bug below).
    let text = flat_bomb(300, 300);
    assert_error_mentions(&text, "unknown key 'x-anchor'");
    let peak = peak_rss_mib();
    assert!(peak < MEMORY_BOUND_MIB, "peak RSS {peak} MiB");
}

#[test]
fn flat_alias_bombs_are_refused_in_bounded_time_and_memory() {
    in_own_process("flat_alias_bomb_child");
}

#[test]
#[ignore = "run by flat_alias_bombs_are_refused_in_bounded_time_and_memory in its own process"]
fn flat_alias_bomb_child() {
    if !as_child() {
        return;
    }
    let text = flat_bomb(4000, 4000);
    assert!(text.len() < 32 * 1024);
    let _ = config_errors(&text);
    let peak = peak_rss_mib();
    assert!(peak < MEMORY_BOUND_MIB, "peak RSS {peak} MiB");
}

/// In a child started by `in_own_process`: limits its address space and returns true. Run
/// any other way (`cargo test -- --ignored`), the memory figures would be the whole test
/// process's: returns false and the test does nothing.
fn as_child() -> bool {
    if std::env::var_os(CHILD_ENV).is_none() {
        return false;
    }
    use nix::sys::resource::{setrlimit, Resource};
    let four_gib = 4 << 30;
    setrlimit(Resource::RLIMIT_AS, four_gib, four_gib).expect("setrlimit");
    true
}

// ---- configuration -----------------------------------------------------------------------

#[test]
fn deep_nesting_is_a_clean_error() {
    for (what, text) in [
        ("flow sequences", "[".repeat(5_000)),
        ("flow mappings", "{a: ".repeat(1_000)),
        ("block mappings", {
            let mut t = String::new();
            for depth in 0..2_000 {
                t.push_str(&" ".repeat(depth));
                t.push_str("a:\n");
            }
            t
        }),
        ("nested groups", {
            let mut t = String::new();
            for depth in 0..200 {
                t.push_str(&"  ".repeat(2 * depth));
                t.push_str("children:\n");
                t.push_str(&"  ".repeat(2 * depth + 1));
                t.push_str("g:\n");
            }
            t
        }),
    ] {
        let errors = config_errors(&text);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("recursion limit exceeded") || e.contains("nested deeper than")),
            "{what}: {errors:#?}"
        );
    }
}

#[test]
fn deeply_nested_flow_collections_are_refused_quickly() {
    // 80 KB: 1.7 s in a release build, 6 s in a debug one.
    let errors = config_errors(&"{a: ".repeat(20_000));
    assert!(
        errors[0].contains("recursion limit exceeded") || errors[0].contains("nested"),
        "{errors:#?}"
    );
}

#[test]
fn the_deepest_accepted_nesting_validates() {
    // 60 nested groups (two YAML levels each) is within serde_yaml's recursion limit; the
    // validator and the plan recurse as deep.
    let mut text = String::new();
    for depth in 0..60 {
        text.push_str(&"  ".repeat(2 * depth));
        text.push_str("children:\n");
        text.push_str(&"  ".repeat(2 * depth + 1));
        text.push_str("g:\n");
    }
    text.push_str(&"  ".repeat(120));
    text.push_str("shell: x\n");
    let tree = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let (_, total) = arborist::check::render_plan(&tree);
    assert!(total <= tree.root.shutdown_timeout);
}

#[test]
fn huge_numbers_are_clean_errors() {
    // Beyond u64, serde_yaml itself refuses the integer.
    assert_error_mentions(
        &format!("max_restarts: 99999999999999999999999999\n{WORKER}"),
        "invalid YAML",
    );
    for (value, key) in [
        ("-1", "max_restarts"),
        ("4294967296", "start_concurrency"),
        ("1e400", "max_restarts"),
        (".nan", "max_restarts"),
    ] {
        assert_error_mentions(
            &format!("{key}: {value}\n{WORKER}"),
            "expected a whole number",
        );
    }
    for (value, needle) in [
        ("4294967296", "expected a whole number >= 1"),
        ("18446744073709551616", "invalid YAML"),
        ("0", "expected a whole number >= 1"),
        ("100001", "replicas must be at most 100000"),
    ] {
        assert_error_mentions(
            &format!("children:\n  w: {{shell: x, replicas: {value}}}\n"),
            needle,
        );
    }
    for factor in [".nan", ".inf", "-.inf", "1e308", "0.5"] {
        assert_error_mentions(
            &format!("children:\n  w: {{shell: x, backoff: {{factor: {factor}}}}}\n"),
            "factor must be a number from 1 to 100",
        );
    }
    for duration in [
        "18446744073709551616s",
        "99999999999999999999999999999ns",
        "1e9s",
        "-1s",
    ] {
        assert_error_mentions(
            &format!("shutdown_timeout: \"{duration}\"\n{WORKER}"),
            "invalid duration",
        );
    }
}

/// Every duration of a tree that the runtime adds to `Instant::now()`.
fn runtime_durations(tree: &TreeSpec) -> Vec<Duration> {
    fn group(g: &config::GroupSpec, out: &mut Vec<Duration>) {
        out.push(g.shutdown_timeout);
        for child in &g.children {
            match &child.kind {
                NodeKind::Group(sub) => group(sub, out),
                NodeKind::Worker(w) => {
                    out.extend([w.stop_timeout, w.backoff.initial, w.backoff.max]);
                    out.extend(w.watchdog);
                }
            }
        }
    }
    let mut out = Vec::new();
    group(&tree.root, &mut out);
    out
}

#[test]
fn accepted_durations_fit_an_instant() {
    for text in [
        format!("shutdown_timeout: 18446744073709551615s\n{WORKER}"),
        "children:\n  w: {shell: x, stop_timeout: 584942417355y}\n".to_string(),
        "children:\n  w: {shell: x, watchdog: 18446744073709551615s}\n".to_string(),
        "children:\n  w: {shell: x, backoff: {initial: 500000000000y, max: 500000000000y}}\n"
            .to_string(),
    ] {
        // Either refused, or every duration can be added to the monotonic clock.
        if let Ok(tree) = parse(&text) {
            for d in runtime_durations(&tree) {
                assert!(
                    Instant::now().checked_add(d).is_some(),
                    "{d:?} accepted from {text:?}"
                );
            }
        }
    }
}

#[test]
fn nul_bytes_are_clean_errors() {
    // A raw NUL is not allowed in YAML at all.
    assert_error_mentions("children:\n  w: {shell: \"x\0\"}\n", "invalid YAML");
    assert_error_mentions("children:\0\n", "invalid YAML");
    // An escaped one in an environment name or value is refused by validation.
    assert_error_mentions(
        "children:\n  w: {shell: x, env: {\"A\\0B\": v}}\n",
        "invalid environment variable name",
    );
    assert_error_mentions(
        "children:\n  w: {shell: x, env: {A: \"v\\0\"}}\n",
        "environment values cannot contain NUL",
    );
}

#[test]
fn invalid_utf8_in_a_config_file_is_a_read_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("arborist.yaml");
    std::fs::write(&path, b"children:\n  w: {shell: \"\xff\xfe\"}\n").expect("write");
    match bounded("config::load", || config::load(&path)) {
        Err(LoadError::Read { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidData)
        }
        other => panic!("expected a read error, got {other:?}"),
    }
    // What config_parse fuzzes instead: the lossy decoding of the same bytes parses.
    let text = String::from_utf8_lossy(b"children:\n  w: {shell: \"\xff\xfe\"}\n");
    assert!(parse(&text).is_ok());
}

#[test]
fn crlf_line_endings_parse_as_lf_and_errors_keep_their_lines() {
    let lf = "shutdown_timeout: 5s\nchildren:\n  a:\n    shell: x\n    stop_timout: 1s\n  b:\n    command: [y]\n    depends_on: [c]\n";
    let crlf = lf.replace('\n', "\r\n");
    assert_eq!(config_errors(lf), config_errors(&crlf));
    let valid = "children:\r\n  a:\r\n    shell: |\r\n      echo one\r\n      echo two\r\n";
    let tree = parse(valid).unwrap_or_else(|e| panic!("{e}"));
    let NodeKind::Worker(w) = &tree.root.children[0].kind else {
        panic!("a worker")
    };
    // A block scalar's CRLF line breaks are normalised to \n, as YAML says.
    assert_eq!(
        w.program,
        config::Program::Shell("echo one\necho two\n".into())
    );
    // A lone \r is a line break too: positions still count lines.
    let errors = config_errors("children:\r  a:\r    shell: x\r    stop_timout: 1s\r");
    assert!(errors[0].starts_with("fuzz.yaml:4:5:"), "{errors:#?}");
}

#[test]
fn odd_keys_and_tags_are_clean_errors() {
    for (text, needle) in [
        (
            "? [a, b]\n: 1\nchildren: {w: {shell: x}}\n",
            "keys must be strings",
        ),
        ("1: x\nchildren: {w: {shell: x}}\n", "keys must be strings"),
        ("children: {w: !!binary aGk=}\n", "a node must be a mapping"),
        ("children: {\"a/b\": {shell: x}}\n", "invalid name"),
        ("children: {\"\": {shell: x}}\n", "invalid name"),
        ("--- a\n--- b\n", "invalid YAML"),
        // A second byte order mark used to become part of the first key for serde_yaml (and
        // saphyr, which locates errors, disagreed, so that error had no line:column).
        (
            "\u{feff}\u{feff}children: {w: {shell: x}}\n",
            "1:1: (root): the file starts with more than one byte-order mark",
        ),
        ("", "the document must be a mapping"),
        ("~", "the document must be a mapping"),
        (
            "children: {w: {shell: x, depends_on: [w, nobody, w]}}\n",
            "cannot depend on itself",
        ),
    ] {
        assert_error_mentions(text, needle);
    }
}

// ---- control protocol --------------------------------------------------------------------

fn request(line: &[u8]) -> Result<Request, String> {
    // As control::server does: the line as read (newline included), decoded lossily.
    let text = String::from_utf8_lossy(line);
    bounded("parse_request", || parse_request(&text))
}

#[test]
fn control_requests_with_nasty_bytes_are_clean_errors() {
    for line in [
        &b"\xff\xfe\n"[..],
        b"{\"cmd\":\"status\"}\0\n",
        b"\0",
        b"{\"cmd\":\"st\xffatus\"}\n",
        b"{\"cmd\":\"status\",\"path\":1e999999}\n",
        b"{\"cmd\":\"stop\",\"path\":null}\n",
        b"{\"cmd\":\"stop\",\"path\":\"\\ud800\"}\n",
        b"\"status\"\n",
        b"{\"cmd\":\"status\"}{\"cmd\":\"status\"}\n",
        b"\r\n",
    ] {
        let got = request(line);
        assert!(
            got.as_ref().is_err_and(|e| !e.is_empty()),
            "{:?} -> {got:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn control_requests_tolerate_crlf_and_odd_but_valid_text() {
    assert_eq!(request(b"{\"cmd\":\"status\"}\r\n"), Ok(Request::Status));
    assert_eq!(
        request(b" \t{\"cmd\":\"reload\"}\t \n"),
        Ok(Request::Reload)
    );
    // Invalid UTF-8 inside a path becomes U+FFFD, and the path is then simply unknown.
    assert_eq!(
        request(b"{\"cmd\":\"stop\",\"path\":\"a\xffb\"}\n"),
        Ok(Request::Stop {
            path: "a\u{fffd}b".into()
        })
    );
    assert_eq!(
        request(b"{\"cmd\":\"stop\",\"path\":\"a\\u0000b\"}\n"),
        Ok(Request::Stop {
            path: "a\0b".into()
        })
    );
}

#[test]
fn deeply_nested_control_requests_are_clean_errors() {
    for depth in [200, 100_000] {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let line = format!("{}1{}\n", open.repeat(depth), close.repeat(depth));
            let got = request(line.as_bytes());
            assert!(got.is_err(), "depth {depth}: {got:?}");
        }
    }
}

#[test]
fn the_largest_request_the_server_parses_is_quick() {
    // The server hands parse_request lines of at most MAX_REQUEST bytes, newline included.
    let head = "{\"cmd\":\"stop\",\"path\":\"";
    let tail = "\"}\n";
    let path = "x".repeat(MAX_REQUEST - head.len() - tail.len());
    let line = format!("{head}{path}{tail}");
    assert_eq!(line.len(), MAX_REQUEST);
    assert_eq!(request(line.as_bytes()), Ok(Request::Stop { path }));
    let escapes = format!("{head}{}{tail}", "\\u00e9".repeat((MAX_REQUEST - 30) / 6));
    assert!(matches!(
        request(escapes.as_bytes()),
        Ok(Request::Stop { .. })
    ));
    let spaces = format!("{}{{\"cmd\":\"status\"}}\n", " ".repeat(MAX_REQUEST - 20));
    assert_eq!(request(spaces.as_bytes()), Ok(Request::Status));
}

// ---- sd_notify and probe URLs ------------------------------------------------------------

#[test]
fn notify_datagrams_with_nasty_bytes_are_split_cleanly() {
    let all: Vec<_> = bounded("fields", || {
        fields(b"\xff\xfe=1\nREADY=1\0\n=\n\n\nWATCHDOG_USEC=18446744073709551616\nSTATUS=a\0b=c")
            .collect()
    });
    assert_eq!(
        all,
        vec![
            ("READY", "1\0"),
            ("", ""),
            ("WATCHDOG_USEC", "18446744073709551616"),
            ("STATUS", "a\0b=c")
        ]
    );
    // A full datagram of line breaks or of '=' is linear, not quadratic.
    let newlines = vec![b'\n'; 1 << 20];
    assert_eq!(bounded("fields", || fields(&newlines).count()), 0);
    let equals = vec![b'='; 1 << 20];
    assert_eq!(bounded("fields", || fields(&equals).count()), 1);
}

#[test]
fn probe_urls_with_nasty_text_are_clean_errors() {
    for url in [
        "",
        "http://",
        "http://:80/",
        "http://[::1",
        "http://[::1]x/",
        "http://[::1]:/",
        "http://h:99999/",
        "http://h:-1/",
        "http://u:p@h/",
        "https://h/",
        "HTTP://h/",
        "http://h/a b",
        "http://h/\0",
        "http://h/\r\nX-Evil: 1",
        "http://h:80:80:x/",
        // Hosts and ports that used to pass, then failed at every probe.
        "http://a b:80/",
        "http://h\r\nX:1/",
        "http://h:+80/",
        "http://h:0/",
        "http://[zz]:80/",
        "http://[::1]:+1/",
    ] {
        let got = bounded("HttpUrl::parse", || HttpUrl::parse(url));
        assert!(
            got.as_ref().is_err_and(|e| !e.is_empty()),
            "{url:?} -> {got:?}"
        );
    }
    let long = format!("http://{}:80/{}", "h".repeat(1 << 20), "p".repeat(1 << 20));
    let url = bounded("HttpUrl::parse", || HttpUrl::parse(&long)).expect("a long URL");
    assert_eq!((url.host.len(), url.port), (1 << 20, 80));
    let v6 = HttpUrl::parse("http://[::1]?q").expect("v6 with a query");
    assert_eq!(
        (v6.host.as_str(), v6.port, v6.path.as_str()),
        ("::1", 80, "/?q")
    );
}
