//! `arborist check`: renders the resolved tree and, with `--plan`, the shutdown plan.

use std::fmt::Write;
use std::time::Duration;

use crate::config::{
    GroupSpec, NodeKind, Program, ReadyCheck, StopOrder, Strategy, TreeSpec, WorkerSpec,
};
use crate::plan::{shutdown_plan, PlanNode};

fn d(x: Duration) -> String {
    humantime::format_duration(x).to_string()
}

pub fn render_tree(tree: &TreeSpec) -> String {
    let mut out = String::new();
    let (groups, workers) = count(&tree.root);
    let _ = writeln!(
        out,
        "{}: valid: {workers} worker process{} in {groups} group{}",
        tree.source.display(),
        if workers == 1 { "" } else { "es" },
        if groups == 1 { "" } else { "s" }
    );
    let _ = writeln!(out, "(root)  group  {}", group_line(&tree.root));
    children(&mut out, &tree.root, "");
    out
}

fn count(g: &GroupSpec) -> (usize, u64) {
    let mut groups = 1;
    let mut workers = 0;
    for c in &g.children {
        match &c.kind {
            NodeKind::Group(sub) => {
                let (gs, ws) = count(sub);
                groups += gs;
                workers += ws;
            }
            NodeKind::Worker(w) => workers += w.replicas as u64,
        }
    }
    (groups, workers)
}

fn group_line(g: &GroupSpec) -> String {
    let strategy = match g.strategy {
        Strategy::OneForOne => "one_for_one",
        Strategy::OneForAll => "one_for_all",
        Strategy::RestForOne => "rest_for_one",
    };
    let order = match g.stop_order {
        StopOrder::Reverse => "reverse",
        StopOrder::Parallel => "parallel",
    };
    let mut s = format!(
        "strategy={strategy} max_restarts={}/{} shutdown_timeout={} stop_order={order}",
        g.max_restarts,
        d(g.restart_window),
        d(g.shutdown_timeout)
    );
    if let Some(n) = g.start_concurrency {
        let _ = write!(s, " start_concurrency={n}");
    }
    s
}

fn worker_line(w: &WorkerSpec) -> String {
    let program = match &w.program {
        Program::Command(argv) => format!("command={argv:?}"),
        Program::Shell(script) => format!("shell={:?}", abbreviate(script)),
    };
    let restart = match w.restart {
        crate::config::RestartPolicy::Always => "always",
        crate::config::RestartPolicy::OnFailure => "on-failure",
        crate::config::RestartPolicy::Never => "never",
    };
    let mut s = format!(
        "{program} restart={restart} stop_signal={} stop_timeout={}",
        w.stop_signal.as_str(),
        d(w.stop_timeout)
    );
    if let Some(r) = &w.ready {
        let check = match &r.check {
            ReadyCheck::Tcp(a) => format!("tcp {a}"),
            ReadyCheck::Exec(argv) => format!("exec {argv:?}"),
            ReadyCheck::Http(u) => format!("http {}", u.url),
            ReadyCheck::Notify => "notify".into(),
        };
        let _ = match r.check {
            ReadyCheck::Notify => write!(s, " ready=(notify)"),
            _ => write!(s, " ready=({check}, every {})", d(r.interval)),
        };
    }
    if let Some(wd) = w.watchdog {
        let _ = write!(s, " watchdog={}", d(wd));
    }
    if let Some(p) = &w.pre_stop {
        let _ = write!(s, " pre_stop={p:?}");
    }
    if w.critical {
        s.push_str(" critical");
    }
    if let Some(u) = &w.user {
        let _ = write!(s, " user={}", u.name);
    }
    if !w.limits.is_empty() {
        let mut parts = Vec::new();
        if let Some(m) = w.limits.memory {
            parts.push(format!("memory {}", bytes(m)));
        }
        if let Some(c) = w.limits.cpu {
            parts.push(format!("cpu {c}"));
        }
        if let Some(p) = w.limits.pids {
            parts.push(format!("pids {p}"));
        }
        let _ = write!(s, " limits=({})", parts.join(", "));
    }
    s
}

