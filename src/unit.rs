//! `arborist check --systemd UNIT CONFIG`: does the systemd unit that runs arborist let the
//! tree shut down the way `check --plan` says it will?
//!
//! systemd stops a service by sending `KillSignal=` and, once `TimeoutStopSec=` has passed,
//! SIGKILL. A stop timeout shorter than the tree's worst-case shutdown kills every worker in
//! the middle of its cleanup; `KillMode=control-group` (systemd's default) sends the SIGTERM
//! to every process of the unit at once, so dependencies go down together with their
//! dependents and the stop order is lost. This module reads the unit's `[Service]` section
//! the way systemd does (comments, line continuations, the last assignment wins, systemd's
//! time-span syntax) and reports such problems as warnings: the config itself is still valid.
//!
//! Pure apart from [`read`]: unit text and the worst case in, lines to print out.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// systemd's stop timeout when the unit sets neither `TimeoutStopSec=` nor `TimeoutSec=`
/// (`DefaultTimeoutStopSec=` in systemd-system.conf, 90s unless the host changed it).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(90);

/// What the stop timeout must leave after the tree's worst-case shutdown: after the root
/// deadline arborist still SIGKILLs what is left, waits for the kernel to reap it (a process
/// in uninterruptible sleep takes a moment to die), logs or writes the shutdown report and
/// removes its socket. 5 s is far more than that normally takes, and cheap next to systemd
/// SIGKILLing the unit in the middle of it.
pub const STOP_MARGIN: Duration = Duration::from_secs(5);

/// A systemd time span: a duration, or `infinity` (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Finite(Duration),
    Infinity,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Span::Finite(d) => write!(f, "{}", humantime::format_duration(*d)),
            Span::Infinity => f.write_str("infinity"),
        }
    }
}

const USEC_PER_SEC: u64 = 1_000_000;
const USEC_PER_MIN: u64 = 60 * USEC_PER_SEC;
const USEC_PER_HOUR: u64 = 60 * USEC_PER_MIN;
const USEC_PER_DAY: u64 = 24 * USEC_PER_HOUR;

