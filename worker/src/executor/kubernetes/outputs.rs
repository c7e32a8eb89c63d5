//! The outputs archive the pod uploaded (`runs/{id}/outputs.tar.gz`), unpacked on the worker.
//!
//! The archive was made inside the sandbox, so nothing in it is trusted (a planted
//! link or device must not reach the worker's files): only regular files are taken; links, devices and anything else are
//! skipped; every path must be a safe relative path (no `..`, no absolute path, no control
//! character — the rules of task files); files are created fresh (`create_new`) in a new,
//! private folder the worker made, so nothing can point outside it; and the count and bytes
//! are capped.
//!
//! Its size is not trusted either: the archive is streamed from storage into a file (never
//! held in memory), and an archive larger than [`archive_limit`] — compressed, or once
//! unpacked (a gzip bomb) — is refused as a whole: nothing of it is stored and the run says
//! why.

use std::io::Read;
use std::path::{Path, PathBuf};

use coderun_shared::config::LimitSettings;
use coderun_shared::domain::FilePath;
use coderun_shared::storage::Storage;
use tokio::io::AsyncWriteExt;

/// Why an outputs archive was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the outputs archive is larger than {limit} bytes, so none of its files was kept")]
    TooLarge { limit: u64 },
    #[error(
        "the outputs archive unpacks to more than {limit} bytes, so none of its files was kept"
    )]
    UnpacksTooLarge { limit: u64 },
}

/// The largest outputs archive taken, compressed or unpacked: the outputs' byte limit plus
/// room for a tar header and padding per file (1 KiB for each of `max_files`, and as many
/// again for folders and skipped entries) and 8 MiB of slack for compression overhead.
pub fn archive_limit(max_files: usize, max_bytes: u64) -> u64 {
    max_bytes + 2 * 1024 * max_files as u64 + 8 * 1024 * 1024
}

/// What [`fetch`] found.
#[derive(Debug)]
pub enum Fetched {
    /// The pod uploaded no archive.
    Missing,
    Unpacked(Unpacked),
    Refused(Refused),
    /// Not a gzipped tar (the program's doing): nothing is kept.
    Unreadable(std::io::Error),
}

fn http() -> &'static reqwest::Client {
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    HTTP.get_or_init(reqwest::Client::new)
}

/// Streams the archive at `key` into `work` (a fresh, private folder of the worker's), then
/// unpacks it into `work/files`. Never holds the archive in memory; refuses it past
/// [`archive_limit`], leaving nothing unpacked. Errors are storage's (worth another try).
pub async fn fetch(
    storage: &Storage,
    key: &str,
    work: &Path,
    max_files: usize,
    max_bytes: u64,
    limits: &LimitSettings,
) -> anyhow::Result<Fetched> {
    let limit = archive_limit(max_files, max_bytes);
    let url = storage.presigned_get_internal(key).await?;
    let response = http().get(url).send().await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(Fetched::Missing);
    }
    let mut response = response.error_for_status()?;
    if response.content_length().is_some_and(|n| n > limit) {
        return Ok(Fetched::Refused(Refused::TooLarge { limit }));
    }
    let archive = work.join("outputs.tar.gz");
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&archive)
        .await?;
    let mut received = 0u64;
    while let Some(chunk) = response.chunk().await? {
        received += chunk.len() as u64;
        if received > limit {
            drop(file);
            tokio::fs::remove_file(&archive).await?;
            return Ok(Fetched::Refused(Refused::TooLarge { limit }));
        }
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    drop(file);

    let into = work.join("files");
    tokio::fs::create_dir(&into).await?;
    let (archive_path, unpack_into, limits) = (archive.clone(), into.clone(), limits.clone());
    let unpacked = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&archive_path).map_err(UnpackError::Io)?;
        unpack_limited(
            std::io::BufReader::new(file),
            &unpack_into,
            max_files,
            max_bytes,
            limit,
            &limits,
        )
    })
    .await?;
    let _ = tokio::fs::remove_file(&archive).await;
    match unpacked {
        Ok(unpacked) => Ok(Fetched::Unpacked(unpacked)),
        Err(UnpackError::Refused(refused)) => {
            // Nothing partial: whatever was unpacked before the limit goes.
            tokio::fs::remove_dir_all(&into).await?;
            Ok(Fetched::Refused(refused))
        }
        Err(UnpackError::Io(e)) => {
            tokio::fs::remove_dir_all(&into).await?;
            Ok(Fetched::Unreadable(e))
        }
    }
}

enum UnpackError {
    Refused(Refused),
    Io(std::io::Error),
}

/// A reader that fails (and says so in `tripped`) once more than `left` bytes were read
/// through it.
struct Limited<R> {
    inner: R,
    left: u64,
    tripped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.tripped
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(std::io::Error::other(
                "the unpacked archive is over its limit",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

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
    let limit = archive_limit(max_files, max_bytes);
    unpack_limited(archive, into, max_files, max_bytes, limit, limits).map_err(|e| match e {
        UnpackError::Refused(refused) => std::io::Error::other(refused),
        UnpackError::Io(e) => e,
    })
}

/// [`unpack`] from a reader, refusing a tar stream of more than `tar_limit` bytes.
fn unpack_limited(
    archive: impl Read,
    into: &Path,
    max_files: usize,
    max_bytes: u64,
    tar_limit: u64,
    limits: &LimitSettings,
) -> Result<Unpacked, UnpackError> {
    let tripped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tar_stream = Limited {
        inner: flate2::read::GzDecoder::new(archive),
        left: tar_limit,
        tripped: tripped.clone(),
    };
    unpack_entries(tar_stream, into, max_files, max_bytes, limits).map_err(|e| {
        // However the tar reader wrapped it, an error after the limit tripped is the limit.
        if tripped.load(std::sync::atomic::Ordering::SeqCst) {
            UnpackError::Refused(Refused::UnpacksTooLarge { limit: tar_limit })
        } else {
            UnpackError::Io(e)
        }
    })
}

/// Takes the regular files of the tar stream `tar_stream` into `into`.
fn unpack_entries(
    tar_stream: impl Read,
    into: &Path,
    max_files: usize,
    max_bytes: u64,
    limits: &LimitSettings,
) -> std::io::Result<Unpacked> {
    let mut unpacked = Unpacked::default();
    let mut total = 0u64;
    let mut tar = tar::Archive::new(tar_stream);
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
    fn an_archive_that_unpacks_past_the_limit_is_refused() {
        // 64 MiB of zeros compress to about 64 KiB: small to download, a bomb to unpack.
        let bytes = archive(|b| file(b, "zeros", &vec![0u8; 64 * 1024 * 1024]));
        assert!(bytes.len() < 1024 * 1024, "{}", bytes.len());
        let dir = temp();
        let result = unpack_limited(&bytes[..], &dir, 10, 1000, 4 * 1024 * 1024, &limits());
        let Err(UnpackError::Refused(refused)) = result else {
            panic!("not refused");
        };
        assert_eq!(
            refused,
            Refused::UnpacksTooLarge {
                limit: 4 * 1024 * 1024
            }
        );
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
