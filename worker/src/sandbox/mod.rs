//! The sandbox of the local executor: runs one untrusted program and reports how it ended.
//!
//! It owns every layer that confines the program: bubblewrap namespaces (no network, a fresh
//! `/proc`, only the folders the run was given, and as its system the `/usr` and `/etc` of its
//! language's runtime — never the host's, see `runtime`), a host uid of its own
//! per concurrent run, a cgroup per run for memory (and pids and cpu where the host has those
//! controllers), rlimits, a system-call filter, one tmpfs of the disk budget for everything
//! the program may write (`$CODE_PATH`, `$OUTPUT_DIR`, `/tmp`, `/dev/shm`), the wall-time
//! deadline, the log cap and `stop`.
//!
//! The rule it keeps: **nothing runs unconfined and nothing outlives its run.** [`Sandbox::new`]
//! refuses to build when the host cannot confine code; a program whose cgroup cannot be joined
//! exits before user code starts; every path out of [`Sandbox::run`] — normal exit, deadline,
//! stop, log cap, disk budget, the future being dropped — kills every process of the run and
//! removes its cgroup before the run's uid is handed to another run.

mod cgroup;
mod command;
mod disk;
mod log;
mod outputs;
mod preflight;
mod procs;
mod runfs;
mod runtime;
mod seccomp;
mod uids;
mod workdir;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use outputs::{CollectedOutputs, OutputError, OutputFile, SkipReason, SkippedOutput};
pub use preflight::PreflightError;
pub use runfs::remove_work_dir;
pub use runtime::{BUILD_HINT, Runtime, ensure_built, runtimes_dir};
pub use workdir::{create_run_dir, create_work_root};

use crate::stages::Stages;
use cgroup::{Cgroups, RunCgroup};
use command::{Identity, Launch};
use uids::UidPool;

/// The run environment's mount points, shared with every executor.
pub use crate::executor::environment::{CODE_PATH, DATA_DIR, INPUT_DIR, OUTPUT_DIR};
/// The log file the sandbox writes in the run's work dir.
pub const LOG_FILE: &str = "log.txt";
/// The folder of the run's work dir where its file system (a tmpfs when the worker is root)
/// holds `code/`, `output/`, `tmp/` and `shm/`.
const RUN_FS: &str = "fs";

/// The resources one run may use; the same numbers as a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cpu in thousandths of a core (1000 = one core).
    pub cpu_millis: u32,
    pub memory_mib: u32,
    /// Budget for everything the program may write: `$CODE_PATH` (the code included),
    /// `$OUTPUT_DIR`, `/tmp` and `/dev/shm` together. When the worker is root they are one
    /// tmpfs of this size, held in memory and charged to the run's memory cgroup, whose limit
    /// is then `memory_mib + disk_mib`.
    pub disk_mib: u32,
    /// Processes and threads.
    pub pids: u32,
    pub wall_seconds: u32,
}

impl From<&coderun_shared::config::Spec> for Limits {
    fn from(spec: &coderun_shared::config::Spec) -> Self {
        Limits {
            cpu_millis: spec.cpu_millis,
            memory_mib: spec.memory_mib,
            disk_mib: spec.disk_mib,
            pids: spec.pids,
            wall_seconds: spec.wall_seconds,
        }
    }
}

/// One program to run.
#[derive(Debug, Clone)]
pub struct SandboxRequest {
    pub run_id: Uuid,
    /// Which attempt of the run this is (1 unless its worker was lost): `$RUN_ATTEMPT`.
    pub attempt: u32,
    /// The run's language: its runtime provides `/usr` and `/etc` (see
    /// [`SandboxConfig::languages`]).
    pub language: String,
    /// Run as `sh -c <command>` in `$CODE_PATH`.
    pub command: String,
    /// The run's host folder, the worker's own (see [`create_run_dir`]). The caller has put
    /// the code in `work_dir/code`; the sandbox moves it into the run's file system
    /// (`work_dir/fs`, which also holds the outputs) and writes `work_dir/log.txt`. Only the
    /// folders of `work_dir/fs` belong to the run's uid while the program runs. Remove it with
    /// [`remove_work_dir`], which also detaches the run's tmpfs.
    pub work_dir: PathBuf,
    /// Dataset name → host folder, mounted read-only at `$DATA_DIR/{name}`. The folder must be
    /// readable by others (the program's uid is not the worker's).
    pub datasets: Vec<(String, PathBuf)>,
    /// A pipeline step's view of the earlier steps' outputs: a host folder (readable by
    /// others) mounted read-only at `$INPUT_DIR`, one sub-folder per step. `None` for a run of
    /// no pipeline.
    pub inputs: Option<PathBuf>,
    /// Extra variables of a pipeline step (`PARAM_<NAME>`), set after the promised ones.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// Cap of the combined stdout + stderr; beyond it the program is killed.
    pub log_max_bytes: u64,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// The program ended by itself with this exit code. A program killed by a signal inside
    /// the sandbox shows the shell convention 128 + signal (137 for SIGKILL), like Kubernetes.
    Exited(i32),
    /// The run's memory cgroup killed a process for lack of memory.
    OomKilled,
    /// Still running at `wall_seconds`: killed.
    DeadlineExceeded,
    /// Wrote more than `log_max_bytes`: killed, the log is cut.
    OutputLimitExceeded,
    /// The run's file system filled up (`disk_mib` bytes, or `max_files` files and folders):
    /// killed, or it ended with an error after a write was refused.
    DiskLimitExceeded,
    /// Killed because `stop` was cancelled.
    Killed,
    /// The sandbox's own first process died of this signal (not the program's doing).
    Signaled(i32),
}

