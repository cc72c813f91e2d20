//! Where arborist is in the cgroup v2 hierarchy: parsing /proc/self/cgroup and
//! /proc/self/mountinfo (pure), and the probe that its cgroup is writable.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Unavailable;

/// The `0::/path` line of /proc/self/cgroup: arborist's cgroup v2 path.
pub(super) fn own_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        // A cgroup removed while arborist is in it shows as "/path (deleted)".
        .map(|p| p.trim_end_matches(" (deleted)").to_string())
}

/// Every cgroup2 mount in /proc/self/mountinfo: (mount point, the root it shows).
pub(super) fn cgroup2_mounts(text: &str) -> Vec<(PathBuf, String)> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source ...
            let (fields, rest) = line.split_once(" - ")?;
            if rest.split(' ').next()? != "cgroup2" {
                return None;
            }
            let fields: Vec<&str> = fields.split(' ').collect();
            let root = unescape(fields.get(3)?);
            let point = unescape(fields.get(4)?);
            Some((PathBuf::from(point), root))
        })
        .collect()
}

/// `own` relative to a mount showing `root`, if it is at or below it.
pub(super) fn below(own: &str, root: &str) -> Option<String> {
    let root = root.trim_end_matches('/');
    let rest = own.strip_prefix(root)?;
    match rest {
        "" => Some("/".into()),
        r if r.starts_with('/') => Some(r.into()),
        _ => None,
    }
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + (c - b'0') as u32));
        match code {
            Some(c) if c <= 0xff => {
                out.push(c as u8);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn read_proc(path: &str) -> Result<String, Unavailable> {
    fs::read_to_string(path).map_err(|source| Unavailable::Read {
        path: path.into(),
        source,
    })
}

/// Creating and removing a sub-cgroup is what arborist will do for every run; the write to
/// `cgroup.procs` is what every spawn will do (as root, `access` always says yes; a delegated
/// cgroup has its `cgroup.procs` owned by the delegate).
pub(super) fn probe_writable(own_dir: &Path) -> io::Result<()> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let probe = own_dir.join(format!(
        "arborist-probe.{}.{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&probe)?;
    fs::remove_dir(&probe)?;
    nix::unistd::access(
        &own_dir.join("cgroup.procs"),
        nix::unistd::AccessFlags::W_OK,
    )?;
    Ok(())
}
