//! The last two steps of every new run: commit its row (with the snapshot it references held
//! against the sweep), then add its stream entry. The row comes first: an entry whose row is
//! missing would be a run nobody can see, while a row whose entry is lost is found and
//! re-enqueued by the worker's reconciler.

use super::{Error, Lifecycle};
use crate::runs::{self, NewRun, Run};

/// How often a snapshot swept between its upload and the run's commit is stored again.
pub const SNAPSHOT_ATTEMPTS: usize = 3;

impl Lifecycle<'_> {
    /// Commits the run row as `queued`, with its first event.
    pub async fn commit(&self, new: NewRun) -> Result<Run, Error> {
        let max = self.settings.runs.max_active_per_user;
        match runs::create(self.db, new, max).await {
            Ok(run) => Ok(run),
            Err(runs::Error::Db(sqlx::Error::Database(e))) if e.is_foreign_key_violation() => {
                // The task (or its owner) was deleted while the run was being prepared.
                Err(Error::NotFound("task"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Snapshots the task's files (uploading only content the bucket does not hold), then
    /// commits the run referencing the snapshot. A snapshot no run referenced yet may be swept
    /// between the two; then it is stored again. A refused run leaves at most an unreferenced
    /// snapshot, which the sweep removes.
    pub async fn snapshot_and_commit(&self, mut new: NewRun) -> Result<Run, Error> {
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let snapshot = crate::snapshots::store(self.db, self.storage, new.task_id).await?;
            new.code_sha256 = snapshot.sha256;
            match self.commit(new.clone()).await {
                Err(Error::Run(runs::Error::SnapshotGone)) => continue,
                result => return result,
            }
        }
        Err(Error::SnapshotSwept(SNAPSHOT_ATTEMPTS))
    }

    /// Adds the committed run's stream entry. A failure loses nothing (the row is committed,
    /// and the reconciler re-enqueues queued runs whose entry never arrived), so it is logged,
    /// not returned: the caller's run exists either way.
    pub async fn enqueue(&self, run: &Run) {
        if let Err(e) = self.queue.enqueue(run.id).await {
            tracing::warn!(run_id = %run.id, error = %e,
                "could not add the run to the stream; the reconciler will enqueue it");
        }
    }
}