/// The result of [`Sandbox::run`].
#[derive(Debug, Clone)]
pub struct SandboxOutcome {
    pub termination: Termination,
    /// Bytes of output kept in the log (at most `log_max_bytes`).
    pub log_bytes: u64,
    /// The log was cut at `log_max_bytes`.
    pub log_truncated: bool,
    /// From the start of the sandbox to the end of its last process.
    pub duration: Duration,
    /// The host uid the program ran as.
    pub uid: u32,
}

/// Errors of one run that are the host's or the request's fault, never the program's.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox request: {0}")]
    InvalidRequest(String),
    #[error("no free sandbox uid: all {0} slots are in use")]
    NoFreeUid(u32),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start the sandbox: {0}")]
    Spawn(#[source] std::io::Error),
    /// The sandbox's first process could not join the run's cgroup: the program never ran.
    #[error("the sandbox did not start: {0}")]
    Launch(String),
    /// The code alone is larger than the run's disk budget: the program never ran.
    #[error("the code does not fit in the run's disk budget of {0} MiB")]
    CodeTooLarge(u32),
    /// What the program had to wait for failed: it never ran.
    #[error("the program was not started: {0}")]
    NotReady(String),
}

impl SandboxError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let context = context.into();
        move |source| SandboxError::Io { context, source }
    }
}

/// How the sandbox is built; defaults fit a Debian host.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The bubblewrap binary; `None` looks in `/usr/bin`, `/bin`, `/usr/local/bin`.
    pub bwrap: Option<PathBuf>,
    /// When the worker is root, runs get the host uids `uid_base .. uid_base + uid_count`
    /// (one per concurrent run, gid = uid). No other user of the host may own them.
    pub uid_base: u32,
    /// Concurrent runs this sandbox supports (when root).
    pub uid_count: u32,
    /// Name of the folder under the worker's own cgroup that holds the runs' cgroups.
    pub cgroup_name: String,
    /// The folder holding the built language runtimes (see [`runtimes_dir`]).
    pub runtimes_dir: PathBuf,
    /// Language id → the runtime its programs run in (a recipe of `infra/runtimes/`). Each is
    /// loaded and tried at start-up; a run names its language in [`SandboxRequest::language`].
    pub languages: Vec<(String, String)>,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// How often the run's file system is looked at (to name a full one as the run's end).
    pub disk_poll_interval: Duration,
    /// Files and folders the run's file system holds at most (its tmpfs's inodes); past them
    /// the run ends [`Termination::DiskLimitExceeded`].
    pub max_files: u64,
    /// Lines longer than this are split.
    pub max_line_bytes: usize,
    /// `PATH` inside the sandbox.
    pub path_env: String,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            bwrap: None,
            uid_base: 200_000,
            uid_count: 64,
            cgroup_name: "coderun".into(),
            runtimes_dir: runtimes_dir(Path::new("")),
            languages: Vec::new(),
            open_files: 1024,
            disk_poll_interval: Duration::from_millis(250),
            max_files: 100_000,
            max_line_bytes: crate::lines::MAX_LINE_BYTES,
            path_env: "/usr/local/bin:/usr/bin:/bin".into(),
        }
    }
}

