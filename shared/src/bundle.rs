//! `code.tar.gz`: the bundle of a run's code snapshot. The API creates it at submit time; the
//! init step (a Job's init container, or the local executor) downloads and unpacks it.
//!
//! The bundle is deterministic (same files → same bytes → same sha256): regular files only,
//! mode 0644, owner 0:0, a fixed mtime, no gzip name or time. Unpacking verifies the sha256
//! recorded in the run row before reading a single entry, then writes regular files only, under
//! the target folder, never following or creating a link, and never more than a byte budget.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// The modification time of every entry: 2000-01-01T00:00:00Z (a fixed, plausible date, so
/// tools do not warn about files from 1970).
const MTIME: u64 = 946_684_800;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the bundle's sha256 is {actual}, but {expected} was expected")]
    Checksum { expected: String, actual: String },
    #[error("the bundle holds an unsafe path `{0}`")]
    UnsafePath(String),
    #[error("the bundle holds `{path}`, a {kind}; only regular files are allowed")]
    NotAFile { path: String, kind: String },
    #[error("the bundle names `{0}` twice")]
    Duplicate(String),
    #[error("the bundle unpacks to more than {max} bytes")]
    TooLarge { max: u64 },
    #[error("the bundle cannot be unpacked: {0}")]
    Io(#[from] io::Error),
}

/// The name the worker side knows it by.
pub type BundleError = Error;

/// A gzipped tar archive of a run's files and its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub bytes: Vec<u8>,
    /// Lower-case hex.
    pub sha256: String,
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Packs `files` (path, content), in the order given, into a deterministic `code.tar.gz`.
/// The paths are validated task paths; one that is not safe to unpack is refused anyway.
pub fn create(files: &[(String, String)]) -> io::Result<Bundle> {
    let mut writer = BundleWriter::new(Vec::new());
    for (path, content) in files {
        writer.add(path, content.as_bytes())?;
    }
    let bytes = writer.finish()?;
    Ok(Bundle {
        sha256: sha256_hex(&bytes),
        bytes,
    })
}

/// Writes a bundle file by file into any writer, so a large one can be hashed or uploaded as it
/// is made: the same files in the same order give the same bytes as [`create`].
pub struct BundleWriter<W: Write> {
    builder: tar::Builder<flate2::write::GzEncoder<W>>,
}

impl<W: Write> BundleWriter<W> {
    pub fn new(out: W) -> Self {
        let gzip = flate2::GzBuilder::new()
            .mtime(0)
            .write(out, Compression::default());
        Self {
            builder: tar::Builder::new(gzip),
        }
    }

    /// Appends one regular file; an unsafe path is refused.
    pub fn add(&mut self, path: &str, content: &[u8]) -> io::Result<()> {
        if !is_safe(path) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unsafe path `{path}` in a bundle"),
            ));
        }
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        // Sets the path (a GNU long-name entry when it exceeds 100 bytes) and the checksum.
        self.builder.append_data(&mut header, path, content)
    }

    /// Ends the archive and the gzip stream; returns the writer.
    pub fn finish(self) -> io::Result<W> {
        self.builder.into_inner()?.finish()
    }
}

/// A relative path of plain segments: no leading `/`, no empty, `.` or `..` segment, no
/// backslash, no control character.
fn is_safe(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// Verifies that `bytes` hash to `expected_sha256`, then unpacks its regular files into `into`
/// (created if missing), refusing unsafe paths, links, devices and anything but regular files
/// and folders, and more than `max_bytes` of file content in total. Returns the paths written.
///
/// On an error, `into` may hold part of the bundle: the caller discards the folder.
pub fn extract(
    bytes: &[u8],
    expected_sha256: &str,
    into: &Path,
    max_bytes: u64,
) -> Result<Vec<String>, Error> {
    let actual = sha256_hex(bytes);
    if !actual.eq_ignore_ascii_case(expected_sha256) {
        return Err(Error::Checksum {
            expected: expected_sha256.to_owned(),
            actual,
        });
    }
    unpack(bytes, into, max_bytes)
}

/// [`extract`] of a bundle held in the file `bundle` (a large one is not read into memory):
/// the file is hashed first, then unpacked from the disk.
pub fn extract_file(
    bundle: &Path,
    expected_sha256: &str,
    into: &Path,
    max_bytes: u64,
) -> Result<Vec<String>, Error> {
    let mut hasher = Sha256::new();
    io::copy(&mut fs::File::open(bundle)?, &mut hasher)?;
    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(expected_sha256) {
        return Err(Error::Checksum {
            expected: expected_sha256.to_owned(),
            actual,
        });
    }
    unpack(io::BufReader::new(fs::File::open(bundle)?), into, max_bytes)
}

/// Unpacks a checked bundle (see [`extract`] for the rules).
fn unpack(bundle: impl Read, into: &Path, max_bytes: u64) -> Result<Vec<String>, Error> {
    fs::create_dir_all(into)?;
    let mut archive = tar::Archive::new(GzDecoder::new(bundle));
    let mut written = Vec::new();
    let mut total: u64 = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path_bytes();
        let path = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            // Folders come from the files' paths; an explicit entry adds nothing.
            let folder = path.trim_end_matches('/');
            if !is_safe(folder) {
                return Err(Error::UnsafePath(path));
            }
            continue;
        }
        if !is_safe(&path) || std::str::from_utf8(&raw).is_err() {
            return Err(Error::UnsafePath(path));
        }
        if !(kind.is_file() || kind == EntryType::Continuous) {
            return Err(Error::NotAFile {
                path,
                kind: describe(kind).to_owned(),
            });
        }
        let size = entry.size();
        total = total.saturating_add(size);
        if total > max_bytes {
            return Err(Error::TooLarge { max: max_bytes });
        }
        let target = into.join(&path);
        make_parents(into, &path)?;
        let mut file = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&target)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::Duplicate(path));
            }
            Err(e) => return Err(e.into()),
        };
        let copied = io::copy(&mut (&mut entry).take(size), &mut file)?;
        if copied != size {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("`{path}` is cut short"),
            )));
        }
        file.flush()?;
        written.push(path);
    }
    Ok(written)
}

