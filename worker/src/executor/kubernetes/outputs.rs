//! The outputs archive the pod uploaded (`runs/{id}/outputs.tar.gz`), unpacked on the worker.
//!
//! The archive was made inside the sandbox, so nothing in it is trusted (Judge0's
//! CVE-2024-28185/-28189): only regular files are taken; links, devices and anything else are
//! skipped; every path must be a safe relative path (no `..`, no absolute path, no control
//! character — the rules of task files); files are created fresh (`create_new`) in a new,
//! private folder the worker made, so nothing can point outside it; and the count and bytes
//! are capped.

use std::io::Read;
use std::path::{Path, PathBuf};

use coderun_shared::config::LimitSettings;
use coderun_shared::domain::FilePath;

/// The files taken from an archive.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// `(path, file on the worker, size)`, by path.
    pub files: Vec<(String, PathBuf, u64)>,
    /// Entries left out (links, bad paths, over the limits), for the log.
    pub skipped: Vec<String>,
    /// Some files were left out for the count or byte limit.
    pub truncated: bool,
}

/// Unpacks the gzipped tar `archive` into `into` (which must exist and be empty).
pub fn unpack(
    archive: &[u8],
    into: &Path,
    max_files: usize,
    max_bytes: u64,
    limits: &LimitSettings,
) -> std::io::Result<Unpacked> {
    let mut unpacked = Unpacked::default();
    let mut total = 0u64;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in tar.entries()? {
        let mut entry = entry?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let relative = raw.trim_start_matches("./");
        if !kind.is_file() {
            unpacked
                .skipped
                .push(format!("{raw}: not a regular file ({kind:?})"));
            continue;
        }
        let Ok(path) = FilePath::parse(relative, limits) else {
            unpacked.skipped.push(format!("{raw}: not a safe path"));
            continue;
        };
        let size = entry.header().size()?;
        if unpacked.files.len() >= max_files || total + size > max_bytes {
            unpacked.truncated = true;
            unpacked
                .skipped
                .push(format!("{raw}: over the outputs limit"));
            continue;
        }
        let target = into.join(path.as_str());
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
        {
            Ok(file) => file,
            Err(e) => {
                // Named twice, or a file where a folder of another entry is.
                unpacked.skipped.push(format!("{raw}: {e}"));
                continue;
            }
        };
        let written = std::io::copy(&mut (&mut entry).take(size), &mut file)?;
        total += written;
        unpacked
            .files
            .push((path.as_str().to_owned(), target, written));
    }
    unpacked.files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(unpacked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coderun_shared::config::Settings;

    fn limits() -> LimitSettings {
        Settings::with_overrides([("local_stack", "true".to_owned())])
            .unwrap()
            .limits
    }

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    fn file(builder: &mut tar::Builder<Vec<u8>>, path: &str, content: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append_data(&mut header, path, content).unwrap();
    }

    fn raw_file(builder: &mut tar::Builder<Vec<u8>>, path: &str, content: &[u8]) {
        // `append_data` refuses `..`; write the name by hand as a hostile archiver would.
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, content).unwrap();
    }

    fn link(builder: &mut tar::Builder<Vec<u8>>, path: &str, target: &str, kind: tar::EntryType) {
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_entry_type(kind);
        header.set_cksum();
        builder.append_link(&mut header, path, target).unwrap();
    }

    fn temp() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("coderun-outputs-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn regular_files_are_unpacked_by_path() {
        let bytes = archive(|b| {
            let mut dir = tar::Header::new_gnu();
            dir.set_entry_type(tar::EntryType::Directory);
            dir.set_size(0);
            dir.set_cksum();
            b.append_data(&mut dir, "./", std::io::empty()).unwrap();
            file(b, "./result.txt", b"42");
            file(b, "./sub/b.txt", b"b");
        });
        let dir = temp();
        let unpacked = unpack(&bytes, &dir, 10, 1000, &limits()).unwrap();
        let paths: Vec<_> = unpacked.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(paths, ["result.txt", "sub/b.txt"]);
        assert_eq!(std::fs::read(dir.join("result.txt")).unwrap(), b"42");
        assert_eq!(unpacked.files[0].2, 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn links_and_escaping_paths_are_skipped_and_never_followed() {
        let bytes = archive(|b| {
            link(b, "./passwd", "/etc/passwd", tar::EntryType::Symlink);
            link(b, "./hard", "/etc/passwd", tar::EntryType::Link);
            raw_file(b, "../escape.txt", b"x");
            raw_file(b, "/abs.txt", b"x");
            file(b, "./ok.txt", b"ok");
        });
        let dir = temp();
        let unpacked = unpack(&bytes, &dir, 10, 1000, &limits()).unwrap();
        assert_eq!(unpacked.files.len(), 1, "{unpacked:?}");
        assert_eq!(unpacked.files[0].0, "ok.txt");
        assert_eq!(unpacked.skipped.len(), 4, "{unpacked:?}");
        assert!(!dir.parent().unwrap().join("escape.txt").exists());
        assert!(!dir.join("passwd").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_count_and_byte_limits_cut_the_outputs_and_say_so() {
        let bytes = archive(|b| {
            file(b, "a", b"0123456789");
            file(b, "b", b"0123456789");
            file(b, "c", b"0");
        });
        let dir = temp();
        let unpacked = unpack(&bytes, &dir, 10, 15, &limits()).unwrap();
        let paths: Vec<_> = unpacked.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(paths, ["a", "c"]);
        assert!(unpacked.truncated);
        std::fs::remove_dir_all(&dir).unwrap();
        let dir = temp();
        let unpacked = unpack(&bytes, &dir, 1, 1000, &limits()).unwrap();
        assert_eq!(unpacked.files.len(), 1);
        assert!(unpacked.truncated);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