/// The sandbox, built once per worker; `run` may be called concurrently (up to `uid_count`
/// runs at once when root).
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    tools: command::Tools,
    /// Language id → the runtime its programs see as `/usr` and `/etc` (loaded once).
    runtimes: BTreeMap<String, Arc<Runtime>>,
    cgroups: Cgroups,
    /// `Some` when the worker is root: one host uid per concurrent run.
    uids: Option<UidPool>,
    /// The compiled system-call filters, written beside each run's `passwd`.
    filters: seccomp::Filters,
    /// Each run's writable folders are one tmpfs of its disk budget (the worker is root);
    /// otherwise folders on host disk, measured by walking them.
    mounts: bool,
    worker_uid: u32,
    worker_gid: u32,
}

/// Why the run was killed by the sandbox (first cause wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trip {
    Deadline,
    Stop,
    OutputLimit,
    Disk,
}

impl Sandbox {
    /// Checks that this host can confine code and builds the sandbox: bubblewrap, setpriv and
    /// prlimit present, user namespaces usable, a memory cgroup we may create children in, and
    /// a trial run of `true` through the whole chain. Kills leftovers of a previous worker
    /// (processes of our uids, cgroups under ours).
    pub fn new(config: SandboxConfig) -> Result<Self, PreflightError> {
        preflight::build(config)
    }

    /// Runs the program to its end. Every line of the combined stdout + stderr is sent to
    /// `log` (lines longer than `max_line_bytes` split; a closed receiver is ignored) and
    /// written to `work_dir/log.txt`, both cut at `log_max_bytes` with a final marker line.
    /// Cancelling `stop` kills the program promptly ([`Termination::Killed`]).
    ///
    /// When this returns no process of the run is left and its cgroup is gone; when its future
    /// is dropped mid-run, the same clean-up runs on the blocking pool right away (and the
    /// run's uid is only handed out again after it). The run's tmpfs stays mounted for the
    /// outputs until [`remove_work_dir`].
    pub async fn run(
        &self,
        request: SandboxRequest,
        log: mpsc::Sender<String>,
        stop: CancellationToken,
    ) -> Result<SandboxOutcome, SandboxError> {
        self.run_after(request, log, stop, async { Ok(()) }).await
    }

    /// [`run`](Self::run), the program started only once `ready` has completed — which runs
    /// while the run's folder, file system and files are prepared (the executor records the
    /// `running` phase meanwhile). When `ready` fails the program never starts.
    pub async fn run_after(
        &self,
        request: SandboxRequest,
        log: mpsc::Sender<String>,
        stop: CancellationToken,
        ready: impl Future<Output = anyhow::Result<()>>,
    ) -> Result<SandboxOutcome, SandboxError> {
        validate(&request)?;
        self.runtime_of(&request)?;
        let mut stages = Stages::new("sandbox stages", request.run_id);
        let lease = match &self.uids {
            Some(pool) => Some(
                pool.acquire()
                    .ok_or(SandboxError::NoFreeUid(pool.count()))?,
            ),
            None => None,
        };
        let identity = match &lease {
            Some(lease) => Identity::Drop {
                uid: lease.uid(),
                gid: lease.uid(),
            },
            None => Identity::Keep {
                uid: self.worker_uid,
                gid: self.worker_gid,
            },
        };
        if lease.is_some() {
            use std::os::unix::fs::PermissionsExt;
            // bwrap mounts them as the run's uid: they must be open to others.
            for (name, path) in &request.datasets {
                let mode = std::fs::metadata(path)
                    .map(|m| m.permissions().mode())
                    .unwrap_or(0);
                if mode & 0o005 != 0o005 {
                    return Err(SandboxError::InvalidRequest(format!(
                        "dataset {name:?}: {} is not readable by others (mode {mode:o})",
                        path.display()
                    )));
                }
            }
        }

        let layout = RunLayout::new(&request.work_dir);
        {
            let layout = layout.clone();
            let (uid, gid) = identity.ids();
            let run_id = request.run_id;
            let fs = self.fs_spec(&request.limits);
            let filters = self.filters.clone();
            let worker = (self.worker_uid, self.worker_gid);
            let preparing = layout.clone();
            let prepared = tokio::task::spawn_blocking(move || {
                preparing.prepare(uid, gid, run_id, worker, fs, &filters)
            });
            let (prepared, ready) = tokio::join!(prepared, ready);
            let prepared = prepared.map_err(|e| SandboxError::Io {
                context: "preparing the work dir".into(),
                source: std::io::Error::other(e),
            });
            prepared??;
            if let Err(e) = ready {
                // The folder is the run's uid's now: it goes back to the worker before the
                // uid is free again.
                let (layout, uid, gid) = (layout.clone(), self.worker_uid, self.worker_gid);
                let _ = tokio::task::spawn_blocking(move || layout.restore(uid, gid)).await;
                return Err(SandboxError::NotReady(format!("{e:#}")));
            }
        }
        stages.mark("files + ready");

        let cgroup = self
            .cgroups
            .create(
                &request.run_id.to_string(),
                &self.cgroup_limits(&request.limits),
            )
            .map_err(SandboxError::io(format!(
                "creating the cgroup of run {}",
                request.run_id
            )))?;
        // From here on the guard kills what is left, removes the cgroup and only then frees
        // the uid, on every path — including this future being dropped.
        let mut guard = RunGuard {
            run_id: request.run_id,
            cgroup: Some(cgroup),
            child_pid: None,
            lease,
        };
        stages.mark("cgroup");
        let result = self
            .run_in(
                &request,
                &layout,
                identity,
                &mut guard,
                &mut stages,
                log,
                stop,
            )
            .await;
        stages.done();
        drop(guard);
        if result.is_err() {
            // `run_in` gives the folder back to the worker on success; here it did not get
            // that far.
            let (layout, uid, gid) = (layout.clone(), self.worker_uid, self.worker_gid);
            let _ = tokio::task::spawn_blocking(move || layout.restore(uid, gid)).await;
        }
        let mut outcome = result?;
        outcome.uid = identity.ids().0;
        Ok(outcome)
    }

