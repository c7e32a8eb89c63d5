//! Watching the disk budget of a run, to end it with a reason when it is used up.
//!
//! When the run has a tmpfs of its budget (the worker is root), the kernel enforces the
//! budget and this only reads the file system's counters (`statvfs`): a full one ends the run
//! `DiskLimitExceeded`. Otherwise (`Walk`) it is the only bound on `$CODE_PATH` +
//! `$OUTPUT_DIR` on host disk, and a program can hide from it (a deleted file held open, a
//! folder deeper than `PATH_MAX` or one it made unreadable).
//!
//! The rule it keeps: measuring never follows a symlink and never costs more than the budget
//! allows — the walk stops as soon as the run is over its bytes or its file count. A single
//! file is also bounded between two polls by RLIMIT_FSIZE.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Trip;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Usage {
    pub bytes: u64,
    pub entries: u64,
}

/// What is watched.
#[derive(Debug, Clone)]
pub(super) enum Measured {
    /// The run's own file system (a tmpfs of exactly the budget).
    Fs(PathBuf),
    /// Folders on a file system the run shares with the host.
    Walk(Vec<PathBuf>),
}

/// Polls until the budget is exceeded (then trips the run and ends) or the task is aborted.
pub(super) async fn watch(
    measured: Measured,
    max_bytes: u64,
    max_entries: u64,
    every: Duration,
    trip: mpsc::Sender<Trip>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let measured = measured.clone();
        let over = tokio::task::spawn_blocking(move || match measured {
            Measured::Fs(fs) => super::runfs::usage(&fs).is_ok_and(|u| u.full),
            Measured::Walk(dirs) => {
                let usage = measure(&dirs, max_bytes, max_entries);
                usage.bytes > max_bytes || usage.entries > max_entries
            }
        })
        .await;
        if over.unwrap_or(false) {
            let _ = trip.try_send(Trip::Disk);
            return;
        }
    }
}

/// Allocated bytes (so sparse files count what they really use) and entries under `dirs`,
/// stopping early once either exceeds its maximum. Entries that vanish while walking are
/// skipped.
pub(super) fn measure(dirs: &[PathBuf], max_bytes: u64, max_entries: u64) -> Usage {
    use std::os::unix::fs::MetadataExt;
    let mut usage = Usage {
        bytes: 0,
        entries: 0,
    };
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // `DirEntry::metadata` is an lstat: a symlink is counted as itself.
            let Ok(meta) = entry.metadata() else { continue };
            usage.entries += 1;
            usage.bytes += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
            if usage.bytes > max_bytes || usage.entries > max_entries {
                return usage;
            }
        }
    }
    usage
}