/// Creates the folders above `path` inside `root`, refusing to pass through anything that is
/// not a real folder (a link planted there, or a file of the bundle).
fn make_parents(root: &Path, path: &str) -> Result<(), Error> {
    let mut dir = PathBuf::from(root);
    let segments: Vec<&str> = path.split('/').collect();
    for segment in &segments[..segments.len() - 1] {
        dir.push(segment);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(_) => return Err(Error::UnsafePath(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&dir)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn describe(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Symlink => "symbolic link",
        EntryType::Link => "hard link",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "named pipe",
        EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system's temporary folder, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("coderun-bundle-{}", uuid::Uuid::new_v4()));
            fs::create_dir(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn files() -> Vec<(String, String)> {
        vec![
            ("main.py".into(), "print('hi')\n".into()),
            ("lib/util.py".into(), "X = 1\n".into()),
            (
                format!("deep/{}/long.txt", "n".repeat(120)),
                "long\n".into(),
            ),
            ("empty.txt".into(), String::new()),
        ]
    }

    /// A gzipped archive built by `add` with the raw tar API, and its sha256.
    fn raw_archive(add: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> (Vec<u8>, String) {
        let mut builder = tar::Builder::new(Vec::new());
        add(&mut builder);
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&tar).unwrap();
        let bytes = gz.finish().unwrap();
        let sha = sha256_hex(&bytes);
        (bytes, sha)
    }

    fn header(kind: EntryType, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header
    }

    /// Writes `name` into the raw header bytes, bypassing the tar crate's own path checks.
    fn set_raw_name(header: &mut Header, name: &str) {
        let field = &mut header.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
    }

    #[test]
    fn a_bundle_is_deterministic_and_unpacks_to_the_same_files() {
        let first = create(&files()).unwrap();
        let second = create(&files()).unwrap();
        assert_eq!(first, second, "same files, same bytes");
        assert_eq!(first.sha256, sha256_hex(&first.bytes));
        assert_eq!(first.sha256.len(), 64);

        let dir = TempDir::new();
        let out = dir.0.join("code");
        let written = extract(&first.bytes, &first.sha256, &out, 1 << 20).unwrap();
        let expected: Vec<String> = files().into_iter().map(|(p, _)| p).collect();
        assert_eq!(written, expected);
        for (path, content) in files() {
            let target = out.join(&path);
            assert_eq!(fs::read_to_string(&target).unwrap(), content, "{path}");
            let mode = fs::metadata(&target).unwrap().permissions();
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o111, 0);
        }
    }

    #[test]
    fn a_bundle_in_a_file_is_checked_then_unpacked_like_one_in_memory() {
        let bundle = create(&files()).unwrap();
        let dir = TempDir::new();
        let file = dir.0.join("code.tar.gz");
        fs::write(&file, &bundle.bytes).unwrap();

        let refused = extract_file(&file, &"0".repeat(64), &dir.0.join("refused"), 1 << 20);
        assert!(
            matches!(refused, Err(Error::Checksum { .. })),
            "{refused:?}"
        );
        assert!(
            !dir.0.join("refused").exists(),
            "nothing unpacked before the check"
        );

        let out = dir.0.join("code");
        let written = extract_file(&file, &bundle.sha256, &out, 1 << 20).unwrap();
        let expected: Vec<String> = files().into_iter().map(|(p, _)| p).collect();
        assert_eq!(written, expected);
        for (path, content) in files() {
            assert_eq!(
                fs::read_to_string(out.join(&path)).unwrap(),
                content,
                "{path}"
            );
        }
        let small = extract_file(&file, &bundle.sha256, &dir.0.join("small"), 4);
        assert!(matches!(small, Err(Error::TooLarge { .. })), "{small:?}");
    }

    #[test]
    fn entries_are_plain_files_owned_by_root_with_a_fixed_time() {
        let bundle = create(&files()).unwrap();
        let mut archive = tar::Archive::new(GzDecoder::new(&bundle.bytes[..]));
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.entry_type(), EntryType::Regular);
            assert_eq!(header.mode().unwrap(), 0o644);
            assert_eq!(header.mtime().unwrap(), MTIME);
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
        }
        let other = create(&[("main.py".into(), "print('bye')\n".into())]).unwrap();
        assert_ne!(other.sha256, bundle.sha256);
    }

    #[test]
    fn creating_a_bundle_refuses_unsafe_paths() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", ""] {
            assert!(create(&[(bad.into(), "x".into())]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bundle_whose_hash_differs_is_refused_before_anything_is_written() {
        let bundle = create(&files()).unwrap();
        let dir = TempDir::new();
        let out = dir.0.join("code");
        let wrong = sha256_hex(b"something else");
        let err = extract(&bundle.bytes, &wrong, &out, 1 << 20).unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
        assert!(
            !out.exists(),
            "nothing is written before the hash is checked"
        );
        let mut tampered = bundle.bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            extract(&tampered, &bundle.sha256, &out, 1 << 20),
            Err(Error::Checksum { .. })
        ));
    }

    #[test]
    fn absolute_and_parent_paths_are_refused() {
        for name in ["/etc/evil", "../evil", "a/../../evil", "a/./b"] {
            let (bytes, sha) = raw_archive(|b| {
                let mut h = header(EntryType::Regular, 4);
                set_raw_name(&mut h, name);
                b.append(&h, &b"evil"[..]).unwrap();
            });
            let dir = TempDir::new();
            let out = dir.0.join("code");
            let err = extract(&bytes, &sha, &out, 1 << 20).unwrap_err();
            assert!(matches!(err, Error::UnsafePath(_)), "{name}: {err}");
            assert!(!dir.0.join("evil").exists());
        }
    }

    #[test]
    fn links_and_devices_are_refused() {
        let cases: [(EntryType, &str); 4] = [
            (EntryType::Symlink, "symbolic link"),
            (EntryType::Link, "hard link"),
            (EntryType::Char, "character device"),
            (EntryType::Fifo, "named pipe"),
        ];
        for (kind, described) in cases {
            let (bytes, sha) = raw_archive(|b| {
                let mut h = header(kind, 0);
                if matches!(kind, EntryType::Symlink | EntryType::Link) {
                    h.set_link_name("/etc/passwd").unwrap();
                }
                b.append_data(&mut h, "escape", io::empty()).unwrap();
                // A file written "through" the link must never happen.
                let mut h = header(EntryType::Regular, 4);
                b.append_data(&mut h, "escape/x", &b"evil"[..]).unwrap();
            });
            let dir = TempDir::new();
            let out = dir.0.join("code");
            let err = extract(&bytes, &sha, &out, 1 << 20).unwrap_err();
            match &err {
                Error::NotAFile { path, kind } => {
                    assert_eq!(path, "escape");
                    assert_eq!(kind, described);
                }
                other => panic!("{described}: unexpected {other}"),
            }
            assert!(fs::symlink_metadata(out.join("escape")).is_err());
        }
    }

    #[test]
    fn a_link_planted_in_the_target_is_never_followed() {
        let dir = TempDir::new();
        let out = dir.0.join("code");
        let outside = dir.0.join("outside");
        fs::create_dir_all(&out).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("lib")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), out.join("main.py")).unwrap();
        let bundle = create(&[("lib/x.py".into(), "x".into())]).unwrap();
        assert!(matches!(
            extract(&bundle.bytes, &bundle.sha256, &out, 1 << 20),
            Err(Error::UnsafePath(_))
        ));
        let bundle = create(&[("main.py".into(), "x".into())]).unwrap();
        assert!(extract(&bundle.bytes, &bundle.sha256, &out, 1 << 20).is_err());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn more_than_the_budget_is_refused_and_duplicates_too() {
        let bundle =
            create(&[("a".into(), "x".repeat(600)), ("b".into(), "y".repeat(600))]).unwrap();
        let dir = TempDir::new();
        assert!(matches!(
            extract(&bundle.bytes, &bundle.sha256, &dir.0.join("one"), 1000),
            Err(Error::TooLarge { max: 1000 })
        ));
        assert!(extract(&bundle.bytes, &bundle.sha256, &dir.0.join("two"), 1200).is_ok());

        let (bytes, sha) = raw_archive(|b| {
            for content in [&b"one"[..], &b"two"[..]] {
                let mut h = header(EntryType::Regular, 3);
                b.append_data(&mut h, "same.txt", content).unwrap();
            }
        });
        assert!(matches!(
            extract(&bytes, &sha, &dir.0.join("three"), 1 << 20),
            Err(Error::Duplicate(_))
        ));
    }

    #[test]
    fn folder_entries_are_accepted_but_create_nothing_by_themselves() {
        let (bytes, sha) = raw_archive(|b| {
            let mut h = header(EntryType::Directory, 0);
            b.append_data(&mut h, "src/", io::empty()).unwrap();
            let mut h = header(EntryType::Regular, 2);
            b.append_data(&mut h, "src/a.py", &b"ok"[..]).unwrap();
        });
        let dir = TempDir::new();
        let written = extract(&bytes, &sha, &dir.0.join("code"), 1 << 20).unwrap();
        assert_eq!(written, ["src/a.py"]);
    }
}