    async fn run_in(
        &self,
        request: &SandboxRequest,
        layout: &RunLayout,
        identity: Identity,
        guard: &mut RunGuard,
        stages: &mut Stages,
        log: mpsc::Sender<String>,
        stop: CancellationToken,
    ) -> Result<SandboxOutcome, SandboxError> {
        let limits = request.limits;
        let cgroup_procs = guard
            .cgroup
            .as_ref()
            .expect("the guard holds the cgroup until the end")
            .procs_files();

        let runtime = self.runtime_of(request)?;
        let launch = Launch {
            tools: &self.tools,
            runtime,
            config: &self.config,
            identity,
            cgroup_procs,
            limits,
            run_id: request.run_id,
            attempt: request.attempt,
            code_dir: layout.code(),
            output_dir: layout.output(),
            scratch: self.mounts.then(|| (layout.tmp(), layout.shm())),
            etc_dir: layout.etc(),
            seccomp: layout.seccomp(),
            datasets: &request.datasets,
            inputs: request.inputs.as_deref(),
            env: &request.env,
            command: &request.command,
        };
        let (reader, writer) =
            std::io::pipe().map_err(SandboxError::io("creating the log pipe"))?;
        let writer_err = writer
            .try_clone()
            .map_err(SandboxError::io("creating the log pipe"))?;
        let mut cmd = launch.command();
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(writer))
            .stderr(std::process::Stdio::from(writer_err));

