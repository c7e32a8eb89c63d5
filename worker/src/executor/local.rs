//! `LocalExecutor`: runs each run in the local sandbox on this machine — the embedded default.
//!
//! Like a Job's init container, it fetches the code bundle through a presigned URL (the
//! sandbox never sees a credential), checks its sha256, unpacks it, fetches the run's datasets,
//! then runs the program and reports phases, the live log, `log.txt`, the outputs and the
//! ending to the supervisor. One execution per run: a run it already has is not launched
//! twice, and the run's lease (held by this worker) keeps other workers off it.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use coderun_shared::bundle;
use coderun_shared::config::{ExecutorKind, LimitSettings, RunLimits, Settings};
use coderun_shared::runs::{Run, RunStatus};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ending::{Ending, Termination};
use crate::executor::datasets::DatasetCache;
use crate::executor::environment;
use crate::executor::{Durability, Executor, LaunchError, Prepared, Start, Traits};
use crate::sandbox::{
    self, Limits, Sandbox, SandboxConfig, SandboxRequest, create_run_dir, remove_work_dir,
};
use crate::stages::Stages;
use crate::supervisor::Supervisor;

/// Local programs die with their worker and wait for their start.
const TRAITS: Traits = Traits {
    kind: ExecutorKind::Local,
    durability: Durability::DiesWithWorker,
    start: Start::OnStart,
};

/// Lines sent to the live log in one round trip at most.
const LOG_BATCH: usize = 256;
/// How long the log pump waits to fill a batch.
const LOG_FLUSH: Duration = Duration::from_millis(50);
/// Bytes of recent code bundles a worker keeps, and the largest bundle it keeps.
const BUNDLE_CACHE_BYTES: usize = 8 * 1024 * 1024;
const BUNDLE_CACHE_ENTRY_BYTES: usize = 256 * 1024;

struct Execution {
    stop: CancellationToken,
    /// The program has ended; only recording and clean-up remain. A finished execution holds
    /// no capacity (it is not `live`) but is still this worker's (`has`), so the reconciler
    /// leaves its run to the supervisor.
    finished: bool,
}

struct Inner {
    sandbox: Arc<Sandbox>,
    /// Executions this worker runs at once at most (one sandbox uid each).
    slots: usize,
    supervisor: Supervisor,
    http: reqwest::Client,
    work_root: PathBuf,
    runs: RunLimits,
    paths: LimitSettings,
    executions: Mutex<HashMap<Uuid, Execution>>,
    /// Dataset versions, fetched once per worker and mounted read-only into every run.
    datasets: DatasetCache,
    /// Recent code bundles by sha256: a class submitting the same starter code, or a retry,
    /// is not fetched again.
    bundles: BundleCache,
}

#[derive(Clone)]
pub struct LocalExecutor {
    inner: Arc<Inner>,
}

/// A local execution waiting for its go: its task holds the run's slot but runs nothing yet.
struct Waiting {
    /// `None` when the run was prepared before (the first preparation decides).
    go: Option<oneshot::Sender<bool>>,
}

#[async_trait]
impl Prepared for Waiting {
    async fn start(self: Box<Self>) {
        if let Some(go) = self.go {
            let _ = go.send(true);
        }
    }

    async fn discard(self: Box<Self>) {
        if let Some(go) = self.go {
            let _ = go.send(false);
        }
    }
}