/// Unit suffixes in systemd's own order (src/basic/time-util.c): the first prefix that
/// matches wins, so `ms` is milliseconds and `m` minutes, and `M` (months) differs from `m`.
const SUFFIXES: &[(&str, u64)] = &[
    ("seconds", USEC_PER_SEC),
    ("second", USEC_PER_SEC),
    ("sec", USEC_PER_SEC),
    ("s", USEC_PER_SEC),
    ("minutes", USEC_PER_MIN),
    ("minute", USEC_PER_MIN),
    ("min", USEC_PER_MIN),
    ("months", 2_629_800 * USEC_PER_SEC),
    ("month", 2_629_800 * USEC_PER_SEC),
    ("M", 2_629_800 * USEC_PER_SEC),
    ("msec", 1_000),
    ("ms", 1_000),
    ("m", USEC_PER_MIN),
    ("hours", USEC_PER_HOUR),
    ("hour", USEC_PER_HOUR),
    ("hr", USEC_PER_HOUR),
    ("h", USEC_PER_HOUR),
    ("days", USEC_PER_DAY),
    ("day", USEC_PER_DAY),
    ("d", USEC_PER_DAY),
    ("weeks", 7 * USEC_PER_DAY),
    ("week", 7 * USEC_PER_DAY),
    ("w", 7 * USEC_PER_DAY),
    ("years", 31_557_600 * USEC_PER_SEC),
    ("year", 31_557_600 * USEC_PER_SEC),
    ("y", 31_557_600 * USEC_PER_SEC),
    ("usec", 1),
    ("us", 1),
    ("\u{3bc}s", 1), // GREEK SMALL LETTER MU
    ("\u{b5}s", 1),  // MICRO SIGN
];

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Parses a systemd time span as systemd's `parse_sec()` does: `45` (seconds by default),
/// `45s`, `1min 30s`, `1min30s`, `2m`, `500ms`, `1.5h`, `infinity`. Components add up;
/// negative values, unknown units and `3.` are errors.
pub fn parse_timespan(text: &str) -> Result<Span, String> {
    let mut p = text.trim_start_matches(is_space);
    if let Some(rest) = p.strip_prefix("infinity") {
        return if rest.chars().all(is_space) {
            Ok(Span::Infinity)
        } else {
            Err("unexpected text after \"infinity\"".into())
        };
    }
    let too_large = || "too large".to_string();
    let mut usec: u64 = 0;
    let mut something = false;
    loop {
        p = p.trim_start_matches(is_space);
        if p.is_empty() {
            if !something {
                return Err("empty".into());
            }
            break;
        }
        if p.starts_with('-') {
            return Err("negative".into());
        }
        // The integer part, as strtoll() reads it: an optional '+', then digits. Without
        // digits only a fraction may follow (".5s").
        let body = p.strip_prefix('+').unwrap_or(p);
        let signed = body.len() != p.len();
        let digits = body.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 && (signed || !body.starts_with('.')) {
            return Err(format!("expected a number at {p:?}"));
        }
        let whole: u64 = if digits == 0 {
            0
        } else {
            body[..digits].parse().map_err(|_| too_large())?
        };
        let after_number = &body[digits..];
        let (fraction, rest) = match after_number.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                (Some(&f[..n]), &f[n..])
            }
            None => (None, after_number),
        };
        let spaced = rest.trim_start_matches(is_space);
        let (multiplier, next) = SUFFIXES
            .iter()
            .find(|(suffix, _)| spaced.starts_with(suffix))
            .map_or((USEC_PER_SEC, spaced), |(suffix, m)| {
                (*m, &spaced[suffix.len()..])
            });
        // Neither a space nor a unit after the number, and more text: "12.34.56", "5x".
        if next.len() == rest.len() && !next.is_empty() {
            return Err(format!("unknown unit at {rest:?}"));
        }
        p = next;
        let k = whole.checked_mul(multiplier).ok_or_else(too_large)?;
        usec = usec.checked_add(k).ok_or_else(too_large)?;
        something = true;
        if let Some(fraction) = fraction {
            if fraction.is_empty() {
                return Err("expected digits after '.'".into());
            }
            let mut m = multiplier / 10;
            for b in fraction.bytes() {
                usec = usec
                    .checked_add(u64::from(b - b'0') * m)
                    .ok_or_else(too_large)?;
                m /= 10;
            }
        }
    }
    if usec == u64::MAX {
        return Err(too_large());
    }
    Ok(Span::Finite(Duration::from_micros(usec)))
}

/// `TimeoutStopSec=` and `TimeoutSec=`: a time span where `0` means no timeout, as in
/// systemd (`parse_sec_fix_0()`).
pub fn parse_stop_timeout(text: &str) -> Result<Span, String> {
    match parse_timespan(text)? {
        Span::Finite(d) if d.is_zero() => Ok(Span::Infinity),
        s => Ok(s),
    }
}

/// One `Key=value` line of a `[Service]` section, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Line where the assignment starts (1-based).
    pub line: usize,
    pub key: String,
    pub value: String,
}

/// Every assignment in the `[Service]` sections of a unit file, as systemd's parser sees
/// them: lines starting with `#` or `;` are comments (also inside a continuation), a line
/// ending in an unescaped `\` continues on the next one, keys and values are trimmed, and
/// sections may repeat (as in `systemctl cat` output, which concatenates the unit and its
/// drop-ins). Other sections are skipped.
pub fn service_assignments(text: &str) -> Vec<Assignment> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let stripped = raw.trim_start_matches(is_space);
        if stripped.starts_with('#') || stripped.starts_with(';') {
            continue;
        }
        let (start, mut joined) = match pending.take() {
            Some((start, mut text)) => {
                text.push_str(raw);
                (start, text)
            }
            None => (i + 1, raw.to_string()),
        };
        if ends_in_unescaped_backslash(&joined) {
            joined.pop();
            joined.push(' ');
            pending = Some((start, joined));
            continue;
        }
        let line = joined.trim_matches(is_space);
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            section = name.strip_suffix(']').unwrap_or(name).to_string();
            continue;
        }
        if section != "Service" {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            out.push(Assignment {
                line: start,
                key: key.trim_matches(is_space).to_string(),
                value: value.trim_matches(is_space).to_string(),
            });
        }
    }
    out
}