        // The log file is ours (root), opened without following a planted link.
        let log_file = log::open_log_file(&layout.log()).await?;
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())
            .map_err(SandboxError::io("reading the log pipe"))?;

        let started = Instant::now();
        let mut child = cmd.spawn().map_err(SandboxError::Spawn)?;
        // The pipe's write ends now live only in the child: EOF comes when its last process
        // dies.
        drop(cmd);
        guard.child_pid = child.id();
        stages.mark("spawn");

        let (trip_tx, mut trips) = mpsc::channel::<Trip>(4);
        let pump = tokio::spawn(log::pump(
            reader,
            log,
            log_file,
            log::Cap {
                max_bytes: request.log_max_bytes,
                max_line: self.config.max_line_bytes,
            },
            trip_tx.clone(),
        ));
        let measured = if self.mounts {
            disk::Measured::Fs(layout.fs())
        } else {
            disk::Measured::Walk(vec![layout.code(), layout.output()])
        };
        let watcher = tokio::spawn(disk::watch(
            measured,
            u64::from(limits.disk_mib) * 1024 * 1024,
            self.config.max_files,
            self.config.disk_poll_interval,
            trip_tx,
        ));
        let _abort_watcher = AbortOnDrop(watcher);

        let deadline = tokio::time::sleep(Duration::from_secs(u64::from(limits.wall_seconds)));
        tokio::pin!(deadline);
        let mut tripped: Option<Trip> = None;
        let mut tripped_at: Option<Instant> = None;
        let status = loop {
            tokio::select! {
                biased;
                status = child.wait() => break status,
                _ = &mut deadline, if tripped.is_none() => tripped = Some(Trip::Deadline),
                _ = stop.cancelled(), if tripped.is_none() => tripped = Some(Trip::Stop),
                Some(trip) = trips.recv(), if tripped.is_none() => tripped = Some(trip),
                // Killed but not gone yet: keep sweeping.
                _ = tokio::time::sleep(Duration::from_millis(200)), if tripped.is_some() => {}
            }
            // Something tripped: kill the whole run (again every 200 ms until it is gone).
            guard.kill_all(tripped_at.get_or_insert_with(Instant::now).elapsed());
        };
        let duration = started.elapsed();
        stages.mark("program");
        guard.child_pid = None;
        let status = status.map_err(SandboxError::io("waiting for the sandbox"))?;

        // Whatever the program left (it should be nothing: the pid namespace died with its
        // first process) goes now; the cgroup's OOM counter is read before it is removed.
        // Then the folder goes back to the worker: no file of the run's uid is left when the
        // uid goes to the next run.
        let cgroup = guard
            .cgroup
            .take()
            .expect("the guard holds the cgroup until the end");
        let (restore_layout, uid, gid) = (layout.clone(), self.worker_uid, self.worker_gid);
        let mounts = self.mounts;
        let (oom_kills, joined, full, restored) = tokio::task::spawn_blocking(move || {
            let seen = (cgroup.oom_kills(), cgroup.ever_used());
            cgroup.destroy();
            let full = mounts && runfs::usage(&restore_layout.fs()).is_ok_and(|u| u.full);
            (seen.0, seen.1, full, restore_layout.restore(uid, gid))
        })
        .await
        .map_err(|e| SandboxError::Io {
            context: "removing the run's cgroup".into(),
            source: std::io::Error::other(e),
        })?;
        restored.map_err(SandboxError::io("giving the work dir back to the worker"))?;
        stages.mark("cgroup removed + files restored");
        if status.code() == Some(command::JOIN_FAILED) && !joined {
            return Err(SandboxError::Launch(format!(
                "the first process could not join the cgroup of run {}",
                request.run_id
            )));
        }

        // All writers are dead, so the pump reaches EOF at once; a bound guards against a
        // write end that leaked anyway.
        let mut pump = pump;
        let log_summary = match tokio::time::timeout(Duration::from_secs(5), &mut pump).await {
            Ok(Ok(summary)) => summary?,
            Ok(Err(join)) => {
                return Err(SandboxError::Io {
                    context: "log pump".into(),
                    source: std::io::Error::other(join),
                });
            }
            Err(_) => {
                pump.abort();
                tracing::warn!(run_id = %request.run_id, "log pipe still open after the run ended");
                log::Summary {
                    bytes: 0,
                    truncated: false,
                }
            }
        };
        stages.mark("log drained");
        // A tripped cap may still be in the channel if the program ended on its own at the
        // same moment; the log says it was cut, so the reason says so too.
        if tripped.is_none() && log_summary.truncated {
            tripped = Some(Trip::OutputLimit);
        }

        let termination = match tripped {
            Some(Trip::Deadline) => Termination::DeadlineExceeded,
            Some(Trip::Stop) => Termination::Killed,
            Some(Trip::OutputLimit) => Termination::OutputLimitExceeded,
            Some(Trip::Disk) => Termination::DiskLimitExceeded,
            None => {
                use std::os::unix::process::ExitStatusExt;
                let exited = match (status.code(), status.signal()) {
                    (Some(code), _) => Termination::Exited(code),
                    (None, Some(signal)) => Termination::Signaled(signal),
                    (None, None) => Termination::Exited(-1),
                };
                if oom_kills > 0 && exited != Termination::Exited(0) {
                    Termination::OomKilled
                } else if full && exited != Termination::Exited(0) {
                    // It failed after the kernel refused a write for lack of room.
                    Termination::DiskLimitExceeded
                } else {
                    exited
                }
            }
        };
        Ok(SandboxOutcome {
            termination,
            log_bytes: log_summary.bytes,
            log_truncated: log_summary.truncated,
            duration,
            uid: 0,
        })
    }

    /// The regular files the program left under `work_dir/output`, by relative path. Never
    /// follows a symlink, skips files with more than one hard link and anything that is not a
    /// regular file or a folder; stops at `max_files` files / `max_bytes` bytes in total (the
    /// rest is listed as skipped), and skips paths that break the rules of task files
    /// (`FilePath`, as the Kubernetes executor does). Call it after [`Sandbox::run`] returned.
    pub fn collect_outputs(
        &self,
        work_dir: &Path,
        max_files: usize,
        max_bytes: u64,
        paths: &coderun_shared::config::LimitSettings,
    ) -> Result<CollectedOutputs, OutputError> {
        outputs::collect(
            &RunLayout::new(work_dir).output(),
            max_files,
            max_bytes,
            paths,
        )
    }

    /// Kills what is left of a run's sandbox on this host, whichever worker started it: every
    /// process in the run's cgroups. A worker killed with SIGKILL cleans up nothing, and its
    /// sandbox's parent-death signal has been seen not to arrive every time; the reconciler
    /// calls this when it ends such a run. Returns how many processes it killed.
    pub fn kill_orphans(&self, run_id: Uuid) -> usize {
        self.cgroups.kill_everywhere(&run_id.to_string())
    }

    /// Whether the cgroup is v1 or v2 (for logs and health pages).
    pub fn cgroup_description(&self) -> String {
        self.cgroups.describe()
    }

    fn runtime_of(&self, request: &SandboxRequest) -> Result<&Runtime, SandboxError> {
        self.runtime(&request.language).ok_or_else(|| {
            SandboxError::InvalidRequest(format!(
                "no runtime for language {:?} on this worker",
                request.language
            ))
        })
    }

    /// The runtime programs of `language` run in, if this sandbox has one.
    pub fn runtime(&self, language: &str) -> Option<&Runtime> {
        self.runtimes.get(language).map(|r| r.as_ref())
    }

    /// The limits of a run's cgroup. With a tmpfs, whose pages the kernel charges to the run's
    /// memory cgroup, the memory limit is the spec's memory plus its disk: the program's files
    /// then fill their tmpfs (`ENOSPC`) before they can push the cgroup into an OOM kill, and
    /// the host's memory still pays for no more than the run's spec.
    fn cgroup_limits(&self, limits: &Limits) -> Limits {
        let mut limits = *limits;
        if self.mounts {
            limits.memory_mib = limits.memory_mib.saturating_add(limits.disk_mib);
        }
        limits
    }

    /// Size and inodes of a run's tmpfs, when runs get one.
    fn fs_spec(&self, limits: &Limits) -> Option<(u64, u64)> {
        // A few inodes more for the four folders themselves.
        self.mounts.then(|| {
            (
                u64::from(limits.disk_mib) * 1024 * 1024,
                self.config.max_files + 8,
            )
        })
    }
}