/// A byte count in the largest binary unit that divides it exactly (536870912 → 512MiB).
fn bytes(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

/// First line of a script, shortened: the tree view is an overview, the file has the rest.
fn abbreviate(script: &str) -> String {
    let lines: Vec<&str> = script.trim().lines().collect();
    let first = lines.first().copied().unwrap_or("");
    let mut s: String = first.chars().take(60).collect();
    if first.chars().count() > 60 || lines.len() > 1 {
        s.push('…');
    }
    s
}

fn children(out: &mut String, g: &GroupSpec, indent: &str) {
    let n = g.children.len();
    for (i, c) in g.children.iter().enumerate() {
        let last = i + 1 == n;
        let branch = if last { "└─ " } else { "├─ " };
        let deps = if c.depends_on.is_empty() {
            String::new()
        } else {
            format!(" depends_on=[{}]", c.depends_on.join(", "))
        };
        match &c.kind {
            NodeKind::Worker(w) => {
                let replicas = if w.replicas > 1 {
                    format!(" ×{}", w.replicas)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "{indent}{branch}{}{replicas}  worker  {}{deps}",
                    c.name,
                    worker_line(w)
                );
            }
            NodeKind::Group(sub) => {
                let _ = writeln!(
                    out,
                    "{indent}{branch}{}  group  {}{deps}",
                    c.name,
                    group_line(sub)
                );
                let next = format!("{indent}{}", if last { "   " } else { "│  " });
                children(out, sub, &next);
            }
        }
    }
}

/// The shutdown plan as text; also returns the worst-case total.
pub fn render_plan(tree: &TreeSpec) -> (String, Duration) {
    let plan = shutdown_plan(tree);
    let mut out = String::new();
    let _ = writeln!(out, "\nshutdown plan (SIGTERM → every level stops its children in waves; deadline = min(own, parent's remaining)):");
    waves(&mut out, &plan);
    let _ = writeln!(
        out,
        "\n{:<32} {:<7} {:>9} {:>10} {:>9} {:>9}",
        "node", "kind", "own", "effective", "starts", "worst"
    );
    table(&mut out, &plan);
    starved(&mut out, &plan);
    let total = plan.worst_total();
    let _ = writeln!(
        out,
        "\nworst-case shutdown: {} (root deadline {})",
        d(total),
        d(plan.own_timeout)
    );
    (out, total)
}

fn label(n: &PlanNode) -> String {
    if n.path.is_empty() {
        "(root)".into()
    } else if n.replicas > 1 {
        format!("{} ×{}", n.path, n.replicas)
    } else {
        n.path.clone()
    }
}

fn waves(out: &mut String, g: &PlanNode) {
    let _ = writeln!(out, "{}  deadline {}", label(g), d(g.effective));
    for (i, wave) in g.waves.iter().enumerate() {
        let names: Vec<String> = wave.iter().map(|&c| g.children[c].name.clone()).collect();
        let at = wave
            .first()
            .map(|&c| g.children[c].starts_at)
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  wave {} (at +{}): {}",
            i + 1,
            d(at),
            names.join(", ")
        );
    }
    for c in &g.children {
        if c.is_group {
            waves(out, c);
        }
    }
}

/// Nodes that earlier waves can leave with less than their own deadline.
fn starved(out: &mut String, n: &PlanNode) {
    for c in &n.children {
        if c.worst < c.effective {
            let _ = writeln!(
                out,
                "warning: {} may get only {} of its {} deadline: earlier waves can use up its level's deadline",
                label(c),
                d(c.worst),
                d(c.effective)
            );
        }
        starved(out, c);
    }
}

fn table(out: &mut String, n: &PlanNode) {
    let _ = writeln!(
        out,
        "{:<32} {:<7} {:>9} {:>10} {:>9} {:>9}",
        label(n),
        if n.is_group { "group" } else { "worker" },
        d(n.own_timeout),
        d(n.effective),
        format!("+{}", d(n.starts_at)),
        d(n.worst)
    );
    for c in &n.children {
        table(out, c);
    }
}
