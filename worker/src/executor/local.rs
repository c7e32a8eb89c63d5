//! `LocalExecutor`: runs each run in the local sandbox on this machine — the embedded default.
//!
//! Like a Job's init container, it fetches the code bundle through a presigned URL (the
//! sandbox never sees a credential), checks its sha256, unpacks it, fetches the run's datasets,
//! then runs the program and reports phases, the live log, `log.txt`, the outputs and the
//! ending through the recorder. One execution per run: a run it already has is not launched
//! twice, and the run's lease (held by this worker) keeps other workers off it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use coderun_shared::bundle;
use coderun_shared::config::{LimitSettings, RunLimits};
use coderun_shared::domain::FilePath;
use coderun_shared::runs::{Reason, Run, RunStatus};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::executor::{Executor, LaunchError};
use crate::recorder::{Ending, Recorder};
use crate::sandbox::{
    Limits, Sandbox, SandboxRequest, Termination, create_run_dir, remove_work_dir,
};

/// Lines sent to the live log in one round trip at most.
const LOG_BATCH: usize = 256;
/// How long the log pump waits to fill a batch.
const LOG_FLUSH: Duration = Duration::from_millis(50);

struct Execution {
    go: Option<oneshot::Sender<bool>>,
    stop: CancellationToken,
    /// The program has ended; only recording and clean-up remain. A finished execution holds
    /// no capacity (it is not `live`) but is still this worker's (`has`), so the reconciler
    /// leaves its run to the recorder.
    finished: bool,
}

struct Inner {
    sandbox: Arc<Sandbox>,
    /// Executions this worker runs at once at most (one sandbox uid each).
    slots: usize,
    recorder: Recorder,
    http: reqwest::Client,
    work_root: PathBuf,
    runs: RunLimits,
    paths: LimitSettings,
    executions: Mutex<HashMap<Uuid, Execution>>,
}

#[derive(Clone)]
pub struct LocalExecutor {
    inner: Arc<Inner>,
}

impl LocalExecutor {
    pub fn new(
        sandbox: Arc<Sandbox>,
        slots: usize,
        recorder: Recorder,
        work_root: PathBuf,
        runs: RunLimits,
        paths: LimitSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                sandbox,
                slots,
                recorder,
                // A stalled transfer fails (and is retried) rather than hanging the run.
                http: reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(30))
                    .build()
                    .expect("an HTTP client with timeouts"),
                work_root,
                runs,
                paths,
                executions: Mutex::new(HashMap::new()),
            }),
        }
    }
}

