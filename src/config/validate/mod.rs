//! Turns a parsed YAML value into a [`TreeSpec`], collecting every error of the file instead
//! of stopping at the first. Each check knows the YAML path of what it looks at, so errors
//! carry positions from [`Locations`] and the node path they belong to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_yaml::{Mapping, Value};

mod limits;
mod values;

use super::error::ConfigError;
use super::locate::{Locations, Pos, Seg};
use super::schema::*;

const GROUP_KEYS: &[&str] = &[
    "children",
    "strategy",
    "max_restarts",
    "restart_window",
    "shutdown_timeout",
    "stop_order",
    "start_concurrency",
    "depends_on",
];
const ROOT_ONLY_KEYS: &[&str] = &[
    "control_socket",
    "health_addr",
    "guardian_grace",
    "ownership",
];
const WORKER_KEYS: &[&str] = &[
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
    "depends_on",
];

/// Largest pool a single worker entry may ask for; beyond this is almost surely a typo.
const MAX_REPLICAS: u64 = 100_000;

/// Nesting deeper than this is refused before serde_yaml sees the text (libyaml takes
/// quadratic time on deeply nested flow collections).
const MAX_DEPTH: usize = 128;
/// Nodes the document may have once every alias is expanded (serde_yaml limits alias
/// jumps, not the nodes they expand to: a 28 KB file could expand to 16 million).
const MAX_EXPANDED_NODES: usize = 100_000;

fn is_depth_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["recursion", "depth", "deep", "nest"]
        .iter()
        .any(|w| m.contains(w))
}

/// One pass over saphyr's events: refuses documents too deep or whose aliases expand past
/// [`MAX_EXPANDED_NODES`]. Other syntax errors are left to serde_yaml's message.
fn bounded_yaml(text: &str) -> Result<(), (Pos, String)> {
    use saphyr_parser::{Event, Parser};
    let mut depth = 0usize;
    let mut nodes = 0usize;
    // Per anchor id: its size in (expanded) nodes; open collections with their anchor.
    let mut sizes: std::collections::HashMap<usize, usize> = Default::default();
    let mut open: Vec<(usize, usize)> = Vec::new();
    for item in Parser::new_from_str(text) {
        let (event, span) = match item {
            Ok(item) => item,
            // saphyr's own nesting limit: refuse here, libyaml would take quadratic time.
            Err(e) if is_depth_error(&e.to_string()) => {
                let m = e.marker();
                let pos = Pos {
                    line: m.line(),
                    col: m.col() + 1,
                };
                return Err((pos, format!("nested too deeply ({e})")));
            }
            // Other syntax errors: serde_yaml's message says it better.
            Err(_) => return Ok(()),
        };
        let pos = Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        };
        match event {
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                depth += 1;
                nodes += 1;
                if depth > MAX_DEPTH {
                    return Err((pos, format!("nested deeper than {MAX_DEPTH} levels")));
                }
                open.push((anchor, nodes));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                depth = depth.saturating_sub(1);
                if let Some((anchor, start)) = open.pop() {
                    if anchor > 0 {
                        sizes.insert(anchor, nodes - start + 1);
                    }
                }
            }
            Event::Scalar(_, _, anchor, _) => {
                nodes += 1;
                if anchor > 0 {
                    sizes.insert(anchor, 1);
                }
            }
            Event::Alias(anchor) => nodes += sizes.get(&anchor).copied().unwrap_or(1),
            _ => {}
        }
        if nodes > MAX_EXPANDED_NODES {
            return Err((
                pos,
                format!(
                    "more than {MAX_EXPANDED_NODES} nodes once aliases are expanded (an alias bomb?)"
                ),
            ));
        }
    }
    Ok(())
}

