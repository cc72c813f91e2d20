//! Typed getters of the validator: each checks one value (a duration, a signal, an argv,
//! a probe...), reports its own located error and returns None on failure.

use std::str::FromStr;
use std::time::Duration;

/// The longest duration accepted anywhere in a config: 100 years.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Group, Uid, User};
use serde_yaml::{Mapping, Value};

use super::{kind_of, scalar_text, show, At, Validator};
use crate::config::schema::*;

impl Validator<'_> {
    pub(super) fn string(&mut self, v: &Value, at: &At) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.bad_value(at, format!("expected a string, found {}", kind_of(other)));
                None
            }
        }
    }

    /// A string handed to the OS (a program, an argument, a script, a directory), which
    /// cannot carry NUL: the kernel would cut it there, and every spawn would fail.
    pub(super) fn os_string(&mut self, v: &Value, at: &At) -> Option<String> {
        let s = self.string(v, at)?;
        if s.contains('\0') {
            self.bad_value(at, "a NUL character cannot be passed to a program".into());
            return None;
        }
        Some(s)
    }

    pub(super) fn boolean(&mut self, v: &Value, at: &At) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                self.bad_value(
                    at,
                    format!("expected true or false, found {}", kind_of(other)),
                );
                None
            }
        }
    }

    /// A whole number no smaller than `min`.
    pub(super) fn count(&mut self, v: &Value, at: &At, min: u64) -> Option<u64> {
        match v.as_u64() {
            Some(n) if n >= min && n <= u32::MAX as u64 => Some(n),
            _ => {
                self.bad_value(
                    at,
                    format!("expected a whole number >= {min}, found {}", show(v)),
                );
                None
            }
        }
    }

    pub(super) fn duration(&mut self, v: &Value, at: &At, nonzero: bool) -> Option<Duration> {
        let Value::String(s) = v else {
            let hint = match v {
                Value::Number(n) => format!(" (write '{n}s' for seconds)"),
                _ => String::new(),
            };
            self.bad_value(
                at,
                format!(
                    "expected a duration such as 250ms, 10s or 1m30s, found {}{hint}",
                    show(v)
                ),
            );
            return None;
        };
        match humantime::parse_duration(s.trim()) {
            Ok(d) if nonzero && d.is_zero() => {
                self.bad_value(at, "the duration must be greater than zero".into());
                None
            }
            // Deadlines and delays are added to the monotonic clock, which overflows (a
            // panic) somewhere past a few hundred years; nothing sensible needs more than this.
            Ok(d) if d > MAX_DURATION => {
                self.bad_value(
                    at,
                    format!("duration '{s}' is too long (at most 100 years)"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.bad_value(
                    at,
                    format!("invalid duration '{s}': {e} (use e.g. 250ms, 10s, 1m30s)"),
                );
                None
            }
        }
    }

    pub(super) fn duration_key(
        &mut self,
        map: &Mapping,
        at: &At,
        key: &str,
        nonzero: bool,
    ) -> Option<Duration> {
        let v = map.get(key)?;
        self.duration(v, &at.key(key), nonzero)
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        map: &Mapping,
        at: &At,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let v = map.get(key)?;
        let kat = at.key(key);
        let s = self.string(v, &kat)?;
        let found = options.iter().find(|(name, _)| *name == s).map(|(_, t)| *t);
        if found.is_none() {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            self.bad_value(
                &kat,
                format!("invalid {key} '{s}': expected one of {}", names.join(", ")),
            );
        }
        found
    }

    /// A list of strings; an argv when `allow_empty` is false.
    pub(super) fn string_list(
        &mut self,
        v: &Value,
        at: &At,
        allow_empty: bool,
    ) -> Option<Vec<String>> {
        let Value::Sequence(items) = v else {
            self.bad_value(
                at,
                format!("expected a list of strings, found {}", kind_of(v)),
            );
            return None;
        };
        if items.is_empty() && !allow_empty {
            self.bad_value(at, "the list is empty: it needs at least a program".into());
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) if s.contains('\0') => {
                    self.bad_value(
                        &at.index(i),
                        "a NUL character cannot be passed to a program".into(),
                    );
                    ok = false;
                }
                Value::String(s) => out.push(s.clone()),
                // argv words like 8080 or true are meant as text.
                Value::Number(n) if !allow_empty => out.push(n.to_string()),
                Value::Bool(b) if !allow_empty => out.push(b.to_string()),
                other => {
                    self.bad_value(
                        &at.index(i),
                        format!("expected a string, found {}", kind_of(other)),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    pub(super) fn env(&mut self, map: &Mapping, at: &At) -> Vec<(String, String)> {
        let Some(v) = map.get("env") else {
            return vec![];
        };
        let eat = at.key("env");
        let Value::Mapping(m) = v else {
            self.bad_value(
                &eat,
                format!(
                    "`env` must be a mapping of NAME: value, found {}",
                    kind_of(v)
                ),
            );
            return vec![];
        };
        let mut out = Vec::new();
        for (k, val) in m {
            let Some(name) = k.as_str() else {
                self.bad_value(
                    &eat,
                    format!("env names must be strings, found {}", show(k)),
                );
                continue;
            };
            let vat = eat.key(name);
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                self.bad_key(&vat, format!("invalid environment variable name '{name}'"));
                continue;
            }
            let text = match val {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    self.bad_value(
                        &vat,
                        format!(
                            "expected a string, number or boolean, found {}",
                            kind_of(other)
                        ),
                    );
                    continue;
                }
            };
            if text.contains('\0') {
                self.bad_value(&vat, "environment values cannot contain NUL".into());
                continue;
            }
            out.push((name.to_string(), text));
        }
        out
    }

    pub(super) fn signal(&mut self, v: &Value, at: &At) -> Option<Signal> {
        let s = self.string(v, at)?;
        let upper = s.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        match Signal::from_str(&full) {
            Ok(sig) => Some(sig),
            Err(_) => {
                self.bad_value(
                    at,
                    format!("unknown signal '{s}' (use a name such as SIGTERM, SIGINT, SIGQUIT)"),
                );
                None
            }
        }
    }

    /// The user and its primary group (None for a numeric uid without a passwd entry).
    pub(super) fn user(&mut self, v: &Value, at: &At) -> Option<(Identity<Uid>, Option<Gid>)> {
        let Some(name) = scalar_text(v) else {
            self.bad_value(
                at,
                format!("expected a user name or uid, found {}", kind_of(v)),
            );
            return None;
        };
        let found = match name.parse::<u32>() {
            Ok(n) => {
                User::from_uid(Uid::from_raw(n)).map(|u| Some((Uid::from_raw(n), u.map(|u| u.gid))))
            }
            Err(_) => User::from_name(&name).map(|u| u.map(|u| (u.uid, Some(u.gid)))),
        };
        match found {
            Ok(Some((id, gid))) => Some((Identity { name, id }, gid)),
            Ok(None) => {
                self.bad_value(at, format!("no such user '{name}'"));
                None
            }
            Err(e) => {
                self.bad_value(at, format!("cannot look up user '{name}': {e}"));
                None
            }
        }
    }

    pub(super) fn group_id(&mut self, v: &Value, at: &At) -> Option<Identity<Gid>> {
        let Some(name) = scalar_text(v) else {
            self.bad_value(
                at,
                format!("expected a group name or gid, found {}", kind_of(v)),
            );
            return None;
        };
        let found = match name.parse::<u32>() {
            Ok(n) => Ok(Some(Gid::from_raw(n))),
            Err(_) => Group::from_name(&name).map(|g| g.map(|g| g.gid)),
        };
        match found {
            Ok(Some(id)) => Some(Identity { name, id }),
            Ok(None) => {
                self.bad_value(at, format!("no such group '{name}'"));
                None
            }
            Err(e) => {
                self.bad_value(at, format!("cannot look up group '{name}': {e}"));
                None
            }
        }
    }

    pub(super) fn backoff(&mut self, v: &Value, at: &At) -> Option<Backoff> {
        let Value::Mapping(m) = v else {
            self.bad_value(
                at,
                format!(
                    "`backoff` must be a mapping {{initial, max, factor, jitter}}, found {}",
                    kind_of(v)
                ),
            );
            return None;
        };
        self.only_keys(m, at, &["initial", "max", "factor", "jitter"]);
        let mut b = Backoff::default();
        if let Some(d) = self.duration_key(m, at, "initial", false) {
            b.initial = d;
        }
        if let Some(d) = self.duration_key(m, at, "max", false) {
            b.max = d;
        }
        if let Some(f) = m.get("factor") {
            match f.as_f64() {
                Some(x) if (1.0..=100.0).contains(&x) => b.factor = x,
                _ => self.bad_value(
                    &at.key("factor"),
                    format!("factor must be a number from 1 to 100, found {}", show(f)),
                ),
            }
        }
        if let Some(j) = m.get("jitter") {
            match j.as_f64() {
                Some(x) if (0.0..=1.0).contains(&x) => b.jitter = x,
                _ => self.bad_value(
                    &at.key("jitter"),
                    format!("jitter must be a number from 0 to 1, found {}", show(j)),
                ),
            }
        }
        if b.initial > b.max {
            self.bad_value(at, "backoff `initial` is larger than `max`".into());
        }
        Some(b)
    }

    pub(super) fn ready(&mut self, v: &Value, at: &At) -> Option<ReadySpec> {
        let Value::Mapping(m) = v else {
            self.bad_value(
                at,
                format!(
                    "`ready` must be a mapping such as {{tcp: \"127.0.0.1:5432\"}}, found {}",
                    kind_of(v)
                ),
            );
            return None;
        };
        self.only_keys(
            m,
            at,
            &["tcp", "exec", "http", "notify", "interval", "timeout"],
        );
        let kinds: Vec<&str> = ["tcp", "exec", "http", "notify"]
            .into_iter()
            .filter(|k| m.contains_key(*k))
            .collect();
        if kinds.len() != 1 {
            self.bad_value(
                at,
                format!(
                    "`ready` needs exactly one of tcp, exec, http, notify (found {})",
                    if kinds.is_empty() {
                        "none".to_string()
                    } else {
                        kinds.join(", ")
                    }
                ),
            );
            return None;
        }
        let kind = kinds[0];
        let kat = at.key(kind);
        let value = &m[kind];
        let check = match kind {
            "tcp" => {
                let addr = self.string(value, &kat)?;
                let port_ok = addr
                    .rsplit_once(':')
                    .map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                    .unwrap_or(false);
                if !port_ok {
                    self.bad_value(
                        &kat,
                        format!("invalid address '{addr}': expected host:port"),
                    );
                    return None;
                }
                ReadyCheck::Tcp(addr)
            }
            "exec" => ReadyCheck::Exec(self.string_list(value, &kat, false)?),
            "http" => {
                let url = self.string(value, &kat)?;
                match HttpUrl::parse(&url) {
                    Ok(u) => ReadyCheck::Http(u),
                    Err(e) => {
                        self.bad_value(&kat, format!("invalid URL '{url}': {e}"));
                        return None;
                    }
                }
            }
            _ => {
                if self.boolean(value, &kat)? {
                    ReadyCheck::Notify
                } else {
                    self.bad_value(
                        &kat,
                        "`notify: false` means nothing; leave `ready` out for spawned = ready"
                            .into(),
                    );
                    return None;
                }
            }
        };
        let interval = self
            .duration_key(m, at, "interval", true)
            .unwrap_or(DEFAULT_READY_INTERVAL);
        let timeout = self
            .duration_key(m, at, "timeout", true)
            .unwrap_or(DEFAULT_READY_TIMEOUT);
        Some(ReadySpec {
            check,
            interval,
            timeout,
        })
    }

    pub(super) fn only_keys(&mut self, m: &Mapping, at: &At, allowed: &[&str]) {
        for key in m.keys() {
            match key.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => {
                    let hint = allowed
                        .iter()
                        .map(|c| (strsim::damerau_levenshtein(k, c), *c))
                        .filter(|(d, _)| *d <= 2)
                        .min()
                        .map(|(_, c)| format!(" (did you mean '{c}'?)"))
                        .unwrap_or_default();
                    self.bad_key(
                        &at.key(k),
                        format!(
                            "unknown key '{k}'{hint}; expected one of {}",
                            allowed.join(", ")
                        ),
                    );
                }
                None => self.bad_value(at, format!("keys must be strings, found {}", show(key))),
            }
        }
    }
}
