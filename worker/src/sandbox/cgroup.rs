//! One cgroup per run: memory (required), pids and cpu (where the host offers them), on
//! cgroup v1 or v2, under the worker's own cgroup as `/proc/self/cgroup` names it.
//!
//! The rule it keeps: a run's cgroup exists before its first process and is removed only
//! once empty — every process in it is SIGKILLed until `cgroup.procs` reads empty (v1 has no
//! `cgroup.kill`). Its OOM-kill counter is read before it goes.

use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    V1,
    V2,
}

/// Where runs' cgroups are created.
#[derive(Debug)]
pub(super) struct Cgroups {
    version: Version,
    /// The folder holding runs' memory cgroups (on v2 the one folder holding runs' cgroups).
    memory: PathBuf,
    /// v1 only: the pids and cpu hierarchies' folders, when usable.
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    /// v2 only: controllers enabled for runs.
    v2_pids: bool,
    v2_cpu: bool,
}

/// Why no memory cgroup can be used (for the preflight error).
#[derive(Debug)]
pub(super) struct Unusable {
    pub path: String,
    pub reason: String,
}

/// A run's cgroup (one folder per v1 hierarchy, one folder on v2).
#[derive(Debug)]
pub(super) struct RunCgroup {
    version: Version,
    memory: PathBuf,
    dirs: Vec<PathBuf>,
}

struct OwnCgroup {
    /// Hierarchy's controllers (empty for v2's "0::" line).
    controllers: Vec<String>,
    path: String,
}

pub(super) struct CgroupMount {
    root: String,
    mount_point: PathBuf,
    v2: bool,
    pub options: Vec<String>,
}

fn own_cgroups() -> io::Result<Vec<OwnCgroup>> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?.to_string();
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| c.strip_prefix("name=").unwrap_or(c).to_string())
                .collect();
            Some(OwnCgroup { controllers, path })
        })
        .collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space …).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(d)) = (bytes[i], octal) {
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn cgroup_mounts() -> io::Result<Vec<CgroupMount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let v2 = match right[0] {
            "cgroup" => false,
            "cgroup2" => true,
            _ => continue,
        };
        mounts.push(CgroupMount {
            root: unescape(left[3]),
            mount_point: PathBuf::from(unescape(left[4])),
            v2,
            options: right[2].split(',').map(String::from).collect(),
        });
    }
    Ok(mounts)
}

/// Where the worker mounts the hierarchy that turns `favordynmods` on (see [`favor_moves`]).
pub(super) const FAVOR_MOUNT: &str = "/run/coderun-cgroup-favordynmods";

/// What [`favor_moves`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FavorMoves {
    /// A cgroup hierarchy of this host has `favordynmods` already.
    Already,
    /// The worker mounted its own (controller-less, named) hierarchy with it at [`FAVOR_MOUNT`].
    Mounted,
    /// Neither: a run's start waits for a grace period (the reason says why).
    Unavailable(String),
}

