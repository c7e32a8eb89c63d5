//! The run's writable file system: `$CODE_PATH`, `$OUTPUT_DIR`, `/tmp` and `/dev/shm` are
//! folders of **one tmpfs of exactly the run's disk budget**, mounted by the worker on the host
//! at `work_dir/fs` (when the worker is root) and bound into the sandbox.
//!
//! The rule it keeps: the kernel counts the budget, not a walk of folders. A file that is open
//! but deleted, a folder deeper than `PATH_MAX` and a folder nobody but the program may list
//! all use the same tmpfs, whose size and inode count the kernel enforces (`ENOSPC` past
//! them); its pages are charged to the memory cgroup of the process that wrote them, so the
//! run's files also count against its memory and never against the host's disk. The worker
//! keeps the tmpfs mounted after the program ended, reads the outputs from it (never
//! following a link, see `outputs.rs`) and then detaches it with the work dir. Polling the
//! file system's counters (`statvfs`, as cheap as one call) only turns "full" into the run's
//! reason.
//!
//! A worker that is not root cannot mount: it keeps the earlier layout — the folders on host
//! disk measured by a walk, `/tmp` a tmpfs of its own inside bubblewrap — which the program
//! can outwit (see `docs/decisions.md`).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

/// What the kernel counts for the run's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FsUsage {
    pub bytes: u64,
    pub inodes: u64,
    /// No free block or no free inode is left: the next write fails with `ENOSPC`.
    pub full: bool,
}

/// Mounts a tmpfs of `bytes` bytes and `inodes` files and folders at `at` (an existing,
/// empty folder), owned by `owner` with mode 0711: not executable as set-uid, no devices.
pub(super) fn mount(at: &Path, bytes: u64, inodes: u64, owner: (u32, u32)) -> io::Result<()> {
    let options = format!(
        "size={bytes},nr_inodes={inodes},mode=0711,uid={},gid={}",
        owner.0, owner.1
    );
    nix::mount::mount(
        Some("coderun-run"),
        at,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|e| io::Error::other(format!("mounting a tmpfs at {}: {e}", at.display())))
}

/// Whether `path` is the root of a file system other than its parent's.
pub(super) fn is_mount_point(path: &Path) -> bool {
    let (Ok(here), Some(Ok(parent))) = (
        std::fs::symlink_metadata(path),
        path.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    here.is_dir() && here.dev() != parent.dev()
}

/// Detaches the tmpfs at `at` if one is mounted there (lazily: a process still holding a
/// file in it keeps it alive, unreachable, until it lets go).
pub(super) fn unmount(at: &Path) -> io::Result<()> {
    if !is_mount_point(at) {
        return Ok(());
    }
    nix::mount::umount2(at, MntFlags::MNT_DETACH)
        .map_err(|e| io::Error::other(format!("unmounting {}: {e}", at.display())))
}

/// The kernel's counters of the file system at `path`.
pub(super) fn usage(path: &Path) -> io::Result<FsUsage> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let block = stat.fragment_size().max(1);
    Ok(FsUsage {
        bytes: (stat.blocks() - stat.blocks_free()) * block,
        inodes: stat.files() - stat.files_free(),
        full: stat.blocks_free() == 0 || stat.files_free() == 0,
    })
}

/// Copies the regular files and folders under `from` into `to` (which exists), never
/// following a symlink. Fails with `ENOSPC` when they do not fit.
pub(super) fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let mut stack = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src, dst)) = stack.pop() {
        for entry in std::fs::read_dir(&src)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let target = dst.join(entry.file_name());
            if kind.is_dir() {
                std::fs::create_dir(&target)?;
                stack.push((entry.path(), target));
            } else if kind.is_file() {
                std::fs::copy(entry.path(), &target)?;
            }
        }
    }
    Ok(())
}

/// Removes a run's work dir after its run: detaches its tmpfs first, then deletes the rest.
/// Blocks; call it off the runtime's threads.
pub fn remove_work_dir(work_dir: &Path) -> io::Result<()> {
    unmount(&work_dir.join(super::RUN_FS))?;
    match std::fs::remove_dir_all(work_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