pub fn parse(text: &str, source: &Path) -> Result<TreeSpec, Vec<ConfigError>> {
    // One byte-order mark is allowed; a second would become part of the first key, with no
    // position to show for it.
    if text.trim_start_matches('\u{feff}').len() + 3 < text.len() {
        return Err(vec![ConfigError {
            file: source.to_path_buf(),
            pos: Some(Pos { line: 1, col: 1 }),
            node: String::new(),
            message: "the file starts with more than one byte-order mark (U+FEFF)".into(),
        }]);
    }
    if let Err((pos, message)) = bounded_yaml(text) {
        return Err(vec![ConfigError {
            file: source.to_path_buf(),
            pos: Some(pos),
            node: String::new(),
            message: format!("invalid YAML: {message}"),
        }]);
    }
    let value: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let pos = e.location().map(|l| Pos {
                line: l.line(),
                col: l.column(),
            });
            return Err(vec![ConfigError {
                file: source.to_path_buf(),
                pos,
                node: String::new(),
                message: format!("invalid YAML: {e}"),
            }]);
        }
    };
    let mut v = Validator {
        file: source.to_path_buf(),
        text,
        loc: None,
        errors: Vec::new(),
    };
    let root = v.root(&value);
    if v.errors.is_empty() {
        let Root {
            group,
            control_socket,
            health_addr,
            guardian_grace,
            ownership,
        } = root.expect("a root without errors");
        Ok(TreeSpec {
            source: source.to_path_buf(),
            control_socket,
            health_addr,
            guardian_grace,
            ownership,
            root: group,
        })
    } else {
        // Errors in document order read best.
        v.errors
            .sort_by_key(|e| e.pos.map(|p| (p.line, p.col)).unwrap_or((usize::MAX, 0)));
        Err(v.errors)
    }
}

/// The root group and the keys only the root carries.
struct Root {
    group: GroupSpec,
    control_socket: Option<PathBuf>,
    health_addr: Option<SocketAddr>,
    guardian_grace: Duration,
    ownership: Ownership,
}

struct Validator<'t> {
    file: PathBuf,
    text: &'t str,
    /// Source positions, indexed on the first error only: a valid file never pays for it.
    loc: Option<Locations>,
    errors: Vec<ConfigError>,
}

/// Where a check is looking: the YAML path and the node it belongs to.
#[derive(Clone)]
struct At<'a> {
    yaml: Vec<Seg>,
    node: &'a str,
}

impl<'a> At<'a> {
    fn key(&self, k: &str) -> At<'a> {
        let mut yaml = self.yaml.clone();
        yaml.push(Seg::Key(k.to_string()));
        At {
            yaml,
            node: self.node,
        }
    }
    fn index(&self, i: usize) -> At<'a> {
        let mut yaml = self.yaml.clone();
        yaml.push(Seg::Index(i));
        At {
            yaml,
            node: self.node,
        }
    }
}