impl LocalExecutor {
    /// Builds the sandbox and the work folder: fails loudly when the sandbox cannot be built on
    /// this host, rather than running code unconfined.
    pub async fn build(settings: &Settings, supervisor: Supervisor) -> anyhow::Result<Self> {
        let worker = &settings.worker;
        let config = SandboxConfig {
            uid_base: uid_base(worker.sandbox_uid_base, worker.local_slots, supervisor.me()),
            uid_count: worker.local_slots,
            cgroup_name: format!("coderun-{}", sanitize(supervisor.me())),
            runtimes_dir: sandbox::runtimes_dir(&worker.runtimes_dir),
            languages: settings
                .languages
                .iter()
                .map(|(id, language)| (id.clone(), language.runtime.clone()))
                .collect(),
            ..SandboxConfig::default()
        };
        let sandbox = tokio::task::spawn_blocking(move || Sandbox::new(config))
            .await?
            .map_err(|e| anyhow::anyhow!("the local sandbox cannot be built on this host: {e}"))?;
        let work_root = worker.work_dir.clone();
        tokio::task::spawn_blocking(move || sandbox::create_work_root(&work_root))
            .await?
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot create worker.work_dir {}: {e}",
                    worker.work_dir.display()
                )
            })?;
        let cache = match settings.datasets.cache_dir.as_os_str().is_empty() {
            true => worker.work_dir.join(".datasets"),
            false => settings.datasets.cache_dir.clone(),
        };
        Ok(Self::new(
            Arc::new(sandbox),
            worker.local_slots as usize,
            supervisor,
            worker.work_dir.clone(),
            settings.runs.clone(),
            settings.limits.clone(),
            cache,
        ))
    }

    pub fn new(
        sandbox: Arc<Sandbox>,
        slots: usize,
        supervisor: Supervisor,
        work_root: PathBuf,
        runs: RunLimits,
        paths: LimitSettings,
        dataset_cache: PathBuf,
    ) -> Self {
        // A stalled transfer fails (and is retried) rather than hanging the run.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client with timeouts");
        Self {
            inner: Arc::new(Inner {
                sandbox,
                slots,
                supervisor,
                datasets: DatasetCache::new(dataset_cache, http.clone()),
                http,
                work_root,
                runs,
                paths,
                executions: Mutex::new(HashMap::new()),
                bundles: BundleCache::new(BUNDLE_CACHE_BYTES, BUNDLE_CACHE_ENTRY_BYTES),
            }),
        }
    }
}