#[async_trait]
impl Executor for LocalExecutor {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn launch(&self, run: &Run) -> Result<(), LaunchError> {
        let mut executions = self.inner.executions.lock().expect("executions lock");
        if executions.contains_key(&run.id) {
            return Ok(());
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
                go: Some(go),
                stop: stop.clone(),
                finished: false,
            },
        );
        drop(executions);
        let inner = self.inner.clone();
        let run = run.clone();
        tokio::spawn(async move { inner.execute(run, wait, stop).await });
        Ok(())
    }

    async fn start(&self, run_id: Uuid, go: bool) {
        let sender = {
            let mut executions = self.inner.executions.lock().expect("executions lock");
            executions.get_mut(&run_id).and_then(|e| e.go.take())
        };
        if let Some(sender) = sender {
            let _ = sender.send(go);
        }
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
            let work_dir = self.inner.work_root.join(run_id.to_string());
            match tokio::task::spawn_blocking(move || remove_work_dir(&work_dir)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(%run_id, error = %e, "cannot remove a lost run's work dir")
                }
                Err(e) => {
                    tracing::warn!(%run_id, error = %e, "cannot remove a lost run's work dir")
                }
            }
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
            let ending = match ending {
                Ok(ending) => ending,
                Err(e) => {
                    tracing::error!(run = %run.id, error = ?e, "the run could not be executed");
                    Ending {
                        status: RunStatus::Failed,
                        exit_code: None,
                        reason: Some(Reason::LaunchFailed),
                        detail: format!("{e:#}"),
                        log_bytes: None,
                        log_truncated: false,
                    }
                }
            };
            if let Some(execution) = self
                .executions
                .lock()
                .expect("executions lock")
                .get_mut(&run.id)
            {
                execution.finished = true;
            }
            if let Err(e) = self.recorder.finish(run.id, ending).await {
                // The reconciler will find the run without an execution and end it.
                tracing::error!(run = %run.id, error = ?e, "cannot record the end of the run");
            }
            let dir = work_dir.clone();
            match tokio::task::spawn_blocking(move || remove_work_dir(&dir)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(run = %run.id, error = %e, "cannot remove the run's work dir")
                }
                Err(e) => {
                    tracing::warn!(run = %run.id, error = %e, "cannot remove the run's work dir")
                }
            }
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
        self.recorder
            .phase(run.id, RunStatus::Pending, "fetching the code")
            .await?;
        // An earlier attempt of this run, lost with its worker, may have left its folder.
        match tokio::fs::remove_dir_all(work_dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let code_dir = work_dir.join("code");
        tokio::fs::create_dir_all(&code_dir).await?;
        let resilience = &self.recorder.resilience;
        // An outage of object storage is waited out here, the run pending; only a bundle that
        // is missing or does not match its checksum fails the run.
        let bytes = resilience
            .retry("fetch the code", || async move {
                let url = self.recorder.storage.presigned_get(&run.code_key()).await?;
                let response = self.http.get(url).send().await?.error_for_status()?;
                Ok(response.bytes().await?)
            })
            .await?;
        let (sha, max) = (run.code_sha256.clone(), self.paths.max_task_bytes);
        let into = code_dir.clone();
        tokio::task::spawn_blocking(move || bundle::extract(&bytes, &sha, &into, max)).await??;
        let datasets = resilience
            .retry("fetch the datasets", || self.fetch_datasets(run, work_dir))
            .await?;
        if stop.is_cancelled() {
            return Ok(stopped_before_start());
        }

        self.recorder
            .phase(run.id, RunStatus::Running, "program started")
            .await?;
        let (lines, receiver) = mpsc::channel(4 * LOG_BATCH);
        let pump = tokio::spawn(pump_log(self.recorder.clone(), run.id, receiver));
        let request = SandboxRequest {
            run_id: run.id,
            attempt: u32::try_from(run.attempt).unwrap_or(1),
            language: run.language.clone(),
            command: run.command.clone(),
            work_dir: work_dir.to_owned(),
            datasets,
            limits: Limits::from(&run.spec.limits),
            log_max_bytes: self.runs.log_max_bytes,
        };
        let outcome = self.sandbox.run(request, lines, stop.clone()).await;
        let _ = pump.await;
        let outcome = outcome?;

        self.recorder
            .store_log(run.id, &work_dir.join("log.txt"))
            .await?;
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
        self.recorder.store_outputs(run.id, &files).await?;

        let (status, exit_code, reason, detail) = match outcome.termination {
            Termination::Exited(0) => (
                RunStatus::Succeeded,
                Some(0),
                None,
                "exited with 0".to_owned(),
            ),
            Termination::Exited(code) => (
                RunStatus::Failed,
                Some(code),
                None,
                format!("exited with {code}"),
            ),
            Termination::OomKilled => (
                RunStatus::Failed,
                Some(137),
                Some(Reason::OomKilled),
                "killed: out of memory".into(),
            ),
            Termination::DeadlineExceeded => (
                RunStatus::Failed,
                None,
                Some(Reason::DeadlineExceeded),
                "killed: wall time exceeded".into(),
            ),
            Termination::OutputLimitExceeded => (
                RunStatus::Failed,
                None,
                Some(Reason::OutputLimitExceeded),
                "killed: log limit exceeded".into(),
            ),
            Termination::DiskLimitExceeded => (
                RunStatus::Failed,
                None,
                Some(Reason::Evicted),
                "disk limit exceeded: the run's files filled its disk budget".into(),
            ),
            Termination::Killed => (
                RunStatus::Failed,
                None,
                Some(Reason::StoppedByUser),
                "killed: stopped".into(),
            ),
            Termination::Signaled(signal) => (
                RunStatus::Failed,
                Some(128 + signal),
                None,
                format!("the sandbox died of signal {signal}"),
            ),
        };
        Ok(Ending {
            status,
            exit_code,
            reason,
            detail,
            log_bytes: Some(outcome.log_bytes as i64),
            log_truncated: outcome.log_truncated,
        })
    }

    /// Downloads each dataset's files into `work_dir/data/{name}`, read-only for the program.
    async fn fetch_datasets(
        &self,
        run: &Run,
        work_dir: &Path,
    ) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let mut mounted = Vec::new();
        for name in &run.datasets {
            let root = work_dir.join("data").join(name);
            tokio::fs::create_dir_all(&root).await?;
            let prefix = format!("datasets/{name}/");
            for (key, _) in self.recorder.storage.list(&prefix).await? {
                // Object keys are not trusted as paths: the same rules as task files apply.
                let Ok(path) = FilePath::parse(&key[prefix.len()..], &self.paths) else {
                    tracing::warn!(%key, "skipping a dataset object whose key is not a safe path");
                    continue;
                };
                let target = root.join(path.as_str());
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                let bytes = self.recorder.storage.get(&key).await?;
                tokio::fs::write(&target, bytes).await?;
            }
            mounted.push((name.clone(), root));
        }
        Ok(mounted)
    }
}

fn stopped_before_start() -> Ending {
    Ending {
        status: RunStatus::Failed,
        exit_code: None,
        reason: Some(Reason::StoppedByUser),
        detail: "stopped before the program started".into(),
        log_bytes: Some(0),
        log_truncated: false,
    }
}

/// Forwards the program's lines to the live log in batches, numbering them from 1.
async fn pump_log(recorder: Recorder, run: Uuid, mut lines: mpsc::Receiver<String>) -> u64 {
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
        if let Err(e) = recorder.log_lines(run, next, &batch).await {
            tracing::warn!(%run, error = %e, "cannot append to the live log");
        }
        next += batch.len() as u64;
        batch.clear();
    }
    next - 1
}