fn validate(request: &SandboxRequest) -> Result<(), SandboxError> {
    let invalid = |m: String| Err(SandboxError::InvalidRequest(m));
    let l = &request.limits;
    if l.cpu_millis == 0
        || l.memory_mib == 0
        || l.disk_mib == 0
        || l.pids == 0
        || l.wall_seconds == 0
    {
        return invalid(format!("every limit must be positive: {l:?}"));
    }
    if !request.work_dir.is_absolute() {
        return invalid(format!(
            "work_dir must be absolute: {}",
            request.work_dir.display()
        ));
    }
    if request.command.contains('\0') {
        return invalid("the command contains a NUL byte".into());
    }
    if let Some(inputs) = &request.inputs
        && (!inputs.is_absolute() || !inputs.is_dir())
    {
        return invalid(format!("inputs: {} is not a folder", inputs.display()));
    }
    if let Some((name, _)) = request.env.iter().find(|(name, value)| {
        !name.starts_with("PARAM_") || name.contains(['=', '\0']) || value.contains('\0')
    }) {
        return invalid(format!("variable {name:?} is not a step parameter"));
    }
    for (name, path) in &request.datasets {
        let simple = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !simple {
            return invalid(format!("dataset name {name:?} is not a simple name"));
        }
        if !path.is_absolute() || !path.is_dir() {
            return invalid(format!(
                "dataset {name:?}: {} is not a folder",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The run's folders on the host.
#[derive(Debug, Clone)]
struct RunLayout {
    root: PathBuf,
}

impl RunLayout {
    fn new(work_dir: &Path) -> Self {
        RunLayout {
            root: work_dir.to_path_buf(),
        }
    }
    /// Where the caller leaves the code; moved into [`RunLayout::code`] before the run.
    fn staged_code(&self) -> PathBuf {
        self.root.join("code")
    }
    /// The run's file system: everything the program may write.
    fn fs(&self) -> PathBuf {
        self.root.join(RUN_FS)
    }
    fn code(&self) -> PathBuf {
        self.fs().join("code")
    }
    fn output(&self) -> PathBuf {
        self.fs().join("output")
    }
    fn tmp(&self) -> PathBuf {
        self.fs().join("tmp")
    }
    fn shm(&self) -> PathBuf {
        self.fs().join("shm")
    }
    fn log(&self) -> PathBuf {
        self.root.join(LOG_FILE)
    }
    /// Generated `passwd`, `group`, `hosts` and the system-call filters (owned by the
    /// worker, read-only to the run).
    fn etc(&self) -> PathBuf {
        self.root.join(".sandbox-etc")
    }
    fn seccomp(&self) -> [PathBuf; 2] {
        [
            self.etc().join("seccomp-deny.bpf"),
            self.etc().join("seccomp-clone3.bpf"),
        ]
    }

    /// Makes the run's file system (a tmpfs of `fs = (bytes, inodes)` when given), moves the
    /// staged code into it, writes the generated files and hands the program's folders to the
    /// run's uid. `worker` is the worker's own (uid, gid), which must own the work dir.
    fn prepare(
        &self,
        uid: u32,
        gid: u32,
        run_id: Uuid,
        worker: (u32, u32),
        fs: Option<(u64, u64)>,
        filters: &seccomp::Filters,
    ) -> Result<(), SandboxError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |what: &str, p: &Path| SandboxError::io(format!("{what} {}", p.display()));
        if !self.root.exists() {
            std::fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
        }
        workdir::check_private_dir(&self.root).map_err(io("checking", &self.root))?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o711))
            .map_err(io("chmod", &self.root))?;

        // A file system left by an earlier attempt of this run goes first.
        let fs_dir = self.fs();
        runfs::unmount(&fs_dir).map_err(io("unmounting", &fs_dir))?;
        if std::fs::symlink_metadata(&fs_dir).is_ok() {
            std::fs::remove_dir_all(&fs_dir).map_err(io("removing", &fs_dir))?;
        }
        std::fs::create_dir(&fs_dir).map_err(io("creating", &fs_dir))?;
        std::fs::set_permissions(&fs_dir, std::fs::Permissions::from_mode(0o711))
            .map_err(io("chmod", &fs_dir))?;
        if let Some((bytes, inodes)) = fs {
            runfs::mount(&fs_dir, bytes, inodes, worker).map_err(io("mounting", &fs_dir))?;
        }
        let staged = self.staged_code();
        let staged_exists = std::fs::symlink_metadata(&staged).is_ok_and(|m| m.is_dir());
        if staged_exists && fs.is_none() {
            // Same file system: a rename moves it for free.
            std::fs::rename(&staged, self.code()).map_err(io("moving", &staged))?;
        } else {
            std::fs::create_dir(self.code()).map_err(io("creating", &self.code()))?;
            if staged_exists {
                let too_large = || {
                    let mib = fs.map_or(0, |(bytes, _)| bytes / (1024 * 1024));
                    SandboxError::CodeTooLarge(mib as u32)
                };
                match runfs::copy_tree(&staged, &self.code()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => {
                        return Err(too_large());
                    }
                    Err(e) => return Err(io("copying the code into", &self.code())(e)),
                }
                std::fs::remove_dir_all(&staged).map_err(io("removing", &staged))?;
            }
        }
        for dir in [self.output(), self.tmp(), self.shm()] {
            std::fs::create_dir(&dir).map_err(io("creating", &dir))?;
        }

        let etc = self.etc();
        if std::fs::symlink_metadata(&etc).is_ok() {
            std::fs::remove_dir_all(&etc).map_err(io("removing", &etc))?;
        }
        std::fs::create_dir(&etc).map_err(io("creating", &etc))?;
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &etc))?;
        let files = [
            (
                "passwd",
                format!(
                    "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n\
                     runner:x:{uid}:{gid}:coderun run {run_id}:/tmp:/bin/sh\n\
                     nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
                )
                .into_bytes(),
                0o644,
            ),
            (
                "group",
                format!("root:x:0:\nrunner:x:{gid}:\nnogroup:x:65534:\n").into_bytes(),
                0o644,
            ),
            (
                "hosts",
                b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_vec(),
                0o644,
            ),
        ];
        let [deny, clone3] = self.seccomp();
        let filters = [
            (deny, filters.deny.clone()),
            (clone3, filters.clone3.clone()),
        ];
        let all = files
            .into_iter()
            .map(|(name, content, mode)| (etc.join(name), content, mode))
            .chain(
                filters
                    .into_iter()
                    .map(|(path, bytes)| (path, bytes, 0o600)),
            );
        for (path, content, mode) in all {
            std::fs::write(&path, content).map_err(io("writing", &path))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(io("chmod", &path))?;
        }
        let _ = std::fs::remove_file(self.log());
        for dir in [self.code(), self.output(), self.tmp(), self.shm()] {
            chown_tree(&dir, uid, gid).map_err(io("chown", &dir))?;
        }
        for dir in [self.code(), self.output()] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io("chmod", &dir))?;
        }
        for dir in [self.tmp(), self.shm()] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))
                .map_err(io("chmod", &dir))?;
        }
        Ok(())
    }

    /// After the run: the program's folders back to the worker, so no file of the run's uid
    /// remains. Entries the worker cannot reach by path (deeper than `PATH_MAX`) are left as
    /// they are: they go with the work dir (and its tmpfs) when the run's record is done.
    fn restore(&self, uid: u32, gid: u32) -> std::io::Result<()> {
        for dir in [self.code(), self.output(), self.tmp(), self.shm()] {
            match chown_tree(&dir, uid, gid) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENAMETOOLONG) => {
                    tracing::warn!(dir = %dir.display(), "part of the run's folder is too deep to give back");
                }
                Err(e) => return Err(e),
            }
        }
        let _ = std::fs::remove_dir_all(self.etc());
        Ok(())
    }
}