fn ends_in_unescaped_backslash(s: &str) -> bool {
    let mut escaped = false;
    for c in s.chars() {
        escaped = !escaped && c == '\\';
    }
    escaped
}

/// Where a setting's effective value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub line: usize,
}

/// The `[Service]` settings that decide how systemd starts, reloads and stops arborist.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    /// `Type=`; None: systemd's default (`simple`).
    pub service_type: Option<Setting>,
    /// `KillMode=`; None: systemd's default (`control-group`).
    pub kill_mode: Option<Setting>,
    /// `KillSignal=`; None: SIGTERM.
    pub kill_signal: Option<Setting>,
    /// The stop timeout and the key that set it last (`TimeoutStopSec` or `TimeoutSec`);
    /// None: [`DEFAULT_STOP_TIMEOUT`].
    pub stop_timeout: Option<(Span, String, usize)>,
    /// The `ExecReload=` command lines in effect (an empty assignment clears the list).
    pub exec_reload: Vec<Setting>,
    /// Assignments systemd would reject and ignore: (line, message).
    pub ignored: Vec<(usize, String)>,
}

/// One assignment of a key that takes one of `valid`: empty resets it to systemd's default,
/// a value systemd does not know is ignored (and noted).
fn choose(
    slot: &mut Option<Setting>,
    ignored: &mut Vec<(usize, String)>,
    a: &Assignment,
    valid: &[&str],
    what: &str,
) {
    if a.value.is_empty() {
        *slot = None;
    } else if valid.contains(&a.value.as_str()) {
        *slot = Some(Setting {
            value: a.value.clone(),
            line: a.line,
        });
    } else {
        ignored.push((
            a.line,
            format!(
                "{}={}: not a {what} systemd knows ({}); systemd ignores this line",
                a.key,
                a.value,
                valid.join(", ")
            ),
        ));
    }
}

const TYPES: &[&str] = &[
    "simple",
    "exec",
    "forking",
    "oneshot",
    "dbus",
    "notify",
    "notify-reload",
    "idle",
];
const KILL_MODES: &[&str] = &["control-group", "process", "mixed", "none"];

impl Service {
    /// Folds the assignments in order: the last valid assignment of a key wins, an empty one
    /// resets it, an invalid one is ignored (and noted), as systemd does.
    pub fn from_assignments(assignments: &[Assignment]) -> Service {
        let mut s = Service::default();
        for a in assignments {
            let setting = || Setting {
                value: a.value.clone(),
                line: a.line,
            };
            match a.key.as_str() {
                "Type" => choose(
                    &mut s.service_type,
                    &mut s.ignored,
                    a,
                    TYPES,
                    "service type",
                ),
                "KillMode" => choose(&mut s.kill_mode, &mut s.ignored, a, KILL_MODES, "kill mode"),
                "KillSignal" => {
                    s.kill_signal = (!a.value.is_empty()).then(setting);
                }
                // TimeoutSec= sets the start and the stop timeout, so whichever of the two
                // keys comes last decides.
                "TimeoutStopSec" | "TimeoutSec" => match parse_stop_timeout(&a.value) {
                    Ok(span) => s.stop_timeout = Some((span, a.key.clone(), a.line)),
                    Err(e) => s.ignored.push((
                        a.line,
                        format!(
                            "{}={}: not a systemd time span ({e}); systemd ignores this line",
                            a.key, a.value
                        ),
                    )),
                },
                "ExecReload" => {
                    if a.value.is_empty() {
                        s.exec_reload.clear();
                    } else {
                        s.exec_reload.push(setting());
                    }
                }
                _ => {}
            }
        }
        s
    }

