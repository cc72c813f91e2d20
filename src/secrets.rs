//! Secret values: the values of environment variables whose names say they are secrets
//! (`*_TOKEN`, `*_PASSWORD`, `*_KEY`, `*_SECRET`, and those words alone), from arborist's own
//! environment (which workers inherit) and from every worker's `env`. Text that workers
//! control and arborist re-emits — captured output lines and sd_notify `STATUS=` — has them
//! replaced by `[redacted]`, so a worker that prints its token does not put it in the logs,
//! the journal or `status`. arborist itself never logs environment values.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use crate::config::{GroupSpec, NodeKind, TreeSpec};

const SUFFIXES: [&str; 4] = ["TOKEN", "PASSWORD", "KEY", "SECRET"];

/// Shorter values are not redacted: replacing every "1" or "on" in the output would destroy
/// it while protecting nothing.
pub const MIN_LEN: usize = 4;

pub const MARK: &str = "[redacted]";

static SECRETS: RwLock<Option<Arc<Vec<String>>>> = RwLock::new(None);

/// Whether a variable name says its value is a secret.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SUFFIXES
        .iter()
        .any(|s| upper == *s || upper.ends_with(&format!("_{s}")))
}

/// Takes the secrets of arborist's environment and of `tree`'s workers (at start and after
/// each reload).
pub fn learn(tree: &TreeSpec) {
    let mut values: Vec<String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| is_secret_name(k))
        .map(|(_, v)| v)
        .collect();
    collect(&tree.root, &mut values);
    values.retain(|v| v.len() >= MIN_LEN);
    // Longest first, so that a secret containing another is replaced whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    *SECRETS.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(values));
}

fn collect(group: &GroupSpec, out: &mut Vec<String>) {
    for child in &group.children {
        match &child.kind {
            NodeKind::Group(g) => collect(g, out),
            NodeKind::Worker(w) => out.extend(
                w.env
                    .iter()
                    .filter(|(k, _)| is_secret_name(k))
                    .map(|(_, v)| v.clone()),
            ),
        }
    }
}

/// `text` with every known secret value replaced.
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(secrets) = secrets.filter(|s| !s.is_empty()) else {
        return Cow::Borrowed(text);
    };
    if !secrets.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MARK);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for n in [
            "API_TOKEN",
            "db_password",
            "AWS_SECRET_ACCESS_KEY",
            "SECRET",
            "x_Secret",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in ["PATH", "KEYBOARD", "TOKENS", "MONKEY", "PASSWORD_FILE"] {
            assert!(!is_secret_name(n), "{n}");
        }
    }
}