/// `lchown` of a tree, never following a symlink.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::lchown;
    lchown(root, Some(uid), Some(gid))?;
    let mut stack = vec![root.to_path_buf()];
    let mut too_deep = None;
    while let Some(dir) = stack.pop() {
        let meta = std::fs::symlink_metadata(&dir)?;
        if !meta.is_dir() {
            continue;
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENAMETOOLONG) => {
                too_deep = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            match lchown(&path, Some(uid), Some(gid)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENAMETOOLONG) => {
                    too_deep = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
            if entry.file_type()?.is_dir() {
                stack.push(path);
            }
        }
    }
    too_deep.map_or(Ok(()), Err)
}

/// Kills and removes what a run started, however `run` is left.
struct RunGuard {
    run_id: Uuid,
    cgroup: Option<RunCgroup>,
    child_pid: Option<u32>,
    /// Freed by `drop` below once everything is dead.
    lease: Option<uids::UidLease>,
}

impl RunGuard {
    /// SIGKILLs every process in the run's cgroup but our own child, the outer bwrap: the
    /// program's PID 1 is among them, its death takes the whole pid namespace down, and the
    /// outer bwrap reaps it and exits by itself — so no process of the run is ever orphaned to
    /// the host's init. Only if the outer bwrap is still there after a while is it killed too.
    fn kill_all(&self, since_first_try: Duration) {
        let child = self.child_pid.and_then(|p| i32::try_from(p).ok());
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_once(child);
        }
        if let Some(pid) = child
            && since_first_try >= Duration::from_secs(2)
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// What a [`RunGuard`] still has to clean up: kill and reap, remove the cgroup, prove the uid
/// empty, free it. All of it blocks (sleeps between sweeps, scans `/proc`).
struct Leftovers {
    run_id: Uuid,
    cgroup: Option<RunCgroup>,
    child_pid: Option<i32>,
    lease: Option<uids::UidLease>,
}

impl Leftovers {
    fn clean(mut self) {
        #[cfg(test)]
        tests::record_cleanup_thread(self.run_id);
        if let Some(pid) = self.child_pid.take() {
            use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
            // As in `kill_all`: the namespace first, then reap the outer bwrap ourselves (the
            // dropped tokio `Child` no longer waits for it); whoever reaps first wins, the
            // other sees ECHILD.
            let start = std::time::Instant::now();
            loop {
                if let Some(cgroup) = &self.cgroup {
                    cgroup.kill_once(Some(pid));
                }
                if start.elapsed() >= Duration::from_secs(2) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) if start.elapsed() < Duration::from_secs(5) => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    _ => break,
                }
            }
        }
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.destroy();
        }
        if let Some(lease) = self.lease.take() {
            // Every process of the run was in its cgroup, which is empty now; making sure
            // that no process of the uid exists costs a scan of /proc, done before the uid
            // can go to another run.
            procs::kill_uid(lease.uid());
            drop(lease);
        }
        tracing::debug!(run_id = %self.run_id, "the run's sandbox is cleaned up");
    }
}

impl Drop for RunGuard {
    /// Never blocks the thread it runs on when that is a runtime's: the clean-up goes to the
    /// blocking pool (it sleeps and scans `/proc`). The uid stays taken until it is done.
    fn drop(&mut self) {
        let leftovers = Leftovers {
            run_id: self.run_id,
            cgroup: self.cgroup.take(),
            child_pid: self.child_pid.take().and_then(|p| i32::try_from(p).ok()),
            lease: self.lease.take(),
        };
        if leftovers.cgroup.is_none() && leftovers.child_pid.is_none() && leftovers.lease.is_none()
        {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || leftovers.clean())),
            Err(_) => leftovers.clean(),
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