    /// The stop timeout systemd applies.
    pub fn effective_stop_timeout(&self) -> Span {
        self.stop_timeout
            .as_ref()
            .map_or(Span::Finite(DEFAULT_STOP_TIMEOUT), |(span, _, _)| *span)
    }
}

/// What `check --systemd` prints: summary lines for stdout, warnings for stderr (each
/// without the `warning: ` prefix).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub warnings: Vec<String>,
}

/// Reads a unit file; `-` reads standard input (`systemctl cat arborist | arborist check
/// --systemd - CONFIG` checks the unit together with its drop-ins).
pub fn read(path: &Path) -> Result<String, String> {
    if path == Path::new("-") {
        let mut text = String::new();
        return std::io::stdin()
            .read_to_string(&mut text)
            .map(|_| text)
            .map_err(|e| format!("cannot read the systemd unit from standard input: {e}"));
    }
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the systemd unit {}: {e}", path.display()))
}

fn d(x: Duration) -> String {
    humantime::format_duration(x).to_string()
}

/// A whole number of seconds at least `x`: what to suggest for `TimeoutStopSec=`.
fn ceil_secs(x: Duration) -> u64 {
    x.as_secs() + u64::from(x.subsec_nanos() > 0)
}

/// Is `value` (`KillSignal=`) one on which arborist shuts down gracefully?
fn graceful_signal(value: &str) -> bool {
    let name = value.strip_prefix("SIG").unwrap_or(value);
    matches!(name, "TERM" | "INT" | "15" | "2")
}

const CONTROL_GROUP: &str = "`systemctl stop` sends SIGTERM to every process of the unit at \
    once, bypassing arborist's top-down stop order (dependencies stop while their dependents \
    still use them); set KillMode=mixed (SIGTERM to arborist alone, SIGKILL to whatever is left \
    at the end)";

