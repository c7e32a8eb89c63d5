//! The worker's folders on the host: `worker.work_dir` and one folder per run below it.
//!
//! The rule it keeps: the worker only ever works in folders it owns and nobody else may write
//! to. A folder that already exists but belongs to someone else, is writable by its group or
//! by others, or is a symlink is refused with a message saying what to fix — another local
//! user who created `/tmp/coderun-runs` first could otherwise plant links the worker (root)
//! would write through.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// Mode of the work folders: the runs' uids may pass through (bubblewrap, as the run's uid,
/// binds the run's folders) but not list or write.
const MODE: u32 = 0o711;

fn refuse(path: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("refusing to use {}: {why}", path.display()),
    )
}

/// Checks that `path` is a real folder (not a symlink) owned by this process's user and not
/// writable by its group or others.
pub(super) fn check_private_dir(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Err(refuse(path, "it is not a folder (or is a symlink)".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(
            path,
            format!(
                "it belongs to uid {}, not to the worker's uid {me}; remove it or choose another \
                 worker.work_dir",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(
            path,
            format!(
                "it is writable by its group or others (mode {:o}); chmod go-w it",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Creates `worker.work_dir` (and its parents) if it is missing, then checks it: the
/// worker's own and not group- or world-writable. Blocks briefly.
pub fn create_work_root(path: &Path) -> io::Result<()> {
    if !path.is_absolute() {
        return Err(refuse(
            path,
            "worker.work_dir must be an absolute path".into(),
        ));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(MODE).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_private_dir(path)
}

/// A fresh folder for run `run_id` under the (checked) work root. A folder left by an
/// earlier attempt of the same run is removed first — when it is the worker's own; one that
/// belongs to someone else is refused. Blocks; call it off the runtime's threads.
pub fn create_run_dir(work_root: &Path, run_id: Uuid) -> io::Result<PathBuf> {
    check_private_dir(work_root)?;
    let dir = work_root.join(run_id.to_string());
    match std::fs::symlink_metadata(&dir) {
        Ok(_) => {
            check_private_dir(&dir)?;
            super::runfs::remove_work_dir(&dir)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    DirBuilder::new().mode(MODE).create(&dir)?;
    // The umask may have taken bits away; the mode is exactly ours.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(MODE))?;
    Ok(dir)
}

#[cfg(test)]
mod unit {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("coderun-workdir-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_missing_work_root_is_created_private() {
        let base = temp();
        let root = base.join("a/b/runs");
        create_work_root(&root).unwrap();
        let mode = std::fs::metadata(&root).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o022, 0, "{mode:o}");
        // Twice is fine.
        create_work_root(&root).unwrap();
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_world_writable_or_linked_work_root_is_refused() {
        let base = temp();
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = create_work_root(&open).unwrap_err().to_string();
        assert!(err.contains("writable by its group or others"), "{err}");

        let link = base.join("link");
        let real = base.join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = create_work_root(&link).unwrap_err().to_string();
        assert!(err.contains("not a folder (or is a symlink)"), "{err}");
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_work_root_owned_by_someone_else_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to give a folder to another user");
            return;
        }
        let base = temp();
        let theirs = base.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(4242), Some(4242)).unwrap();
        let err = create_work_root(&theirs).unwrap_err().to_string();
        assert!(err.contains("belongs to uid 4242"), "{err}");
        // The same for a run's folder planted before the run.
        let root = base.join("runs");
        create_work_root(&root).unwrap();
        let run = Uuid::new_v4();
        let planted = root.join(run.to_string());
        std::fs::create_dir(&planted).unwrap();
        std::fs::write(planted.join("keep"), "theirs").unwrap();
        std::os::unix::fs::chown(&planted, Some(4242), Some(4242)).unwrap();
        let err = create_run_dir(&root, run).unwrap_err().to_string();
        assert!(err.contains("belongs to uid 4242"), "{err}");
        assert!(
            planted.join("keep").exists(),
            "nothing of theirs is touched"
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_run_dir_left_by_an_earlier_attempt_is_replaced() {
        let base = temp();
        let root = base.join("runs");
        create_work_root(&root).unwrap();
        let run = Uuid::new_v4();
        let first = create_run_dir(&root, run).unwrap();
        std::fs::write(first.join("stale"), "x").unwrap();
        let second = create_run_dir(&root, run).unwrap();
        assert_eq!(first, second);
        assert!(!second.join("stale").exists());
        assert_eq!(std::fs::metadata(&second).unwrap().mode() & 0o777, MODE);
        std::fs::remove_dir_all(base).unwrap();
    }
}