/// Each worker on a host takes its own block of `slots` sandbox uids, chosen by its name, so
/// two workers on one machine (almost surely) never hand the same uid to two runs.
fn uid_base(base: u32, slots: u32, name: &str) -> u32 {
    let hash = name.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    base + (hash % 1024) * slots
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[async_trait]
impl Executor for LocalExecutor {
    fn traits(&self) -> Traits {
        TRAITS
    }

    async fn prepare(&self, run: &Run) -> Result<Box<dyn Prepared>, LaunchError> {
        let mut executions = self.inner.executions.lock().expect("executions lock");
        if executions.contains_key(&run.id) {
            return Ok(Box::new(Waiting { go: None }));
        }
        if executions.len() >= self.inner.slots {
            return Err(LaunchError::Retryable(format!(
                "all {} local sandbox slots of this worker are busy",
                self.inner.slots
            )));
        }
        let (go, wait) = oneshot::channel();
        let stop = CancellationToken::new();
        executions.insert(
            run.id,
            Execution {
                stop: stop.clone(),
                finished: false,
            },
        );
        drop(executions);
        let inner = self.inner.clone();
        let run = run.clone();
        tokio::spawn(async move { inner.execute(run, wait, stop).await });
        Ok(Box::new(Waiting { go: Some(go) }))
    }

    async fn stop(&self, run_id: Uuid) {
        let executions = self.inner.executions.lock().expect("executions lock");
        if let Some(execution) = executions.get(&run_id) {
            execution.stop.cancel();
        }
    }

    fn live(&self) -> Vec<Uuid> {
        let executions = self.inner.executions.lock().expect("executions lock");
        executions
            .iter()
            .filter(|(_, e)| !e.finished)
            .map(|(id, _)| *id)
            .collect()
    }

    fn has(&self, run_id: Uuid) -> bool {
        self.inner
            .executions
            .lock()
            .expect("executions lock")
            .contains_key(&run_id)
    }

    async fn reap(&self, run_id: Uuid) {
        let sandbox = self.inner.sandbox.clone();
        match tokio::task::spawn_blocking(move || sandbox.kill_orphans(run_id)).await {
            Ok(0) => {}
            Ok(killed) => {
                tracing::warn!(%run_id, killed, "killed the processes a dead worker left behind")
            }
            Err(e) => tracing::warn!(%run_id, error = %e, "cannot reap a lost run's processes"),
        }
        // Its folder (and the tmpfs holding the run's files, which holds memory) goes too,
        // unless this worker is executing it.
        if !self.has(run_id) {
            remove_run_dir(self.inner.work_root.join(run_id.to_string()), run_id).await;
        }
    }

    async fn drain(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let busy = || {
            !self
                .inner
                .executions
                .lock()
                .expect("executions lock")
                .is_empty()
        };
        while busy() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Removes a run's work folder (and unmounts its file system), logging what goes wrong.
async fn remove_run_dir(dir: PathBuf, run: Uuid) {
    let removed = tokio::task::spawn_blocking(move || remove_work_dir(&dir))
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r.map_err(anyhow::Error::from));
    if let Err(e) = removed {
        tracing::warn!(%run, error = %e, "cannot remove the run's work dir");
    }
}

impl Inner {
    async fn execute(
        self: Arc<Self>,
        run: Run,
        go: oneshot::Receiver<bool>,
        stop: CancellationToken,
    ) {
        if go.await.unwrap_or(false) {
            let work_dir = self.work_root.join(run.id.to_string());
            let (root, run_id) = (self.work_root.clone(), run.id);
            let created = tokio::task::spawn_blocking(move || create_run_dir(&root, run_id))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r.map_err(anyhow::Error::from));
            let ending = match created {
                Ok(_) => self.run_to_end(&run, &work_dir, &stop).await,
                Err(e) => Err(e.context("creating the run's work dir")),
            };
            let ending = ending.unwrap_or_else(|e| {
                tracing::error!(run = %run.id, error = ?e, "the run could not be executed");
                Ending::from(Termination::LaunchFailed(format!("{e:#}")))
            });
            if let Some(execution) = self
                .executions
                .lock()
                .expect("executions lock")
                .get_mut(&run.id)
            {
                execution.finished = true;
            }
            if let Err(e) = self.supervisor.finish(run.id, ending).await {
                // The reconciler will find the run without an execution and end it.
                tracing::error!(run = %run.id, error = ?e, "cannot record the end of the run");
            }
            remove_run_dir(work_dir, run.id).await;
        }
        self.executions
            .lock()
            .expect("executions lock")
            .remove(&run.id);
    }

    async fn run_to_end(
        &self,
        run: &Run,
        work_dir: &Path,
        stop: &CancellationToken,
    ) -> anyhow::Result<Ending> {
        let mut stages = Stages::new("local run stages", run.id);
        // An earlier attempt of this run, lost with its worker, may have left its folder.
        match tokio::fs::remove_dir_all(work_dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let code_dir = work_dir.join("code");
        tokio::fs::create_dir_all(&code_dir).await?;
        // Code this worker holds (a class's starter code, a retry) is unpacked in well under
        // a commit's time: a run with nothing else to fetch (no datasets, no pipeline inputs)
        // then records `pending` together with `running`, in one commit, while the sandbox is
        // set up. Otherwise `pending` is written while the code is fetched (the phase says
        // what happens, and its round trip costs the run nothing); `running` waits for it, so
        // the events keep their order.
        let cached = self.bundles.get(&run.code_sha256);
        let at_hand = cached.is_some() && run.datasets.is_empty() && run.pipeline_run_id.is_none();
        if at_hand {
            self.fetch_code(run, &code_dir, cached).await?;
        } else {
            let pending = self
                .supervisor
                .phase(run.id, RunStatus::Pending, "fetching the code");
            let code = self.fetch_code(run, &code_dir, cached);
            let (pending, code) = tokio::join!(pending, code);
            pending?;
            code?;
        }
        stages.mark("pending + code");
        let datasets = if run.datasets.is_empty() {
            Vec::new()
        } else {
            let resilience = self.supervisor.resilience();
            resilience
                .retry("fetch the datasets", || self.fetch_datasets(run, work_dir))
                .await?
        };
        let step = self.supervisor.step_environment(run).await?;
        let inputs = match &step {
            Some(step) => {
                let resilience = self.supervisor.resilience();
                Some(
                    resilience
                        .retry("fetch the inputs", || self.fetch_inputs(step, work_dir))
                        .await?,
                )
            }
            None => None,
        };
        if stop.is_cancelled() {
            return Ok(Termination::StoppedBeforeStart.into());
        }

        let (lines, receiver) = mpsc::channel(4 * LOG_BATCH);
        let pump = tokio::spawn(pump_log(self.supervisor.clone(), run.id, receiver));
        let request = SandboxRequest {
            run_id: run.id,
            attempt: u32::try_from(run.attempt).unwrap_or(1),
            language: run.language.clone(),
            command: run.command.clone(),
            work_dir: work_dir.to_owned(),
            datasets,
            inputs,
            env: step
                .as_ref()
                .map(|s| environment::param_vars(&s.params))
                .unwrap_or_default(),
            limits: Limits::from(&run.spec.limits),
            log_max_bytes: self.runs.log_max_bytes,
        };
        // `running` is written while the sandbox is set up (its file system, cgroup, files);
        // the program starts only once it is recorded.
        let running = async {
            if at_hand {
                self.supervisor
                    .pending_and_running(run.id, "the code was at hand", "program started")
                    .await
            } else {
                self.supervisor
                    .phase(run.id, RunStatus::Running, "program started")
                    .await
            }
            .map(|_| ())
        };
        let outcome = self
            .sandbox
            .run_after(request, lines, stop.clone(), running)
            .await;
        let _ = pump.await;
        let outcome = outcome?;
        stages.mark("running + sandbox");

        // The log and the outputs are stored at once.
        let log_file = work_dir.join("log.txt");
        let log = self.supervisor.store_log(run.id, &log_file);
        let outputs = async {
            let sandbox = self.sandbox.clone();
            let (dir, files, bytes, paths) = (
                work_dir.to_owned(),
                self.runs.output_max_files as usize,
                self.runs.output_max_bytes,
                self.paths.clone(),
            );
            let collected = tokio::task::spawn_blocking(move || {
                sandbox.collect_outputs(&dir, files, bytes, &paths)
            })
            .await??;
            let files: Vec<(String, PathBuf, u64)> = collected
                .files
                .iter()
                .map(|f| (f.path.clone(), f.host_path.clone(), f.size))
                .collect();
            self.supervisor.store_outputs(run.id, &files).await
        };
        let (log, outputs) = tokio::join!(log, outputs);
        log?;
        outputs?;
        stages.mark("log + outputs");
        stages.done();

        Ok(Ending::from(termination(&outcome.termination))
            .with_log(outcome.log_bytes, outcome.log_truncated))
    }

    /// Puts the run's code, checked against its sha256, in `code_dir`: from `cached` (this
    /// worker's cache of recent bundles held it), else fetched through a presigned URL. An
    /// outage of object storage is waited out here, the run pending; only a bundle that is
    /// missing or does not match its checksum fails the run.
    async fn fetch_code(
        &self,
        run: &Run,
        code_dir: &Path,
        cached: Option<Bytes>,
    ) -> anyhow::Result<()> {
        let (sha, max) = (run.code_sha256.clone(), self.paths.max_task_bytes);
        if let Some(bytes) = cached {
            let into = code_dir.to_owned();
            tokio::task::spawn_blocking(move || bundle::extract(&bytes, &sha, &into, max))
                .await??;
            return Ok(());
        }
        // A bundle too large for the cache goes to a file beside the code folder as it arrives
        // (a task may hold a gigabyte; the worker's memory must not), and is unpacked from there.
        let spool = code_dir.with_extension("tar.gz");
        let fetched = self
            .supervisor
            .resilience()
            .retry("fetch the code", || {
                let spool = spool.clone();
                async move {
                    let url = self
                        .supervisor
                        .storage()
                        .presigned_get_internal(&run.code_key())
                        .await?;
                    let mut response = self.http.get(url).send().await?.error_for_status()?;
                    if response
                        .content_length()
                        .is_some_and(|n| n as usize <= BUNDLE_CACHE_ENTRY_BYTES)
                    {
                        return Ok(Fetched::Bytes(response.bytes().await?));
                    }
                    let mut file = tokio::fs::File::create(&spool).await?;
                    while let Some(chunk) = response.chunk().await? {
                        file.write_all(&chunk).await?;
                    }
                    file.flush().await?;
                    Ok(Fetched::File)
                }
            })
            .await?;
        let into = code_dir.to_owned();
        match fetched {
            Fetched::Bytes(bytes) => {
                let checked = bytes.clone();
                tokio::task::spawn_blocking(move || bundle::extract(&checked, &sha, &into, max))
                    .await??;
                // Only a bundle that matched its sha256 is kept.
                self.bundles.put(&run.code_sha256, bytes);
            }
            Fetched::File => {
                let file = spool.clone();
                let unpacked = tokio::task::spawn_blocking(move || {
                    bundle::extract_file(&file, &sha, &into, max)
                })
                .await;
                let _ = tokio::fs::remove_file(&spool).await;
                unpacked??;
            }
        }
        Ok(())
    }

    /// A pipeline step's `$INPUT_DIR`: `work_dir/inputs/{step}/…` with the outputs of every
    /// earlier step, fetched through presigned URLs, read-only to the program (files 0444,
    /// folders 0755; it is bound read-only besides). Only those runs' outputs: nothing else of
    /// other runs.
    async fn fetch_inputs(
        &self,
        step: &coderun_shared::pipelines::StepEnvironment,
        work_dir: &Path,
    ) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let root = work_dir.join("inputs");
        match tokio::fs::remove_dir_all(&root).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let dir_mode = || std::fs::Permissions::from_mode(0o755);
        tokio::fs::create_dir(&root).await?;
        tokio::fs::set_permissions(&root, dir_mode()).await?;
        for (name, run_id) in &step.inputs {
            anyhow::ensure!(
                coderun_shared::pipelines::is_safe_name(name),
                "step name {name:?} is not a simple name"
            );
            let step_dir = root.join(name);
            tokio::fs::create_dir(&step_dir).await?;
            tokio::fs::set_permissions(&step_dir, dir_mode()).await?;
            let objects = coderun_shared::objects::RunObjects::new(*run_id);
            for file in self.supervisor.run_outputs(*run_id).await? {
                // Stored paths were checked when collected; checked again, as host paths.
                let path = coderun_shared::domain::FilePath::parse(&file.path, &self.paths)
                    .map_err(|e| anyhow::anyhow!("output `{}`: {}", file.path, e.0))?;
                let target = step_dir.join(path.as_str());
                let mut missing = Vec::new();
                let mut parent = target.parent();
                while let Some(p) = parent {
                    if p == step_dir || tokio::fs::metadata(p).await.is_ok() {
                        break;
                    }
                    missing.push(p.to_owned());
                    parent = p.parent();
                }
                for p in missing.iter().rev() {
                    tokio::fs::create_dir(p).await?;
                    tokio::fs::set_permissions(p, dir_mode()).await?;
                }
                let url = self
                    .supervisor
                    .storage()
                    .presigned_get_internal(&objects.output(path.as_str()))
                    .await?;
                let bytes = self
                    .http
                    .get(url)
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await?;
                tokio::fs::write(&target, &bytes).await?;
                tokio::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o444)).await?;
            }
        }
        Ok(root)
    }

    /// The host folder of each dataset version the run names, from the worker's cache
    /// (fetched by checksum the first time), read-only for the program.
    async fn fetch_datasets(
        &self,
        run: &Run,
        _work_dir: &Path,
    ) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let storage = self.supervisor.storage();
        let mut mounted = Vec::new();
        for mount in self.supervisor.dataset_mounts(&run.datasets).await? {
            let dir = self.datasets.ensure(storage, &mount, &self.paths).await?;
            mounted.push((mount.name, dir));
        }
        Ok(mounted)
    }
}