/// Compares the unit `text` (named `name` in messages) with the tree's worst-case shutdown.
pub fn check(name: &str, text: &str, worst: Duration) -> Report {
    let service = Service::from_assignments(&service_assignments(text));
    let mut report = Report::default();
    let at = |line: usize| format!("{name}:{line}");
    for (line, message) in &service.ignored {
        report.warnings.push(format!("{}: {message}", at(*line)));
    }

    // The stop timeout against the worst case.
    let needed = worst + STOP_MARGIN;
    let timeout = service.effective_stop_timeout();
    let source = match &service.stop_timeout {
        Some((_, key, line)) => format!("{key}= on line {line}"),
        None => "systemd's default; the unit sets no TimeoutStopSec=".to_string(),
    };
    let figures = format!(
        "worst-case shutdown {} + {} margin = {}",
        d(worst),
        d(STOP_MARGIN),
        d(needed)
    );
    let verdict = match timeout {
        Span::Infinity => format!("stop timeout infinity ({source}), {figures}: ok"),
        Span::Finite(t) if t >= needed => {
            format!("stop timeout {} ({source}) >= {figures}: ok", d(t))
        }
        Span::Finite(t) => {
            let suggestion = ceil_secs(needed);
            let (location, what) = match &service.stop_timeout {
                Some((_, key, line)) => (at(*line), format!("{key}={}", d(t))),
                None => (
                    name.to_string(),
                    format!(
                        "no TimeoutStopSec=, so systemd's default stop timeout {}",
                        d(t)
                    ),
                ),
            };
            let problem = if t < worst {
                format!(
                    "is shorter than the tree's worst-case shutdown {}: systemd would SIGKILL \
                     every worker {} into a shutdown that may need {}",
                    d(worst),
                    d(t),
                    d(worst)
                )
            } else {
                format!(
                    "leaves less than {} after the tree's worst-case shutdown {} for the final \
                     SIGKILLs, reaping and the shutdown report",
                    d(STOP_MARGIN),
                    d(worst)
                )
            };
            report.warnings.push(format!(
                "{location}: {what} {problem}; set TimeoutStopSec={suggestion}s (worst case {} \
                 + {} margin) or more",
                d(worst),
                d(STOP_MARGIN)
            ));
            format!("stop timeout {} ({source}) < {figures}: TOO SHORT", d(t))
        }
    };
    report.lines.push(format!("systemd unit {name}: {verdict}"));

    // How systemd talks to arborist and stops it.
    let mut facts = Vec::new();
    let before = report.warnings.len();
    let service_type = service.service_type.as_ref();
    match service_type.map(|s| s.value.as_str()) {
        Some(t @ ("notify" | "notify-reload")) => facts.push(format!("Type={t}")),
        other => {
            let (location, what) = match service_type {
                Some(s) => (at(s.line), format!("Type={}", s.value)),
                None => (
                    name.to_string(),
                    "Type= is not set, so systemd uses Type=simple".to_string(),
                ),
            };
            facts.push(format!("Type={}", other.unwrap_or("simple (default)")));
            report.warnings.push(format!(
                "{location}: {what}: systemd does not wait for arborist's READY=1 (units ordered \
                 after it start before any worker is ready) and ignores its STOPPING=1, \
                 RELOADING=1, WATCHDOG=1 and EXTEND_TIMEOUT_USEC=; set Type=notify (or \
                 Type=notify-reload with systemd >= 253)"
            ));
        }
    }
    match &service.kill_mode {
        Some(mode) if mode.value == "mixed" => facts.push("KillMode=mixed".into()),
        None => {
            facts.push("KillMode=control-group (default)".into());
            report.warnings.push(format!(
                "{name}: KillMode= is not set, so systemd uses KillMode=control-group: \
                 {CONTROL_GROUP}"
            ));
        }
        Some(mode) if mode.value == "control-group" => {
            facts.push("KillMode=control-group".into());
            report.warnings.push(format!(
                "{}: KillMode=control-group: {CONTROL_GROUP}",
                at(mode.line)
            ));
        }
        Some(mode) => {
            facts.push(format!("KillMode={}", mode.value));
            report.warnings.push(format!(
                "{}: KillMode={}: systemd never SIGKILLs the rest of the unit, so processes that \
                 escaped their worker's process group outlive a stop{}; set KillMode=mixed",
                at(mode.line),
                mode.value,
                if mode.value == "none" {
                    ", and not even arborist is killed at the stop timeout"
                } else {
                    ""
                }
            ));
        }
    }
    if let Some(sig) = &service.kill_signal {
        if !graceful_signal(&sig.value) {
            report.warnings.push(format!(
                "{}: KillSignal={}: arborist shuts the tree down gracefully only on SIGTERM or \
                 SIGINT; remove the line (SIGTERM is the default)",
                at(sig.line),
                sig.value
            ));
        }
        facts.push(format!("KillSignal={}", sig.value));
    }
    let reload_builtin = service_type.is_some_and(|s| s.value == "notify-reload");
    if !service.exec_reload.is_empty() {
        facts.push("ExecReload= set".into());
    } else if reload_builtin {
        facts.push("reload by ReloadSignal=".into());
    } else {
        facts.push("no ExecReload=".into());
        report.warnings.push(format!(
            "{name}: no ExecReload=: `systemctl reload` fails (\"Job type reload is not \
             applicable\"), so applying a changed tree takes a restart that stops every worker; \
             set ExecReload=/usr/local/bin/arborist --socket SOCKET reload (it waits for the \
             result), or ExecReload=/bin/kill -HUP $MAINPID"
        ));
    }
    let n = report.warnings.len() - before;
    report.lines.push(format!(
        "systemd unit {name}: {}: {}",
        facts.join(", "),
        match n {
            0 => "ok".to_string(),
            1 => "1 warning".to_string(),
            n => format!("{n} warnings"),
        }
    ));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Span {
        Span::Finite(Duration::from_secs(s))
    }

    fn ms(m: u64) -> Span {
        Span::Finite(Duration::from_millis(m))
    }

    #[test]
    fn time_spans_parse_as_systemd_does() {
        for (text, want) in [
            ("45", secs(45)),
            ("45s", secs(45)),
            (" 45s ", secs(45)),
            ("45 s", secs(45)),
            ("45sec", secs(45)),
            ("45 seconds", secs(45)),
            ("1min 30s", secs(90)),
            ("1min30s", secs(90)),
            ("1m30s", secs(90)),
            ("2m", secs(120)),
            ("2 min", secs(120)),
            ("500ms", ms(500)),
            ("500msec", ms(500)),
            ("1.5s", ms(1500)),
            ("1.5", ms(1500)),
            (".5s", ms(500)),
            ("0.25min", secs(15)),
            ("2h", secs(7200)),
            ("1hr 2m 3s", secs(3723)),
            ("1d", secs(86_400)),
            ("1w", secs(604_800)),
            ("1M", secs(2_629_800)),
            ("1y", secs(31_557_600)),
            ("10us", Span::Finite(Duration::from_micros(10))),
            ("10µs", Span::Finite(Duration::from_micros(10))),
            ("30s45", secs(75)),
            ("1 2", secs(3)),
            ("+5s", secs(5)),
            ("0", secs(0)),
            ("infinity", Span::Infinity),
            (" infinity ", Span::Infinity),
        ] {
            assert_eq!(parse_timespan(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn bad_time_spans_are_rejected() {
        for text in [
            "",
            "   ",
            "-1s",
            "-0",
            "abc",
            "s",
            "5x",
            "5mins",
            "3.sec",
            "3.",
            "12.34.56",
            "+s",
            "+.5s",
            "infinityx",
            "infinity 5",
            "1 x",
            "5 5 mins",
        ] {
            assert!(parse_timespan(text).is_err(), "{text:?} should not parse");
        }
        assert!(parse_timespan("99999999999999999999s").is_err());
        assert!(parse_timespan("600000y").is_err());
    }

    #[test]
    fn a_zero_stop_timeout_means_none() {
        assert_eq!(parse_stop_timeout("0"), Ok(Span::Infinity));
        assert_eq!(parse_stop_timeout("0s"), Ok(Span::Infinity));
        assert_eq!(parse_stop_timeout("infinity"), Ok(Span::Infinity));
        assert_eq!(parse_stop_timeout("45s"), Ok(secs(45)));
    }

    fn service(text: &str) -> Service {
        Service::from_assignments(&service_assignments(text))
    }

    #[test]
    fn only_the_service_section_counts_and_comments_are_skipped() {
        let s = service(
            "[Unit]\nTimeoutStopSec=1s\n# TimeoutStopSec=2s\n[Service]\n  # KillMode=process\n\
             ; TimeoutStopSec=3s\nTimeoutStopSec = 45s \n[Install]\nTimeoutStopSec=4s\n",
        );
        assert_eq!(s.effective_stop_timeout(), secs(45));
        assert_eq!(s.stop_timeout, Some((secs(45), "TimeoutStopSec".into(), 7)));
        assert_eq!(s.kill_mode, None);
    }

    #[test]
    fn the_last_assignment_wins_and_timeout_sec_sets_the_stop_timeout_too() {
        let s = service("[Service]\nTimeoutStopSec=10s\nTimeoutStopSec=20s\n");
        assert_eq!(s.effective_stop_timeout(), secs(20));
        let s = service("[Service]\nTimeoutSec=1min\n");
        assert_eq!(s.effective_stop_timeout(), secs(60));
        let s = service("[Service]\nTimeoutStopSec=45s\nTimeoutSec=10s\n");
        assert_eq!(s.effective_stop_timeout(), secs(10));
        let s = service("[Service]\nTimeoutSec=10s\nTimeoutStopSec=45s\n");
        assert_eq!(s.effective_stop_timeout(), secs(45));
        let s = service("[Service]\nTimeoutStopSec=0\n");
        assert_eq!(s.effective_stop_timeout(), Span::Infinity);
        let s = service("[Service]\nType=simple\n");
        assert_eq!(
            s.effective_stop_timeout(),
            Span::Finite(DEFAULT_STOP_TIMEOUT)
        );
    }

    #[test]
    fn invalid_values_are_ignored_like_systemd_does() {
        let s = service(
            "[Service]\nTimeoutStopSec=45s\nTimeoutStopSec=4x5s\nKillMode=mixed\nKillMode=mixd\n",
        );
        assert_eq!(s.effective_stop_timeout(), secs(45));
        assert_eq!(
            s.kill_mode.as_ref().map(|k| k.value.as_str()),
            Some("mixed")
        );
        assert_eq!(s.ignored.len(), 2);
        assert_eq!(s.ignored[0].0, 3);
        assert_eq!(s.ignored[1].0, 5);
    }

    #[test]
    fn empty_assignments_reset() {
        let s =
            service("[Service]\nKillMode=mixed\nKillMode=\nExecReload=/bin/true\nExecReload=\n");
        assert_eq!(s.kill_mode, None);
        assert!(s.exec_reload.is_empty());
    }

    #[test]
    fn continuation_lines_are_joined() {
        let a = service_assignments(
            "[Service]\nExecReload=/usr/local/bin/arborist \\\n# a comment in between\n  reload\n\
             KillMode=mixed\nExecStart=/bin/echo a\\\\\nType=notify\n",
        );
        assert_eq!(a[0].line, 2);
        assert_eq!(a[0].key, "ExecReload");
        assert_eq!(a[0].value, "/usr/local/bin/arborist    reload");
        assert_eq!(a[1].key, "KillMode");
        // An escaped backslash does not continue the line.
        assert_eq!(a[2].value, "/bin/echo a\\\\");
        assert_eq!(a[3].key, "Type");
    }

    const GOOD: &str = "[Unit]\nDescription=x\n\n[Service]\nType=notify\nNotifyAccess=main\n\
        ExecStart=/usr/local/bin/arborist run /etc/arborist/arborist.yaml\n\
        ExecReload=/bin/kill -HUP $MAINPID\nKillMode=mixed\nTimeoutStopSec=45s\n\n\
        [Install]\nWantedBy=multi-user.target\n";

    #[test]
    fn a_good_unit_has_no_warnings() {
        let r = check("a.service", GOOD, Duration::from_secs(30));
        assert_eq!(r.warnings, Vec::<String>::new());
        assert_eq!(
            r.lines,
            vec![
                "systemd unit a.service: stop timeout 45s (TimeoutStopSec= on line 10) >= \
                 worst-case shutdown 30s + 5s margin = 35s: ok",
                "systemd unit a.service: Type=notify, KillMode=mixed, ExecReload= set: ok",
            ]
        );
    }

    #[test]
    fn a_short_stop_timeout_warns_with_both_values_and_a_suggestion() {
        let unit = GOOD.replace("TimeoutStopSec=45s", "TimeoutStopSec=5s");
        let r = check("a.service", &unit, Duration::from_secs(13));
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        let w = &r.warnings[0];
        assert!(
            w.starts_with("a.service:10: TimeoutStopSec=5s is shorter than"),
            "{w}"
        );
        assert!(w.contains("worst-case shutdown 13s"), "{w}");
        assert!(w.contains("set TimeoutStopSec=18s"), "{w}");
        assert!(r.lines[0].ends_with("TOO SHORT"), "{}", r.lines[0]);
        assert!(r.lines[1].ends_with(": ok"), "{}", r.lines[1]);
    }

    #[test]
    fn the_margin_is_required_too() {
        let unit = GOOD.replace("TimeoutStopSec=45s", "TimeoutStopSec=15s");
        let r = check("a.service", &unit, Duration::from_secs(13));
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].contains("leaves less than 5s"),
            "{}",
            r.warnings[0]
        );
        assert!(r.warnings[0].contains("TimeoutStopSec=18s"));
        // Exactly worst case + margin is enough; fractions round the suggestion up.
        let unit = GOOD.replace("TimeoutStopSec=45s", "TimeoutStopSec=18s");
        assert!(check("a.service", &unit, Duration::from_secs(13))
            .warnings
            .is_empty());
        let unit = GOOD.replace("TimeoutStopSec=45s", "TimeoutStopSec=1s");
        let r = check("a.service", &unit, Duration::from_millis(13_200));
        assert!(
            r.warnings[0].contains("TimeoutStopSec=19s"),
            "{}",
            r.warnings[0]
        );
    }

    #[test]
    fn the_default_stop_timeout_and_infinity() {
        let unit = GOOD.replace("TimeoutStopSec=45s\n", "");
        let r = check("a.service", &unit, Duration::from_secs(30));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(
            r.lines[0].contains("stop timeout 1m 30s (systemd's default"),
            "{}",
            r.lines[0]
        );
        let r = check("a.service", &unit, Duration::from_secs(88));
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].starts_with(
                "a.service: no TimeoutStopSec=, so systemd's default stop timeout 1m 30s leaves"
            ),
            "{}",
            r.warnings[0]
        );
        let unit = GOOD.replace("TimeoutStopSec=45s", "TimeoutStopSec=infinity");
        let r = check("a.service", &unit, Duration::from_secs(3600));
        assert!(r.warnings.is_empty());
        assert!(
            r.lines[0].contains("stop timeout infinity"),
            "{}",
            r.lines[0]
        );
    }

    #[test]
    fn kill_mode_type_signal_and_reload_are_checked() {
        // The default KillMode is control-group.
        let r = check(
            "a.service",
            &GOOD.replace("KillMode=mixed\n", ""),
            Duration::from_secs(1),
        );
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].starts_with("a.service: KillMode= is not set"));
        assert!(r.warnings[0].contains("KillMode=mixed"));
        for mode in ["control-group", "process", "none"] {
            let r = check(
                "a.service",
                &GOOD.replace("KillMode=mixed", &format!("KillMode={mode}")),
                Duration::from_secs(1),
            );
            assert_eq!(r.warnings.len(), 1, "{mode}");
            assert!(
                r.warnings[0].starts_with(&format!("a.service:9: KillMode={mode}")),
                "{}",
                r.warnings[0]
            );
        }
        // Type.
        let r = check(
            "a.service",
            &GOOD.replace("Type=notify\n", ""),
            Duration::from_secs(1),
        );
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("Type= is not set, so systemd uses Type=simple"));
        let r = check(
            "a.service",
            &GOOD.replace("Type=notify", "Type=exec"),
            Duration::from_secs(1),
        );
        assert!(r.warnings[0].starts_with("a.service:5: Type=exec:"));
        // notify-reload needs no ExecReload=; notify does.
        let without_reload = GOOD.replace("ExecReload=/bin/kill -HUP $MAINPID\n", "");
        let r = check("a.service", &without_reload, Duration::from_secs(1));
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].starts_with("a.service: no ExecReload="));
        let r = check(
            "a.service",
            &without_reload.replace("Type=notify", "Type=notify-reload"),
            Duration::from_secs(1),
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        // KillSignal.
        for (signal, warns) in [
            ("SIGTERM", false),
            ("SIGINT", false),
            ("TERM", false),
            ("15", false),
            ("SIGKILL", true),
            ("SIGQUIT", true),
        ] {
            let unit = GOOD.replace(
                "KillMode=mixed",
                &format!("KillMode=mixed\nKillSignal={signal}"),
            );
            let r = check("a.service", &unit, Duration::from_secs(1));
            assert_eq!(
                r.warnings.len(),
                usize::from(warns),
                "{signal}: {:?}",
                r.warnings
            );
        }
    }

    #[test]
    fn everything_wrong_at_once() {
        let r = check(
            "bare.service",
            "[Service]\nExecStart=/usr/local/bin/arborist run\nTimeoutStopSec=5s\n",
            Duration::from_secs(13),
        );
        assert_eq!(r.warnings.len(), 4, "{:#?}", r.warnings);
        assert_eq!(
            r.lines[1],
            "systemd unit bare.service: Type=simple (default), KillMode=control-group (default), \
             no ExecReload=: 3 warnings"
        );
    }
}
