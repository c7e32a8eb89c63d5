//! The supervisor: what every executor reports to. An executor says what its executions do —
//! a phase, log lines, the final log and outputs, the end — and asks only what it must know
//! (the run as Postgres has it, who holds a run it observes); the supervisor writes through the
//! [`Recorder`], gives capacity back through the [`Permits`] and counts the ends. No executor
//! touches the semaphore or the database on its own.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use coderun_shared::livelog::LiveLog;
use coderun_shared::runs::{self, Run, RunStatus};
use coderun_shared::semaphore::{Grant, Member};
use coderun_shared::storage::Storage;
use uuid::Uuid;

use crate::ending::Ending;
use crate::heartbeat::Liveness;
use crate::permits::Permits;
use crate::recorder::Recorder;
use crate::resilience::Resilience;

/// Who holds which run's permit, and which of those holders are alive.
#[derive(Debug, Default, Clone)]
pub struct Holders {
    pub of: HashMap<Uuid, String>,
    pub alive: HashSet<String>,
}

#[derive(Clone)]
pub struct Supervisor {
    recorder: Recorder,
    permits: Permits,
    liveness: Liveness,
}

impl Supervisor {
    pub fn new(recorder: Recorder, permits: Permits, liveness: Liveness) -> Self {
        Self {
            recorder,
            permits,
            liveness,
        }
    }

    /// This worker's name.
    pub fn me(&self) -> &str {
        self.permits.owner()
    }

    /// The bucket, for fetching code and datasets and presigning.
    pub fn storage(&self) -> &Storage {
        &self.recorder.storage
    }

    /// Retries and breakers shared with the rest of the worker.
    pub fn resilience(&self) -> &Resilience {
        &self.recorder.resilience
    }

    /// The live log of runs (read by an executor resuming a log it follows).
    pub fn live_log(&self) -> &LiveLog {
        &self.recorder.live_log
    }

    /// The dataset versions `refs` (a run's `datasets`, `name@vN`) name, with their files; an
    /// error when one no longer exists.
    pub async fn dataset_mounts(
        &self,
        refs: &[String],
    ) -> anyhow::Result<Vec<coderun_shared::datasets::Mount>> {
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        coderun_shared::datasets::mounts(&self.recorder.db, refs)
            .await?
            .into_iter()
            .map(|m| m.map_err(|r| anyhow::anyhow!("dataset version `{r}` no longer exists")))
            .collect()
    }

    /// A pipeline step's parameters and earlier steps (`None` for a run of no pipeline, without
    /// asking Postgres: every launch comes through here).
    pub async fn step_environment(
        &self,
        run: &Run,
    ) -> anyhow::Result<Option<coderun_shared::pipelines::StepEnvironment>> {
        if run.pipeline_run_id.is_none() {
            return Ok(None);
        }
        Ok(coderun_shared::pipelines::step_environment(&self.recorder.db, run.id).await?)
    }

    /// The output files a finished run left.
    pub async fn run_outputs(&self, run: Uuid) -> anyhow::Result<Vec<runs::OutputFile>> {
        Ok(runs::outputs(&self.recorder.db, run).await?)
    }

    /// The run as Postgres has it now.
    pub async fn run(&self, id: Uuid) -> anyhow::Result<Option<Run>> {
        Ok(runs::get(&self.recorder.db, id).await?)
    }

    /// Every run not yet ended.
    pub async fn active_runs(&self) -> anyhow::Result<Vec<Run>> {
        Ok(runs::active(&self.recorder.db).await?)
    }

    /// The program reached `status`; a phase the run is already past is a no-op.
    pub async fn phase(&self, run: Uuid, status: RunStatus, detail: &str) -> anyhow::Result<bool> {
        self.recorder.phase(run, status, detail).await
    }

    /// Records `pending` and `running` in one commit: the run went through both at once.
    pub async fn pending_and_running(
        &self,
        run: Uuid,
        pending: &str,
        running: &str,
    ) -> anyhow::Result<bool> {
        self.recorder
            .pending_and_running(run, pending, running)
            .await
    }

    /// The program printed `lines`, numbered from `first`.
    pub async fn log_lines(&self, run: Uuid, first: u64, lines: &[String]) -> anyhow::Result<()> {
        self.recorder.log_lines(run, first, lines).await
    }

    /// The whole log is in `file`.
    pub async fn store_log(&self, run: Uuid, file: &Path) -> anyhow::Result<()> {
        self.recorder.store_log(run, file).await
    }

    /// The whole log is `log`.
    pub async fn store_log_bytes(&self, run: Uuid, log: Vec<u8>) -> anyhow::Result<()> {
        self.recorder.store_log_bytes(run, log).await
    }

    /// The program left these outputs: `(path in $OUTPUT_DIR, file on this host, size)`.
    pub async fn store_outputs(
        &self,
        run: Uuid,
        files: &[(String, PathBuf, u64)],
    ) -> anyhow::Result<()> {
        self.recorder.store_outputs(run, files).await
    }

    /// The execution is over: records the end, gives the permit back, counts it. Returns the
    /// phase the run ended in, if this call ended it.
    pub async fn finish(&self, run: Uuid, ending: Ending) -> anyhow::Result<Option<RunStatus>> {
        let reason = ending.reason;
        let ended = self.recorder.finish(run, ending).await?;
        self.give_back(run).await?;
        if let Some(status) = ended {
            crate::metrics::run_ended(status, reason);
        }
        Ok(ended)
    }

    /// Another observer ended the run: a permit this worker may hold for it goes back.
    pub async fn ended_elsewhere(&self, run: Uuid) -> anyhow::Result<()> {
        self.give_back(run).await
    }

    async fn give_back(&self, run: Uuid) -> anyhow::Result<()> {
        self.recorder
            .resilience
            .retry("give the permit back", || async move {
                Ok(self.permits.release(run).await?)
            })
            .await
    }

    /// Who holds the permits of runs now, and which holders are alive.
    pub async fn holders(&self) -> anyhow::Result<Holders> {
        let of: HashMap<Uuid, String> = self
            .permits
            .holders()
            .await?
            .into_iter()
            .filter_map(|h| match h.member {
                Member::Run(run) => Some((run, h.owner)),
                Member::Reservation(_) => None,
            })
            .collect();
        let alive = self
            .liveness
            .alive_among(of.values().map(String::as_str))
            .await?;
        Ok(Holders { of, alive })
    }

    /// Takes over the permit of `run`, whose execution outlived `holder` (or that nobody
    /// holds): compare-and-swap, so a live holder is never displaced.
    pub async fn adopt(&self, run: &Run, holder: Option<&str>) -> anyhow::Result<Grant> {
        Ok(self
            .permits
            .take_over(run.id, run.spec.limits.wall_seconds, holder, None)
            .await?)
    }
}