/// Where a fetched bundle is: in memory (small enough for the cache), or spooled to a file.
enum Fetched {
    Bytes(Bytes),
    File,
}

/// Recent code bundles by sha256, at most `max_bytes` of them (the oldest go first), none larger
/// than `max_entry`. A bundle is checked against its sha256 every time it is unpacked.
struct BundleCache {
    max_bytes: usize,
    max_entry: usize,
    held: Mutex<(VecDeque<(String, Bytes)>, usize)>,
}

impl BundleCache {
    fn new(max_bytes: usize, max_entry: usize) -> Self {
        Self {
            max_bytes,
            max_entry,
            held: Mutex::new((VecDeque::new(), 0)),
        }
    }

    fn get(&self, sha256: &str) -> Option<Bytes> {
        let held = self.held.lock().expect("bundle cache lock");
        held.0
            .iter()
            .find(|(sha, _)| sha == sha256)
            .map(|(_, bytes)| bytes.clone())
    }

    fn put(&self, sha256: &str, bytes: Bytes) {
        if bytes.len() > self.max_entry {
            return;
        }
        let mut held = self.held.lock().expect("bundle cache lock");
        let (entries, total) = &mut *held;
        if entries.iter().any(|(sha, _)| sha == sha256) {
            return;
        }
        *total += bytes.len();
        entries.push_back((sha256.to_owned(), bytes));
        while *total > self.max_bytes {
            match entries.pop_front() {
                Some((_, old)) => *total -= old.len(),
                None => break,
            }
        }
    }
}

