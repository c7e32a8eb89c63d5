//! Finishing a run whose Job is over (or gone): its owner reads the pod's log (or, when the
//! pod is gone, the live log), unpacks the outputs archive the pod uploaded, and reports the
//! end to the supervisor — which records it and gives the permit back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use coderun_shared::runs::{Run, RunStatus};
use uuid::Uuid;

use super::actor::{Actor, GONE_GRACE, Step};
use super::{job, logs, outputs, outputs_key};
use crate::ending::{Ending, Termination};

/// Counts a run being finished for as long as it lives (what a draining worker waits for).
struct Finishing<'a>(&'a AtomicUsize);

impl<'a> Finishing<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Finishing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Actor {
    /// The execution is over: the owner finishes the run.
    pub(super) async fn ended(&mut self, run: &Run, end: Termination) -> anyhow::Result<Step> {
        if self.claim(run).await {
            return self.finish(run, end.into(), false).await;
        }
        // The owner finishes it; look at Postgres only to stop looking.
        match self.inner.supervisor.run(self.id).await? {
            Some(now) if !now.status.is_terminal() => Ok(Step::Continue),
            _ => Ok(self.done()),
        }
    }

    /// The Job is not there (deleted, or never seen).
    pub(super) async fn gone(&mut self, run: &Run) -> anyhow::Result<Step> {
        let inner = self.inner.clone();
        if !self.seen_job
            && (!inner.synced.load(Ordering::SeqCst) || self.started.elapsed() < GONE_GRACE)
        {
            return Ok(Step::Continue);
        }
        let now = match inner.supervisor.run(self.id).await? {
            Some(now) if !now.status.is_terminal() => now,
            _ => return Ok(self.done()),
        };
        if now.status == RunStatus::Queued {
            // Not launched (again) yet: its next Job wakes a new actor.
            return Ok(Step::Done);
        }
        if !self.claim(run).await {
            return Ok(Step::Continue);
        }
        // The store may lag; ask the API server before judging.
        if inner.jobs.get_opt(&job::job_name(self.id)).await?.is_some() {
            return Ok(Step::Continue);
        }
        let termination = if now.status == RunStatus::Stopping {
            Termination::StoppedExecutionDeleted
        } else {
            tracing::warn!(run = %self.id, "the run's Job is gone");
            Termination::ExecutionVanished
        };
        self.finish(run, termination.into(), false).await
    }

    /// Stores the log and the outputs, then reports the end. With `delete`, the Job is deleted
    /// once its log is read (the run is being ended by coderun).
    pub(super) async fn finish(
        &mut self,
        run: &Run,
        ending: Ending,
        delete: bool,
    ) -> anyhow::Result<Step> {
        let inner = self.inner.clone();
        let supervisor = &inner.supervisor;
        match supervisor.run(self.id).await? {
            Some(now) if !now.status.is_terminal() => {}
            _ => {
                // Someone else finished it (and released its permit, which a claim may have
                // just re-created).
                supervisor.ended_elsewhere(self.id).await?;
                return Ok(self.done());
            }
        }
        let _finishing = Finishing::new(&inner.finishing);
        self.stop_streamer();
        let cap = inner.runs.log_max_bytes;
        let pod = self.last_pod.as_ref().and_then(|p| p.metadata.name.clone());
        let from_pod = match &pod {
            Some(pod) => match logs::read_all(&inner.pods, pod, cap).await {
                Ok(log) => Some(log),
                Err(e) => {
                    tracing::debug!(run = %self.id, error = %e, "the pod's log cannot be read; using the live log");
                    None
                }
            },
            None => None,
        };
        let (log, truncated) = match from_pod {
            Some(log) => log,
            None => logs::from_live_log(supervisor, self.id, cap).await?,
        };
        if delete {
            inner.delete_job(self.id).await?;
        }
        let mut ending = ending.with_log(log.len() as u64, truncated);
        supervisor.store_log_bytes(self.id, log).await?;
        if let Some(refused) = store_outputs(&inner, self.id).await? {
            // The program's own verdict stays if it already failed with a reason.
            ending = ending.with_refused_outputs(refused);
        }
        let status = ending.status;
        let ended = supervisor.finish(self.id, ending).await?;
        tracing::info!(run = %run.id, ?status, ?ended, "finished the run");
        Ok(self.done())
    }
}

/// Unpacks the archive the pod uploaded into `runs/{id}/output/…` and lists the files. An
/// archive over the outputs limit is refused whole: nothing is stored, and the refusal is
/// returned for the run's ending.
async fn store_outputs(
    inner: &Arc<super::Inner>,
    run: Uuid,
) -> anyhow::Result<Option<outputs::Refused>> {
    let supervisor = &inner.supervisor;
    let key = outputs_key(run);
    let dir =
        std::env::temp_dir().join(format!("coderun-outputs-{run}-{}", Uuid::new_v4().simple()));
    tokio::fs::create_dir_all(&dir).await?;
    let fetched = outputs::fetch(
        supervisor.storage(),
        &key,
        &dir,
        inner.runs.output_max_files as usize,
        inner.runs.output_max_bytes,
        &inner.paths,
    )
    .await;
    let (stored, refused) = match fetched {
        Ok(outputs::Fetched::Missing) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Ok(None);
        }
        Ok(outputs::Fetched::Unpacked(unpacked)) => {
            if !unpacked.skipped.is_empty() {
                tracing::warn!(%run, skipped = ?unpacked.skipped, "left some outputs out");
            }
            (supervisor.store_outputs(run, &unpacked.files).await, None)
        }
        Ok(outputs::Fetched::Refused(refused)) => {
            tracing::warn!(%run, %refused, "refused the outputs archive");
            (Ok(()), Some(refused))
        }
        Ok(outputs::Fetched::Unreadable(e)) => {
            tracing::warn!(%run, error = %e, "the outputs archive is unreadable");
            (Ok(()), None)
        }
        Err(e) => (Err(e), None),
    };
    let _ = tokio::fs::remove_dir_all(&dir).await;
    stored?;
    supervisor.storage().delete_prefix(&key).await?;
    Ok(refused)
}
