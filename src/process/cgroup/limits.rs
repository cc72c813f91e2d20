//! `limits` as cgroup files: what each file receives (pure, [`limit_files`]), the check that
//! the controllers are delegated, and the writes into a run's directory.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::config::Limits;

/// `cpu.max`'s period: the kernel's default, 100 ms.
const CPU_PERIOD_US: u64 = 100_000;

/// Why limits cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// Checked before any run: the controller never reached arborist's cgroup.
    #[error(
        "limits.{key} needs the {controller} controller, which is not delegated to arborist's \
         cgroup {own} (available: {available})"
    )]
    NotDelegated {
        key: &'static str,
        controller: &'static str,
        own: String,
        available: String,
    },
    /// At a run: the controller was not enabled for the run cgroups, so its file is missing.
    #[error(
        "limits.{key} needs the {controller} controller, which is not enabled for {} ({file} \
         is missing)",
        dir.display()
    )]
    NotEnabled {
        key: &'static str,
        controller: &'static str,
        dir: PathBuf,
        file: &'static str,
    },
    #[error("limits.{key}: cannot write '{value}' to {}: {source}", path.display())]
    Write {
        key: &'static str,
        value: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// One control file a limit is written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitFile {
    /// The key under `limits`.
    pub key: &'static str,
    pub controller: &'static str,
    pub file: &'static str,
    pub value: String,
}

/// The files that `limits` writes, with their contents, in a fixed order (memory, cpu, pids).
pub fn limit_files(limits: &Limits) -> Vec<LimitFile> {
    let mut files = Vec::new();
    if let Some(bytes) = limits.memory {
        files.push(LimitFile {
            key: "memory",
            controller: "memory",
            file: "memory.max",
            value: bytes.to_string(),
        });
    }
    if let Some(cpus) = limits.cpu {
        // Validation keeps cpus within 0.01..=10000, so the quota is 1000..=1e9 µs.
        let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
        files.push(LimitFile {
            key: "cpu",
            controller: "cpu",
            file: "cpu.max",
            value: format!("{quota} {CPU_PERIOD_US}"),
        });
    }
    if let Some(pids) = limits.pids {
        files.push(LimitFile {
            key: "pids",
            controller: "pids",
            file: "pids.max",
            value: pids.to_string(),
        });
    }
    files
}

/// The first limit whose controller is not among those delegated (`available`).
pub(super) fn check(limits: &Limits, own: &str, available: &[String]) -> Result<(), LimitError> {
    match limit_files(limits)
        .into_iter()
        .find(|f| !available.iter().any(|a| a == f.controller))
    {
        None => Ok(()),
        Some(f) => Err(LimitError::NotDelegated {
            key: f.key,
            controller: f.controller,
            own: own.to_string(),
            available: if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            },
        }),
    }
}

/// Writes each limit into its file in `dir`. The files must exist, as the kernel makes them
/// when the controller is enabled; they are never created.
pub(super) fn write(dir: &Path, limits: &Limits) -> Result<(), LimitError> {
    for f in limit_files(limits) {
        let path = dir.join(f.file);
        // O_TRUNC as a shell's `>` does: the kernel ignores it, a plain file needs it.
        let written = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut file| file.write_all(f.value.as_bytes()));
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LimitError::NotEnabled {
                    key: f.key,
                    controller: f.controller,
                    dir: dir.to_path_buf(),
                    file: f.file,
                })
            }
            Err(source) => {
                return Err(LimitError::Write {
                    key: f.key,
                    value: f.value,
                    path,
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Limits = Limits {
        memory: Some(512 << 20),
        cpu: Some(1.5),
        pids: Some(256),
    };

    #[test]
    fn limit_files_hold_what_the_kernel_reads() {
        let files: Vec<(&str, String)> = limit_files(&ALL)
            .into_iter()
            .map(|f| (f.file, f.value))
            .collect();
        assert_eq!(
            files,
            [
                ("memory.max", "536870912".to_string()),
                ("cpu.max", "150000 100000".to_string()),
                ("pids.max", "256".to_string()),
            ]
        );
        let small = Limits {
            cpu: Some(0.01),
            ..Limits::default()
        };
        assert_eq!(limit_files(&small)[0].value, "1000 100000");
        assert!(limit_files(&Limits::default()).is_empty());
    }

    /// A run directory as the kernel shows it with memory, cpu and pids enabled: the control
    /// files exist; limits only write into them.
    fn run_dir(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for f in files {
            fs::write(dir.path().join(f), "max\n").expect("a control file");
        }
        dir
    }

    #[test]
    fn limits_are_written_into_the_run_directory() {
        let dir = run_dir(&["memory.max", "cpu.max", "pids.max"]);
        write(dir.path(), &ALL).expect("limits written");
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("memory.max"), "536870912");
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(read("pids.max"), "256");
    }

    #[test]
    fn only_the_limits_set_are_written() {
        let dir = run_dir(&["memory.max", "cpu.max", "pids.max"]);
        let pids_only = Limits {
            pids: Some(64),
            ..Limits::default()
        };
        write(dir.path(), &pids_only).expect("limits written");
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("memory.max"), "max\n");
        assert_eq!(read("cpu.max"), "max\n");
    }

    #[test]
    fn a_limit_whose_controller_is_not_enabled_is_refused_and_nothing_is_created() {
        let dir = run_dir(&["pids.max"]);
        let err = write(dir.path(), &ALL).unwrap_err();
        assert!(matches!(
            err,
            LimitError::NotEnabled {
                controller: "memory",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            format!(
                "limits.memory needs the memory controller, which is not enabled for {} \
                 (memory.max is missing)",
                dir.path().display()
            )
        );
        assert!(!dir.path().join("memory.max").exists());
    }

    #[test]
    fn check_names_the_first_controller_not_delegated() {
        let hugetlb = vec!["hugetlb".to_string()];
        let err = check(&ALL, "/x", &hugetlb).unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits.memory needs the memory controller, which is not delegated to arborist's \
             cgroup /x (available: hugetlb)"
        );
        let cpu_only = Limits {
            cpu: Some(2.0),
            ..Limits::default()
        };
        assert_eq!(
            check(&cpu_only, "/", &[]).unwrap_err().to_string(),
            "limits.cpu needs the cpu controller, which is not delegated to arborist's cgroup / \
             (available: none)"
        );
        let delegated: Vec<String> = ["cpu", "memory", "pids"].map(String::from).to_vec();
        assert!(check(&ALL, "/x", &delegated).is_ok());
        assert!(check(&Limits::default(), "/x", &[]).is_ok());
    }
}