/// What the sandbox saw, in the terms every executor reports.
fn termination(sandboxed: &sandbox::Termination) -> Termination {
    use sandbox::Termination as S;
    match *sandboxed {
        S::Exited(code) => Termination::Exited(code),
        S::OomKilled => Termination::OomKilled,
        S::DeadlineExceeded => Termination::DeadlineExceeded,
        S::OutputLimitExceeded => Termination::OutputLimitExceeded,
        S::DiskLimitExceeded => Termination::DiskLimitExceeded,
        S::Killed => Termination::Stopped,
        S::Signaled(signal) => Termination::SandboxSignaled(signal),
    }
}

/// Forwards the program's lines to the live log in batches, numbering them from 1.
async fn pump_log(supervisor: Supervisor, run: Uuid, mut lines: mpsc::Receiver<String>) -> u64 {
    let mut next = 1u64;
    let mut batch = Vec::with_capacity(LOG_BATCH);
    loop {
        let first = match lines.recv().await {
            Some(line) => line,
            None => break,
        };
        batch.push(first);
        let flush_at = tokio::time::Instant::now() + LOG_FLUSH;
        while batch.len() < LOG_BATCH {
            match tokio::time::timeout_at(flush_at, lines.recv()).await {
                Ok(Some(line)) => batch.push(line),
                Ok(None) | Err(_) => break,
            }
        }
        if let Err(e) = supervisor.log_lines(run, next, &batch).await {
            tracing::warn!(%run, error = %e, "cannot append to the live log");
        }
        next += batch.len() as u64;
        batch.clear();
    }
    next - 1
}

#[cfg(test)]
mod bundle_cache {
    use super::*;

    #[test]
    fn the_cache_keeps_recent_bundles_within_its_budget_and_none_too_large() {
        let cache = BundleCache::new(10, 4);
        cache.put("a", Bytes::from_static(b"aaaa"));
        cache.put("b", Bytes::from_static(b"bbbb"));
        cache.put("huge", Bytes::from_static(b"hhhhh"));
        assert_eq!(cache.get("a").as_deref(), Some(&b"aaaa"[..]));
        assert!(cache.get("huge").is_none());
        // A third bundle passes the budget: the oldest goes.
        cache.put("c", Bytes::from_static(b"cccc"));
        assert!(cache.get("a").is_none());
        assert_eq!(cache.get("b").as_deref(), Some(&b"bbbb"[..]));
        assert_eq!(cache.get("c").as_deref(), Some(&b"cccc"[..]));
        // Putting one it holds changes nothing.
        cache.put("b", Bytes::from_static(b"bbbb"));
        assert_eq!(cache.held.lock().unwrap().1, 8);
    }
}
