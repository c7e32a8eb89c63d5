//! The recorder: the writes that follow a run's execution — phases into Postgres, log lines
//! into the live log, the final log and outputs into S3, the end. Executors reach it through
//! the [`Supervisor`](crate::supervisor::Supervisor). Every write is idempotent, so several
//! observers may report the same execution — and so each is retried through an outage of
//! Postgres, Redis or S3 (the run waits in its phase) instead of being charged to the run.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use coderun_shared::livelog::LiveLog;
use coderun_shared::logfile;
use coderun_shared::objects::RunObjects;
use coderun_shared::pipelines;
use coderun_shared::queue::RunQueue;
use coderun_shared::runs::{self, Change, OutputFile, RunStatus};
use coderun_shared::storage::Storage;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ending::Ending;
use crate::resilience::Resilience;

/// Output files uploaded at once (each is read whole; the outputs' total is bounded).
const OUTPUTS_AT_ONCE: usize = 4;

#[derive(Clone)]
pub struct Recorder {
    pub db: PgPool,
    pub storage: Storage,
    pub live_log: LiveLog,
    /// `worker:<name>`: the source written on every event.
    pub source: String,
    pub live_log_ttl_seconds: i64,
    /// Retries and breakers shared with the rest of the worker.
    pub resilience: Arc<Resilience>,
    /// For the next stage's step runs a recorded end queued (pipelines).
    pub queue: RunQueue,
    /// `worker.crash_at`: the fault-injection tests' crash point, if it is one of ours.
    pub crash_at: String,
}

impl Recorder {
    /// Records a phase; a transition the run is already past is a no-op.
    pub async fn phase(&self, run: Uuid, status: RunStatus, detail: &str) -> anyhow::Result<bool> {
        let change = &Change::by(self.source.clone()).detail(detail);
        self.resilience
            .retry("record a phase", || async move {
                Ok(runs::transition(&self.db, run, status, change).await?)
            })
            .await
    }

    /// Records `pending`, then `running`, in one commit (see [`runs::transition_through`]).
    pub async fn pending_and_running(
        &self,
        run: Uuid,
        pending: &str,
        running: &str,
    ) -> anyhow::Result<bool> {
        let pending = &Change::by(self.source.clone()).detail(pending);
        let running = &Change::by(self.source.clone()).detail(running);
        self.resilience
            .retry("record a phase", || async move {
                Ok(runs::transition_through(
                    &self.db,
                    run,
                    &[(RunStatus::Pending, pending), (RunStatus::Running, running)],
                )
                .await?)
            })
            .await
    }

    /// Appends log lines to the live log, numbered from `first_line`.
    pub async fn log_lines(
        &self,
        run: Uuid,
        first_line: u64,
        lines: &[String],
    ) -> anyhow::Result<()> {
        Ok(self.live_log.append(run, first_line, lines).await?)
    }

    /// Stores the full log as the run's `log.txt`, with its line index.
    pub async fn store_log(&self, run: Uuid, file: &Path) -> anyhow::Result<()> {
        let bytes = match tokio::fs::read(file).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        self.store_log_bytes(run, bytes).await
    }

    /// Stores `log` as the run's `log.txt` with its line index (an executor that holds the log
    /// in memory).
    pub async fn store_log_bytes(&self, run: Uuid, log: Vec<u8>) -> anyhow::Result<()> {
        let log = &Bytes::from(log);
        self.resilience
            .retry("store log.txt", || async move {
                logfile::store(&self.storage, run, log.clone()).await?;
                Ok(())
            })
            .await
    }

    /// Stores each output file under the run's `output/` (a few at once) and lists them on
    /// the run.
    pub async fn store_outputs(
        &self,
        run: Uuid,
        files: &[(String, std::path::PathBuf, u64)],
    ) -> anyhow::Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        for some in files.chunks(OUTPUTS_AT_ONCE) {
            let stores: Vec<_> = some
                .iter()
                .map(|(path, host_path, _)| self.store_output(run, path, host_path))
                .collect();
            futures::future::try_join_all(stores).await?;
        }
        let recorded: Vec<OutputFile> = files
            .iter()
            .map(|(path, _, size)| OutputFile {
                path: path.clone(),
                size: *size as i64,
            })
            .collect();
        let recorded = &recorded;
        self.resilience
            .retry("list the outputs", || async move {
                Ok(runs::record_outputs(&self.db, run, recorded).await?)
            })
            .await
    }

    async fn store_output(&self, run: Uuid, path: &str, host_path: &Path) -> anyhow::Result<()> {
        let bytes = &Bytes::from(tokio::fs::read(host_path).await?);
        self.resilience
            .retry("store an output file", || async move {
                self.storage
                    .put(
                        &RunObjects::new(run).output(path),
                        bytes.clone(),
                        "application/octet-stream",
                    )
                    .await?;
                Ok(())
            })
            .await
    }

    /// Records the end (stop wins over a natural end) and lets the live log expire. Returns the
    /// phase the run ended in, if this call ended it.
    pub async fn finish(&self, run: Uuid, ending: Ending) -> anyhow::Result<Option<RunStatus>> {
        let change = Change {
            source: self.source.clone(),
            detail: ending.detail,
            reason: ending.reason,
            exit_code: ending.exit_code,
            log_bytes: ending.log_bytes,
            log_truncated: ending.log_truncated,
            ..Change::default()
        };
        let (status, change) = (ending.status, &change);
        let ended = self
            .resilience
            .retry("record the end", || async move {
                Ok(runs::finish(&self.db, run, status, change).await?)
            })
            .await?;
        // The next stage first: its dispatch is what a pipeline waits for.
        if ended.is_some_and(|e| e.pipeline_run_id.is_some()) {
            self.enqueue_next_steps(run).await;
        }
        if let Err(e) = self.live_log.expire(run, self.live_log_ttl_seconds).await {
            tracing::warn!(%run, error = %e, "cannot set the live log's expiry");
        }
        Ok(ended.map(|e| e.status))
    }

    /// A pipeline step's end, once committed, may have queued the next stage's runs (the
    /// trigger of migration 0007, in the same transaction): their stream entries are added
    /// now. A crash before this loses nothing: the reconciler re-enqueues queued runs whose
    /// entry never arrived.
    async fn enqueue_next_steps(&self, run: Uuid) {
        if self.crash_at == "after_step_end" {
            tracing::warn!(%run, "crashing on purpose (worker.crash_at = after_step_end)");
            std::process::abort();
        }
        let queued = match pipelines::queued_siblings(&self.db, run).await {
            Ok(queued) => queued,
            Err(e) => {
                tracing::warn!(%run, error = %e, "cannot read the next steps; the reconciler will enqueue them");
                return;
            }
        };
        for (next, e) in self.queue.enqueue_each(&queued).await {
            tracing::warn!(run = %next, error = %e,
                "cannot enqueue a step run; the reconciler will enqueue it");
        }
    }
}