impl Validator<'_> {
    fn locations(&mut self) -> &Locations {
        let text = self.text;
        self.loc.get_or_insert_with(|| Locations::index(text))
    }

    fn push(&mut self, pos: Option<Pos>, node: &str, message: String) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            pos,
            node: node.to_string(),
            message,
        });
    }

    /// An error about a value, placed where the value is written.
    fn bad_value(&mut self, at: &At, message: String) {
        let loc = self.locations();
        let pos = loc.value(&at.yaml).or_else(|| loc.key(&at.yaml));
        self.push(pos, at.node, message);
    }

    /// An error about a key itself (unknown, misplaced), placed on the key.
    fn bad_key(&mut self, at: &At, message: String) {
        let loc = self.locations();
        let pos = loc.key(&at.yaml).or_else(|| loc.value(&at.yaml));
        self.push(pos, at.node, message);
    }

    fn root(&mut self, value: &Value) -> Option<Root> {
        let at = At {
            yaml: vec![],
            node: "",
        };
        let Some(map) = value.as_mapping() else {
            self.bad_value(
                &at,
                "the document must be a mapping with `children` (the root group)".into(),
            );
            return None;
        };
        let has = |k: &str| map.contains_key(k);
        if has("command") || has("shell") {
            self.bad_value(
                &at,
                "the document is the root group: put workers under `children`".into(),
            );
        }
        let mut control_socket = None;
        if let Some(v) = map.get("control_socket") {
            control_socket = self.string(v, &at.key("control_socket")).map(PathBuf::from);
        }
        let health_addr = map
            .get("health_addr")
            .and_then(|v| self.socket_addr(v, &at.key("health_addr")));
        // Zero is allowed: stop signals, then SIGKILL at once.
        let guardian_grace = self
            .duration_key(map, &at, "guardian_grace", false)
            .unwrap_or(DEFAULT_GUARDIAN_GRACE);
        let ownership = self
            .choice(
                map,
                &at,
                "ownership",
                &[
                    ("auto", Ownership::Auto),
                    ("cgroup", Ownership::Cgroup),
                    ("process-groups", Ownership::ProcessGroups),
                ],
            )
            .unwrap_or_default();
        if map.contains_key("depends_on") {
            self.bad_key(
                &at.key("depends_on"),
                "the root group has no siblings to depend on".into(),
            );
        }
        let group = self.group(map, &at, "", DEFAULT_ROOT_SHUTDOWN_TIMEOUT, true);
        group.map(|group| Root {
            group,
            control_socket,
            health_addr,
            guardian_grace,
            ownership,
        })
    }

    /// An IP address and port to listen on, e.g. `127.0.0.1:9090` or `[::]:9090`. Host names
    /// are not resolved: what arborist listens on must not depend on DNS at boot.
    fn socket_addr(&mut self, v: &Value, at: &At) -> Option<SocketAddr> {
        let text = self.string(v, at)?;
        match text.trim().parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.bad_value(
                    at,
                    format!(
                        "expected an IP address and port such as 127.0.0.1:9090 or [::]:9090, found '{text}'"
                    ),
                );
                None
            }
        }
    }

    fn check_keys(&mut self, map: &Mapping, at: &At, is_group: bool, is_root: bool) {
        let (own, other, kind, other_kind) = if is_group {
            (GROUP_KEYS, WORKER_KEYS, "group", "worker")
        } else {
            (WORKER_KEYS, GROUP_KEYS, "worker", "group")
        };
        for key in map.keys() {
            let Some(k) = key.as_str() else {
                self.bad_value(at, format!("keys must be strings, found {}", kind_of(key)));
                continue;
            };
            let kat = at.key(k);
            if own.contains(&k) || (is_root && ROOT_ONLY_KEYS.contains(&k)) {
                continue;
            }
            if ROOT_ONLY_KEYS.contains(&k) {
                self.bad_key(
                    &kat,
                    format!("'{k}' is only allowed at the top of the file"),
                );
            } else if other.contains(&k) {
                self.bad_key(
                    &kat,
                    format!("'{k}' is a {other_kind} key, but this node is a {kind}"),
                );
            } else {
                let mut candidates: Vec<&str> = own.to_vec();
                if is_root {
                    candidates.extend(ROOT_ONLY_KEYS);
                }
                let hint = candidates
                    .iter()
                    .map(|c| (strsim::damerau_levenshtein(k, c), *c))
                    .filter(|(d, _)| *d <= 3)
                    .min()
                    .map(|(_, c)| format!(" (did you mean '{c}'?)"))
                    .unwrap_or_default();
                self.bad_key(&kat, format!("unknown key '{k}'{hint}"));
            }
        }
    }

    fn group(
        &mut self,
        map: &Mapping,
        at: &At,
        path: &str,
        inherited_timeout: Duration,
        is_root: bool,
    ) -> Option<GroupSpec> {
        self.check_keys(map, at, true, is_root);
        let strategy = self
            .choice(
                map,
                at,
                "strategy",
                &[
                    ("one_for_one", Strategy::OneForOne),
                    ("one_for_all", Strategy::OneForAll),
                    ("rest_for_one", Strategy::RestForOne),
                ],
            )
            .unwrap_or(Strategy::OneForOne);
        let stop_order = self
            .choice(
                map,
                at,
                "stop_order",
                &[
                    ("reverse", StopOrder::Reverse),
                    ("parallel", StopOrder::Parallel),
                ],
            )
            .unwrap_or(StopOrder::Reverse);
        let max_restarts = map
            .get("max_restarts")
            .and_then(|v| self.count(v, &at.key("max_restarts"), 0))
            .map(|n| n as u32)
            .unwrap_or(DEFAULT_MAX_RESTARTS);
        let restart_window = self
            .duration_key(map, at, "restart_window", false)
            .unwrap_or(DEFAULT_RESTART_WINDOW);
        let shutdown_timeout = self
            .duration_key(map, at, "shutdown_timeout", true)
            .unwrap_or(inherited_timeout);
        let start_concurrency = map
            .get("start_concurrency")
            .and_then(|v| self.count(v, &at.key("start_concurrency"), 1))
            .map(|n| n as usize);

        let children_at = at.key("children");
        let children = match map.get("children") {
            None => {
                self.bad_value(at, "a group needs `children`".into());
                return None;
            }
            Some(Value::Mapping(m)) => m,
            Some(Value::Null) => {
                self.bad_value(&children_at, "`children` is empty".into());
                return None;
            }
            Some(other) => {
                self.bad_value(
                    &children_at,
                    format!(
                        "`children` must be a mapping of name to node, found {}",
                        kind_of(other)
                    ),
                );
                return None;
            }
        };
        if children.is_empty() {
            self.bad_value(&children_at, "`children` is empty".into());
        }
        let mut nodes = Vec::new();
        // Names and dependencies of every child, valid or not, so that dependency errors are
        // reported even next to other errors in the same node.
        let mut deps: Vec<(String, Vec<String>)> = Vec::new();
        let mut complete = true;
        for (key, value) in children {
            let Some(name) = key.as_str() else {
                self.bad_value(
                    &children_at,
                    format!("child names must be strings, found {}", kind_of(key)),
                );
                complete = false;
                continue;
            };
            let child_path = join_path(path, name);
            let child_at = At {
                yaml: children_at.key(name).yaml,
                node: &child_path,
            };
            if !valid_name(name) {
                self.bad_key(
                    &child_at,
                    format!("invalid name '{name}': names match [A-Za-z0-9_.-]+"),
                );
            }
            deps.push((name.to_string(), peek_depends_on(value)));
            match self.node(name, value, &child_at, &child_path, shutdown_timeout) {
                Some(n) => nodes.push(n),
                None => complete = false,
            }
        }
        self.check_dependencies(&deps, &children_at, path);
        complete.then_some(GroupSpec {
            children: nodes,
            strategy,
            max_restarts,
            restart_window,
            shutdown_timeout,
            stop_order,
            start_concurrency,
        })
    }

    fn node(
        &mut self,
        name: &str,
        value: &Value,
        at: &At,
        path: &str,
        inherited_timeout: Duration,
    ) -> Option<NodeSpec> {
        let Some(map) = value.as_mapping() else {
            self.bad_value(
                at,
                format!(
                    "a node must be a mapping with `command`, `shell` or `children`, found {}",
                    kind_of(value)
                ),
            );
            return None;
        };
        let depends_on = match map.get("depends_on") {
            Some(v) => self.string_list(v, &at.key("depends_on"), true)?,
            None => vec![],
        };
        let is_group = map.contains_key("children");
        let is_worker = map.contains_key("command") || map.contains_key("shell");
        let kind = if is_group && is_worker {
            self.bad_value(
                at,
                "a node has exactly one of `command`, `shell` or `children`".into(),
            );
            return None;
        } else if is_group {
            NodeKind::Group(self.group(map, at, path, inherited_timeout, false)?)
        } else if is_worker {
            NodeKind::Worker(Box::new(self.worker(map, at)?))
        } else {
            self.bad_value(
                at,
                "a node needs `command` or `shell` (a worker) or `children` (a group)".into(),
            );
            return None;
        };
        Some(NodeSpec {
            name: name.to_string(),
            depends_on,
            kind,
        })
    }

    fn worker(&mut self, map: &Mapping, at: &At) -> Option<WorkerSpec> {
        self.check_keys(map, at, false, false);
        let errors_before = self.errors.len();
        let program = match (map.get("command"), map.get("shell")) {
            (Some(_), Some(_)) => {
                self.bad_key(
                    &at.key("shell"),
                    "a worker has exactly one of `command` and `shell`".into(),
                );
                None
            }
            (Some(c), None) => self
                .string_list(c, &at.key("command"), false)
                .map(Program::Command),
            (None, Some(s)) => {
                let sat = at.key("shell");
                match self.os_string(s, &sat) {
                    Some(script) if script.trim().is_empty() => {
                        self.bad_value(&sat, "`shell` is empty".into());
                        None
                    }
                    other => other.map(Program::Shell),
                }
            }
            (None, None) => None,
        };
        let env = self.env(map, at);
        let cwd = map
            .get("cwd")
            .and_then(|v| self.os_string(v, &at.key("cwd")))
            .map(PathBuf::from);
        let user = map.get("user").and_then(|v| self.user(v, &at.key("user")));
        let mut group = map
            .get("group")
            .and_then(|v| self.group_id(v, &at.key("group")));
        // Like systemd's User= and su: without `group`, the user's primary group, never
        // arborist's own (which would leave a worker in root's group).
        let user = match user {
            Some((identity, primary)) => {
                if group.is_none() && !map.contains_key("group") {
                    match primary {
                        Some(gid) => {
                            group = Some(Identity {
                                name: format!("{} (primary group)", identity.name),
                                id: gid,
                            })
                        }
                        None => self.bad_value(
                            &at.key("user"),
                            format!(
                                "uid {} has no passwd entry, so it has no primary group: set `group` too",
                                identity.name
                            ),
                        ),
                    }
                }
                Some(identity)
            }
            None => None,
        };
        let replicas = map
            .get("replicas")
            .and_then(|v| self.count(v, &at.key("replicas"), 1))
            .map(|n| {
                if n > MAX_REPLICAS {
                    self.bad_value(
                        &at.key("replicas"),
                        format!("replicas must be at most {MAX_REPLICAS}"),
                    );
                }
                n as u32
            })
            .unwrap_or(1);
        let restart = self
            .choice(
                map,
                at,
                "restart",
                &[
                    ("always", RestartPolicy::Always),
                    ("on-failure", RestartPolicy::OnFailure),
                    ("never", RestartPolicy::Never),
                ],
            )
            .unwrap_or(RestartPolicy::OnFailure);
        let backoff = map
            .get("backoff")
            .and_then(|v| self.backoff(v, &at.key("backoff")))
            .unwrap_or_default();
        let stop_signal = map
            .get("stop_signal")
            .and_then(|v| self.signal(v, &at.key("stop_signal")))
            .unwrap_or(Signal::SIGTERM);
        let stop_timeout = self
            .duration_key(map, at, "stop_timeout", false)
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        let pre_stop = map
            .get("pre_stop")
            .and_then(|v| self.string_list(v, &at.key("pre_stop"), false));
        let ready = map
            .get("ready")
            .and_then(|v| self.ready(v, &at.key("ready")));
        let watchdog = self.duration_key(map, at, "watchdog", true);
        let critical = map
            .get("critical")
            .and_then(|v| self.boolean(v, &at.key("critical")))
            .unwrap_or(false);
        let logs = self
            .choice(
                map,
                at,
                "logs",
                &[("capture", LogMode::Capture), ("inherit", LogMode::Inherit)],
            )
            .unwrap_or(LogMode::Capture);
        let limits = map
            .get("limits")
            .and_then(|v| self.limits(v, &at.key("limits")))
            .unwrap_or_default();
        if self.errors.len() != errors_before {
            return None;
        }
        Some(WorkerSpec {
            program: program?,
            env,
            cwd,
            user,
            group,
            replicas,
            restart,
            backoff,
            stop_signal,
            stop_timeout,
            pre_stop,
            ready,
            watchdog,
            critical,
            logs,
            limits,
        })
    }

    fn check_dependencies(
        &mut self,
        nodes: &[(String, Vec<String>)],
        children_at: &At,
        group_path: &str,
    ) {
        let names: Vec<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
        for (name, depends_on) in nodes {
            let path = join_path(group_path, name);
            let dat = At {
                yaml: children_at.key(name).key("depends_on").yaml,
                node: &path,
            };
            for (i, dep) in depends_on.iter().enumerate() {
                if dep == name {
                    self.bad_value(&dat.index(i), "a node cannot depend on itself".into());
                } else if !names.contains(&dep.as_str()) {
                    self.bad_value(
                        &dat.index(i),
                        format!(
                            "depends on '{dep}', which is not a sibling (siblings: {})",
                            names.join(", ")
                        ),
                    );
                }
            }
        }
        // Unknown names and self-references are reported above; the cycle check still runs
        // over the rest, so all errors come out at once.
        let adjacency: Vec<Vec<usize>> = nodes
            .iter()
            .enumerate()
            .map(|(i, (_, deps))| {
                deps.iter()
                    .filter_map(|d| names.iter().position(|n| n == d))
                    .filter(|&j| j != i)
                    .collect()
            })
            .collect();
        if let Some(cycle) = crate::plan::find_cycle(&adjacency) {
            let first = &nodes[cycle[0]].0;
            let path = join_path(group_path, first);
            let at = At {
                yaml: children_at.key(first).key("depends_on").yaml,
                node: &path,
            };
            let mut names: Vec<&str> = cycle.iter().map(|&i| nodes[i].0.as_str()).collect();
            names.push(first);
            self.bad_value(&at, format!("dependency cycle: {}", names.join(" -> ")));
        }
    }
}

/// The string entries of a node's `depends_on`, without reporting anything.
fn peek_depends_on(node: &Value) -> Vec<String> {
    node.get("depends_on")
        .and_then(Value::as_sequence)
        .map(|seq| {
            seq.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A short rendering of a scalar for messages; containers are named by kind.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => kind_of(other).to_string(),
    }
}