/// Makes moving a process into a cgroup cheap. Every run's first process joins the run's
/// cgroups by writing its pid to `cgroup.procs`; the kernel then write-locks the
/// `cgroup_threadgroup_rwsem`, which by default waits for an RCU grace period — measured at
/// 7–11 ms per run start on the 2-core development VM, a third of a hello world's sandbox time,
/// spent waiting, not computing. With `favordynmods` (Linux 6.1+, on any hierarchy: the lock
/// is global) the lock stays in its slow-reader mode, so moves do not wait, and fork and exit
/// pay an atomic operation instead of a per-cpu one. A host running untrusted code in
/// per-run cgroups is the workload the option was made for. The worker turns it on by
/// mounting a named v1 hierarchy with no controllers (nothing is accounted in it, nothing
/// else changes) and leaves it mounted: a later worker finds it.
pub(super) fn favor_moves() -> FavorMoves {
    let mounts = match cgroup_mounts() {
        Ok(mounts) => mounts,
        Err(e) => return FavorMoves::Unavailable(format!("reading /proc/self/mountinfo: {e}")),
    };
    if mounts
        .iter()
        .any(|m| m.options.iter().any(|o| o == "favordynmods"))
    {
        return FavorMoves::Already;
    }
    let at = Path::new(FAVOR_MOUNT);
    if let Err(e) = ensure_dir(at) {
        return FavorMoves::Unavailable(e.to_string());
    }
    match nix::mount::mount(
        Some("coderun"),
        at,
        Some("cgroup"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("none,name=coderun-favordynmods,favordynmods"),
    ) {
        Ok(()) => FavorMoves::Mounted,
        Err(e) => {
            let _ = std::fs::remove_dir(at);
            FavorMoves::Unavailable(format!("mounting a cgroup hierarchy at {FAVOR_MOUNT}: {e}"))
        }
    }
}

/// The host folder of our own cgroup in a mount: the mount point plus our path below the
/// mount's root.
fn own_dir(mount: &CgroupMount, own_path: &str) -> PathBuf {
    let rel = own_path
        .strip_prefix(mount.root.as_str())
        .unwrap_or(own_path);
    mount.mount_point.join(rel.trim_start_matches('/'))
}

fn write(path: &Path, value: impl AsRef<[u8]>) -> io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// `mkdir`, fine if it exists as a folder.
fn ensure_dir(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

impl Cgroups {
    /// Finds where we may create runs' cgroups and proves it by creating, limiting and removing
    /// one. `name` is the folder under our own cgroup that holds them.
    pub fn discover(name: &str) -> Result<Cgroups, Unusable> {
        let unusable = |path: &Path, reason: String| Unusable {
            path: path.display().to_string(),
            reason,
        };
        let own =
            own_cgroups().map_err(|e| unusable(Path::new("/proc/self/cgroup"), e.to_string()))?;
        let mounts = cgroup_mounts()
            .map_err(|e| unusable(Path::new("/proc/self/mountinfo"), e.to_string()))?;
        let v1_base = |controller: &str| -> Option<PathBuf> {
            let mount = mounts
                .iter()
                .find(|m| !m.v2 && m.options.iter().any(|o| o == controller))?;
            let mine = own
                .iter()
                .find(|c| c.controllers.iter().any(|c| c == controller))?;
            Some(own_dir(mount, &mine.path))
        };

        if let Some(base) = v1_base("memory") {
            let parent = base.join(name);
            let probe = Limits {
                cpu_millis: 1000,
                memory_mib: 64,
                disk_mib: 1,
                pids: 16,
                wall_seconds: 1,
            };
            ensure_dir(&parent).map_err(|e| unusable(&parent, e.to_string()))?;
            let mut cgroups = Cgroups {
                version: Version::V1,
                memory: parent.clone(),
                pids: None,
                cpu: None,
                v2_pids: false,
                v2_cpu: false,
            };
            // Optional controllers: used when we can create and limit children there.
            let probe_name = format!("preflight-{}", std::process::id());
            let optional = |controller: &str, file: &str, value: &str| -> Option<PathBuf> {
                let dir = v1_base(controller)?.join(name);
                let child = dir.join(&probe_name);
                let result = ensure_dir(&dir)
                    .and_then(|()| ensure_dir(&child))
                    .and_then(|()| write(&child.join(file), value));
                let _ = std::fs::remove_dir(&child);
                match result {
                    Ok(()) => Some(dir),
                    Err(e) => {
                        tracing::warn!(controller, error = %e, "cgroup controller not usable for runs");
                        None
                    }
                }
            };
            cgroups.pids = optional("pids", "pids.max", "16");
            cgroups.cpu = optional("cpu", "cpu.cfs_quota_us", "100000");
            let run = cgroups
                .create(&probe_name, &probe)
                .map_err(|e| unusable(&parent, e.to_string()))?;
            run.destroy();
            return Ok(cgroups);
        }

        // cgroup v2.
        let Some(mount) = mounts.iter().find(|m| m.v2) else {
            return Err(unusable(
                Path::new("/sys/fs/cgroup"),
                "no cgroup v1 memory hierarchy and no cgroup2 mount in /proc/self/mountinfo".into(),
            ));
        };
        let Some(mine) = own.iter().find(|c| c.controllers.is_empty()) else {
            return Err(unusable(
                &mount.mount_point,
                "/proc/self/cgroup has no `0::` line".into(),
            ));
        };
        let base = own_dir(mount, &mine.path);
        let available =
            std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        let available: Vec<&str> = available.split_whitespace().collect();
        if !available.contains(&"memory") {
            return Err(unusable(
                &base,
                format!(
                    "the memory controller is not delegated to this cgroup (cgroup.controllers: {:?})",
                    available.join(" ")
                ),
            ));
        }
        let wanted: Vec<&str> = ["memory", "pids", "cpu"]
            .into_iter()
            .filter(|c| available.contains(c))
            .collect();
        let enable = |dir: &Path| -> io::Result<()> {
            for c in &wanted {
                write(&dir.join("cgroup.subtree_control"), format!("+{c}"))?;
            }
            Ok(())
        };
        if let Err(e) = enable(&base) {
            // "No internal processes": a cgroup with processes cannot hand controllers to its
            // children. Move this worker into a leaf of its own, then try again.
            if e.raw_os_error() != Some(nix::libc::EBUSY) {
                return Err(unusable(&base, e.to_string()));
            }
            let leaf = base.join(format!("{name}-worker"));
            ensure_dir(&leaf)
                .and_then(|()| write(&leaf.join("cgroup.procs"), std::process::id().to_string()))
                .and_then(|()| enable(&base))
                .map_err(|e| {
                    unusable(
                        &base,
                        format!(
                            "cannot enable controllers for child cgroups (other processes share this \
                             cgroup?): {e}; run the worker in a cgroup of its own with the memory \
                             controller delegated (systemd: Delegate=yes)"
                        ),
                    )
                })?;
        }
        let parent = base.join(name);
        ensure_dir(&parent)
            .and_then(|()| enable(&parent))
            .map_err(|e| unusable(&parent, e.to_string()))?;
        let cgroups = Cgroups {
            version: Version::V2,
            memory: parent.clone(),
            pids: None,
            cpu: None,
            v2_pids: wanted.contains(&"pids"),
            v2_cpu: wanted.contains(&"cpu"),
        };
        let probe = Limits {
            cpu_millis: 1000,
            memory_mib: 64,
            disk_mib: 1,
            pids: 16,
            wall_seconds: 1,
        };
        let run = cgroups
            .create(&format!("preflight-{}", std::process::id()), &probe)
            .map_err(|e| unusable(&parent, e.to_string()))?;
        run.destroy();
        Ok(cgroups)
    }

    pub fn describe(&self) -> String {
        match self.version {
            Version::V1 => format!(
                "cgroup v1: memory {}, pids {}, cpu {}",
                self.memory.display(),
                self.pids
                    .as_ref()
                    .map_or("unavailable".into(), |p| p.display().to_string()),
                self.cpu
                    .as_ref()
                    .map_or("unavailable".into(), |p| p.display().to_string()),
            ),
            Version::V2 => format!(
                "cgroup v2: {} (memory{}{})",
                self.memory.display(),
                if self.v2_pids { ", pids" } else { "" },
                if self.v2_cpu { ", cpu" } else { "" },
            ),
        }
    }

    /// Whether runs get a pids cgroup (else RLIMIT_NPROC is the only pids bound).
    pub fn has_pids(&self) -> bool {
        self.pids.is_some() || self.v2_pids
    }

    /// The folders a run's cgroup named `name` has (for tests proving it is gone).
    #[cfg(test)]
    pub fn run_dirs(&self, name: &str) -> Vec<PathBuf> {
        self.parents().into_iter().map(|p| p.join(name)).collect()
    }

    fn parents(&self) -> Vec<&Path> {
        let mut dirs = vec![self.memory.as_path()];
        dirs.extend(self.pids.as_deref());
        dirs.extend(self.cpu.as_deref());
        dirs
    }

    /// Kills every process left in a cgroup named `name` beside this worker's own cgroup
    /// folders — whichever worker on this host created it — and removes the folders. Returns
    /// how many processes it killed.
    pub fn kill_everywhere(&self, name: &str) -> usize {
        let mut killed = 0;
        for parent in self.parents() {
            let Some(siblings) = parent.parent() else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(siblings) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_name().to_string_lossy().starts_with("coderun") {
                    continue;
                }
                let dir = entry.path().join(name);
                for _ in 0..50 {
                    let pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect();
                    if pids.is_empty() {
                        break;
                    }
                    for pid in pids {
                        if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                            killed += 1;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        killed
    }

    /// Creates the run's cgroup with its limits; on failure nothing is left.
    pub fn create(&self, name: &str, limits: &Limits) -> io::Result<RunCgroup> {
        let memory = self.memory.join(name);
        let mut run = RunCgroup {
            version: self.version,
            memory: memory.clone(),
            dirs: Vec::new(),
        };
        let bytes = u64::from(limits.memory_mib) * 1024 * 1024;
        let quota = u64::from(limits.cpu_millis) * 100; // µs per 100 ms period
        let result = (|| -> io::Result<()> {
            ensure_dir(&memory)?;
            run.dirs.push(memory.clone());
            match self.version {
                Version::V1 => {
                    write(&memory.join("memory.limit_in_bytes"), bytes.to_string())?;
                    let memsw = memory.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, bytes.to_string())?;
                    }
                    if let Some(pids) = &self.pids {
                        let dir = pids.join(name);
                        ensure_dir(&dir)?;
                        run.dirs.push(dir.clone());
                        write(&dir.join("pids.max"), limits.pids.to_string())?;
                    }
                    if let Some(cpu) = &self.cpu {
                        let dir = cpu.join(name);
                        ensure_dir(&dir)?;
                        run.dirs.push(dir.clone());
                        write(&dir.join("cpu.cfs_period_us"), "100000")?;
                        write(&dir.join("cpu.cfs_quota_us"), quota.max(1000).to_string())?;
                    }
                }
                Version::V2 => {
                    write(&memory.join("memory.max"), bytes.to_string())?;
                    let swap = memory.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0")?;
                    }
                    // An OOM kills the whole run, not one process of it.
                    let group = memory.join("memory.oom.group");
                    if group.exists() {
                        write(&group, "1")?;
                    }
                    if self.v2_pids {
                        write(&memory.join("pids.max"), limits.pids.to_string())?;
                    }
                    if self.v2_cpu {
                        write(
                            &memory.join("cpu.max"),
                            format!("{} 100000", quota.max(1000)),
                        )?;
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(run),
            Err(e) => {
                run.destroy();
                Err(e)
            }
        }
    }

    /// Removes runs' cgroups a previous worker left (killing what is in them).
    pub fn remove_stale(&self) {
        for parent in self.parents() {
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    tracing::warn!(cgroup = %entry.path().display(), "removing a leftover run cgroup");
                    RunCgroup {
                        version: self.version,
                        memory: entry.path(),
                        dirs: vec![entry.path()],
                    }
                    .destroy();
                }
            }
        }
    }
}

impl RunCgroup {
    /// The `cgroup.procs` files the run's first process writes itself into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether any process ever joined it (a first process that failed to join leaves it at
    /// zero memory used).
    pub fn ever_used(&self) -> bool {
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        match std::fs::read_to_string(self.memory.join(file)) {
            Ok(text) => text.trim().parse::<u64>().map_or(true, |v| v > 0),
            Err(_) => true,
        }
    }

    fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in &self.dirs {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// One sweep: SIGKILL to every process in the cgroup but `spare`. Returns whether any
    /// process was found. (v2's `cgroup.kill` would take `spare` too, so it is not used.)
    pub fn kill_once(&self, spare: Option<i32>) -> bool {
        let pids = self.pids();
        for &pid in pids.iter().filter(|&&p| Some(p) != spare) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        !pids.is_empty()
    }

    /// How many processes the kernel killed for lack of memory in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        std::fs::read_to_string(self.memory.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|v| v.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    /// Kills everything in it until it is empty, then removes it. Blocks (briefly).
    pub fn destroy(self) {
        let start = Instant::now();
        let mut pending: Vec<PathBuf> = self.dirs.clone();
        while !pending.is_empty() {
            self.kill_once(None);
            pending.retain(|dir| match std::fs::remove_dir(dir) {
                Ok(()) => false,
                Err(e) if e.kind() == ErrorKind::NotFound => false,
                Err(_) => true,
            });
            if pending.is_empty() {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                tracing::error!(cgroups = ?pending, "cannot remove run cgroups: processes survive SIGKILL");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn mountinfo_escapes_and_own_paths() {
        assert_eq!(unescape(r"/sys/fs/cgroup/a\040b"), "/sys/fs/cgroup/a b");
        assert_eq!(unescape(r"/x\\y\04"), r"/x\\y\04");
        let mount = CgroupMount {
            root: "/docker/abc".into(),
            mount_point: "/sys/fs/cgroup/memory".into(),
            v2: false,
            options: vec!["rw".into(), "memory".into()],
        };
        // Our path below the mount's root, or as is when the mount shows the whole tree.
        assert_eq!(
            own_dir(&mount, "/docker/abc/worker"),
            Path::new("/sys/fs/cgroup/memory/worker")
        );
        let whole = CgroupMount {
            root: "/".into(),
            ..mount
        };
        assert_eq!(
            own_dir(&whole, "/process_api/644b"),
            Path::new("/sys/fs/cgroup/memory/process_api/644b")
        );
    }
}
