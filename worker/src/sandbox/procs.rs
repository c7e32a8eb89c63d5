//! Host processes by uid, read from `/proc`: used to prove a run's uid is empty and to clear
//! whatever a worker that died abruptly left behind.
//!
//! The rule it keeps: a uid counts as in use while any process has it as its real, effective,
//! saved or filesystem uid — including zombies.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Pids of every host process that has `uid` in any of its uid fields.
pub(crate) fn pids_with_uid(uid: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let has_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|ids| {
                ids.split_whitespace()
                    .any(|id| id.parse::<u32>() == Ok(uid))
            });
        if has_uid {
            pids.push(pid);
        }
    }
    pids
}

/// SIGKILLs every process of `uid` until none is left (or a few seconds passed, which only a
/// process stuck in the kernel explains). Returns whether the uid is free.
pub(super) fn kill_uid(uid: u32) -> bool {
    let start = Instant::now();
    loop {
        let pids = pids_with_uid(uid);
        if pids.is_empty() {
            return true;
        }
        if start.elapsed() > Duration::from_secs(5) {
            tracing::error!(uid, ?pids, "processes of a sandbox uid survive SIGKILL");
            return false;
        }
        tracing::warn!(uid, ?pids, "killing leftover processes of a sandbox uid");
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
