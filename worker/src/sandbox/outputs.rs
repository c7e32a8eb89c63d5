//! Collecting what the program wrote under `$OUTPUT_DIR`, on the host side.
//!
//! The rule it keeps: the host never follows a path the sandbox could have planted, so a
//! planted link cannot make it read or write elsewhere. Symlinks are skipped and never
//! followed, files with more than one hard link are skipped, anything that is neither a
//! regular file nor a folder is skipped, and every file is opened with `O_NOFOLLOW` and
//! checked to be the very inode that
//! was listed. Folders are only entered after an `lstat` said they are real folders.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use coderun_shared::config::LimitSettings;
use coderun_shared::domain::FilePath;
use nix::fcntl::OFlag;

/// One collected file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// Relative to `$OUTPUT_DIR`, `/`-separated, UTF-8.
    pub path: String,
    pub host_path: PathBuf,
    pub size: u64,
    dev: u64,
    ino: u64,
}

impl OutputFile {
    /// Opens the file for reading, refusing it if it is no longer the regular, singly linked
    /// file that was collected.
    pub fn open(&self) -> std::io::Result<File> {
        let file = open_no_follow(&self.host_path)?;
        let meta = file.metadata()?;
        if !meta.is_file() || meta.nlink() != 1 || meta.dev() != self.dev || meta.ino() != self.ino
        {
            return Err(std::io::Error::other(format!(
                "{} changed since it was collected",
                self.path
            )));
        }
        Ok(file)
    }
}

/// Why an entry was not collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    Symlink,
    HardLink,
    /// A fifo, socket or device.
    NotRegular,
    /// The name is not UTF-8, or the path breaks the rules of task files (the same check
    /// the Kubernetes executor applies to its outputs archive).
    BadName,
    /// Over the number of files or bytes allowed.
    OverLimit,
    /// It vanished or could not be read.
    Unreadable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedOutput {
    /// Relative path (lossy for names that are not UTF-8).
    pub path: String,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectedOutputs {
    /// In path order.
    pub files: Vec<OutputFile>,
    pub skipped: Vec<SkippedOutput>,
    /// Some files were left out for the count or byte limit.
    pub truncated: bool,
    pub total_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{0} is not a folder (or is a symlink)")]
    NotAFolder(PathBuf),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn open_no_follow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
}

pub(super) fn collect(
    output_dir: &Path,
    max_files: usize,
    max_bytes: u64,
    paths: &LimitSettings,
) -> Result<CollectedOutputs, OutputError> {
    let mut out = CollectedOutputs::default();
    let root_meta = match std::fs::symlink_metadata(output_dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(OutputError::Io {
                path: output_dir.into(),
                source,
            });
        }
    };
    if !root_meta.is_dir() {
        return Err(OutputError::NotAFolder(output_dir.into()));
    }
    // Depth-first in name order: (relative path, host path).
    let mut stack: Vec<(String, PathBuf)> = vec![(String::new(), output_dir.to_path_buf())];
    while let Some((rel_dir, dir)) = stack.pop() {
        let listed = match std::fs::read_dir(&dir) {
            Ok(listed) => listed,
            // A folder below the root that cannot be read (deeper than PATH_MAX, say) is left
            // out; only the root itself must be readable.
            Err(_) if !rel_dir.is_empty() => {
                out.skipped.push(SkippedOutput {
                    path: rel_dir,
                    reason: SkipReason::Unreadable,
                });
                continue;
            }
            Err(source) => {
                return Err(OutputError::Io {
                    path: dir.clone(),
                    source,
                });
            }
        };
        let mut entries: Vec<_> = listed.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for entry in entries {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                let path = join(&rel_dir, &name.to_string_lossy());
                out.skipped.push(SkippedOutput {
                    path,
                    reason: SkipReason::BadName,
                });
                continue;
            };
            let rel = join(&rel_dir, name);
            let host = entry.path();
            let skip = |out: &mut CollectedOutputs, reason| {
                out.skipped.push(SkippedOutput {
                    path: rel.clone(),
                    reason,
                });
            };
            // lstat: a symlink is seen as a symlink, never as what it points to.
            let Ok(meta) = std::fs::symlink_metadata(&host) else {
                skip(&mut out, SkipReason::Unreadable);
                continue;
            };
            let kind = meta.file_type();
            if kind.is_symlink() {
                skip(&mut out, SkipReason::Symlink);
            } else if FilePath::parse(&rel, paths).is_err() {
                // Nothing below a refused folder can pass either: it is not entered.
                skip(&mut out, SkipReason::BadName);
            } else if kind.is_dir() {
                subdirs.push((rel.clone(), host));
            } else if !kind.is_file() {
                skip(&mut out, SkipReason::NotRegular);
            } else if meta.nlink() != 1 {
                skip(&mut out, SkipReason::HardLink);
            } else if out.files.len() >= max_files || out.total_bytes + meta.len() > max_bytes {
                out.truncated = true;
                skip(&mut out, SkipReason::OverLimit);
            } else {
                // Re-check through an O_NOFOLLOW descriptor that it is the same inode.
                let same = open_no_follow(&host)
                    .and_then(|f| f.metadata())
                    .is_ok_and(|m| {
                        m.is_file()
                            && m.nlink() == 1
                            && m.dev() == meta.dev()
                            && m.ino() == meta.ino()
                    });
                if !same {
                    skip(&mut out, SkipReason::Unreadable);
                    continue;
                }
                out.total_bytes += meta.len();
                out.files.push(OutputFile {
                    path: rel.clone(),
                    host_path: host,
                    size: meta.len(),
                    dev: meta.dev(),
                    ino: meta.ino(),
                });
            }
        }
        // Reverse so the stack pops them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coderun_shared::config::Settings;

    fn paths() -> LimitSettings {
        Settings::with_overrides([("local_stack", "true".to_string())])
            .unwrap()
            .limits
    }

    #[test]
    fn output_names_follow_the_rules_of_task_files() {
        let root = std::env::temp_dir().join(format!("coderun-outputs-{}", uuid::Uuid::new_v4()));
        let deep = (0..20)
            .map(|i| format!("d{i}"))
            .collect::<Vec<_>>()
            .join("/");
        for dir in [".git", "ok", deep.as_str()] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for file in [
            "ok/kept.txt",
            "CON.txt",
            "a:b",
            ".git/config",
            "bidi\u{202E}txt.py",
            "zero\u{200B}.txt",
            &format!("{deep}/too-deep.txt"),
        ] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        let collected = collect(&root, 100, 1 << 20, &paths()).unwrap();
        let kept: Vec<&str> = collected.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(kept, ["ok/kept.txt"]);
        let mut refused: Vec<&str> = collected
            .skipped
            .iter()
            .filter(|s| s.reason == SkipReason::BadName)
            .map(|s| s.path.as_str())
            .collect();
        refused.sort();
        assert_eq!(refused.len(), 6, "{refused:?}");
        assert!(refused.contains(&".git"));
        assert!(refused.contains(&"CON.txt"));
        assert!(refused.contains(&"a:b"));
        assert!(refused.iter().any(|p| p.starts_with("d0/")), "{refused:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
